# expect-fail: affine_backward.db
"""vjp, wrong: db is averaged over the batch instead of summed."""
import numpy as np


def relu_backward(dout, x):
    # the local gradient is 1 where x > 0 and 0 elsewhere
    return dout * (np.asarray(x) > 0)


def matmul_backward(dout, x, W):
    dx = dout @ W.T
    dW = x.T @ dout
    return dx, dW


def affine_backward(dout, x, W, b):
    dx = dout @ W.T
    dW = x.T @ dout
    db = dout.mean(axis=0)  # BUG: should be the sum
    return dx, dW, db
