"""Tests of the reverse-mode autodiff engine (grader.engine).

Every gradient the engine produces is compared against something computed without the
engine's VJP rules: central finite differences of an independent NumPy reference forward,
the dot-product identity <u, VJP(v)> = <v, JVP(u)> with a finite-difference JVP, closed
forms derived by hand, or exact arithmetic with `decimal`.

The per-op case table `OP_SPECS` must cover every name in the `OPS` registry: registering a
new op without adding a case makes `test_case_table_covers_registry` (and the op's
parametrised tests) fail.

Set ENGINE_TEST_EXAMPLES to run more hypothesis examples per property (default 20).
"""

from __future__ import annotations

import math
import os
import sys
import warnings
import zlib
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from grader.engine import OPS, Tensor, apply, backward, unbroadcast

EPS = 1e-6  # central-difference step
RTOL = 1e-6  # tolerance relative to max(1, scale of the expected values)

MAX_EXAMPLES = int(os.environ.get("ENGINE_TEST_EXAMPLES", "20"))
PROPERTY = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,  # do not write a .hypothesis directory into the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FEW = settings(PROPERTY, max_examples=max(5, MAX_EXAMPLES // 2))


# --- numerical helpers (independent of the engine's VJP rules) --------------------------


def numerical_vjp(f: Callable[..., np.ndarray], inputs: list[np.ndarray], v: np.ndarray, eps: float = EPS):
    """Central differences of sum(f(*inputs) * v) w.r.t. every element of every input.

    The output difference is taken before weighting with v, so outputs an element does not
    influence cancel exactly instead of contributing round-off of the full sum.
    """
    grads = []
    for i, x in enumerate(inputs):
        args = list(inputs)
        xi = np.array(x, dtype=np.float64, copy=True)
        args[i] = xi
        g = np.zeros_like(xi)
        for idx in np.ndindex(xi.shape):
            orig = xi[idx]
            xi[idx] = orig + eps
            fp = np.array(f(*args), dtype=np.float64, copy=True)  # copy: f may return a view of xi
            xi[idx] = orig - eps
            fm = np.array(f(*args), dtype=np.float64, copy=True)
            xi[idx] = orig
            g[idx] = np.sum((fp - fm) * v) / (2.0 * eps)
        grads.append(g)
    return grads


def numerical_jvp(f: Callable[..., np.ndarray], inputs: list[np.ndarray], us: list[np.ndarray], eps: float = EPS):
    """Central directional difference (f(x + eps u) - f(x - eps u)) / (2 eps)."""
    plus = np.array(f(*[x + eps * u for x, u in zip(inputs, us)]), dtype=np.float64, copy=True)
    minus = np.array(f(*[x - eps * u for x, u in zip(inputs, us)]), dtype=np.float64, copy=True)
    return (plus - minus) / (2.0 * eps)


def assert_close(actual: Any, expected: Any, what: str = "", rtol: float = RTOL, scale: float | None = None) -> None:
    """max |actual - expected| <= rtol * max(1, scale), scale defaulting to max |expected|."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != expected {expected.shape}"
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values {actual}"
    if scale is None:
        scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    tol = rtol * max(1.0, scale)
    err = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    assert err <= tol, f"{what}: max abs error {err:.3e} > {tol:.3e}\nactual={actual}\nexpected={expected}"


# --- value samplers: keep every input inside its op's domain ----------------------------


def uniform(lo: float, hi: float):
    return lambda rng, shape: rng.uniform(lo, hi, size=shape)


def signed(lo: float, hi: float):
    """|x| in [lo, hi] with a random sign: away from zero (denominators, relu's kink)."""
    return lambda rng, shape: rng.choice([-1.0, 1.0], size=shape) * rng.uniform(lo, hi, size=shape)


def odd_lattice(rng, shape):
    """0.1 * odd integer + noise in [-0.02, 0.02]."""
    return 0.1 * (2 * rng.integers(-10, 10, size=shape) + 1) + rng.uniform(-0.02, 0.02, size=shape)


def even_lattice(rng, shape):
    """0.1 * even integer + noise: differs from any odd_lattice value by >= 0.06 (no ties)."""
    return 0.1 * (2 * rng.integers(-10, 11, size=shape)) + rng.uniform(-0.02, 0.02, size=shape)


def pair(sample_a, sample_b):
    return lambda rng, sa, sb: [sample_a(rng, sa), sample_b(rng, sb)]


def rng_from(draw) -> np.random.Generator:
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1)))


