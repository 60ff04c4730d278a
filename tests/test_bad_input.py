"""Bad input is a graded outcome, never a crash.

Every submission here is the correct vjp solution with one thing broken. Each test checks
that a result is produced, that the broken function scores 0 with a message a student can
act on, and that the functions that were not broken still get full marks. Every result
must also survive `json.dumps(result, allow_nan=False)`.
"""

from __future__ import annotations

import json
import re
import textwrap
from functools import lru_cache
from typing import Any, Optional

import pytest

from grader.grade import MAX_SOURCE_BYTES, grade_bytes
from grader.spec import load_builtin

SEED = 20240601
A = load_builtin("vjp")
FUNCTIONS = [fn.name for fn in A.functions]
LIMITS = {fn.name: fn.limits for fn in A.functions}

CORRECT = {
    "relu_backward": """
        def relu_backward(dout, x):
            return dout * (np.asarray(x) > 0)
    """,
    "matmul_backward": """
        def matmul_backward(dout, x, W):
            dx = dout @ W.T
            dW = x.T @ dout
            return dx, dW
    """,
    "affine_backward": """
        def affine_backward(dout, x, W, b):
            dx = dout @ W.T
            dW = x.T @ dout
            db = dout.sum(axis=0)
            return dx, dW, db
    """,
}

_MISSING = object()


def source(prelude: str = "", **replace: Any) -> str:
    """The correct solution with some functions replaced (None: left out)."""
    chunks = ["import numpy as np\n", textwrap.dedent(prelude).strip("\n") + "\n"]
    for name, code in CORRECT.items():
        new = replace.get(name, _MISSING)
        if new is None:
            continue
        chunks.append(textwrap.dedent(code if new is _MISSING else new).strip("\n") + "\n")
    return "\n\n".join(chunks)


def line_of(src: str, marker: str) -> int:
    """1-based number of the (only) line containing `marker`."""
    hits = [i for i, line in enumerate(src.splitlines(), 1) if marker in line]
    assert len(hits) == 1, hits
    return hits[0]


@lru_cache(maxsize=None)
def _grade(data: bytes) -> dict[str, Any]:
    return grade_bytes(A, data, seed=SEED)


def grade(src: "str | bytes") -> dict[str, Any]:
    data = src.encode("utf-8") if isinstance(src, str) else src
    result = _grade(data)
    check_invariants(result)
    return result


def check_invariants(result: dict[str, Any]) -> None:
    """What holds for every result, however bad the input."""
    json.dumps(result, allow_nan=False)  # no NaN/inf may leak from the student's values
    assert result["status"] == "graded"
    assert [p["function"] for p in result["parts"]] == FUNCTIONS
    assert result["max_score"] == 8
    assert result["score"] == pytest.approx(sum(p["score"] for p in result["parts"]))
    for p in result["parts"]:
        assert 0 <= p["score"] <= p["max_score"]
        assert p["status"] in ("passed", "partial", "failed", "not_run")
        assert p["score"] == pytest.approx(sum(o["score"] for o in p["outputs"]))
        assert isinstance(p["feedback"], str) and p["feedback"]


def part(result: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in result["parts"] if p["function"] == name)


def text_of(p: dict[str, Any]) -> str:
    """Everything a student reads about one function."""
    chunks = [p["feedback"]]
    for t in p["trials"]:
        chunks.extend(t.get("messages", []))
    return "\n".join(chunks)


def assert_full(result: dict[str, Any], name: str) -> None:
    p = part(result, name)
    assert p["status"] == "passed", p["feedback"]
    assert p["score"] == p["max_score"]
    assert all(o["passed"] for o in p["outputs"])


def assert_zero(result: dict[str, Any], name: str, *words: str, status: Optional[str] = None) -> dict[str, Any]:
    p = part(result, name)
    assert p["score"] == 0, p["feedback"]
    assert p["status"] == (status or ("not_run" if not p["trials"] else "failed"))
    assert not any(o["passed"] for o in p["outputs"])
    text = text_of(p)
    for word in words:
        assert word in text, f"{word!r} not in feedback:\n{text[:3000]}"
    return p


