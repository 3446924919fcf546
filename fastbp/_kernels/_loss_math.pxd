# Per-row loss math, shared by the loss kernels (_losses.pyx) and the compiled training step
# (_fused.pyx): one thread, one row, no allocation, no branches inside the element loops.  The
# numerics (max shift, one exp per element, LANES fixed-order double sums, the vectorisable log
# and the ROWS-row blocks of the softmax) are explained in the design block of _losses.pyx.
from cython cimport floating
from libc.stdint cimport int64_t

from ._math cimport cloned_void, vexp

cdef extern from "fastbp_math.h" nogil:
    double fastbp_log(double x)

cdef enum:
    LANES = 8    # independent partial sums per row (element j -> lane j % LANES)
    BLOCK = 512  # stack scratch per row call on the loss-only paths; a multiple of LANES
    ROWS = 32    # rows per softmax_xent_rows call: their logs are taken in one vectorised pass

cdef enum RowOp:
    EXP_SHIFTED  # out[j] = exp(x[j] - c)
    HINGE        # out[j] = max(0, x[j] - c + 1) for j != y, 0 at j == y (NaN propagates)


# ---------------------------------------------------------------------------------------------
# Per-row helpers (one thread, one row; no allocation, no branches inside the element loops)

cdef inline void _lane_add(double *acc, const floating *x, Py_ssize_t n) noexcept nogil:
    """acc[j % LANES] += x[j] for j = 0..n-1 in order."""
    cdef Py_ssize_t b, k, full = n - n % LANES
    for b in range(n // LANES):
        for k in range(LANES):
            acc[k] += x[b * LANES + k]
    for k in range(n - full):
        acc[k] += x[full + k]


cdef inline double _lane_total(const double *acc) noexcept nogil:
    """The LANES partial sums folded in a fixed tree."""
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))


