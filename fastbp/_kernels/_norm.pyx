# cython: language_level=3
"""Normalization kernels: batch norm (train / test forward, backward) and layer norm (forward,
backward), float32 and float64, nogil.

Design
------
a. Layout and entry: x, out, dout, dx are 1-D C-contiguous ndarrays holding an (N, D) row-major
   matrix (the Python layer ravels, a view for C-contiguous input); gamma and beta are (D,) and
   fix D, so N = len(x) // D.  The first array fixes the dtype (float32 or float64); every
   other array of that dtype must match it.  The per-feature (batch norm) or per-row (layer
   norm) statistics the backward reads, ``mean`` and ``inv_std`` = 1/sqrt(var + eps), are
   float64 for both dtypes (a float32 mean of data near 1e4 is off by up to 5e-4, which is 5%
   of a standard deviation of 1e-2).  The entry validates with the NumPy C-API (_arrays.pxd:
   type, dtype, 1-D, contiguity, writeable, lengths, each error naming the kernel and the
   argument), then checks D >= 1, N * D == len(x), eps >= 0, momentum in [0, 1] and
   n_threads >= 1, all before the GIL is released and before anything is written.
b. Who allocates: nobody.  Every output is passed in and overwritten; the running statistics
   of batch norm are read and written in place.  Scratch is on the stack: COLS doubles per
   accumulator in a column block.  ``out`` may be ``x`` and ``dx`` may be ``x`` or ``dout``
   (in place): every element is read for the last time before it is written (layer norm's
   backward reduces dgamma / dbeta before its dx pass for that reason).
c. Threads, and why results do not depend on them: every reduced value has exactly ONE owner
   that sums its terms in a fixed order.
   - Batch norm is parallel over column blocks of COLS features: a block's thread walks all N
     rows in order, adding row i's COLS contiguous values to COLS per-column double
     accumulators (contiguous, so the inner loop vectorises over columns), then normalises the
     block.  A column's sums are the same whatever thread owns it.
   - Layer norm is parallel over rows: a row's thread sums it in LANES fixed lanes (element j
     into lane j % LANES, folded in a fixed tree), so the loop has independent adds to
     pipeline without reassociation (no -ffast-math).  Its dgamma / dbeta (sums over rows) run
     as a second region, parallel over column blocks as in batch norm, each column summed over
     rows in order.
   One thread runs plain loops (entering a parallel region costs ~0.8 us even for one thread);
   more never exceed the number of tasks.  So outputs are bitwise identical for every
   n_threads, run to run.
d. Numerics:
   - Two-pass variance: the mean first, then the mean of squared deviations from it, both
     accumulated in double; never E[x^2] - E[x]^2, which cancels catastrophically for data with
     a large mean (tested with mean 1e4, std 1e-2 in both dtypes).  Variance is biased (/N),
     as the course and PyTorch normalise; eps is added INSIDE the square root.
   - x_hat = (x - mean) * inv_std, the scale/shift and the backward formula are computed in
     double and rounded once to the dtype; the backward recomputes x_hat from x, mean and
     inv_std (no x_hat buffer is kept, so forward writes one array, not two).
   - Backward in the compact one-pass form (per feature for batch norm, per row for layer norm,
     with g = dout for batch norm and g = dout * gamma for layer norm, M = N or D):
         dx = k * (g - mean(g) - x_hat * mean(g * x_hat)),  k = inv_std (* gamma for batch norm)
         dgamma = sum_rows(dout * x_hat),  dbeta = sum_rows(dout).
   - Running statistics (batch norm, train mode): running := momentum * running
     + (1 - momentum) * batch_stat, the course's convention (momentum weights the OLD value;
     fastbp.nn.BatchNorm1d passes 1 - its PyTorch momentum).  With ``unbiased`` the variance
     fed to running_var is var * N / (N - 1) (PyTorch); normalisation always uses the biased
     one.  eps = 0 with a constant feature gives inv_std = inf, as the formula says.
e. Not done: non-contiguous buffers, spatial (N, C, H, W) batch norm, group norm, per-ISA
   clones of the loops, fusion with the preceding GEMM's epilogue, a backward for test mode
   (the Python layers refuse it).  Choosing n_threads (serial for small work) is the caller's
   policy (fastbp._config.threads_for).
"""
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt

from ._arrays cimport array_data, float_type, length

