"""The differentiable ops: forward on the kernels (or NumPy), backward side by side.

Design
------
a. One op = one function: it computes the forward result, and, when a gradient is recorded
   (grad mode on and some operand requires grad), a ``backward(g)`` closure right below it that
   keeps only what the backward needs (``save_for_backward``) and returns one gradient per
   recorded input.  Backward closures never return an array they saved, so a retained graph can
   run again (see the engine's design block on ownership).
b. The compiled kernels do the heavy work, through ``fastbp.backend.kernels()`` so that the
   ``"numpy"`` and ``"checked"`` backends run the whole engine too: ``linear`` (GEMM + bias
   epilogue, and its fused backward), ``@`` (the ``gemm`` kernel: the project's one GEMM route),
   the activations (their forward/backward kernels), the losses (loss and gradient in one
   fused pass, mean over the batch), dropout (the counter-based mask).  Broadcasting
   elementwise arithmetic, reductions, shape ops, ``exp``/``log`` and ``maximum``/``minimum``
   are plain NumPy.
c. Broadcasting: the gradient of a broadcast operand is summed back to its shape (HIPS
   autograd's ``unbroadcast``: the leading axes, then the axes where the operand had size 1).
d. dtypes follow NumPy promotion (NEP 50): Python scalars are "weak" and keep a float32 tensor
   float32; integer operands of a kernel op compute in float64.  The engine casts each gradient
   to its tensor's dtype, so float32 stays float32 end to end.
e. Validation at the boundary: operands are checked once, where the op is called (shapes named
   in the message, labels in range, scalars finite), before any kernel runs.  Backward closures
   trust what their forward checked.
f. Ties: ``max`` shares the gradient equally among tied maxima (as ``torch.amax``);
   ``maximum``/``minimum`` give half to each operand where they are equal (as PyTorch).
"""

import numbers

import numpy as np

from .. import _specs
from .. import _validation as val
from .._config import threads_for
from ..backend import kernels
from .tensor import Tensor, _mode, _numeric, make

__all__ = [
    "add", "sub", "mul", "div", "neg", "power", "matmul",
    "reduce_sum", "reduce_mean", "reduce_max",
    "exp", "log", "maximum", "minimum",
    "relu", "leaky_relu", "sigmoid", "tanh", "elu", "gelu",
    "linear", "softmax_cross_entropy", "svm_hinge", "mse", "dropout",
    "reshape", "transpose", "getitem", "concatenate",
]


# ------------------------------------------------------------------------------------ helpers


def _pair(a, b):
    """``(a data, b data, a tensor, b tensor)`` of a binary op's operands; a tensor is returned
    only when its gradient is recorded (None otherwise).

    Python numbers stay Python numbers (weak under NEP 50: ``x * 2.0`` keeps float32); other
    values become ndarrays.
    """
    recording = _mode.enabled
    if isinstance(a, Tensor):
        ad, ta = a.data, (a if recording and a._rg else None)
    else:
        ad, ta = _constant(a), None
    if isinstance(b, Tensor):
        bd, tb = b.data, (b if recording and b._rg else None)
    else:
        bd, tb = _constant(b), None
    return ad, bd, ta, tb


def _constant(x):
    return x if isinstance(x, (int, float)) else _numeric(np.asarray(x), "operand")


def _array_operand(x, name):
    """``(ndarray, tensor)`` of a unary op's or kernel op's operand (tensor as :func:`_pair`)."""
    if isinstance(x, Tensor):
        return x.data, (x if x._rg and _mode.enabled else None)
    return _numeric(np.asarray(x), name), None


def _array(out):
    """NumPy returns scalars for 0-d results; the graph holds ndarrays."""
    return out if type(out) is np.ndarray else np.asarray(out)


def _float(a, dtype=None):
    """Numeric ndarray `a` as a C-contiguous float32/float64 array (integers -> float64), for
    the kernels; no copy when it already is one."""
    if dtype is None:
        dtype = a.dtype if a.dtype in val.FLOAT_DTYPES else val.compute_dtype(a)
    if a.dtype != dtype or not a.flags.c_contiguous:
        a = np.ascontiguousarray(a, dtype)
    return a


