"""The operation registry: one forward rule and one vector-Jacobian product per operation.

Each VJP receives the upstream gradient `g` (shaped like the node's value) and the node,
and returns one gradient per tensor input, shaped like that input. Binary elementwise ops
broadcast like NumPy, so their VJPs reduce back to each input's shape with `unbroadcast`.

Reductions call the array methods (`x.sum()`), which reach the same ufunc reduction as
`np.sum(x)` without its Python-level dispatch: trial arrays are small, so that dispatch
would cost more than the arithmetic.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from grader.engine.tensor import Tensor, constant

Forward = Callable[..., np.ndarray]
VJP = Callable[[np.ndarray, Tensor], Sequence[Optional[np.ndarray]]]


@dataclass(frozen=True)
class Op:
    name: str
    arity: int  # number of tensor (differentiable) inputs
    forward: Forward
    vjp: VJP
    params: tuple[str, ...] = ()  # non-differentiable arguments, positional after the tensors
    defaults: dict[str, Any] = field(default_factory=dict)
    doc: str = ""


OPS: dict[str, Op] = {}


def register(op: Op) -> Op:
    if op.name in OPS:
        raise ValueError(f"op {op.name!r} is already registered")
    OPS[op.name] = op
    return op


_FP_CHECKS = {"over": "raise", "divide": "raise", "invalid": "raise", "under": "ignore"}
_fp_checked: ContextVar[bool] = ContextVar("grader_engine_fp_checked", default=False)


class fp_checked:
    """Floating-point errors raise for a whole block of op applications, as inside each op.

    Every forward runs under `np.errstate(over/divide/invalid="raise")`; entering that per
    op costs more than most forwards on the small arrays of a trial, so a caller that
    applies many ops can enter it once here and `apply` skips its own. Only wrap code whose
    NumPy arithmetic all happens inside op forwards: anything else in the block would raise
    where it used to warn.
    """

    __slots__ = ("_errstate", "_token")

    def __enter__(self) -> None:
        self._token = _fp_checked.set(True)
        self._errstate = np.errstate(**_FP_CHECKS)
        self._errstate.__enter__()

    def __exit__(self, *exc_info: Any) -> None:
        try:
            self._errstate.__exit__(*exc_info)
        finally:
            _fp_checked.reset(self._token)


def apply(op: Op, *args: Any, **kwargs: Any) -> Tensor:
    """Build the node for `op` applied to `args` (tensors first, then params)."""
    if len(args) == op.arity and not kwargs and not op.params:
        # The common case (arithmetic, elementwise functions): nothing to check or merge.
        tensors = tuple([a if isinstance(a, Tensor) else Tensor(a) for a in args])
        params = dict(op.defaults)
    else:
        tensors, params = _bind(op, args, kwargs)
    if _fp_checked.get():
        value = _forward(op, tensors, params)
    else:
        with np.errstate(**_FP_CHECKS):
            value = _forward(op, tensors, params)
    return Tensor(value, op, tensors, params)


def _forward(op: Op, tensors: tuple[Tensor, ...], params: dict[str, Any]) -> Any:
    try:
        return op.forward(*[t.value for t in tensors], **params)
    except FloatingPointError as exc:
        raise FloatingPointError(f"{op.name}(): {exc}") from None


def _bind(op: Op, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Tensor, ...], dict[str, Any]]:
    if len(args) < op.arity:
        raise TypeError(f"{op.name}() takes {op.arity} tensor argument(s), got {len(args)}")
    tensors = tuple(constant(a) for a in args[: op.arity])
    extra = args[op.arity :]
    if len(extra) > len(op.params):
        raise TypeError(f"{op.name}() takes at most {op.arity + len(op.params)} arguments, got {len(args)}")
    params = dict(op.defaults)
    params.update(zip(op.params, extra))
    for key, value in kwargs.items():
        if key not in op.params:
            raise TypeError(f"{op.name}() got an unexpected argument {key!r}")
        if key in op.params[: len(extra)]:
            raise TypeError(f"{op.name}() got argument {key!r} both by position and by name")
        params[key] = value
    missing = [p for p in op.params if p not in params]
    if missing:
        raise TypeError(f"{op.name}() is missing argument(s): {', '.join(missing)}")
    return tensors, params


def unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum `grad` over the axes NumPy broadcasting added or stretched to reach `shape`."""
    if grad.shape == shape:
        return grad.reshape(shape)
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad.reshape(shape)


def _in(node: Tensor, i: int) -> np.ndarray:
    return node.parents[i].value


