# expect-fail: circuit.dw0 circuit.dx0
"""gates, wrong: the gate functions are right, but circuit does its own backward pass inline
and does not swap the inputs of the first multiply gate."""
import numpy as np


def _sigmoid(t):
    return 1.0 / (1.0 + np.exp(-t))


def add_backward(dout, x, y):
    return dout * 1.0, dout * 1.0


def mul_backward(dout, x, y):
    return dout * y, dout * x


def max_backward(dout, x, y):
    x = np.asarray(x)
    y = np.asarray(y)
    return dout * (x > y), dout * (y > x)


def copy_backward(dout_a, dout_b):
    return dout_a + dout_b


def sigmoid_backward(dout, out):
    return dout * out * (1.0 - out)


def circuit(w0, x0, w1, x1, w2):
    w0, x0, w1, x1, w2 = (np.asarray(v, dtype=float) for v in (w0, x0, w1, x1, w2))
    d = w0 * x0 + w1 * x1 + w2
    L = _sigmoid(d)
    dd = L * (1.0 - L)          # d sum(L) / dd
    dw0 = dd * w0               # BUG: d(w0 * x0)/dw0 is x0
    dx0 = dd * x0               # BUG: d(w0 * x0)/dx0 is w0
    dw1 = dd * x1
    dx1 = dd * w1
    dw2 = dd
    return L, (dw0, dx0, dw1, dx1, dw2)
