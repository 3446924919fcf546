# cython: language_level=3
"""Loss kernels: fused softmax cross-entropy, multiclass hinge (SVM) and squared error.

Design
------
a. Layout: inputs are C-contiguous (N, C) float32/float64 (``const``, so read-only arrays
   work) and C-contiguous int64 labels; one row is one sample, so all work is per row over
   contiguous memory.  ``row_loss`` is float64 (N,) for both dtypes.
b. Who allocates: nobody.  The caller passes every output (the gradient buffer, or None for
   the loss alone, and ``row_loss``) and owns it between calls.  The only scratch is on the
   stack: a few scalars and, on the loss-only paths, a BLOCK-element array per row call.
   Outputs must not overlap inputs or each other (ValueError); labels outside [0, C) raise
   ValueError before any row is touched (the public layer validates them already; this
   O(N) pass is what keeps a bad label from ever indexing outside a row).
c. Threads: ``prange`` over blocks of ROWS rows, ``schedule="static"``.  A row is handled by one
   thread with straight-line code whose result does not depend on the thread or the schedule, so
   ``row_loss`` is bitwise the same for any ``n_threads``; the returned total is summed
   serially in row order *after* the parallel loop (an OpenMP reduction would combine partial
   sums in an order that depends on the thread count).  Hence: bitwise identical results run
   to run and across thread counts.
d. Numerics:
   - Softmax shifts by the row max before exp, so exp never overflows (logits of ±1e4 are fine
     in float32), and takes the loss as logsumexp - z_y = log(Σ exp(z - max)) - (z_y - max).
     The sum is >= 1 (the max contributes exp(0) = 1), so there is never a log of a rounded 0.
   - exp is ``vexp`` (csrc/fastbp_math.h, branch-free so the loop vectorises).  The exp and
     log loops (_loss_math.pxd) are ``cloned_void`` functions: gcc builds them for AVX-512,
     AVX2 and the baseline (SSE2) and picks one per CPU at load time, every clone doing the
     same IEEE operations (no FMA contraction under -std=c99), so results do not depend on the
     CPU.  A scalar libm ``expf`` made this kernel 0.9x NumPy at C = 1000; results below the
     smallest normal flush to 0, which is harmless in a sum >= 1.
   - One exp per element: the rows of a block of ROWS = 32 are shifted (z - max) into the
     gradient buffer, ONE vectorised exp pass runs over the whole block in place, then each
     row is summed and rescaled in place by scale/Σ.  The exp, the shift and the rescale stay
     in the input dtype (float32 keeps its 8-lane vectors); every row sum is accumulated in
     double.  The row log is ``fastbp_log`` (csrc/fastbp_math.h, 0.77 ulp, branch-free), taken
     for the whole block in one vectorised pass.  Measured at C = 10 (1 thread, a loaded
     2-core machine): a row cost 43 ns with a per-row exp call (8-wide vectors plus a scalar
     tail of 2, 40% of the time) and a libm ``log`` per row, 20 ns with the block passes; the
     block path is bitwise the same per row as a one-row call (tested), so results do not
     depend on the thread count or on where a row falls in a block.  The compiled step
     (``softmax_xent_row``) runs the same arithmetic one row at a time.
   - Row sums use LANES = 8 independent double accumulators (element j goes to lane j % 8)
     folded in a fixed tree.  That order is written out, so it does not depend on alignment or
     on whether the compiler vectorised the loop, and the compiler may use SIMD adds for it
     without -ffast-math (which would allow reassociation, and is banned; see setup.py).  The
     loss-only path exps into BLOCK-sized stack scratch in the same lane order, so its loss is
     bitwise equal to the loss computed with the gradient.
   - SVM margins s_j - s_y + 1 are formed in the input dtype, as the NumPy course code does, so
     the kink decisions (strictly > 0 gets a gradient) match the reference exactly.
   - NaN inputs give NaN in that row's loss and gradient and in the total; nothing traps.
e. Not done: no mean (``scale`` is explicit; the public layer passes 1/N or 1/(N·D)); no label
   smoothing, class weights or ignore_index; no non-contiguous inputs (the Python layer makes
   them contiguous); no in-place gradient over the inputs (it would overwrite z_y / s_y before
   they are read).  Choosing n_threads (serial for small work) is the caller's policy.
"""
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t

from ._arrays cimport check_threads
from ._loss_math cimport ROWS, mse_row, softmax_xent_rows, svm_row

cnp.import_array()

__all__ = ["softmax_cross_entropy", "svm_hinge", "mse"]



# ---------------------------------------------------------------------------------------------
# Checks before nogil (cheap: O(1), plus one O(N) pass over the labels)

cdef inline bint _overlap(const void *a, size_t na, const void *b, size_t nb) noexcept:
    """True when the byte ranges [a, a + na) and [b, b + nb) intersect."""
    cdef const char *pa = <const char *>a
    cdef const char *pb = <const char *>b
    return na > 0 and nb > 0 and pa < pb + nb and pb < pa + na


