# expect-fail: backprop.nabla_b backprop.nabla_w minibatch_backprop.nabla_b minibatch_backprop.nabla_w
"""bp4, wrong: in BP1 only (the output layer) uses sigmoid_prime(a^L), the sigmoid applied
twice, instead of sigmoid_prime(z^L); BP2 is right.
Based on Network.backprop from Michael Nielsen's network.py (MIT License)."""
import numpy as np


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def sigmoid_prime(z):
    """Derivative of the sigmoid function."""
    return sigmoid(z) * (1 - sigmoid(z))


def cost_derivative(output_activations, y):
    """Vector of partial derivatives dC_x / da for the output activations."""
    return (output_activations - y)


def backprop(weights, biases, x, y):
    """Return a tuple (nabla_b, nabla_w) representing the gradient for the cost
    function C_x, layer-by-layer lists of numpy arrays like biases and weights."""
    num_layers = len(weights) + 1
    nabla_b = [np.zeros(b.shape) for b in biases]
    nabla_w = [np.zeros(w.shape) for w in weights]
    # feedforward
    activation = x
    activations = [x]  # list to store all the activations, layer by layer
    zs = []  # list to store all the z vectors, layer by layer
    for b, w in zip(biases, weights):
        z = np.dot(w, activation) + b
        zs.append(z)
        activation = sigmoid(z)
        activations.append(activation)
    # backward pass
    delta = cost_derivative(activations[-1], y) * sigmoid_prime(activations[-1])  # BUG: should be zs[-1]
    nabla_b[-1] = delta
    nabla_w[-1] = np.dot(delta, activations[-2].transpose())
    # l = 1 means the last layer of neurons, l = 2 the second-last, and so on
    for l in range(2, num_layers):
        z = zs[-l]
        sp = sigmoid_prime(z)
        delta = np.dot(weights[-l + 1].transpose(), delta) * sp
        nabla_b[-l] = delta
        nabla_w[-l] = np.dot(delta, activations[-l - 1].transpose())
    return (nabla_b, nabla_w)


def minibatch_backprop(weights, biases, X, Y):
    m = X.shape[1]
    nabla_b = [np.zeros(b.shape) for b in biases]
    nabla_w = [np.zeros(w.shape) for w in weights]
    for j in range(m):
        x = X[:, j:j + 1]
        y = Y[:, j:j + 1]
        delta_nabla_b, delta_nabla_w = backprop(weights, biases, x, y)
        nabla_b = [nb + dnb for nb, dnb in zip(nabla_b, delta_nabla_b)]
        nabla_w = [nw + dnw for nw, dnw in zip(nabla_w, delta_nabla_w)]
    nabla_b = [nb / m for nb in nabla_b]
    nabla_w = [nw / m for nw in nabla_w]
    return (nabla_b, nabla_w)
