"""Course-compatible functional layers: the drop-in for CS231n / CS182 ``layers.py``.

Every forward returns ``(out, cache)`` and every backward takes ``(dout, cache)``, with the cache
layouts of the course code, so ``from fastbp.layers import *`` replaces
``from cs231n.layers import *`` and gives the same numbers.  Arguments are validated here, before
any kernel runs; the kernels come from the backend in force (``fastbp.set_backend``).

dtypes follow NumPy promotion of the inputs (float32 stays float32; integers compute in float64;
float16 in float32).  Non-contiguous and read-only inputs are accepted and never written.
"""

import math

import numpy as np

from . import _specs
from ._config import threads_for
from ._validation import (
    FLOAT_DTYPES, as_array, as_float, as_labels, compute_dtype, finite_real, require_shape,
    unpack_cache,
)
from .backend import kernels

__all__ = [
    "ACTIVATIONS",
    "affine_forward",
    "affine_backward",
    "affine_relu_forward",
    "affine_relu_backward",
    "relu_forward",
    "relu_backward",
    "leaky_relu_forward",
    "leaky_relu_backward",
    "sigmoid_forward",
    "sigmoid_backward",
    "tanh_forward",
    "tanh_backward",
    "elu_forward",
    "elu_backward",
    "gelu_forward",
    "gelu_backward",
    "softmax_loss",
    "svm_loss",
    "mse_loss",
    "dropout_forward",
    "dropout_backward",
]


# --------------------------------------------------------------------------------------------
# affine


def _flat_input(x, w, name="x"):
    """x as (N, D) with D = prod(x.shape[1:]), checked against w's first dimension."""
    if x.ndim < 1:
        raise ValueError(f"{name} must have shape (N, d1, ..., dk), got a 0-d array")
    n, d = x.shape[0], math.prod(x.shape[1:])
    if w.ndim != 2 or w.shape[0] != d:
        raise ValueError(
            f"w must have shape (D, M) with D = prod({name}.shape[1:]) = {d}, got {w.shape}"
        )
    return x.reshape(n, d)


def affine_forward(x, w, b):
    """Affine (fully-connected) forward: ``out = x.reshape(N, D) @ w + b``.

    Parameters
    ----------
    x : array_like, shape (N, d_1, ..., d_k)
        Input minibatch; flattened to (N, D) with D = d_1 * ... * d_k.
    w : array_like, shape (D, M)
    b : array_like, shape (M,)

    Returns
    -------
    out : ndarray, shape (N, M)
    cache : tuple
        ``(x, w, b)``, with x in its original shape.

    Raises
    ------
    ValueError
        If the shapes do not fit together.
    TypeError
        For non-numeric dtypes.
    """
    x, w, b = as_array(x, "x"), as_array(w, "w"), as_array(b, "b")
    x2 = _flat_input(x, w)
    if b.shape != (w.shape[1],):
        raise ValueError(f"b must have shape ({w.shape[1]},) to match w {w.shape}, got {b.shape}")
    dtype = compute_dtype(x, w, b)
    n, m = x2.shape[0], w.shape[1]
    out = np.empty((n, m), dtype)
    kernels().linear_forward(
        as_float(x2, "x", dtype), as_float(w, "w", dtype), as_float(b, "b", dtype), out,
        threads_for(n * m),
    )
    return out, (x, w, b)


def affine_backward(dout, cache):
    """Affine backward.

    Parameters
    ----------
    dout : array_like, shape (N, M)
        Upstream gradient.
    cache : tuple
        ``(x, w, b)`` from :func:`affine_forward`.

    Returns
    -------
    dx : ndarray, shape of the original x
    dw : ndarray, shape (D, M)
    db : ndarray, shape (M,)
    """
    x, w, b = unpack_cache(cache, "cache", 3)
    x, w, b = as_array(x, "cache x"), as_array(w, "cache w"), as_array(b, "cache b")
    dout = as_array(dout, "dout")
    x2 = _flat_input(x, w, "cache x")
    n, d = x2.shape
    m = w.shape[1]
    require_shape(dout, "dout", (n, m))
    dtype = compute_dtype(dout, x, w, b)
    dx = np.empty((n, d), dtype)
    dw = np.empty((d, m), dtype)
    db = np.empty(m, dtype)
    kernels().linear_backward(
        as_float(dout, "dout", dtype), as_float(x2, "x", dtype), as_float(w, "w", dtype),
        dx, dw, db, 1.0, 0.0, threads_for(n * m),
    )
    return dx.reshape(x.shape), dw, db


# --------------------------------------------------------------------------------------------
# activations: elementwise kernels over the raveled array