cnp.import_array()

__all__ = [
    "batchnorm_forward_train",
    "batchnorm_forward_test",
    "batchnorm_backward",
    "layernorm_forward",
    "layernorm_backward",
]

cdef enum:
    COLS = 64   # features per column block (batch norm; layer norm's dgamma/dbeta pass)
    LANES = 8   # independent partial sums per row (layer norm)


# ---------------------------------------------------------------------------------------------
# Column blocks: features [j0, j0 + w) of an (n, d) matrix, every row, in row order (design c)

cdef inline Py_ssize_t _n_blocks(Py_ssize_t d) noexcept nogil:
    return (d + COLS - 1) // COLS


cdef inline Py_ssize_t _block_width(Py_ssize_t d, Py_ssize_t blk) noexcept nogil:
    return min(<Py_ssize_t>COLS, d - blk * COLS)


cdef void _bn_train_block(const floating *x, const floating *gamma, const floating *beta,
                          floating *out, double *mean, double *inv_std, floating *run_mean,
                          floating *run_var, Py_ssize_t n, Py_ssize_t d, Py_ssize_t blk,
                          double eps, double momentum, double var_scale) noexcept nogil:
    """Batch statistics, running averages and the normalised output of one column block."""
    cdef Py_ssize_t j0 = blk * COLS, w = _block_width(d, blk), i, j
    cdef double acc[COLS]
    cdef double mu[COLS]
    cdef double scale[COLS]
    cdef double t, var
    cdef const floating *row
    for j in range(w):
        acc[j] = 0
    for i in range(n):
        row = x + i * d + j0
        for j in range(w):
            acc[j] += row[j]
    for j in range(w):
        mu[j] = acc[j] / n
        acc[j] = 0
    for i in range(n):
        row = x + i * d + j0
        for j in range(w):
            t = row[j] - mu[j]
            acc[j] += t * t
    for j in range(w):
        var = acc[j] / n
        mean[j0 + j] = mu[j]
        inv_std[j0 + j] = 1.0 / sqrt(var + eps)
        scale[j] = gamma[j0 + j] * inv_std[j0 + j]
        run_mean[j0 + j] = <floating>(momentum * run_mean[j0 + j] + (1.0 - momentum) * mu[j])
        run_var[j0 + j] = <floating>(momentum * run_var[j0 + j]
                                     + (1.0 - momentum) * (var * var_scale))
    _affine_block(x, beta, out, n, d, j0, w, mu, scale)


cdef void _bn_test_block(const floating *x, const floating *gamma, const floating *beta,
                         const floating *run_mean, const floating *run_var, floating *out,
                         Py_ssize_t n, Py_ssize_t d, Py_ssize_t blk, double eps) noexcept nogil:
    """out = (x - running_mean) * gamma / sqrt(running_var + eps) + beta on one column block."""
    cdef Py_ssize_t j0 = blk * COLS, w = _block_width(d, blk), j
    cdef double mu[COLS]
    cdef double scale[COLS]
    for j in range(w):
        mu[j] = run_mean[j0 + j]
        scale[j] = gamma[j0 + j] / sqrt(<double>run_var[j0 + j] + eps)
    _affine_block(x, beta, out, n, d, j0, w, mu, scale)


cdef inline void _affine_block(const floating *x, const floating *beta, floating *out,
                               Py_ssize_t n, Py_ssize_t d, Py_ssize_t j0, Py_ssize_t w,
                               const double *mu, const double *scale) noexcept nogil:
    """out[i, j0 + j] = (x[i, j0 + j] - mu[j]) * scale[j] + beta[j0 + j], in double."""
    cdef Py_ssize_t i, j
    cdef const floating *row
    cdef floating *orow
    for i in range(n):
        row = x + i * d + j0
        orow = out + i * d + j0
        for j in range(w):
            orow[j] = <floating>((row[j] - mu[j]) * scale[j] + beta[j0 + j])


