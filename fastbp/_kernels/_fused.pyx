# cython: language_level=3
"""Fused layer kernels for the training step: fewer passes over the activations.

Design
------
a. What is fused, and why: a training step's elementwise work is memory-bound, so each pass
   saved over an (N, H) activation is time saved.
   * ``linear_act_forward``: out = act(x·w + b).  The GEMM writes into `out`; one epilogue pass
     adds the bias and applies the activation in place (optionally also storing the
     pre-activation z = x·w + b in `pre`, which only GELU's backward needs).
   * ``act_backward_bias``: dz = dout ⊙ act'(·) and db = s·Σ_rows dz + β·db in ONE pass.  dz may
     be dout itself (in place), and db may be the bias itself (s = −lr, β = 1: an SGD step).
b. What the backward reads: the saved OUTPUT a for relu, leaky_relu (alpha >= 0), sigmoid,
   tanh and elu (alpha >= 0) — a > 0 exactly where z > 0, and elu'(z) = a + alpha for z <= 0 —
   so no pre-activation is stored for them; the pre-activation z for gelu / gelu_tanh.
   Negative alpha breaks the output form; the caller (fastbp._fused_step) never fuses it.
c. Layout and ownership: C-contiguous (N, M) buffers, `floating` (float32 / float64), all
   passed in; nothing is allocated.
d. Parallelism: the epilogue runs over rows; the backward over blocks of 256 columns, each
   thread owning whole columns and adding the rows in order, so db is identical for any thread
   count (the same order as _linear's bias gradient).  The activation is chosen once per row
   segment, never per element.
e. Activations are named by string at the Python boundary ("identity", "relu", "leaky_relu",
   "sigmoid", "tanh", "elu", "gelu", "gelu_tanh") and mapped once to an enum; the scalar math
   is shared with _activations.pyx through _activation_math.pxd.
"""
from cython cimport floating
from cython.parallel cimport prange

from ._activation_math cimport (
    elu_fwd, gelu_bwd, gelu_fwd, gelu_tanh_bwd, gelu_tanh_fwd, leaky_relu_bwd, leaky_relu_fwd,
    relu_bwd, relu_fwd, sigmoid_bwd, sigmoid_fwd, tanh_bwd, tanh_fwd,
)
from libc.stdint cimport int64_t
from libc.stdlib cimport calloc, free

from ._blas cimport gemm_rm
from ._loss_math cimport mse_row, softmax_xent_row, svm_row

__all__ = ["linear_act_forward", "act_backward_bias"]

cdef enum Act:
    IDENTITY, RELU, LEAKY_RELU, SIGMOID, TANH, ELU, GELU, GELU_TANH

ACTIVATION_CODES = {
    "identity": IDENTITY, "relu": RELU, "leaky_relu": LEAKY_RELU, "sigmoid": SIGMOID,
    "tanh": TANH, "elu": ELU, "gelu": GELU, "gelu_tanh": GELU_TANH,
}
DIFFERENTIATED_FROM_INPUT = ("gelu", "gelu_tanh")

cdef Py_ssize_t COL_BLOCK = 256


def _code(str activation):
    try:
        return ACTIVATION_CODES[activation]
    except KeyError:
        raise ValueError(f"activation must be one of {sorted(ACTIVATION_CODES)}, "
                         f"got {activation!r}") from None


cdef inline void _epilogue_row(floating *row, const floating *b, floating *pre, Py_ssize_t m,
                               int act, floating alpha) noexcept nogil:
    """row[j] := act(row[j] + b[j]) (b may be NULL); pre[j] := row[j] + b[j] when pre != NULL."""
    cdef Py_ssize_t j
    cdef floating z
    if b != NULL:
        for j in range(m):
            row[j] = row[j] + b[j]
    if pre != NULL:
        for j in range(m):
            pre[j] = row[j]
    if act == RELU:
        for j in range(m):
            row[j] = relu_fwd(row[j])
    elif act == LEAKY_RELU:
        for j in range(m):
            row[j] = leaky_relu_fwd(row[j], alpha)
    elif act == SIGMOID:
        for j in range(m):
            row[j] = sigmoid_fwd(row[j])
    elif act == TANH:
        for j in range(m):
            row[j] = tanh_fwd(row[j])
    elif act == ELU:
        for j in range(m):
            row[j] = elu_fwd(row[j], alpha)
    elif act == GELU:
        for j in range(m):
            row[j] = gelu_fwd(row[j])
    elif act == GELU_TANH:
        for j in range(m):
            row[j] = gelu_tanh_fwd(row[j])


