"""Assignment `gates`: gradient flow through gates.

Every function works elementwise on NumPy float64 arrays of any shape (rank 0 to 4;
0-d arrays are scalars). All arguments of one function have the same shape, and every
returned gradient must have that shape too. Do not modify any input in place.
See handout.md for the math.
"""
import numpy as np


def add_backward(dout, x, y):
    """Backward pass of the add gate  z = x + y.

    Inputs:
        dout: upstream gradient dL/dz, same shape as x
        x, y: the forward inputs, arrays of the same shape (any shape, 0-d included)

    Returns:
        tuple (dx, dy): dL/dx and dL/dy, each with the shape of x
    """
    raise NotImplementedError("add_backward: return (dx, dy)")


def mul_backward(dout, x, y):
    """Backward pass of the elementwise multiply gate  z = x * y.

    Inputs:
        dout: upstream gradient dL/dz, same shape as x
        x, y: the forward inputs, arrays of the same shape (any shape, 0-d included)

    Returns:
        tuple (dx, dy): dL/dx and dL/dy, each with the shape of x
    """
    raise NotImplementedError("mul_backward: return (dx, dy)")


def max_backward(dout, x, y):
    """Backward pass of the max gate  z = np.maximum(x, y).

    Inputs:
        dout: upstream gradient dL/dz, same shape as x
        x, y: the forward inputs, arrays of the same shape (any shape, 0-d included);
              x and y never tie (they differ by more than 0.1 elementwise)

    Returns:
        tuple (dx, dy): dL/dx and dL/dy, each with the shape of x
    """
    raise NotImplementedError("max_backward: return (dx, dy)")


def copy_backward(dout_a, dout_b):
    """Backward pass of the copy gate  a = t; b = t.

    Inputs:
        dout_a: upstream gradient dL/da (any shape, 0-d included)
        dout_b: upstream gradient dL/db, same shape as dout_a

    Returns:
        dt: dL/dt, same shape as dout_a (a single array, not a tuple)
    """
    raise NotImplementedError("copy_backward: return dt")


def sigmoid_backward(dout, out):
    """Backward pass of the sigmoid gate  out = sigmoid(x) = 1 / (1 + exp(-x)).

    Note: you are given the forward *output* `out`, not the input x.

    Inputs:
        dout: upstream gradient dL/dout, same shape as out
        out:  the forward output sigmoid(x) (any shape, 0-d included), values in (0, 1)

    Returns:
        dx: dL/dx, same shape as out (a single array, not a tuple)
    """
    raise NotImplementedError("sigmoid_backward: return dx")


def circuit(w0, x0, w1, x1, w2):
    """Forward and backward pass of  L = sigmoid(w0*x0 + w1*x1 + w2), elementwise.

    Inputs:
        w0, x0, w1, x1, w2: arrays of the same shape (any shape, scalars/0-d included)

    Returns:
        tuple (L, (dw0, dx0, dw1, dx1, dw2)):
            L: the forward value, same shape as the inputs
            dw0, dx0, dw1, dx1, dw2: gradients of sum(L) with respect to each input,
                each with the same shape as the inputs
    """
    raise NotImplementedError("circuit: return (L, (dw0, dx0, dw1, dx1, dw2))")
