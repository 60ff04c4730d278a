"""mlp: the ReLU mask is taken from h = relu(z) instead of z; for ReLU h > 0 exactly when z > 0, so this is correct."""
import numpy as np


def _softmax(o):
    e = np.exp(o - np.max(o))
    return e / np.sum(e)


def mlp_bias_backward(x, y, W1, b1, W2, lam):
    z = W1 @ x + b1
    h = np.maximum(0, z)
    o = W2 @ h
    do = _softmax(o)
    do[y] -= 1.0
    dh = W2.T @ do
    dz = dh * (h > 0)               # same mask as z > 0
    return {"o": do, "h": dh, "z": dz,
            "W2": np.outer(do, h) + lam * W2,
            "W1": np.outer(dz, x) + lam * W1,
            "b1": dz.copy()}


def mlp_backward(x, y, W1, W2, lam):
    g = mlp_bias_backward(x, y, W1, np.zeros(W1.shape[0]), W2, lam)
    return {k: v for k, v in g.items() if k != "b1"}
