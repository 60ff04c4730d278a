"""gates: returns lists instead of tuples, np.where routing, stable sigmoid."""
import numpy as np


def _stable_sigmoid(t):
    t = np.asarray(t, dtype=np.float64)
    e = np.exp(-np.abs(t))  # never overflows
    return np.where(t >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def add_backward(dout, x, y):
    dout = np.asarray(dout, dtype=np.float64)
    return [dout.copy(), dout.copy()]


def mul_backward(dout, x, y):
    dout = np.asarray(dout, dtype=np.float64)
    return [dout * np.asarray(y), dout * np.asarray(x)]


def max_backward(dout, x, y):
    dout = np.asarray(dout, dtype=np.float64)
    x = np.asarray(x)
    y = np.asarray(y)
    dx = np.where(x > y, dout, 0.0)
    dy = np.where(x > y, 0.0, dout)
    return [dx, dy]


def copy_backward(dout_a, dout_b):
    return np.add(dout_a, dout_b)


def sigmoid_backward(dout, out):
    out = np.asarray(out, dtype=np.float64)
    return np.multiply(dout, out * (1.0 - out))


def circuit(w0, x0, w1, x1, w2):
    w0, x0, w1, x1, w2 = (np.asarray(v, dtype=np.float64) for v in (w0, x0, w1, x1, w2))
    d = w0 * x0 + w1 * x1 + w2
    L = _stable_sigmoid(d)
    local = L * _stable_sigmoid(-d)  # s * (1 - s) without cancellation
    return [L, [local * x0, local * w0, local * x1, local * w1, local]]
