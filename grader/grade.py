"""Grading one submission: the code path shared by `grader grade` and the Celery worker.

Reference answers come from the engine, the student's functions run out of process, and
every verdict is reached here, in the trusted parent. The result is a JSON-ready dict.
"""

from __future__ import annotations

import builtins
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from grader import __version__
from grader.chain import ChainReport, report_for
from grader.compare import Check, StructureError, article, check_leaves, check_unchanged, locate, to_array
from grader.mistakes import Mistake, Observation, Recogniser
from grader.runner import Call, CallResult, Job, LoadResult, Runner, RunReport
from grader.spec.load import Assignment, Function, LeafInfo
from grader.spec.program import ProgramError
from grader.trials import Trial, TrialError, make_trials

MAX_SOURCE_BYTES = 1 << 20
MAX_DETAILS = 3  # failing trials spelled out per function in the feedback text


class SubmissionRejected(Exception):
    """The file cannot be run at all (empty, binary, too large): graded 0 with this message."""


class GradingError(Exception):
    """The grader cannot grade this assignment (a spec whose trials cannot be generated):
    a fault of the spec, never of the student, so no score is given."""


def decode_source(data: bytes, max_bytes: int = MAX_SOURCE_BYTES) -> str:
    if len(data) > max_bytes:
        raise SubmissionRejected(
            f"Your file is {len(data):,} bytes; the limit is {max_bytes:,} bytes. "
            "Submit only your Python source file."
        )
    if not data.strip():
        raise SubmissionRejected("Your file is empty. Submit the Python file with your functions.")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise SubmissionRejected("Your file is saved as UTF-16 text. Save it as UTF-8 and submit again.")
    if b"\x00" in data:
        raise SubmissionRejected(
            "Your file contains NUL bytes, so it is not Python source (a binary file, a notebook export "
            "or a zip?). Submit the .py file itself."
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SubmissionRejected(
            f"Your file is not valid UTF-8 text (byte {exc.start} cannot be decoded). "
            "Save it as UTF-8 and submit again."
        ) from None
    return text


@dataclass
class _Timer:
    phases: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, started: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + (time.perf_counter() - started) * 1000


def new_seed() -> int:
    # 53 bits: the seed travels in JSON, and a JavaScript client must read it exactly.
    return secrets.randbits(53)


_default_runner: Optional[Runner] = None


def default_runner() -> Runner:
    """The process-wide runner (one sandbox zygote per worker process or CLI run), made on
    first use as the configuration asks; raises SandboxUnavailable rather than degrade."""
    global _default_runner
    if _default_runner is None:
        import atexit

        from grader.sandbox import make_runner

        _default_runner = make_runner()
        atexit.register(_default_runner.close)
    return _default_runner


def grade_bytes(
    assignment: Assignment,
    data: bytes,
    seed: Optional[int] = None,
    runner: Optional[Runner] = None,
) -> dict[str, Any]:
    """Grade one submitted file. Always returns a result; a bad file scores 0 with a reason."""
    seed = new_seed() if seed is None else seed
    timer = _Timer()
    started = time.perf_counter()
    try:
        source = decode_source(data)
    except SubmissionRejected as exc:
        parts = [_part_unrun(fn, str(exc)) for fn in assignment.functions]
        return _result(assignment, seed, parts, [str(exc)], timer, started)

    t = time.perf_counter()
    try:
        trials = {fn.name: make_trials(assignment, fn, seed) for fn in assignment.functions}
    except (TrialError, ProgramError) as exc:
        raise GradingError(f"assignment {assignment.id} v{assignment.spec.version}, seed {seed}: {exc}") from None
    timer.add("reference_ms", t)

    # Limits are merged with the defaults at load time, so every field is set. Per call:
    # wall and CPU seconds; per process (the strictest need wins): memory, import, budget.
    calls = [
        Call(fn.name, trial.args, _limit(fn.limits.wall_seconds), _limit(fn.limits.cpu_seconds), trial.hidden)
        for fn in assignment.functions
        for trial in trials[fn.name]
    ]
    memory = max(int(_limit(fn.limits.memory_mb)) for fn in assignment.functions)
    import_seconds = max(_limit(fn.limits.import_seconds) for fn in assignment.functions)
    job_seconds = max(_limit(fn.limits.job_seconds) for fn in assignment.functions)
    job = Job(source, calls, memory_mb=memory, import_seconds=import_seconds, max_seconds=job_seconds)

    t = time.perf_counter()
    report = (runner or default_runner()).run(job)
    timer.add("run_ms", t)
    timer.phases["runner_restarts"] = report.restarts

    t = time.perf_counter()
    messages: list[str] = []
    if report.load.status != "ok":
        load_message = _load_message(report.load, import_seconds)
        messages.append(load_message)
        parts = [_part_unrun(fn, load_message) for fn in assignment.functions]
    else:
        parts = []
        offset = 0
        for fn in assignment.functions:
            fn_trials = trials[fn.name]
            results = report.calls[offset : offset + len(fn_trials)]
            offset += len(fn_trials)
            parts.append(_grade_function(assignment, fn, fn_trials, results, report, memory))
    if report.output.get("<import>"):
        messages.append("Your file printed while it was loaded:\n" + report.output["<import>"])
    timer.add("compare_ms", t)
    return _result(assignment, seed, parts, messages, timer, started)


def _limit(value: Optional[float]) -> float:
    assert value is not None, "limits are merged with DEFAULT_LIMITS when a spec is loaded"
    return float(value)


def _result(
    assignment: Assignment,
    seed: int,
    parts: list[dict[str, Any]],
    messages: list[str],
    timer: _Timer,
    started: float,
) -> dict[str, Any]:
    timer.phases["total_ms"] = (time.perf_counter() - started) * 1000
    return {
        "assignment": assignment.id,
        "assignment_version": assignment.spec.version,
        "title": assignment.spec.title,
        "status": "graded",
        "score": _round(sum(p["score"] for p in parts)),
        "max_score": _round(assignment.max_score),
        "seed": seed,
        "messages": messages,
        "parts": parts,
        "timing": {k: round(v, 3) for k, v in timer.phases.items()},
        "grader_version": __version__,
    }


def _round(x: float) -> float:
    return round(x + 0.0, 6)


def _load_message(load: LoadResult, import_seconds: float) -> str:
    if load.status == "timeout":
        return (
            f"Your file did not finish loading within {import_seconds:g} s, so no function was run. "
            "Is there a long computation or an infinite loop at the top level?"
        )
    if load.status == "crashed":
        return f"The process running your file died while loading it ({load.detail}), so no function was run."
    if load.status in ("protocol", "too_large"):
        return (
            f"While your file was loading, the grader received something it could not read ({load.detail}), "
            "so no function was run. Does your file write to file descriptors it does not own?"
        )
    err = load.error or {}
    kind = err.get("type", "Exception")
    line = err.get("line")
    at = f" at line {line}" if line else ""
    if kind in ("SyntaxError", "IndentationError", "TabError"):
        head = f"Your file has {article(kind)} {kind}{at}, so no function could be run."
    else:
        head = f"Your file raised {kind}{at} while it was loaded, so no function could be run."
    return head + ("\n" + err["text"].rstrip() if err.get("text") else "")


def _part_unrun(fn: Function, message: str) -> dict[str, Any]:
    return {
        "function": fn.name,
        "score": 0.0,
        "max_score": _round(fn.spec.points),
        "status": "not_run",
        "feedback": message,
        "outputs": [_output_entry(info, False, [], False) for info in fn.leaves],
        "trials": [],
    }


def _output_entry(info: LeafInfo, passed: bool, failed: list[int], float32: bool) -> dict[str, Any]:
    return {
        "name": info.label,
        "where": info.where,
        "score": _round(info.points if passed else 0.0),
        "max_score": _round(info.points),
        "passed": passed,
        "failed_trials": failed,
        "float32": float32,
        "mistakes": [],
    }


def _shape_names(fn: Function, info: LeafInfo) -> Optional[str]:
    """The symbolic shape of an output, e.g. "(D, M)", when it is an input's gradient."""
    inp = fn.inputs.get(info.leaf.target)
    if inp is None or not isinstance(inp.shape, list) or inp.type != "array":
        return None
    names = [str(d) for d in inp.shape]
    return "(" + ", ".join(names) + ("," if len(names) == 1 else "") + ")"


def _grade_function(
    assignment: Assignment,
    fn: Function,
    trials: list[Trial],
    results: list[CallResult],
    report: RunReport,
    memory_mb: int,
) -> dict[str, Any]:
    tol = assignment.spec.tolerance
    leaves = fn.leaves
    labels = [info.label for info in leaves]
    failed: dict[str, list[int]] = {label: [] for label in labels}
    float32 = {label: False for label in labels}
    trial_entries: list[dict[str, Any]] = []
    details: list[str] = []
    general: Optional[str] = None  # one message that applies to every trial (missing, arity)
    # What each failing output returned on each failing trial, for recognising the mistake.
    seen: dict[str, list[Observation]] = {label: [] for label in labels}

    # Every returned output is located first, so that all of them are compared at once.
    shape_names = [_shape_names(fn, info) for info in leaves]
    found_in: list[Optional[dict[Any, Any]]] = []
    requests: list[tuple[LeafInfo, Any, Any, bool, Optional[str]]] = []
    for trial, res in zip(trials, results):
        if res.status != "ok":
            found_in.append(None)
            continue
        expected_at = {info.path: value for info, value in zip(leaves, trial.expected)}
        found = locate(fn.spec.returns, res.value, expected_at, trial.hidden)
        found_in.append(found)
        hidden = trial.hidden
        requests.extend(
            (info, expected, found[info.path], hidden, names)
            for info, expected, names in zip(leaves, trial.expected, shape_names)
        )
    checks = iter(check_leaves(requests, tol))

    for trial, res, found in zip(trials, results, found_in):
        entry = _trial_entry(trial, res)
        problems: list[str] = []
        if found is not None:
            changed = check_unchanged(fn.spec.args, trial.args, res.args_after)
            changed_arg = _changed_arg(fn, trial, res) if changed else None
            outcomes: dict[str, str] = {}
            for info, label, expected in zip(leaves, labels, trial.expected):
                check: Check = next(checks)
                if check.float32:
                    float32[label] = True
                if check.passed and changed is None:
                    outcomes[label] = "passed"
                    continue
                outcomes[label] = "failed"
                failed[label].append(trial.index)
                got = None if check.passed else _as_value(found[info.path], expected)
                seen[label].append(Observation(trial, got if changed is None else None, changed_arg))
                if not check.passed and check.message not in problems:
                    problems.append(check.message)  # one structure error can hit several outputs
            if changed:
                problems.insert(0, f"{fn.name} {changed}")
            entry["outputs"] = outcomes
            entry["status"] = "passed" if not problems else "failed"
        else:
            out_of_memory = res.status == "error" and (res.error or {}).get("type") == "MemoryError"
            for label in labels:
                failed[label].append(trial.index)
                seen[label].append(Observation(trial, out_of_memory=out_of_memory))
            message = _call_problem(fn, trial, res, memory_mb)
            if res.status in ("missing", "not_callable", "bad_signature"):
                general = message
            problems.append(message)
            entry["status"] = res.status
        entry["messages"] = problems
        trial_entries.append(entry)
        if problems and general is None and len(details) < MAX_DETAILS and res.status != "skipped":
            details.append(f"{_trial_title(trial)}: " + "\n  ".join(problems))

    outputs = [_output_entry(info, not failed[info.label], failed[info.label], float32[info.label]) for info in fn.leaves]
    # Only failing outputs are examined: a correct submission pays nothing and is never told of a mistake.
    recogniser = Recogniser(fn)
    recognised: dict[str, list[Mistake]] = {}
    for info, o in zip(fn.leaves, outputs):
        if not o["passed"] and general is None:
            recognised[info.label] = recogniser.recognise(info, seen[info.label], len(trials) - len(o["failed_trials"]))
            o["mistakes"] = [m.name for m in recognised[info.label]]
    score = sum(o["score"] for o in outputs)
    n = len(trials)
    passed_all = all(o["passed"] for o in outputs)
    lines: list[str] = []
    chain: Optional[ChainReport] = None  # only for a function with a chain and a wrong output in it
    if general:
        lines.append(general)
    elif passed_all:
        lines.append(f"All {n} trials passed.")
    else:
        # One mistake often explains several outputs (a wrong dJ/do spoils every gradient
        # after it): its explanation is given once, at the first output it explains.
        explained: dict[str, str] = {}
        for o in outputs:
            state = "correct" if o["passed"] else f"wrong on {len(o['failed_trials'])} of {n} trials"
            lines.append(f"{o['name']}: {state} ({_fmt_points(o['score'])}/{_fmt_points(o['max_score'])} points)")
            for mistake in recognised.get(o["name"], []):
                if mistake.name in explained:
                    lines.append(f"  Recognised mistake: {mistake.name} (the same as for {explained[mistake.name]} above).")
                    continue
                text = _mistake_text(mistake, o, trials)
                if mistake.message in text:  # a name alone (hidden trials) explains nothing to point back to
                    explained[mistake.name] = o["name"]
                lines.append("  Recognised mistake: " + text)
        chain = _chain_report(fn, outputs, trial_entries)
        if chain is not None:
            lines.append(chain.feedback_line)
        total_failing = sum(1 for e in trial_entries if e["status"] != "passed")
        lines.extend(details)
        if total_failing > len(details):
            lines.append(f"... and {total_failing - len(details)} more failing trial(s); see the trial list.")
    if any(o["float32"] for o in outputs):
        lines.append(
            "Some outputs were float32; they were checked with the float32 tolerance "
            f"(rtol {tol.float32_rtol:g}). Return float64 to be checked at full precision."
        )
    printed = report.output.get(fn.name)
    part: dict[str, Any] = {
        "function": fn.name,
        "score": _round(score),
        "max_score": _round(fn.spec.points),
        "status": "passed" if passed_all else ("partial" if score > 0 else "failed"),
        "feedback": "\n".join(lines),
        "outputs": outputs,
        "trials": trial_entries,
    }
    if chain is not None:
        part["chain"] = chain.as_json()
    if printed:
        part["printed"] = printed
    return part


def _chain_report(fn: Function, outputs: list[dict[str, Any]], trial_entries: list[dict[str, Any]]) -> Optional[ChainReport]:
    """Where the chain of gradients broke. An output counts as wrong only when it was wrong
    on a call that returned: a crash or a time-out says nothing about which step is wrong."""
    returned = {e["index"] for e in trial_entries if e["status"] in ("passed", "failed")}
    wrong = {o["name"] for o in outputs if returned.intersection(o["failed_trials"])}
    return report_for(fn, wrong)


def _mistake_text(mistake: Mistake, output: dict[str, Any], trials: list[Trial]) -> str:
    """The explanation, or only the mistake's name when it rests on hidden trials alone:
    hidden inputs must not be described, not even through a ratio."""
    failing = set(output["failed_trials"])
    if all(t.hidden for t in trials if t.index in failing):
        return f"{mistake.name} (on hidden trials only, so no details are shown)."
    return f"{mistake.name}. {mistake.message}"


def _changed_arg(fn: Function, trial: Trial, res: CallResult) -> Optional[str]:
    """The name of the first argument the call modified in place."""
    after = res.args_after
    if not isinstance(after, (list, tuple)):
        return None
    for name, before, now in zip(fn.spec.args, trial.args, after):
        if check_unchanged([name], [before], [now]):
            return name
    return None


def _as_value(actual: Any, expected: Any) -> Any:
    """A returned output as arrays (a list of them for a per-layer output), or None when it
    is not numeric data of a usable kind."""
    if isinstance(actual, StructureError):
        return None
    if isinstance(expected, list):
        if not isinstance(actual, (list, tuple)):
            return None
        parts = [to_array(a, True) for a in actual]
        return None if any(isinstance(p, str) for p in parts) else [np.asarray(p, dtype=np.float64) for p in parts]
    array = to_array(actual, True)
    if isinstance(array, str) or array.dtype.kind not in "iuf":
        return None
    return np.asarray(array, dtype=np.float64)


def _fmt_points(x: float) -> str:
    return f"{x:g}"


def _trial_title(trial: Trial) -> str:
    if trial.hidden:
        return f"Trial {trial.index} (hidden; {trial.label})"
    return f"Trial {trial.index} ({trial.label}; {trial.describe()})"


def _trial_entry(trial: Trial, res: CallResult) -> dict[str, Any]:
    entry: dict[str, Any] = {"index": trial.index, "label": trial.label, "hidden": trial.hidden}
    if not trial.hidden:
        # Hidden trials carry no shapes, and no timings: a submission could time its
        # calls to spell out a hidden input.
        entry["shapes"] = {k: list(v) if type(v) is tuple else jsonable_shape(v) for k, v in trial.arg_shapes.items()}
        entry["dims"] = dict(trial.dims)
        if res.seconds is not None:
            entry["seconds"] = round(res.seconds, 6)
    return entry


def jsonable_shape(shape: Any) -> Any:
    """A trial's argument shape as stored in the result JSON (tuples become lists)."""
    if isinstance(shape, tuple):
        return list(shape)
    if isinstance(shape, list):
        return [jsonable_shape(s) for s in shape]
    return shape


# Exception types a hidden trial may name; anything else (a class the student defined,
# whose name they choose) is reported as "an exception".
_BUILTIN_ERRORS = {name for name, obj in vars(builtins).items() if isinstance(obj, type) and issubclass(obj, BaseException)}


def _call_problem(fn: Function, trial: Trial, res: CallResult, memory_mb: int) -> str:
    name = fn.name
    wall = fn.limits.wall_seconds
    if trial.hidden and res.status in ("error", "crashed", "protocol", "too_large"):
        # Tracebacks, exit codes and sizes are the student's to choose: on a hidden trial
        # they could carry its inputs out. Say only what kind of failure it was.
        kind = (res.error or {}).get("type", "")
        if res.status == "error" and kind == "MemoryError":
            return f"{name} ran out of memory (limit {memory_mb} MB) on this hidden trial."
        if res.status == "error":
            return f"{name} raised {kind if kind in _BUILTIN_ERRORS else 'an exception'} on this hidden trial (details of hidden trials are not shown)."
        if res.status == "crashed":
            return f"The process running {name} died on this hidden trial."
        return f"{name} returned something the grader could not accept on this hidden trial."
    if res.status == "missing":
        return f"Your file does not define a function named `{name}`."
    if res.status == "not_callable":
        what = res.detail or "object"
        return f"`{name}` in your file is {article(what)} {what}, not a function."
    if res.status == "bad_signature":
        args = ", ".join(fn.spec.args)
        return f"`{name}` cannot be called as {name}({args}): {res.detail}."
    if res.status == "error":
        err = res.error or {}
        kind = err.get("type", "Exception")
        if kind == "MemoryError":
            return (
                f"{name} ran out of memory (limit {memory_mb} MB) on this trial. Look for a very large "
                "intermediate array, such as a full Jacobian or an outer product you do not need."
            )
        if kind == "RecursionError":
            return f"{name} recursed too deeply (RecursionError)."
        text = err.get("text", "").rstrip()
        return f"{name} raised {kind}" + (f":\n{text}" if text else "")
    if res.status == "timeout" and res.detail == "budget":
        return f"The submission's total time budget ({fn.limits.job_seconds:g} s) ran out during this trial of {name}."
    if res.status == "timeout":
        return f"{name} exceeded the {wall:g} s time limit on this trial and was stopped."
    if res.status == "skipped" and "total time budget" in res.detail:
        return f"Not run: {res.detail} ran out before this trial."
    if res.status == "crashed":
        detail = res.detail or "it died"
        if "SIGXCPU" in detail:
            return f"{name} exceeded the CPU time limit and was stopped."
        return f"The process running {name} died on this trial ({detail})."
    if res.status == "too_large":
        return f"{name} returned more data than allowed ({res.detail})."
    if res.status == "too_complex":
        return f"{name} returned a value nested too deeply or with too many parts to check."
    if res.status == "protocol":
        return f"The grader could not read what {name} returned ({res.detail}); did your code write to file descriptors it does not own?"
    if res.status == "skipped":
        return f"Not run, because an earlier trial of {name} ended with: {res.detail}."
    if res.status == "not_loaded":
        return (
            f"Not run: after an earlier function crashed, the grader restarted your file, "
            f"and loading it failed that time ({res.detail})."
        )
    return f"{name} could not be run ({res.status})."
