"""Assignment `mlp`: backward pass of a one-hidden-layer MLP with L2 regularisation.

Single example, column convention (1-D vectors, weights multiply from the left).
H is the number of hidden units:

    z = W1 @ x            (mlp_bias_backward: z = W1 @ x + b1)
    h = relu(z)
    o = W2 @ h
    L = -log(softmax(o)[y])
    s = lam / 2 * (||W1||_F^2 + ||W2||_F^2)      (b1 is not regularised)
    J = L + s

Do not modify any input in place. See handout.md for the math.
"""
import numpy as np


def mlp_backward(x, y, W1, W2, lam):
    """Gradients of J for the MLP without a bias.

    Inputs:
        x:   input, shape (d,)
        y:   true class, an int in [0, q)
        W1:  first-layer weights, shape (H, d)
        W2:  second-layer weights, shape (q, H)
        lam: regularisation strength, a float > 0

    Returns:
        dict with keys
            "o":  dJ/do,  shape (q,)
            "h":  dJ/dh,  shape (H,)
            "z":  dJ/dz,  shape (H,)
            "W2": dJ/dW2, shape (q, H)
            "W1": dJ/dW1, shape (H, d)
    """
    raise NotImplementedError('mlp_backward: return {"o", "h", "z", "W2", "W1"}')


def mlp_bias_backward(x, y, W1, b1, W2, lam):
    """Gradients of J for the MLP with a first-layer bias:  z = W1 @ x + b1.

    Inputs:
        x:   input, shape (d,)
        y:   true class, an int in [0, q)
        W1:  first-layer weights, shape (H, d)
        b1:  first-layer bias, shape (H,) (not regularised)
        W2:  second-layer weights, shape (q, H)
        lam: regularisation strength, a float > 0

    Returns:
        dict with keys
            "o":  dJ/do,  shape (q,)
            "h":  dJ/dh,  shape (H,)
            "z":  dJ/dz,  shape (H,)
            "W2": dJ/dW2, shape (q, H)
            "W1": dJ/dW1, shape (H, d)
            "b1": dJ/db1, shape (H,)
    """
    raise NotImplementedError('mlp_bias_backward: return {"o", "h", "z", "W2", "W1", "b1"}')