cdef int _check_common(str fn, str x_name, Py_ssize_t n, Py_ssize_t c, object out,
                       str out_name, Py_ssize_t out_n, Py_ssize_t out_c, Py_ssize_t rl_n,
                       int n_threads) except -1:
    if out is not None and (out_n != n or out_c != c):
        raise ValueError(f"{fn}: {out_name} has shape ({out_n}, {out_c}), "
                         f"{x_name} has shape ({n}, {c})")
    if rl_n != n:
        raise ValueError(f"{fn}: row_loss has shape ({rl_n},), expected ({n},) rows of {x_name}")
    check_threads(fn, n_threads)
    return 0


cdef int _check_labels(str fn, str x_name, const int64_t[::1] labels, Py_ssize_t n,
                       Py_ssize_t c) except -1:
    cdef Py_ssize_t i, bad = -1
    if labels.shape[0] != n:
        raise ValueError(f"{fn}: labels has shape ({labels.shape[0]},), "
                         f"expected ({n},) rows of {x_name}")
    if n and c == 0:
        raise ValueError(f"{fn}: {x_name} has no columns (classes) but {n} rows")
    with nogil:
        for i in range(n):
            if labels[i] < 0 or labels[i] >= c:
                bad = i
                break
    if bad >= 0:
        raise ValueError(f"{fn}: labels[{bad}] = {labels[bad]} is outside [0, {c})")
    return 0


cdef int _check_disjoint(str fn, str out_name, const void *out, size_t out_bytes,
                         const void *rl, size_t rl_bytes, const void *x1, size_t x1_bytes,
                         const void *x2, size_t x2_bytes) except -1:
    """The outputs (gradient, row_loss) must not overlap each other or an input (x1, x2)."""
    if (_overlap(out, out_bytes, x1, x1_bytes) or _overlap(out, out_bytes, x2, x2_bytes)
            or _overlap(out, out_bytes, rl, rl_bytes)):
        raise ValueError(f"{fn}: {out_name} overlaps another argument")
    if _overlap(rl, rl_bytes, x1, x1_bytes) or _overlap(rl, rl_bytes, x2, x2_bytes):
        raise ValueError(f"{fn}: row_loss overlaps another argument")
    return 0


cdef double _scaled_total(const double[::1] row_loss, double scale) noexcept nogil:
    """scale · Σ_i row_loss[i], serially in row order (the same for every thread count)."""
    cdef double total = 0
    cdef Py_ssize_t i
    for i in range(row_loss.shape[0]):
        total += row_loss[i]
    return scale * total


# ---------------------------------------------------------------------------------------------
# Kernels

cdef inline void _class_rows(bint hinge, const floating *x, floating *d, Py_ssize_t rows,
                             Py_ssize_t c, const int64_t *y, double scale,
                             double *rl) noexcept nogil:
    """One block of `rows` (<= ROWS) rows: losses into rl, gradient rows into d (or NULL)."""
    cdef Py_ssize_t i
    if not hinge:
        softmax_xent_rows(x, d, rows, c, y, scale, rl)
        return
    for i in range(rows):
        rl[i] = svm_row(x + i * c, d + i * c if d != NULL else NULL, c, y[i], scale)


cdef double _classification(str fn, str x_name, str d_name, bint hinge,
                            const floating[:, ::1] x, const int64_t[::1] labels,
                            floating[:, ::1] dx, double[::1] row_loss, double scale,
                            int n_threads) except? -1:
    """The body of softmax_cross_entropy (hinge False) and svm_hinge (hinge True)."""
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1], blk, i0
    cdef Py_ssize_t n_blocks = (n + ROWS - 1) // ROWS
    cdef bint grad = dx is not None
    _check_common(fn, x_name, n, c, dx, d_name, dx.shape[0] if grad else 0,
                  dx.shape[1] if grad else 0, row_loss.shape[0], n_threads)
    _check_labels(fn, x_name, labels, n, c)
    if n == 0:
        return 0.0
    cdef const floating *px = &x[0, 0]
    cdef floating *d = &dx[0, 0] if grad else NULL
    cdef const int64_t *y = &labels[0]
    cdef double *rl = &row_loss[0]
    _check_disjoint(fn, d_name, d, n * c * sizeof(floating) * grad,
                    rl, n * sizeof(double), px, n * c * sizeof(floating), y, n * sizeof(int64_t))
    with nogil:  # blocks of ROWS rows; a row's result does not depend on its block
        if n_threads > 1:
            for blk in prange(n_blocks, schedule="static", num_threads=n_threads):
                i0 = blk * ROWS
                _class_rows(hinge, px + i0 * c, d + i0 * c if grad else NULL,
                            min(<Py_ssize_t>ROWS, n - i0), c, y + i0, scale, rl + i0)
        else:  # no parallel region: it costs ~0.8 us even with one thread
            for blk in range(n_blocks):
                i0 = blk * ROWS
                _class_rows(hinge, px + i0 * c, d + i0 * c if grad else NULL,
                            min(<Py_ssize_t>ROWS, n - i0), c, y + i0, scale, rl + i0)
    return _scaled_total(row_loss, scale)


