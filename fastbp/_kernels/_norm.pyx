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
   of batch norm are read and written in place.  Scratch is on the stack: a few per-column
   accumulators per column block (at most MAX_COLS wide: 8 KiB each in double), and in layer
   norm's backward two MAX_COLS double rows (g and x_hat of the row at hand).  ``out`` may be
   ``x`` and ``dx`` may be ``x`` or ``dout`` (in place): every element is read for the last
   time before it is written (layer norm's backward adds a row's dgamma / dbeta terms before
   it writes that row's dx, or reduces them in a first region when threaded).
c. Threads, and why results do not depend on them: every reduced value has exactly ONE owner
   that sums its terms in a fixed order.
   - Batch norm is parallel over column blocks: a block's thread walks all N rows in order,
     adding row i's contiguous values to per-column double accumulators, then normalises the
     block.  A column's sums do not depend on which block holds it, so the block width is free
     to follow the thread count: D / n_threads rounded up to whole vectors, at most MAX_COLS.
     Wide blocks matter: with 64-column blocks each pass over an (8192, 1024) float32 batch
     touched every 4 KiB row (page) 16 times, and batch-norm forward + backward took 377 ms on
     one thread; with whole-row blocks it took 71 ms (measured here, a loaded 2-core machine).
   - Batch-norm statistics are read once: the block's rows go in chunks of _chunk_rows(D)
     (about CHUNK_ELEMS values, a function of D alone, never of the threads); each chunk is
     summed, then its squared deviations from its own mean are summed while it is in cache,
     and the chunks are merged in row order with Chan's formula (d).  Forward reads x twice
     (statistics, output), not three times.
   - Layer norm is parallel over rows: a row's thread sums it in LANES = 32 fixed lanes
     (element j into lane j % LANES, folded in a fixed pairwise tree): four AVX-512 double
     accumulators, so the adds pipeline instead of waiting on one another, with no
     reassociation (no -ffast-math).  Its dgamma / dbeta (sums over rows, each column in row
     order): with one thread (and D <= MAX_COLS) the dx row loop adds each row's terms as it
     reads the row, so backward reads dout and x once; with more, a first region over column
     blocks as in batch norm.  Both orders are the same, so are the bits.
   - The leaf loops are ``cloned_void`` (csrc/fastbp_math.h): built for AVX-512, AVX2 and the
     baseline, one picked at load time.  Vectorising over independent columns or fixed lanes
     reorders no sum and the build has no FMA contraction, so every clone gives the same bits.
   One thread runs plain loops (entering a parallel region costs ~0.8 us even for one thread);
   more never exceed the number of tasks.  So outputs are bitwise identical for every
   n_threads, run to run.
d. Numerics:
   - Two-pass variance: the mean first, then the mean of squared deviations from it, both
     accumulated in double; never E[x^2] - E[x]^2, which cancels catastrophically for data with
     a large mean (tested with mean 1e4, std 1e-2 in both dtypes).  Batch norm does the two
     passes per row chunk and merges chunk (count, mean, M2) with Chan et al.'s update
     mean += delta * m / (seen + m), M2 += M2_chunk + delta**2 * seen * m / (seen + m), which
     is as stable as one two-pass.  Variance is biased (/N), as the course and PyTorch
     normalise; eps is added INSIDE the square root.
   - The forward output pass (train and test) runs in the dtype: float32 data is normalised
     in float (twice the vector width of double, no conversions), which is exact enough
     because the statistics are not rounded naively: the float64 mean is split into
     hi + lo (_split: hi = mean rounded, lo = the rest rounded), x - hi is exact near a large
     mean (Sterbenz) and (x - hi) - lo = x - mean to float rounding; a float32 mean alone is
     off by up to 5e-4 near 1e4, 5% of a std of 1e-2 (the large-mean test fails without lo).
     Then * inv_std (or gamma * inv_std), * gamma, + beta, each rounded in the dtype: within
     a few float32 ulps of the double-then-round reference.  For float64, lo = 0 and the pass
     is the double formula.
   - The backward stays in double, rounded once to the dtype: dx cancels (g - mean(g) -
     x_hat * mean(g x_hat) is small where its terms are not), so a float32 dx missed the
     1e-6 tolerance by 1.5x on a 5-row batch (k = gamma * inv_std ~ 4); x_hat is recomputed
     from x, mean and inv_std (no x_hat buffer is kept, so forward writes one array, not
     two).
   - Backward in the compact one-pass form (per feature for batch norm, per row for layer norm,
     with g = dout for batch norm and g = dout * gamma for layer norm, M = N or D):
         dx = k * (g - mean(g) - x_hat * mean(g * x_hat)),  k = inv_std (* gamma for batch norm)
         dgamma = sum_rows(dout * x_hat),  dbeta = sum_rows(dout).
   - Running statistics (batch norm, train mode): running := momentum * running
     + (1 - momentum) * batch_stat, the course's convention (momentum weights the OLD value;
     fastbp.nn.BatchNorm1d passes 1 - its PyTorch momentum).  With ``unbiased`` the variance
     fed to running_var is var * N / (N - 1) (PyTorch); normalisation always uses the biased
     one.  eps = 0 with a constant feature gives inv_std = inf, as the formula says.