cdef void _epilogue(floating *out, const floating *b, floating *pre, Py_ssize_t n,
                    Py_ssize_t m, int act, floating alpha, int n_threads) noexcept nogil:
    """_epilogue_row over all n rows; a plain loop on one thread (a parallel region costs
    ~0.8 us even with one thread, more than a small layer's epilogue)."""
    cdef Py_ssize_t i
    if n_threads > 1:
        for i in prange(n, schedule="static", num_threads=n_threads):
            _epilogue_row(out + i * m, b, pre + i * m if pre != NULL else NULL, m, act, alpha)
    else:
        for i in range(n):
            _epilogue_row(out + i * m, b, pre + i * m if pre != NULL else NULL, m, act, alpha)


def linear_act_forward(const floating[:, ::1] x, const floating[:, ::1] w,
                       const floating[::1] b, str activation, double alpha,
                       floating[:, ::1] pre, floating[:, ::1] out, int n_threads=1):
    """out := act(x @ w + b); pre := x @ w + b when pre is not None (required for gelu*)."""
    cdef int act = _code(activation)
    cdef Py_ssize_t n = x.shape[0], d = x.shape[1], m = w.shape[1], i
    if w.shape[0] != d:
        raise ValueError(f"linear_act_forward: w has {w.shape[0]} rows, x has {d} columns")
    if out.shape[0] != n or out.shape[1] != m:
        raise ValueError(f"linear_act_forward: out has shape {(out.shape[0], out.shape[1])}, "
                         f"expected {(n, m)}")
    if b is not None and b.shape[0] != m:
        raise ValueError(f"linear_act_forward: b has length {b.shape[0]}, expected {m}")
    if pre is not None and (pre.shape[0] != n or pre.shape[1] != m):
        raise ValueError(f"linear_act_forward: pre has shape {(pre.shape[0], pre.shape[1])}, "
                         f"expected {(n, m)}")
    if pre is None and activation in DIFFERENTIATED_FROM_INPUT:
        raise ValueError(f"linear_act_forward: {activation} needs `pre` (its backward reads z)")
    if n == 0 or m == 0:
        return
    cdef const floating *pb = NULL
    cdef floating *ppre = NULL
    cdef floating falpha = <floating>alpha
    if b is not None:
        pb = &b[0]
    if pre is not None:
        ppre = &pre[0, 0]
    with nogil:
        gemm_rm(False, False, <int>n, <int>m, <int>d, 1.0,
                &x[0, 0] if d else NULL, <int>max(d, 1),
                &w[0, 0] if d else NULL, <int>m, 0.0, &out[0, 0], <int>m)
        _epilogue(&out[0, 0], pb, ppre, n, m, act, falpha, n_threads)


cdef inline floating _elu_bwd_from_output(floating g, floating a, floating alpha) noexcept nogil:
    """ELU'(z)·g from the output a: 1 where a > 0, a + alpha (= alpha·e^z) elsewhere."""
    return g if a > 0 else g * (a + alpha)


cdef inline void _derivative_segment(const floating *g, const floating *s, floating *dz,
                                     Py_ssize_t w, int act, floating alpha) noexcept nogil:
    """dz[j] := g[j] * act'(.) for one row segment; s is the output a, or z for gelu*.

    Every branch passes loaded values to a select (the scalar helpers), never a conditional
    load (`g[j] if s[j] > 0 else 0` compiled to a branch: 10x slower on random signs).
    """
    cdef Py_ssize_t j
    if act == IDENTITY:
        for j in range(w):
            dz[j] = g[j]
    elif act == RELU:  # a > 0 exactly where z > 0
        for j in range(w):
            dz[j] = relu_bwd(g[j], s[j])
    elif act == LEAKY_RELU:  # likewise, for alpha >= 0
        for j in range(w):
            dz[j] = leaky_relu_bwd(g[j], s[j], alpha)
    elif act == SIGMOID:
        for j in range(w):
            dz[j] = sigmoid_bwd(g[j], s[j])
    elif act == TANH:
        for j in range(w):
            dz[j] = tanh_bwd(g[j], s[j])
    elif act == ELU:
        for j in range(w):
            dz[j] = _elu_bwd_from_output(g[j], s[j], alpha)
    elif act == GELU:
        for j in range(w):
            dz[j] = gelu_bwd(g[j], s[j])
    elif act == GELU_TANH:
        for j in range(w):
            dz[j] = gelu_tanh_bwd(g[j], s[j])


