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
"""
from cython cimport floating

from ._blas cimport gemm_rm
from ._fused_loops cimport IDENTITY, _epilogue, column_sum

__all__ = ["linear_forward", "linear_backward"]

def _shape_error(kernel, name, got, expected):
    return ValueError(f"{kernel}: {name} has shape {tuple(got)}, expected {expected}")


def linear_forward(const floating[:, ::1] x, const floating[:, ::1] w,
                   const floating[::1] b, floating[:, ::1] out, int n_threads=1):
    """out := x @ w + b   (x (N, D), w (D, M), b (M,) or None, out (N, M))."""
    cdef Py_ssize_t n = x.shape[0], d = x.shape[1], m = w.shape[1]
    if w.shape[0] != d:
        raise _shape_error("linear_forward", "w", (w.shape[0], w.shape[1]), (d, m))
    if out.shape[0] != n or out.shape[1] != m:
        raise _shape_error("linear_forward", "out", (out.shape[0], out.shape[1]), (n, m))
    cdef bint has_bias = b is not None
    if has_bias and b.shape[0] != m:
        raise _shape_error("linear_forward", "b", (b.shape[0],), (m,))
    if n == 0 or m == 0:
        return
    with nogil:
        gemm_rm(False, False, <int>n, <int>m, <int>d, 1.0,
                &x[0, 0] if d else NULL, <int>max(d, 1),
                &w[0, 0] if d else NULL, <int>m, 0.0, &out[0, 0], <int>m)
        if has_bias:  # the fused kernels' epilogue, with no activation
            _epilogue(&out[0, 0], &b[0], NULL, n, m, IDENTITY, 0, n_threads)


def linear_backward(const floating[:, ::1] dout, const floating[:, ::1] x,
                    const floating[:, ::1] w, floating[:, ::1] dx, floating[:, ::1] dw,
                    floating[::1] db, double scale=1.0, double beta=0.0, int n_threads=1):
    """dx := dout @ wᵀ;  dw := s·xᵀ @ dout + β·dw;  db := s·Σ_rows dout + β·db.

    Any of dx, dw, db may be None (not computed).  `scale` and `beta` apply to the parameter
    gradients only; dx is overwritten, and computed before dw, so dw may be w itself
    (s = -lr, β = 1: an SGD step inside the GEMM).
    """
    cdef Py_ssize_t n = dout.shape[0], m = dout.shape[1], d = x.shape[1]
    if x.shape[0] != n:
        raise _shape_error("linear_backward", "x", (x.shape[0], x.shape[1]), (n, d))
    if w.shape[0] != d or w.shape[1] != m:
        raise _shape_error("linear_backward", "w", (w.shape[0], w.shape[1]), (d, m))
    cdef bint want_dx = dx is not None, want_dw = dw is not None, want_db = db is not None
    if want_dx and (dx.shape[0] != n or dx.shape[1] != d):
        raise _shape_error("linear_backward", "dx", (dx.shape[0], dx.shape[1]), (n, d))
    if want_dw and (dw.shape[0] != d or dw.shape[1] != m):
        raise _shape_error("linear_backward", "dw", (dw.shape[0], dw.shape[1]), (d, m))
    if want_db and db.shape[0] != m:
        raise _shape_error("linear_backward", "db", (db.shape[0],), (m,))
    cdef const floating *pdout = NULL
    if n and m:
        pdout = &dout[0, 0]
    with nogil:
        if want_dx and n and d:
            gemm_rm(False, True, <int>n, <int>d, <int>m, 1.0, pdout, <int>max(m, 1),
                    &w[0, 0] if m else NULL, <int>max(m, 1), 0.0, &dx[0, 0], <int>d)
        if want_dw and d and m:
            gemm_rm(True, False, <int>d, <int>m, <int>n, scale,
                    &x[0, 0] if n else NULL, <int>d, pdout, <int>m, beta, &dw[0, 0], <int>m)
        if want_db and m:
            column_sum(pdout, n, m, <floating>scale, <floating>beta, &db[0], n_threads)
