# cython: language_level=3
"""Inverted dropout: out = x * mask, mask = keep / keep_prob, from a counter-based RNG.

Design
------
a. Layout: x, out, mask, dout, dx are 1-D C-contiguous ndarrays of one float dtype (float32
   or float64, fixed by the first array); the Python layer ravels N-d arrays.  Inputs are only
   read (read-only arrays work); outputs are passed in and written (kernels never allocate).
   The entry validates with the NumPy C-API (_arrays.pxd, which says why not memoryviews:
   dropout_forward's whole call ~0.75 us with them, ~0.1 us now), the thread count included.
b. Randomness is a pure function of (seed, element index): element i is kept when
   ``splitmix64(key + (i + 1) * GOLDEN) >> 11  <  floor(keep_prob * 2**53)`` with
   ``key = splitmix64(seed)``.  There is no generator state, so the mask is the same for any
   thread count and any schedule, and the NumPy twin (fastbp/reference/dropout.py) reproduces
   it bit for bit with uint64 arrays (wraparound arithmetic).  Hashing the seed first makes
   nearby seeds (s, s + 1, s + GOLDEN) give unrelated masks instead of shifted copies.
c. The keep test is integer arithmetic on the top 53 bits (the same resolution as a float64
   uniform in [0, 1)), so P(keep) = floor(keep_prob * 2**53) / 2**53: exact to 1.1e-16 and
   exactly 1 for keep_prob = 1 (every 53-bit value is < 2**53).  keep_prob * 2**53 is exact in
   double (a power-of-two scale) and the truncation to uint64 is the same in C and Python.
d. The loop is branch-free: mask = (kept) * scale with scale = 1/keep_prob rounded once to the
   dtype, out = x * mask in the dtype (what NumPy computes, so the twin agrees bitwise).
   Parallel over elements, schedule static; each element is independent.  One thread runs a
   plain loop: entering a parallel region costs ~0.8 us even for one thread (measured).
e. Not done here: the train/test switch, seeding policy and validation of keep_prob and seed
   range (fastbp.layers.dropout_forward does them before any kernel runs).
"""
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport uint64_t

from ._arrays cimport array_data, check_threads, float_type, length

cnp.import_array()

__all__ = ["dropout_forward", "dropout_backward"]

cdef uint64_t GOLDEN = 0x9E3779B97F4A7C15ULL   # 2**64 / golden ratio: the splitmix64 increment


cdef inline uint64_t _mix64(uint64_t z) noexcept nogil:
    """splitmix64 finaliser (Steele, Lea & Flood 2014; the constants of Java's SplittableRandom)."""
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef inline void _drop(const floating *x, floating *out, floating *mask, Py_ssize_t i,
                       uint64_t threshold, uint64_t key, floating scale) noexcept nogil:
    """Element i of dropout_forward (design b-d)."""
    cdef uint64_t bits = _mix64(key + <uint64_t>(i + 1) * GOLDEN) >> 11  # top 53 bits
    cdef floating m = <floating>(bits < threshold) * scale
    mask[i] = m
    out[i] = x[i] * m


cdef void _forward(const floating *x, floating *out, floating *mask, Py_ssize_t n,
                   uint64_t threshold, uint64_t key, double keep_prob,
                   int n_threads) noexcept nogil:
    cdef floating scale = <floating>(1.0 / keep_prob)
    cdef Py_ssize_t i
    if n_threads == 1:  # no parallel region (design d)
        for i in range(n):
            _drop(x, out, mask, i, threshold, key, scale)
    else:
        for i in prange(n, schedule="static", num_threads=n_threads):
            _drop(x, out, mask, i, threshold, key, scale)


cdef void _backward(const floating *dout, const floating *mask, floating *dx, Py_ssize_t n,
                    int n_threads) noexcept nogil:
    cdef Py_ssize_t i
    if n_threads == 1:  # no parallel region (design d)
        for i in range(n):
            dx[i] = dout[i] * mask[i]
    else:
        for i in prange(n, schedule="static", num_threads=n_threads):
            dx[i] = dout[i] * mask[i]


def dropout_forward(x, out, mask, double keep_prob, uint64_t seed, int n_threads=1):
    """mask := keep(seed, i) / keep_prob;  out := x * mask   (all 1-D, length N).

    keep(seed, i) is 1 with probability keep_prob, a pure function of (seed, i) (design b).
    keep_prob must lie in (0, 1]; keep_prob = 1 keeps everything (mask 1, out = x).
    """
    cdef int t = float_type(x, "dropout_forward", "x")
    cdef const char *px = array_data(x, "dropout_forward", "x", t, False, -1, None)
    cdef Py_ssize_t n = length(x)
    cdef char *po = array_data(out, "dropout_forward", "out", t, True, n, "x")
    cdef char *pm = array_data(mask, "dropout_forward", "mask", t, True, n, "x")
    if not (0.0 < keep_prob <= 1.0):
        raise ValueError(f"dropout_forward: keep_prob must lie in (0, 1], got {keep_prob}")
    check_threads("dropout_forward", n_threads)
    cdef uint64_t threshold = <uint64_t>(keep_prob * 9007199254740992.0)  # keep_prob * 2**53
    cdef uint64_t key = _mix64(seed)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _forward(<const float *>px, <float *>po, <float *>pm, n, threshold, key, keep_prob,
                     n_threads)
        else:
            _forward(<const double *>px, <double *>po, <double *>pm, n, threshold, key,
                     keep_prob, n_threads)


def dropout_backward(dout, mask, dx, int n_threads=1):
    """dx := dout * mask   (the mask dropout_forward wrote; all 1-D, length N)."""
    cdef int t = float_type(dout, "dropout_backward", "dout")
    cdef const char *pg = array_data(dout, "dropout_backward", "dout", t, False, -1, None)
    cdef Py_ssize_t n = length(dout)
    cdef const char *pm = array_data(mask, "dropout_backward", "mask", t, False, n, "dout")
    cdef char *pd = array_data(dx, "dropout_backward", "dx", t, True, n, "dout")
    check_threads("dropout_backward", n_threads)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _backward(<const float *>pg, <const float *>pm, <float *>pd, n, n_threads)
        else:
            _backward(<const double *>pg, <const double *>pm, <double *>pd, n, n_threads)
