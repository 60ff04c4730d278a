"""Whether the trials of one grading catch the known mistakes, for the self-test.

A mistake is only recognisable, and only costs points, if its answer fails at least one
trial. So for every declared mutant, and for the assignment-independent relations the
recogniser names (a transposed answer, a sign error, a factor of 2), this compares the
wrong answer with the expected one on every trial a grading makes (visible and hidden, one
seed at a time) with the grader's own comparator and tolerance (`grader.compare.check_leaf`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from grader.compare import check_leaf
from grader.runner import Returned
from grader.spec.load import Assignment, Function, LeafInfo
from grader.spec.model import Tolerance
from grader.trials import Trial

# Per seed: the trials one grading with that seed makes for a function.
Gradings = dict[int, list[Trial]]


@dataclass(frozen=True)
class Caught:
    """How one wrong answer fares on the trials of one grading."""

    seed: int
    trials: int
    hidden: int
    failed: int
    failed_hidden: int

    @property
    def visible(self) -> int:
        return self.trials - self.hidden

    @property
    def failed_visible(self) -> int:
        return self.failed - self.failed_hidden

    @property
    def caught(self) -> bool:
        return self.failed > 0


@dataclass(frozen=True)
class MutantCheck:
    """One declared mutant over the self-test's gradings (the first seed is the one shown)."""

    function: str
    name: str
    gradings: tuple[Caught, ...]
    # The largest difference from the expected answers over every trial, relative to the
    # largest expected magnitude of that output: how far it is from being caught.
    largest_difference: float

    @property
    def first(self) -> Caught:
        return self.gradings[0]

    @property
    def missed_seeds(self) -> list[int]:
        return [g.seed for g in self.gradings if not g.caught]

    @property
    def hidden_only(self) -> bool:
        """Caught, but on hidden trials alone: the student never sees a failing input."""
        return self.first.caught and self.first.failed_visible == 0

    @property
    def verdict(self) -> str:
        if not self.first.caught:
            return "NOT CAUGHT"
        if self.missed_seeds:
            return "caught with this seed, not with seed " + ", ".join(str(s) for s in self.missed_seeds)
        if self.hidden_only:
            return "caught on hidden trials only"
        return "caught"

    def line(self) -> str:
        g = self.first
        return (
            f"mutant {self.name!r} fails {g.failed} of {g.trials} trials "
            f"({g.failed_visible} visible, {g.failed_hidden} hidden): {self.verdict}"
        )


def as_returned(expected: Any) -> Any:
    """An answer as the runner hands it to the comparator: a NumPy array (or a list of them)."""
    if isinstance(expected, list):
        return [Returned(np.asarray(e), "array") for e in expected]
    return Returned(np.asarray(expected), "array")


def fails(fn: Function, tol: Tolerance, trial: Trial, answers: Sequence[Any], only: Optional[LeafInfo] = None) -> bool:
    """Whether `answers` (one per output, or for `only` that output) fail `trial` as a
    submission returning them would."""
    for info, expected, answer in zip(fn.leaves, trial.expected, answers):
        if only is not None and info is not only:
            continue
        if not check_leaf(info, expected, as_returned(answer), tol, trial.hidden).passed:
            return True
    return False


def caught_on(
    fn: Function, tol: Tolerance, seed: int, trials: list[Trial], answers_of: Callable[[Trial], Sequence[Any]],
    only: Optional[LeafInfo] = None,
) -> Caught:
    failed = [t for t in trials if fails(fn, tol, t, answers_of(t), only)]
    return Caught(
        seed=seed,
        trials=len(trials),
        hidden=sum(1 for t in trials if t.hidden),
        failed=len(failed),
        failed_hidden=sum(1 for t in failed if t.hidden),
    )


def _flat(value: Any) -> np.ndarray:
    if isinstance(value, list):
        return np.concatenate([np.ravel(np.asarray(v, dtype=np.float64)) for v in value]) if value else np.zeros(0)
    return np.ravel(np.asarray(value, dtype=np.float64))


def _relative_difference(answers: Sequence[Any], expected: Sequence[Any]) -> float:
    worst = 0.0
    for a, e in zip(answers, expected):
        fa, fe = _flat(a), _flat(e)
        if fa.shape != fe.shape:
            return float("inf")
        scale = max(float(np.max(np.abs(fe))) if fe.size else 0.0, 1e-300)
        if fa.size:
            worst = max(worst, float(np.max(np.abs(fa - fe))) / scale)
    return worst


def check_mutants(
    assignment: Assignment, fn: Function, gradings: Gradings, before: Optional[Callable[[str], None]] = None
) -> list[MutantCheck]:
    """Each declared mutant on every grading. Raises ValueError or ArithmeticError (with the
    mutant's name) when a mutant cannot be evaluated on some trial. `before` is called with
    what comes next before each evaluation (the self-test checks its time budget there)."""
    from grader.mistakes import mutant_outputs

    tol = assignment.spec.tolerance
    checks = []
    for m, mutant in enumerate(fn.spec.mutants):
        answers: dict[tuple[int, int], list[Any]] = {}
        for seed, trials in gradings.items():
            for t in trials:
                if before is not None:
                    before(f"evaluating {fn.name}'s mutant {mutant.name!r} on trial {t.index} for seed {seed}")
                try:
                    answers[(seed, t.index)] = mutant_outputs(fn, m, t)
                except (ValueError, ArithmeticError) as exc:
                    raise type(exc)(f"mutant {mutant.name!r} cannot be evaluated: {exc}") from None
        results = tuple(
            caught_on(fn, tol, seed, trials, lambda t, s=seed: answers[(s, t.index)])  # type: ignore[misc]
            for seed, trials in gradings.items()
        )
        largest = max(
            (_relative_difference(answers[(seed, t.index)], t.expected) for seed, trials in gradings.items() for t in trials),
            default=0.0,
        )
        checks.append(MutantCheck(fn.name, mutant.name, results, largest))
    return checks