def assert_only_broken(result: dict[str, Any], broken: str, *words: str) -> dict[str, Any]:
    p = assert_zero(result, broken, *words)
    for name in FUNCTIONS:
        if name != broken:
            assert_full(result, name)
    assert result["score"] == 8 - p["max_score"]
    return p


def assert_all_not_run(result: dict[str, Any], *words: str) -> str:
    assert result["score"] == 0
    assert result["messages"], "a file-level message is expected"
    message = result["messages"][0]
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    for p in result["parts"]:
        assert p["status"] == "not_run"
        assert p["score"] == 0
        assert p["trials"] == []
        assert message in p["feedback"]
    return message


def fmt(shape) -> str:
    shape = tuple(shape)
    return f"({shape[0]},)" if len(shape) == 1 else "(" + ", ".join(str(n) for n in shape) + ")"


GRADER_INTERNALS = ("child.py", "run_call", "load_module", "in serve", "confine", "grader/", "grader\\", "subprocess_runner", "format_error")


# --- the baseline ----------------------------------------------------------------------


def test_the_unbroken_solution_gets_full_marks():
    result = grade(source())
    assert result["score"] == 8
    for name in FUNCTIONS:
        assert_full(result, name)
    assert result["messages"] == []


# --- files that cannot be loaded -------------------------------------------------------


def test_syntax_error_names_the_line():
    src = source(relu_backward="""
        def relu_backward(dout, x):
            return dout * (x > 0  # SYNTAX
    """)
    line = line_of(src, "# SYNTAX")
    message = assert_all_not_run(grade(src), "SyntaxError", f"line {line}")
    assert "was never closed" in message  # Python's own explanation is passed on
    assert "child.py" not in message


def test_indentation_error_names_the_line():
    src = source(matmul_backward="""
        def matmul_backward(dout, x, W):
        return dout @ W.T, x.T @ dout  # DEDENTED
    """)
    assert_all_not_run(grade(src), "IndentationError", f"line {line_of(src, '# DEDENTED')}")


def test_exception_at_import_time_fails_every_function_and_says_so():
    src = source(prelude="""
        SCALE = {"a": 1}["b"]  # IMPORT BOOM
    """)
    message = assert_all_not_run(grade(src), "KeyError", "while it was loaded", f"line {line_of(src, '# IMPORT BOOM')}")
    assert "submission.py" in message
    for internal in GRADER_INTERNALS:
        assert internal not in message


@pytest.mark.slow
def test_infinite_loop_at_import_time_says_loading_did_not_finish():
    src = source(prelude="""
        while True:
            pass
    """)
    limit = LIMITS["relu_backward"].import_seconds
    assert_all_not_run(grade(src), "did not finish loading", f"{limit:g} s")


# --- files that are not Python source --------------------------------------------------


def test_non_utf8_file_is_rejected_with_the_byte_offset():
    data = b"# caf\xe9\n" + source().encode()
    assert_all_not_run(grade(data), "UTF-8", "byte 5")


def test_binary_file_with_nul_bytes_is_rejected():
    data = source().encode() + b"\x00\x01\x02"
    assert_all_not_run(grade(data), "NUL")


@pytest.mark.parametrize("data", [b"", b"   \n\t\r\n  \n"], ids=["empty", "whitespace-only"])
def test_empty_file_is_rejected(data):
    assert_all_not_run(grade(data), "empty")


def test_file_over_the_size_limit_is_rejected_with_the_limit():
    src = source().encode()
    data = src + b"\n#" + b"x" * (MAX_SOURCE_BYTES - len(src) - 1)
    assert len(data) == MAX_SOURCE_BYTES + 1
    assert_all_not_run(grade(data), f"{MAX_SOURCE_BYTES:,} bytes", f"{len(data):,} bytes")


def test_file_of_exactly_the_size_limit_is_graded():
    src = source().encode()
    data = src + b"\n#" + b"x" * (MAX_SOURCE_BYTES - len(src) - 2)
    assert len(data) == MAX_SOURCE_BYTES
    assert grade(data)["score"] == 8