def softmax_cross_entropy(const floating[:, ::1] logits not None,
                          const int64_t[::1] labels not None,
                          floating[:, ::1] dlogits,
                          double[::1] row_loss not None,
                          double scale=1.0, int n_threads=1):
    """row_loss_i = logsumexp(z_i) - z_{i,y_i}; dlogits = (softmax(z) - onehot(y))·scale;
    returns scale·Σ_i row_loss_i.

    Parameters
    ----------
    logits : (N, C) float32 or float64, C-contiguous (read-only is fine)
    labels : (N,) int64, C-contiguous, each in [0, C)
    dlogits : (N, C) of the logits' dtype, C-contiguous, written; or None for the loss alone
    row_loss : (N,) float64, C-contiguous, written (unscaled per-row losses)
    scale : float
        Multiplies the gradient and the returned total (1/N gives the batch mean).
    n_threads : int
        OpenMP threads over rows; the results are bitwise the same for any value.

    Raises
    ------
    ValueError
        If the shapes or dtypes disagree, a label is outside [0, C), C = 0 with N > 0, an output
        overlaps another argument, or n_threads < 1.
    """
    return _classification("softmax_cross_entropy", "logits", "dlogits", False, logits,
                           labels, dlogits, row_loss, scale, n_threads)


def svm_hinge(const floating[:, ::1] scores not None,
              const int64_t[::1] labels not None,
              floating[:, ::1] dscores,
              double[::1] row_loss not None,
              double scale=1.0, int n_threads=1):
    """row_loss_i = Σ_{j≠y_i} max(0, s_ij - s_{i,y_i} + 1); dscores_ij = scale·[margin_ij > 0]
    (j ≠ y_i), dscores_{i,y_i} = -scale·#{j : margin_ij > 0}; returns scale·Σ_i row_loss_i.

    Parameters and errors as for `softmax_cross_entropy` (scores for logits, dscores for
    dlogits).  A margin of exactly 0 contributes neither loss nor gradient.
    """
    return _classification("svm_hinge", "scores", "dscores", True, scores, labels, dscores,
                           row_loss, scale, n_threads)


def mse(const floating[:, ::1] pred not None,
        const floating[:, ::1] target not None,
        floating[:, ::1] dpred,
        double[::1] row_loss not None,
        double scale=1.0, int n_threads=1):
    """row_loss_i = Σ_j (p_ij - t_ij)²; dpred = 2·scale·(p - t); returns scale·Σ_i row_loss_i.

    Parameters
    ----------
    pred, target : (N, D) float32 or float64 (the same), C-contiguous (read-only is fine)
    dpred : (N, D) of that dtype, C-contiguous, written; or None for the loss alone
    row_loss : (N,) float64, C-contiguous, written
    scale : float
        1/(N·D) gives the mean over all elements.
    n_threads : int
        OpenMP threads over rows; the results are bitwise the same for any value.

    Raises
    ------
    ValueError
        If the shapes or dtypes disagree, an output overlaps another argument, or n_threads < 1.
    """
    cdef Py_ssize_t n = pred.shape[0], c = pred.shape[1], i
    cdef bint grad = dpred is not None
    if target.shape[0] != n or target.shape[1] != c:
        raise ValueError(f"mse: target has shape ({target.shape[0]}, {target.shape[1]}), "
                         f"pred has shape ({n}, {c})")
    _check_common("mse", "pred", n, c, dpred, "dpred",
                  dpred.shape[0] if grad else 0, dpred.shape[1] if grad else 0,
                  row_loss.shape[0], n_threads)
    if n == 0 or c == 0:  # no elements: nothing to read or write but zero row losses
        row_loss[:] = 0
        return 0.0
    cdef const floating *p = &pred[0, 0]
    cdef const floating *t = &target[0, 0]
    cdef floating *d = &dpred[0, 0] if grad else NULL
    cdef double *rl = &row_loss[0]
    cdef floating g = <floating>(2 * scale)
    _check_disjoint("mse", "dpred", d, n * c * sizeof(floating) * grad, rl, n * sizeof(double),
                    p, n * c * sizeof(floating), t, n * c * sizeof(floating))
    with nogil:
        if n_threads > 1:
            for i in prange(n, schedule="static", num_threads=n_threads):
                rl[i] = mse_row(p + i * c, t + i * c, d + i * c if grad else NULL, c, g)
        else:  # no parallel region: it costs ~0.8 us even with one thread
            for i in range(n):
                rl[i] = mse_row(p + i * c, t + i * c, d + i * c if grad else NULL, c, g)
    return _scaled_total(row_loss, scale)