cdef void _backward_block(const floating *dout, const floating *saved, floating *dz,
                          floating *db, Py_ssize_t n, Py_ssize_t m, Py_ssize_t j0, Py_ssize_t j1,
                          int act, floating alpha, floating scale, floating beta) noexcept nogil:
    """Columns [j0, j1) of an (n, m) row-major block: dz = dout * act'(saved), db from dz."""
    cdef floating acc[256]
    cdef Py_ssize_t i, j, w = j1 - j0
    for j in range(w):
        acc[j] = 0
    for i in range(n):
        _derivative_segment(dout + i * m + j0, saved + i * m + j0, dz + i * m + j0, w, act, alpha)
        if db != NULL:
            for j in range(w):
                acc[j] = acc[j] + dz[i * m + j0 + j]
    if db == NULL:
        return
    if beta == 0:
        for j in range(w):
            db[j0 + j] = scale * acc[j]
    else:
        for j in range(w):
            db[j0 + j] = scale * acc[j] + beta * db[j0 + j]


cdef void _backward(const floating *dout, const floating *saved, floating *dz, floating *db,
                    Py_ssize_t n, Py_ssize_t m, int act, floating alpha, floating scale,
                    floating beta, int n_threads) noexcept nogil:
    """dz := dout * act'(saved) and db := scale * Σ_rows dz + beta * db, over column blocks."""
    cdef Py_ssize_t blk, n_blocks = (m + COL_BLOCK - 1) // COL_BLOCK
    if n_threads > 1:
        for blk in prange(n_blocks, schedule="static", num_threads=n_threads):
            _backward_block(dout, saved, dz, db, n, m, blk * COL_BLOCK,
                            min(m, (blk + 1) * COL_BLOCK), act, alpha, scale, beta)
    else:
        for blk in range(n_blocks):
            _backward_block(dout, saved, dz, db, n, m, blk * COL_BLOCK,
                            min(m, (blk + 1) * COL_BLOCK), act, alpha, scale, beta)


def act_backward_bias(const floating[:, ::1] dout, const floating[:, ::1] saved,
                      str activation, double alpha, floating[:, ::1] dz, floating[::1] db,
                      double scale=1.0, double beta=0.0, int n_threads=1):
    """dz := dout * act'(saved);  db := scale * Σ_rows dz + beta * db  (db may be None).

    `saved` is the forward output for every activation except gelu / gelu_tanh (their
    pre-activation).  dz may be dout itself.
    """
    cdef int act = _code(activation)
    cdef Py_ssize_t n = dout.shape[0], m = dout.shape[1], blk
    for name, arr in (("saved", saved), ("dz", dz)):
        if arr.shape[0] != n or arr.shape[1] != m:
            raise ValueError(f"act_backward_bias: {name} has shape "
                             f"{(arr.shape[0], arr.shape[1])}, expected {(n, m)}")
    if db is not None and db.shape[0] != m:
        raise ValueError(f"act_backward_bias: db has length {db.shape[0]}, expected {m}")
    if m == 0:
        return
    cdef floating *pdb = NULL
    if db is not None:
        pdb = &db[0]
    if n == 0:
        if pdb != NULL:
            for blk in range(m):
                pdb[blk] = 0 if beta == 0 else <floating>(beta * pdb[blk])
        return
    with nogil:
        _backward(&dout[0, 0], &saved[0, 0], &dz[0, 0], pdb, n, m, act, <floating>alpha,
                  <floating>scale, <floating>beta, n_threads)


# ------------------------------------------------------------------------------------------------
# The whole training step in one nogil call (fastbp.nn.Sequential.train_step's compiled path)

cdef enum LossKind:
    SOFTMAX_XENT, HINGE, SQUARED

LOSS_KINDS = {"softmax_cross_entropy": SOFTMAX_XENT, "svm_hinge": HINGE, "mse": SQUARED}