def _unbroadcast(g, shape):
    """Sum `g` over the axes broadcasting added to an operand of `shape`."""
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1)
    return g.sum(axis=axes).reshape(shape)


def _grad_to(t, g):
    """The gradient `g` of a broadcast result, reduced to tensor `t`'s shape."""
    shape = t.data.shape
    return g if g.shape == shape else _unbroadcast(g, shape)


# ------------------------------------------------------------ arithmetic (broadcasting, NumPy)


def add(a, b):
    """``a + b`` with broadcasting ("add gate: gradient distributor").

    Parameters
    ----------
    a, b : Tensor, array_like or Python number

    Returns
    -------
    Tensor
        Of the broadcast shape and NumPy's promoted dtype.

    Raises
    ------
    ValueError
        If the shapes do not broadcast (both are named).
    """
    ad, bd, ta, tb = _pair(a, b)
    out = _array(ad + bd)
    if ta is None and tb is None:
        return make(out)

    def add_backward(g):
        return (_grad_to(ta, g) if ta is not None else None,
                _grad_to(tb, g) if tb is not None else None)

    return make(out, add_backward, (ta, tb))


def sub(a, b):
    """``a - b`` with broadcasting (see :func:`add`)."""
    ad, bd, ta, tb = _pair(a, b)
    out = _array(ad - bd)
    if ta is None and tb is None:
        return make(out)

    def sub_backward(g):
        return (_grad_to(ta, g) if ta is not None else None,
                _grad_to(tb, -g) if tb is not None else None)

    return make(out, sub_backward, (ta, tb))


def mul(a, b):
    """``a * b`` with broadcasting ("mul gate: swap multiplier"); see :func:`add`."""
    ad, bd, ta, tb = _pair(a, b)
    out = _array(ad * bd)
    if ta is None and tb is None:
        return make(out)

    def mul_backward(g):
        return (_grad_to(ta, g * bd) if ta is not None else None,
                _grad_to(tb, g * ad) if tb is not None else None)

    return make(out, mul_backward, (ta, tb))


def div(a, b):
    """``a / b`` with broadcasting (see :func:`add`)."""
    ad, bd, ta, tb = _pair(a, b)
    out = _array(ad / bd)
    if ta is None and tb is None:
        return make(out)

    def div_backward(g):
        return (_grad_to(ta, g / bd) if ta is not None else None,
                _grad_to(tb, -(g * out) / bd) if tb is not None else None)

    return make(out, div_backward, (ta, tb))


def neg(a):
    """``-a``."""
    ad, ta = _array_operand(a, "a")
    out = -ad
    if ta is None:
        return make(out)
    return make(out, lambda g: (-g,), (ta,))


def power(a, exponent):
    """``a ** exponent`` for a real scalar exponent: d/da = exponent * a ** (exponent - 1).

    Raises
    ------
    TypeError
        If `exponent` is not a real number (tensor exponents are not supported).
    """
    if isinstance(exponent, (bool, np.bool_)) or not isinstance(exponent, numbers.Real):
        raise TypeError(f"power: the exponent must be a real number, got "
                        f"{type(exponent).__name__}")
    ad, ta = _array_operand(a, "a")
    p = exponent.item() if isinstance(exponent, np.generic) else exponent  # stays weak
    out = _array(ad ** p)
    if ta is None:
        return make(out)

    def power_backward(g):
        return (g * (p * ad ** (p - 1)),)

    return make(out, power_backward, (ta,))


