# Scalar math shared by the kernels: the vectorisable exp from csrc/fastbp_math.h, dispatched on
# the fused type, plus libm for the functions that need no vectorising (one call per row).
from libc.math cimport exp as libm_exp, log as libm_log, logf as libm_logf
from libc.math cimport erf as libm_erf, erff as libm_erff, tanh as libm_tanh, tanhf as libm_tanhf
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


cdef inline floating flog(floating x) noexcept nogil:
    if floating is float:
        return libm_logf(x)
    else:
        return libm_log(x)
