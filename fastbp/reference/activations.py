"""NumPy twin of fastbp._kernels._activations: same names, signatures and output semantics.

Each kernel writes into the given 1-D buffer (``out`` / ``dx``) and returns None; all buffers of
one call must have the same length.  ``n_threads`` is accepted and ignored.  Sigmoid and tanh
backward read the forward OUTPUT y; the others read the forward input x.  GELU's form is
``approximate="none" | "tanh"``, checked against the spec row (fastbp._specs) with the compiled
kernels' message.  Formulas are the
numerically stable ones (expit, expm1, ndtr), since this module is the oracle the kernels are
tested against.
"""

import math

import numpy as np

from .._specs import ACTIVATIONS



def _special():
    """scipy.special, imported on first use: its ufuncs load SciPy's own OpenBLAS, a second
    BLAS thread pool (DESIGN §6), so ``import fastbp`` must not import it; only the NumPy twins
    of sigmoid and GELU use it (expit, ndtr)."""
    from scipy import special

    return special


__all__ = [
    "relu_forward", "relu_backward",
    "leaky_relu_forward", "leaky_relu_backward",
    "sigmoid_forward", "sigmoid_backward",
    "tanh_forward", "tanh_backward",
    "elu_forward", "elu_backward",
    "gelu_forward", "gelu_backward",
]

# Python floats, so float32 inputs compute in float32 (NumPy scalars would promote to float64).
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)
_GELU_K = 0.044715
_GELU = ACTIVATIONS["gelu"]


def _check(kernel, **buffers):
    """ValueError naming the buffers unless they all have the same length."""
    lengths = {name: len(a) for name, a in buffers.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{name}={m}" for name, m in lengths.items())
        raise ValueError(f"{kernel}: {', '.join(lengths)} must have the same length, got {shown}")


def relu_forward(x, out, n_threads=1):
    """out := max(x, 0)  (NaN propagates)."""
    _check("relu_forward", x=x, out=out)
    out[...] = np.maximum(x, 0)


def relu_backward(dout, x, dx, n_threads=1):
    """dx := dout * (x > 0), from the forward input x (derivative 0 at x = 0)."""
    _check("relu_backward", dout=dout, x=x, dx=dx)
    dx[...] = np.where(x > 0, dout, 0)


def leaky_relu_forward(x, out, alpha=0.01, n_threads=1):
    """out := x if x > 0 else alpha * x."""
    _check("leaky_relu_forward", x=x, out=out)
    out[...] = np.where(x > 0, x, alpha * x)


def leaky_relu_backward(dout, x, dx, alpha=0.01, n_threads=1):
    """dx := dout if x > 0 else alpha * dout, from the forward input x."""
    _check("leaky_relu_backward", dout=dout, x=x, dx=dx)
    dx[...] = np.where(x > 0, dout, alpha * dout)


def sigmoid_forward(x, out, n_threads=1):
    """out := 1 / (1 + exp(-x))  (stable for both signs)."""
    _check("sigmoid_forward", x=x, out=out)
    out[...] = _special().expit(x)


def sigmoid_backward(dout, y, dx, n_threads=1):
    """dx := dout * y * (1 - y), from the forward OUTPUT y."""
    _check("sigmoid_backward", dout=dout, y=y, dx=dx)
    dx[...] = dout * y * (1 - y)


def tanh_forward(x, out, n_threads=1):
    """out := tanh(x)."""
    _check("tanh_forward", x=x, out=out)
    out[...] = np.tanh(x)


def tanh_backward(dout, y, dx, n_threads=1):
    """dx := dout * (1 - y**2), from the forward OUTPUT y."""
    _check("tanh_backward", dout=dout, y=y, dx=dx)
    dx[...] = dout * (1 - y * y)


def elu_forward(x, out, alpha=1.0, n_threads=1):
    """out := x if x > 0 else alpha * expm1(x)."""
    _check("elu_forward", x=x, out=out)
    out[...] = np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))  # min: no exp overflow


def elu_backward(dout, x, dx, alpha=1.0, n_threads=1):
    """dx := dout if x > 0 else dout * alpha * exp(x), from the forward input x."""
    _check("elu_backward", dout=dout, x=x, dx=dx)
    dx[...] = np.where(x > 0, dout, dout * alpha * np.exp(np.minimum(x, 0)))


def _gelu_tanh_u(x):
    """u = sqrt(2/pi) * (x + 0.044715 x**3) and du/dx."""
    return (_SQRT_2_OVER_PI * (x + _GELU_K * x**3),
            _SQRT_2_OVER_PI * (1 + 3 * _GELU_K * x**2))


def gelu_forward(x, out, approximate="none", n_threads=1):
    """out := x * Phi(x); approximate='tanh': 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715
    x**3)))."""
    form = _GELU.checked_form(approximate, "gelu_forward: ")
    _check("gelu_forward", x=x, out=out)
    if form == "tanh":
        u, _ = _gelu_tanh_u(x)
        # = 0.5*x*(1 + tanh(u)), without the cancellation for x << 0
        out[...] = x * _special().expit(2 * u)
    else:
        # ndtr(x) = Phi(x) = 0.5*(1 + erf(x/sqrt(2))), accurate in the tail
        out[...] = x * _special().ndtr(x)


def gelu_backward(dout, x, dx, approximate="none", n_threads=1):
    """dx := dout * (Phi(x) + x * phi(x)) (or the exact derivative of the tanh form), from x."""
    form = _GELU.checked_form(approximate, "gelu_backward: ")
    _check("gelu_backward", dout=dout, x=x, dx=dx)
    if form == "tanh":
        u, du = _gelu_tanh_u(x)
        # d/dx [x * sigmoid(2u)] = sigmoid(2u) + 2x * sigmoid(2u) * sigmoid(-2u) * du
        expit = _special().expit
        dx[...] = dout * (expit(2 * u) + 2 * x * expit(2 * u) * expit(-2 * u) * du)
    else:
        pdf = _INV_SQRT_2PI * np.exp(-0.5 * x * x)
        dx[...] = dout * (_special().ndtr(x) + x * pdf)
