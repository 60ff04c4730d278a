# expect-fail: relu_backward.dx
"""vjp, wrong: relu_backward returns the ReLU's local gradient and never multiplies in dout."""
import numpy as np


def relu_backward(dout, x):
    # d relu(x) / dx is 1 where x > 0 and 0 elsewhere
    return (np.asarray(x) > 0).astype(float)  # BUG: forgot dout *


def matmul_backward(dout, x, W):
    return dout @ W.T, x.T @ dout


def affine_backward(dout, x, W, b):
    return dout @ W.T, x.T @ dout, dout.sum(axis=0)
