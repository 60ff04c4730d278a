# expect-fail: matmul_backward.dW affine_backward.dW
"""vjp, wrong: dW comes out transposed, (M, D) instead of (D, M)."""
import numpy as np


def relu_backward(dout, x):
    # the local gradient is 1 where x > 0 and 0 elsewhere
    return dout * (np.asarray(x) > 0)


def matmul_backward(dout, x, W):
    dx = dout @ W.T
    dW = dout.T @ x  # BUG: this is dW.T
    return dx, dW


def affine_backward(dout, x, W, b):
    dx = dout @ W.T
    dW = dout.T @ x  # BUG: this is dW.T
    db = dout.sum(axis=0)
    return dx, dW, db
