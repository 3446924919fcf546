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
    FLOAT_DTYPES, SEED_LIMIT, as_array, as_float, as_labels, compute_dtype, finite_real,
    random_seed, real, require_shape, unit_interval, unpack_cache,
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
    """GELU's form, checked against its spec row (the kernels take the same names)."""
    return _specs.ACTIVATIONS["gelu"].checked_form(value)


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

    Parameters
    ----------
    x : array_like
        Any shape; computed in float32 or float64 (NumPy promotion, integers -> float64).
    approximate : {"none", "tanh"}
        The form, named as in PyTorch (and as the kernels take it).

    Returns
    -------
    out : ndarray, shape of x
    cache : tuple
        ``(x, approximate)``.

    Raises
    ------
    ValueError
        If `approximate` is not ``"none"`` or ``"tanh"``.
    """
    a, out = _forward("gelu_forward", x, _approximate(approximate))
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
        return int(np.random.randint(0, SEED_LIMIT, dtype=np.uint64))
    return random_seed(seed, "dropout_param['seed']")


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


# --------------------------------------------------------------------------------------------
# normalization: batch norm and layer norm (kernels in fastbp._kernels._norm)

__all__ += [
    "batchnorm_forward",
    "batchnorm_backward",
    "batchnorm_backward_alt",
    "layernorm_forward",
    "layernorm_backward",
]

_BN_MODES = ("train", "test")


class NormCache(tuple):
    """What a normalization forward saved for its backward: ``(layer, x, gamma, mean,
    inv_std)``, with ``layer`` "batchnorm" or "layernorm" (so a cache from another layer is
    refused by name), x and gamma as the kernels read them and the float64 statistics."""

    __slots__ = ()

    def __new__(cls, layer, x, gamma, mean, inv_std):
        return super().__new__(cls, (layer, x, gamma, mean, inv_std))


def _norm_param(param, name):
    """`param` must be a dict (the course's bn_param / ln_param): TypeError otherwise."""
    if not isinstance(param, dict):
        raise TypeError(f"{name} must be a dict, got {type(param).__name__}")
    return param


def _norm_inputs(x, gamma, beta):
    """x (N, D), gamma and beta (D,) as C-contiguous arrays of their common float dtype."""
    x, gamma, beta = as_array(x, "x"), as_array(gamma, "gamma"), as_array(beta, "beta")
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (N, D), got shape {x.shape}")
    d = x.shape[1]
    if d == 0:
        raise ValueError("x has no features (D = 0)")
    require_shape(gamma, "gamma", (d,))
    require_shape(beta, "beta", (d,))
    dtype = compute_dtype(x, gamma, beta)
    return (as_float(x, "x", dtype), as_float(gamma, "gamma", dtype),
            as_float(beta, "beta", dtype), dtype)


def _running(bn_param, key, d, dtype):
    """A fresh (D,) copy of bn_param[key] in `dtype` (the course rebinds it after the update);
    zeros when absent (the course starts running_var at 0 too, not at PyTorch's 1)."""
    if key not in bn_param:
        return np.zeros(d, dtype)
    a = as_array(bn_param[key], f"bn_param[{key!r}]")
    require_shape(a, f"bn_param[{key!r}]", (d,))
    return np.array(a, dtype=dtype, order="C", copy=True)


def batchnorm_forward(x, gamma, beta, bn_param):
    """Batch normalization forward (the course contract).

    Train mode normalizes each feature with the minibatch mean and biased variance, then
    scales and shifts: ``out = gamma * (x - mean) / sqrt(var + eps) + beta``, and updates the
    running averages in `bn_param`: ``running = momentum * running + (1 - momentum) * batch``.
    Test mode normalizes with the running averages instead.

    Parameters
    ----------
    x : array_like, shape (N, D)
    gamma, beta : array_like, shape (D,)
        Scale and shift.
    bn_param : dict
        ``"mode"``: ``"train"`` or ``"test"`` (required); ``"eps"`` (default 1e-5, >= 0);
        ``"momentum"`` (default 0.9, in [0, 1]); ``"running_mean"``, ``"running_var"``
        (shape (D,); created as zeros of x's dtype on first use, as the course does, and
        replaced by new arrays after every train-mode call).

    Returns
    -------
    out : ndarray, shape (N, D)
        dtype by NumPy promotion of x, gamma and beta.
    cache : NormCache
        For :func:`batchnorm_backward` (train mode; a test-mode cache has no statistics).

    Raises
    ------
    TypeError
        If bn_param is not a dict, or for non-numeric arrays or scalars.
    ValueError
        For an unknown mode, a missing mode, eps < 0, momentum outside [0, 1], a non-2-D x,
        gamma / beta / running statistics not of shape (D,), or a train-mode batch of fewer
        than 2 rows (the batch variance is undefined; PyTorch refuses it too).  Nothing in
        bn_param is changed then.
    """
    _norm_param(bn_param, "bn_param")
    mode = bn_param.get("mode")
    if mode not in _BN_MODES:
        raise ValueError(f"bn_param['mode'] must be 'train' or 'test', got {mode!r}")
    eps = real(bn_param.get("eps", 1e-5), "bn_param['eps']", minimum=0)
    momentum = unit_interval(bn_param.get("momentum", 0.9), "bn_param['momentum']")
    x, gamma, beta, dtype = _norm_inputs(x, gamma, beta)
    n, d = x.shape
    running_mean = _running(bn_param, "running_mean", d, dtype)
    running_var = _running(bn_param, "running_var", d, dtype)
    out = np.empty((n, d), dtype)
    if mode == "test":
        kernels().batchnorm_forward_test(x.ravel(), gamma, beta, running_mean, running_var,
                                         out.ravel(), eps, threads_for(n * d))
        bn_param.setdefault("running_mean", running_mean)
        bn_param.setdefault("running_var", running_var)
        return out, NormCache("batchnorm-test", x, gamma, None, None)
    if n < 2:
        raise ValueError(f"batch norm in train mode needs at least 2 rows (the variance of one "
                         f"sample is undefined), got x of shape {x.shape}")
    mean, inv_std = np.empty(d), np.empty(d)
    kernels().batchnorm_forward_train(x.ravel(), gamma, beta, out.ravel(), mean, inv_std,
                                      running_mean, running_var, eps, momentum, False,
                                      threads_for(n * d))
    bn_param["running_mean"] = running_mean
    bn_param["running_var"] = running_var
    return out, NormCache("batchnorm", x, gamma, mean, inv_std)


def _norm_cache(cache, layer, dout):
    """The checked (x, gamma, mean, inv_std, dout) of a `layer` cache, dout in x's dtype."""
    if not isinstance(cache, NormCache):
        raise ValueError(f"cache must be the NormCache {layer}_forward returned, got "
                         f"a {type(cache).__name__}")
    kind, x, gamma, mean, inv_std = cache
    if kind != layer:
        detail = " (a test-mode forward saves no batch statistics)" if kind.endswith("-test") \
            else ""
        raise ValueError(f"cache comes from {kind}_forward, not {layer}_forward{detail}")
    dout = as_array(dout, "dout")
    require_shape(dout, "dout", x.shape)
    return x, gamma, mean, inv_std, as_float(dout, "dout", x.dtype)


def _norm_backward(kernel, layer, dout, cache):
    x, gamma, mean, inv_std, dout = _norm_cache(cache, layer, dout)
    dx = np.empty(x.shape, x.dtype)
    dgamma = np.empty(gamma.shape, x.dtype)
    dbeta = np.empty(gamma.shape, x.dtype)
    getattr(kernels(), kernel)(dout.ravel(), x.ravel(), gamma, mean, inv_std, dx.ravel(),
                               dgamma, dbeta, threads_for(x.size))
    return dx, dgamma, dbeta


def batchnorm_backward(dout, cache):
    """Batch normalization backward (train mode).

    Parameters
    ----------
    dout : array_like, shape (N, D)
    cache : NormCache
        From a train-mode :func:`batchnorm_forward`.

    Returns
    -------
    dx : ndarray, shape (N, D)
    dgamma, dbeta : ndarray, shape (D,)

    Raises
    ------
    ValueError
        For a cache from another layer or from test mode, or dout not shaped like x.
    """
    return _norm_backward("batchnorm_backward", "batchnorm", dout, cache)


def batchnorm_backward_alt(dout, cache):
    """Batch normalization backward, the course's "simplified" form.

    fastbp's kernel already uses the compact closed form
    ``dx = gamma * inv_std * (dout - mean(dout) - x_hat * mean(dout * x_hat))``, so this
    returns exactly what :func:`batchnorm_backward` returns; both names exist because the
    course calls both.
    """
    return batchnorm_backward(dout, cache)


def layernorm_forward(x, gamma, beta, ln_param):
    """Layer normalization forward: each row normalized over its D features.

    ``out = gamma * (x - mean_row) / sqrt(var_row + eps) + beta`` (biased variance); the same
    in train and test mode, so no running statistics.

    Parameters
    ----------
    x : array_like, shape (N, D)
    gamma, beta : array_like, shape (D,)
    ln_param : dict
        ``"eps"`` (default 1e-5, >= 0); other keys (the course passes ``"mode"``) are ignored.

    Returns
    -------
    out : ndarray, shape (N, D)
    cache : NormCache
        For :func:`layernorm_backward`.

    Raises
    ------
    TypeError
        If ln_param is not a dict, or for non-numeric inputs.
    ValueError
        For eps < 0, a non-2-D x, or gamma / beta not of shape (D,).
    """
    _norm_param(ln_param, "ln_param")
    eps = real(ln_param.get("eps", 1e-5), "ln_param['eps']", minimum=0)
    x, gamma, beta, dtype = _norm_inputs(x, gamma, beta)
    n, d = x.shape
    out = np.empty((n, d), dtype)
    mean, inv_std = np.empty(n), np.empty(n)
    kernels().layernorm_forward(x.ravel(), gamma, beta, out.ravel(), mean, inv_std, eps,
                                threads_for(n * d))
    return out, NormCache("layernorm", x, gamma, mean, inv_std)


def layernorm_backward(dout, cache):
    """Layer normalization backward.

    Parameters
    ----------
    dout : array_like, shape (N, D)
    cache : NormCache
        From :func:`layernorm_forward`.

    Returns
    -------
    dx : ndarray, shape (N, D)
    dgamma, dbeta : ndarray, shape (D,)

    Raises
    ------
    ValueError
        For a cache from another layer, or dout not shaped like x.
    """
    return _norm_backward("layernorm_backward", "layernorm", dout, cache)
