"""The comparator: tolerances, the order of checks, and what a hidden trial may say."""

from __future__ import annotations

import numpy as np
import pytest

from grader.compare import BATCH_MAX_SIZE, CHUNK, StructureError, check_array, check_leaf, check_leaves, check_unchanged, locate, to_array
from grader.runner.protocol import Returned, Unsupported
from grader.spec.load import LeafInfo
from grader.spec.model import DictReturn, Leaf, SeqReturn, Tolerance

TOL = Tolerance()
rng = np.random.default_rng(0)
EXPECTED = rng.normal(size=(4, 3))


def ret(array: np.ndarray, kind: str = "array") -> Returned:
    return Returned(np.asarray(array), kind)


def test_float64_tolerance_is_tight() -> None:
    assert check_array("dW", EXPECTED, ret(EXPECTED * (1 + 1e-9)), TOL, False).passed
    assert not check_array("dW", EXPECTED, ret(EXPECTED * (1 + 1e-6)), TOL, False).passed


def test_float32_gets_the_documented_looser_tolerance() -> None:
    as32 = ret(EXPECTED.astype(np.float32))
    result = check_array("dW", EXPECTED, as32, TOL, False)
    assert result.passed and result.float32
    wrong = ret((EXPECTED * 1.01).astype(np.float32))
    assert not check_array("dW", EXPECTED, wrong, TOL, False).passed


def test_tiny_entries_are_judged_against_the_array_scale() -> None:
    expected = np.array([1.0, 1e-17])
    assert check_array("g", expected, ret(np.array([1.0, 0.0])), TOL, False).passed
    assert not check_array("g", np.array([1e-3, 1e-17]), ret(np.array([0.0, 0.0])), TOL, False).passed


def test_messages_are_specific() -> None:
    msg = check_array("dW", EXPECTED, ret(EXPECTED.T), TOL, False, "(D, M)").message
    assert "(3, 4)" in msg and "(4, 3) = (D, M)" in msg and "transposed" in msg
    msg = check_array("db", np.zeros(3), ret(np.zeros((1, 3))), TOL, False).message
    assert "size 1" in msg
    msg = check_array("db", np.zeros(3), ret(np.zeros((5, 3))), TOL, False).message
    assert "summed" in msg
    bad = EXPECTED.copy()
    bad[2, 1] += 1
    msg = check_array("dW", EXPECTED, ret(bad), TOL, False).message
    assert "1 of 12 entries" in msg and "(2, 1)" in msg and f"{EXPECTED[2, 1]:.6g}" in msg


def test_hidden_trials_reveal_no_values_or_positions() -> None:
    bad = EXPECTED.copy()
    bad[2, 1] += 1
    msg = check_array("dW", EXPECTED, ret(bad), TOL, True).message
    assert msg == "dW has wrong values"  # no counts: the student chooses which entries are wrong
    msg = check_array("dW", EXPECTED, ret(EXPECTED.T), TOL, True, "(D, M)").message
    assert msg == "dW has the wrong shape; expected (D, M)"  # the symbolic shape only, no sizes
    nan = EXPECTED.copy()
    nan[1, 1] = np.nan
    msg = check_array("dW", EXPECTED, ret(nan), TOL, True).message
    assert "NaN" in msg and "index" not in msg


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (None, "None"),
        ("text", "string"),
        ({"a": 1}, "dict"),
        (Unsupported("a NumPy array of dtype object"), "dtype object"),
        ([[1.0, 2.0], [3.0]], "regular numeric array"),
        (ret(np.ones(3, dtype=np.complex128)), "complex"),
        (ret(np.ones(3, dtype=np.float16)), "float16"),
        (ret(np.ones(3, dtype=bool)), "boolean"),
        (ret(np.array([1.0, np.inf, 0.0])), "inf"),
    ],
)
def test_wrong_types_fail_with_a_reason(value: object, words: str) -> None:
    result = check_array("dx", np.ones(3), value, TOL, False)
    assert not result.passed and words in result.message


