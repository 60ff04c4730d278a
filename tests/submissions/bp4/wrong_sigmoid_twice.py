# expect-fail: backprop.nabla_b backprop.nabla_w minibatch_backprop.nabla_b minibatch_backprop.nabla_w
"""bp4, wrong: vectorised; sigma'(z) written as sigmoid(A) * (1 - sigmoid(A)) on the
activations, so the sigmoid is applied twice."""
import numpy as np


def _sigmoid(Z):
    return 1.0 / (1.0 + np.exp(-Z))


def _sigmoid_prime(Z):
    s = _sigmoid(Z)
    return s * (1.0 - s)


def minibatch_backprop(weights, biases, X, Y):
    m = X.shape[1]
    A = [X]
    for W, b in zip(weights, biases):
        A.append(_sigmoid(W @ A[-1] + b))
    n_layers = len(weights)
    nabla_b = [None] * n_layers
    nabla_w = [None] * n_layers
    # BP1: delta^L = (a^L - y) * sigma'(z^L)
    delta = (A[-1] - Y) * _sigmoid_prime(A[-1])  # BUG: A[-1] is already sigmoid(z), not z
    for l in range(n_layers - 1, -1, -1):
        if l < n_layers - 1:
            # BP2: delta^l = (W^{l+1})^T delta^{l+1} * sigma'(z^l)
            delta = (weights[l + 1].T @ delta) * _sigmoid_prime(A[l + 1])  # BUG: same here
        nabla_b[l] = delta.sum(axis=1, keepdims=True) / m
        nabla_w[l] = (delta @ A[l].T) / m
    return nabla_b, nabla_w


def backprop(weights, biases, x, y):
    return minibatch_backprop(weights, biases, x, y)
