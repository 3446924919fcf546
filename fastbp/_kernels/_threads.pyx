# cython: language_level=3
"""What the kernels were built with: OpenMP or not, and how many threads OpenMP offers now.

The thread-count *policy* (user setting, caps, the serial cut-off for small work) lives in
fastbp/_config.py; this module only reports what the C runtime says at call time, so that
OMP_NUM_THREADS and threadpoolctl limits are honoured.
"""

cdef extern from "fastbp_omp.h":
    int FASTBP_OPENMP
    int omp_get_max_threads() nogil


def openmp_enabled():
    """True when the compiled kernels were built with OpenMP (else they run serially)."""
    return bool(FASTBP_OPENMP)


def omp_max_threads():
    """The number of threads an OpenMP parallel region would use now (1 without OpenMP)."""
    return omp_get_max_threads()