def mutant_warning(fn: Function, check: MutantCheck, tol: Tolerance) -> Optional[str]:
    """What an instructor should hear about a mutant that some grading does not catch."""
    if not check.missed_seeds:
        return None
    if check.first.caught:
        seeds = ", ".join(str(s) for s in check.missed_seeds)
        return (
            f"{fn.name}: mutant {check.name!r} is caught with seed {check.first.seed} but fails none of the trials "
            f"with seed {seeds}, so some students who make this mistake would get full marks: "
            "add a fixed case (`cases:`) where the mistake changes the answer, so that every grading has one"
        )
    g = check.first
    head = (
        f"{fn.name}: mutant {check.name!r} fails none of the {g.trials} trials of a grading (seed {g.seed}), "
        "so the trials are too weak to catch it"
    )
    if check.largest_difference <= 1e-12:
        return (
            f"{head}: it gives the expected answers on every trial, so it can never be recognised; "
            "e.g. add a trial where this mistake changes the answer (other dimensions, or inputs where the term "
            "it gets wrong is not zero), or check that the mutant really differs from the forward definition"
        )
    return (
        f"{head}: its answers differ from the expected ones by at most {check.largest_difference:.2g} of the "
        f"largest expected value, within the tolerance (rtol {tol.rtol:g}, atol {tol.atol:g}); e.g. add a trial "
        "where the term it gets wrong is larger (a larger value of the input or parameter it involves)"
    )


# --- relations the recogniser names for every spec ---------------------------------------


def _matrices(value: Any) -> list[np.ndarray]:
    values = value if isinstance(value, list) else [value]
    return [np.asarray(v) for v in values if np.ndim(v) == 2]


def _transpose(value: Any) -> Any:
    if isinstance(value, list):
        return [np.transpose(v) if np.ndim(v) == 2 else v for v in value]
    return np.transpose(value)


def _scale(value: Any, c: float) -> Any:
    if isinstance(value, list):
        return [c * np.asarray(v) for v in value]
    return c * np.asarray(value)


def _dims_of(fn: Function, info: LeafInfo) -> Optional[tuple[str, str]]:
    """The dimension names of a matrix output that is an input's gradient, e.g. ("D", "M")."""
    inp = fn.inputs.get(info.leaf.target)
    if inp is None or inp.type != "array" or not isinstance(inp.shape, list) or len(inp.shape) != 2:
        return None
    a, b = inp.shape
    return (a, b) if isinstance(a, str) and isinstance(b, str) else None


def check_relations(assignment: Assignment, fn: Function, gradings: Gradings) -> tuple[list[str], list[str]]:
    """Per output, whether a transposed answer, a sign error and a factor of 2 fail at least
    one trial of every grading: (warnings, notes) for the instructor."""
    tol = assignment.spec.tolerance
    warnings: list[str] = []
    notes: list[str] = []
    for index, info in enumerate(fn.leaves):
        label = info.label
        missed: dict[str, list[int]] = {"transposed": [], "sign": [], "factor": [], "square": []}
        has_matrix = False
        for seed, trials in gradings.items():
            if not trials:
                continue
            if any(_matrices(t.expected[index]) for t in trials):
                has_matrix = True

                def transposed(t: Trial) -> list[Any]:
                    return [_transpose(e) if i == index else e for i, e in enumerate(t.expected)]

                if not caught_on(fn, tol, seed, trials, transposed, info).caught:
                    missed["transposed"].append(seed)
                elif all(m.shape[0] == m.shape[1] for t in trials for m in _matrices(t.expected[index])):
                    missed["square"].append(seed)
            for kind, c in (("sign", -1.0), ("factor", 2.0)):

                def scaled(t: Trial, c: float = c) -> list[Any]:
                    return [_scale(e, c) if i == index else e for i, e in enumerate(t.expected)]

                if not caught_on(fn, tol, seed, trials, scaled, info).caught:
                    missed[kind].append(seed)
        dims = _dims_of(fn, info)
        equal = f"{dims[0]} == {dims[1]}" if dims else f"{label} square"
        unequal = f"{dims[0]} != {dims[1]}" if dims else f"{label} is not square"
        declared_square = dims is not None and dims[0] == dims[1]
        if has_matrix and missed["transposed"]:
            warnings.append(
                f"{fn.name}: a transposed {label} passes every trial with seed {_seeds(missed['transposed'])} "
                f"({label} equals its own transpose there), so a transposed {label} is never caught: "
                f"add a case where {unequal}"
            )
        elif has_matrix and missed["square"] and declared_square:
            assert dims is not None
            notes.append(
                f"{fn.name}: {label} is ({dims[0]}, {dims[0]}), square by its declared shape, so a transposed {label} "
                "is caught by its values only (students are told of wrong values, not of the transposed shape)"
            )
        elif has_matrix and missed["square"]:
            warnings.append(
                f"{fn.name}: every trial with seed {_seeds(missed['square'])} has {equal}, so a transposed {label} "
                "has the right shape and is caught only by its values, without the hint that it is transposed: "
                f"add a case where {unequal}"
            )
        if missed["sign"] or missed["factor"]:
            seeds = sorted(set(missed["sign"]) | set(missed["factor"]))
            warnings.append(
                f"{fn.name}: {label} is zero (within the tolerance) on every trial with seed {_seeds(seeds)}, so a sign "
                f"error or a factor of 2 in {label} is never caught: add a trial where {label} is not zero"
            )
    return warnings, notes


def _seeds(seeds: list[int]) -> str:
    return ", ".join(str(s) for s in seeds)