def as_array(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def ref_sce(logits: np.ndarray, label: Any) -> np.ndarray:
    # Naive log-sum-exp: fine (and independent of the engine's shifted version) for |logits| <= 3.
    labels = np.asarray(label)
    if logits.ndim == 1:
        return as_array(np.log(np.sum(np.exp(logits))) - logits[labels])
    n = logits.shape[0]
    rows = np.log(np.sum(np.exp(logits), axis=1)) - logits[np.arange(n), labels]
    return as_array(np.sum(rows) / n)


def ref_mean(x: np.ndarray, axis: Any = None, keepdims: bool = False) -> np.ndarray:
    total = np.sum(x, axis=axis, keepdims=keepdims)
    count = x.size // np.asarray(total).size  # elements folded into each output
    return as_array(total / count)


def ref_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # einsum broadcasts the batch ("...") axes; vectors are promoted and the axis dropped after.
    out = np.einsum("...ij,...jk->...ik", a[None, :] if a.ndim == 1 else a, b[:, None] if b.ndim == 1 else b)
    if a.ndim == 1:
        out = out[..., 0, :]
    if b.ndim == 1:
        out = out[..., 0]
    return as_array(out)


# Elementwise samplers, shared by the hypothesis cases and the explicit broadcasting tests.
UNARY_SAMPLERS: dict[str, Callable] = {
    "neg": uniform(-2, 2),
    "identity": uniform(-2, 2),
    "exp": uniform(-2, 2),
    "log": uniform(0.5, 3),
    "sqrt": uniform(0.5, 3),
    "square": uniform(-2, 2),
    "tanh": uniform(-3, 3),
    "relu": signed(0.05, 2),  # away from the kink at 0
    "sigmoid": uniform(-4, 4),
}
BINARY_SAMPLERS: dict[str, Callable] = {
    "add": pair(uniform(-2, 2), uniform(-2, 2)),
    "sub": pair(uniform(-2, 2), uniform(-2, 2)),
    "mul": pair(uniform(-2, 2), uniform(-2, 2)),
    "div": pair(uniform(-2, 2), signed(0.5, 2)),  # denominator away from zero
    "pow": pair(uniform(0.5, 2), uniform(-2, 2)),  # positive base
    "maximum": pair(odd_lattice, even_lattice),  # |a - b| >= 0.06 everywhere: no ties
    "minimum": pair(even_lattice, odd_lattice),
    "squared_error": pair(uniform(-2, 2), uniform(-2, 2)),
}
REFERENCES: dict[str, Callable[..., np.ndarray]] = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: np.exp(b * np.log(a)),
    "maximum": lambda a, b: np.where(a > b, a, b),
    "minimum": lambda a, b: np.where(a < b, a, b),
    "squared_error": lambda a, b: as_array(np.sum((a - b) * (a - b))),
    "neg": lambda x: -x,
    "identity": lambda x: np.array(x, copy=True),
    "exp": np.exp,
    "log": np.log,
    "sqrt": np.sqrt,
    "square": lambda x: x * x,
    "tanh": lambda x: (np.exp(2 * x) - 1) / (np.exp(2 * x) + 1),
    "relu": lambda x: np.where(x > 0, x, 0.0),
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "matmul": ref_matmul,
    "transpose": lambda x, axes=None: np.transpose(x, axes),
    "reshape": lambda x, shape: np.reshape(x, shape),
    "sum": lambda x, axis=None, keepdims=False: as_array(np.sum(x, axis=axis, keepdims=keepdims)),
    "mean": ref_mean,
    "softmax_cross_entropy": ref_sce,
    "sum_sq": lambda x: as_array(np.sum(x * x)),
    "frobenius_sq": lambda x: as_array(np.sum(x * x)),
    "norm": lambda x: as_array(math.sqrt(float(np.sum(x * x)))),
}


# --- shape strategies -------------------------------------------------------------------

SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=5)
BROADCAST_PAIRS = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, min_side=1, max_side=5).map(
    lambda bs: bs.input_shapes
)
DIM = st.integers(1, 5)

MATMUL_KINDS: dict[str, Callable] = {
    "vec@vec": lambda b, c, m, n, k: ((n,), (n,)),
    "mat@vec": lambda b, c, m, n, k: ((m, n), (n,)),
    "vec@mat": lambda b, c, m, n, k: ((n,), (n, k)),
    "mat@mat": lambda b, c, m, n, k: ((m, n), (n, k)),
    "batch@mat": lambda b, c, m, n, k: ((b, m, n), (n, k)),
    "mat@batch": lambda b, c, m, n, k: ((m, n), (b, n, k)),
    "batch@batch": lambda b, c, m, n, k: ((b, m, n), (b, n, k)),
    "batch1@batch": lambda b, c, m, n, k: ((1, m, n), (b, n, k)),
    "bcast-batch": lambda b, c, m, n, k: ((b, 1, m, n), (c, n, k)),
    "vec@batch": lambda b, c, m, n, k: ((n,), (b, n, k)),
    "batch@vec": lambda b, c, m, n, k: ((b, m, n), (n,)),
}


@st.composite
def axis_choices(draw, ndim: int):
    """None, an int (possibly negative), or a tuple of distinct axes (possibly empty/negative)."""
    if ndim == 0:
        return draw(st.sampled_from([None, ()]))
    kind = draw(st.sampled_from(["none", "int", "tuple"]))
    if kind == "none":
        return None
    if kind == "int":
        return draw(st.integers(-ndim, ndim - 1))
    axes = draw(st.lists(st.integers(0, ndim - 1), unique=True, max_size=ndim))
    return tuple(a - ndim if draw(st.booleans()) else a for a in axes)


@st.composite
def reshape_targets(draw, shape: tuple[int, ...]):
    """A random shape with the same size: the prime factors regrouped, 1s inserted, maybe a -1."""
    factors = []
    for d in shape:
        for p in (2, 3, 5):
            while d % p == 0:
                factors.append(p)
                d //= p
    factors = draw(st.permutations(factors))
    rank = draw(st.integers(1 if factors else 0, 4))
    target = [1] * rank
    for f in factors:
        target[draw(st.integers(0, rank - 1))] *= f
    if rank and draw(st.booleans()):
        target[draw(st.integers(0, rank - 1))] = -1
    return tuple(target)