cdef struct Layer:
    Py_ssize_t d_in, d_out
    int act
    double alpha
    void *w           # (d_in, d_out) parameters
    void *b           # (d_out,) or NULL
    void *w_target    # where the weight-gradient GEMM writes: w itself (plain SGD) or a velocity
    void *b_target
    void *out         # (n, d_out) activation output
    void *pre         # (n, d_out) pre-activation, for gelu*; else NULL
    void *dx          # (n, d_in) gradient w.r.t. the layer input; NULL for the first layer


cdef void *_address(a):
    return <void *><size_t>a.ctypes.data if a is not None else NULL


cdef inline double _loss_row(int loss, const floating *h, const int64_t *labels,
                            const floating *target, floating *dlogits, Py_ssize_t c,
                            Py_ssize_t i, double scale) noexcept nogil:
    """Row i's loss (unscaled) and its gradient row (scaled) for the step's loss kind."""
    if loss == SOFTMAX_XENT:
        return softmax_xent_row(h + i * c, dlogits + i * c, c, labels[i], scale)
    if loss == HINGE:
        return svm_row(h + i * c, dlogits + i * c, c, labels[i], scale)
    return mse_row(h + i * c, target + i * c, dlogits + i * c, c, <floating>(2 * scale))


cdef void _descend(floating *w, const floating *v, Py_ssize_t size, floating step,
                   int n_threads) noexcept nogil:
    """w -= step * v."""
    cdef Py_ssize_t k
    if n_threads > 1:
        for k in prange(size, schedule="static", num_threads=n_threads):
            w[k] = w[k] - step * v[k]
    else:
        for k in range(size):
            w[k] = w[k] - step * v[k]


cdef double _step(floating dtype_tag, Layer *layers, int n_layers, Py_ssize_t n, const floating *x,
                  const int64_t *labels, const floating *target, int loss, floating *dlogits,
                  double *row_loss, double lr, double momentum, int n_threads,
                  Py_ssize_t min_parallel) noexcept nogil:
    """Forward, loss, backward and an SGD (momentum) update; returns the mean loss."""
    cdef Layer *L
    cdef const floating *h = x
    cdef floating *d
    cdef Py_ssize_t i, c
    cdef int l, nt
    cdef double total = 0, loss_scale
    cdef floating scale = 1, beta = momentum, step = <floating>lr
    if momentum == 0:
        scale, beta = <floating>-lr, 1   # the update itself happens inside the GEMM
    for l in range(n_layers):
        L = &layers[l]
        gemm_rm(False, False, <int>n, <int>L.d_out, <int>L.d_in, 1.0, h, <int>L.d_in,
                <floating *>L.w, <int>L.d_out, 0.0, <floating *>L.out, <int>L.d_out)
        _epilogue(<floating *>L.out, <floating *>L.b, <floating *>L.pre, n, L.d_out, L.act,
                  <floating>L.alpha, n_threads if n * L.d_out >= min_parallel else 1)
        h = <floating *>L.out
    c = layers[n_layers - 1].d_out
    nt = n_threads if n * c >= min_parallel else 1
    loss_scale = 1.0 / n if loss != SQUARED else 1.0 / (n * c)
    if nt > 1:
        for i in prange(n, schedule="static", num_threads=nt):
            row_loss[i] = _loss_row(loss, h, labels, target, dlogits, c, i, loss_scale)
    else:
        for i in range(n):
            row_loss[i] = _loss_row(loss, h, labels, target, dlogits, c, i, loss_scale)
    for i in range(n):  # in row order: the same total for any thread count
        total += row_loss[i]
    d = dlogits
    for l in range(n_layers - 1, -1, -1):
        L = &layers[l]
        h = x if l == 0 else <floating *>layers[l - 1].out
        nt = n_threads if n * L.d_out >= min_parallel else 1
        _backward(d, <floating *>L.pre if L.pre != NULL else <floating *>L.out, d,
                  <floating *>L.b_target, n, L.d_out, L.act, <floating>L.alpha, scale, beta, nt)
        if l > 0:  # dx from the old weights, before the GEMM below may update them
            gemm_rm(False, True, <int>n, <int>L.d_in, <int>L.d_out, 1.0, d, <int>L.d_out,
                    <floating *>L.w, <int>L.d_out, 0.0, <floating *>L.dx, <int>L.d_in)
        gemm_rm(True, False, <int>L.d_in, <int>L.d_out, <int>n, scale, h, <int>L.d_in, d,
                <int>L.d_out, beta, <floating *>L.w_target, <int>L.d_out)
        if momentum != 0:  # w -= lr * velocity, for the weights and the bias
            _descend(<floating *>L.w, <floating *>L.w_target, L.d_in * L.d_out, step,
                     n_threads if L.d_in * L.d_out >= min_parallel else 1)
            if L.b != NULL:
                _descend(<floating *>L.b, <floating *>L.b_target, L.d_out, step, 1)
        d = <floating *>L.dx
    return total * loss_scale


