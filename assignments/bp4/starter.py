"""Assignment `bp4`: the four fundamental equations of backpropagation.

Sigmoid network with quadratic cost, as in Nielsen, "Neural Networks and Deep
Learning", chapter 2. Layer sizes [n0, n1, ..., nL]:

    weights[l] has shape (n_{l+1}, n_l)
    biases[l]  has shape (n_{l+1}, 1)
    every layer applies the sigmoid;  C = 0.5 * ||a^L - y||^2

Returned lists are ordered like `weights` / `biases`. Do not modify any input in
place. See handout.md for the math.
"""
import numpy as np


def sigmoid(z):
    """The sigmoid function, elementwise."""
    return 1.0 / (1.0 + np.exp(-z))


def sigmoid_prime(z):
    """Derivative of the sigmoid function, elementwise."""
    return sigmoid(z) * (1.0 - sigmoid(z))


def backprop(weights, biases, x, y):
    """Gradient of the cost C = 0.5 * ||a^L - y||^2 for one example.

    Inputs:
        weights: list of L arrays, weights[l] of shape (n_{l+1}, n_l)
        biases:  list of L arrays, biases[l] of shape (n_{l+1}, 1)
        x:       input, shape (n0, 1)
        y:       target, shape (nL, 1)

    Returns:
        tuple (nabla_b, nabla_w) of two lists of L arrays, layer by layer like the inputs:
            nabla_b[l]: dC/db for biases[l],  shape (n_{l+1}, 1)
            nabla_w[l]: dC/dw for weights[l], shape (n_{l+1}, n_l)
    """
    raise NotImplementedError("backprop: return (nabla_b, nabla_w)")


def minibatch_backprop(weights, biases, X, Y):
    """Gradient of the cost averaged over a minibatch of m examples (one per column).

    Inputs:
        weights: list of L arrays, weights[l] of shape (n_{l+1}, n_l)
        biases:  list of L arrays, biases[l] of shape (n_{l+1}, 1)
        X:       inputs, shape (n0, m)
        Y:       targets, shape (nL, m)

    Returns:
        tuple (nabla_b, nabla_w) of two lists of L arrays, layer by layer like the inputs,
        gradients of (1/m) * sum over the m examples of 0.5 * ||a^L - y||^2:
            nabla_b[l]: shape (n_{l+1}, 1)
            nabla_w[l]: shape (n_{l+1}, n_l)
    """
    raise NotImplementedError("minibatch_backprop: return (nabla_b, nabla_w)")