def matmul(a, b):
    """``a @ b`` for 1-D and 2-D operands, with ``np.matmul``'s rules, on the GEMM kernel.

    A 1-D `a` is a row vector, a 1-D `b` a column vector; their added axis is removed from the
    result.  Integer operands compute in float64; float32 with float64 gives float64.

    Raises
    ------
    ValueError
        If an operand is not 1-D or 2-D, or the inner dimensions differ (both shapes named).
    """
    ad, ta = _array_operand(a, "a")
    bd, tb = _array_operand(b, "b")
    if not (1 <= ad.ndim <= 2 and 1 <= bd.ndim <= 2):
        raise ValueError(f"matmul: operands must be 1-D or 2-D, got shapes {ad.shape} and "
                         f"{bd.shape}")
    if ad.shape[-1] != bd.shape[0]:
        raise ValueError(f"matmul: shapes {ad.shape} and {bd.shape} do not match: "
                         f"{ad.shape[-1]} (last of a) != {bd.shape[0]} (first of b)")
    dtype = val.compute_dtype(ad, bd)
    a2 = _float(ad, dtype).reshape(-1 if ad.ndim == 2 else 1, ad.shape[-1])
    b2 = _float(bd, dtype).reshape(bd.shape[0], -1 if bd.ndim == 2 else 1)
    out_shape = ad.shape[:-1] + bd.shape[1:]
    out = np.empty(out_shape, dtype)
    k = kernels()
    k.gemm(False, False, 1.0, a2, b2, 0.0, out.reshape(a2.shape[0], b2.shape[1]))
    if ta is None and tb is None:
        return make(out)

    def matmul_backward(g):
        g2 = np.ascontiguousarray(g).reshape(a2.shape[0], b2.shape[1])
        k = kernels()
        da = db = None
        if ta is not None:  # dA = G Bᵀ
            da = np.empty(ad.shape, dtype)
            k.gemm(False, True, 1.0, g2, b2, 0.0, da.reshape(a2.shape))
        if tb is not None:  # dB = Aᵀ G
            db = np.empty(bd.shape, dtype)
            k.gemm(True, False, 1.0, a2, g2, 0.0, db.reshape(b2.shape))
        return da, db

    return make(out, matmul_backward, (ta, tb))


# ---------------------------------------------------------------------------------- reductions


def _expand(g, axis, keepdims):
    """The gradient of a reduction, with the reduced axes back as size 1 (ready to broadcast)."""
    return g if keepdims or axis is None else np.expand_dims(g, axis)


def _spread(g, shape):
    """`g` broadcast to `shape` as a fresh array (np.broadcast_to costs several µs per call)."""
    out = np.empty(shape, g.dtype)
    out[...] = g
    return out


def reduce_sum(a, axis=None, keepdims=False):
    """``a.sum(axis, keepdims)``; the gradient is broadcast back over the summed axes.

    Raises
    ------
    ValueError
        For an axis out of range (NumPy's AxisError).
    """
    ad, ta = _array_operand(a, "a")
    out = _array(ad.sum(axis=axis, keepdims=keepdims))
    if ta is None:
        return make(out)
    shape = ad.shape

    def sum_backward(g):
        return (_spread(_expand(g, axis, keepdims), shape),)

    return make(out, sum_backward, (ta,))


def reduce_mean(a, axis=None, keepdims=False):
    """``a.mean(axis, keepdims)``; the gradient is g / count, broadcast back."""
    ad, ta = _array_operand(a, "a")
    out = _array(ad.mean(axis=axis, keepdims=keepdims))
    if ta is None:
        return make(out)
    shape = ad.shape
    count = ad.size // max(out.size, 1) if ad.size else 1

    def mean_backward(g):
        return (_spread(_expand(g, axis, keepdims) / count, shape),)

    return make(out, mean_backward, (ta,))


def reduce_max(a, axis=None, keepdims=False):
    """``a.max(axis, keepdims)`` (``torch.amax``): tied maxima share the gradient equally.

    Raises
    ------
    ValueError
        For an empty reduction or an axis out of range.
    """
    ad, ta = _array_operand(a, "a")
    if ad.size == 0:
        raise ValueError(f"max: zero-size tensor of shape {ad.shape} has no maximum")
    kept = ad.max(axis=axis, keepdims=True)
    out = kept if keepdims else (kept.reshape(()) if axis is None else np.squeeze(kept, axis))
    if ta is None:
        return make(out)

    def max_backward(g):
        winners = ad == kept
        share = _expand(g, axis, keepdims) / winners.sum(axis=axis, keepdims=True)
        return (np.where(winners, share, 0),)

    return make(out, max_backward, (ta,))