def test_utf8_bom_is_accepted():
    result = grade(b"\xef\xbb\xbf" + source(prelude="# caf\u00e9, na\u00efve").encode())
    assert result["score"] == 8
    assert result["messages"] == []


# --- functions that cannot be called ---------------------------------------------------


def test_missing_function():
    result = grade(source(matmul_backward=None))
    p = assert_only_broken(result, "matmul_backward", "does not define a function named `matmul_backward`")
    # the reason is given once, not once per trial
    assert p["feedback"].count("does not define") == 1


def test_name_that_is_not_callable():
    result = grade(source(relu_backward="relu_backward = 3"))
    assert_only_broken(result, "relu_backward", "`relu_backward`", "int", "not a function")


@pytest.mark.parametrize(
    "code, words",
    [
        ("def relu_backward(dout):\n    return dout", ["relu_backward(dout, x)", "too many positional arguments"]),
        ("def relu_backward(dout, x, mask):\n    return dout", ["relu_backward(dout, x)", "'mask'"]),
        ("def relu_backward(dout, x, *, mask):\n    return dout", ["relu_backward(dout, x)", "'mask'"]),
    ],
    ids=["too-few-parameters", "too-many-parameters", "required-keyword-only"],
)
def test_wrong_arity(code, words):
    assert_only_broken(grade(source(relu_backward=code)), "relu_backward", *words)


@pytest.mark.parametrize(
    "code",
    [
        "def relu_backward(*args):\n    dout, x = args\n    return dout * (x > 0)",
        "def relu_backward(dout, *rest, scale=1.0):\n    return scale * dout * (rest[0] > 0)",
        "def relu_backward(dout, x, extra=None):\n    return dout * (x > 0)",
        "relu_backward = lambda dout, x: dout * (x > 0)",
    ],
    ids=["star-args", "star-rest-and-keyword-default", "extra-default", "lambda"],
)
def test_flexible_signatures_are_accepted(code):
    assert grade(source(relu_backward=code))["score"] == 8


# --- functions that raise or die -------------------------------------------------------


def test_exception_inside_one_function_shows_only_the_students_traceback():
    src = source(matmul_backward="""
        def _helper(a, b):
            return a @ np.ones((a.shape[-1] + 1, b.shape[0]))  # INNER LINE

        def matmul_backward(dout, x, W):
            dx = _helper(dout, W)  # OUTER LINE
            return dx, x.T @ dout
    """)
    result = grade(src)
    p = assert_only_broken(
        result,
        "matmul_backward",
        "matmul_backward raised ValueError",
        "submission.py",
        f"line {line_of(src, '# INNER LINE')}",
        f"line {line_of(src, '# OUTER LINE')}",
        "in _helper",
        "mismatch in its core dimension",  # NumPy's own explanation is kept
    )
    text = text_of(p)
    for internal in GRADER_INTERNALS:
        assert internal not in text, internal
    assert "numpy" not in text.lower().replace("a numpy array", "")  # no library frames either
    assert all(t["status"] == "error" for t in p["trials"])


def test_sys_exit_inside_a_function_is_an_exception_of_that_function():
    src = source(prelude="import sys", relu_backward="""
        def relu_backward(dout, x):
            sys.exit(1)  # EXIT
    """)
    p = assert_only_broken(grade(src), "relu_backward", "SystemExit", f"line {line_of(src, '# EXIT')}")
    assert all(t["status"] == "error" for t in p["trials"])


def test_os_exit_in_one_function_restarts_the_runner_for_the_others():
    # The middle function dies: the one before and the one after it are still graded.
    src = source(prelude="import os", matmul_backward="""
        def matmul_backward(dout, x, W):
            os._exit(3)
    """)
    p = assert_only_broken(grade(src), "matmul_backward", "died", "status 3")
    statuses = [t["status"] for t in p["trials"]]
    assert statuses[0] == "crashed"
    assert set(statuses[1:]) == {"skipped"}