# The kernels take 1-D C-contiguous float32/float64 ndarrays (they check it, with the NumPy
# C-API, in ~0.05 us).  Tiny calls are dominated by Python overhead, so the common case -- plain
# ndarrays that already have a native dtype and layout -- is recognised with a few attribute
# reads and passed through untouched; anything else is validated and converted first.  ravel()
# of a C-contiguous array is a view, as reshape(-1) is, and about half its cost.


def _forward(kernel, x, *scalars):
    if type(x) is np.ndarray and x.dtype in FLOAT_DTYPES and x.flags.c_contiguous:
        a = xc = x  # the common case, checked cheaply
    else:
        a = as_array(x, "x")
        xc = as_float(a, "x", compute_dtype(a))
    out = np.empty(a.shape, xc.dtype)
    getattr(kernels(), kernel)(xc.ravel(), out.ravel(), *scalars, threads_for(a.size))
    return a, out


def _backward(kernel, dout, saved, saved_name, *scalars):
    fast = (  # the common case, checked cheaply: nothing to convert
        type(dout) is np.ndarray and type(saved) is np.ndarray and dout.dtype in FLOAT_DTYPES
        and saved.dtype == dout.dtype and dout.flags.c_contiguous and saved.flags.c_contiguous
    )
    d = dout if fast else as_array(dout, "dout")
    s = saved if fast else as_array(saved, saved_name)
    if d.shape != s.shape:
        raise ValueError(f"dout has shape {d.shape}, but the cached {saved_name} has {s.shape}")
    shape = d.shape
    if not fast:  # (as_float makes a 0-d array 1-D, hence `shape`)
        dtype = compute_dtype(d, s)
        d, s = as_float(d, "dout", dtype), as_float(s, saved_name, dtype)
    dx = np.empty(shape, d.dtype)
    getattr(kernels(), kernel)(d.ravel(), s.ravel(), dx.ravel(), *scalars, threads_for(d.size))
    return dx


def _approximate(value):
    """GELU's form, checked; the kernels' scalar for it."""
    row = _specs.ACTIVATIONS["gelu"]
    if value not in row.forms:
        raise ValueError(f"approximate must be {' or '.join(map(repr, row.forms))}, got {value!r}")
    return row.kernel_scalars(value)[0]


def relu_forward(x):
    """ReLU forward: ``out = max(x, 0)``.

    Returns
    -------
    out : ndarray, shape of x
    cache : ndarray
        x itself.
    """
    a, out = _forward("relu_forward", x)
    return out, a


def relu_backward(dout, cache):
    """ReLU backward: ``dx = dout * (x > 0)`` (the derivative at 0 is 0).

    Parameters
    ----------
    dout : array_like
        Upstream gradient, shape of x.
    cache : ndarray
        x, from :func:`relu_forward`.

    Returns
    -------
    dx : ndarray
    """
    return _backward("relu_backward", dout, cache, "cache x")


def _alpha_forward(name, x, alpha):
    """Forward of an activation with a real parameter alpha: ``(out, (x, alpha))``."""
    alpha = finite_real(alpha, "alpha")
    a, out = _forward(name + "_forward", x, alpha)
    return out, (a, alpha)


def _alpha_backward(name, dout, cache):
    """Backward from the ``(x, alpha)`` cache of :func:`_alpha_forward`."""
    x, alpha = unpack_cache(cache, "cache", 2)
    return _backward(name + "_backward", dout, x, "cache x", finite_real(alpha, "cache alpha"))


def leaky_relu_forward(x, alpha=0.01):
    """Leaky ReLU forward: ``x if x > 0 else alpha * x``; cache ``(x, alpha)``."""
    return _alpha_forward("leaky_relu", x, alpha)


def leaky_relu_backward(dout, cache):
    """Leaky ReLU backward: ``dout * (1 if x > 0 else alpha)``; returns dx."""
    return _alpha_backward("leaky_relu", dout, cache)


def sigmoid_forward(x):
    """Logistic sigmoid forward, overflow-free for any finite x; cache is the output."""
    _, out = _forward("sigmoid_forward", x)
    return out, out


def sigmoid_backward(dout, cache):
    """Sigmoid backward from the saved output y: ``dout * y * (1 - y)``; returns dx."""
    return _backward("sigmoid_backward", dout, cache, "cache y")


def tanh_forward(x):
    """tanh forward; cache is the output."""
    _, out = _forward("tanh_forward", x)
    return out, out


def tanh_backward(dout, cache):
    """tanh backward from the saved output y: ``dout * (1 - y**2)``; returns dx."""
    return _backward("tanh_backward", dout, cache, "cache y")


def elu_forward(x, alpha=1.0):
    """ELU forward: ``x if x > 0 else alpha * (exp(x) - 1)``; cache ``(x, alpha)``."""
    return _alpha_forward("elu", x, alpha)


