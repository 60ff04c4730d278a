"""Failing trials a student can reproduce at home: the trial's inputs and expected outputs
as `.npz`, and a short script (NumPy only, no grader needed) that imports the student's
own file, calls their function on those inputs and compares the answer the way the
grader does.

Trials are regenerated from (assignment, function, seed, index) exactly as grading drew
them (`grader.trials`); nothing is stored. Hidden trials are refused here, whatever the
caller checked before: their inputs, shapes and expected values are the grader's secret.
The seed never goes into a download: with it and the spec, anyone could regenerate the
hidden trials.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Union

import numpy as np

from grader.compare import SCALE_FLOOR
from grader.spec.load import Assignment, Function
from grader.spec.model import DictReturn, Leaf, ReturnSpec, SeqReturn
from grader.trials import Trial, TrialError, make_trial, plan

DEFAULT_MODULE_FILE = "submission.py"
EXPECTED_PREFIX = "expected__"
LIST_SEPARATOR = "__"
# Raw array bytes in one download: the web process builds it in memory. The built-in
# assignments' visible trials need a few kB; only a spec with huge visible trials gets near.
MAX_DOWNLOAD_BYTES = 128 << 20
_SAFE_FILE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}\.py$")
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_]{1,64}$")
# A fixed timestamp: the same trial downloads as the same bytes every time.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class ReproError(ValueError):
    """This trial cannot be offered as a download; the message says why."""


class UnknownFunction(ReproError):
    pass


class TrialOutOfRange(ReproError):
    pass


class HiddenTrial(ReproError):
    """Hidden trials are never reproduced for a student: not their inputs, not their shapes."""


# ---------------------------------------------------------------------------------------
# Which trials a stored result offers for download


def failing_visible(result: Optional[dict[str, Any]]) -> dict[str, list[int]]:
    """Function name -> indices of its visible trials that did not pass, from a stored
    grading result (the JSON `grader grade --json` prints). Anything malformed is skipped."""
    found: dict[str, list[int]] = {}
    if not isinstance(result, dict) or result.get("status") != "graded":
        return found
    parts = result.get("parts")
    for part in parts if isinstance(parts, list) else []:
        if not isinstance(part, dict) or not isinstance(part.get("function"), str):
            continue
        indices = [
            t["index"]
            for t in (part["trials"] if isinstance(part.get("trials"), list) else [])
            if isinstance(t, dict)
            and t.get("hidden") is False
            and t.get("status") not in (None, "passed")
            and type(t.get("index")) is int
        ]
        if indices:
            found[part["function"]] = indices
    return found


# ---------------------------------------------------------------------------------------
# Regenerating a trial


def regenerate(assignment: Assignment, function: str, seed: int, index: int) -> Trial:
    """Trial `index` of `function`, drawn as grading drew it with `seed` (only that trial:
    every trial has its own random stream, so the others need not be generated)."""
    fn = _function(assignment, function)
    plans = plan(fn)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(plans):
        raise TrialOutOfRange(f"{function} has trials 0 to {len(plans) - 1}; there is no trial {index!r}")
    if plans[index].hidden:
        raise HiddenTrial(f"trial {index} of {function} is hidden; hidden trials cannot be downloaded")
    try:
        trial = make_trial(assignment, fn, seed, index, plans[index])
    except TrialError as exc:
        raise ReproError(f"trial {index} of {function} cannot be regenerated: {exc}") from None
    if trial.hidden:  # the plan said visible; a trial that disagrees is refused all the same
        raise HiddenTrial(f"trial {index} of {function} is hidden; hidden trials cannot be downloaded")
    return trial


def _function(assignment: Assignment, function: str) -> Function:
    try:
        return assignment.function(function)
    except KeyError:
        known = ", ".join(f.name for f in assignment.functions)
        raise UnknownFunction(f"assignment {assignment.id} has no function {function!r} (its functions: {known})") from None


# ---------------------------------------------------------------------------------------
# What goes into the .npz


@dataclass(frozen=True)
class Layout:
    """How a function's arguments and expected outputs are named in its .npz files, and
    how the script turns them back into Python values."""

    args: list[tuple[str, str]]  # (argument name, kind): array | list | int | float
    outputs: list[dict[str, Any]]  # {"name", "key", "kind": array | list}
    returns: Any  # the return structure, as plain literals the script walks


def layout(fn: Function, trials: Iterable[Trial]) -> Layout:
    trials = list(trials)
    kinds: Optional[list[str]] = None
    for trial in trials:
        these = [_kind(name, value) for name, value in zip(fn.spec.args, trial.args)]
        if kinds is not None and these != kinds:
            raise ReproError(f"{fn.name}: the arguments change type from trial to trial; cannot write one script")
        kinds = these
    if kinds is None:
        raise ReproError(f"{fn.name}: no trials to reproduce")
    outputs: list[dict[str, Any]] = []
    used = set(fn.spec.args)
    for i, info in enumerate(fn.leaves):
        key = EXPECTED_PREFIX + info.label if _SAFE_KEY.match(info.label) else f"{EXPECTED_PREFIX}output{i}"
        if key in used or any(k.startswith(key + LIST_SEPARATOR) or key.startswith(k + LIST_SEPARATOR) for k in used):
            key = f"{EXPECTED_PREFIX}output{i}"
        if key in used:
            raise ReproError(f"{fn.name}: output {info.label!r} cannot be given a name of its own in the .npz")
        used.add(key)
        is_list = {isinstance(trial.expected[i], list) for trial in trials}
        if len(is_list) != 1:
            raise ReproError(f"{fn.name}: output {info.label!r} changes type from trial to trial; cannot write one script")
        outputs.append({"name": info.label, "key": key, "kind": "list" if is_list.pop() else "array"})
    leaf_index = {info.path: i for i, info in enumerate(fn.leaves)}
    return Layout(list(zip(fn.spec.args, kinds)), outputs, _returns(fn.spec.returns, (), leaf_index))


def _kind(name: str, value: Any) -> str:
    if isinstance(value, np.ndarray):
        return "array"
    if isinstance(value, list):
        if not value or not all(isinstance(v, np.ndarray) for v in value):
            raise ReproError(f"argument {name}: only non-empty lists of arrays can be written to .npz")
        return "list"
    if isinstance(value, (bool, np.bool_)):
        raise ReproError(f"argument {name}: boolean arguments are not supported")
    if isinstance(value, (int, np.integer)):
        return "int"
    if isinstance(value, (float, np.floating)):
        return "float"
    raise ReproError(f"argument {name}: a {type(value).__name__} cannot be written to .npz")


def _returns(spec: ReturnSpec, path: tuple[Union[int, str], ...], leaf_index: dict[Any, int]) -> Any:
    if isinstance(spec, Leaf):
        return {"output": leaf_index[path]}
    if isinstance(spec, SeqReturn):
        kind = "tuple" if spec.tuple is not None else "list"
        return {kind: [_returns(item, (*path, i), leaf_index) for i, item in enumerate(spec.items)]}
    assert isinstance(spec, DictReturn)
    return {"dict": {key: _returns(item, (*path, key), leaf_index) for key, item in spec.keys.items()}}


def trial_arrays(fn: Function, trial: Trial, shape: Layout) -> dict[str, np.ndarray]:
    """The arrays of one trial's .npz: arguments under their names, expected outputs under
    `expected__<name>`, lists as `<name>__0`, `<name>__1`, ..., numbers as 0-d arrays."""
    arrays: dict[str, np.ndarray] = {}
    lists: dict[str, int] = {}  # key -> items

    def store(key: str, array: np.ndarray) -> None:
        if key in arrays:
            raise ReproError(f"{fn.name}: two values would be stored as {key!r} in the .npz; rename one")
        arrays[key] = array

    def put(key: str, value: Any) -> None:
        if isinstance(value, list):
            lists[key] = len(value)
            for i, item in enumerate(value):
                store(f"{key}{LIST_SEPARATOR}{i}", np.asarray(item))
        elif isinstance(value, (int, np.integer)):
            store(key, np.asarray(value, dtype=np.int64))
        elif isinstance(value, (float, np.floating)):
            store(key, np.asarray(value, dtype=np.float64))
        else:
            store(key, np.asarray(value))

    for (name, _kind_), value in zip(shape.args, trial.args):
        put(name, value)
    for out, expected in zip(shape.outputs, trial.expected):
        put(out["key"], expected)
    for key, count in lists.items():
        # The script reads a list while <key>__<i> exists: another value stored as the next
        # item would be read as one more.
        if f"{key}{LIST_SEPARATOR}{count}" in arrays:
            raise ReproError(f"{fn.name}: {key}{LIST_SEPARATOR}{count} would be read back as one more item of {key}; rename it")
    for key, array in arrays.items():
        if array.dtype.kind not in "iuf":
            raise ReproError(f"{fn.name}: {key} has dtype {array.dtype}, which cannot be loaded without pickle")
    return arrays


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def inputs_npz(assignment: Assignment, function: str, seed: int, index: int) -> bytes:
    """The .npz of one visible trial (arguments and expected outputs)."""
    fn = _function(assignment, function)
    trial = regenerate(assignment, function, seed, index)
    return npz_bytes(trial_arrays(fn, trial, layout(fn, [trial])))


# ---------------------------------------------------------------------------------------
# Names of the files


def npz_name(function: str, index: int) -> str:
    return f"{function}_trial{index}.npz"


def script_name(function: str) -> str:
    return f"repro_{function}.py"


def module_file(filename: Optional[str], fallback: str = DEFAULT_MODULE_FILE) -> str:
    """The file the script imports by default: the name the student submitted under, when
    it is a plain `.py` name, else `fallback`."""
    base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    return base if _SAFE_FILE.match(base) else fallback


# ---------------------------------------------------------------------------------------
# The script


def script(assignment: Assignment, function: str, shape: Layout, labels: dict[int, str], module: str = DEFAULT_MODULE_FILE) -> str:
    """A stand-alone script (Python 3.8+, NumPy) for the .npz files of `function`. Every
    value from the spec or the student is written with repr(): it stays a literal."""
    fn = _function(assignment, function)
    tol = assignment.spec.tolerance
    call = f"{fn.name}({', '.join(fn.spec.args)})"
    version = _docstring_safe(str(assignment.spec.version))
    shown_module = _docstring_safe(module)
    constants = "\n".join(
        [
            f"ASSIGNMENT = {assignment.id!r}",
            f"ASSIGNMENT_VERSION = {str(assignment.spec.version)!r}",
            f"FUNCTION = {fn.name!r}",
            f"DEFAULT_FILE = {module!r}",
            f"ARGS = {shape.args!r}",
            f"OUTPUTS = {shape.outputs!r}",
            f"RETURNS = {shape.returns!r}",
            f"LABELS = {labels!r}",
            f"RTOL, ATOL = {tol.rtol!r}, {tol.atol!r}",
            f"FLOAT32_RTOL, FLOAT32_ATOL = {tol.float32_rtol!r}, {tol.float32_atol!r}",
            f"SCALE_FLOOR = {{False: {SCALE_FLOOR[False]!r}, True: {SCALE_FLOOR[True]!r}}}",
        ]
    )
    head = f'''"""Reproduce failing trials of `{fn.name}` ({assignment.id}, spec version {version}) on your own machine.

