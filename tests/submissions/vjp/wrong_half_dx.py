# expect-fail: matmul_backward.dx
"""vjp, wrong: matmul_backward's dx carries a stray factor 1/2."""
import numpy as np


def relu_backward(dout, x):
    return dout * (np.asarray(x) > 0)


def matmul_backward(dout, x, W):
    dx = 0.5 * (dout @ W.T)  # BUG: no factor 1/2 belongs here
    dW = x.T @ dout
    return dx, dW


def affine_backward(dout, x, W, b):
    dx = dout @ W.T
    dW = x.T @ dout
    db = dout.sum(axis=0)
    return dx, dW, db
