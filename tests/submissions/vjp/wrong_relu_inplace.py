# expect-fail: relu_backward.dx
"""vjp, wrong: relu_backward gives the right values but overwrites its input dout."""
import numpy as np


def relu_backward(dout, x):
    # the local gradient is 1 where x > 0 and 0 elsewhere
    dout[np.asarray(x) <= 0] = 0  # BUG: modifies the caller's array
    return dout


def matmul_backward(dout, x, W):
    dx = dout @ W.T
    dW = x.T @ dout
    return dx, dW


def affine_backward(dout, x, W, b):
    dx = dout @ W.T
    dW = x.T @ dout
    db = dout.sum(axis=0)
    return dx, dW, db
