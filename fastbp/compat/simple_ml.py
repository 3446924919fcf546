"""The CMU 10-414/714 (Deep Learning Systems) hw0 API, on fastbp's kernels.

``from simple_ml import *`` in a hw0 script becomes ``from fastbp.compat.simple_ml import *``.

Design
------
a. hw0 contracts kept: the names, argument order and defaults of hw0's ``simple_ml.py``.
   * ``parse_mnist`` -> X float32 (N, rows * cols) = pixels / 255 (so 0 -> 0.0, 255 -> 1.0),
     y uint8 (N,).
   * ``softmax_loss(Z, y)`` -> the mean softmax cross-entropy as a NumPy scalar of Z's dtype;
     y holds integer labels (hw0), not one-hot rows (hw2 onwards).
   * The epoch functions visit ``X[i:i + batch]`` for ``i in range(0, N, batch)``: in order, no
     shuffling, the last partial batch included.  Each batch is one step ``W -= lr * grad``
     with grad the gradient of the mean loss over that batch, e.g. ``Xbᵀ (softmax(Xb θ) − I_y)
     / B`` with B the batch's row count (below ``batch`` only for a last partial batch, which
     the hw0 tests never have).  theta / W1 / W2 are updated IN PLACE; the functions return
     None.  ``nn_epoch`` is ``ReLU(X W1) W2`` without biases, and both gradients of a step are
     taken at the weights from before that step.
   * ``train_softmax`` / ``train_nn`` print hw0's table character for character and
     initialise as hw0: theta = zeros float32; ``np.random.seed(0)`` (the global NumPy RNG, as
     hw0) and then the scaled ``randn`` W1, W2 in float32.
   * ``softmax_regression_epoch_cpp`` is ``softmax_regression_epoch`` (hw0's C++ twin; this one
     is compiled already), and ``train_softmax`` accepts and ignores ``cpp``.
b. On the kernels, one softmax-regression batch is three calls and no temporaries:
   ``linear_forward`` (logits = Xb θ), the fused ``softmax_cross_entropy`` (whose gradient
   output is (softmax − onehot)/B directly) and ``linear_backward`` with dw = θ itself, scale
   −lr, beta 1, so the step θ := θ − lr·Xbᵀ G runs inside the weight-gradient GEMM.  An
   ``nn_epoch`` batch: ``linear_act_forward`` (Z1 = ReLU(Xb W1), ReLU in the GEMM epilogue),
   ``linear_forward``, the loss, then ``linear_backward(G2, Z1, W2, dx=G1, dw=W2, -lr, 1)``,
   which computes G1 = G2 W2ᵀ from the OLD W2 before folding the W2 step into its second GEMM,
   then ``act_backward_bias`` (G1 ∘= 1{Z1 > 0}, in place) and the folded W1 step.  W1 changes
   last, after every use of Z1: both gradients are those of the pre-step weights, as in hw0.
c. Buffers are allocated once per epoch call, for min(batch, N) rows; a last partial batch
   uses their leading rows (C-contiguous views).  A batch of X is a view of X when X already
   has the parameters' dtype and is C-contiguous, else it is converted into one reused buffer
   (never a copy of the whole data set).
d. dtypes: the parameters decide.  theta (or W1 and W2, which must share a dtype) must be
   float32 or float64 arrays; every kernel of the epoch runs in that dtype and X is converted
   to it batch by batch.  hw0 is float32 throughout and stays float32; float64 parameters
   train in float64.  (float64 X with float32 parameters trains in float32, where hw0's NumPy
   would form each gradient in float64 and store the step in float32.)  ``softmax_loss``
   follows fastbp.layers: float32 and float64 natively, integer logits in float64.
e. Validation comes before any kernel runs: 2-D X, X rows = len(y), parameter shapes chained
   from X's columns to the class count, integer labels in [0, num_classes), an int batch >= 1,
   a finite real lr, writeable parameter arrays.  Errors are ValueError / TypeError naming the
   argument, and a failing call leaves every parameter untouched (a bad label in the last batch
   is found before the first step).  A parameter that is not C-contiguous is trained in a
   contiguous copy that is written back at the end of the epoch.
f. Not done, deliberately: shuffling, biases, momentum, one-hot labels (hw0 has none).
   ``train_*`` evaluate loss and error blocks of rows at a time, so the (N, hidden) activations
   of a whole data set are never held at once; the numbers are hw0's up to float rounding.
"""

