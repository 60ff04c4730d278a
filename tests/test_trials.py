"""Trial generation: reproducible, all dimensions distinct in random trials, the edge
cases present, constraints held, random upstream gradients, the large vjp trial."""

from __future__ import annotations

import numpy as np
import pytest

from grader.engine import OPS, Tensor, apply, backward
from grader.spec import Assignment
from grader.trials import make_trials, plan

from conftest import BUILTINS

SEEDS = range(6)


def _all(assignments: dict[str, Assignment], aid: str, seed: int):
    a = assignments[aid]
    return {fn.name: make_trials(a, fn, seed) for fn in a.functions}


def _fingerprint(value: object) -> bytes:
    """Every number a trial hands the student, as bytes."""
    if isinstance(value, np.ndarray):
        return repr(value.shape).encode() + value.tobytes()
    if isinstance(value, (list, tuple)):
        return b"[" + b",".join(_fingerprint(v) for v in value) + b"]"
    return repr(value).encode()


@pytest.mark.parametrize("aid", BUILTINS)
def test_reproducible_from_seed_and_index(assignments: dict[str, Assignment], aid: str) -> None:
    first, again, other = (_all(assignments, aid, s) for s in (5, 5, 6))
    for name in first:
        prints = [_fingerprint([t.args, t.expected]) for t in first[name]]
        assert prints == [_fingerprint([t.args, t.expected]) for t in again[name]]
        assert prints != [_fingerprint([t.args, t.expected]) for t in other[name]], f"{name}: seeds must matter"


def test_one_trial_is_reproducible_alone(assignments: dict[str, Assignment]) -> None:
    from grader.trials import make_trial

    a = assignments["mlp"]
    fn = a.functions[1]
    trials = make_trials(a, fn, 77)
    alone = make_trial(a, fn, 77, 6, plan(fn)[6])
    for x, y in zip(trials[6].args, alone.args):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("aid", BUILTINS)
def test_random_trials_have_distinct_dimensions(assignments: dict[str, Assignment], aid: str) -> None:
    for seed in SEEDS:
        for trials in _all(assignments, aid, seed).values():
            for t in trials:
                if not t.label.startswith("random"):
                    continue
                sizes = list(t.dims.values()) + [n for s in t.shapes.values() for n in s] + (t.layers or [])
                assert len(sizes) == len(set(sizes)), (t.label, sizes)
                assert all(n >= 2 for n in sizes)


def test_edge_cases_are_present(assignments: dict[str, Assignment]) -> None:
    trials = _all(assignments, "vjp", 0)
    matmul = trials["matmul_backward"]
    assert any(t.dims["N"] == 1 for t in matmul), "batch of 1"
    assert any(t.dims["N"] == t.dims["D"] == t.dims["M"] for t in matmul), "square"
    assert any(t.dims["D"] == 1 and t.dims["M"] == 1 for t in matmul), "size-1 dims"
    relu = trials["relu_backward"]
    assert any(t.args[1].shape == () for t in relu), "0-d"
    gates = _all(assignments, "gates", 0)
    for name, ts in gates.items():
        assert any(np.shape(t.args[0]) == () for t in ts), f"{name}: 0-d scalars"
        assert any(1 in np.shape(t.args[0]) for t in ts), f"{name}: size-1 dims"
    bp4 = _all(assignments, "bp4", 0)["minibatch_backprop"]
    assert {len(t.layers) for t in bp4} >= {2, 5}
    assert all(t.dims["m"] >= 3 for t in bp4), "a batch of at least 3 so sum vs mean shows"


def test_hidden_trials_come_last_and_are_counted(assignments: dict[str, Assignment]) -> None:
    for a in assignments.values():
        for fn in a.functions:
            plans = plan(fn)
            hidden_random = [p for p in plans if p.hidden and p.case is None]
            assert len(hidden_random) == fn.trials.hidden
            assert plans[-1].hidden


def test_large_vjp_trial_defeats_a_jacobian(assignments: dict[str, Assignment]) -> None:
    a = assignments["vjp"]
    memory = (a.functions[0].limits.memory_mb or 0) << 20
    for name, trials in _all(assignments, "vjp", 0).items():
        large = [t for t in trials if t.label.startswith("large")]
        assert large, name
        biggest = 0
        for t in large:
            if name == "relu_backward":
                n = t.args[1].size
                biggest = max(biggest, n * n * 8)
            else:
                n, d, m = t.dims["N"], t.dims["D"], t.dims["M"]
                biggest = max(biggest, (n * m) * (n * d) * 8)
        # Over 4x the limit: not even a float16 Jacobian (a quarter of float64's) fits.
        assert biggest > 4 * memory, f"{name}: the Jacobian must not fit in the {memory >> 20} MB limit"
        assert all(t.hidden for t in large)


