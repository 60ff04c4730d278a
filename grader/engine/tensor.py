"""The graph node type and the reverse sweep."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

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
    from grader.engine.ops import OPS, apply

    return apply(OPS[name], *args)


def constant(value: Any) -> Tensor:
    """Wrap a number or array as a leaf."""
    return value if isinstance(value, Tensor) else Tensor(value)


def topological_order(output: Tensor) -> list[Tensor]:
    """Every node `output` depends on, parents before children, without recursion.

    Graphs unrolled over many layers or loop iterations would overflow Python's recursion
    limit with a recursive walk, hence the explicit stack.
    """
    order: list[Tensor] = []
    visited: set[int] = set()
    stack: list[tuple[Tensor, bool]] = [(output, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for parent in node.parents:
            if id(parent) not in visited:
                stack.append((parent, False))
    return order


class Gradients:
    """Adjoints of every node reached by a backward sweep; unreached nodes get zeros."""

    def __init__(self, grads: dict[int, np.ndarray], nodes: Iterable[Tensor]) -> None:
        self._grads = grads
        self._nodes = list(nodes)  # keeps ids stable: a freed node's id could be reused

    def __getitem__(self, node: Tensor) -> np.ndarray:
        grad = self._grads.get(id(node))
        if grad is None:
            return np.zeros_like(node.value)
        return grad


def backward(
    output: Tensor,
    seed: Any = None,
    extra_roots: Iterable[Tensor] = (),
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
        seed_value = np.ones_like(output.value)
    else:
        seed_value = np.broadcast_to(np.asarray(seed, dtype=np.float64), output.shape).copy()
    order = topological_order(output)
    grads: dict[int, np.ndarray] = {id(output): seed_value}
    for node in reversed(order):
        grad = grads.get(id(node))
        if grad is None or node.op is None:
            continue
        vjp = overrides.get(node.op.name, node.op.vjp) if overrides else node.op.vjp
        parent_grads = vjp(grad, node)
        for parent, parent_grad in zip(node.parents, parent_grads):
            if parent_grad is None:
                continue
            if parent_grad.shape != parent.shape:
                raise AssertionError(
                    f"op {node.op.name} returned a gradient of shape {parent_grad.shape} "
                    f"for an input of shape {parent.shape}"
                )
            key = id(parent)
            if key in grads:
                grads[key] = grads[key] + parent_grad
            else:
                grads[key] = parent_grad
    return Gradients(grads, [*order, *extra_roots])


def grad_of(output: Tensor, wrt: Tensor, seed: Any = None) -> np.ndarray:
    """Gradient of `output` (or of `sum(output * seed)`) with respect to one node."""
    return backward(output, seed)[wrt]
