from cython cimport floating

cdef void gemm_rm(bint trans_a, bint trans_b, int m, int n, int k,
                  double alpha, const floating *a, int lda,
                  const floating *b, int ldb,
                  double beta, floating *c, int ldc) noexcept nogil