def test_constraints_hold(assignments: dict[str, Assignment]) -> None:
    for seed in SEEDS:
        for t in _all(assignments, "vjp", seed)["relu_backward"]:
            assert np.all(np.abs(t.args[1]) >= 1e-3)
        for t in _all(assignments, "gates", seed)["max_backward"]:
            assert np.all(np.abs(t.args[1] - t.args[2]) >= 0.1)
        mlp = _all(assignments, "mlp", seed)
        for t in mlp["mlp_backward"]:
            x, y, W1, W2, lam = t.args
            assert np.all(np.abs(W1 @ x) >= 1e-3)
            assert isinstance(y, int) and 0 <= y < W2.shape[0]
            assert isinstance(lam, float) and lam > 0
        for t in mlp["mlp_bias_backward"]:
            x, y, W1, b1, W2, lam = t.args
            assert np.all(np.abs(W1 @ x + b1) >= 1e-3)


def test_upstream_gradients_are_random(assignments: dict[str, Assignment]) -> None:
    for t in _all(assignments, "vjp", 0)["matmul_backward"]:
        dout = t.args[0]
        assert dout.size == 1 or np.std(dout) > 0.1
        assert not np.allclose(dout, 1.0)


def test_contract_shapes(assignments: dict[str, Assignment]) -> None:
    for t in _all(assignments, "vjp", 1)["affine_backward"]:
        dout, x, W, b = t.args
        n, d, m = t.dims["N"], t.dims["D"], t.dims["M"]
        assert (dout.shape, x.shape, W.shape, b.shape) == ((n, m), (n, d), (d, m), (m,))
    for t in _all(assignments, "bp4", 1)["backprop"]:
        weights, biases, x, y = t.args
        sizes = t.layers
        assert [w.shape for w in weights] == [(sizes[i + 1], sizes[i]) for i in range(len(sizes) - 1)]
        assert [b.shape for b in biases] == [(sizes[i + 1], 1) for i in range(len(sizes) - 1)]
        assert x.shape == (sizes[0], 1) and y.shape == (sizes[-1], 1)
        assert 2 <= len(sizes) <= 5 and all(1 <= n <= 30 for n in sizes)
    for t in _all(assignments, "mlp", 1)["mlp_backward"]:
        x, y, W1, W2, lam = t.args
        assert x.ndim == 1 and W1.shape == (t.dims["H"], t.dims["D"]) and W2.shape == (t.dims["Q"], t.dims["H"])


def test_expected_answers_match_a_hand_derivation(assignments: dict[str, Assignment]) -> None:
    """An independent check of the reference on the mlp contract, written out by hand."""
    for t in _all(assignments, "mlp", 3)["mlp_bias_backward"]:
        x, y, W1, b1, W2, lam = t.args
        z = W1 @ x + b1
        h = np.maximum(z, 0)
        o = W2 @ h
        p = np.exp(o - o.max())
        p /= p.sum()
        do = p.copy()
        do[y] -= 1
        dh = W2.T @ do
        dz = dh * (z > 0)
        want = {"o": do, "h": dh, "z": dz, "W2": np.outer(do, h) + lam * W2, "W1": np.outer(dz, x) + lam * W1, "b1": dz}
        fn = assignments["mlp"].function("mlp_bias_backward")
        for info, expected in zip(fn.leaves, t.expected):
            np.testing.assert_allclose(expected, want[info.label], rtol=1e-10, atol=1e-12)


def test_expected_gradients_use_the_upstream_gradient(assignments: dict[str, Assignment]) -> None:
    for t in _all(assignments, "vjp", 2)["matmul_backward"]:
        dout, x, W = t.args
        dx, dW = t.expected
        np.testing.assert_allclose(dx, dout @ W.T, rtol=1e-12)
        np.testing.assert_allclose(dW, x.T @ dout, rtol=1e-12)


def test_engine_agrees_with_the_operator_overloads() -> None:
    x = Tensor(np.arange(3.0))
    total = apply(OPS["sum"], x * x)
    np.testing.assert_allclose(backward(total)[x], 2 * np.arange(3.0))