cdef void _param_grads_block(const floating *dout, const floating *x, const double *mean,
                             const double *inv_std, bint per_row, floating *dgamma,
                             floating *dbeta, Py_ssize_t n, Py_ssize_t d, Py_ssize_t blk,
                             double *sum_g, double *sum_gx) noexcept nogil:
    """dbeta = sum_i dout, dgamma = sum_i dout * x_hat over one column block; x_hat uses the
    statistics of the column (batch norm) or of the row (layer norm, per_row).  The column
    sums are also left in sum_g / sum_gx (length COLS) for batch norm's dx pass."""
    cdef Py_ssize_t j0 = blk * COLS, w = _block_width(d, blk), i, j
    cdef double mu[COLS]
    cdef double inv[COLS]
    cdef double g
    cdef const floating *row
    cdef const floating *grow
    for j in range(w):
        sum_g[j] = 0
        sum_gx[j] = 0
        if not per_row:
            mu[j] = mean[j0 + j]
            inv[j] = inv_std[j0 + j]
    for i in range(n):
        row = x + i * d + j0
        grow = dout + i * d + j0
        if per_row:  # one row's statistics for the whole block (decided per row, not per element)
            for j in range(w):
                mu[j] = mean[i]
                inv[j] = inv_std[i]
        for j in range(w):
            g = grow[j]
            sum_g[j] += g
            sum_gx[j] += g * ((row[j] - mu[j]) * inv[j])
    for j in range(w):
        dbeta[j0 + j] = <floating>sum_g[j]
        dgamma[j0 + j] = <floating>sum_gx[j]


cdef void _bn_backward_block(const floating *dout, const floating *x, const floating *gamma,
                             const double *mean, const double *inv_std, floating *dx,
                             floating *dgamma, floating *dbeta, Py_ssize_t n, Py_ssize_t d,
                             Py_ssize_t blk) noexcept nogil:
    """dgamma, dbeta and dx = k * (g - mean(g) - x_hat * mean(g x_hat)) on one column block."""
    cdef Py_ssize_t j0 = blk * COLS, w = _block_width(d, blk), i, j
    cdef double sum_g[COLS]
    cdef double sum_gx[COLS]
    cdef double mu[COLS]
    cdef double inv[COLS]
    cdef double k[COLS]
    cdef const floating *row
    cdef const floating *grow
    cdef floating *drow
    _param_grads_block(dout, x, mean, inv_std, False, dgamma, dbeta, n, d, blk, sum_g, sum_gx)
    for j in range(w):
        mu[j] = mean[j0 + j]
        inv[j] = inv_std[j0 + j]
        k[j] = gamma[j0 + j] * inv[j]
        sum_g[j] /= n
        sum_gx[j] /= n
    for i in range(n):
        row = x + i * d + j0
        grow = dout + i * d + j0
        drow = dx + i * d + j0
        for j in range(w):
            drow[j] = <floating>(k[j] * (grow[j] - sum_g[j]
                                         - ((row[j] - mu[j]) * inv[j]) * sum_gx[j]))


cdef void _param_grads(const floating *dout, const floating *x, const double *mean,
                       const double *inv_std, floating *dgamma, floating *dbeta, Py_ssize_t n,
                       Py_ssize_t d, Py_ssize_t blk) noexcept nogil:
    """Layer norm's dgamma / dbeta on one column block (its own stack scratch)."""
    cdef double sum_g[COLS]
    cdef double sum_gx[COLS]
    _param_grads_block(dout, x, mean, inv_std, True, dgamma, dbeta, n, d, blk, sum_g, sum_gx)


# ---------------------------------------------------------------------------------------------
# Rows (layer norm): LANES fixed partial sums per row, folded in a fixed tree (design c)

cdef inline double _fold(const double *acc) noexcept nogil:
    return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))


cdef inline void _zero(double *acc) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(LANES):
        acc[k] = 0


