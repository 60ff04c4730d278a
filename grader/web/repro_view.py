"""Downloads of a submission's failing visible trials (`grader/repro.py`): which trials a
result page offers, and the checks every download passes before anything is generated.

A trial is offered only when the stored result says it was visible and did not pass, the
result belongs to the spec version and seed stored on the row, and the regenerated trial
agrees with what the result recorded about it. Anything else is a 404, like every page a
user may not see. Who may see the submission at all is `access.submission_for`'s job."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

from flask import abort, url_for

from grader import repro
from grader.grade import jsonable_shape
from grader.spec import Assignment as LoadedSpec
from grader.spec import SpecError
from grader.store import catalog
from grader.store.models import Submission
from grader.trials import Trial

log = logging.getLogger(__name__)

# Each download regenerates trials and compresses arrays (up to repro.MAX_DOWNLOAD_BYTES for a
# large custom spec): a generous budget for a student working through failures, per
# account, so a script cannot tie up the web processes.
DOWNLOAD_RATE = "60 per minute"


@dataclass(frozen=True)
class Offer:
    """What a graded submission offers: its spec and, per function, the failing visible trials."""

    spec: LoadedSpec
    trials: dict[str, list[int]]
    shapes: dict[tuple[str, int], Any]  # (function, index) -> the shapes the result recorded


def offer(sub: Submission) -> Optional[Offer]:
    """None when the submission has nothing to download (not graded, all passed, or a
    result that does not belong to the row's spec version and seed)."""
    result = sub.result if sub.status == "graded" and isinstance(sub.result, dict) else None
    trials = repro.failing_visible(result)
    if result is None or not trials:
        return None
    if "seed" in result and result["seed"] != sub.seed:
        return None
    try:
        spec = catalog.loaded_spec(sub.version)
    except (SpecError, OSError) as exc:
        log.warning("submission=%s version=%s event=spec-load-failed error=%r", sub.id, sub.version_id, exc)
        return None
    if str(spec.spec.version) != str(result.get("assignment_version")) or spec.id != result.get("assignment", spec.id):
        return None  # graded against another spec than the row now names
    shapes = {
        (part["function"], t["index"]): t.get("shapes")
        for part in result.get("parts") or []
        if isinstance(part, dict) and isinstance(part.get("function"), str) and part["function"] in trials
        for t in (part["trials"] if isinstance(part.get("trials"), list) else [])
        if isinstance(t, dict) and t.get("index") in trials[part["function"]]
    }
    known = {fn.name for fn in spec.functions}
    return Offer(spec, {name: ids for name, ids in trials.items() if name in known}, shapes)


def links(sub: Submission, blueprint: str = "student", external: bool = False) -> dict[str, dict[str, Any]]:
    """Function -> {"all": zip of all its failing visible trials, "trials": {index: {"zip":
    that trial's zip, "npz": its inputs alone}}}: for the result page (the `student`
    routes) or the API's answer (the `api` routes, which take a token instead of a login)."""
    found = offer(sub)
    if found is None:
        return {}

    def url(endpoint: str, **values: Any) -> str:
        return url_for(f"{blueprint}.{endpoint}", submission_id=sub.id, _external=external, **values)

    return {
        function: {
            "all": url("trials_repro", function=function),
            "trials": {
                i: {
                    "zip": url("trial_repro", function=function, index=i),
                    "npz": url("trial_inputs", function=function, index=i),
                }
                for i in indices
            },
        }
        for function, indices in found.trials.items()
    }


ZIP = "application/zip"
NPZ = "application/octet-stream"


def trial_zip(sub: Submission, function: str, index: int) -> tuple[bytes, str, str]:
    """(data, file name, MIME type) of one failing visible trial: its .npz and the script."""
    files, spec = bundle(sub, function, [index])
    folder = f"{spec.id}-{function}-trial{index}"
    return files.zip_bytes(folder), f"{folder}.zip", ZIP


def trial_npz(sub: Submission, function: str, index: int) -> tuple[bytes, str, str]:
    """(data, file name, MIME type) of one failing visible trial's .npz alone."""
    files, _spec = bundle(sub, function, [index])
    name = repro.npz_name(function, index)
    return files.files[name], name, NPZ


def function_zip(sub: Submission, function: str) -> tuple[bytes, str, str]:
    """(data, file name, MIME type) of every failing visible trial of `function`, one script."""
    files, spec = bundle(sub, function)
    folder = f"{spec.id}-{function}-failing-trials"
    return files.zip_bytes(folder), f"{folder}.zip", ZIP


def bundle(sub: Submission, function: str, indices: Optional[list[int]] = None) -> tuple[repro.Bundle, LoadedSpec]:
    """The files for trials `indices` of `function` (all its failing visible ones when
    None), or a 404 when any of them is not offered."""
    found = offer(sub)
    if found is None or function not in found.trials:
        abort(404)
    wanted = found.trials[function] if indices is None else indices
    if not wanted or any(i not in found.trials[function] for i in wanted):
        abort(404)
    module = repro.module_file(sub.filename)
    try:
        trials = [repro.regenerate(found.spec, function, sub.seed, i) for i in wanted]
        for trial in trials:
            _agrees(sub, found, trial)
        files = repro.bundle_trials(found.spec, function, trials, module=module)
    except repro.ReproError as exc:
        log.warning("submission=%s function=%s event=repro-refused error=%s", sub.id, function, exc)
        abort(404)
    return files, found.spec


def _agrees(sub: Submission, found: Offer, trial: Trial) -> None:
    """The regenerated trial has the shapes grading recorded; if not, the spec or the trial
    generator changed under the stored result, and the download would mislead."""
    recorded = found.shapes.get((trial.function, trial.index))
    if recorded is None:
        return
    regenerated = {name: jsonable_shape(shape) for name, shape in trial.arg_shapes.items()}
    if recorded != regenerated:
        log.error("submission=%s function=%s trial=%s event=repro-mismatch", sub.id, trial.function, trial.index)
        raise repro.ReproError("the regenerated trial differs from the graded one")
