# expect-fail: mlp_backward.o mlp_backward.h mlp_backward.z mlp_backward.W2 mlp_backward.W1 mlp_bias_backward.o mlp_bias_backward.h mlp_bias_backward.z mlp_bias_backward.W2 mlp_bias_backward.W1 mlp_bias_backward.b1
"""mlp, wrong: dJ/do = softmax(o), forgetting to subtract the one-hot of y."""
import numpy as np


def _softmax(o):
    e = np.exp(o)
    return e / e.sum()


def mlp_bias_backward(x, y, W1, b1, W2, lam):
    # forward
    z = W1 @ x + b1
    h = np.maximum(0, z)
    o = W2 @ h
    p = _softmax(o)
    # backward
    do = p.copy()
    # BUG: forgot do[y] -= 1
    dh = W2.T @ do
    dz = dh * (z > 0)
    dW2 = np.outer(do, h) + lam * W2   # + gradient of lam/2 * ||W2||^2
    dW1 = np.outer(dz, x) + lam * W1
    db1 = dz.copy()                 # the bias is not regularised
    return {"o": do, "h": dh, "z": dz, "W2": dW2, "W1": dW1, "b1": db1}


def mlp_backward(x, y, W1, W2, lam):
    grads = mlp_bias_backward(x, y, W1, np.zeros(W1.shape[0]), W2, lam)
    del grads["b1"]
    return grads
