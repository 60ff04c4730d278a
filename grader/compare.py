"""Comparing what a student returned with the expected answer, in the trusted parent.

Checks run in the order a student can act on: structure, type, dtype, shape, finiteness,
then values. Every message is written for the student. With `hidden=True` a message says
only what kind of thing went wrong: no sizes, counts, indices or values (they describe
the hidden inputs), and nothing the student's code chose (dict keys, class names), which
would let a submission smuggle hidden inputs out through its own feedback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np

from grader.runner.protocol import Returned, Unchanged, Unsupported
from grader.spec.load import LeafInfo, iter_leaves
from grader.spec.model import DictReturn, Leaf, ReturnSpec, SeqReturn, Tolerance
from grader.trials import fmt_shape


# The smallest magnitude atol is scaled to, per precision (False: float64, True: float32).
# The built-ins' inputs are O(1), so their intermediate terms are too: 1e-3 gives float64
# answers at least 1e-12 absolute slack (cancellation leaves ~1e-15), and float32 answers,
# whose rounding is ~1e-7 of O(1) terms, 1e-6.
SCALE_FLOOR = {False: 1e-3, True: 1.0}


@dataclass(frozen=True)
class Check:
    passed: bool
    message: str = ""
    float32: bool = False


class StructureError(Exception):
    pass


def article(word: str) -> str:
    """'a' or 'an' before `word` (by its first letter; good enough for type names)."""
    return "an" if word[:1].lower() in "aeiou" and word else "a"


def items(n: int) -> str:
    return f"{n} item" if n == 1 else f"{n} items"


def key_list(keys: Any, limit: int = 8) -> str:
    """Some of a dict's keys, for a message: a student's dict may have thousands."""
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def describe(value: Any, hidden: bool = False) -> str:
    """A short, student-facing description of a returned value's type (only its kind
    when `hidden`)."""
    if value is None:
        return "None"
    if hidden:
        if isinstance(value, Returned):
            return "an array"
        if isinstance(value, (tuple, list, dict, str)):
            return f"a {type(value).__name__}"
        if isinstance(value, (bool, int, float, complex)):
            return "a number"
        return "an object that is not numeric data"
    if isinstance(value, Returned):
        array = value.array
        what = "a NumPy array" if value.kind == "array" else f"{article(value.kind)} {value.kind}"
        return f"{what} of shape {fmt_shape(array.shape)} and dtype {array.dtype}"
    if isinstance(value, Unsupported):
        return f"{article(value.description)} {value.description} (not numeric data)"
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, (int, float, complex)):
        return f"a Python {type(value).__name__}"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, tuple):
        return f"a tuple of {items(len(value))}"
    if isinstance(value, list):
        return f"a list of {items(len(value))}"
    if isinstance(value, dict):
        return f"a dict with keys {key_list(value)}" if value else "an empty dict"
    return type(value).__name__


def _names(spec: ReturnSpec) -> str:
    if isinstance(spec, Leaf):
        return spec.label
    if isinstance(spec, SeqReturn):
        return "(" + ", ".join(_names(item) for item in spec.items) + ")"
    return "{" + ", ".join(repr(k) for k in spec.keys) + "}"


def _expected_form(spec: ReturnSpec) -> str:
    if isinstance(spec, SeqReturn):
        kind = "tuple" if spec.tuple is not None else "list"
        return f"a {kind} {_names(spec)}"
    if isinstance(spec, DictReturn):
        return "a dict with keys " + ", ".join(repr(k) for k in spec.keys)
    return "an array"


Path = tuple[Union[int, str], ...]


def locate(
    spec: ReturnSpec, value: Any, expected: Optional[dict[Path, Any]] = None, hidden: bool = False
) -> dict[Path, Union[Any, StructureError]]:
    """Each output's returned value by its path, or why it cannot be found. `expected`
    (the expected value per path) lets one stacked array stand for a tuple of arrays when,
    and only when, its parts have the expected shapes."""
    # The usual shapes of a return value, found as `walk` would find them, without its cost.
    if isinstance(spec, Leaf):
        return {(): value}
    if isinstance(spec, SeqReturn) and isinstance(value, (list, tuple)) and len(value) == len(spec.items):
        if all(isinstance(item, Leaf) for item in spec.items):
            return {(i,): v for i, v in enumerate(value)}
    elif isinstance(spec, DictReturn) and isinstance(value, dict) and all(key in value for key in spec.keys):
        if all(isinstance(item, Leaf) for item in spec.keys.values()):
            return {(key,): value[key] for key in spec.keys}

    found: dict[Path, Union[Any, StructureError]] = {}
    expected = expected or {}

    def what(actual: Any) -> str:
        return describe(actual, hidden)

    def stacked_parts(node: SeqReturn, actual: Returned, path: Path) -> Optional[list[Any]]:
        items = node.items
        if actual.array.ndim == 0 or actual.array.shape[0] != len(items):
            return None
        for i, item in enumerate(items):
            want = expected.get((*path, i))
            if not isinstance(item, Leaf) or want is None or isinstance(want, list):
                return None
            if np.shape(want) != actual.array.shape[1:]:  # 0-d answers are NumPy scalars
                return None
        return [Returned(actual.array[i], actual.kind) for i in range(len(items))]

    def walk(node: ReturnSpec, actual: Any, path: tuple[Union[int, str], ...]) -> None:
        if isinstance(node, Leaf):
            found[path] = actual
            return
        if isinstance(actual, StructureError):
            for sub_path, _ in _leaf_paths(node, path):
                found[sub_path] = actual
            return
        if isinstance(node, SeqReturn):
            items = node.items
            seq: Optional[list[Any]] = None
            if isinstance(actual, (list, tuple)):
                seq = list(actual)
            elif isinstance(actual, Returned):
                # One stacked array where a tuple was asked: the parts are still the answers.
                seq = stacked_parts(node, actual, path)
            if seq is None:
                err = StructureError(f"returned {what(actual)}; expected {_expected_form(node)}")
                for i, item in enumerate(items):
                    walk(item, err, (*path, i))
                return
            if len(seq) != len(items):
                err = StructureError(f"returned {what(actual)}; expected {len(items)} items: {_names(node)}")
                for i, item in enumerate(items):
                    walk(item, err, (*path, i))
                return
            for i, item in enumerate(items):
                walk(item, seq[i], (*path, i))
            return
        assert isinstance(node, DictReturn)
        if not isinstance(actual, dict):
            err = StructureError(f"returned {what(actual)}; expected {_expected_form(node)}")
            for key, item in node.keys.items():
                walk(item, err, (*path, key))
            return
        for key, item in node.keys.items():
            if key in actual:
                walk(item, actual[key], (*path, key))
            else:
                have = "" if hidden else f" (its keys: {key_list(actual) or 'none'})"
                walk(item, StructureError(f"the returned dict has no key {key!r}{have}"), (*path, key))

    walk(spec, value, ())
    return found


def _leaf_paths(node: ReturnSpec, path: Path) -> list[tuple[Path, Leaf]]:
    return [((*path, *p), leaf) for p, leaf in iter_leaves(node)]


def to_array(value: Any, hidden: bool = False) -> Union[np.ndarray, str]:
    """The returned value as an array, or why it is not one (a student-facing reason)."""
    if isinstance(value, Returned):
        return value.array
    if value is None:
        return "is None (is a return statement missing?)"
    if isinstance(value, Unsupported):
        return f"is {describe(value, hidden)}; return a NumPy array"
    if isinstance(value, (str, dict)):
        return f"is {describe(value, hidden)}, not an array"
    if isinstance(value, (bool, int, float, complex)):
        return np.asarray(value)
    if isinstance(value, (list, tuple)):
        try:
            plain = _plainify(value)
            array = np.asarray(plain)
        except MemoryError:
            return f"is {describe(value, hidden)} too large to turn into an array"
        except (ValueError, TypeError, _NotNumeric):
            return f"is {describe(value, hidden)} that does not form a regular numeric array"
        if array.dtype.kind not in "biufc":
            return f"is {describe(value, hidden)} that does not form a regular numeric array"
        return array
    return f"is {describe(value, hidden)}, not an array"


class _NotNumeric(Exception):
    pass


def _plainify(value: Any) -> Any:
    if isinstance(value, Returned):
        return value.array
    if isinstance(value, (list, tuple)):
        return [_plainify(v) for v in value]
    if isinstance(value, (bool, int, float, complex)):
        return value
    raise _NotNumeric()


def check_leaf(
    info: LeafInfo,
    expected: Any,
    actual: Any,
    tol: Tolerance,
    hidden: bool,
    shape_names: Optional[str] = None,
) -> Check:
    label = info.label
    if isinstance(actual, StructureError):
        return Check(False, str(actual))
    if isinstance(expected, list):
        return _check_list(label, expected, actual, tol, hidden)
    return check_array(label, expected, actual, tol, hidden, shape_names)


# Dtypes compared in the vectorised pass (a byte-swapped one is unequal to these, and is
# compared one output at a time).
_F64 = np.dtype(np.float64)
_F32 = np.dtype(np.float32)
# An array this large is compared on its own, a chunk at a time: copying it into a batch,
# or making whole-array temporaries, costs more than the NumPy calls saved (a fresh
# temporary of that size is page-faulted in).
BATCH_MAX_SIZE = 2048
CHUNK = 8192


def check_leaves(
    requests: Sequence[tuple[LeafInfo, Any, Any, bool, Optional[str]]], tol: Tolerance
) -> list[Check]:
    """`check_leaf(info, expected, actual, tol, hidden, shape_names)` for each request, with
    the same results. A grading makes hundreds of small comparisons and NumPy's cost per
    call dominates them, so every small array of the expected shape and a native float
    dtype is compared in one pass per precision; an output that does not pass there is
    checked again by `check_leaf`, which finds its message."""
    checks: list[Optional[Check]] = [None] * len(requests)
    # Per precision (False: float64, True: float32): the small arrays, their expected
    # answers and the request each belongs to; the large ones are compared as they come.
    batches: list[tuple[bool, list[np.ndarray], list[Any], list[int]]] = [(False, [], [], []), (True, [], [], [])]
    for k, (_, expected, actual, _, _) in enumerate(requests):
        if isinstance(expected, list):
            if not isinstance(actual, (list, tuple)) or len(actual) != len(expected):
                continue
            pairs = list(zip(expected, actual))
        else:
            pairs = [(expected, actual)]
        parts: list[tuple[bool, np.ndarray, Any]] = []
        for exp, act in pairs:
            if not isinstance(exp, (np.ndarray, np.generic)):
                break
            if isinstance(act, Returned):
                array = act.array
            elif type(act) is float:
                array = np.asarray(act)  # as to_array has it
            else:
                break
            dtype = array.dtype
            if dtype == _F64:
                single = False
            elif dtype == _F32:
                single = True
            else:
                break
            if exp.dtype != _F64 or array.shape != exp.shape or not exp.size:
                break
            parts.append((single, array, exp))
        else:
            passed, float32 = True, False
            for single, array, exp in parts:
                if exp.size < BATCH_MAX_SIZE:
                    batch = batches[single]
                    batch[1].append(array)
                    batch[2].append(exp)
                    batch[3].append(k)
                else:
                    passed = passed and _within_large(array, exp, tol, single)
                float32 = float32 or single
            if passed:
                checks[k] = Check(True, float32=float32)
    for single, got, want, owners in batches:
        if got:
            for k, passed in zip(owners, _within(got, want, tol, single)):
                if not passed:
                    checks[k] = None
    return [
        check if check is not None else check_leaf(info, expected, actual, tol, hidden, names)
        for check, (info, expected, actual, hidden, names) in zip(checks, requests)
    ]


def _tolerances(tol: Tolerance, float32: bool) -> tuple[float, float, float]:
    rtol, atol = (tol.float32_rtol, tol.float32_atol) if float32 else (tol.rtol, tol.atol)
    return rtol, atol, SCALE_FLOOR[float32]


# Where `check_array` tests `err > allowed`, these test `err <= allowed`, which is False
# wherever either side is NaN. Where the allowance is finite throughout (rounding is
# monotonic, so it is when its bound `rtol * scale + slack` is), `err <= allowed` also
# says the value is finite, which check_array demands first. An array whose allowance is
# not finite, or that does not pass, is left to check_array. Unlike check_array these do
# arithmetic on values before knowing them finite (inf - inf), which must not fill the
# worker's log with RuntimeWarnings.


@np.errstate(invalid="ignore", over="ignore")
def _within(got: list[np.ndarray], want: list[Any], tol: Tolerance, float32: bool) -> list[bool]:
    """For each pair (same shape, not empty), whether `check_array` would pass it, by the
    same arithmetic over all the pairs concatenated."""
    rtol, atol, floor = _tolerances(tol, float32)
    sizes = [e.size for e in want]
    starts = np.cumsum([0, *sizes[:-1]])
    values = np.concatenate(got, axis=None, dtype=np.float64)
    expected = np.concatenate(want, axis=None)
    allowed = np.abs(expected)
    scales = np.maximum.reduceat(allowed, starts)
    slack = atol * np.maximum(scales, floor)
    finite = np.isfinite(rtol * scales + slack)
    allowed *= rtol
    allowed += np.repeat(slack, sizes)
    err = np.subtract(values, expected, out=values)
    ok = np.abs(err, out=err) <= allowed
    if ok.all() and finite.all():
        return [True] * len(want)
    return (np.logical_and.reduceat(ok, starts) & finite).tolist()


@np.errstate(invalid="ignore", over="ignore")
def _within_large(array: np.ndarray, expected: np.ndarray, tol: Tolerance, float32: bool) -> bool:
    """Whether `check_array` would pass a large array of the expected shape, by the same
    arithmetic, without a temporary of the array's size."""
    rtol, atol, floor = _tolerances(tol, float32)
    values, expected = array.reshape(-1), expected.reshape(-1)
    top, bottom = float(expected.max()), float(expected.min())
    scale = max(top, -bottom)  # max |expected| without an array of magnitudes (NaN if one is)
    slack = atol * max(scale, floor)
    if not np.isfinite(rtol * scale + slack):
        return False
    n = min(CHUNK, values.size)
    err, allowed, ok = np.empty(n), np.empty(n), np.empty(n, dtype=bool)
    for start in range(0, values.size, n):
        v, e = values[start : start + n], expected[start : start + n]
        m = v.size
        np.subtract(v, e, out=err[:m])
        np.abs(err[:m], out=err[:m])
        np.abs(e, out=allowed[:m])
        allowed[:m] *= rtol
        allowed[:m] += slack
        if not np.less_equal(err[:m], allowed[:m], out=ok[:m]).all():
            return False
    return True


