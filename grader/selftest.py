"""The self-test an assignment must pass before students see it.

It checks that trials can be generated and reproduced, that the engine's answers agree
with central finite differences of the spec's own forward definition, that the expected
answers pass their own comparison, that the starter file declares the right functions,
and, when a reference solution is given, that it earns full marks through the runner.

It runs inside the instructor's upload request, so it has a time budget: checked between
units of work (one trial, one finite-difference sample, one mutant on one trial), it stops
with a problem instead of running on. The spec loader's size limits keep one unit small.
"""

from __future__ import annotations

import ast
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from grader.catching import Gradings, MutantCheck, check_mutants, check_relations, mutant_warning
from grader.compare import check_leaf
from grader.grade import grade_bytes
from grader.runner import Returned, Runner
from grader.spec.load import Assignment, Function
from grader.trials import Trial, TrialError, make_trial, objective_value, plan

FD_SAMPLES = 6  # elements checked per gradient output
FD_EPS = 1e-6
# The built-ins self-test in about a second each. A spec that takes 20 s over three seeds
# also costs every grading several seconds of worker time, so it is better made smaller.
DEFAULT_BUDGET_SECONDS = 20.0
BUDGET_ENV = "GRADER_SELFTEST_SECONDS"


def default_budget() -> float:
    """The self-test's time budget in seconds: $GRADER_SELFTEST_SECONDS, else 20."""
    raw = os.environ.get(BUDGET_ENV, "").strip()
    if not raw:
        return DEFAULT_BUDGET_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{BUDGET_ENV}={raw!r}: give the self-test's time budget as a number of seconds above 0")
    return value


class _OutOfTime(Exception):
    def __init__(self, doing: str) -> None:
        super().__init__(doing)
        self.doing = doing


class Budget:
    """A deadline checked between units of work; `check` raises once it has passed."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def check(self, doing: str) -> None:
        if self.elapsed > self.seconds:
            raise _OutOfTime(doing)


@dataclass
class SelfTestReport:
    problems: list[str] = field(default_factory=list)  # any problem fails the check
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Per declared mutant, how many trials of a grading it fails (also summarised in `notes`).
    mutants: list[MutantCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def self_test(
    assignment: Assignment,
    seeds: tuple[int, ...] = (0, 1, 2),
    solution: Optional[bytes] = None,
    runner: Optional[Runner] = None,
    budget_seconds: Optional[float] = None,
) -> SelfTestReport:
    """`budget_seconds` (default: `default_budget()`) bounds the checks of the functions;
    grading the reference solution is bounded by the spec's own job time limit."""
    report = SelfTestReport()
    budget = Budget(default_budget() if budget_seconds is None else budget_seconds)
    try:
        for fn in assignment.functions:
            _check_function(assignment, fn, seeds, report, budget)
        if solution is not None and not report.problems:
            budget.check("grading the reference solution")
    except _OutOfTime as exc:
        report.problems.append(
            f"the self-test did not finish in {budget.seconds:g} s: after {budget.elapsed:.3g} s it stopped before {exc.doing}. "
            "Every grading derives the same trials, so make them smaller or fewer (dimension ranges, shapes, "
            "layers, trials.random, cases) or the forward definition cheaper"
        )
    _check_starter(assignment, report)
    if solution is not None and report.problems:
        report.notes.append("reference solution not graded: the spec has problems to fix first")
    elif solution is not None:
        result = grade_bytes(assignment, solution, seed=seeds[0], runner=runner)
        if result["score"] < result["max_score"]:
            report.problems.append(
                f"the reference solution scored {result['score']:g}/{result['max_score']:g}:\n"
                + "\n".join(f"  {p['function']}: {p['feedback']}" for p in result["parts"] if p["status"] != "passed")
            )
        else:
            report.notes.append(f"reference solution: {result['score']:g}/{result['max_score']:g}")
    return report


def _make_trials(assignment: Assignment, fn: Function, seed: int, budget: Budget) -> list[Trial]:
    """`make_trials`, with the budget checked before each trial."""
    trials = []
    for index, trial_plan in enumerate(plan(fn)):
        budget.check(f"generating {fn.name}'s trial {index} for seed {seed}")
        trials.append(make_trial(assignment, fn, seed, index, trial_plan))
    return trials


def _check_function(
    assignment: Assignment, fn: Function, seeds: tuple[int, ...], report: SelfTestReport, budget: Budget
) -> None:
    trials: list[Trial] = []
    gradings: Gradings = {}
    for seed in seeds:
        try:
            first = _make_trials(assignment, fn, seed, budget)
            again = _make_trials(assignment, fn, seed, budget)
        except TrialError as exc:
            report.problems.append(f"{fn.name}: {exc}")
            return
        if not all(_same(a.args, b.args) and _same(a.expected, b.expected) for a, b in zip(first, again)):
            report.problems.append(f"{fn.name}: trials are not reproducible from the seed")
        trials.extend(first)
        gradings[seed] = first
    visible = [t for t in trials if not t.hidden]
    if not visible:
        report.warnings.append(f"{fn.name}: every trial is hidden, so students never see a failing input")
    tol = assignment.spec.tolerance
    budget.check(f"comparing {fn.name}'s expected answers")
    failing = sorted({
        info.label
        for trial in trials
        for info, expected in zip(fn.leaves, trial.expected)
        if not check_leaf(info, expected, _as_returned(expected), tol, False).passed
    })
    for label in failing:
        report.problems.append(f"{fn.name}: the expected {label} fails its own comparison")
    rng = np.random.default_rng(0)
    checked = 0
    per_seed = len(trials) // len(seeds)
    sample = [t for k in range(len(seeds)) for t in trials[k * per_seed : k * per_seed + 2]]  # two per seed
    for trial in sample:
        if sum(np.size(v) for v in trial.inputs.values() if isinstance(v, np.ndarray)) > 5000:
            continue  # finite differences on the large trials would be slow and say nothing more
        budget.check(f"checking {fn.name}'s gradients by finite differences on trial {trial.index}")
        checked += _fd_check(fn, trial, rng, report)
    report.notes.append(f"{fn.name}: {len(trials)} trials over {len(seeds)} seeds; {checked} gradient entries match finite differences")
    _check_mutants(assignment, fn, gradings, report, budget)
    budget.check(f"checking how {fn.name}'s outputs relate")
    warnings, notes = check_relations(assignment, fn, gradings)
    report.warnings.extend(warnings)
    report.notes.extend(notes)


