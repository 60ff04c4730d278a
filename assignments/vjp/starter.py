"""Assignment `vjp`: vector-Jacobian products without building the Jacobian.

Inputs are NumPy float64 arrays. Never materialise a Jacobian: some trials are large
enough that it would not fit in memory. Do not modify any input in place.
See handout.md for the math.
"""
import numpy as np


def relu_backward(dout, x):
    """Backward pass of  y = np.maximum(0, x).

    Inputs:
        dout: upstream gradient dL/dy, same shape as x
        x:    the forward input, any shape (rank 0 to 4, 0-d included);
              no entry lies within 1e-3 of 0

    Returns:
        dx: dL/dx, same shape as x (a single array, not a tuple)
    """
    raise NotImplementedError("relu_backward: return dx")


def matmul_backward(dout, x, W):
    """Backward pass of  y = x @ W.

    Inputs:
        dout: upstream gradient dL/dy, shape (N, M)
        x:    shape (N, D)
        W:    shape (D, M)

    Returns:
        tuple (dx, dW):
            dx: dL/dx, shape (N, D)
            dW: dL/dW, shape (D, M)
    """
    raise NotImplementedError("matmul_backward: return (dx, dW)")


def affine_backward(dout, x, W, b):
    """Backward pass of  y = x @ W + b  (b broadcast over the N rows).

    Inputs:
        dout: upstream gradient dL/dy, shape (N, M)
        x:    shape (N, D)
        W:    shape (D, M)
        b:    shape (M,)

    Returns:
        tuple (dx, dW, db):
            dx: dL/dx, shape (N, D)
            dW: dL/dW, shape (D, M)
            db: dL/db, shape (M,)
    """
    raise NotImplementedError("affine_backward: return (dx, dW, db)")
