"""A file that fails while it is loaded: a name used before it exists."""
import numpy as np

SCALE = scale_factor * 2


def relu_backward(dout, x):
    return dout * (x > 0)