e. The one-call training step (_step.pyx) runs _bn_train, _bn_backward, _ln_forward and
   _ln_backward through _norm.pxd, between its GEMMs and activation epilogues.
   Not done: non-contiguous buffers, spatial (N, C, H, W) batch norm, group norm, fusion with
   the preceding GEMM's epilogue or with the activation's pass, a backward for test mode
   (the Python layers refuse it), a float32 backward that is accurate enough (see d; it would
   about halve the arithmetic), non-temporal stores for out / dx.  Batch norm
   with at most COL_ALIGN features is one block, so one thread.  Choosing n_threads (serial
   for small work) is the caller's policy (fastbp._config.threads_for).
"""
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt

from ._arrays cimport array_data, float_type, length
from ._math cimport cloned_void

cnp.import_array()

__all__ = [
    "batchnorm_forward_train",
    "batchnorm_forward_test",
    "batchnorm_backward",
    "layernorm_forward",
    "layernorm_backward",
]

cdef enum:
    MAX_COLS = 1024  # widest column block: its per-column accumulators live on the stack
    COL_ALIGN = 16   # column-block widths are multiples of this (whole SIMD vectors)
    LANES = 32       # independent partial sums per row (layer norm): 4 AVX-512 vectors
    CHUNK_ELEMS = 32768  # batch-norm statistics chunk: about this many values (128 KiB float32)
    MIN_CHUNK_ROWS = 16  # ... and at least this many rows (the merge costs O(D) per chunk)


cdef inline void _split(double v, floating *hi, floating *lo) noexcept nogil:
    """v ~ hi + lo to about twice the dtype's precision: hi is v rounded to the dtype, lo the
    rest rounded (exactly 0 for float64), so (x - hi) - lo centres x in the dtype (design d)."""
    hi[0] = <floating>v
    lo[0] = <floating>(v - hi[0])


cdef inline floating _centered(floating x, floating hi, floating lo) noexcept nogil:
    """x - (hi + lo) in the dtype: x - hi is exact near a large mean (Sterbenz)."""
    return (x - hi) - lo


# ---------------------------------------------------------------------------------------------
# Column loops (batch norm; layer norm's dgamma / dbeta): columns [0, w) of an (n, d) row-major
# matrix whose pointers the caller has moved to the block's first column.  Each column is summed
# over the rows in order, and the inner loop runs over contiguous columns (independent sums), so
# it vectorises without reordering any sum.  cloned_void: built per ISA (design c).

cdef cloned_void _sum_cols(const floating *x, Py_ssize_t n, Py_ssize_t d, Py_ssize_t w,
                           double *acc) noexcept nogil:
    """acc[j] := sum_i x[i, j]."""
    cdef Py_ssize_t i, j
    cdef const floating *row
    for j in range(w):
        acc[j] = 0
    for i in range(n):
        row = x + i * d
        for j in range(w):
            acc[j] += row[j]


cdef cloned_void _sqdev_cols(const floating *x, Py_ssize_t n, Py_ssize_t d, Py_ssize_t w,
                             const double *mu, double *acc) noexcept nogil:
    """acc[j] := sum_i (x[i, j] - mu[j])**2 (the second pass of a two-pass variance)."""
    cdef Py_ssize_t i, j
    cdef const floating *row
    cdef double t
    for j in range(w):
        acc[j] = 0
    for i in range(n):
        row = x + i * d
        for j in range(w):
            t = row[j] - mu[j]
            acc[j] += t * t


cdef cloned_void _affine_cols(const floating *x, floating *out, Py_ssize_t n, Py_ssize_t d,
                              Py_ssize_t w, const floating *hi, const floating *lo,
                              const floating *scale, const floating *beta) noexcept nogil:
    """out[i, j] := (x[i, j] - (hi[j] + lo[j])) * scale[j] + beta[j], in the dtype."""
    cdef Py_ssize_t i, j
    cdef const floating *row
    cdef floating *orow
    for i in range(n):
        row = x + i * d
        orow = out + i * d
        for j in range(w):
            orow[j] = _centered(row[j], hi[j], lo[j]) * scale[j] + beta[j]


cdef cloned_void _grad_sums_cols(const floating *dout, const floating *x, Py_ssize_t n,
                                 Py_ssize_t d, Py_ssize_t w, const double *mu, const double *inv,
                                 double *sum_g, double *sum_gx) noexcept nogil:
    """sum_g[j] := sum_i dout[i, j];  sum_gx[j] := sum_i dout[i, j] * x_hat[i, j] with the
    column statistics x_hat = (x - mu[j]) * inv[j] (batch norm)."""
    cdef Py_ssize_t i, j
    cdef const floating *row
    cdef const floating *grow
    for j in range(w):
        sum_g[j] = 0
        sum_gx[j] = 0
    for i in range(n):
        row = x + i * d
        grow = dout + i * d
        for j in range(w):
            sum_g[j] += grow[j]
            sum_gx[j] += grow[j] * ((row[j] - mu[j]) * inv[j])


cdef inline void _ln_param_sums_row(const floating *dout, const floating *x, Py_ssize_t w,
                                    double mu, double inv, double *sum_g,
                                    double *sum_gx) noexcept nogil:
    """sum_g[j] += dout[j];  sum_gx[j] += dout[j] * x_hat[j] over w columns of one row with
    the row's statistics x_hat = (x - mu) * inv (layer norm's dgamma / dbeta)."""
    cdef Py_ssize_t j
    for j in range(w):
        sum_g[j] += dout[j]
        sum_gx[j] += dout[j] * ((x[j] - mu) * inv)


cdef cloned_void _grad_sums_cols_row_stats(const floating *dout, const floating *x,
                                           Py_ssize_t n, Py_ssize_t d, Py_ssize_t w,
                                           const double *mean, const double *inv_std,
                                           double *sum_g, double *sum_gx) noexcept nogil:
    """As _grad_sums_cols, with the row statistics of layer norm (_ln_param_sums_row)."""
    cdef Py_ssize_t i, j
    for j in range(w):
        sum_g[j] = 0
        sum_gx[j] = 0
    for i in range(n):
        _ln_param_sums_row(dout + i * d, x + i * d, w, mean[i], inv_std[i], sum_g, sum_gx)


cdef cloned_void _bn_dx_cols(const floating *dout, const floating *x, floating *dx,
                             Py_ssize_t n, Py_ssize_t d, Py_ssize_t w, const double *mu,
                             const double *inv, const double *k, const double *mean_g,
                             const double *mean_gx) noexcept nogil:
    """dx[i, j] := k[j] * (dout - mean_g[j] - x_hat * mean_gx[j]), x_hat from the columns."""
    cdef Py_ssize_t i, j
    cdef const floating *row
    cdef const floating *grow
    cdef floating *drow
    for i in range(n):
        row = x + i * d
        grow = dout + i * d
        drow = dx + i * d
        for j in range(w):
            drow[j] = <floating>(k[j] * (grow[j] - mean_g[j]
                                         - ((row[j] - mu[j]) * inv[j]) * mean_gx[j]))


# ---------------------------------------------------------------------------------------------
# Column blocks: block `blk` of width `width` covers features [blk * width, + w) (design c)

cdef inline Py_ssize_t _block_width(Py_ssize_t d, int n_threads) noexcept nogil:
    """Columns per block: D shared out over the threads in whole vectors, at most MAX_COLS.
    Wide blocks stream each row's cache lines and pages once per pass; the width changes no
    column's sums, so results do not depend on it."""
    cdef Py_ssize_t w = (d + n_threads - 1) // n_threads
    w = (w + COL_ALIGN - 1) // COL_ALIGN * COL_ALIGN
    return min(w, <Py_ssize_t>MAX_COLS)