# --------------------------------------------------------------------- elementwise, NumPy math


def exp(a):
    """``exp(a)``; backward reads the output."""
    ad, ta = _array_operand(a, "a")
    out = _array(np.exp(ad))
    if ta is None:
        return make(out)
    return make(out, lambda g: (g * out,), (ta,))


def log(a):
    """``log(a)`` (NaN below 0, -inf at 0, as NumPy); d/da = 1/a."""
    ad, ta = _array_operand(a, "a")
    out = _array(np.log(ad))
    if ta is None:
        return make(out)
    return make(out, lambda g: (g / ad,), (ta,))


def _select(a, b, pick_a):
    """Elementwise maximum/minimum: `pick_a` (a > b or a < b) routes the gradient; ties split."""
    ad, bd, ta, tb = _pair(a, b)
    to_a = pick_a(ad, bd)
    out = _array(np.where(to_a, ad, bd))
    if ta is None and tb is None:
        return make(out)
    tie = ad == bd

    def select_backward(g):  # "max gate: gradient router"
        half = g * 0.5
        return (_grad_to(ta, np.where(to_a, g, np.where(tie, half, 0)))
                if ta is not None else None,
                _grad_to(tb, np.where(to_a | tie, np.where(tie, half, 0), g))
                if tb is not None else None)

    return make(out, select_backward, (ta, tb))


def maximum(a, b):
    """Elementwise ``max(a, b)`` with broadcasting; equal elements split the gradient."""
    return _select(a, b, np.greater)


def minimum(a, b):
    """Elementwise ``min(a, b)`` with broadcasting; equal elements split the gradient."""
    return _select(a, b, np.less)


# ---------------------------------------------------------------- activations (their kernels)


def _activation(x, name, value=None):
    """Run ``<name>_forward``; backward runs ``<name>_backward`` on the saved output or input,
    as the activation's row in :data:`fastbp._specs.ACTIVATIONS` says (``backward_reads``).
    `value` is the row's parameter (already checked), passed as the kernels take it."""
    spec = _specs.ACTIVATIONS[name]
    scalars = spec.kernel_scalars(value)
    xd, tx = _array_operand(x, "x")
    xd = _float(xd)
    out = np.empty(xd.shape, xd.dtype)
    getattr(kernels(), name + "_forward")(xd.ravel(), out.ravel(), *scalars,
                                          threads_for(out.size))
    if tx is None:
        return make(out)
    saved = out if spec.backward_reads == "output" else xd
    backward_kernel = name + "_backward"

    def activation_backward(g):
        dx = np.empty(saved.shape, saved.dtype)
        getattr(kernels(), backward_kernel)(g.ravel(), saved.ravel(), dx.ravel(), *scalars,
                                            threads_for(dx.size))
        return (dx,)

    activation_backward.__qualname__ = backward_kernel
    return make(out, activation_backward, (tx,))


def relu(x):
    """``max(x, 0)``; the derivative at 0 is 0."""
    return _activation(x, "relu")


def leaky_relu(x, alpha=0.01):
    """``x if x > 0 else alpha * x``.

    Raises
    ------
    TypeError, ValueError
        If `alpha` is not a finite real number.
    """
    return _activation(x, "leaky_relu", val.finite_real(alpha, "alpha"))


def sigmoid(x):
    """``1 / (1 + exp(-x))`` (stable for both signs); backward reads the output."""
    return _activation(x, "sigmoid")


def tanh(x):
    """``tanh(x)``; backward reads the output."""
    return _activation(x, "tanh")


def elu(x, alpha=1.0):
    """``x if x > 0 else alpha * (exp(x) - 1)``."""
    return _activation(x, "elu", val.finite_real(alpha, "alpha"))


def gelu(x, approximate="none"):
    """GELU ``x * Phi(x)``, or PyTorch's tanh approximation (``approximate="tanh"``).

    Raises
    ------
    ValueError
        If `approximate` is not ``"none"`` or ``"tanh"``.
    """
    return _activation(x, "gelu", _specs.ACTIVATIONS["gelu"].checked_form(approximate, "gelu: "))