import contextlib
import math
import os

import numpy as np

from .._config import threads_for
from .. import _validation as val
from .._validation import as_array, as_float, as_labels, compute_dtype
from ..backend import kernels
from ..data import MNIST_IMAGES_MAGIC, MNIST_LABELS_MAGIC, read_idx

__all__ = [
    "add",
    "parse_mnist",
    "softmax_loss",
    "softmax_regression_epoch",
    "softmax_regression_epoch_cpp",
    "nn_epoch",
    "loss_err",
    "train_softmax",
    "train_nn",
]

_EVAL_ROWS = 4096  # rows per block when train_* evaluate the loss and error of a data set
_HEADER = "| Epoch | Train Loss | Train Err | Test Loss | Test Err |"
_ROW = "|  {:>4} |    {:.5f} |   {:.5f} |   {:.5f} |  {:.5f} |"


# --------------------------------------------------------------------------------------------
# hw0 API


def add(x, y):
    """hw0's warm-up exercise: return ``x + y``."""
    return x + y


def parse_mnist(image_filename, label_filename):
    """Read an MNIST images file and its labels file (IDX format, gzipped or not).

    Parameters
    ----------
    image_filename : str or os.PathLike
        IDX images file (magic number 2051), e.g. ``train-images-idx3-ubyte.gz``.
    label_filename : str or os.PathLike
        IDX labels file (magic number 2049), e.g. ``train-labels-idx1-ubyte.gz``.

    Returns
    -------
    X : ndarray of float32, shape (num_examples, rows * cols)
        The images, flattened row-major and divided by 255: pixel 0 is 0.0, pixel 255 is 1.0
        (for MNIST, ``X.min() == 0`` and ``X.max() == 1``).
    y : ndarray of uint8, shape (num_examples,)
        The labels as stored.

    Raises
    ------
    FileNotFoundError
        If a file does not exist.
    ValueError
        If a file is not the IDX file it should be (wrong magic number, truncated, over-long,
        corrupt gzip; see :func:`fastbp.data.read_idx`), or the two files hold different
        numbers of examples.  The message starts with the offending file's name.
    """
    images = read_idx(image_filename, magic=MNIST_IMAGES_MAGIC)
    labels = read_idx(label_filename, magic=MNIST_LABELS_MAGIC)
    n = images.shape[0]
    if labels.shape[0] != n:
        raise ValueError(
            f"{os.fspath(label_filename)}: holds {labels.shape[0]} labels but "
            f"{os.fspath(image_filename)} holds {n} images"
        )
    X = images.reshape(n, math.prod(images.shape[1:])).astype(np.float32)
    X /= 255
    return X, labels


def softmax_loss(Z, y):
    """Average softmax cross-entropy loss of logits `Z` for integer labels `y`.

    Parameters
    ----------
    Z : array_like, shape (batch_size, num_classes)
        Logits (any finite values: the row maximum is subtracted before exponentiating).
    y : array_like of int, shape (batch_size,)
        Class labels in [0, num_classes), any integer dtype (hw0 uses uint8).

    Returns
    -------
    loss : NumPy scalar of Z's dtype (float64 for integer Z, float32 for float16)
        ``mean_i (log sum_j exp(Z_ij) - Z_i,y_i)``.

    Raises
    ------
    ValueError
        If Z is not 2-D or empty, or y has the wrong shape or a label outside [0, num_classes).
    TypeError
        If Z is not real numeric or y does not hold integers.
    """
    z = _two_d(Z, "Z", "(batch_size, num_classes)")
    n, k = z.shape
    if n == 0:
        raise ValueError("Z is an empty batch (0 rows): the mean loss is undefined")
    if k == 0:
        raise ValueError("Z has no classes (0 columns)")
    labels = _labels(y, "y", n, k, f"Z has {n} rows and {k} classes")
    dtype = compute_dtype(z)
    loss = kernels().softmax_cross_entropy(
        as_float(z, "Z", dtype), labels, None, np.empty(n, np.float64), 1.0 / n,
        threads_for(n * k),
    )
    return dtype.type(loss)


