# expect-fail: matmul_backward.dW
"""vjp, wrong: matmul_backward computes dout.T @ x (the transpose of dW) and transposes it
only when the shape does not match W, so square matrices get the transpose."""
import numpy as np


def relu_backward(dout, x):
    return dout * (np.asarray(x) > 0)


def matmul_backward(dout, x, W):
    dx = dout @ W.T
    dW = dout.T @ x        # BUG: the transpose of x.T @ dout
    if dW.shape != W.shape:
        dW = dW.T          # "fixes" the shape, but not the square case
    return dx, dW


def affine_backward(dout, x, W, b):
    return dout @ W.T, x.T @ dout, dout.sum(axis=0)
