"""A file that does not parse: a missing closing bracket."""
import numpy as np


def relu_backward(dout, x):
    return dout * (x > 0