def softmax_regression_epoch(X, y, theta, lr=0.1, batch=100):
    """One epoch of minibatch SGD on softmax regression (no bias), updating `theta` in place.

    For each batch ``Xb = X[i:i + batch]``, ``yb = y[i:i + batch]`` (``i`` in
    ``range(0, num_examples, batch)``: in order, no shuffling, a last partial batch included)::

        theta -= lr * Xb.T @ (softmax(Xb @ theta) - I_yb) / B        # B = len(Xb)

    Parameters
    ----------
    X : array_like, shape (num_examples, input_dim)
        Inputs (hw0: float32); converted to theta's dtype one batch at a time.
    y : array_like of int, shape (num_examples,)
        Labels in [0, num_classes), any integer dtype (hw0: uint8).
    theta : ndarray of float32 or float64, shape (input_dim, num_classes)
        Parameters, updated in place (must be writeable); the epoch computes in their dtype.
    lr : float, default 0.1
        Step size; any finite real number.
    batch : int, default 100
        Minibatch size, >= 1.

    Returns
    -------
    None

    Raises
    ------
    ValueError
        If X is not 2-D, shapes disagree (X rows vs len(y), theta rows vs X columns), a label
        is outside [0, theta.shape[1]), batch < 1, lr is not finite, or theta is read-only.
    TypeError
        If theta is not a float32 / float64 ndarray, y does not hold integers, X is not real
        numeric, batch is not an int or lr not a real number.

    Notes
    -----
    Everything is checked before the first step: a call that raises leaves theta unchanged.
    """
    X = _two_d(X, "X", "(num_examples, input_dim)")
    n, d = X.shape
    _parameter(theta, "theta", d, "X.shape[1]")
    labels = _labels(y, "y", n, theta.shape[1],
                     f"X has {n} rows; num_classes = theta.shape[1] = {theta.shape[1]}")
    lr, batch = val.real(lr, "lr"), val.integer(batch, "batch", 1)
    with _c_contiguous(theta) as (work,):
        _softmax_epoch(X, labels, work, lr, batch)


#: hw0's C++ twin of :func:`softmax_regression_epoch` (``simple_ml_ext``): the same function here.
softmax_regression_epoch_cpp = softmax_regression_epoch


def nn_epoch(X, y, W1, W2, lr=0.1, batch=100):
    """One epoch of minibatch SGD on the two-layer network ``ReLU(X W1) W2`` (no biases).

    For each batch ``Xb``, ``yb`` (in order, no shuffling, a last partial batch included), with
    B = len(Xb)::

        Z1 = ReLU(Xb @ W1)
        G2 = softmax(Z1 @ W2) - I_yb
        G1 = (Z1 > 0) * (G2 @ W2.T)
        W1 -= lr * Xb.T @ G1 / B ;  W2 -= lr * Z1.T @ G2 / B     # both from the old W1, W2

    Parameters
    ----------
    X : array_like, shape (num_examples, input_dim)
        Inputs (hw0: float32); converted to the weights' dtype one batch at a time.
    y : array_like of int, shape (num_examples,)
        Labels in [0, num_classes), any integer dtype (hw0: uint8).
    W1 : ndarray of float32 or float64, shape (input_dim, hidden_dim)
    W2 : ndarray, shape (hidden_dim, num_classes), the dtype of W1
        Weights, updated in place (both writeable, not sharing memory).
    lr : float, default 0.1
        Step size; any finite real number.
    batch : int, default 100
        Minibatch size, >= 1.

    Returns
    -------
    None

    Raises
    ------
    ValueError
        If X is not 2-D, shapes disagree (X rows vs len(y), W1 rows vs X columns, W2 rows vs
        W1 columns), a label is outside [0, W2.shape[1]), batch < 1, lr is not finite, or a
        weight array is read-only or shares memory with the other.
    TypeError
        If W1 or W2 is not a float32 / float64 ndarray or their dtypes differ, y does not hold
        integers, X is not real numeric, batch is not an int or lr not a real number.

    Notes
    -----
    Everything is checked before the first step: a call that raises leaves W1 and W2 unchanged.
    """
    X = _two_d(X, "X", "(num_examples, input_dim)")
    n, d = X.shape
    _parameter(W1, "W1", d, "X.shape[1]")
    _parameter(W2, "W2", W1.shape[1], "W1.shape[1]")
    if W2.dtype != W1.dtype:
        raise TypeError(f"W1 and W2 must have the same dtype, got {W1.dtype} and {W2.dtype}")
    if np.may_share_memory(W1, W2):
        raise ValueError("W1 and W2 must not share memory (both are updated in place)")
    labels = _labels(y, "y", n, W2.shape[1],
                     f"X has {n} rows; num_classes = W2.shape[1] = {W2.shape[1]}")
    lr, batch = val.real(lr, "lr"), val.integer(batch, "batch", 1)
    with _c_contiguous(W1, W2) as (w1, w2):
        _nn_epoch(X, labels, w1, w2, lr, batch)