cdef inline double _row_mean(const floating *x, Py_ssize_t d) noexcept nogil:
    cdef double acc[LANES]
    cdef Py_ssize_t b, k, j
    _zero(acc)
    for b in range(d // LANES):
        for k in range(LANES):
            acc[k] += x[b * LANES + k]
    for j in range(d - d % LANES, d):
        acc[j % LANES] += x[j]
    return _fold(acc) / d


cdef inline double _row_var(const floating *x, Py_ssize_t d, double mu) noexcept nogil:
    """Mean of squared deviations from mu (the second pass of a two-pass variance)."""
    cdef double acc[LANES]
    cdef double t
    cdef Py_ssize_t b, k, j
    _zero(acc)
    for b in range(d // LANES):
        for k in range(LANES):
            t = x[b * LANES + k] - mu
            acc[k] += t * t
    for j in range(d - d % LANES, d):
        t = x[j] - mu
        acc[j % LANES] += t * t
    return _fold(acc) / d


cdef void _ln_forward_row(const floating *x, const floating *gamma, const floating *beta,
                          floating *out, double *mean, double *inv_std, Py_ssize_t d,
                          Py_ssize_t i, double eps) noexcept nogil:
    x += i * d
    out += i * d
    cdef double mu = _row_mean(x, d)
    cdef double inv = 1.0 / sqrt(_row_var(x, d, mu) + eps)
    cdef Py_ssize_t j
    mean[i] = mu
    inv_std[i] = inv
    for j in range(d):
        out[j] = <floating>(((x[j] - mu) * inv) * gamma[j] + beta[j])


cdef void _ln_backward_row(const floating *dout, const floating *x, const floating *gamma,
                           const double *mean, const double *inv_std, floating *dx,
                           Py_ssize_t d, Py_ssize_t i) noexcept nogil:
    """dx = inv * (g - mean(g) - x_hat * mean(g x_hat)) with g = dout * gamma, over one row."""
    dout += i * d
    x += i * d
    dx += i * d
    cdef double mu = mean[i], inv = inv_std[i], g, xh
    cdef double acc_g[LANES]
    cdef double acc_gx[LANES]
    cdef Py_ssize_t b, k, j
    _zero(acc_g)
    _zero(acc_gx)
    for b in range(d // LANES):
        for k in range(LANES):
            j = b * LANES + k
            g = <double>dout[j] * gamma[j]
            acc_g[k] += g
            acc_gx[k] += g * ((x[j] - mu) * inv)
    for j in range(d - d % LANES, d):
        g = <double>dout[j] * gamma[j]
        acc_g[j % LANES] += g
        acc_gx[j % LANES] += g * ((x[j] - mu) * inv)
    cdef double mean_g = _fold(acc_g) / d, mean_gx = _fold(acc_gx) / d
    for j in range(d):
        xh = (x[j] - mu) * inv
        dx[j] = <floating>(inv * (<double>dout[j] * gamma[j] - mean_g - xh * mean_gx))


# ---------------------------------------------------------------------------------------------
# Loops over tasks (serial for one thread, design c)

cdef void _bn_train(const floating *x, const floating *gamma, const floating *beta,
                    floating *out, double *mean, double *inv_std, floating *run_mean,
                    floating *run_var, Py_ssize_t n, Py_ssize_t d, double eps, double momentum,
                    double var_scale, int n_threads) noexcept nogil:
    cdef Py_ssize_t blk, nb = _n_blocks(d)
    cdef int threads = <int>min(<Py_ssize_t>n_threads, nb)
    if threads <= 1:
        for blk in range(nb):
            _bn_train_block(x, gamma, beta, out, mean, inv_std, run_mean, run_var, n, d, blk,
                            eps, momentum, var_scale)
    else:
        for blk in prange(nb, schedule="static", num_threads=threads):
            _bn_train_block(x, gamma, beta, out, mean, inv_std, run_mean, run_var, n, d, blk,
                            eps, momentum, var_scale)


cdef void _bn_test(const floating *x, const floating *gamma, const floating *beta,
                   const floating *run_mean, const floating *run_var, floating *out,
                   Py_ssize_t n, Py_ssize_t d, double eps, int n_threads) noexcept nogil:
    cdef Py_ssize_t blk, nb = _n_blocks(d)
    cdef int threads = <int>min(<Py_ssize_t>n_threads, nb)
    if threads <= 1:
        for blk in range(nb):
            _bn_test_block(x, gamma, beta, run_mean, run_var, out, n, d, blk, eps)
    else:
        for blk in prange(nb, schedule="static", num_threads=threads):
            _bn_test_block(x, gamma, beta, run_mean, run_var, out, n, d, blk, eps)


cdef void _bn_backward(const floating *dout, const floating *x, const floating *gamma,
                       const double *mean, const double *inv_std, floating *dx,
                       floating *dgamma, floating *dbeta, Py_ssize_t n, Py_ssize_t d,
                       int n_threads) noexcept nogil:
    cdef Py_ssize_t blk, nb = _n_blocks(d)
    cdef int threads = <int>min(<Py_ssize_t>n_threads, nb)
    if threads <= 1:
        for blk in range(nb):
            _bn_backward_block(dout, x, gamma, mean, inv_std, dx, dgamma, dbeta, n, d, blk)
    else:
        for blk in prange(nb, schedule="static", num_threads=threads):
            _bn_backward_block(dout, x, gamma, mean, inv_std, dx, dgamma, dbeta, n, d, blk)


cdef void _ln_forward(const floating *x, const floating *gamma, const floating *beta,
                      floating *out, double *mean, double *inv_std, Py_ssize_t n, Py_ssize_t d,
                      double eps, int n_threads) noexcept nogil:
    cdef Py_ssize_t i
    cdef int threads = <int>min(<Py_ssize_t>n_threads, n)
    if threads <= 1:
        for i in range(n):
            _ln_forward_row(x, gamma, beta, out, mean, inv_std, d, i, eps)
    else:
        for i in prange(n, schedule="static", num_threads=threads):
            _ln_forward_row(x, gamma, beta, out, mean, inv_std, d, i, eps)


cdef void _ln_backward(const floating *dout, const floating *x, const floating *gamma,
                       const double *mean, const double *inv_std, floating *dx,
                       floating *dgamma, floating *dbeta, Py_ssize_t n, Py_ssize_t d,
                       int n_threads) noexcept nogil:
    cdef Py_ssize_t i, blk, nb = _n_blocks(d)
    cdef int row_threads = <int>min(<Py_ssize_t>n_threads, n)
    cdef int col_threads = <int>min(<Py_ssize_t>n_threads, nb)
    if col_threads <= 1:  # first: it reads every row, which the dx pass may overwrite
        for blk in range(nb):
            _param_grads(dout, x, mean, inv_std, dgamma, dbeta, n, d, blk)
    else:
        for blk in prange(nb, schedule="static", num_threads=col_threads):
            _param_grads(dout, x, mean, inv_std, dgamma, dbeta, n, d, blk)
    if row_threads <= 1:
        for i in range(n):
            _ln_backward_row(dout, x, gamma, mean, inv_std, dx, d, i)
    else:
        for i in prange(n, schedule="static", num_threads=row_threads):
            _ln_backward_row(dout, x, gamma, mean, inv_std, dx, d, i)


# ---------------------------------------------------------------------------------------------
# Entry points: every check before nogil and before any write (design a)

cdef Py_ssize_t _rows(str kernel, object x, str x_name, Py_ssize_t d) except -1:
    """N = len(x) // D, checking D >= 1 and that x holds whole rows."""
    if d < 1:
        raise ValueError(f"{kernel}: gamma must have at least one feature, got length {d}")
    cdef Py_ssize_t size = length(x)
    if size % d:
        raise ValueError(f"{kernel}: {x_name} has length {size}, not a multiple of "
                         f"D = {d} (the length of gamma)")
    return size // d


cdef int _check_scalars(str kernel, double eps, double momentum, int n_threads) except -1:
    if not eps >= 0:  # also rejects NaN
        raise ValueError(f"{kernel}: eps must be >= 0, got {eps}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"{kernel}: momentum must lie in [0, 1], got {momentum}")
    if n_threads < 1:
        raise ValueError(f"{kernel}: n_threads must be >= 1, got {n_threads}")
    return 0


def batchnorm_forward_train(x, gamma, beta, out, mean, inv_std, running_mean, running_var,
                            double eps, double momentum, bint unbiased, int n_threads=1):
    """Batch norm forward, train mode, over x (N, D) raveled; gamma, beta, running_* (D,).

    mean := mean_i x[i, :];  var := mean_i (x[i, :] - mean)**2;  inv_std := 1/sqrt(var + eps)
    (mean, inv_std: float64 (D,));  out := (x - mean) * inv_std * gamma + beta;
    running_mean := momentum * running_mean + (1 - momentum) * mean, running_var likewise with
    var (times N / (N - 1) when ``unbiased``), both in place.  Needs N >= 1 (N >= 2 when
    unbiased), eps >= 0, momentum in [0, 1].
    """
    k = "batchnorm_forward_train"
    cdef int t = float_type(x, k, "x")
    cdef const char *px = array_data(x, k, "x", t, False, -1, None)
    cdef const char *pg = array_data(gamma, k, "gamma", t, False, -1, None)
    cdef Py_ssize_t d = length(gamma)
    cdef Py_ssize_t n = _rows(k, x, "x", d)
    cdef const char *pb = array_data(beta, k, "beta", t, False, d, "gamma")
    cdef char *po = array_data(out, k, "out", t, True, n * d, "x")
    cdef char *pm = array_data(mean, k, "mean", cnp.NPY_FLOAT64, True, d, "gamma")
    cdef char *pi = array_data(inv_std, k, "inv_std", cnp.NPY_FLOAT64, True, d, "gamma")
    cdef char *prm = array_data(running_mean, k, "running_mean", t, True, d, "gamma")
    cdef char *prv = array_data(running_var, k, "running_var", t, True, d, "gamma")
    _check_scalars(k, eps, momentum, n_threads)
    if n < 1 + unbiased:
        raise ValueError(f"{k}: needs at least {1 + unbiased} rows, got {n}")
    cdef double var_scale = n / (n - 1.0) if unbiased else 1.0
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _bn_train(<const float *>px, <const float *>pg, <const float *>pb, <float *>po,
                      <double *>pm, <double *>pi, <float *>prm, <float *>prv, n, d, eps,
                      momentum, var_scale, n_threads)
        else:
            _bn_train(<const double *>px, <const double *>pg, <const double *>pb, <double *>po,
                      <double *>pm, <double *>pi, <double *>prm, <double *>prv, n, d, eps,
                      momentum, var_scale, n_threads)


def batchnorm_forward_test(x, gamma, beta, running_mean, running_var, out, double eps,
                           int n_threads=1):
    """Batch norm forward, test mode: out := (x - running_mean) / sqrt(running_var + eps)
    * gamma + beta, over x (N, D) raveled; gamma, beta, running_* (D,).  eps >= 0."""
    k = "batchnorm_forward_test"
    cdef int t = float_type(x, k, "x")
    cdef const char *px = array_data(x, k, "x", t, False, -1, None)
    cdef const char *pg = array_data(gamma, k, "gamma", t, False, -1, None)
    cdef Py_ssize_t d = length(gamma)
    cdef Py_ssize_t n = _rows(k, x, "x", d)
    cdef const char *pb = array_data(beta, k, "beta", t, False, d, "gamma")
    cdef const char *prm = array_data(running_mean, k, "running_mean", t, False, d, "gamma")
    cdef const char *prv = array_data(running_var, k, "running_var", t, False, d, "gamma")
    cdef char *po = array_data(out, k, "out", t, True, n * d, "x")
    _check_scalars(k, eps, 0.0, n_threads)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _bn_test(<const float *>px, <const float *>pg, <const float *>pb,
                     <const float *>prm, <const float *>prv, <float *>po, n, d, eps, n_threads)
        else:
            _bn_test(<const double *>px, <const double *>pg, <const double *>pb,
                     <const double *>prm, <const double *>prv, <double *>po, n, d, eps,
                     n_threads)


cdef int _backward_args(str k, object dout, object x, object gamma, object mean,
                        object inv_std, object dx, object dgamma, object dbeta, bint per_row,
                        int n_threads, char **p) except -1:
    """Check the eight arrays of a backward (statistics per row or per feature) into p[0..7];
    returns the dtype."""
    cdef int t = float_type(dout, k, "dout")
    p[0] = array_data(dout, k, "dout", t, False, -1, None)
    p[2] = array_data(gamma, k, "gamma", t, False, -1, None)
    cdef Py_ssize_t d = length(gamma)
    cdef Py_ssize_t n = _rows(k, dout, "dout", d)
    cdef Py_ssize_t n_stats = n if per_row else d
    cdef str stats_by = "the rows of dout" if per_row else "gamma"
    p[1] = array_data(x, k, "x", t, False, n * d, "dout")
    p[3] = array_data(mean, k, "mean", cnp.NPY_FLOAT64, False, n_stats, stats_by)
    p[4] = array_data(inv_std, k, "inv_std", cnp.NPY_FLOAT64, False, n_stats, stats_by)
    p[5] = array_data(dx, k, "dx", t, True, n * d, "dout")
    p[6] = array_data(dgamma, k, "dgamma", t, True, d, "gamma")
    p[7] = array_data(dbeta, k, "dbeta", t, True, d, "gamma")
    _check_scalars(k, 0.0, 0.0, n_threads)
    return t


def batchnorm_backward(dout, x, gamma, mean, inv_std, dx, dgamma, dbeta, int n_threads=1):
    """Batch norm backward (train mode) from what batchnorm_forward_train wrote.

    dout, x, dx: (N, D) raveled; gamma, dgamma, dbeta: (D,); mean, inv_std: float64 (D,).
    dbeta := sum_i dout;  dgamma := sum_i dout * x_hat;
    dx := gamma * inv_std * (dout - dbeta / N - x_hat * dgamma / N),  x_hat = (x - mean) * inv_std.
    """
    cdef char *p[8]
    k = "batchnorm_backward"
    cdef int t = _backward_args(k, dout, x, gamma, mean, inv_std, dx, dgamma, dbeta, False,
                                n_threads, p)
    cdef Py_ssize_t d = length(gamma), n = length(dout) // d
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _bn_backward(<const float *>p[0], <const float *>p[1], <const float *>p[2],
                         <const double *>p[3], <const double *>p[4], <float *>p[5],
                         <float *>p[6], <float *>p[7], n, d, n_threads)
        else:
            _bn_backward(<const double *>p[0], <const double *>p[1], <const double *>p[2],
                         <const double *>p[3], <const double *>p[4], <double *>p[5],
                         <double *>p[6], <double *>p[7], n, d, n_threads)


def layernorm_forward(x, gamma, beta, out, mean, inv_std, double eps, int n_threads=1):
    """Layer norm forward over the feature axis of x (N, D) raveled; gamma, beta (D,).

    mean[i] := mean_j x[i, j];  inv_std[i] := 1/sqrt(mean_j (x[i, j] - mean[i])**2 + eps)
    (float64 (N,));  out := (x - mean) * inv_std * gamma + beta.  eps >= 0.
    """
    k = "layernorm_forward"
    cdef int t = float_type(x, k, "x")
    cdef const char *px = array_data(x, k, "x", t, False, -1, None)
    cdef const char *pg = array_data(gamma, k, "gamma", t, False, -1, None)
    cdef Py_ssize_t d = length(gamma)
    cdef Py_ssize_t n = _rows(k, x, "x", d)
    cdef const char *pb = array_data(beta, k, "beta", t, False, d, "gamma")
    cdef char *po = array_data(out, k, "out", t, True, n * d, "x")
    cdef char *pm = array_data(mean, k, "mean", cnp.NPY_FLOAT64, True, n, "the rows of x")
    cdef char *pi = array_data(inv_std, k, "inv_std", cnp.NPY_FLOAT64, True, n, "the rows of x")
    _check_scalars(k, eps, 0.0, n_threads)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _ln_forward(<const float *>px, <const float *>pg, <const float *>pb, <float *>po,
                        <double *>pm, <double *>pi, n, d, eps, n_threads)
        else:
            _ln_forward(<const double *>px, <const double *>pg, <const double *>pb,
                        <double *>po, <double *>pm, <double *>pi, n, d, eps, n_threads)


def layernorm_backward(dout, x, gamma, mean, inv_std, dx, dgamma, dbeta, int n_threads=1):
    """Layer norm backward from what layernorm_forward wrote.

    dout, x, dx: (N, D) raveled; gamma, dgamma, dbeta: (D,); mean, inv_std: float64 (N,).
    With g = dout * gamma and x_hat = (x - mean) * inv_std, per row:
    dx := inv_std * (g - mean_j g - x_hat * mean_j(g * x_hat));
    dgamma := sum_i dout * x_hat;  dbeta := sum_i dout.
    """
    cdef char *p[8]
    k = "layernorm_backward"
    cdef int t = _backward_args(k, dout, x, gamma, mean, inv_std, dx, dgamma, dbeta, True,
                                n_threads, p)
    cdef Py_ssize_t d = length(gamma), n = length(dout) // d
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _ln_backward(<const float *>p[0], <const float *>p[1], <const float *>p[2],
                         <const double *>p[3], <const double *>p[4], <float *>p[5],
                         <float *>p[6], <float *>p[7], n, d, n_threads)
        else:
            _ln_backward(<const double *>p[0], <const double *>p[1], <const double *>p[2],
                         <const double *>p[3], <const double *>p[4], <double *>p[5],
                         <double *>p[6], <double *>p[7], n, d, n_threads)