# --- the case table ---------------------------------------------------------------------


@dataclass
class Case:
    inputs: list[np.ndarray]
    params: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        shapes = [x.shape for x in self.inputs]
        return f"Case(shapes={shapes}, params={self.params}, inputs={[x.tolist() for x in self.inputs]})"


def unary_cases(sampler) -> st.SearchStrategy[Case]:
    @st.composite
    def strategy(draw):
        shape = draw(SHAPES)
        return Case([sampler(rng_from(draw), shape)])

    return strategy()


def binary_cases(sampler) -> st.SearchStrategy[Case]:
    @st.composite
    def strategy(draw):
        sa, sb = draw(BROADCAST_PAIRS)
        return Case(sampler(rng_from(draw), sa, sb))

    return strategy()


MATMUL_WORKING_KINDS = tuple(MATMUL_KINDS)


@st.composite
def matmul_cases(draw, kinds=MATMUL_WORKING_KINDS):
    kind = draw(st.sampled_from(kinds))
    sa, sb = MATMUL_KINDS[kind](*(draw(DIM) for _ in range(5)))
    rng = rng_from(draw)
    return Case([rng.uniform(-2, 2, sa), rng.uniform(-2, 2, sb)])


@st.composite
def transpose_cases(draw):
    shape = draw(SHAPES)
    x = rng_from(draw).uniform(-2, 2, shape)
    choice = draw(st.sampled_from(["default", "none", "perm"]))
    if choice == "default":
        return Case([x])
    if choice == "none":
        return Case([x], {"axes": None})
    return Case([x], {"axes": tuple(draw(st.permutations(range(len(shape)))))})


@st.composite
def reshape_cases(draw):
    shape = draw(SHAPES)
    return Case([rng_from(draw).uniform(-2, 2, shape)], {"shape": draw(reshape_targets(shape))})


@st.composite
def reduction_cases(draw):
    shape = draw(SHAPES)
    x = rng_from(draw).uniform(-2, 2, shape)
    params: dict[str, Any] = {}
    axis = draw(axis_choices(len(shape)))
    if axis is not None or draw(st.booleans()):
        params["axis"] = axis
    keepdims = draw(st.booleans())
    if keepdims or draw(st.booleans()):
        params["keepdims"] = keepdims
    return Case([x], params)


@st.composite
def sce_cases(draw):
    rng = rng_from(draw)
    c = draw(DIM)
    if draw(st.booleans()):
        label = draw(st.integers(0, c - 1))
        if draw(st.booleans()):
            label = np.int64(label)
        return Case([rng.uniform(-3, 3, (c,))], {"label": label})
    n = draw(DIM)
    labels = np.array(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)), dtype=np.int64)
    return Case([rng.uniform(-3, 3, (n, c))], {"label": labels})


OP_SPECS: dict[str, st.SearchStrategy[Case]] = {
    **{name: unary_cases(s) for name, s in UNARY_SAMPLERS.items()},
    **{name: binary_cases(s) for name, s in BINARY_SAMPLERS.items()},
    "matmul": matmul_cases(),
    "transpose": transpose_cases(),
    "reshape": reshape_cases(),
    "sum": reduction_cases(),
    "mean": reduction_cases(),
    "softmax_cross_entropy": sce_cases(),
    "sum_sq": unary_cases(uniform(-2, 2)),
    "frobenius_sq": unary_cases(uniform(-2, 2)),
    "norm": unary_cases(signed(0.5, 2)),  # norm >= 0.5: away from the kink at 0
}

ALL_OPS = sorted(OPS)


def spec_for(name: str) -> st.SearchStrategy[Case]:
    if name not in OP_SPECS or name not in REFERENCES:
        pytest.fail(f"op {name!r} is registered but has no test case: add it to OP_SPECS and REFERENCES")
    return OP_SPECS[name]


def engine_forward(name: str, params: dict[str, Any]) -> Callable[..., np.ndarray]:
    return lambda *xs: apply(OPS[name], *(Tensor(x) for x in xs), **params).value


def reference_forward(name: str, params: dict[str, Any]) -> Callable[..., np.ndarray]:
    return lambda *xs: REFERENCES[name](*xs, **params)


def engine_vjp(name: str, case: Case, v: np.ndarray) -> list[np.ndarray]:
    leaves = [Tensor(x) for x in case.inputs]
    out = apply(OPS[name], *leaves, **case.params)
    grads = backward(out, v)
    return [grads[leaf] for leaf in leaves]


def check_vjp_against_fd(name: str, case: Case, rng: np.random.Generator) -> None:
    out_shape = np.shape(REFERENCES[name](*case.inputs, **case.params))
    v = rng.uniform(-1, 1, out_shape)
    got = engine_vjp(name, case, v)
    expected = numerical_vjp(reference_forward(name, case.params), case.inputs, v)
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert_close(g, e, f"{name} d/d(input {i}) for {case!r}")


# --- 1. registry coverage ---------------------------------------------------------------


def test_case_table_covers_registry():
    assert set(OP_SPECS) == set(OPS), (
        f"ops without a test case: {sorted(set(OPS) - set(OP_SPECS))}; "
        f"cases for unknown ops: {sorted(set(OP_SPECS) - set(OPS))}"
    )
    assert set(REFERENCES) == set(OPS)


