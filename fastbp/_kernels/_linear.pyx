# cython: language_level=3
"""Linear (affine) layer kernels: out = x·w + b and its backward, GEMMs through _blas.

Design
------
a. Layout: x (N, D), w (D, M), out/dout (N, M), b/db (M,), all C-contiguous, float32 or
   float64 (the fused type `floating`; one dtype per call).  Inputs are `const` so read-only
   arrays work; outputs are passed in and written (kernels never allocate).
b. GEMMs: one BLAS call each (never a hand-written loop, never BLAS inside a prange); BLAS
   threads itself.  Backward is dx = dout·wᵀ and dw = s·xᵀ·dout + β·dw as two gemm calls
   with explicit alpha/beta on the parameter gradients: `scale` (s) folds a 1/N into the
   product for free, `beta` = 1 accumulates into an existing gradient, and dw = w, db = b with
   s = −lr, β = 1 is a plain SGD step fused into the GEMM (dx is computed first, from the old w).
c. Parallel work here is only the O(N·M) bias epilogue (over rows) and the bias gradient
   db = s·Σ_rows dout + β·db (over blocks of columns: each thread owns whole columns and
   adds the rows in order, so the sum is identical for any thread count and matches NumPy's
   row-by-row `sum(axis=0)`); both are the fused kernels' loops (_fused_loops.pxd) with no
   activation, so the fused and unfused paths share one column sum.
d. Optional buffers: b = None (no bias), dx / dw / db = None (not computed; the first layer of
   a network needs no dx).
e. Entry: ndarrays checked with the NumPy C-API (_arrays.pxd: type, the dtype of the first
   array, 2-D, C order, outputs writeable, shapes), as _activations, _optim,
   _dropout and _norm do (_losses and the test-facing _blas.gemm still take typed
   memoryviews); then one float or double call of the pointer loops.
"""
cimport numpy as cnp
from cython cimport floating

from ._arrays cimport (
    Affine, affine_arrays, check_threads, float_type, matrix_data, vector_data,
)
from ._blas cimport gemm_rm
from ._fused_loops cimport IDENTITY, _epilogue, column_sum

cnp.import_array()

__all__ = ["linear_forward", "linear_backward"]

cdef void _forward(floating tag, const floating *x, const floating *w, const floating *b,
                   floating *out, Py_ssize_t n, Py_ssize_t d, Py_ssize_t m,
                   int n_threads) noexcept nogil:
    """out := x·w (+ b), for n, m > 0."""
    gemm_rm(False, False, <int>n, <int>m, <int>d, 1.0, x if d else NULL, <int>max(d, 1),
            w if d else NULL, <int>m, 0.0, out, <int>m)
    if b != NULL:  # the fused kernels' epilogue, with no activation
        _epilogue(out, b, <floating *>NULL, n, m, IDENTITY, 0, n_threads)


cdef void _backward(floating tag, const floating *dout, const floating *x, const floating *w,
                    floating *dx, floating *dw, floating *db, Py_ssize_t n, Py_ssize_t d,
                    Py_ssize_t m, double scale, double beta, int n_threads) noexcept nogil:
    """dx := dout·wᵀ; dw := s·xᵀ·dout + β·dw; db := s·Σ_rows dout + β·db (NULL: skipped)."""
    if n == 0 or m == 0:
        dout = NULL
    if dx != NULL and n and d:
        gemm_rm(False, True, <int>n, <int>d, <int>m, 1.0, dout, <int>max(m, 1),
                w if m else NULL, <int>max(m, 1), 0.0, dx, <int>d)
    if dw != NULL and d and m:
        gemm_rm(True, False, <int>d, <int>m, <int>n, scale, x if n else NULL, <int>d, dout,
                <int>m, beta, dw, <int>m)
    if db != NULL and m:
        column_sum(dout, n, m, <floating>scale, <floating>beta, db, n_threads)


def linear_forward(x, w, b, out, int n_threads=1):
    """out := x @ w + b   (x (N, D), w (D, M), b (M,) or None, out (N, M))."""
    cdef Affine a
    cdef int t = affine_arrays("linear_forward", x, w, b, out, &a)
    check_threads("linear_forward", n_threads)
    if a.n == 0 or a.m == 0:
        return
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _forward(<float>0, <const float *>a.x, <const float *>a.w, <const float *>a.b,
                     <float *>a.out, a.n, a.d, a.m, n_threads)
        else:
            _forward(<double>0, <const double *>a.x, <const double *>a.w, <const double *>a.b,
                     <double *>a.out, a.n, a.d, a.m, n_threads)


def linear_backward(dout, x, w, dx, dw, db, double scale=1.0, double beta=0.0,
                    int n_threads=1):
    """dx := dout @ wᵀ;  dw := s·xᵀ @ dout + β·dw;  db := s·Σ_rows dout + β·db.

    Any of dx, dw, db may be None (not computed).  `scale` and `beta` apply to the parameter
    gradients only; dx is overwritten, and computed before dw, so dw may be w itself
    (s = -lr, β = 1: an SGD step inside the GEMM).
    """
    cdef str k = "linear_backward"
    cdef int t = float_type(dout, k, "dout")
    cdef const char *pg = matrix_data(dout, k, "dout", t, False, -1, -1)
    cdef Py_ssize_t n = (<cnp.ndarray>dout).shape[0], m = (<cnp.ndarray>dout).shape[1]
    cdef const char *px = matrix_data(x, k, "x", t, False, n, -1)
    cdef Py_ssize_t d = (<cnp.ndarray>x).shape[1]
    cdef const char *pw = matrix_data(w, k, "w", t, False, d, m)
    cdef char *pdx = matrix_data(dx, k, "dx", t, True, n, d)
    cdef char *pdw = matrix_data(dw, k, "dw", t, True, d, m)
    cdef char *pdb = vector_data(db, k, "db", t, True, m, "dout's columns")
    check_threads(k, n_threads)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _backward(<float>0, <const float *>pg, <const float *>px, <const float *>pw,
                      <float *>pdx, <float *>pdw, <float *>pdb, n, d, m, scale, beta,
                      n_threads)
        else:
            _backward(<double>0, <const double *>pg, <const double *>px, <const double *>pw,
                      <double *>pdx, <double *>pdw, <double *>pdb, n, d, m, scale, beta,
                      n_threads)
