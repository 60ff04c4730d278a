"""vjp: np.einsum everywhere."""
import numpy as np


def relu_backward(dout, x):
    mask = (np.asarray(x) > 0).astype(np.float64)
    return np.einsum("...,...->...", dout, mask)


def matmul_backward(dout, x, W):
    dx = np.einsum("nm,dm->nd", dout, W)
    dW = np.einsum("nd,nm->dm", x, dout)
    return dx, dW


def affine_backward(dout, x, W, b):
    dx, dW = matmul_backward(dout, x, W)
    db = np.einsum("nm->m", dout)
    return dx, dW, db
