"""A small reverse-mode automatic differentiation engine on NumPy, float64 throughout.

The grader derives every expected answer from an assignment's forward definition with this
engine, so nothing in a spec is a hand-written gradient.
"""

from grader.engine.ops import OPS, Op, apply, fp_checked, register, unbroadcast
from grader.engine.tensor import Tensor, backward, constant, grad_of

__all__ = ["OPS", "Op", "Tensor", "apply", "backward", "constant", "fp_checked", "grad_of", "register", "unbroadcast"]
