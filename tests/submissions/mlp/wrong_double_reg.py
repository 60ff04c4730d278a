# expect-fail: mlp_backward.W2 mlp_backward.W1 mlp_bias_backward.W2 mlp_bias_backward.W1
"""mlp, wrong: uses 2 * lam * W as the gradient of lam/2 * ||W||^2."""
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
    do[y] -= 1.0                    # d(-log softmax(o)[y]) / do = p - onehot(y)
    dh = W2.T @ do
    dz = dh * (z > 0)
    dW2 = np.outer(do, h) + 2 * lam * W2  # BUG: should be lam * W2
    dW1 = np.outer(dz, x) + 2 * lam * W1  # BUG: should be lam * W1
    db1 = dz.copy()                 # the bias is not regularised
    return {"o": do, "h": dh, "z": dz, "W2": dW2, "W1": dW1, "b1": db1}


def mlp_backward(x, y, W1, W2, lam):
    grads = mlp_bias_backward(x, y, W1, np.zeros(W1.shape[0]), W2, lam)
    del grads["b1"]
    return grads