def test_arity_matches_case_table():
    for name in ALL_OPS:
        spec_for(name)
        expected_arity = 2 if name in BINARY_SAMPLERS or name == "matmul" else 1
        assert OPS[name].arity == expected_arity, name


# --- 2. forward values, VJP vs finite differences, dot-product identity -------------------


@pytest.mark.parametrize("name", ALL_OPS)
@PROPERTY
@given(data=st.data())
def test_forward_matches_reference(name, data):
    case = data.draw(spec_for(name), label="case")
    out = apply(OPS[name], *(Tensor(x) for x in case.inputs), **case.params)
    assert out.op is OPS[name]
    assert out.value.dtype == np.float64
    expected = REFERENCES[name](*case.inputs, **case.params)
    assert_close(out.value, expected, f"{name} forward for {case!r}", rtol=1e-12)


@pytest.mark.parametrize("name", ALL_OPS)
@PROPERTY
@given(data=st.data())
def test_vjp_matches_finite_differences(name, data):
    case = data.draw(spec_for(name), label="case")
    check_vjp_against_fd(name, case, rng_from(data.draw))


@pytest.mark.parametrize("name", ALL_OPS)
@PROPERTY
@given(data=st.data())
def test_dot_product_identity(name, data):
    """<u, VJP(v)> == <v, JVP(u)>, the JVP a central directional difference of the engine's forward."""
    case = data.draw(spec_for(name), label="case")
    rng = rng_from(data.draw)
    f = engine_forward(name, case.params)
    out = np.asarray(f(*case.inputs))
    v = rng.uniform(-1, 1, out.shape)
    us = [rng.uniform(-1, 1, x.shape) for x in case.inputs]
    vjps = engine_vjp(name, case, v)
    jvp = numerical_jvp(f, case.inputs, us)
    lhs = sum(float(np.sum(u * g)) for u, g in zip(us, vjps))
    rhs = float(np.sum(v * jvp))
    scale = max(sum(float(np.sum(np.abs(u * g))) for u, g in zip(us, vjps)), float(np.sum(np.abs(v * jvp))))
    assert_close(lhs, rhs, f"{name} <u, VJP(v)> vs <v, JVP(u)> for {case!r}", scale=scale)


# --- 3. explicit shape combinations -------------------------------------------------------

EXPLICIT_PAIRS = [
    ((3, 1, 4), (4,)),
    ((4,), (3, 1, 4)),
    ((1,), (2, 3)),
    ((2, 3), (1,)),
    ((), (2, 3)),
    ((2, 3), ()),
    ((), ()),
    ((), (2, 1, 3, 2)),
    ((2, 1), (1, 3)),
    ((5, 1, 1, 2), (3, 1)),
    ((2, 3), (2, 3)),
]


@pytest.mark.parametrize("shapes", EXPLICIT_PAIRS, ids=str)
@pytest.mark.parametrize("name", sorted(BINARY_SAMPLERS))
def test_binary_broadcast_pairs(name, shapes):
    rng = np.random.default_rng(zlib.crc32(repr((name, shapes)).encode()))
    case = Case(BINARY_SAMPLERS[name](rng, *shapes))
    out = apply(OPS[name], *(Tensor(x) for x in case.inputs))
    expected_shape = () if name == "squared_error" else np.broadcast_shapes(*shapes)
    assert out.shape == expected_shape
    check_vjp_against_fd(name, case, rng)


@pytest.mark.parametrize("kind", sorted(MATMUL_WORKING_KINDS))
@FEW
@given(data=st.data())
def test_matmul_shape_combos(kind, data):
    case = data.draw(matmul_cases(kinds=(kind,)), label="case")
    a, b = case.inputs
    out = Tensor(a) @ Tensor(b)
    assert out.shape == np.matmul(a, b).shape
    assert_close(out.value, REFERENCES["matmul"](a, b), f"matmul forward {kind}", rtol=1e-12)
    check_vjp_against_fd("matmul", case, rng_from(data.draw))


def test_vector_dot_vector_gradient():
    """1-D @ 1-D: the upstream gradient is 0-d (a regression test)."""
    a_val, b_val = np.array([1.0, 2.0, 3.0]), np.array([4.0, -5.0, 6.0])
    a, b = Tensor(a_val), Tensor(b_val)
    out = a @ b
    assert_close(out.value, 4.0 - 10.0 + 18.0, "dot forward")
    grads = backward(out)
    assert_close(grads[a], b_val, "d(a.b)/da")
    assert_close(grads[b], a_val, "d(a.b)/db")


def test_matmul_rejects_scalars():
    with pytest.raises(ValueError, match="matmul"):
        apply(OPS["matmul"], Tensor(2.0), Tensor(np.ones(3)))


REDUCTION_AXES = [None, 0, 1, 2, -1, -2, -3, (), (0,), (2,), (0, 1), (0, 2), (1, 2), (-1, 0), (0, 1, 2), (2, 0, 1)]


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", REDUCTION_AXES, ids=str)
@pytest.mark.parametrize("name", ["sum", "mean"])
def test_reduction_every_axis(name, axis, keepdims):
    rng = np.random.default_rng(7)
    x = rng.uniform(-2, 2, (2, 3, 4))
    case = Case([x], {"axis": axis, "keepdims": keepdims})
    out = apply(OPS[name], Tensor(x), axis, keepdims)
    assert out.shape == np.sum(x, axis=axis, keepdims=keepdims).shape
    assert_close(out.value, REFERENCES[name](x, axis=axis, keepdims=keepdims), f"{name} forward", rtol=1e-12)
    check_vjp_against_fd(name, case, rng)