def _binary(name: str, forward: Forward, da: Callable, db: Callable, doc: str) -> None:
    def vjp(g: np.ndarray, node: Tensor) -> tuple[np.ndarray, np.ndarray]:
        left, right = node.parents
        a, b, z = left.value, right.value, node.value
        return unbroadcast(da(g, a, b, z), a.shape), unbroadcast(db(g, a, b, z), b.shape)

    register(Op(name, 2, forward, vjp, doc=doc))


def _unary(name: str, forward: Forward, dx: Callable, doc: str) -> None:
    def vjp(g: np.ndarray, node: Tensor) -> tuple[np.ndarray]:
        return (dx(g, node.parents[0].value, node.value),)

    register(Op(name, 1, forward, vjp, doc=doc))


# --- elementwise arithmetic -------------------------------------------------------------

_binary("add", np.add, lambda g, a, b, z: g, lambda g, a, b, z: g, "a + b, broadcasting")
_binary("sub", np.subtract, lambda g, a, b, z: g, lambda g, a, b, z: -g, "a - b, broadcasting")
_binary("mul", np.multiply, lambda g, a, b, z: g * b, lambda g, a, b, z: g * a, "a * b, broadcasting")
_binary(
    "div",
    np.divide,
    lambda g, a, b, z: g / b,
    lambda g, a, b, z: -g * a / (b * b),
    "a / b, broadcasting",
)


