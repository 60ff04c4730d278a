# expect-fail: affine_backward.dx affine_backward.dW affine_backward.db
"""vjp, wrong: affine_backward gives the right values but scales its input x in place."""
import numpy as np


def relu_backward(dout, x):
    return dout * (np.asarray(x) > 0)


def matmul_backward(dout, x, W):
    dx = dout @ W.T
    dW = x.T @ dout
    return dx, dW


def affine_backward(dout, x, W, b):
    dx = dout @ W.T
    x *= 2.0  # BUG: changes the caller's x
    dW = x.T @ dout / 2.0
    db = dout.sum(axis=0)
    return dx, dW, db