@pytest.mark.parametrize("axes", [(1, 2, 0), (2, 0, 1), (0, 2, 1), (2, 1, 0), (0, 1, 2)], ids=str)
def test_transpose_permutations(axes):
    rng = np.random.default_rng(3)
    x = rng.uniform(-2, 2, (2, 3, 4))
    out = apply(OPS["transpose"], Tensor(x), axes)
    assert out.shape == tuple((2, 3, 4)[a] for a in axes)
    check_vjp_against_fd("transpose", Case([x], {"axes": axes}), rng)


def test_transpose_negative_axes():
    rng = np.random.default_rng(4)
    x = rng.uniform(-2, 2, (2, 3, 4))
    out = apply(OPS["transpose"], Tensor(x), (-1, 0, 1))
    assert out.shape == (4, 2, 3)  # NumPy accepts negative axes in the forward
    check_vjp_against_fd("transpose", Case([x], {"axes": (-1, 0, 1)}), rng)


def test_reduction_numpy_integer_axis():
    x = np.random.default_rng(5).uniform(-2, 2, (2, 3))
    leaf = Tensor(x)
    out = apply(OPS["sum"], leaf, np.int64(1))  # the forward accepts it
    v = np.array([1.0, -2.0])
    assert_close(backward(out, v)[leaf], np.repeat(v[:, None], 3, axis=1), "sum axis=np.int64(1)")


def test_sum_of_scalar_with_axis_zero():
    leaf = Tensor(2.0)
    out = apply(OPS["sum"], leaf, 0)
    assert out.shape == ()
    assert_close(backward(out)[leaf], 1.0, "d sum(x, axis=0) / dx for 0-d x")


def test_reshape_with_inferred_dimension():
    x = np.arange(24.0).reshape(2, 3, 4)
    leaf = Tensor(x)
    out = apply(OPS["reshape"], leaf, (4, -1))
    assert out.shape == (4, 6)
    v = np.random.default_rng(6).uniform(-1, 1, (4, 6))
    assert_close(backward(out, v)[leaf], v.ravel().reshape(2, 3, 4), "reshape VJP")


# --- 4. unbroadcast -----------------------------------------------------------------------


def test_unbroadcast_sums_leading_axes():
    g = np.arange(24.0).reshape(2, 3, 4)
    expected = np.array([sum(g[i, j, k] for i in range(2) for j in range(3)) for k in range(4)])
    out = unbroadcast(g, (4,))
    assert out.shape == (4,)
    np.testing.assert_allclose(out, expected, rtol=1e-15)


def test_unbroadcast_sums_size_one_axes_keeping_them():
    g = np.arange(24.0).reshape(2, 3, 4)
    expected = np.array([[sum(g[i, j, k] for i in range(2) for k in range(4))] for j in range(3)])
    out = unbroadcast(g, (3, 1))
    assert out.shape == (3, 1)
    np.testing.assert_allclose(out, expected, rtol=1e-15)
    out = unbroadcast(g, (2, 1, 4))
    assert out.shape == (2, 1, 4)
    np.testing.assert_allclose(out[:, 0, :], [[sum(g[i, j, k] for j in range(3)) for k in range(4)] for i in range(2)])


def test_unbroadcast_to_scalar_and_all_ones():
    g = np.arange(6.0).reshape(2, 3)
    assert unbroadcast(g, ()).shape == ()
    assert float(unbroadcast(g, ())) == 15.0
    assert unbroadcast(g, (1, 1)).shape == (1, 1)
    assert float(unbroadcast(g, (1, 1))[0, 0]) == 15.0
    assert unbroadcast(g, (1,)).shape == (1,)
    assert float(unbroadcast(g, (1,))[0]) == 15.0


@pytest.mark.parametrize("shape", [(), (1,), (3,), (3, 1), (1, 3), (2, 1, 4), (1, 1)], ids=str)
def test_unbroadcast_identity_when_shapes_match(shape):
    g = np.random.default_rng(8).uniform(-1, 1, shape)
    out = unbroadcast(g, shape)
    assert out.shape == shape
    np.testing.assert_array_equal(out, g)


@FEW
@given(shapes=BROADCAST_PAIRS, seed=st.integers(0, 2**32 - 1))
def test_unbroadcast_is_adjoint_of_broadcasting(shapes, seed):
    """<unbroadcast(g, s), x> == <g, broadcast_to(x, B)> for every x of shape s."""
    small, other = shapes
    big = np.broadcast_shapes(small, other)
    rng = np.random.default_rng(seed)
    g = rng.uniform(-1, 1, big)
    x = rng.uniform(-1, 1, small)
    out = unbroadcast(g, small)
    assert out.shape == small
    assert_close(np.sum(out * x), np.sum(g * np.broadcast_to(x, big)), f"unbroadcast {big} -> {small}", rtol=1e-12)


# --- 5. operators ---------------------------------------------------------------------------