# ------------------------------------------------------------------------ the affine layer


def linear(x, W, b=None):
    """The affine layer ``x @ W + b`` on the fused GEMM + bias kernel (and its fused backward).

    Parameters
    ----------
    x : Tensor or array_like, shape (N, D)
    W : Tensor or array_like, shape (D, M)
        fastbp's (and the course's) layout: ``fastbp.nn.Linear.params["W"]``.
    b : Tensor or array_like, shape (M,), optional

    Returns
    -------
    Tensor, shape (N, M)
        In the promoted float dtype of the operands.

    Raises
    ------
    ValueError
        If x or W is not 2-D, or the shapes do not fit (each named).
    """
    xd, tx = _array_operand(x, "x")
    wd, tw = _array_operand(W, "W")
    bd, tb = _array_operand(b, "b") if b is not None else (None, None)
    if xd.ndim != 2 or wd.ndim != 2:
        raise ValueError(f"linear: x and W must be 2-D, got shapes {xd.shape} and {wd.shape}")
    if xd.shape[1] != wd.shape[0]:
        raise ValueError(f"linear: x has shape {xd.shape} and W has shape {wd.shape}: "
                         f"x's {xd.shape[1]} columns != W's {wd.shape[0]} rows")
    if bd is not None and bd.shape != (wd.shape[1],):
        raise ValueError(f"linear: b has shape {bd.shape}, expected ({wd.shape[1]},) for W of "
                         f"shape {wd.shape}")
    dtype = xd.dtype
    if not (dtype in val.FLOAT_DTYPES and wd.dtype == dtype and (bd is None or bd.dtype == dtype)):
        dtype = val.compute_dtype(*(a for a in (xd, wd, bd) if a is not None))
    xd, wd = _float(xd, dtype), _float(wd, dtype)
    if bd is not None:
        bd = _float(bd, dtype)
    out = np.empty((xd.shape[0], wd.shape[1]), dtype)
    kernels().linear_forward(xd, wd, bd, out, threads_for(out.size))
    if tx is None and tw is None and tb is None:
        return make(out)

    def linear_backward(g):
        g = np.ascontiguousarray(g)
        dx = np.empty(xd.shape, dtype) if tx is not None else None
        dw = np.empty(wd.shape, dtype) if tw is not None else None
        db = np.empty(wd.shape[1], dtype) if tb is not None else None
        kernels().linear_backward(g, xd, wd, dx, dw, db, 1.0, 0.0, threads_for(g.size))
        return dx, dw, db

    return make(out, linear_backward, (tx, tw, tb))


# ------------------------------------------------------------------ losses (fused kernels)


def _scores(scores, fn, name):
    sd, ts = _array_operand(scores, name)
    if sd.ndim != 2:
        raise ValueError(f"{fn}: {name} must be 2-D (N, C), got shape {sd.shape}")
    if sd.shape[0] == 0:
        raise ValueError(f"{fn}: {name} is an empty batch (N = 0): the mean loss is undefined")
    return _float(sd), ts


def _fused_loss(kernel, pred, ts, second, scale):
    """Run a loss kernel (loss and gradient in one pass) and record ``g * gradient``."""
    grad = np.empty(pred.shape, pred.dtype) if ts is not None else None
    rows = np.empty(pred.shape[0], np.float64)
    loss = getattr(kernels(), kernel)(pred, second, grad, rows, scale, threads_for(pred.size))
    return np.array(loss, pred.dtype), grad


_INT64 = np.dtype(np.int64)


def _classification_loss(kernel, scores, labels, name):
    sd, ts = _scores(scores, kernel, name)
    y = labels.data if isinstance(labels, Tensor) else labels
    if not (type(y) is np.ndarray and y.dtype == _INT64 and y.shape == (sd.shape[0],)
            and y.flags.c_contiguous):
        y = val.as_labels(y, "labels", sd.shape[0], sd.shape[1])
    # else: int64 labels as the kernels take them; the kernel checks their range before it
    # writes anything (both backends), so the NumPy reductions of as_labels are not repeated
    out, grad = _fused_loss(kernel, sd, ts, y, 1.0 / sd.shape[0])
    if ts is None:
        return make(out)
    return make(out, lambda g: (grad * g,), (ts,))


