"""NumPy twins of fastbp._kernels._fused (unfused: GEMM, then activation; derivative, then sum).

The activation codes come from the spec table (fastbp._specs.FUSED_ACTIVATIONS): each code is
an activation row and, for GELU, its form; the forward is that row's elementwise twin.
"""

import numpy as np

from .._specs import FUSED_ACTIVATIONS, FUSED_FORMS, FUSED_FROM_INPUT
from . import activations

__all__ = ["linear_act_forward", "bias_act_forward", "act_backward_bias"]

ACTIVATION_CODES = {code: i for i, code in enumerate(FUSED_ACTIVATIONS)}
DIFFERENTIATED_FROM_INPUT = FUSED_FROM_INPUT

#: dz from the saved OUTPUT a, for the rows whose fused backward reads it (fused_reads "output"):
#: a > 0 exactly where z > 0 (alpha >= 0), and elu'(z) = a + alpha for z <= 0
OUTPUT_DERIVATIVES = {
    "relu": lambda g, a, alpha: g * (a > 0),
    "leaky_relu": lambda g, a, alpha: np.where(a > 0, g, alpha * g),
    "sigmoid": lambda g, a, alpha: g * a * (1 - a),
    "tanh": lambda g, a, alpha: g * (1 - a * a),
    "elu": lambda g, a, alpha: np.where(a > 0, g, g * (a + alpha)),
}


def _check(activation):
    if activation not in ACTIVATION_CODES:
        raise ValueError(f"activation must be one of {sorted(ACTIVATION_CODES)}, "
                         f"got {activation!r}")


def _scalars(activation, alpha):
    """(row, the elementwise kernels' extra arguments) for a fused code."""
    row, form = FUSED_FORMS[activation]
    return row, row.kernel_scalars(form if row.forms else alpha)


def _apply(activation, alpha, z, out):
    if activation == "identity":
        out[...] = z
        return
    row, scalars = _scalars(activation, alpha)
    getattr(activations, row.name + "_forward")(z.reshape(-1), out.reshape(-1), *scalars)


def linear_act_forward(x, w, b, activation, alpha, pre, out, n_threads=1):
    """out := act(x @ w + b); pre := x @ w + b when pre is not None (required for gelu*)."""
    _check(activation)
    if pre is None and activation in DIFFERENTIATED_FROM_INPUT:
        raise ValueError(f"linear_act_forward: {activation} needs `pre` (its backward reads z)")
    z = x @ w + (b if b is not None else 0)
    if pre is not None:
        pre[...] = z
    _apply(activation, alpha, z, out)


def bias_act_forward(z, b, activation, alpha, pre, n_threads=1):
    """z := act(z + b) in place, pre := z + b first when pre is not None (required for gelu*)."""
    _check(activation)
    if pre is None and activation in DIFFERENTIATED_FROM_INPUT:
        raise ValueError(f"bias_act_forward: {activation} needs `pre` (its backward reads z)")
    zb = z + (b if b is not None else 0)
    if pre is not None:
        pre[...] = zb
    _apply(activation, alpha, zb, z)


def act_backward_bias(dout, saved, activation, alpha, dz, db, scale=1.0, beta=0.0, n_threads=1):
    """dz := dout * act'(saved);  db := scale * Σ_rows dz + beta * db  (db may be None)."""
    _check(activation)
    if activation == "identity":
        g = dout.copy()
    elif activation in DIFFERENTIATED_FROM_INPUT:
        row, scalars = _scalars(activation, alpha)
        g = np.empty_like(dout)
        getattr(activations, row.name + "_backward")(
            dout.reshape(-1), saved.reshape(-1), g.reshape(-1), *scalars)
    else:
        g = OUTPUT_DERIVATIVES[FUSED_FORMS[activation][0].name](dout, saved, alpha)
    dz[...] = g
    if db is not None:
        db[...] = scale * g.sum(axis=0) + (beta * db if beta else 0)