@pytest.mark.slow
def test_infinite_loop_in_one_function_times_out_and_the_others_are_graded():
    src = source(matmul_backward="""
        def matmul_backward(dout, x, W):
            while True:
                pass
    """)
    wall = LIMITS["matmul_backward"].wall_seconds
    p = assert_only_broken(grade(src), "matmul_backward", f"exceeded the {wall:g} s time limit")
    statuses = [t["status"] for t in p["trials"]]
    assert statuses[0] == "timeout"
    assert set(statuses[1:]) == {"skipped"}


def test_deep_recursion():
    src = source(relu_backward="""
        def relu_backward(dout, x):
            return relu_backward(dout, x)
    """)
    assert_only_broken(grade(src), "relu_backward", "RecursionError", "recursed too deeply")


def test_huge_allocation_reports_the_memory_limit():
    src = source(affine_backward="""
        def affine_backward(dout, x, W, b):
            jacobian = np.zeros((1 << 38,))
            return dout @ W.T, x.T @ dout, dout.sum(axis=0)
    """)
    limit = LIMITS["affine_backward"].memory_mb
    assert_only_broken(grade(src), "affine_backward", "out of memory", f"limit {limit} MB")


# --- values that are not an array ------------------------------------------------------


def test_returning_none_suggests_a_missing_return():
    src = source(relu_backward="""
        def relu_backward(dout, x):
            dx = dout * (x > 0)
    """)
    assert_only_broken(grade(src), "relu_backward", "dx is None", "return statement")


@pytest.mark.parametrize(
    "returned, words",
    [
        ("'dout * (x > 0)'", ["dx is a string", "not an array"]),
        ("{'dx': dout * (x > 0)}", ["dx is a dict", "'dx'", "not an array"]),
        ("Gradient(dout * (x > 0))", ["submission.Gradient", "not numeric data", "return a NumPy array"]),
        ("np.array([dout, 'masked'], dtype=object)", ["dtype object", "not numeric data"]),
        ("np.array(dout * (x > 0), dtype=object)", ["dtype object", "not numeric data"]),
        ("(dout * (x > 0)) > 0", ["boolean array"]),
        ("[dout, None]", ["does not form a regular numeric array"]),
    ],
    ids=["string", "dict", "custom-object", "object-array-mixed", "object-array-of-floats", "bool-array", "list-with-none"],
)
def test_non_array_return_values(returned, words):
    src = source(relu_backward=f"""
        class Gradient:
            def __init__(self, value):
                self.value = value

        def relu_backward(dout, x):
            return {returned}
    """)
    assert_only_broken(grade(src), "relu_backward", *words)


def test_object_array_message_reads_correctly():
    src = source(relu_backward="""
        def relu_backward(dout, x):
            return np.array(dout * (x > 0), dtype=object)
    """)
    text = text_of(part(grade(src), "relu_backward"))
    assert "a a " not in text


# --- arrays of the wrong shape, dtype or values ----------------------------------------


def test_wrong_shape_names_the_expected_shape():
    src = source(matmul_backward="""
        def matmul_backward(dout, x, W):
            return (dout @ W.T).ravel(), x.T @ dout
    """)
    result = grade(src)
    p = part(result, "matmul_backward")
    assert p["score"] == 1.5 and p["status"] == "partial"
    assert [o["passed"] for o in p["outputs"]] == [False, True]
    visible = [t for t in p["trials"] if not t["hidden"]]
    assert visible
    for t in visible:
        n, d = t["shapes"]["x"]
        assert f"dx has shape {fmt((n * d,))}; expected {fmt((n, d))} = (N, D)" in "\n".join(t["messages"])
    for t in p["trials"]:
        if t["hidden"]:
            assert "expected" in "\n".join(t["messages"])
    assert_full(result, "relu_backward")
    assert_full(result, "affine_backward")


def test_transposed_dW_is_called_transposed():
    src = source(matmul_backward="""
        def matmul_backward(dout, x, W):
            return dout @ W.T, dout.T @ x
    """)
    result = grade(src)
    p = part(result, "matmul_backward")
    assert [o["passed"] for o in p["outputs"]] == [True, False]
    assert p["score"] == 1.5
    checked = 0
    for t in p["trials"]:
        if t["hidden"]:
            continue
        d, m = t["shapes"]["W"]
        msgs = "\n".join(t["messages"])
        if d != m:
            assert f"dW has shape {fmt((m, d))}; expected {fmt((d, m))} = (D, M)" in msgs
            assert "transposed" in msgs
            checked += 1
        elif d > 1:  # a square W hides the transpose in the shape: the values are wrong instead
            assert "wrong values" in msgs
        else:  # a (1, 1) W is its own transpose
            assert t["status"] == "passed"
    assert checked >= 3
    assert "transposed" in p["feedback"]


