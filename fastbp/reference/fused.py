"""NumPy twins of fastbp._kernels._fused (unfused: GEMM, then activation; derivative, then sum)."""

import numpy as np

from .activations import gelu_backward, gelu_forward, elu_forward, leaky_relu_forward
from .activations import relu_forward, sigmoid_forward, tanh_forward

__all__ = ["linear_act_forward", "act_backward_bias"]

ACTIVATION_CODES = {
    "identity": 0, "relu": 1, "leaky_relu": 2, "sigmoid": 3, "tanh": 4, "elu": 5, "gelu": 6,
    "gelu_tanh": 7,
}
DIFFERENTIATED_FROM_INPUT = ("gelu", "gelu_tanh")


def _check(activation):
    if activation not in ACTIVATION_CODES:
        raise ValueError(f"activation must be one of {sorted(ACTIVATION_CODES)}, "
                         f"got {activation!r}")


def _apply(activation, alpha, z, out):
    flat_z, flat_out = z.reshape(-1), out.reshape(-1)
    if activation == "identity":
        out[...] = z
    elif activation == "relu":
        relu_forward(flat_z, flat_out)
    elif activation == "leaky_relu":
        leaky_relu_forward(flat_z, flat_out, alpha)
    elif activation == "sigmoid":
        sigmoid_forward(flat_z, flat_out)
    elif activation == "tanh":
        tanh_forward(flat_z, flat_out)
    elif activation == "elu":
        elu_forward(flat_z, flat_out, alpha)
    else:
        gelu_forward(flat_z, flat_out, activation == "gelu_tanh")


def linear_act_forward(x, w, b, activation, alpha, pre, out, n_threads=1):
    """out := act(x @ w + b); pre := x @ w + b when pre is not None (required for gelu*)."""
    _check(activation)
    if pre is None and activation in DIFFERENTIATED_FROM_INPUT:
        raise ValueError(f"linear_act_forward: {activation} needs `pre` (its backward reads z)")
    z = x @ w + (b if b is not None else 0)
    if pre is not None:
        pre[...] = z
    _apply(activation, alpha, z, out)


def act_backward_bias(dout, saved, activation, alpha, dz, db, scale=1.0, beta=0.0, n_threads=1):
    """dz := dout * act'(saved);  db := scale * Σ_rows dz + beta * db  (db may be None)."""
    _check(activation)
    a = saved
    if activation == "identity":
        g = dout.copy()
    elif activation == "relu":
        g = dout * (a > 0)
    elif activation == "leaky_relu":
        g = np.where(a > 0, dout, alpha * dout)
    elif activation == "sigmoid":
        g = dout * a * (1 - a)
    elif activation == "tanh":
        g = dout * (1 - a * a)
    elif activation == "elu":
        g = np.where(a > 0, dout, dout * (a + alpha))
    else:
        g = np.empty_like(dout)
        gelu_backward(dout.reshape(-1), a.reshape(-1), g.reshape(-1), activation == "gelu_tanh")
    dz[...] = g
    if db is not None:
        db[...] = scale * g.sum(axis=0) + (beta * db if beta else 0)