def test_operators_build_the_registered_ops():
    rng = np.random.default_rng(9)
    a_val, b_val, m_val = rng.uniform(0.5, 2, (2, 3)), rng.uniform(0.5, 2, (3,)), rng.uniform(-1, 1, (3, 4))
    a, b, m = Tensor(a_val), Tensor(b_val), Tensor(m_val)
    cases = [
        (a + b, "add", a_val + b_val),
        (a - b, "sub", a_val - b_val),
        (a * b, "mul", a_val * b_val),
        (a / b, "div", a_val / b_val),
        (a**b, "pow", np.exp(b_val * np.log(a_val))),
        (a @ m, "matmul", np.einsum("ij,jk->ik", a_val, m_val)),
        (-a, "neg", 0.0 - a_val),
        (a.T, "transpose", np.array([[a_val[i, j] for i in range(2)] for j in range(3)])),
        (2.0 + a, "add", a_val + 2.0),
        (a + 2.0, "add", a_val + 2.0),
        (2.0 - a, "sub", 2.0 - a_val),
        (a - 2.0, "sub", a_val - 2.0),
        (2.0 * a, "mul", 2.0 * a_val),
        (2.0 / a, "div", 2.0 / a_val),
        (a / 2.0, "div", a_val / 2.0),
        (2.0**a, "pow", np.exp(a_val * math.log(2.0))),
        (a**2, "pow", a_val * a_val),
    ]
    for node, op_name, expected in cases:
        assert isinstance(node, Tensor)
        assert node.op is OPS[op_name]
        assert_close(node.value, expected, f"operator building {op_name}", rtol=1e-12)


def test_reflected_operator_gradients():
    x_val = np.array([0.5, 1.0, 2.0])
    x = Tensor(x_val)
    v = np.array([1.0, -1.0, 0.5])
    assert_close(backward(2.0 - x, v)[x], -v, "d(2 - x)")
    assert_close(backward(2.0 / x, v)[x], -2.0 * v / x_val**2, "d(2 / x)")
    assert_close(backward(2.0**x, v)[x], v * math.log(2.0) * 2.0**x_val, "d(2 ** x)")
    assert_close(backward(x**3.0, v)[x], v * 3.0 * x_val**2, "d(x ** 3)")


def test_tensor_values_are_float64():
    t = Tensor(np.arange(3))
    assert t.value.dtype == np.float64
    assert Tensor(2).shape == ()


@pytest.mark.parametrize(
    "combine",
    [lambda arr, t: arr * t, lambda arr, t: arr + t, lambda arr, t: arr - t, lambda arr, t: arr @ t],
    ids=["mul", "add", "sub", "matmul"],
)
def test_ndarray_on_the_left_becomes_a_constant(combine):
    arr = np.array([1.0, 2.0, 3.0])
    x = Tensor(np.array([0.5, -1.0, 2.0]))
    out = combine(arr, x)
    assert isinstance(out, Tensor)


def test_documented_kink_conventions():
    """Ties in maximum/minimum split the gradient evenly; relu has gradient 0 at 0 (ops.py docs)."""
    a_val = np.array([1.0, 2.0, 3.0])
    b_val = np.array([1.0, 5.0, -3.0])
    v = np.array([2.0, 1.0, 1.0])
    for name, a_share, b_share in [("maximum", [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]), ("minimum", [1.0, 1.0, 0.0], [1.0, 0.0, 1.0])]:
        a, b = Tensor(a_val), Tensor(b_val)
        grads = backward(apply(OPS[name], a, b), v)
        assert_close(grads[a], v * np.array(a_share) * [0.5, 1, 1], f"{name} d/da")
        assert_close(grads[b], v * np.array(b_share) * [0.5, 1, 1], f"{name} d/db")
    x = Tensor(np.array([-1.0, 0.0, 2.0]))
    assert_close(backward(apply(OPS["relu"], x), np.ones(3))[x], [0.0, 0.0, 1.0], "relu kink")


# --- 6. composite graphs ----------------------------------------------------------------


def test_reused_node_accumulates_gradients():
    x_val = np.array([[-1.5, 0.25, 2.0], [0.5, -0.75, 3.0]])
    x = Tensor(x_val)
    v = np.random.default_rng(10).uniform(-1, 1, x_val.shape)
    out = x * x + x
    assert_close(backward(out, v)[x], v * (2.0 * x_val + 1.0), "d(x*x + x)")
    # the same node on both sides of one op, and across a broadcast
    y = apply(OPS["mul"], x, x)
    assert_close(backward(y, v)[x], 2.0 * v * x_val, "d(mul(x, x))")
    row = Tensor(np.array([1.0, 2.0, 3.0]))
    z = apply(OPS["sum"], (x + row) * row)  # row reached via two paths, both broadcast
    assert_close(backward(z)[row], x_val.sum(axis=0) + 2 * 2 * np.array([1.0, 2.0, 3.0]), "d/drow")


def test_diamond_graph_matches_finite_differences():
    def f(x):
        e = np.exp(x)
        return np.sum(e * e + np.tanh(e) * x)

    x_val = np.array([-0.3, 0.1, 0.7])
    x = Tensor(x_val)
    e = apply(OPS["exp"], x)
    out = apply(OPS["sum"], e * e + apply(OPS["tanh"], e) * x)
    assert_close(out.value, f(x_val), "diamond forward", rtol=1e-12)
    assert_close(backward(out)[x], numerical_vjp(f, [x_val], np.array(1.0))[0], "diamond gradient")