def _pow_dbase(g: np.ndarray, a: np.ndarray, b: np.ndarray, z: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return g * b * np.power(a, b - 1)


def _pow_dexp(g: np.ndarray, a: np.ndarray, b: np.ndarray, z: np.ndarray) -> np.ndarray:
    # d(a**b)/db = a**b * log(a); only defined for a > 0, and a constant exponent (the
    # usual case) never reads it, so non-positive bases contribute 0 rather than NaN.
    with np.errstate(divide="ignore", invalid="ignore"):
        return g * np.where(a > 0, z * np.log(np.where(a > 0, a, 1.0)), 0.0)


_binary("pow", np.power, _pow_dbase, _pow_dexp, "a ** b, broadcasting")


def _maximum_da(g: np.ndarray, a: np.ndarray, b: np.ndarray, z: np.ndarray) -> np.ndarray:
    return g * ((a > b) + 0.5 * (a == b))


def _maximum_db(g: np.ndarray, a: np.ndarray, b: np.ndarray, z: np.ndarray) -> np.ndarray:
    return g * ((b > a) + 0.5 * (a == b))


_binary("maximum", np.maximum, _maximum_da, _maximum_db, "elementwise max; a tie splits the gradient")
_binary(
    "minimum",
    np.minimum,
    lambda g, a, b, z: _maximum_db(g, a, b, z),
    lambda g, a, b, z: _maximum_da(g, a, b, z),
    "elementwise min; a tie splits the gradient",
)

_unary("neg", np.negative, lambda g, x, z: -g, "-x")
_unary("identity", lambda x: x.copy(), lambda g, x, z: g, "x (a new node with the same value)")
_unary("exp", np.exp, lambda g, x, z: g * z, "e ** x")
_unary("log", np.log, lambda g, x, z: g / x, "natural logarithm")
_unary("sqrt", np.sqrt, lambda g, x, z: g * 0.5 / z, "square root")
_unary("square", np.square, lambda g, x, z: g * 2.0 * x, "x ** 2")
_unary("tanh", np.tanh, lambda g, x, z: g * (1.0 - z * z), "hyperbolic tangent")
_unary("relu", lambda x: np.maximum(x, 0.0), lambda g, x, z: g * (x > 0), "max(x, 0); gradient 0 at 0")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp(-|x|) never overflows, and each branch keeps full relative precision.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


_unary("sigmoid", _sigmoid, lambda g, x, z: g * z * (1.0 - z), "1 / (1 + e ** -x), computed stably")


# --- linear algebra and shape ----------------------------------------------------------


def _matmul_vjp(g: np.ndarray, node: Tensor) -> tuple[np.ndarray, np.ndarray]:
    # NumPy's matmul promotes a 1-D left operand to a row and a 1-D right operand to a
    # column; doing the same here lets one batched rule cover vector and matrix cases.
    # The reshapes are np.expand_dims(g2, -1) and (g2, -2) and the methods np.swapaxes, as
    # NumPy itself calls them (same views, so matmul picks the same kernel), minus the
    # Python-level argument handling.
    a, b = _in(node, 0), _in(node, 1)
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    g2 = g
    if b.ndim == 1:
        g2 = np.asarray(g2).reshape(g2.shape + (1,))
    if a.ndim == 1:
        g2 = np.asarray(g2).reshape(g2.shape[:-1] + (1,) + g2.shape[-1:])
    da = g2 @ b2.swapaxes(-1, -2)
    db = a2.swapaxes(-1, -2) @ g2
    return unbroadcast(da, a2.shape).reshape(a.shape), unbroadcast(db, b2.shape).reshape(b.shape)


def _matmul_forward(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul: operands must have at least one dimension (use * for scalars)")
    return np.matmul(a, b)


register(Op("matmul", 2, _matmul_forward, _matmul_vjp, doc="a @ b, NumPy semantics incl. matrix-vector"))


def _transpose_vjp(g: np.ndarray, node: Tensor) -> tuple[np.ndarray]:
    axes = node.params["axes"]
    if axes is None:
        return (np.transpose(g),)
    return (np.transpose(g, np.argsort([a % g.ndim for a in axes])),)


register(
    Op(
        "transpose",
        1,
        lambda x, axes: np.transpose(x, axes),
        _transpose_vjp,
        params=("axes",),
        defaults={"axes": None},
        doc="reverse (or permute) the axes; x.T is the same",
    )
)
register(
    Op(
        "reshape",
        1,
        lambda x, shape: np.reshape(x, shape),
        lambda g, node: (g.reshape(_in(node, 0).shape),),
        params=("shape",),
        doc="reshape to the given shape",
    )
)


def _normalise_axes(axis: Any, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if np.ndim(axis) == 0 else tuple(axis)
    if ndim == 0:
        return ()  # NumPy accepts axis 0 / -1 on a 0-d array and reduces nothing
    return tuple(sorted(int(a) % ndim for a in axes))


def _reduction_vjp(scale: Callable[[np.ndarray, tuple[int, ...]], float]) -> VJP:
    def vjp(g: np.ndarray, node: Tensor) -> tuple[np.ndarray]:
        x = _in(node, 0)
        axes = _normalise_axes(node.params["axis"], x.ndim)
        if not node.params["keepdims"] and axes:
            # np.expand_dims(g, axes) for sorted, distinct, non-negative axes.
            kept = iter(g.shape)
            g = np.asarray(g).reshape([1 if i in axes else next(kept) for i in range(len(axes) + g.ndim)])
        factor = scale(x, axes)
        if x.ndim and g.dtype == np.float64:
            # Elementwise the same product as broadcast_to(g, x.shape) * factor, without
            # broadcast_to's Python-level setup. A 0-d x keeps that form: it yields a scalar.
            return (np.multiply(g, factor, out=np.empty(x.shape)),)
        return (np.broadcast_to(g, x.shape) * factor,)

    return vjp


def _count(x: np.ndarray, axes: tuple[int, ...]) -> float:
    n = 1
    for a in axes:
        n *= x.shape[a]
    return 1.0 / n


register(
    Op(
        "sum",
        1,
        lambda x, axis, keepdims: x.sum(axis=axis, keepdims=keepdims),
        _reduction_vjp(lambda x, axes: 1.0),
        params=("axis", "keepdims"),
        defaults={"axis": None, "keepdims": False},
        doc="sum over all elements or over the given axis/axes",
    )
)
register(
    Op(
        "mean",
        1,
        lambda x, axis, keepdims: x.mean(axis=axis, keepdims=keepdims),
        _reduction_vjp(_count),
        params=("axis", "keepdims"),
        defaults={"axis": None, "keepdims": False},
        doc="mean over all elements or over the given axis/axes",
    )
)


# --- losses and norms ------------------------------------------------------------------


def _check_labels(logits: np.ndarray, label: Any) -> np.ndarray:
    labels = np.asarray(label)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"softmax_cross_entropy: labels must be integers, got {labels.dtype}")
    if logits.ndim == 1 and labels.ndim != 0:
        raise ValueError("softmax_cross_entropy: 1-D logits take one integer label")
    if logits.ndim == 2 and labels.shape != logits.shape[:1]:
        raise ValueError(f"softmax_cross_entropy: logits {logits.shape} need labels of shape ({logits.shape[0]},)")
    if logits.ndim not in (1, 2):
        raise ValueError("softmax_cross_entropy: logits must be 1-D (one example) or 2-D (rows of examples)")
    classes = logits.shape[-1]
    if np.count_nonzero(labels < 0) or np.count_nonzero(labels >= classes):
        raise ValueError(f"softmax_cross_entropy: labels must lie in [0, {classes})")
    return labels


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _sce_forward(logits: np.ndarray, label: Any) -> np.ndarray:
    labels = _check_labels(logits, label)
    logp = _log_softmax(logits)
    if logits.ndim == 1:
        return -logp[labels]
    return -np.mean(logp[np.arange(logits.shape[0]), labels])


def _sce_vjp(g: np.ndarray, node: Tensor) -> tuple[np.ndarray]:
    logits = _in(node, 0)
    labels = _check_labels(logits, node.params["label"])
    grad = np.exp(_log_softmax(logits))
    if logits.ndim == 1:
        grad[labels] -= 1.0
    else:
        grad[np.arange(logits.shape[0]), labels] -= 1.0
        grad /= logits.shape[0]
    return (g * grad,)


register(
    Op(
        "softmax_cross_entropy",
        1,
        _sce_forward,
        _sce_vjp,
        params=("label",),
        doc="-log softmax(o)[y] via log-sum-exp; 2-D logits take one label per row and average",
    )
)
register(
    Op(
        "sum_sq",
        1,
        lambda x: (x * x).sum(),
        lambda g, node: (2.0 * g * _in(node, 0),),
        doc="sum of squares, the squared Frobenius norm",
    )
)


def _norm_vjp(g: np.ndarray, node: Tensor) -> tuple[np.ndarray]:
    x, n = _in(node, 0), node.value
    return (g * x / n if n > 0 else np.zeros_like(x),)


register(Op("norm", 1, lambda x: np.sqrt((x * x).sum()), _norm_vjp, doc="Frobenius (Euclidean) norm"))


def _squared_error_vjp(g: np.ndarray, node: Tensor) -> tuple[np.ndarray, np.ndarray]:
    a, b = _in(node, 0), _in(node, 1)
    diff = 2.0 * g * (a - b)
    return unbroadcast(diff, a.shape), unbroadcast(-diff, b.shape)


register(
    Op(
        "squared_error",
        2,
        lambda a, b: ((a - b) ** 2).sum(),
        _squared_error_vjp,
        doc="sum((a - b) ** 2), broadcasting",
    )
)

# Aliases an instructor may reach for; they share the rule of the op they name.
OPS["frobenius_sq"] = OPS["sum_sq"]


# --- known-wrong VJPs, for recognising mistakes ------------------------------------------
# An assignment's `mutants:` may name one of these per op (`vjp: {sigmoid: at_output}`).
# Each stands for a mistake a student makes in a backward pass, whatever the assignment:
# - at_output: the derivative evaluated at the op's output instead of its input, e.g.
#   sigmoid'(a) where sigmoid'(z) is meant (the sigmoid applied twice);
# - ignores_upstream: the local gradient alone, the upstream gradient never multiplied in;
# - no_swap (mul): each input's gradient multiplied by itself instead of by the other input;
# - no_mask (relu): the upstream gradient passed through without the mask x > 0;
# - no_onehot (softmax_cross_entropy): softmax(o) without subtracting the one-hot label;
# - stop_gradient (identity): the value passes, no gradient flows back. Not a mistake in
#   itself: it lets a mutant's forward take a value from one expression and a gradient
#   from another, e.g. `b - identity(b)` is 0 yet passes b's gradient (a forgotten bias).


def _at_output(derivative: Callable[[np.ndarray], np.ndarray]) -> VJP:
    def vjp(g: np.ndarray, node: Tensor) -> tuple[np.ndarray]:
        return (g * derivative(node.value),)

    return vjp


def _ignores_upstream(op: str) -> VJP:
    def vjp(g: np.ndarray, node: Tensor) -> Sequence[Optional[np.ndarray]]:
        return OPS[op].vjp(np.ones_like(g), node)

    return vjp


def _mul_no_swap(g: np.ndarray, node: Tensor) -> tuple[np.ndarray, np.ndarray]:
    a, b = _in(node, 0), _in(node, 1)
    return unbroadcast(g * a, a.shape), unbroadcast(g * b, b.shape)


def _sce_no_onehot(g: np.ndarray, node: Tensor) -> tuple[np.ndarray]:
    logits = _in(node, 0)
    grad = np.exp(_log_softmax(logits))
    if logits.ndim == 2:
        grad /= logits.shape[0]
    return (g * grad,)


VJP_VARIANTS: dict[str, dict[str, VJP]] = {
    "sigmoid": {
        "at_output": _at_output(lambda z: _sigmoid(z) * (1.0 - _sigmoid(z))),
        "ignores_upstream": _ignores_upstream("sigmoid"),
    },
    "tanh": {
        "at_output": _at_output(lambda z: 1.0 - np.tanh(z) ** 2),
        "ignores_upstream": _ignores_upstream("tanh"),
    },
    "exp": {"at_output": _at_output(np.exp)},
    "add": {"ignores_upstream": _ignores_upstream("add")},
    "mul": {"no_swap": _mul_no_swap, "ignores_upstream": _ignores_upstream("mul")},
    "relu": {"no_mask": lambda g, node: (g,), "ignores_upstream": _ignores_upstream("relu")},
    "softmax_cross_entropy": {"no_onehot": _sce_no_onehot},
    "identity": {"stop_gradient": lambda g, node: (None,)},
}