def elu_backward(dout, cache):
    """ELU backward from the input: ``dout if x > 0 else dout * alpha * exp(x)``; returns dx."""
    return _alpha_backward("elu", dout, cache)


def gelu_forward(x, approximate="none"):
    """GELU forward: ``x * Phi(x)`` (``approximate="none"``, erf form) or PyTorch's tanh form.

    Returns
    -------
    out : ndarray
    cache : tuple
        ``(x, approximate)``.
    """
    flag = _approximate(approximate)
    a, out = _forward("gelu_forward", x, flag)
    return out, (a, approximate)


def gelu_backward(dout, cache):
    """GELU backward (exact derivative of the chosen form); returns dx."""
    x, approximate = unpack_cache(cache, "cache", 2)
    return _backward("gelu_backward", dout, x, "cache x", _approximate(approximate))


#: name -> (forward, backward, keyword of the extra parameter or None, its default), one entry
#: per row of the spec table (fastbp._specs.ACTIVATIONS)
ACTIVATIONS = {
    name: (globals()[name + "_forward"], globals()[name + "_backward"], row.param, row.default)
    for name, row in _specs.ACTIVATIONS.items()
}


# --------------------------------------------------------------------------------------------
# sandwich layer


def affine_relu_forward(x, w, b):
    """Affine followed by ReLU; cache ``((x, w, b), a)`` with a the affine output."""
    a, fc_cache = affine_forward(x, w, b)
    out, relu_cache = relu_forward(a)
    return out, (fc_cache, relu_cache)


def affine_relu_backward(dout, cache):
    """Backward of :func:`affine_relu_forward`; returns ``(dx, dw, db)``."""
    fc_cache, relu_cache = unpack_cache(cache, "cache", 2)
    return affine_backward(relu_backward(dout, relu_cache), fc_cache)


# --------------------------------------------------------------------------------------------
# losses


def _scores_and_labels(x, y):
    s = as_array(x, "x")
    if s.ndim != 2:
        raise ValueError(f"x must be 2-D scores of shape (N, C), got shape {s.shape}")
    n, c = s.shape
    if n == 0:
        raise ValueError("x is an empty batch (N = 0): the mean loss is undefined")
    if c == 0:
        raise ValueError("x has no classes (C = 0)")
    labels = as_labels(y, "y", n, c)
    dtype = compute_dtype(s)
    return as_float(s, "x", dtype), labels, dtype


def softmax_loss(x, y):
    """Softmax cross-entropy loss and gradient, mean over the batch.

    Parameters
    ----------
    x : array_like, shape (N, C)
        Class scores (logits); any finite values (max-shifted internally).
    y : array_like of int, shape (N,)
        Labels in [0, C).

    Returns
    -------
    loss : float scalar of x's dtype
        ``mean_i (logsumexp(x_i) - x_i[y_i])``.
    dx : ndarray, shape (N, C)
        ``(softmax(x) - onehot(y)) / N``.

    Raises
    ------
    ValueError
        For a non-2-D x, an empty batch, or labels of the wrong shape or outside [0, C).
    TypeError
        For non-integer labels or non-numeric scores.
    """
    return _classification_loss("softmax", x, y)


def _classification_loss(name, x, y):
    """(mean loss, dx) through the fused kernel of loss row `name` (fastbp._specs.LOSSES)."""
    s, labels, dtype = _scores_and_labels(x, y)
    n, c = s.shape
    dx = np.empty((n, c), dtype)
    loss = getattr(kernels(), _specs.LOSSES[name].kernel)(
        s, labels, dx, np.empty(n, np.float64), 1.0 / n, threads_for(n * c))
    return dtype.type(loss), dx


def svm_loss(x, y):
    """Multiclass SVM (hinge, margin 1) loss and gradient, mean over the batch.

    Same parameters, returns and errors as :func:`softmax_loss`; the loss is
    ``mean_i sum_{j != y_i} max(0, x_ij - x_iy_i + 1)``, and a margin of exactly 0 contributes
    no gradient.
    """
    return _classification_loss("svm", x, y)