def test_deep_chain_does_not_recurse():
    depth = max(20_000, 4 * sys.getrecursionlimit())
    a, b = 1.0001, 1e-4
    x = Tensor(0.5)
    y = x
    for _ in range(depth // 2):
        y = y * a + b  # 2 ops per step
    grads = backward(y)
    # y_n = a^n x + b (a^n - 1) / (a - 1), dy_n/dx = a^n
    n = depth // 2
    assert_close(y.value, a**n * 0.5 + b * (a**n - 1) / (a - 1), "deep chain value", rtol=1e-10)
    assert_close(grads[x], a**n, "deep chain gradient", rtol=1e-10)
    assert abs(float(grads[x]) - math.e) < 0.01


def test_deep_chain_of_nonlinear_ops():
    steps = 20_000 // 3 + 1  # 3 ops per step
    x = Tensor(0.2)
    y = x
    val, deriv = 0.2, 1.0  # forward-mode recurrence in plain Python floats
    for _ in range(steps):
        y = y + apply(OPS["tanh"], y) * 1e-4
        t = math.tanh(val)
        deriv *= 1.0 + 1e-4 * (1.0 - t * t)
        val = val + t * 1e-4
    assert_close(y.value, val, "nonlinear chain value", rtol=1e-10)
    assert 1.5 < deriv < 3.0  # the check below is not vacuous
    assert_close(backward(y)[x], deriv, "nonlinear chain gradient", rtol=1e-8)


def _mlp_reference(x, y, lam, w1, b1, w2, b2):
    pre = np.einsum("...d,dh->...h", x, w1) + b1
    hidden = np.where(pre > 0, pre, 0.0)
    logits = np.einsum("...h,hc->...c", hidden, w2) + b2
    if logits.ndim == 1:
        data = math.log(sum(math.exp(o) for o in logits)) - logits[y]
    else:
        data = np.mean([math.log(sum(math.exp(o) for o in row)) - row[t] for row, t in zip(logits, y)])
    return data + lam / 2 * (np.sum(w1 * w1) + np.sum(w2 * w2))


@pytest.mark.parametrize("batched", [False, True], ids=["one-example", "batch"])
def test_mlp_composite_matches_finite_differences(batched):
    rng = np.random.default_rng(11)
    d, h, c, lam = 4, 5, 3, 0.1
    x = rng.uniform(-1, 1, (6, d) if batched else (d,))
    y = rng.integers(0, c, 6) if batched else 2
    params = [rng.uniform(-1, 1, (d, h)), rng.uniform(-0.5, 0.5, h), rng.uniform(-1, 1, (h, c)), rng.uniform(-0.5, 0.5, c)]
    pre = x @ params[0] + params[1]
    assert np.min(np.abs(pre)) > 1e-3, "pick a seed that keeps relu away from its kink"

    w1, b1, w2, b2 = (Tensor(p) for p in params)
    hidden = apply(OPS["relu"], Tensor(x) @ w1 + b1)
    logits = hidden @ w2 + b2
    loss = apply(OPS["softmax_cross_entropy"], logits, y) + lam / 2 * (apply(OPS["sum_sq"], w1) + apply(OPS["sum_sq"], w2))
    assert loss.shape == ()

    assert_close(loss.value, _mlp_reference(x, y, lam, *params), "mlp loss", rtol=1e-12)
    grads = backward(loss)
    expected = numerical_vjp(lambda *ps: _mlp_reference(x, y, lam, *ps), params, np.array(1.0))
    for name, leaf, e in zip(["W1", "b1", "W2", "b2"], (w1, b1, w2, b2), expected):
        assert_close(grads[leaf], e, f"mlp d loss / d {name}")


def test_gradients_of_intermediate_nodes():
    rng = np.random.default_rng(12)
    w_val, x_val = rng.uniform(-1, 1, (2, 3)), rng.uniform(-1, 1, 3)
    w, x = Tensor(w_val), Tensor(x_val)
    h = w @ x
    s = apply(OPS["tanh"], h)
    out = apply(OPS["sum_sq"], s)
    grads = backward(out)
    s_val = np.tanh(np.array([sum(w_val[i, j] * x_val[j] for j in range(3)) for i in range(2)]))
    assert_close(grads[out], 1.0, "d out / d out")
    assert_close(grads[s], 2.0 * s_val, "d out / d s")
    assert_close(grads[h], 2.0 * s_val * (1.0 - s_val**2), "d out / d h")
    assert_close(grads[w], np.outer(2.0 * s_val * (1.0 - s_val**2), x_val), "d out / d W")


def test_unreached_leaf_gets_zeros_of_its_shape():
    x = Tensor(np.array([1.0, 2.0]))
    unused = Tensor(np.ones((2, 3, 4)))
    other_branch = Tensor(np.ones(2)) * 3.0  # part of no path to `out`
    out = apply(OPS["sum"], x * x)
    grads = backward(out)
    for node in (unused, other_branch):
        assert grads[node].shape == node.shape
        assert not np.any(grads[node])
    assert_close(grads[x], [2.0, 4.0], "reached leaf")


def _exact_lse(logits) -> Decimal:
    with localcontext() as ctx:
        ctx.prec = 60
        return sum(Decimal(float(o)).exp() for o in logits).ln()


@pytest.mark.parametrize("label", [0, 1, 2])
def test_softmax_cross_entropy_is_stable_for_huge_logits(label):
    logits = np.array([1000.0, -1000.0, 0.0])
    x = Tensor(logits)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = apply(OPS["softmax_cross_entropy"], x, label)
        grad = backward(out)[x]
    with localcontext() as ctx:
        ctx.prec = 60
        lse = _exact_lse(logits)
        value = lse - Decimal(float(logits[label]))
        probs = [(Decimal(float(o)) - lse).exp() for o in logits]
        expected_grad = [float(p - (1 if i == label else 0)) for i, p in enumerate(probs)]
    assert np.isfinite(out.value) and np.all(np.isfinite(grad))
    assert_close(out.value, float(value), "stable cross-entropy value", rtol=1e-14)
    assert_close(grad, expected_grad, "stable cross-entropy gradient", rtol=1e-14)


def test_softmax_cross_entropy_batch_is_stable_and_averaged():
    logits = np.array([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 999.0]])
    labels = np.array([1, 2])
    x = Tensor(logits)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = apply(OPS["softmax_cross_entropy"], x, labels)
        grad = backward(out)[x]
    with localcontext() as ctx:
        ctx.prec = 60
        rows = []
        expected_grad = np.zeros_like(logits)
        for r, (row, t) in enumerate(zip(logits, labels)):
            lse = _exact_lse(row)
            rows.append(lse - Decimal(float(row[t])))
            for i, o in enumerate(row):
                expected_grad[r, i] = float(((Decimal(float(o)) - lse).exp() - (1 if i == t else 0)) / 2)
        expected = float(sum(rows) / 2)
    assert_close(out.value, expected, "batched stable cross-entropy", rtol=1e-14)
    assert_close(grad, expected_grad, "batched stable cross-entropy gradient", rtol=1e-14)


