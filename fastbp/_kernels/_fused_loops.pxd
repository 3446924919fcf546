# Row loops shared by the linear and fused kernels (_linear.pyx, _fused.pyx) and the one-call
# training step (_step.pyx): the GEMM epilogue (bias + activation, optionally storing the
# pre-activation), the activation backward fused with the bias-gradient reduction, and the plain
# column sum (the bias gradient, the "identity" case).  See _fused.pyx's design block for
# what each activation's backward reads and how the work is split over threads.
#
# The activation codes are the spec table's (fastbp._specs.FUSED_ACTIVATIONS, in that order;
# tests/test_specs.py checks it): "identity" then one code per activation row and GELU form.
from cython cimport floating
from cython.parallel cimport prange

from ._activation_math cimport (
    elu_fwd, gelu_bwd, gelu_fwd, gelu_tanh_bwd, gelu_tanh_fwd, leaky_relu_bwd, leaky_relu_fwd,
    relu_bwd, relu_fwd, sigmoid_bwd, sigmoid_fwd, tanh_bwd, tanh_fwd,
)

cdef enum Act:
    IDENTITY, RELU, LEAKY_RELU, SIGMOID, TANH, ELU, GELU, GELU_TANH

# columns per block of the backward (each thread owns whole columns: a fixed summation order)
cdef enum:
    COL_BLOCK = 256


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


cdef inline void _epilogue(floating *out, const floating *b, floating *pre, Py_ssize_t n,
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


cdef inline void _backward_block(const floating *dout, const floating *saved, floating *dz,
                          floating *db, Py_ssize_t n, Py_ssize_t m, Py_ssize_t j0, Py_ssize_t j1,
                          int act, floating alpha, floating scale, floating beta) noexcept nogil:
    """Columns [j0, j1) of an (n, m) row-major block: dz = dout * act'(saved), db from dz;
    with dz = NULL, db from dout itself (a plain column sum: _linear's bias gradient)."""
    cdef floating acc[COL_BLOCK]
    cdef const floating *row
    cdef Py_ssize_t i, j, w = j1 - j0
    for j in range(w):
        acc[j] = 0
    for i in range(n):
        if dz != NULL:
            _derivative_segment(dout + i * m + j0, saved + i * m + j0, dz + i * m + j0, w, act,
                                alpha)
            row = dz + i * m + j0
        else:
            row = dout + i * m + j0
        if db != NULL:
            for j in range(w):
                acc[j] = acc[j] + row[j]
    if db == NULL:
        return
    if beta == 0:
        for j in range(w):
            db[j0 + j] = scale * acc[j]
    else:
        for j in range(w):
            db[j0 + j] = scale * acc[j] + beta * db[j0 + j]


cdef inline void _backward(const floating *dout, const floating *saved, floating *dz, floating *db,
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


cdef inline void column_sum(const floating *a, Py_ssize_t n, Py_ssize_t m, floating scale,
                            floating beta, floating *out, int n_threads) noexcept nogil:
    """out := scale * Σ_rows a + beta * out for a row-major (n, m) `a`, rows added in order per
    column (identical for any thread count, and to the fused kernels' bias gradient)."""
    _backward(a, NULL, NULL, out, n, m, IDENTITY, 0, scale, beta, n_threads)
