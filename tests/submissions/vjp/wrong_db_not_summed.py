# expect-fail: affine_backward.db
"""vjp, wrong: db is the upstream gradient itself, not summed over the batch."""
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
    db = dout  # BUG: b is broadcast over the batch, its gradient must be summed
    return dx, dW, db
