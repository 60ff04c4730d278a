"""gates: returns float32 arrays (graded with a float32 tolerance)."""
import numpy as np

F32 = np.float32


def _f32(a):
    return np.asarray(a, dtype=F32)


def _sigmoid32(t):
    # stable sigmoid in float32
    e = np.exp(-np.abs(t))
    return np.where(t >= 0, F32(1) / (F32(1) + e), e / (F32(1) + e)).astype(F32)


def add_backward(dout, x, y):
    d = _f32(dout)
    return d.copy(), d.copy()


def mul_backward(dout, x, y):
    d = _f32(dout)
    return d * _f32(y), d * _f32(x)


def max_backward(dout, x, y):
    d = _f32(dout)
    x = np.asarray(x)
    y = np.asarray(y)
    return d * (x > y).astype(F32), d * (y > x).astype(F32)


def copy_backward(dout_a, dout_b):
    return _f32(dout_a) + _f32(dout_b)


def sigmoid_backward(dout, out):
    out = np.asarray(out, dtype=np.float64)
    # 1 - s is formed before rounding: in float32 it would lose its digits for s near 1
    one_minus = _f32(1.0 - out)
    return _f32(dout) * _f32(out) * one_minus


def circuit(w0, x0, w1, x1, w2):
    w0, x0, w1, x1, w2 = (_f32(v) for v in (w0, x0, w1, x1, w2))
    d = w0 * x0 + w1 * x1 + w2
    s = _sigmoid32(d)
    local = s * _sigmoid32(-d)  # s * (1 - s)
    return s, (local * x0, local * w0, local * x1, local * w1, local)