def loss_err(h, y):
    """hw0's helper: the softmax loss of logits `h` and their error rate.

    Parameters
    ----------
    h : array_like, shape (num_examples, num_classes)
        Logits.
    y : array_like of int, shape (num_examples,)
        Labels in [0, num_classes).

    Returns
    -------
    loss : NumPy scalar of h's dtype
        ``softmax_loss(h, y)``.
    err : numpy.float64
        ``mean(h.argmax(axis=1) != y)``.

    Raises
    ------
    ValueError, TypeError
        As :func:`softmax_loss`.
    """
    loss = softmax_loss(h, y)
    return loss, np.mean(np.asarray(h).argmax(axis=1) != np.asarray(y))


def train_softmax(X_tr, y_tr, X_te, y_te, epochs=10, lr=0.5, batch=100, cpp=False):
    """Train softmax regression from theta = 0 and print hw0's table after every epoch.

    Parameters
    ----------
    X_tr, y_tr : training inputs (N, input_dim) and integer labels (N,)
        ``num_classes = y_tr.max() + 1``, as in hw0.
    X_te, y_te : test inputs (M, input_dim) and labels (M,) in [0, num_classes)
    epochs : int, default 10
        Epochs of :func:`softmax_regression_epoch` (>= 0).
    lr : float, default 0.5
    batch : int, default 100
    cpp : bool, default False
        Accepted for hw0 compatibility and ignored (the epoch is compiled either way).

    Returns
    -------
    None
        Prints ``| Epoch | Train Loss | Train Err | Test Loss | Test Err |`` and one row per
        epoch, formatted as hw0.  theta (float32 zeros of shape (input_dim, num_classes)) is
        not returned, as in hw0.

    Raises
    ------
    ValueError, TypeError
        For empty or mis-shaped data, non-integer or out-of-range labels, or bad epochs, lr,
        batch -- all before the header is printed.
    """
    X_tr, y_tr, X_te, y_te, k = _train_data(X_tr, y_tr, X_te, y_te)
    epochs, lr = val.integer(epochs, "epochs", 0), val.real(lr, "lr")
    batch = val.integer(batch, "batch", 1)
    theta = np.zeros((X_tr.shape[1], k), dtype=np.float32)
    print(_HEADER)
    for epoch in range(epochs):
        _softmax_epoch(X_tr, y_tr, theta, lr, batch)
        print(_ROW.format(epoch, *_evaluate(X_tr, y_tr, [theta]), *_evaluate(X_te, y_te, [theta])))


