# expect-fail: circuit.dw0 circuit.dw1 circuit.dw2
"""gates, wrong: circuit returns the w gradients with the wrong sign."""
import numpy as np


def _sigmoid(t):
    return 1.0 / (1.0 + np.exp(-t))


def add_backward(dout, x, y):
    # the add gate distributes the upstream gradient unchanged
    dx = 1.0 * dout
    dy = 1.0 * dout
    return dx, dy


def mul_backward(dout, x, y):
    # the multiply gate swaps its inputs
    dx = dout * y
    dy = dout * x
    return dx, dy


def max_backward(dout, x, y):
    # the max gate routes the gradient to the larger input
    x = np.asarray(x)
    y = np.asarray(y)
    dx = dout * (x > y)
    dy = dout * (y > x)
    return dx, dy


def copy_backward(dout_a, dout_b):
    # the copy gate adds the gradients of its copies
    return dout_a + dout_b


def sigmoid_backward(dout, out):
    # out = sigmoid(x), so d out / d x = out * (1 - out)
    return dout * out * (1.0 - out)


def circuit(w0, x0, w1, x1, w2):
    # forward, one gate at a time
    a = w0 * x0
    b = w1 * x1
    c = a + b
    d = c + w2
    L = _sigmoid(d)
    # backward; the gradient of sum(L) has upstream ones
    dL = np.ones_like(L)
    dd = sigmoid_backward(dL, L)
    dc, dw2 = add_backward(dd, c, w2)
    da, db = add_backward(dc, a, b)
    dw0, dx0 = mul_backward(da, w0, x0)
    dw1, dx1 = mul_backward(db, w1, x1)
    return L, (-dw0, dx0, -dw1, dx1, -dw2)  # BUG: sign of the w gradients
