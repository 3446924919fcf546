# Scalar math shared by the kernels: the vectorisable exp from csrc/fastbp_math.h, dispatched on
# the fused type, and the per-ISA clone marker for loop functions.
from cython cimport floating

cdef extern from "fastbp_math.h" nogil:
    double fastbp_exp(double x)
    float fastbp_expf(float x)
    # `void` built once per ISA (AVX-512, AVX2, baseline) with runtime dispatch, where the
    # compiler and platform support it (see csrc/fastbp_math.h); plain `void` elsewhere.
    ctypedef void cloned_void "FASTBP_CLONED_VOID"
    int FASTBP_SIMD_CLONES


cdef inline floating vexp(floating x) noexcept nogil:
    """exp(x), branch-free so loops calling it vectorise (csrc/fastbp_math.h)."""
    if floating is float:
        return fastbp_expf(x)
    else:
        return fastbp_exp(x)
