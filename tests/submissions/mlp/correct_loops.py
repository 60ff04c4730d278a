"""mlp: loops over the hidden units."""
import numpy as np


def _forward_backward(x, y, W1, b1, W2, lam):
    n_hidden = W1.shape[0]
    q = W2.shape[0]
    z = np.zeros(n_hidden)
    h = np.zeros(n_hidden)
    o = np.zeros(q)
    for j in range(n_hidden):
        z[j] = W1[j] @ x + b1[j]
        h[j] = z[j] if z[j] > 0 else 0.0
        o += W2[:, j] * h[j]
    shifted = o - o.max()
    p = np.exp(shifted) / np.exp(shifted).sum()
    do = p.copy()
    do[y] -= 1.0
    dh = np.zeros(n_hidden)
    dz = np.zeros(n_hidden)
    dW2 = np.zeros(W2.shape)
    dW1 = np.zeros(W1.shape)
    for j in range(n_hidden):
        dh[j] = W2[:, j] @ do
        dz[j] = dh[j] if z[j] > 0 else 0.0
        dW2[:, j] = do * h[j] + lam * W2[:, j]
        dW1[j, :] = dz[j] * x + lam * W1[j, :]
    return {"o": do, "h": dh, "z": dz, "W2": dW2, "W1": dW1, "b1": dz.copy()}


def mlp_backward(x, y, W1, W2, lam):
    g = _forward_backward(x, y, W1, np.zeros(W1.shape[0]), W2, lam)
    return {k: g[k] for k in ("o", "h", "z", "W2", "W1")}


def mlp_bias_backward(x, y, W1, b1, W2, lam):
    return _forward_backward(x, y, W1, b1, W2, lam)
