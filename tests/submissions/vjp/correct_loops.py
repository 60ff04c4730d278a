"""vjp: Python loops over the batch rows only, vector operations inside."""
import numpy as np


def relu_backward(dout, x):
    dout = np.asarray(dout, dtype=np.float64)
    x = np.asarray(x)
    if x.ndim == 0:
        return dout * (x > 0)
    dx = np.empty_like(dout)
    for i in range(x.shape[0]):
        dx[i] = np.where(x[i] > 0, dout[i], 0.0)
    return dx


def matmul_backward(dout, x, W):
    N = x.shape[0]
    dx = np.empty((N, W.shape[0]))
    dW = np.zeros(W.shape)
    for n in range(N):
        dx[n] = W @ dout[n]
        dW += np.outer(x[n], dout[n])
    return dx, dW


def affine_backward(dout, x, W, b):
    N = x.shape[0]
    dx = np.empty((N, W.shape[0]))
    dW = np.zeros(W.shape)
    db = np.zeros(b.shape)
    for n in range(N):
        dx[n] = W @ dout[n]
        dW += np.outer(x[n], dout[n])
        db += dout[n]
    return dx, dW, db