def softmax_cross_entropy(logits, labels):
    """Mean softmax cross-entropy over the batch (PyTorch's ``cross_entropy``), fused kernel.

    Parameters
    ----------
    logits : Tensor or array_like, shape (N, C), N >= 1
    labels : array_like of int, shape (N,), each in [0, C)

    Returns
    -------
    Tensor
        A scalar (0-d) in the logits' dtype; its gradient is ``(softmax - onehot) / N``.

    Raises
    ------
    ValueError
        For logits that are not 2-D or empty, labels of the wrong shape or out of range.
    TypeError
        For non-integer labels.
    """
    return _classification_loss("softmax_cross_entropy", logits, labels, "logits")


def svm_hinge(scores, labels):
    """Mean multiclass hinge loss (margin 1, CS231n ``svm_loss``) over the batch, fused kernel.

    Parameters, returns and errors as :func:`softmax_cross_entropy`.
    """
    return _classification_loss("svm_hinge", scores, labels, "scores")


def mse(pred, target):
    """Mean squared error over all elements (PyTorch's ``mse_loss``), fused kernel.

    Parameters
    ----------
    pred, target : Tensor or array_like of the same shape, at least one element
        Either may require grad.  1-D and higher-dimensional arrays are viewed as (N, rest).

    Returns
    -------
    Tensor
        A scalar in the promoted float dtype.

    Raises
    ------
    ValueError
        If the shapes differ (both named) or pred is empty.
    """
    pd, tp = _array_operand(pred, "pred")
    td, tt = _array_operand(target, "target")
    if pd.shape != td.shape:
        raise ValueError(f"mse: pred has shape {pd.shape} but target has shape {td.shape}")
    if pd.size == 0:
        raise ValueError(f"mse: pred is empty (shape {pd.shape}): the mean is undefined")
    dtype = val.compute_dtype(pd, td)
    shape = pd.shape
    rows = (shape[0], -1) if pd.ndim else (1, 1)
    p2 = _float(pd, dtype).reshape(rows)
    t2 = _float(td, dtype).reshape(rows)
    out, grad = _fused_loss("mse", p2, tp if tp is not None else tt, t2, 1.0 / pd.size)
    if tp is None and tt is None:
        return make(out)

    def mse_backward(g):
        d = (grad * g).reshape(shape)
        return (d if tp is not None else None, -d if tt is not None else None)

    return make(out, mse_backward, (tp, tt))


def dropout(x, p, seed):
    """Inverted dropout: zero each element with probability `p`, scale the rest by 1/(1 - p).

    The mask is a pure function of (seed, element index) (the dropout kernels' counter-based
    generator), so the same seed gives the same mask on every backend and thread count.

    Parameters
    ----------
    x : Tensor or array_like
    p : float in [0, 1)
    seed : int in [0, 2**64)

    Raises
    ------
    ValueError
        If p is outside [0, 1) or seed outside [0, 2**64).
    TypeError
        If p is not a real number or seed not an integer.
    """
    p = val.finite_real(p, "p")
    if not 0 <= p < 1:
        raise ValueError(f"dropout: p must lie in [0, 1), got {p}")
    seed = val.random_seed(seed, "dropout: seed")
    xd, tx = _array_operand(x, "x")
    xd = _float(xd)
    out = np.empty(xd.shape, xd.dtype)
    mask = np.empty(xd.shape, xd.dtype)
    kernels().dropout_forward(xd.ravel(), out.ravel(), mask.ravel(), 1.0 - p, int(seed),
                              threads_for(out.size))
    if tx is None:
        return make(out)

    def dropout_backward(g):
        dx = np.empty(mask.shape, mask.dtype)
        kernels().dropout_backward(g.ravel(), mask.ravel(), dx.ravel(), threads_for(dx.size))
        return (dx,)

    return make(out, dropout_backward, (tx,))