def _check_list(label: str, expected: list[np.ndarray], actual: Any, tol: Tolerance, hidden: bool) -> Check:
    if not isinstance(actual, (list, tuple)):
        if hidden:
            return Check(False, f"{label} is {describe(actual, True)}; expected a list of arrays, one per layer")
        return Check(False, f"{label} is {describe(actual)}; expected a list of {len(expected)} arrays")
    if len(actual) != len(expected):
        if hidden:
            return Check(False, f"{label} has the wrong number of entries (one per layer is expected)")
        return Check(False, f"{label} has {len(actual)} entries; expected {len(expected)} (one per layer)")
    float32 = False
    for i, (exp, act) in enumerate(zip(expected, actual)):
        result = check_array(f"{label}[{i}]", exp, act, tol, hidden)
        if not result.passed:
            return result
        float32 = float32 or result.float32
    return Check(True, float32=float32)


def check_array(
    label: str,
    expected: np.ndarray,
    actual: Any,
    tol: Tolerance,
    hidden: bool,
    shape_names: Optional[str] = None,
) -> Check:
    array = to_array(actual, hidden)
    if isinstance(array, str):
        return Check(False, f"{label} {array}")
    kind, size = array.dtype.kind, array.dtype.itemsize
    if kind == "c":
        return Check(False, f"{label} has complex dtype {array.dtype}; gradients here are real numbers")
    if kind == "b":
        return Check(False, f"{label} is a boolean array; a gradient must hold numbers")
    float32 = kind == "f" and size == 4
    if kind == "f" and size < 4:
        return Check(False, f"{label} is {array.dtype}, too imprecise to check; return float64")
    if array.shape != expected.shape:
        if hidden:
            return Check(False, f"{label} has the wrong shape" + (f"; expected {shape_names}" if shape_names else ""))
        return Check(False, f"{label} " + _shape_message(expected.shape, array.shape, shape_names))
    values = array.astype(np.float64)
    bad = ~np.isfinite(values)
    if np.any(bad):
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        what = "NaN" if np.isnan(values[where]) else "inf"
        at = "" if hidden or not where else f" (first at index {where})"
        return Check(False, f"{label} contains {what}{at}", float32)
    rtol, atol = (tol.float32_rtol, tol.float32_atol) if float32 else (tol.rtol, tol.atol)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    err = np.abs(values - expected)
    # atol is relative to the largest expected magnitude, but never to less than a floor:
    # an all-zero answer must not demand bit-exact zeros, and an answer that is tiny only
    # because large terms cancelled (softmax(o) - onehot(y) where p is within 1e-9 of 1)
    # carries the rounding error of those O(1) terms, which is noise, not a mistake.
    allowed = atol * max(scale, SCALE_FLOOR[float32]) + rtol * np.abs(expected)
    wrong = err > allowed
    if not np.any(wrong):
        return Check(True, float32=float32)
    count, total = int(np.count_nonzero(wrong)), expected.size
    if hidden:
        return Check(False, f"{label} has wrong values", float32)
    worst: tuple[Any, ...] = ()
    if expected.ndim:
        gap = np.where(wrong, err, -1.0)
        # Entries tied for the largest difference (a transposed answer has them in pairs)
        # are told apart by position, not by their last bits, which depend on the kernels
        # the machine's NumPy and BLAS picked: the same file gets the same message anywhere.
        worst = np.unravel_index(int(np.argmax(gap >= gap.max() * (1 - 1e-9))), expected.shape)
    index = "" if not expected.ndim else f" at index {tuple(int(i) for i in worst)}"
    message = (
        f"{label} has wrong values in {count} of {total} entries; largest difference{index}: "
        f"expected {expected[worst]:.6g}, got {values[worst]:.6g}"
    )
    if float32:
        message += " (compared with the float32 tolerance)"
    return Check(False, message, float32)