Needs only Python 3 and NumPy. Put this script and its .npz file(s) next to your file, then

    python {script_name(fn.name)} [YOUR_FILE.py] [TRIAL.npz ...]

YOUR_FILE.py defaults to {shown_module}; the .npz files default to every
{fn.name}_trial*.npz next to this script. For each trial it calls {call}
with the trial's inputs and compares each output with the expected one, with the
tolerance the grader uses: |got - expected| <= atol * max|expected| + rtol * |expected|.
It prints OK, the largest error, or what does not match, and exits with 1 if anything
does not match (2 if your file or the trial files cannot be read).

Each .npz holds the arguments under their names and the expected outputs as
expected__<name>; a list of arrays is stored as <name>__0, <name>__1, ...:
    data = np.load("{npz_name(fn.name, 0)}")   # then data["x"], data["expected__dx"], ...
"""
'''
    return head + "\n" + _IMPORTS + "\n" + constants + "\n" + _BODY


def _docstring_safe(text: str) -> str:
    """Free text from a spec, reduced to characters that cannot end the docstring."""
    return re.sub(r"[^A-Za-z0-9 ._+-]", "?", text)


_IMPORTS = '''import argparse
import copy
import glob
import importlib.util
import os
import re
import sys
import traceback

import numpy as np
'''

_BODY = r'''

def collect(arrays, key):
    items, i = [], 0
    while "%s__%d" % (key, i) in arrays:
        items.append(arrays["%s__%d" % (key, i)])
        i += 1
    return items


def load_trial(path):
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    args = []
    for name, kind in ARGS:
        if kind == "list":
            args.append(collect(arrays, name))
        elif kind == "int":
            args.append(int(arrays[name]))
        elif kind == "float":
            args.append(float(arrays[name]))
        else:
            args.append(arrays[name])
    expected = [collect(arrays, out["key"]) if out["kind"] == "list" else arrays[out["key"]] for out in OUTPUTS]
    return args, expected


def fmt_shape(shape):
    return "(" + ", ".join(str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"


def describe(value):
    if isinstance(value, np.ndarray):
        return "an array of shape %s" % fmt_shape(value.shape)
    return "a %s" % type(value).__name__


def locate(node, value, expected, found, where):
    """Each output's returned value (or why it is missing), walking the return structure."""
    if "output" in node:
        found[node["output"]] = (value, None)
        return
    if "dict" in node:
        for key, item in node["dict"].items():
            if not isinstance(value, dict):
                mark(item, found, "returned %s; expected a dict with keys %s" % (describe(value), list(node["dict"])))
            elif key not in value:
                mark(item, found, "the returned dict has no key %r (its keys: %s)" % (key, list(value)))
            else:
                locate(item, value[key], expected, found, "%s[%r]" % (where, key))
        return
    items = node.get("tuple", node.get("list"))
    if isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == len(items):
        # One stacked array where a tuple was asked: the grader accepts it when each part
        # has the expected shape.
        parts = [expected[i["output"]] if "output" in i else None for i in items]
        if all(isinstance(p, np.ndarray) and p.shape == value.shape[1:] for p in parts):
            value = list(value)
    if not isinstance(value, (list, tuple)):
        for item in items:
            mark(item, found, "returned %s; expected a tuple of %d items" % (describe(value), len(items)))
        return
    if len(value) != len(items):
        for item in items:
            mark(item, found, "returned %d items; expected %d" % (len(value), len(items)))
        return
    for i, item in enumerate(items):
        locate(item, value[i], expected, found, "%s[%d]" % (where, i))