def test_array_likes_are_accepted() -> None:
    assert check_array("dx", np.array([1.0, 2.0]), [1.0, 2.0], TOL, False).passed
    assert check_array("dx", np.array([1.0, 2.0]), (ret(np.float64(1.0)), 2), TOL, False).passed
    assert check_array("dx", np.array(3.0), 3.0, TOL, False).passed
    assert check_array("dx", np.array([1.0, 2.0]), ret(np.array([1, 2])), TOL, False).passed
    assert isinstance(to_array(Unsupported("x")), str)


def test_locate_walks_tuples_dicts_and_stacked_arrays() -> None:
    spec = SeqReturn(tuple=[Leaf(value="a"), SeqReturn(tuple=[Leaf(grad="b"), Leaf(grad="c")])])
    found = locate(spec, (1, [2, 3]))
    assert found == {(0,): 1, (1, 0): 2, (1, 1): 3}
    pair = SeqReturn(tuple=[Leaf(grad="x"), Leaf(grad="y")])
    rows = ret(np.arange(6.0).reshape(2, 3))
    stacked = locate(pair, rows, {(0,): np.zeros(3), (1,): np.zeros(3)})
    np.testing.assert_array_equal(stacked[(1,)].array, [3.0, 4.0, 5.0])
    # A single answer whose first axis happens to equal the tuple length is not split.
    lone = locate(pair, rows, {(0,): np.zeros((2, 3)), (1,): np.zeros((3, 4))})
    assert all(isinstance(v, StructureError) for v in lone.values())
    assert "expected a tuple (dx, dy)" in str(lone[(0,)])
    short = locate(spec, (1,))
    assert all(isinstance(v, StructureError) for v in short.values())
    assert "expected 2 items" in str(short[(0,)])
    assert locate(pair, [1, 2]) == {(0,): 1, (1,): 2}
    assert locate(Leaf(grad="x"), (1, 2)) == {(): (1, 2)}
    d = DictReturn(keys={"W1": Leaf(grad="W1"), "W2": Leaf(grad="W2")})
    assert locate(d, {"W2": 2, "extra": 3, "W1": 1}) == {("W1",): 1, ("W2",): 2}
    found = locate(d, {"W1": 1})
    assert found[("W1",)] == 1 and "no key 'W2'" in str(found[("W2",)])
    assert "expected a dict" in str(locate(d, [1, 2])[("W1",)])


def test_mutation_is_named() -> None:
    before = [np.ones(3), np.zeros(2)]
    after = [ret(np.ones(3)), ret(np.array([0.0, 5.0]))]
    assert "`x`" in (check_unchanged(["dout", "x"], before, after) or "")
    assert check_unchanged(["dout", "x"], before, [ret(np.ones(3)), ret(np.zeros(2))]) is None
    layers = [[np.ones(2), np.ones(3)]]
    assert check_unchanged(["weights"], layers, [[ret(np.ones(2))]]) is not None


def _bent(expected: np.ndarray) -> list[object]:
    """Right and wrong answers to `expected`, among them the cases a vectorised pass must
    not wave through: NaN, inf, values just outside the tolerance in the last entry."""
    e = np.asarray(expected)
    last_off, with_nan, with_inf = (e.astype(np.float64).reshape(-1) for _ in range(3))
    last_off[-1:] = last_off[-1:] * (1 + 1e-6) + 1e-6
    with_nan[-1:], with_inf[:1] = np.nan, -np.inf
    return [
        ret(e), ret(e * (1 + 1e-9)), ret(e * (1 + 1e-6)), ret(e.astype(np.float32)),
        ret((e * 1.01).astype(np.float32)), ret(last_off.reshape(e.shape)), ret(with_nan.reshape(e.shape)),
        ret(with_inf.reshape(e.shape)), ret(e.T), ret(e.astype(">f8")), ret(np.round(e).astype(np.int64)),
        ret(e.astype(np.float16)), ret(e[None]), ret(np.zeros_like(e)), float(e.sum()), None,
        StructureError("returned None; expected a tuple (dx, dy)"), [ret(e)],
    ]