cdef class FusedStep:
    """A compiled SGD / momentum training step for one chain of Linear (+ activation) layers.

    Built once per (model, batch size, loss, optimizer) by fastbp._fused_step, which checks
    every array (C-contiguous, one float dtype, consistent shapes) and keeps them alive here;
    :meth:`run` then checks only the batch and runs forward, loss, backward and the update in
    one nogil call.  Parameters are updated in place: the weight-gradient GEMM writes
    ``W := W - lr * xᵀ·dz`` directly (momentum 0) or the velocity ``v := xᵀ·dz + mu * v``
    followed by ``W -= lr * v``.
    """

    cdef Layer *layers
    cdef int n_layers, loss, is_double
    cdef Py_ssize_t n, n_in, n_out
    cdef void *dlogits
    cdef double *row_loss
    cdef readonly object arrays  # everything the pointers point into

    def __cinit__(self, layers, str loss, dlogits, row_loss):
        """layers: [(W, b, W_target, b_target, out, pre, dx, activation, alpha)], first first."""
        self.n_layers = len(layers)
        self.layers = <Layer *>calloc(self.n_layers, sizeof(Layer))
        if self.layers == NULL:
            raise MemoryError()
        self.loss = LOSS_KINDS[loss]
        self.is_double = dlogits.dtype.itemsize == 8
        self.n = dlogits.shape[0]
        self.n_in = layers[0][0].shape[0]
        self.n_out = dlogits.shape[1]
        self.dlogits = _address(dlogits)
        self.row_loss = <double *>_address(row_loss)
        self.arrays = (layers, dlogits, row_loss)
        for l, (w, b, w_target, b_target, out, pre, dx, activation, alpha) in enumerate(layers):
            self.layers[l] = Layer(w.shape[0], w.shape[1], _code(activation), alpha,
                                   _address(w), _address(b), _address(w_target),
                                   _address(b_target), _address(out), _address(pre),
                                   _address(dx))

    def __dealloc__(self):
        free(self.layers)

    def run(self, x, labels, target, double lr, double momentum, int n_threads,
            Py_ssize_t min_parallel):
        """One step on batch x (n, n_in) with int64 labels (n,) or a target (n, n_out) for MSE;
        x, labels and target must be C-contiguous and of the plan's dtype (the caller checks).
        Labels outside [0, n_out) raise ValueError before anything is written.  Returns the
        mean loss before the update."""
        cdef const int64_t[::1] y
        cdef const int64_t *py = NULL
        cdef Py_ssize_t i
        cdef double result
        if x.shape[0] != self.n or x.shape[1] != self.n_in:
            raise ValueError(f"FusedStep.run: x has shape {x.shape}, the plan expects "
                             f"({self.n}, {self.n_in})")
        if self.loss != SQUARED:
            y = labels
            if y.shape[0] != self.n:
                raise ValueError(f"FusedStep.run: {y.shape[0]} labels for {self.n} samples")
            py = &y[0]
            for i in range(self.n):
                if py[i] < 0 or py[i] >= self.n_out:
                    raise ValueError(f"y must lie in [0, {self.n_out}), found label {py[i]}")
        elif target.shape != (self.n, self.n_out):
            raise ValueError(f"target must have shape {(self.n, self.n_out)}, got {target.shape}")
        cdef void *px = _address(x)
        cdef void *pt = _address(target) if self.loss == SQUARED else NULL
        with nogil:
            if self.is_double:
                result = _step(<double>0, self.layers, self.n_layers, self.n, <double *>px, py,
                               <double *>pt, self.loss, <double *>self.dlogits, self.row_loss,
                               lr, momentum, n_threads, min_parallel)
            else:
                result = _step(<float>0, self.layers, self.n_layers, self.n, <float *>px, py,
                               <float *>pt, self.loss, <float *>self.dlogits, self.row_loss,
                               lr, momentum, n_threads, min_parallel)
        return result