def mark(node, found, problem):
    if "output" in node:
        found[node["output"]] = (None, problem)
    else:
        for item in node.get("tuple") or node.get("list") or list(node["dict"].values()):
            mark(item, found, problem)


def check_array(expected, got):
    """(ok, what to print), the checks of the grader in its order."""
    if got is None:
        return False, "is None (is a return statement missing?)"
    try:
        array = np.asarray(got)
    except Exception as exc:  # noqa: BLE001 - whatever the student returned
        return False, "cannot be turned into an array (%s)" % exc
    kind = array.dtype.kind
    if kind not in "iuf":
        return False, "has dtype %s; return a float64 array" % array.dtype
    if kind == "f" and array.dtype.itemsize < 4:
        return False, "is %s, too imprecise to check; return float64" % array.dtype
    if array.shape != expected.shape:
        hint = ""
        if array.ndim == expected.ndim >= 2 and array.shape == expected.shape[::-1]:
            hint = " (that is the transposed shape)"
        return False, "shape mismatch: got %s, expected %s%s" % (fmt_shape(array.shape), fmt_shape(expected.shape), hint)
    values = array.astype(np.float64)
    if not np.all(np.isfinite(values)):
        return False, "contains NaN or inf"
    float32 = array.dtype == np.float32
    rtol, atol = (FLOAT32_RTOL, FLOAT32_ATOL) if float32 else (RTOL, ATOL)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    err = np.abs(values - expected)
    allowed = atol * max(scale, SCALE_FLOOR[float32]) + rtol * np.abs(expected)
    wrong = err > allowed
    worst = float(np.max(err)) if err.size else 0.0
    note = " (float32: checked with the float32 tolerance)" if float32 else ""
    if not np.any(wrong):
        return True, "OK (max abs error %.3g)%s" % (worst, note)
    at = ()
    if expected.ndim:
        # As the grader names it: of the entries tied for the worst up to rounding, the first.
        gap = np.where(wrong, err, -1.0)
        at = np.unravel_index(int(np.argmax(gap >= gap.max() * (1 - 1e-9))), expected.shape)
    index = " at index %s" % (tuple(int(i) for i in at),) if expected.ndim else ""
    return False, "WRONG: max abs error %.6g; %d of %d entries outside the tolerance; worst%s: expected %.10g, got %.10g%s" % (
        worst, int(np.count_nonzero(wrong)), expected.size, index, expected[at], values[at], note)