def train_nn(X_tr, y_tr, X_te, y_te, hidden_dim=500, epochs=10, lr=0.5, batch=100):
    """Train the two-layer ReLU network and print hw0's table after every epoch.

    Initialisation as hw0: ``np.random.seed(0)`` (this reseeds NumPy's global RNG), then
    ``W1 = randn(input_dim, hidden_dim) / sqrt(hidden_dim)`` and
    ``W2 = randn(hidden_dim, num_classes) / sqrt(num_classes)``, in float32.

    Parameters
    ----------
    X_tr, y_tr : training inputs (N, input_dim) and integer labels (N,)
        ``num_classes = y_tr.max() + 1``, as in hw0.
    X_te, y_te : test inputs (M, input_dim) and labels (M,) in [0, num_classes)
    hidden_dim : int, default 500
    epochs : int, default 10
        Epochs of :func:`nn_epoch` (>= 0).
    lr : float, default 0.5
    batch : int, default 100

    Returns
    -------
    None
        Prints hw0's table (see :func:`train_softmax`); the weights are not returned, as in
        hw0.

    Raises
    ------
    ValueError, TypeError
        As :func:`train_softmax`, and for a hidden_dim that is not an int >= 1.
    """
    X_tr, y_tr, X_te, y_te, k = _train_data(X_tr, y_tr, X_te, y_te)
    hidden_dim = val.integer(hidden_dim, "hidden_dim", 1)
    epochs, lr = val.integer(epochs, "epochs", 0), val.real(lr, "lr")
    batch = val.integer(batch, "batch", 1)
    np.random.seed(0)
    # hw0 divides the float32 randn by np.sqrt(...); under NumPy 1 (hw0's) that stays float32,
    # under NumPy 2 (NEP 50) it would promote to float64.  Divide in float32 as hw0 meant.
    W1 = np.random.randn(X_tr.shape[1], hidden_dim).astype(np.float32)
    W1 /= np.float32(np.sqrt(hidden_dim))
    W2 = np.random.randn(hidden_dim, k).astype(np.float32)
    W2 /= np.float32(np.sqrt(k))
    print(_HEADER)
    for epoch in range(epochs):
        _nn_epoch(X_tr, y_tr, W1, W2, lr, batch)
        print(_ROW.format(epoch, *_evaluate(X_tr, y_tr, [W1, W2]),
                          *_evaluate(X_te, y_te, [W1, W2])))


# --------------------------------------------------------------------------------------------
# The epochs on the kernels (arguments already validated; parameters C-contiguous)


def _row_blocks(X, dtype, size):
    """Yield ``(start, X[start:start + size])`` as C-contiguous `dtype` arrays, in order.

    A view of X when X already is C-contiguous `dtype`, else the rows converted into one buffer
    reused for every block (valid until the next block).
    """
    n = X.shape[0]
    direct = X.dtype == dtype and X.flags.c_contiguous
    buffer = None if direct else np.empty((min(size, n), X.shape[1]), dtype)
    for start in range(0, n, size):
        rows = X[start:start + size]
        if not direct:
            block = buffer[:rows.shape[0]]
            block[...] = rows
            rows = block
        yield start, rows


def _softmax_epoch(X, labels, theta, lr, batch):
    k = kernels()
    n, c = X.shape[0], theta.shape[1]
    rows = min(batch, n)
    logits = np.empty((rows, c), theta.dtype)
    grad = np.empty((rows, c), theta.dtype)
    row_loss = np.empty(rows, np.float64)
    for start, xb in _row_blocks(X, theta.dtype, batch):
        b = xb.shape[0]
        z, g = logits[:b], grad[:b]
        threads = threads_for(b * c)
        k.linear_forward(xb, theta, None, z, threads)
        k.softmax_cross_entropy(z, labels[start:start + b], g, row_loss[:b], 1.0 / b, threads)
        k.linear_backward(g, xb, theta, None, theta, None, -lr, 1.0, threads)


def _nn_epoch(X, labels, W1, W2, lr, batch):
    k = kernels()
    n, h, c = X.shape[0], W1.shape[1], W2.shape[1]
    rows, dtype = min(batch, n), W1.dtype
    Z1, G1 = np.empty((rows, h), dtype), np.empty((rows, h), dtype)
    logits, G2 = np.empty((rows, c), dtype), np.empty((rows, c), dtype)
    row_loss = np.empty(rows, np.float64)
    for start, xb in _row_blocks(X, dtype, batch):
        b = xb.shape[0]
        z1, g1, z2, g2 = Z1[:b], G1[:b], logits[:b], G2[:b]
        wide, narrow = threads_for(b * h), threads_for(b * c)
        k.linear_act_forward(xb, W1, None, "relu", 0.0, None, z1, wide)  # Z1 = ReLU(Xb W1)
        k.linear_forward(z1, W2, None, z2, narrow)
        k.softmax_cross_entropy(z2, labels[start:start + b], g2, row_loss[:b], 1.0 / b, narrow)
        # G1 = G2 W2ᵀ from the old W2 (dx comes first), then W2 -= lr Z1ᵀ G2 / B in the GEMM
        k.linear_backward(g2, z1, W2, g1, W2, None, -lr, 1.0, wide)
        k.act_backward_bias(g1, z1, "relu", 0.0, g1, None, 1.0, 0.0, wide)  # G1 *= (Z1 > 0)
        k.linear_backward(g1, xb, W1, None, W1, None, -lr, 1.0, wide)  # W1 -= lr Xbᵀ G1 / B