# ------------------------------------------------------------------------------ shape ops


def reshape(a, *shape):
    """``a.reshape(shape)`` (``reshape(2, 3)`` or ``reshape((2, 3))``; one -1 allowed)."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    ad, ta = _array_operand(a, "a")
    out = ad.reshape(shape)
    if ta is None:
        return make(out)
    original = ad.shape
    return make(out, lambda g: (g.reshape(original),), (ta,))


def transpose(a, *axes):
    """``a.transpose(axes)``: axes reversed when none are given (``a.T``)."""
    if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        axes = tuple(axes[0])
    ad, ta = _array_operand(a, "a")
    out = ad.transpose(axes or None)
    if ta is None:
        return make(out)
    inverse = tuple(np.argsort([i % ad.ndim for i in axes])) if axes else None

    def transpose_backward(g):
        return (g.transpose(inverse),)

    return make(out, transpose_backward, (ta,))


_BASIC_INDEX = (int, np.integer, slice, type(None), type(Ellipsis))


def _is_basic(index):
    if isinstance(index, tuple):
        return all(isinstance(i, _BASIC_INDEX) for i in index)
    return isinstance(index, _BASIC_INDEX)


def getitem(a, index):
    """``a[index]``: basic indexing (ints, slices, None, ...) and integer arrays (e.g. rows
    ``a[[0, 2, 2]]``); repeated indices accumulate their gradients.

    Raises
    ------
    IndexError
        For an index out of range (NumPy's message).
    """
    if isinstance(index, Tensor):
        index = index.data
    elif isinstance(index, list):
        index = np.asarray(index)
    ad, ta = _array_operand(a, "a")
    out = _array(ad[index])
    if ta is None:
        return make(out)
    basic = _is_basic(index)

    def getitem_backward(g):
        full = np.zeros(ad.shape, g.dtype)
        if basic:
            full[index] = g
        else:
            np.add.at(full, index, g)
        return (full,)

    return make(out, getitem_backward, (ta,))


def concatenate(tensors, axis=0):
    """Join tensors along an existing axis (``np.concatenate``); the gradient is split back.

    Raises
    ------
    ValueError
        If `tensors` is empty or the shapes differ off `axis` (NumPy's message).
    """
    if len(tensors) == 0:
        raise ValueError("concatenate: need at least one tensor")
    pairs = [_array_operand(t, f"tensors[{i}]") for i, t in enumerate(tensors)]
    out = np.concatenate([d for d, _ in pairs], axis=axis)
    inputs = tuple(t for _, t in pairs)
    if all(t is None for t in inputs):
        return make(out)
    ax = axis % out.ndim
    cuts = np.cumsum([d.shape[ax] for d, _ in pairs])[:-1]

    def concatenate_backward(g):
        return tuple(np.split(g, cuts, axis=ax))

    return make(out, concatenate_backward, inputs)


# --------------------------------------------------------- the operators, bound as methods


def _reflected(op):
    def method(self, other):
        return op(other, self)

    method.__name__ = f"r{op.__name__}"
    return method


#: Tensor method name -> op (one definition per op; tensor.py imports no op).
TENSOR_METHODS = {
    "__add__": add, "__radd__": _reflected(add),
    "__sub__": sub, "__rsub__": _reflected(sub),
    "__mul__": mul, "__rmul__": _reflected(mul),
    "__truediv__": div, "__rtruediv__": _reflected(div),
    "__matmul__": matmul, "__rmatmul__": _reflected(matmul),
    "__pow__": power, "__neg__": neg, "__getitem__": getitem,
    "sum": reduce_sum, "mean": reduce_mean, "max": reduce_max,
    "exp": exp, "log": log, "relu": relu, "sigmoid": sigmoid, "tanh": tanh,
    "reshape": reshape, "transpose": transpose, "T": property(transpose),
}

for _name, _op in TENSOR_METHODS.items():
    setattr(Tensor, _name, _op)