def check_output(expected, got):
    if isinstance(expected, list):
        if not isinstance(got, (list, tuple)):
            return False, "is %s; expected a list of %d arrays (one per layer)" % (describe(got), len(expected))
        if len(got) != len(expected):
            return False, "has %d entries; expected %d (one per layer)" % (len(got), len(expected))
        for i, (e, g) in enumerate(zip(expected, got)):
            ok, text = check_array(e, g)
            if not ok:
                return False, "[%d] %s" % (i, text)
        return True, "OK (%d arrays)" % len(expected)
    return check_array(expected, got)


def changed(before, after):
    if isinstance(before, list):
        return not isinstance(after, list) or len(after) != len(before) or any(changed(b, a) for b, a in zip(before, after))
    if isinstance(before, np.ndarray):
        return not isinstance(after, np.ndarray) or after.shape != before.shape or not np.array_equal(after, before)
    return False


def load_module(path):
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # so that your file can import its neighbours
    spec = importlib.util.spec_from_file_location("submission_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def find_file(name):
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (os.getcwd(), here, os.path.dirname(here)):
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return candidate
    return None


def trial_index(path):
    match = re.search(r"_trial(\d+)\.npz$", path)
    return int(match.group(1)) if match else None


def run_trial(function, path):
    """Prints the verdict of one trial; True if every output is right."""
    index = trial_index(path)
    title = "Trial %s" % (index if index is not None else os.path.basename(path))
    if index in LABELS:
        title += " (%s)" % LABELS[index]
    args, expected = load_trial(path)
    shapes = ", ".join(
        "%s %s" % (name, fmt_shape(np.shape(value))) if kind == "array" else
        "%s: %d arrays" % (name, len(value)) if kind == "list" else "%s = %r" % (name, value)
        for (name, kind), value in zip(ARGS, args))
    print("%s: %s" % (title, shapes))
    before = copy.deepcopy(args)
    try:
        returned = function(*args)
    except Exception:  # noqa: BLE001 - the student's exception, shown as Python shows it
        print("  %s raised an exception:" % FUNCTION)
        print("    " + traceback.format_exc().rstrip().replace("\n", "\n    "))
        return False
    ok = True
    for (name, kind), b, a in zip(ARGS, before, args):
        if changed(b, a):
            print("  MODIFIED INPUT: %s changed the argument `%s` in place; work on a copy" % (FUNCTION, name))
            ok = False
    found = {}
    locate(RETURNS, returned, expected, found, "")
    for i, out in enumerate(OUTPUTS):
        value, problem = found.get(i, (None, "not returned"))
        if problem is None:
            good, text = check_output(expected[i], value)
        else:
            good, text = False, "MISSING: " + problem
        print("  %s: %s" % (out["name"], text))
        ok = ok and good
    return ok


def main():
    parser = argparse.ArgumentParser(description="Run %s on the grader's failing trials and compare." % FUNCTION)
    parser.add_argument("file", nargs="?", default=DEFAULT_FILE, help="your Python file (default: %(default)s)")
    parser.add_argument("trials", nargs="*", help="trial .npz files (default: all %s_trial*.npz next to this script)" % FUNCTION)
    options = parser.parse_args()
    path = options.file if os.path.isfile(options.file) else find_file(options.file)
    if path is None:
        print("Cannot find %s. Give the path to your file: python %s YOUR_FILE.py" % (options.file, os.path.basename(__file__)))
        return 2
    trials = options.trials or sorted(
        glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "%s_trial*.npz" % FUNCTION)),
        key=lambda p: (trial_index(p) is None, trial_index(p) or 0, p))
    if not trials:
        print("No trial files (%s_trial*.npz) found next to this script; give their paths." % FUNCTION)
        return 2
    try:
        module = load_module(path)
    except BaseException:  # noqa: BLE001 - a syntax error or exit() in the student's file
        print("Loading %s failed:" % path)
        traceback.print_exc(file=sys.stdout)
        return 2
    function = getattr(module, FUNCTION, None)
    if not callable(function):
        print("%s does not define a function named %s" % (path, FUNCTION))
        return 2
    print("Checking %s from %s against %d trial(s) of %s (spec version %s)" % (FUNCTION, path, len(trials), ASSIGNMENT, ASSIGNMENT_VERSION))
    failed = 0
    for trial in trials:
        try:
            good = run_trial(function, trial)
        except (OSError, KeyError, ValueError) as exc:
            print("Cannot read %s: %s" % (trial, exc))
            return 2
        failed += not good
    if failed:
        print("%d of %d trial(s) do not match." % (failed, len(trials)))
        return 1
    print("All %d trial(s) match." % len(trials))
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''