def _shape_message(expected: tuple[int, ...], got: tuple[int, ...], names: Optional[str]) -> str:
    want = fmt_shape(expected) + (f" = {names}" if names else "")
    message = f"has shape {fmt_shape(got)}; expected {want}"
    if len(got) == len(expected) >= 2 and got == expected[::-1]:
        message += ". That is the transposed shape"
    elif tuple(n for n in got if n != 1) == tuple(n for n in expected if n != 1):
        message += ". It differs only in axes of size 1: check keepdims, reshape or a missing sum"
    elif len(got) == len(expected) + 1 and got[1:] == expected:
        message += ". It has an extra leading axis: should it be summed over?"
    return message


def check_unchanged(names: list[str], before: list[Any], after: Any) -> Optional[str]:
    """Which argument the student's function modified in place, if any."""
    if not isinstance(after, (list, tuple)) or len(after) != len(before):
        return None  # the child could not report; nothing to blame the student for
    for name, original, now in zip(names, before, after):
        if _changed(original, now):
            return (
                f"modified its argument `{name}` in place (the caller's array changed); "
                f"work on a copy, e.g. `{name} = {name}.copy()`"
            )
    return None


def _changed(original: Any, now: Any) -> bool:
    if isinstance(now, Unchanged):
        return False
    if isinstance(original, np.ndarray):
        if not isinstance(now, Returned):
            return True
        a = now.array
        return a.shape != original.shape or a.dtype != original.dtype or not np.array_equal(a, original, equal_nan=True)
    if isinstance(original, list):
        if not isinstance(now, list) or len(now) != len(original):
            return True
        return any(_changed(o, n) for o, n in zip(original, now))
    return False