def test_db_with_keepdims_shape():
    src = source(affine_backward="""
        def affine_backward(dout, x, W, b):
            return dout @ W.T, x.T @ dout, dout.sum(axis=0, keepdims=True)
    """)
    result = grade(src)
    p = part(result, "affine_backward")
    assert [o["passed"] for o in p["outputs"]] == [True, True, False]
    assert p["score"] == 2 and p["status"] == "partial"
    for t in p["trials"]:
        if not t["hidden"]:
            (m,) = t["shapes"]["b"]
            msgs = "\n".join(t["messages"])
            assert f"db has shape (1, {m}); expected ({m},) = (M,)" in msgs
            assert "keepdims" in msgs


@pytest.mark.parametrize(
    "expr, word",
    [
        ("dout * (x > 0) * np.nan", "NaN"),
        ("dout * (x > 0) + np.inf", "inf"),
        ("np.where(x > 0, dout, -np.inf)", "inf"),
    ],
    ids=["nan", "inf", "minus-inf"],
)
def test_non_finite_values_are_named(expr, word):
    src = source(relu_backward=f"""
        def relu_backward(dout, x):
            return {expr}
    """)
    p = assert_only_broken(grade(src), "relu_backward", f"dx contains {word}")
    # a visible trial points at the first bad entry; a hidden one does not
    for t in p["trials"]:
        msgs = "\n".join(t["messages"])
        if t["hidden"]:
            assert "index" not in msgs
        elif t["shapes"]["x"]:
            assert "first at index (" in msgs


def test_nan_in_a_python_float_and_in_a_tuple_never_leaks_into_the_result():
    src = source(
        relu_backward="""
            def relu_backward(dout, x):
                return float("nan") if np.ndim(x) == 0 else [[float("nan")]]
        """,
        matmul_backward="""
            def matmul_backward(dout, x, W):
                return float("nan"), (x.T @ dout) * float("inf")
        """,
    )
    result = grade(src)  # grade() checks json.dumps(allow_nan=False)
    assert_zero(result, "relu_backward")
    assert_zero(result, "matmul_backward", "dW contains inf")
    assert_full(result, "affine_backward")


@pytest.mark.parametrize(
    "returned, words",
    [
        ("dx, dW, dW", ["returned a tuple of 3 items", "expected 2 items: (dx, dW)"]),
        ("(dx,)", ["returned a tuple of 1 item;", "expected 2 items: (dx, dW)"]),
        ("dx", ["returned a NumPy array of shape", "(dx, dW)"]),
    ],
    ids=["too-many-items", "too-few-items", "bare-array"],
)
def test_tuple_with_the_wrong_number_of_items(returned, words):
    src = source(matmul_backward=f"""
        def matmul_backward(dout, x, W):
            dx = dout @ W.T
            dW = x.T @ dout
            return {returned}
    """)
    assert_only_broken(grade(src), "matmul_backward", *words)


def test_structure_error_is_reported_once_per_trial():
    src = source(matmul_backward="""
        def matmul_backward(dout, x, W):
            return dout @ W.T, x.T @ dout, 0
    """)
    p = part(grade(src), "matmul_backward")
    for t in p["trials"]:
        assert sum("expected 2 items" in m for m in t["messages"]) == 1, t["messages"]


def test_stacked_array_where_a_tuple_is_expected_is_accepted_when_shapes_agree():
    src = source(matmul_backward="""
        def matmul_backward(dout, x, W):
            dx = dout @ W.T
            dW = x.T @ dout
            if dx.shape == dW.shape:
                print("stacked")
                return np.array([dx, dW])
            return [dx, dW]
    """)
    result = grade(src)
    assert result["score"] == 8
    assert "stacked" in part(result, "matmul_backward").get("printed", "")  # the stacked path was taken


