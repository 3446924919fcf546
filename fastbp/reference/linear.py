"""NumPy twins of fastbp._kernels._linear."""

import numpy as np

__all__ = ["linear_forward", "linear_backward"]


def linear_forward(x, w, b, out, n_threads=1):
    """out := x @ w + b   (b may be None)."""
    np.matmul(x, w, out=out)
    if b is not None:
        out += b


def linear_backward(dout, x, w, dx, dw, db, scale=1.0, beta=0.0, n_threads=1):
    """dx := dout @ wᵀ;  dw := s·xᵀ @ dout + β·dw;  db := s·Σ_rows dout + β·db (None: skip).

    dx is computed first, so dw may be w itself (an SGD step: s = -lr, β = 1).
    """
    if dx is not None:
        dx[...] = dout @ w.T
    if dw is not None:
        dw[...] = scale * (x.T @ dout) + (beta * dw if beta else 0)
    if db is not None:
        db[...] = scale * dout.sum(axis=0) + (beta * db if beta else 0)