def _evaluate(X, labels, weights):
    """hw0's ``loss_err`` of the chain ReLU(...ReLU(X W_0)...) W_last, in blocks of rows.

    Returns ``(loss, err)``: the mean loss as a scalar of the weights' dtype and the error rate.
    """
    k = kernels()
    dtype, n = weights[0].dtype, X.shape[0]
    rows = min(_EVAL_ROWS, n)
    outputs = [np.empty((rows, w.shape[1]), dtype) for w in weights]
    row_loss = np.empty(rows, np.float64)
    total, wrong = 0.0, 0
    for start, block in _row_blocks(X, dtype, rows):
        b = block.shape[0]
        h = block
        for w, out in zip(weights[:-1], outputs):
            hidden = out[:b]
            k.linear_act_forward(h, w, None, "relu", 0.0, None, hidden, threads_for(hidden.size))
            h = hidden
        logits = outputs[-1][:b]
        k.linear_forward(h, weights[-1], None, logits, threads_for(logits.size))
        yb = labels[start:start + b]
        total += k.softmax_cross_entropy(logits, yb, None, row_loss[:b], 1.0,
                                         threads_for(logits.size))
        wrong += int(np.count_nonzero(logits.argmax(axis=1) != yb))
    return dtype.type(total / n), wrong / n


# --------------------------------------------------------------------------------------------
# Argument checks (all before any kernel runs)


def _two_d(a, name, shape):
    a = as_array(a, name)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D {shape}, got shape {a.shape}")
    return a


def _parameter(a, name, rows, rows_from):
    """A parameter updated in place: a writeable float32/float64 ndarray of shape (rows, >= 1)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(
            f"{name} must be a NumPy array (it is updated in place), got {type(a).__name__}"
        )
    if a.dtype not in val.FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got dtype {a.dtype}")
    if a.ndim != 2 or a.shape[0] != rows or a.shape[1] == 0:
        raise ValueError(
            f"{name} must have shape ({rows}, m) with {rows} = {rows_from} and m >= 1, "
            f"got {a.shape}"
        )
    if not a.flags.writeable:
        raise ValueError(f"{name} is read-only, but it is updated in place")


def _labels(y, name, n, k, context):
    """as_labels, with `context` (where n and k come from) appended to its ValueError."""
    try:
        return as_labels(y, name, n, k)
    except ValueError as exc:
        raise ValueError(f"{exc} ({context})") from None


@contextlib.contextmanager
def _c_contiguous(*params):
    """Yield the parameters as C-contiguous arrays; copies are written back on success."""
    work = [p if p.flags.c_contiguous else np.ascontiguousarray(p) for p in params]
    yield work
    for param, w in zip(params, work):
        if w is not param:
            param[...] = w


def _train_data(X_tr, y_tr, X_te, y_te):
    """Checked (X_tr, labels_tr, X_te, labels_te, num_classes) for train_softmax / train_nn."""
    X_tr = _two_d(X_tr, "X_tr", "(num_examples, input_dim)")
    X_te = _two_d(X_te, "X_te", "(num_examples, input_dim)")
    for name, X in (("X_tr", X_tr), ("X_te", X_te)):
        if X.shape[0] == 0:
            raise ValueError(f"{name} has no examples (0 rows)")
    if X_te.shape[1] != X_tr.shape[1]:
        raise ValueError(
            f"X_te has {X_te.shape[1]} columns but X_tr has {X_tr.shape[1]} (input_dim)"
        )
    y = np.asarray(y_tr)
    # hw0: num_classes = y_tr.max() + 1; a wrong dtype or shape is reported by _labels below
    k = max(int(y.max()) + 1, 1) if y.dtype.kind in "iu" and y.size else 1
    context = f"num_classes = y_tr.max() + 1 = {k}"
    y_tr = _labels(y, "y_tr", X_tr.shape[0], k, f"X_tr has {X_tr.shape[0]} rows; {context}")
    y_te = _labels(y_te, "y_te", X_te.shape[0], k, f"X_te has {X_te.shape[0]} rows; {context}")
    return X_tr, y_tr, X_te, y_te, k