def test_float32_outputs_get_full_marks_with_a_note():
    src = source(
        relu_backward="""
            def relu_backward(dout, x):
                return (dout * (x > 0)).astype(np.float32)
        """,
        affine_backward="""
            def affine_backward(dout, x, W, b):
                return (dout @ W.T).astype(np.float32), x.T @ dout, dout.sum(axis=0)
        """,
    )
    result = grade(src)
    assert result["score"] == 8
    relu, matmul, affine = (part(result, n) for n in FUNCTIONS)
    assert relu["outputs"][0]["float32"] is True
    assert "float32" in relu["feedback"]
    assert [o["float32"] for o in affine["outputs"]] == [True, False, False]
    assert "float32" in affine["feedback"]
    assert "float32" not in matmul["feedback"]
    assert not any(o["float32"] for o in matmul["outputs"])


def test_float32_is_still_checked_for_values():
    src = source(relu_backward="""
        def relu_backward(dout, x):
            return (1.001 * dout * (x > 0)).astype(np.float32)
    """)
    assert_only_broken(grade(src), "relu_backward", "wrong values", "float32")


@pytest.mark.parametrize(
    "dtype, words",
    [
        ("np.float16", ["float16", "too imprecise", "float64"]),
        ("np.complex128", ["complex", "real numbers"]),
        ("np.complex64", ["complex"]),
    ],
    ids=["float16", "complex128", "complex64"],
)
def test_rejected_dtypes(dtype, words):
    src = source(relu_backward=f"""
        def relu_backward(dout, x):
            return (dout * (x > 0)).astype({dtype})
    """)
    assert_only_broken(grade(src), "relu_backward", *words)


def test_np_matrix_return():
    # 2-D gradients returned as np.matrix are array-like with the right shape: accepted.
    # A 1-D gradient becomes a (1, M) matrix: the student is told about the size-1 axis.
    src = source(
        matmul_backward="""
            def matmul_backward(dout, x, W):
                return np.matrix(dout @ W.T), np.matrix(x.T @ dout)
        """,
        affine_backward="""
            def affine_backward(dout, x, W, b):
                return np.matrix(dout @ W.T), np.matrix(x.T @ dout), np.matrix(dout.sum(axis=0))
        """,
    )
    result = grade(src)
    assert_full(result, "relu_backward")
    assert_full(result, "matmul_backward")
    affine = part(result, "affine_backward")
    assert [o["passed"] for o in affine["outputs"]] == [True, True, False]
    assert "db has shape (1, " in affine["feedback"]
    assert "(M,)" in affine["feedback"]
    assert "keepdims" in affine["feedback"]


# --- side effects ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, code, arg",
    [
        (
            "relu_backward",
            """
            def relu_backward(dout, x):
                dout[np.asarray(x) <= 0] = 0
                return dout
            """,
            "dout",
        ),
        (
            "affine_backward",
            """
            def affine_backward(dout, x, W, b):
                W *= 2.0
                dx = dout @ W.T / 2.0
                return dx, x.T @ dout, dout.sum(axis=0)
            """,
            "W",
        ),
    ],
    ids=["relu-overwrites-dout", "affine-scales-W"],
)
def test_mutating_an_input_fails_and_names_the_argument(name, code, arg):
    p = assert_only_broken(grade(source(**{name: code})), name, f"modified its argument `{arg}` in place", f"{arg}.copy()")
    # the returned values were right: it is the mutation alone that fails the trials
    assert "wrong values" not in text_of(p)


def test_printing_is_shown_capped_with_a_dropped_bytes_note():
    src = source(relu_backward="""
        def relu_backward(dout, x):
            print("debug: x has shape", np.shape(x))
            print("z" * 5000)
            return dout * (x > 0)
    """)
    result = grade(src)
    assert result["score"] == 8  # printing is allowed
    printed = part(result, "relu_backward")["printed"]
    assert printed.startswith("debug: x has shape")
    match = re.search(r"\[\.\.\. (\d+) more bytes of output dropped\]", printed)
    assert match, printed[-200:]
    assert int(match.group(1)) > 20_000  # the visible trials' output beyond the cap
    # what hidden trials print could reveal their inputs: withheld, and said so
    assert printed.endswith("[output printed during hidden trials is not shown]")
    assert len(printed) < 4096
    assert "printed" not in part(result, "matmul_backward")
    assert "printed" not in part(result, "affine_backward")


