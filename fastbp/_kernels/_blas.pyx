# cython: language_level=3
"""Row-major GEMM over SciPy's BLAS (scipy.linalg.cython_blas), float32 and float64, nogil.

Design
------
a. Layout: every fastbp buffer is C-contiguous (row-major).  BLAS is column-major, and a
   row-major matrix is the column-major view of its transpose, so C = op(A)·op(B) is computed
   as Cᵀ = op(B)ᵀ·op(A)ᵀ: the operands are swapped, the transpose flags are kept (the same
   trick as scikit-learn's sklearn/utils/_cython_blas.pyx).
b. Who allocates: nobody here; C is passed in and written (beta = 0) or accumulated into.
c. Threads: BLAS keeps its own pool (sized by threadpoolctl, fastbp.set_num_threads); this
   module never calls BLAS from inside a prange.
d. Not done: integer overflow of dimensions beyond 2**31 - 1 is rejected by the def wrapper,
   since SciPy's BLAS takes 32-bit ints.
"""
from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm

__all__ = ["gemm"]

cdef int INT_MAX = 2147483647


cdef void gemm_rm(bint trans_a, bint trans_b, int m, int n, int k,
                  double alpha, const floating *a, int lda,
                  const floating *b, int ldb,
                  double beta, floating *c, int ldc) noexcept nogil:
    """C[m, n] := alpha * op(A) @ op(B) + beta * C, all row-major; lda/ldb/ldc are row strides.

    With beta = 0, C is not read (NaN in it does not propagate), as in BLAS.
    """
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    cdef float alpha_f = <float>alpha, beta_f = <float>beta
    cdef Py_ssize_t i, j
    if m <= 0 or n <= 0:
        return
    if k <= 0:  # an empty product: C := beta*C, without asking BLAS about a 0-sized operand
        for i in range(m):
            for j in range(n):
                c[i * ldc + j] = 0 if beta == 0 else <floating>(beta * c[i * ldc + j])
        return
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha_f, <float *>b, &ldb, <float *>a, &lda,
              &beta_f, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double *>b, &ldb, <double *>a, &lda,
              &beta, c, &ldc)


def gemm(bint trans_a, bint trans_b, double alpha, const floating[:, ::1] a,
         const floating[:, ::1] b, double beta, floating[:, ::1] c):
    """C := alpha * op(A) @ op(B) + beta * C (row-major, in place); op(X) is X or Xᵀ.

    Parameters
    ----------
    trans_a, trans_b : bool
        Use Aᵀ (Bᵀ) instead of A (B).
    alpha, beta : float
        Scale of the product and of the old C (beta = 0: C is overwritten, never read).
    a, b : C-contiguous arrays, float32 or float64 (read-only is fine)
    c : C-contiguous array of the same dtype, shape (rows of op(A), columns of op(B)); written.

    Raises
    ------
    ValueError
        If the shapes do not agree or a dimension exceeds 2**31 - 1.
    """
    cdef Py_ssize_t m = a.shape[1] if trans_a else a.shape[0]
    cdef Py_ssize_t k = a.shape[0] if trans_a else a.shape[1]
    cdef Py_ssize_t kb = b.shape[1] if trans_b else b.shape[0]
    cdef Py_ssize_t n = b.shape[0] if trans_b else b.shape[1]
    if k != kb or c.shape[0] != m or c.shape[1] != n:
        raise ValueError(
            f"gemm: op(a) is ({m}, {k}), op(b) is ({kb}, {n}), c is "
            f"({c.shape[0]}, {c.shape[1]}); expected c of shape ({m}, {n}) and matching inner "
            "dimensions")
    if max(m, n, k, a.shape[1], b.shape[1]) > INT_MAX:
        raise ValueError("gemm: dimensions beyond 2**31 - 1 are not supported by this BLAS")
    if m == 0 or n == 0:
        return
    cdef const floating *pa = &a[0, 0] if a.shape[0] * a.shape[1] else NULL
    cdef const floating *pb = &b[0, 0] if b.shape[0] * b.shape[1] else NULL
    with nogil:
        gemm_rm(trans_a, trans_b, <int>m, <int>n, <int>k, alpha, pa, <int>max(1, a.shape[1]),
                pb, <int>max(1, b.shape[1]), beta, &c[0, 0], <int>c.shape[1])
