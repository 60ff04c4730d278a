# expect-fail: minibatch_backprop.nabla_b minibatch_backprop.nabla_w
"""bp4, wrong: divides by m twice (backprop reuses it with m = 1, where that does no harm)."""
import numpy as np


def _sigmoid(Z):
    return 1.0 / (1.0 + np.exp(-Z))


def minibatch_backprop(weights, biases, X, Y):
    m = X.shape[1]
    A = [X]
    for W, b in zip(weights, biases):
        A.append(_sigmoid(W @ A[-1] + b))  # b (n, 1) broadcasts over the m columns
    n_layers = len(weights)
    nabla_b = [None] * n_layers
    nabla_w = [None] * n_layers
    # BP1: delta^L = (a^L - y) * sigma'(z^L), with sigma'(z) = a * (1 - a)
    delta = (A[-1] - Y) * A[-1] * (1.0 - A[-1])
    for l in range(n_layers - 1, -1, -1):
        if l < n_layers - 1:
            # BP2: delta^l = (W^{l+1})^T delta^{l+1} * sigma'(z^l)
            delta = (weights[l + 1].T @ delta) * A[l + 1] * (1.0 - A[l + 1])
        nabla_b[l] = delta.sum(axis=1, keepdims=True) / m   # BP3, averaged
        nabla_w[l] = (delta @ A[l].T) / m                   # BP4, averaged
    nabla_b = [nb / m for nb in nabla_b]  # BUG: already averaged above
    nabla_w = [nw / m for nw in nabla_w]
    return nabla_b, nabla_w


def backprop(weights, biases, x, y):
    return minibatch_backprop(weights, biases, x, y)