def test_printing_at_import_time_is_a_file_level_message():
    result = grade(source(prelude='print("loading my solution")'))
    assert result["score"] == 8
    assert any("loading my solution" in m for m in result["messages"])


# --- results that must stay small and clean --------------------------------------------


@pytest.mark.parametrize(
    "name, code",
    [
        (
            "relu_backward",
            """
            def relu_backward(dout, x):
                return {("key%06d" % i) * 8: 0 for i in range(20000)}
            """,
        ),
        (
            "matmul_backward",
            """
            Named = type("N" * 100000, (np.ndarray,), {})

            def matmul_backward(dout, x, W):
                return np.zeros(5).view(Named)
            """,
        ),
    ],
    ids=["dict-with-many-keys", "ndarray-subclass-with-long-name"],
)
def test_result_size_is_bounded(name, code):
    result = grade(source(**{name: code}))
    assert part(result, name)["score"] == 0
    assert len(json.dumps(result)) < 1_000_000


def test_result_text_is_valid_unicode():
    src = source(relu_backward="""
        def relu_backward(dout, x):
            raise ValueError("bad byte: " + b"\\xff".decode("utf-8", "surrogateescape"))
    """)
    result = grade(src)
    assert_zero(result, "relu_backward", "ValueError")
    json.dumps(result, ensure_ascii=False).encode("utf-8")


@pytest.mark.slow
def test_self_referential_list_is_too_complex_not_a_timeout():
    src = source(relu_backward="""
        def relu_backward(dout, x):
            loop = []
            loop.append(loop)
            return loop
    """)
    assert_only_broken(grade(src), "relu_backward", "nested too deeply")


def test_hidden_trials_cannot_be_used_to_smuggle_their_inputs_out():
    # Each channel a submission controls: exception text, shapes, dict keys, exit codes, timing.
    src = source(
        relu_backward="""
        def relu_backward(dout, x):
            if x.size > 1000:  # only the large hidden trial
                raise ValueError("leak:" + repr(x.shape) + repr(float(x.flat[0])))
            return dout * (x > 0)
        """,
        matmul_backward="""
        def matmul_backward(dout, x, W):
            if x.shape[0] > 100:
                return {"leak%d" % x.shape[0]: 1}
            return dout @ W.T, x.T @ dout
        """,
        affine_backward="""
        def affine_backward(dout, x, W, b):
            if x.shape[0] > 100:
                import os, time
                time.sleep(x.shape[1] / 1000)
                os._exit(x.shape[0] % 200)
            return dout @ W.T, x.T @ dout, dout.sum(axis=0)
        """,
    )
    result = grade(src)
    text = json.dumps(result)
    for leaked in ("leak", "160, 240", "128, 160", "160, 144", "(128,", "(160,"):
        assert leaked not in text, leaked
    for p in result["parts"]:
        for t in p["trials"]:
            if t["hidden"]:
                assert set(t) <= {"index", "label", "hidden", "status", "messages", "outputs"}
    relu = part(result, "relu_backward")
    assert "raised ValueError on this hidden trial" in text_of(relu)
    assert "died on this hidden trial" in text_of(part(result, "affine_backward"))
    assert "exited with status" not in text


def test_import_output_is_shown_once_even_when_the_child_is_restarted():
    src = source(
        prelude='print("hello from import")',
        relu_backward="""
        def relu_backward(dout, x):
            import os
            os._exit(3)
        """,
    )
    result = grade(src)
    shown = "\n".join(result["messages"])
    assert shown.count("hello from import") == 1


def test_utf16_files_are_told_to_use_utf8():
    result = grade_bytes(A, "def relu_backward(dout, x):\n    return dout\n".encode("utf-16"), seed=SEED)
    assert result["score"] == 0 and "UTF-16" in result["messages"][0]