def mse_loss(pred, target):
    """Mean squared error over all elements and its gradient.

    Parameters
    ----------
    pred, target : array_like, same shape (any number of dimensions, at least one element)

    Returns
    -------
    loss : float scalar
        ``mean((pred - target) ** 2)``.
    dpred : ndarray, shape of pred
        ``2 * (pred - target) / pred.size``.
    """
    p, t = as_array(pred, "pred"), as_array(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred and target must have the same shape, got {p.shape} and {t.shape}")
    if p.size == 0:
        raise ValueError("pred is empty: the mean loss is undefined")
    dtype = compute_dtype(p, t)
    rows = p.shape[0] if p.ndim >= 2 else 1
    p2 = as_float(p, "pred", dtype).reshape(rows, -1)
    t2 = as_float(t, "target", dtype).reshape(rows, -1)
    dpred = np.empty(p2.shape, dtype)
    loss = kernels().mse(p2, t2, dpred, np.empty(rows, np.float64), 1.0 / p.size,
                         threads_for(p.size))
    return dtype.type(loss), dpred.reshape(p.shape)


# --------------------------------------------------------------------------------------------
# dropout

_DROPOUT_MODES = ("train", "test")
_SEED_LIMIT = 1 << 64


def _dropout_mode(dropout_param):
    if not hasattr(dropout_param, "get"):
        raise TypeError(
            f"dropout_param must be a dict with 'mode' and 'p', got {type(dropout_param).__name__}"
        )
    mode = dropout_param.get("mode")
    if mode not in _DROPOUT_MODES:
        raise ValueError(f"dropout_param['mode'] must be 'train' or 'test', got {mode!r}")
    return mode


def _keep_prob(dropout_param):
    if "p" not in dropout_param:
        raise ValueError("dropout_param must give 'p', the probability of keeping a unit")
    p = finite_real(dropout_param["p"], "dropout_param['p']")
    if not 0.0 < p <= 1.0:
        raise ValueError(
            f"dropout_param['p'] is the keep probability and must lie in (0, 1], got {p}"
        )
    return p


def _dropout_seed(dropout_param):
    """The seed given in dropout_param, else one drawn from NumPy's global random state."""
    seed = dropout_param.get("seed")
    if seed is None:
        # honours np.random.seed(...), as the course's np.random.rand mask does
        return int(np.random.randint(0, _SEED_LIMIT, dtype=np.uint64))
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"dropout_param['seed'] must be an integer, got {type(seed).__name__}")
    if not 0 <= seed < _SEED_LIMIT:
        raise ValueError(f"dropout_param['seed'] must lie in [0, 2**64), got {seed}")
    return int(seed)


def dropout_forward(x, dropout_param):
    """Inverted dropout forward (the course contract; ``p`` is the probability of KEEPING a unit).

    In train mode each element is kept with probability ``p`` and scaled by ``1 / p`` (so the
    expected output equals the input and test mode needs no rescaling); in test mode the input
    is returned unchanged.

    The mask is not the course's ``np.random.rand(*x.shape) < p``: fastbp draws it from a
    counter-based generator (splitmix64 of the seed and the element's index), so it is the same
    for any thread count and reproducible from the seed alone.  Its statistics are the course's:
    each element is kept independently with probability ``p`` (to 1e-16).

    Parameters
    ----------
    x : array_like, any shape
    dropout_param : dict
        ``"mode"``: ``"train"`` or ``"test"``;  ``"p"``: keep probability in (0, 1];
        ``"seed"`` (optional): integer in [0, 2**64).  With a seed, every call gives the same
        mask for the same shape; without one (or with None), a seed is drawn from NumPy's global
        random state, so ``np.random.seed(...)`` makes a run reproducible, as in the course.

    Returns
    -------
    out : ndarray, shape of x
        ``x * mask`` in train mode (dtype by NumPy promotion of x: float32 stays float32,
        integers become float64); x itself in test mode.
    cache : tuple
        ``(dropout_param, mask)``; mask (shape of x, values 0 or ``1/p``) is None in test mode.

    Raises
    ------
    ValueError
        For a mode other than "train"/"test", ``p`` outside (0, 1] or missing, or a seed
        outside [0, 2**64).
    TypeError
        For a non-dict dropout_param, a non-real ``p``, a non-integer seed or a non-numeric x.
    """
    mode = _dropout_mode(dropout_param)
    p = _keep_prob(dropout_param)
    a = as_array(x, "x")
    if mode == "test":
        return a, (dropout_param, None)
    seed = _dropout_seed(dropout_param)
    dtype = compute_dtype(a)
    out = np.empty(a.shape, dtype)
    mask = np.empty(a.shape, dtype)
    kernels().dropout_forward(
        as_float(a, "x", dtype).reshape(-1), out.reshape(-1), mask.reshape(-1), p, seed,
        threads_for(a.size),
    )
    return out, (dropout_param, mask)


def dropout_backward(dout, cache):
    """Inverted dropout backward: ``dx = dout * mask`` in train mode, ``dout`` in test mode.

    Parameters
    ----------
    dout : array_like
        Upstream gradient, shape of x.
    cache : tuple
        ``(dropout_param, mask)`` from :func:`dropout_forward`.

    Returns
    -------
    dx : ndarray
    """
    dropout_param, mask = unpack_cache(cache, "cache", 2)
    mode = _dropout_mode(dropout_param)
    if mode == "test":
        return as_array(dout, "dout")
    if mask is None:
        raise ValueError("cache holds no mask, but its dropout_param says mode 'train'")
    return _backward("dropout_backward", dout, mask, "cache mask")
