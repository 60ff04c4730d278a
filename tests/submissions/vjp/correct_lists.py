"""vjp: returns Python lists (a list instead of a tuple, nested lists instead of arrays)."""
import numpy as np


def relu_backward(dout, x):
    dx = np.where(np.asarray(x) > 0, dout, 0.0)
    return dx.tolist()  # a float for 0-d input, nested lists otherwise


def matmul_backward(dout, x, W):
    return [(dout @ W.T).tolist(), (x.T @ dout).tolist()]


def affine_backward(dout, x, W, b):
    return [(dout @ W.T).tolist(), (x.T @ dout).tolist(), dout.sum(axis=0).tolist()]