def test_checking_many_outputs_at_once_agrees_with_checking_each() -> None:
    # Arrays below the batch size, above it, and over several chunks; a 0-d answer; an
    # empty one; answers with NaN or inf in them; one whose error overflows to inf.
    big = rng.normal(size=(50, BATCH_MAX_SIZE // 50 + 1))
    huge = rng.normal(size=(3, CHUNK // 2 + 7))
    answers = [EXPECTED, big, huge, np.float64(0.7), np.array(-2.5), np.zeros(3), np.zeros((0, 3))]
    odd = [
        (np.array([1.0, np.nan]), ret(np.array([1.0, 5.0]))),
        (np.array([1.0, np.inf]), ret(np.array([1.0, 5.0]))),
        (np.array([1.0, np.inf]), ret(np.array([np.inf, np.inf]))),
        (np.array([1.0, np.inf]), ret(np.array([np.inf, 5.0]))),
        (np.array([1.0, np.nan]), ret(np.array([1.0, np.nan]))),
        (np.array([1e308, -1e308]), ret(np.array([-1e308, 1e308]))),
        (np.array([1, 2]), ret(np.array([1.0, 2.0]))),
        ([EXPECTED, big], [ret(EXPECTED.astype(np.float32)), ret(big)]),
        ([EXPECTED, big], [ret(EXPECTED), ret(big * 2)]),
        ([EXPECTED, huge], (ret(EXPECTED), ret(huge))),
        ([EXPECTED, big], [ret(EXPECTED)]),
        ([EXPECTED], ret(EXPECTED)),
        ([], []),
    ]
    pairs = [(e, actual) for e in answers for actual in _bent(e)] + odd
    info = LeafInfo(path=(), leaf=Leaf(grad="x", name="dx"), points=1.0)
    # So loose that the allowance is infinite: only the finiteness check fails an inf.
    loose = Tolerance(rtol=1e308, atol=1e308, float32_rtol=1e308, float32_atol=1e308)
    for tol in (TOL, loose):
        requests = [(info, e, actual, k % 3 == 0, "(N, D)" if k % 2 else None) for k, (e, actual) in enumerate(pairs)]
        one_by_one = [check_leaf(info, e, actual, tol, hidden, names) for info, e, actual, hidden, names in requests]
        assert check_leaves(requests, tol) == one_by_one
        # Alone, too: a batch that passes as a whole takes a shortcut.
        assert [check_leaves([r], tol)[0] for r in requests] == one_by_one
        assert 0 < sum(c.passed for c in one_by_one) < len(pairs)


def test_the_largest_difference_is_named_the_same_whatever_the_last_bits() -> None:
    # A transposed answer differs by the same amount at (0, 1) and (1, 0). Which of the two
    # came out a bit larger depended on the kernels the machine's BLAS picked, so the same
    # file got a different message on another CPU; ties up to rounding go to the first.
    expected = np.array([[1.0, 2.0], [3.0, 4.0]])
    for nudge in (0.0, 1e-15, -1e-15):
        bent = expected.copy()
        bent[1, 0] += nudge  # the last bit another machine's reference might have
        check = check_array("dW", bent, Returned(expected.T.copy(), "array"), TOL, hidden=False)
        assert not check.passed and "largest difference at index (0, 1): expected 2, got 3" in check.message, check.message
    # A real difference is still found wherever it is.
    wrong = expected.copy()
    wrong[1, 1] += 5.0
    check = check_array("dW", expected, Returned(wrong, "array"), TOL, hidden=False)
    assert "largest difference at index (1, 1): expected 4, got 9" in check.message
