"""The graph node type and the reverse sweep."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np


class Tensor:
    """A float64 value in a computation graph: a leaf, or the output of one registered op.

    `params` holds an op's non-differentiable arguments (an axis, a class label), which are
    part of the node but never receive a gradient.
    """

    __slots__ = ("value", "op", "parents", "params", "__weakref__")
    # Makes `ndarray * Tensor` defer to Tensor.__rmul__ instead of NumPy broadcasting over
    # the Tensor as an object.
    __array_ufunc__ = None

    def __init__(
        self,
        value: Any,
        op: Any = None,
        parents: tuple[Tensor, ...] = (),
        params: Mapping[str, Any] | None = None,
    ) -> None:
        self.value: np.ndarray = np.asarray(value, dtype=np.float64)
        self.op = op
        self.parents = parents
        self.params: Mapping[str, Any] = params or {}

    @property
    def shape(self) -> tuple[int, ...]:
        return self.value.shape

    @property
    def ndim(self) -> int:
        return self.value.ndim

    @property
    def T(self) -> Tensor:
        return _apply("transpose", self)

    def __repr__(self) -> str:
        kind = self.op.name if self.op is not None else "leaf"
        return f"Tensor({kind}, shape={self.shape})"

    # Arithmetic builds graph nodes; a plain number or array on the other side becomes a constant.
    def __add__(self, other: Any) -> Tensor:
        return _apply("add", self, other)

    def __radd__(self, other: Any) -> Tensor:
        return _apply("add", other, self)

    def __sub__(self, other: Any) -> Tensor:
        return _apply("sub", self, other)

    def __rsub__(self, other: Any) -> Tensor:
        return _apply("sub", other, self)

    def __mul__(self, other: Any) -> Tensor:
        return _apply("mul", self, other)

    def __rmul__(self, other: Any) -> Tensor:
        return _apply("mul", other, self)

    def __truediv__(self, other: Any) -> Tensor:
        return _apply("div", self, other)

    def __rtruediv__(self, other: Any) -> Tensor:
        return _apply("div", other, self)

    def __pow__(self, other: Any) -> Tensor:
        return _apply("pow", self, other)

    def __rpow__(self, other: Any) -> Tensor:
        return _apply("pow", other, self)

    def __matmul__(self, other: Any) -> Tensor:
        return _apply("matmul", self, other)

    def __rmatmul__(self, other: Any) -> Tensor:
        return _apply("matmul", other, self)

    def __neg__(self) -> Tensor:
        return _apply("neg", self)


def _apply(name: str, *args: Any) -> Tensor:
    return _ops.apply(_ops.OPS[name], *args)


def constant(value: Any) -> Tensor:
    """Wrap a number or array as a leaf."""
    return value if isinstance(value, Tensor) else Tensor(value)


def topological_order(output: Tensor) -> list[Tensor]:
    """Every node `output` depends on, parents before children, without recursion.

    Graphs unrolled over many layers or loop iterations would overflow Python's recursion
    limit with a recursive walk, hence the explicit stack. Tensors hash by identity.
    """
    order: list[Tensor] = []
    visited: set[Tensor] = set()
    stack: list[tuple[Tensor, bool]] = [(output, False)]
    push, pop, mark, emit = stack.append, stack.pop, visited.add, order.append
    while stack:
        node, expanded = pop()
        if expanded:
            emit(node)
        elif node not in visited:
            mark(node)
            parents = node.parents
            if not parents:
                emit(node)  # a leaf is finished at once: the same order as pushing it expanded
                continue
            push((node, True))
            for parent in parents:
                if parent not in visited:
                    push((parent, False))
    return order


class Gradients:
    """Adjoints of every node reached by a backward sweep; unreached nodes get zeros."""

    def __init__(self, grads: dict[Tensor, np.ndarray]) -> None:
        self._grads = grads  # keyed by the nodes themselves, which keeps them (and their ids) alive

    def __getitem__(self, node: Tensor) -> np.ndarray:
        grad = self._grads.get(node)
        if grad is None:
            return np.zeros_like(node.value)
        return grad


def backward(
    output: Tensor,
    seed: Any = None,
    overrides: Mapping[str, Any] | None = None,
) -> Gradients:
    """Reverse-mode sweep from `output`.

    `seed` is the upstream gradient of `output` (defaults to 1 for a scalar output), so a
    non-scalar output yields the gradients of `sum(output * seed)`. `overrides` maps an op
    name to a replacement VJP: the grader derives known-wrong answers ("mutants", such as
    a derivative taken at the wrong point) with it, never the expected ones.
    """
    if seed is None:
        if output.value.size != 1:
            raise ValueError(f"backward from a non-scalar output of shape {output.shape} needs a seed")
        seed_value = np.ones(output.value.shape)  # values are float64 arrays, as ones_like would give
    else:
        seed_value = np.broadcast_to(np.asarray(seed, dtype=np.float64), output.shape).copy()
    order = topological_order(output)
    grads: dict[Tensor, np.ndarray] = {output: seed_value}
    get = grads.get
    for node in reversed(order):
        op = node.op
        if op is None:
            continue
        grad = get(node)
        if grad is None:
            continue
        vjp = overrides.get(op.name, op.vjp) if overrides else op.vjp
        for parent, parent_grad in zip(node.parents, vjp(grad, node)):
            if parent_grad is None:
                continue
            if parent_grad.shape != parent.value.shape:
                raise AssertionError(
                    f"op {op.name} returned a gradient of shape {parent_grad.shape} "
                    f"for an input of shape {parent.shape}"
                )
            # Accumulate in visiting order, earlier sum first: reordering would change the
            # rounding of a node with three or more consumers.
            previous = get(parent)
            grads[parent] = parent_grad if previous is None else previous + parent_grad
    return Gradients(grads)


def grad_of(output: Tensor, wrt: Tensor, seed: Any = None) -> np.ndarray:
    """Gradient of `output` (or of `sum(output * seed)`) with respect to one node."""
    return backward(output, seed)[wrt]


# ops imports this module for Tensor, so the reverse import comes last; it is bound once
# here because an import statement inside _apply would cost more than most ops.
from grader.engine import ops as _ops  # noqa: E402