cdef inline floating _row_max(const floating *z, Py_ssize_t n) noexcept nogil:
    """max_j z[j] for n >= 1, over LANES running maxima (a NaN past z[0] may be skipped here; the
    exp(NaN - max) it then meets makes the row NaN anyway)."""
    cdef floating acc[LANES]
    cdef floating m = z[0]
    cdef Py_ssize_t b, j, k
    for k in range(LANES):
        acc[k] = m
    for b in range(n // LANES):
        for k in range(LANES):
            acc[k] = z[b * LANES + k] if z[b * LANES + k] > acc[k] else acc[k]
    for j in range(n - n % LANES, n):  # the tail folds straight into m
        m = z[j] if z[j] > m else m
    for k in range(LANES):
        m = acc[k] if acc[k] > m else m
    return m


cdef inline cloned_void _exp_shifted(const floating *x, floating c, floating *out,
                              Py_ssize_t n) noexcept nogil:
    """out[k] := exp(x[k] - c); cloned per ISA, the hot loop of the softmax."""
    cdef Py_ssize_t k
    for k in range(n):
        out[k] = vexp(x[k] - c)


cdef inline double _fill_sum(RowOp op, const floating *x, Py_ssize_t n, floating c, Py_ssize_t y,
                             floating *out, bint keep) noexcept nogil:
    """Σ_j op(x[j]) in double, lane order; op(x[j]) is written to out block by block.

    keep: out is a whole row (n elements) and keeps every value; otherwise out is BLOCK-element
    scratch that each block overwrites.  The summation order is the same either way.
    """
    cdef double acc[LANES]
    cdef Py_ssize_t b, j0, k, w
    cdef floating *o
    cdef floating margin
    for k in range(LANES):
        acc[k] = 0
    for b in range((n + BLOCK - 1) // BLOCK):
        j0 = b * BLOCK
        w = min(<Py_ssize_t>BLOCK, n - j0)
        o = out + j0 * keep
        if op == EXP_SHIFTED:
            _exp_shifted(x + j0, c, o, w)
        else:
            for k in range(w):
                margin = x[j0 + k] - c + 1
                # `not (margin <= 0)` keeps a NaN margin (as np.maximum does); j == y counts 0
                o[k] = margin if (not (margin <= 0) and j0 + k != y) else 0
        _lane_add(acc, o, w)
    return _lane_total(acc)


cdef inline cloned_void _exp_inplace(floating *x, Py_ssize_t n) noexcept nogil:
    """x[k] := exp(x[k]); cloned per ISA: one call covers a whole block of softmax rows."""
    cdef Py_ssize_t k
    for k in range(n):
        x[k] = vexp(x[k])


cdef inline double _loss_only_sum(const floating *z, Py_ssize_t n, Py_ssize_t y,
                                  double *neg_shift) noexcept nogil:
    """Σ_j exp(z_j - max) (BLOCK scratch, nothing written); *neg_shift := -(z_y - max)."""
    cdef floating scratch[BLOCK]
    cdef floating m = _row_max(z, n)
    neg_shift[0] = -(z[y] - m)
    return _fill_sum(EXP_SHIFTED, z, n, m, y, scratch, False)


cdef inline void _shift_row(const floating *z, floating *d, Py_ssize_t n, Py_ssize_t y,
                            double *neg_shift) noexcept nogil:
    """d := z - max(z) (exp(d) comes next, in _exp_inplace); *neg_shift := -(z_y - max)."""
    cdef floating m = _row_max(z, n)
    cdef Py_ssize_t j
    for j in range(n):
        d[j] = z[j] - m
    neg_shift[0] = -(z[y] - m)


cdef inline double _softmax_grad_row(floating *d, Py_ssize_t n, Py_ssize_t y,
                                     double scale) noexcept nogil:
    """d holds exp(z - max) for one row: returns Σ_j d_j (lane order, as _fill_sum) and sets
    d := (softmax(z) - onehot(y))·scale."""
    cdef double acc[LANES]
    cdef double s, e_y
    cdef floating inv
    cdef Py_ssize_t j
    for j in range(LANES):
        acc[j] = 0
    _lane_add(acc, d, n)
    s = _lane_total(acc)
    e_y = d[y]
    inv = <floating>(scale / s)
    for j in range(n):
        d[j] = d[j] * inv
    # p_y - 1 in double: the float product above would lose p_y - 1 when p_y is close to 1
    d[y] = <floating>((e_y / s - 1.0) * scale)
    return s


cdef inline double softmax_xent_row(const floating *z, floating *d, Py_ssize_t n, Py_ssize_t y,
                                     double scale) noexcept nogil:
    """log Σ_j exp(z_j) - z_y; with d (not NULL): d := (softmax(z) - onehot(y))·scale."""
    cdef double neg_shift, s
    if d == NULL:
        s = _loss_only_sum(z, n, y, &neg_shift)
    else:
        _shift_row(z, d, n, y, &neg_shift)
        _exp_inplace(d, n)
        s = _softmax_grad_row(d, n, y, scale)
    return neg_shift + fastbp_log(s)


cdef inline cloned_void _add_logs(const double *s, double *out, Py_ssize_t n) noexcept nogil:
    """out[k] := out[k] + log(s[k]); cloned per ISA, so the logs of a block run as vectors."""
    cdef Py_ssize_t k
    for k in range(n):
        out[k] = out[k] + fastbp_log(s[k])


cdef inline void softmax_xent_rows(const floating *z, floating *d, Py_ssize_t rows, Py_ssize_t n,
                                   const int64_t *y, double scale,
                                   double *row_loss) noexcept nogil:
    """softmax_xent_row for `rows` (<= ROWS) consecutive rows of width n, bitwise the same
    values: row_loss[i] := the loss of row i, d (or NULL) their gradient rows.  The rows' exps
    run in one vectorised pass over the block (no per-row call and vector tail) and so do
    their logs (no libm call per row)."""
    cdef double s[ROWS]
    cdef Py_ssize_t i
    if d == NULL:
        for i in range(rows):
            s[i] = _loss_only_sum(z + i * n, n, y[i], row_loss + i)
    else:
        for i in range(rows):
            _shift_row(z + i * n, d + i * n, n, y[i], row_loss + i)
        _exp_inplace(d, rows * n)
        for i in range(rows):
            s[i] = _softmax_grad_row(d + i * n, n, y[i], scale)
    _add_logs(s, row_loss, rows)


cdef inline double svm_row(const floating *s, floating *d, Py_ssize_t n, Py_ssize_t y,
                            double scale) noexcept nogil:
    """Σ_{j≠y} max(0, s_j - s_y + 1); with d: d_j := scale·[margin_j > 0], d_y := -scale·count."""
    cdef floating scratch[BLOCK]
    cdef floating g = <floating>scale
    cdef double loss
    cdef Py_ssize_t j, count = 0
    cdef bint positive
    if d == NULL:
        return _fill_sum(HINGE, s, n, s[y], y, scratch, False)
    loss = _fill_sum(HINGE, s, n, s[y], y, d, True)  # d holds the margins (0 at y)
    for j in range(n):
        positive = d[j] > 0
        count = count + positive
        d[j] = positive * g
    d[y] = <floating>(-scale * count)
    return loss


cdef inline double mse_row(const floating *p, const floating *t, floating *d, Py_ssize_t n,
                            floating g) noexcept nogil:
    """Σ_j (p_j - t_j)², the difference in the input dtype, squared and summed in double;
    with d: d := g·(p - t)."""
    cdef double acc[LANES]
    cdef double r
    cdef Py_ssize_t b, j, k, full = n - n % LANES
    for k in range(LANES):
        acc[k] = 0
    for b in range(n // LANES):
        for k in range(LANES):
            j = b * LANES + k
            r = p[j] - t[j]
            acc[k] += r * r
    for k in range(n - full):
        r = p[full + k] - t[full + k]
        acc[k] += r * r
    if d != NULL:
        for j in range(n):
            d[j] = (p[j] - t[j]) * g
    return _lane_total(acc)