def _check_mutants(
    assignment: Assignment, fn: Function, gradings: Gradings, report: SelfTestReport, budget: Budget
) -> None:
    """Every mutant must evaluate and fail at least one trial of every grading (all trials of
    a seed, visible and hidden, compared as a submission's answers are), or a student who
    makes that mistake would get full marks and never hear of it."""
    if not fn.spec.mutants:
        return
    try:
        checks = check_mutants(assignment, fn, gradings, before=budget.check)
    except (ValueError, ArithmeticError) as exc:
        report.problems.append(f"{fn.name}: {exc}")
        return
    report.mutants.extend(checks)
    tol = assignment.spec.tolerance
    for check in checks:
        warning = mutant_warning(fn, check, tol)
        if warning:
            report.warnings.append(warning)
        elif check.hidden_only:
            report.notes.append(
                f"{fn.name}: mutant {check.name!r} is caught on hidden trials only, so a student who makes this "
                "mistake never sees a failing input; consider a visible case that catches it"
            )
    first = checks[0].first
    caught = sum(1 for c in checks if not c.missed_seeds)
    if caught == len(checks):
        head = f"{len(checks)} mutant(s) evaluate and differ from the reference, each caught by every grading"
    else:
        head = f"{len(checks)} mutant(s) evaluate; {caught} of them caught by every grading (see the warnings)"
    report.notes.append(
        f"{fn.name}: {head}. On the trials of one grading (seed {first.seed}: {first.trials} trials, "
        f"{first.visible} visible, {first.hidden} hidden):\n" + "\n".join("  " + c.line() for c in checks)
    )


def _as_returned(expected: Any) -> Any:
    if isinstance(expected, list):
        return [Returned(e, "array") for e in expected]
    return Returned(expected, "array")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def _fd_check(fn: Function, trial: Trial, rng: np.random.Generator, report: SelfTestReport) -> int:
    checked = 0
    for info, expected in zip(fn.leaves, trial.expected):
        name = info.leaf.grad
        if name is None or name not in trial.inputs:
            continue  # values and gradients of intermediate nodes are checked by the engine's own tests
        value = trial.inputs[name]
        arrays = value if isinstance(value, list) else [value]
        grads = expected if isinstance(expected, list) else [expected]
        for k, (array, grad) in enumerate(zip(arrays, grads)):
            if not isinstance(array, np.ndarray) or array.size == 0:
                continue
            for _ in range(min(FD_SAMPLES, array.size)):
                flat = int(rng.integers(array.size))
                numeric = _central_difference(fn, trial, name, k if isinstance(value, list) else None, flat)
                analytic = float(grad.reshape(-1)[flat])
                scale = max(1.0, float(np.max(np.abs(grad))))
                if abs(numeric - analytic) > 1e-5 * scale:
                    report.problems.append(
                        f"{fn.name}: trial {trial.index}: d{name} entry {flat} is {analytic:.8g} by the engine "
                        f"but {numeric:.8g} by finite differences; is the forward non-smooth there?"
                    )
                    return checked
                checked += 1
    return checked


def _central_difference(fn: Function, trial: Trial, name: str, layer: Optional[int], flat: int) -> float:
    def at(delta: float) -> float:
        inputs = dict(trial.inputs)
        if layer is None:
            array = inputs[name].copy()
            array.reshape(-1)[flat] += delta
            inputs[name] = array
        else:
            arrays = [a.copy() for a in inputs[name]]
            arrays[layer].reshape(-1)[flat] += delta
            inputs[name] = arrays
        return objective_value(fn, inputs, trial.dims, trial.upstream)

    return (at(FD_EPS) - at(-FD_EPS)) / (2 * FD_EPS)


def _check_starter(assignment: Assignment, report: SelfTestReport) -> None:
    try:
        tree = ast.parse(assignment.read_text("starter"))
    except (OSError, SyntaxError, UnicodeDecodeError) as exc:
        report.problems.append(f"starter file cannot be parsed: {exc}")
        return
    defined = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    for fn in assignment.functions:
        node = defined.get(fn.name)
        if node is None:
            report.problems.append(f"starter file does not define {fn.name}")
            continue
        names = [a.arg for a in node.args.posonlyargs + node.args.args]
        if names != fn.spec.args:
            report.problems.append(
                f"starter {fn.name}({', '.join(names)}) does not match the spec's arguments ({', '.join(fn.spec.args)})"
            )