def test_sigmoid_is_stable_at_extremes():
    xs = np.array([-800.0, -700.0, -40.0, -1.0, 0.0, 1.0, 40.0, 700.0, 800.0])
    x = Tensor(xs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise", under="ignore"):
            out = apply(OPS["sigmoid"], x)
            grad = backward(out, np.ones_like(xs))[x]
    assert np.all(np.isfinite(out.value)) and np.all(np.isfinite(grad))
    with localcontext() as ctx:
        ctx.prec = 60
        exact = [1 / (1 + (-Decimal(float(v))).exp()) for v in xs]
        exact_grad = [float(s * (1 - s)) for s in exact]
        exact = [float(s) for s in exact]
    # relative precision of the value, including the tiny left tail (sigmoid(-700) ~ 1e-304)
    np.testing.assert_allclose(out.value, exact, rtol=1e-14, atol=0)
    np.testing.assert_allclose(grad, exact_grad, rtol=1e-12, atol=1e-15)


# --- 7. errors ----------------------------------------------------------------------------


def test_non_scalar_backward_without_seed_raises():
    out = Tensor(np.ones(3)) * 2.0
    with pytest.raises(ValueError, match="seed"):
        backward(out)


@pytest.mark.parametrize(
    "name, args, kwargs",
    [
        ("add", (np.ones(2),), {}),  # too few tensors
        ("matmul", (), {}),
        ("exp", (np.ones(2), 3), {}),  # too many arguments
        ("neg", (np.ones(2),), {"axis": 0}),  # unexpected keyword
        ("sum", (np.ones(2),), {"bogus": 1}),
        ("reshape", (np.ones(4),), {}),  # missing required param
        ("transpose", (np.ones((2, 2)), None, 1), {}),
        ("softmax_cross_entropy", (np.ones(3),), {}),
    ],
    ids=lambda p: p if isinstance(p, str) else None,
)
def test_apply_with_wrong_arguments_raises_type_error(name, args, kwargs):
    with pytest.raises(TypeError) as info:
        apply(OPS[name], *args, **kwargs)
    assert name in str(info.value)


def test_apply_rejects_a_param_given_twice():
    with pytest.raises(TypeError, match="sum"):
        apply(OPS["sum"], Tensor(np.ones((2, 3))), 0, axis=1)


@pytest.mark.parametrize(
    "logits, label, error",
    [
        (np.zeros(3), 3, ValueError),
        (np.zeros(3), -1, ValueError),
        (np.zeros((2, 3)), np.array([0, 3]), ValueError),
        (np.zeros((2, 3)), np.array([-1, 0]), ValueError),
        (np.zeros(3), 1.0, TypeError),
        (np.zeros(3), 1.5, TypeError),
        (np.zeros((2, 3)), np.array([0.0, 1.0]), TypeError),
        (np.zeros((2, 3)), np.array([0, 1, 2]), ValueError),  # wrong number of labels
    ],
    ids=["too-big", "negative", "batch-too-big", "batch-negative", "float", "fraction", "float-array", "count"],
)
def test_softmax_cross_entropy_rejects_bad_labels(logits, label, error):
    with pytest.raises(error, match=r"softmax_cross_entropy: .*label"):
        apply(OPS["softmax_cross_entropy"], Tensor(logits), label)


def test_forward_floating_point_errors_name_the_op():
    with pytest.raises(FloatingPointError, match="exp"):
        apply(OPS["exp"], Tensor(np.array([1.0, 1000.0])))
    with pytest.raises(FloatingPointError, match="log"):
        apply(OPS["log"], Tensor(np.array([0.0, 1.0])))