cdef inline Py_ssize_t _chunk_rows(Py_ssize_t d) noexcept nogil:
    """Rows per statistics chunk: about CHUNK_ELEMS values, so a chunk's second pass reads
    cache; a function of D alone, so the merge order does not depend on the threads."""
    return max(<Py_ssize_t>MIN_CHUNK_ROWS, CHUNK_ELEMS // d)


cdef void _bn_train_block(const floating *x, const floating *gamma, const floating *beta,
                          floating *out, double *mean, double *inv_std, floating *run_mean,
                          floating *run_var, Py_ssize_t n, Py_ssize_t d, Py_ssize_t j0,
                          Py_ssize_t width, double eps, double momentum,
                          double var_scale) noexcept nogil:
    """Batch statistics, running averages and the normalised output of one column block.
    Statistics: each chunk of rows two-pass (its second pass in cache), the chunks merged in
    row order with Chan's formula (design d)."""
    cdef Py_ssize_t w = min(width, d - j0), j, m, seen = 0, step = _chunk_rows(d)
    cdef double acc[MAX_COLS]
    cdef double mu[MAX_COLS]
    cdef double m2[MAX_COLS]
    cdef double chunk_mu[MAX_COLS]
    cdef floating hi[MAX_COLS]
    cdef floating lo[MAX_COLS]
    cdef floating scale[MAX_COLS]
    cdef double var, delta, share, cross
    while seen < n:
        m = min(step, n - seen)
        _sum_cols(x + seen * d + j0, m, d, w, acc)
        for j in range(w):
            chunk_mu[j] = acc[j] / m
        _sqdev_cols(x + seen * d + j0, m, d, w, chunk_mu, acc)
        share = m / <double>(seen + m)       # the chunk's weight in the merged mean
        cross = seen * share                 # seen * m / (seen + m)
        for j in range(w):
            if seen == 0:
                mu[j] = chunk_mu[j]
                m2[j] = acc[j]
            else:
                delta = chunk_mu[j] - mu[j]
                mu[j] += delta * share
                m2[j] += acc[j] + delta * delta * cross
        seen += m
    for j in range(w):
        var = m2[j] / n
        mean[j0 + j] = mu[j]
        inv_std[j0 + j] = 1.0 / sqrt(var + eps)
        _split(mu[j], &hi[j], &lo[j])
        scale[j] = <floating>(gamma[j0 + j] * inv_std[j0 + j])
        run_mean[j0 + j] = <floating>(momentum * run_mean[j0 + j] + (1.0 - momentum) * mu[j])
        run_var[j0 + j] = <floating>(momentum * run_var[j0 + j]
                                     + (1.0 - momentum) * (var * var_scale))
    _affine_cols(x + j0, out + j0, n, d, w, hi, lo, scale, beta + j0)


cdef void _bn_test_block(const floating *x, const floating *gamma, const floating *beta,
                         const floating *run_mean, const floating *run_var, floating *out,
                         Py_ssize_t n, Py_ssize_t d, Py_ssize_t j0, Py_ssize_t width,
                         double eps) noexcept nogil:
    """out = (x - running_mean) * gamma / sqrt(running_var + eps) + beta on one column block."""
    cdef Py_ssize_t w = min(width, d - j0), j
    cdef floating lo[MAX_COLS]
    cdef floating scale[MAX_COLS]
    for j in range(w):
        lo[j] = 0
        scale[j] = <floating>(gamma[j0 + j] / sqrt(<double>run_var[j0 + j] + eps))
    _affine_cols(x + j0, out + j0, n, d, w, run_mean + j0, lo, scale, beta + j0)


cdef void _bn_backward_block(const floating *dout, const floating *x, const floating *gamma,
                             const double *mean, const double *inv_std, floating *dx,
                             floating *dgamma, floating *dbeta, Py_ssize_t n, Py_ssize_t d,
                             Py_ssize_t j0, Py_ssize_t width) noexcept nogil:
    """dgamma, dbeta and dx = k * (g - mean(g) - x_hat * mean(g x_hat)) on one column block."""
    cdef Py_ssize_t w = min(width, d - j0), j
    cdef double sum_g[MAX_COLS]
    cdef double sum_gx[MAX_COLS]
    cdef double k[MAX_COLS]
    _grad_sums_cols(dout + j0, x + j0, n, d, w, mean + j0, inv_std + j0, sum_g, sum_gx)
    for j in range(w):
        dbeta[j0 + j] = <floating>sum_g[j]
        dgamma[j0 + j] = <floating>sum_gx[j]
        k[j] = gamma[j0 + j] * inv_std[j0 + j]
        sum_g[j] /= n
        sum_gx[j] /= n
    _bn_dx_cols(dout + j0, x + j0, dx + j0, n, d, w, mean + j0, inv_std + j0, k, sum_g, sum_gx)


cdef void _ln_param_grads_block(const floating *dout, const floating *x, const double *mean,
                                const double *inv_std, floating *dgamma, floating *dbeta,
                                Py_ssize_t n, Py_ssize_t d, Py_ssize_t j0,
                                Py_ssize_t width) noexcept nogil:
    """Layer norm's dgamma = sum_i dout * x_hat and dbeta = sum_i dout on one column block."""
    cdef Py_ssize_t w = min(width, d - j0), j
    cdef double sum_g[MAX_COLS]
    cdef double sum_gx[MAX_COLS]
    _grad_sums_cols_row_stats(dout + j0, x + j0, n, d, w, mean, inv_std, sum_g, sum_gx)
    for j in range(w):
        dbeta[j0 + j] = <floating>sum_g[j]
        dgamma[j0 + j] = <floating>sum_gx[j]


# ---------------------------------------------------------------------------------------------
# Rows (layer norm): LANES fixed partial sums per row, folded in a fixed tree (design c)

cdef inline double _fold(double *acc) noexcept nogil:
    """acc[0] + ... + acc[LANES - 1] in a fixed pairwise tree (acc is overwritten)."""
    cdef Py_ssize_t h = LANES // 2, k
    while h:
        for k in range(h):
            acc[k] += acc[k + h]
        h //= 2
    return acc[0]


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


cdef cloned_void _ln_forward_row(const floating *x, const floating *gamma,
                                 const floating *beta, floating *out, double *mean,
                                 double *inv_std, Py_ssize_t d, Py_ssize_t i,
                                 double eps) noexcept nogil:
    x += i * d
    out += i * d
    cdef double mu = _row_mean(x, d)
    cdef double inv = 1.0 / sqrt(_row_var(x, d, mu) + eps)
    cdef floating hi, lo, s = <floating>inv
    cdef Py_ssize_t j
    _split(mu, &hi, &lo)
    mean[i] = mu
    inv_std[i] = inv
    for j in range(d):
        out[j] = _centered(x[j], hi, lo) * s * gamma[j] + beta[j]


cdef inline void _ln_backward_terms(const floating *dout, const floating *x,
                                    const floating *gamma, Py_ssize_t j, Py_ssize_t lane,
                                    double mu, double inv, double *acc_g, double *acc_gx,
                                    double *sum_g, double *sum_gx, double *g_row,
                                    double *xh_row) noexcept nogil:
    """Element j of a layer-norm backward row: g = dout * gamma and g * x_hat into the row's
    lane sums, dout and dout * x_hat into the column sums (if sum_g), g and x_hat kept for
    the dx loop (if g_row)."""
    cdef double gd = dout[j], xh = (x[j] - mu) * inv, g = gd * gamma[j]
    acc_g[lane] += g
    acc_gx[lane] += g * xh
    if sum_g != NULL:
        sum_g[j] += gd
        sum_gx[j] += gd * xh
    if g_row != NULL:
        g_row[j] = g
        xh_row[j] = xh


cdef cloned_void _ln_backward_row(const floating *dout, const floating *x,
                                  const floating *gamma, const double *mean,
                                  const double *inv_std, floating *dx, Py_ssize_t d,
                                  Py_ssize_t i, double *sum_g, double *sum_gx) noexcept nogil:
    """dx = inv * (g - mean(g) - x_hat * mean(g x_hat)) with g = dout * gamma, over one row;
    also adds the row's terms to the column sums of dgamma / dbeta (_ln_param_sums_row's, in
    the same arithmetic) when sum_g is not NULL, before dx is written.  A row of at most
    MAX_COLS keeps its g and x_hat in double on the stack for the dx loop (the float-to-double
    conversions are most of the work); a longer one recomputes them, to the same bits."""
    dout += i * d
    x += i * d
    dx += i * d
    cdef double mu = mean[i], inv = inv_std[i]
    cdef double acc_g[LANES]
    cdef double acc_gx[LANES]
    cdef double g_row[MAX_COLS]
    cdef double xh_row[MAX_COLS]
    cdef bint keep = d <= MAX_COLS
    cdef Py_ssize_t b, k, j
    _zero(acc_g)
    _zero(acc_gx)
    for b in range(d // LANES):
        for k in range(LANES):
            _ln_backward_terms(dout, x, gamma, b * LANES + k, k, mu, inv, acc_g, acc_gx, sum_g,
                               sum_gx, g_row if keep else NULL, xh_row)
    for j in range(d - d % LANES, d):
        _ln_backward_terms(dout, x, gamma, j, j % LANES, mu, inv, acc_g, acc_gx, sum_g, sum_gx,
                           g_row if keep else NULL, xh_row)
    cdef double mean_g = _fold(acc_g) / d, mean_gx = _fold(acc_gx) / d
    if keep:
        for j in range(d):
            dx[j] = <floating>(inv * (g_row[j] - mean_g - xh_row[j] * mean_gx))
    else:
        for j in range(d):
            dx[j] = <floating>(inv * (<double>dout[j] * gamma[j] - mean_g
                                      - ((x[j] - mu) * inv) * mean_gx))


# ---------------------------------------------------------------------------------------------
# Loops over tasks (serial for one thread, design c)

cdef void _bn_train(const floating *x, const floating *gamma, const floating *beta,
                    floating *out, double *mean, double *inv_std, floating *run_mean,
                    floating *run_var, Py_ssize_t n, Py_ssize_t d, double eps, double momentum,
                    double var_scale, int n_threads) noexcept nogil:
    cdef Py_ssize_t blk, width = _block_width(d, n_threads), nb = (d + width - 1) // width
    if n_threads <= 1 or nb == 1:
        for blk in range(nb):
            _bn_train_block(x, gamma, beta, out, mean, inv_std, run_mean, run_var, n, d,
                            blk * width, width, eps, momentum, var_scale)
    else:
        for blk in prange(nb, schedule="static", num_threads=min(<Py_ssize_t>n_threads, nb)):
            _bn_train_block(x, gamma, beta, out, mean, inv_std, run_mean, run_var, n, d,
                            blk * width, width, eps, momentum, var_scale)


cdef void _bn_test(const floating *x, const floating *gamma, const floating *beta,
                   const floating *run_mean, const floating *run_var, floating *out,
                   Py_ssize_t n, Py_ssize_t d, double eps, int n_threads) noexcept nogil:
    cdef Py_ssize_t blk, width = _block_width(d, n_threads), nb = (d + width - 1) // width
    if n_threads <= 1 or nb == 1:
        for blk in range(nb):
            _bn_test_block(x, gamma, beta, run_mean, run_var, out, n, d, blk * width, width,
                           eps)
    else:
        for blk in prange(nb, schedule="static", num_threads=min(<Py_ssize_t>n_threads, nb)):
            _bn_test_block(x, gamma, beta, run_mean, run_var, out, n, d, blk * width, width,
                           eps)


cdef void _bn_backward(const floating *dout, const floating *x, const floating *gamma,
                       const double *mean, const double *inv_std, floating *dx,
                       floating *dgamma, floating *dbeta, Py_ssize_t n, Py_ssize_t d,
                       int n_threads) noexcept nogil:
    cdef Py_ssize_t blk, width = _block_width(d, n_threads), nb = (d + width - 1) // width
    if n_threads <= 1 or nb == 1:
        for blk in range(nb):
            _bn_backward_block(dout, x, gamma, mean, inv_std, dx, dgamma, dbeta, n, d,
                               blk * width, width)
    else:
        for blk in prange(nb, schedule="static", num_threads=min(<Py_ssize_t>n_threads, nb)):
            _bn_backward_block(dout, x, gamma, mean, inv_std, dx, dgamma, dbeta, n, d,
                               blk * width, width)


cdef void _ln_forward(const floating *x, const floating *gamma, const floating *beta,
                      floating *out, double *mean, double *inv_std, Py_ssize_t n, Py_ssize_t d,
                      double eps, int n_threads) noexcept nogil:
    cdef Py_ssize_t i
    if n_threads <= 1 or n == 1:
        for i in range(n):
            _ln_forward_row(x, gamma, beta, out, mean, inv_std, d, i, eps)
    else:
        for i in prange(n, schedule="static", num_threads=min(<Py_ssize_t>n_threads, n)):
            _ln_forward_row(x, gamma, beta, out, mean, inv_std, d, i, eps)


cdef void _ln_backward(const floating *dout, const floating *x, const floating *gamma,
                       const double *mean, const double *inv_std, floating *dx,
                       floating *dgamma, floating *dbeta, Py_ssize_t n, Py_ssize_t d,
                       int n_threads) noexcept nogil:
    cdef Py_ssize_t i, j, blk, width = _block_width(d, n_threads), nb = (d + width - 1) // width
    cdef double sum_g[MAX_COLS]
    cdef double sum_gx[MAX_COLS]
    if n_threads <= 1 and d <= MAX_COLS:
        # one read: each row adds to dgamma / dbeta (in row order, as the column blocks do)
        # before its dx is written
        for j in range(d):
            sum_g[j] = 0
            sum_gx[j] = 0
        for i in range(n):
            _ln_backward_row(dout, x, gamma, mean, inv_std, dx, d, i, sum_g, sum_gx)
        for j in range(d):
            dbeta[j] = <floating>sum_g[j]
            dgamma[j] = <floating>sum_gx[j]
        return
    # dgamma / dbeta first: they read every row, which the dx pass may overwrite (in place)
    if n_threads <= 1 or nb == 1:
        for blk in range(nb):
            _ln_param_grads_block(dout, x, mean, inv_std, dgamma, dbeta, n, d, blk * width,
                                  width)
    else:
        for blk in prange(nb, schedule="static", num_threads=min(<Py_ssize_t>n_threads, nb)):
            _ln_param_grads_block(dout, x, mean, inv_std, dgamma, dbeta, n, d, blk * width,
                                  width)
    if n_threads <= 1 or n == 1:
        for i in range(n):
            _ln_backward_row(dout, x, gamma, mean, inv_std, dx, d, i, NULL, NULL)
    else:
        for i in prange(n, schedule="static", num_threads=min(<Py_ssize_t>n_threads, n)):
            _ln_backward_row(dout, x, gamma, mean, inv_std, dx, d, i, NULL, NULL)


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


cdef int _forward_args(str k, object x, object gamma, object beta, object out, char **p,
                       Py_ssize_t *n, Py_ssize_t *d) except -1:
    """Check the arrays every forward takes into p[0..3] = x, gamma, beta, out and the shape
    into n, d; returns the dtype."""
    cdef int t = float_type(x, k, "x")
    p[0] = array_data(x, k, "x", t, False, -1, None)
    p[1] = array_data(gamma, k, "gamma", t, False, -1, None)
    d[0] = length(gamma)
    n[0] = _rows(k, x, "x", d[0])
    p[2] = array_data(beta, k, "beta", t, False, d[0], "gamma")
    p[3] = array_data(out, k, "out", t, True, n[0] * d[0], "x")
    return t


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
    cdef char *p[4]
    cdef Py_ssize_t n, d
    cdef int t = _forward_args(k, x, gamma, beta, out, p, &n, &d)
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
            _bn_train(<const float *>p[0], <const float *>p[1], <const float *>p[2],
                      <float *>p[3], <double *>pm, <double *>pi, <float *>prm, <float *>prv,
                      n, d, eps, momentum, var_scale, n_threads)
        else:
            _bn_train(<const double *>p[0], <const double *>p[1], <const double *>p[2],
                      <double *>p[3], <double *>pm, <double *>pi, <double *>prm,
                      <double *>prv, n, d, eps, momentum, var_scale, n_threads)


def batchnorm_forward_test(x, gamma, beta, running_mean, running_var, out, double eps,
                           int n_threads=1):
    """Batch norm forward, test mode: out := (x - running_mean) / sqrt(running_var + eps)
    * gamma + beta, over x (N, D) raveled; gamma, beta, running_* (D,).  eps >= 0."""
    k = "batchnorm_forward_test"
    cdef char *p[4]
    cdef Py_ssize_t n, d
    cdef int t = _forward_args(k, x, gamma, beta, out, p, &n, &d)
    cdef const char *prm = array_data(running_mean, k, "running_mean", t, False, d, "gamma")
    cdef const char *prv = array_data(running_var, k, "running_var", t, False, d, "gamma")
    _check_scalars(k, eps, 0.0, n_threads)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _bn_test(<const float *>p[0], <const float *>p[1], <const float *>p[2],
                     <const float *>prm, <const float *>prv, <float *>p[3], n, d, eps, n_threads)
        else:
            _bn_test(<const double *>p[0], <const double *>p[1], <const double *>p[2],
                     <const double *>prm, <const double *>prv, <double *>p[3], n, d, eps,
                     n_threads)


cdef void _backward_rows_or_features(bint per_row, const floating *dout, const floating *x,
                                     const floating *gamma, const double *mean,
                                     const double *inv_std, floating *dx, floating *dgamma,
                                     floating *dbeta, Py_ssize_t n, Py_ssize_t d,
                                     int n_threads) noexcept nogil:
    if per_row:
        _ln_backward(dout, x, gamma, mean, inv_std, dx, dgamma, dbeta, n, d, n_threads)
    else:
        _bn_backward(dout, x, gamma, mean, inv_std, dx, dgamma, dbeta, n, d, n_threads)


cdef int _backward(str k, bint per_row, object dout, object x, object gamma, object mean,
                   object inv_std, object dx, object dgamma, object dbeta,
                   int n_threads) except -1:
    """Check the arrays of a backward (statistics per row for layer norm, per feature for batch
    norm), then run it."""
    cdef int t = float_type(dout, k, "dout")
    cdef const char *pg = array_data(dout, k, "dout", t, False, -1, None)
    cdef const char *pw = array_data(gamma, k, "gamma", t, False, -1, None)
    cdef Py_ssize_t d = length(gamma)
    cdef Py_ssize_t n = _rows(k, dout, "dout", d)
    cdef Py_ssize_t n_stats = n if per_row else d
    cdef str stats_by = "the rows of dout" if per_row else "gamma"
    cdef const char *px = array_data(x, k, "x", t, False, n * d, "dout")
    cdef const char *pm = array_data(mean, k, "mean", cnp.NPY_FLOAT64, False, n_stats, stats_by)
    cdef const char *pi = array_data(inv_std, k, "inv_std", cnp.NPY_FLOAT64, False, n_stats,
                                     stats_by)
    cdef char *pdx = array_data(dx, k, "dx", t, True, n * d, "dout")
    cdef char *pdg = array_data(dgamma, k, "dgamma", t, True, d, "gamma")
    cdef char *pdb = array_data(dbeta, k, "dbeta", t, True, d, "gamma")
    _check_scalars(k, 0.0, 0.0, n_threads)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _backward_rows_or_features(per_row, <const float *>pg, <const float *>px,
                                       <const float *>pw, <const double *>pm,
                                       <const double *>pi, <float *>pdx, <float *>pdg,
                                       <float *>pdb, n, d, n_threads)
        else:
            _backward_rows_or_features(per_row, <const double *>pg, <const double *>px,
                                       <const double *>pw, <const double *>pm,
                                       <const double *>pi, <double *>pdx, <double *>pdg,
                                       <double *>pdb, n, d, n_threads)
    return 0


def batchnorm_backward(dout, x, gamma, mean, inv_std, dx, dgamma, dbeta, int n_threads=1):
    """Batch norm backward (train mode) from what batchnorm_forward_train wrote.

    dout, x, dx: (N, D) raveled; gamma, dgamma, dbeta: (D,); mean, inv_std: float64 (D,).
    dbeta := sum_i dout;  dgamma := sum_i dout * x_hat;
    dx := gamma * inv_std * (dout - dbeta / N - x_hat * dgamma / N),  x_hat = (x - mean) * inv_std.
    """
    _backward("batchnorm_backward", False, dout, x, gamma, mean, inv_std, dx, dgamma, dbeta,
              n_threads)


def layernorm_forward(x, gamma, beta, out, mean, inv_std, double eps, int n_threads=1):
    """Layer norm forward over the feature axis of x (N, D) raveled; gamma, beta (D,).

    mean[i] := mean_j x[i, j];  inv_std[i] := 1/sqrt(mean_j (x[i, j] - mean[i])**2 + eps)
    (float64 (N,));  out := (x - mean) * inv_std * gamma + beta.  eps >= 0.
    """
    k = "layernorm_forward"
    cdef char *p[4]
    cdef Py_ssize_t n, d
    cdef int t = _forward_args(k, x, gamma, beta, out, p, &n, &d)
    cdef char *pm = array_data(mean, k, "mean", cnp.NPY_FLOAT64, True, n, "the rows of x")
    cdef char *pi = array_data(inv_std, k, "inv_std", cnp.NPY_FLOAT64, True, n, "the rows of x")
    _check_scalars(k, eps, 0.0, n_threads)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _ln_forward(<const float *>p[0], <const float *>p[1], <const float *>p[2],
                        <float *>p[3], <double *>pm, <double *>pi, n, d, eps, n_threads)
        else:
            _ln_forward(<const double *>p[0], <const double *>p[1], <const double *>p[2],
                        <double *>p[3], <double *>pm, <double *>pi, n, d, eps, n_threads)


def layernorm_backward(dout, x, gamma, mean, inv_std, dx, dgamma, dbeta, int n_threads=1):
    """Layer norm backward from what layernorm_forward wrote.

    dout, x, dx: (N, D) raveled; gamma, dgamma, dbeta: (D,); mean, inv_std: float64 (N,).
    With g = dout * gamma and x_hat = (x - mean) * inv_std, per row:
    dx := inv_std * (g - mean_j g - x_hat * mean_j(g * x_hat));
    dgamma := sum_i dout * x_hat;  dbeta := sum_i dout.
    """
    _backward("layernorm_backward", True, dout, x, gamma, mean, inv_std, dx, dgamma, dbeta,
              n_threads)
