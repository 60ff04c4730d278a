# expect-fail: relu_backward.dx matmul_backward.dx matmul_backward.dW
"""vjp, wrong: relu_backward and matmul_backward build the full Jacobian (right values, but memory blows up on large inputs)."""
import numpy as np


def relu_backward(dout, x):
    # the local gradient is 1 where x > 0 and 0 elsewhere
    # BUG: materialises the (n x n) Jacobian diag(x > 0)
    x = np.asarray(x)
    J = np.diag((x > 0).ravel().astype(np.float64))
    return (np.ravel(dout) @ J).reshape(x.shape)


def matmul_backward(dout, x, W):
    # BUG: materialises the Jacobians of vec(y) = vec(x @ W) (row-major vec)
    N, D = x.shape
    M = W.shape[1]
    Jx = np.kron(np.eye(N), W.T)  # (N*M, N*D)
    JW = np.kron(x, np.eye(M))  # (N*M, D*M)
    g = dout.reshape(-1)
    dx = (g @ Jx).reshape(N, D)
    dW = (g @ JW).reshape(D, M)
    return dx, dW


def affine_backward(dout, x, W, b):
    dx = dout @ W.T
    dW = x.T @ dout
    db = dout.sum(axis=0)
    return dx, dW, db