# ---------------------------------------------------------------------------------------
# Bundles: what the web app serves


@dataclass(frozen=True)
class Bundle:
    """The files of one download, by name."""

    files: dict[str, bytes]

    def zip_bytes(self, folder: str) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, data in self.files.items():
                info = zipfile.ZipInfo(f"{folder}/{name}", date_time=_ZIP_DATE)
                info.external_attr = 0o644 << 16
                # .npz files are compressed already.
                info.compress_type = zipfile.ZIP_STORED if name.endswith(".npz") else zipfile.ZIP_DEFLATED
                archive.writestr(info, data)
        return buffer.getvalue()


def bundle(
    assignment: Assignment, function: str, seed: int, indices: list[int], module: str = DEFAULT_MODULE_FILE
) -> Bundle:
    """One .npz per trial in `indices` (each must be visible) and the script that runs them."""
    if not indices:
        raise ReproError(f"{function}: no trials to reproduce")
    return bundle_trials(assignment, function, [regenerate(assignment, function, seed, i) for i in indices], module)


def bundle_trials(assignment: Assignment, function: str, trials: list[Trial], module: str = DEFAULT_MODULE_FILE) -> Bundle:
    """As `bundle`, for trials already regenerated (and checked) by the caller."""
    fn = _function(assignment, function)
    if not trials:
        raise ReproError(f"{function}: no trials to reproduce")
    if any(t.hidden or t.function != fn.name for t in trials):
        raise HiddenTrial(f"only visible trials of {function} can be downloaded")
    shape = layout(fn, trials)
    files: dict[str, bytes] = {}
    total = 0
    for trial in trials:
        arrays = trial_arrays(fn, trial, shape)
        total += sum(a.nbytes for a in arrays.values())
        if total > MAX_DOWNLOAD_BYTES:
            raise ReproError(f"{function}: the trials are larger than {MAX_DOWNLOAD_BYTES >> 20} MiB; download them one by one")
        files[npz_name(fn.name, trial.index)] = npz_bytes(arrays)
    files[script_name(fn.name)] = script(assignment, function, shape, {t.index: t.label for t in trials}, module).encode("utf-8")
    return Bundle(files)
