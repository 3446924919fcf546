# cython: language_level=3
"""Elementwise activation kernels: <act>_forward / <act>_backward, float32 and float64, nogil.

Design
------
a. Layout and entry: every buffer is a 1-D, C-contiguous ndarray of float32 or float64; the
   Python layer ravels any shape first, so one kernel serves (N, D), (N,) and scalars alike.
   Kernels take C-contiguous ndarrays; the entry validates with the NumPy C-API (_arrays.pxd):
   ndarray, 1-D, C-contiguous, the dtype of the first array (which picks the float or double
   loops), outputs writeable, each failure a TypeError/ValueError naming the kernel and the
   argument.  Inputs are only read (read-only arrays work).  (_arrays.pxd says why not typed
   memoryviews: relu_forward's whole call ~0.65 us with them, ~0.07 us through the C-API.)
   All buffers of one call must have the same length (ValueError naming the arguments
   otherwise), checked before the GIL is released.  An output may be the same buffer as an
   input (in place): each element is read before it is written.
b. Who allocates: nobody here; ``out`` / ``dx`` are passed in and overwritten.
c. Threads and SIMD: the flat index range is cut into blocks of BLOCK elements; ``prange``
   hands contiguous runs of blocks to at most ``n_threads`` OpenMP threads (schedule="static";
   with one thread or one block the blocks run in a plain loop, no parallel region at all),
   and each block is one call of a per-operation loop function: a plain ``for`` over a scalar
   helper from _activation_math.pxd, which gcc vectorises.  The loop functions return
   ``cloned_void`` (csrc/fastbp_math.h): gcc builds them for AVX-512, AVX2 and the baseline
   (SSE2) and picks one per CPU at load time, since the build itself must target the baseline
   (no -march=native) while NumPy and PyTorch dispatch to AVX-512 at run time; measured here,
   the clones made the exp-based float32 loops 3-4x faster.  Without FMA contraction
   (-std=c99) every clone performs the same IEEE operations, so results do not depend on the
   CPU (checked bitwise against a -DFASTBP_NO_SIMD_CLONES build), on the thread count, or on the
   run.  The operation (and the GELU form) is chosen once per block, outside the element loop;
   there are no reductions.  How many threads a call deserves (serial below some size) is the
   caller's policy (fastbp._config.threads_for).
d. Numerics (see _activation_math.pxd and csrc/fastbp_math.h for the formulas):
   - exp, expm1, tanh and the normal CDF are branch-free polynomials (csrc/fastbp_math.h), since
     a libm call in the loop would stop it vectorising (measured for exp: ~8x on softmax).
   - sigmoid uses exp(-|x|) (never overflows) and the branch-stable quotient; tanh is
     -expm1(-2|x|)/(2 + expm1(-2|x|)) with the sign restored: bounded for any x, and relatively
     accurate near 0 (tanh(1e-8) = 1e-8).  ELU uses expm1, so alpha*(exp(x)-1) keeps its digits
     near 0.  tanh-GELU is evaluated as x*sigmoid(2u), which keeps relative precision for
     x << 0 where 0.5*(1 + tanh(u)) cancels; x is clamped to +-1e3 inside u (exact there).
   - exact GELU needs the normal CDF Phi.  float32: Phi(-a) = t*q(t)*exp(-a^2/2)/2 with q a
     polynomial fit of erfcx (relative error < 5e-7 measured, also in the far tail, unlike
     0.5*(1 + erf(x/sqrt2))), the exponent split so that x*x is not rounded, one exp per element
     for forward and backward alike.  float64: libm erfc per element (exact to ~1 ulp, but
     scalar: that loop does not vectorise).
   - Finite inputs give finite outputs and gradients (tested at +-1e3, +-1e4 and near the top of
     the range); NaN in x gives NaN in every forward.  ReLU-type backwards select
     (``x > 0 ? dout : ...``) rather than multiply by a mask, so dout = inf where the mask is 0
     yields 0, not NaN.
   - Derivative conventions at the kinks: the left branch at x = 0 (ReLU'(0) = 0, leaky
     ReLU'(0) = alpha, ELU'(0) = alpha), as PyTorch.
e. Not done: strided or N-D buffers (the caller makes them contiguous); fused bias/GEMM
   epilogues (those live with the GEMM and cimport the same helpers); a vectorised erfc in
   double precision; FMA (it would make results depend on the CPU).
"""
cimport numpy as cnp
from cython.parallel cimport prange
from cython cimport floating

from ._arrays cimport array_data, check_threads, float_type, length

from ._activation_math cimport (
    FASTBP_SIMD_CLONES, cloned_void, elu_bwd, elu_fwd, gelu_bwd, gelu_fwd, gelu_tanh_bwd,
    gelu_tanh_fwd, leaky_relu_bwd, leaky_relu_fwd, relu_bwd, relu_fwd, sigmoid_bwd, sigmoid_fwd,
    tanh_bwd, tanh_fwd,
)

cnp.import_array()

__all__ = [
    "relu_forward", "relu_backward",
    "leaky_relu_forward", "leaky_relu_backward",
    "sigmoid_forward", "sigmoid_backward",
    "tanh_forward", "tanh_backward",
    "elu_forward", "elu_backward",
    "gelu_forward", "gelu_backward",
]

#: True when the loops below were built as per-ISA clones chosen at load time (see design c).
SIMD_CLONES = bool(FASTBP_SIMD_CLONES)

# Elements per block: 16 KiB of float32 per stream, large enough that the per-block dispatch is
# noise, small enough that a (64, 4096) batch still splits evenly over a few threads.
cdef Py_ssize_t BLOCK = 4096

cdef enum Op:
    RELU_FWD
    RELU_BWD
    LEAKY_FWD
    LEAKY_BWD
    SIGMOID_FWD
    SIGMOID_BWD
    TANH_FWD
    TANH_BWD
    ELU_FWD
    ELU_BWD
    GELU_FWD
    GELU_BWD
    GELU_TANH_FWD
    GELU_TANH_BWD


# One loop per operation, each its own small function, cloned per ISA (cloned_void: AVX-512,
# AVX2 and baseline copies, the best picked at load time).  Separate functions also keep gcc
# inlining the exp-family helpers (it gave up on fastbp_expf, so did not vectorise, when all
# fourteen loops sat in one function).  Forwards ignore `b` (NULL) and `alpha` where they take
# none.
ctypedef const floating *cptr

cdef cloned_void _relu_fwd(cptr a, cptr b, floating *out, Py_ssize_t n,
                           floating alpha) noexcept nogil:
    for i in range(n):
        out[i] = relu_fwd(a[i])

cdef cloned_void _relu_bwd(cptr a, cptr b, floating *out, Py_ssize_t n,
                           floating alpha) noexcept nogil:
    for i in range(n):
        out[i] = relu_bwd(a[i], b[i])

cdef cloned_void _leaky_fwd(cptr a, cptr b, floating *out, Py_ssize_t n,
                            floating alpha) noexcept nogil:
    for i in range(n):
        out[i] = leaky_relu_fwd(a[i], alpha)

cdef cloned_void _leaky_bwd(cptr a, cptr b, floating *out, Py_ssize_t n,
                            floating alpha) noexcept nogil:
    for i in range(n):
        out[i] = leaky_relu_bwd(a[i], b[i], alpha)

cdef cloned_void _sigmoid_fwd(cptr a, cptr b, floating *out, Py_ssize_t n,
                              floating alpha) noexcept nogil:
    for i in range(n):
        out[i] = sigmoid_fwd(a[i])

cdef cloned_void _sigmoid_bwd(cptr a, cptr b, floating *out, Py_ssize_t n,
                              floating alpha) noexcept nogil:
    for i in range(n):
        out[i] = sigmoid_bwd(a[i], b[i])

cdef cloned_void _tanh_fwd(cptr a, cptr b, floating *out, Py_ssize_t n,
                           floating alpha) noexcept nogil:
    for i in range(n):
        out[i] = tanh_fwd(a[i])

cdef cloned_void _tanh_bwd(cptr a, cptr b, floating *out, Py_ssize_t n,
                           floating alpha) noexcept nogil:
    for i in range(n):
        out[i] = tanh_bwd(a[i], b[i])

cdef cloned_void _elu_fwd(cptr a, cptr b, floating *out, Py_ssize_t n,
                          floating alpha) noexcept nogil:
    for i in range(n):
        out[i] = elu_fwd(a[i], alpha)

cdef cloned_void _elu_bwd(cptr a, cptr b, floating *out, Py_ssize_t n,
                          floating alpha) noexcept nogil:
    for i in range(n):
        out[i] = elu_bwd(a[i], b[i], alpha)

cdef cloned_void _gelu_fwd(cptr a, cptr b, floating *out, Py_ssize_t n,
                           floating alpha) noexcept nogil:
    for i in range(n):
        out[i] = gelu_fwd(a[i])

cdef cloned_void _gelu_bwd(cptr a, cptr b, floating *out, Py_ssize_t n,
                           floating alpha) noexcept nogil:
    for i in range(n):
        out[i] = gelu_bwd(a[i], b[i])

cdef cloned_void _gelu_tanh_fwd(cptr a, cptr b, floating *out, Py_ssize_t n,
                         floating alpha) noexcept nogil:
    for i in range(n):
        out[i] = gelu_tanh_fwd(a[i])

cdef cloned_void _gelu_tanh_bwd(cptr a, cptr b, floating *out, Py_ssize_t n,
                         floating alpha) noexcept nogil:
    for i in range(n):
        out[i] = gelu_tanh_bwd(a[i], b[i])


cdef void _block(Op op, cptr a, cptr b, floating *out, Py_ssize_t n,
                 floating alpha) noexcept nogil:
    """out[i] := op(a[i]) (forward) or op(a[i], b[i]) (backward: a = dout), i < n."""
    if op == RELU_FWD:
        _relu_fwd(a, b, out, n, alpha)
    elif op == RELU_BWD:
        _relu_bwd(a, b, out, n, alpha)
    elif op == LEAKY_FWD:
        _leaky_fwd(a, b, out, n, alpha)
    elif op == LEAKY_BWD:
        _leaky_bwd(a, b, out, n, alpha)
    elif op == SIGMOID_FWD:
        _sigmoid_fwd(a, b, out, n, alpha)
    elif op == SIGMOID_BWD:
        _sigmoid_bwd(a, b, out, n, alpha)
    elif op == TANH_FWD:
        _tanh_fwd(a, b, out, n, alpha)
    elif op == TANH_BWD:
        _tanh_bwd(a, b, out, n, alpha)
    elif op == ELU_FWD:
        _elu_fwd(a, b, out, n, alpha)
    elif op == ELU_BWD:
        _elu_bwd(a, b, out, n, alpha)
    elif op == GELU_FWD:
        _gelu_fwd(a, b, out, n, alpha)
    elif op == GELU_BWD:
        _gelu_bwd(a, b, out, n, alpha)
    elif op == GELU_TANH_FWD:
        _gelu_tanh_fwd(a, b, out, n, alpha)
    elif op == GELU_TANH_BWD:
        _gelu_tanh_bwd(a, b, out, n, alpha)


cdef inline void _nth_block(Op op, const floating *a, const floating *b, floating *out,
                            Py_ssize_t n, Py_ssize_t blk, floating alpha) noexcept nogil:
    """Block number `blk` of an n-element call."""
    cdef Py_ssize_t lo = blk * BLOCK
    _block(op, a + lo, b + lo if b != NULL else NULL, out + lo, min(BLOCK, n - lo), alpha)


cdef void _run(Op op, const floating *a, const floating *b, floating *out, Py_ssize_t n,
               floating alpha, int n_threads) noexcept nogil:
    """Apply `op` over n elements in BLOCK-sized blocks, blocks split statically over threads.

    `b` may be NULL for forwards (it is then never read).  A call with one thread (or one
    block) runs without a parallel region: entering one costs ~0.8 us even for a single thread
    (measured, libgomp), more than a (64, 64) relu takes.
    """
    cdef Py_ssize_t nblocks = (n + BLOCK - 1) // BLOCK
    cdef Py_ssize_t blk
    cdef int threads = <int>min(<Py_ssize_t>n_threads, nblocks)
    if threads <= 1:
        for blk in range(nblocks):
            _nth_block(op, a, b, out, n, blk, alpha)
    else:
        for blk in prange(nblocks, schedule="static", num_threads=threads):
            _nth_block(op, a, b, out, n, blk, alpha)


cdef int _length_error(str kernel, tuple names, tuple arrays) except -1:
    """ValueError naming a call's buffers and their (differing) lengths."""
    shown = ", ".join(f"{name}={length(a)}" for name, a in zip(names, arrays))
    raise ValueError(f"{kernel}: {', '.join(names)} must have the same length, got {shown}")


cdef int _unary(str kernel, Op op, object x, object out, double alpha,
                int n_threads) except -1:
    """Check (design a) and run a forward: out := op(x)."""
    cdef int t = float_type(x, kernel, "x")
    cdef const char *px = array_data(x, kernel, "x", t, False, -1, None)
    cdef char *po = array_data(out, kernel, "out", t, True, -1, None)
    check_threads(kernel, n_threads)
    cdef Py_ssize_t n = length(x)
    if length(out) != n:
        _length_error(kernel, ("x", "out"), (x, out))
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _run(op, <const float *>px, <const float *>NULL, <float *>po, n, <float>alpha,
                 n_threads)
        else:
            _run(op, <const double *>px, <const double *>NULL, <double *>po, n, alpha,
                 n_threads)
    return 0


cdef int _binary(str kernel, Op op, object dout, object saved, str saved_name, object dx,
                 double alpha, int n_threads) except -1:
    """Check (design a) and run a backward: dx := op(dout, saved)."""
    cdef int t = float_type(dout, kernel, "dout")
    cdef const char *pg = array_data(dout, kernel, "dout", t, False, -1, None)
    cdef const char *ps = array_data(saved, kernel, saved_name, t, False, -1, None)
    cdef char *pd = array_data(dx, kernel, "dx", t, True, -1, None)
    check_threads(kernel, n_threads)
    cdef Py_ssize_t n = length(dout)
    if length(saved) != n or length(dx) != n:
        _length_error(kernel, ("dout", saved_name, "dx"), (dout, saved, dx))
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _run(op, <const float *>pg, <const float *>ps, <float *>pd, n, <float>alpha,
                 n_threads)
        else:
            _run(op, <const double *>pg, <const double *>ps, <double *>pd, n, alpha,
                 n_threads)
    return 0


# The entry points take ndarrays (design a): IN arguments may be read-only, OUT ones (out, dx)
# are written.  Each is one line over _unary / _binary.

def relu_forward(x, out, int n_threads=1):
    """out := max(x, 0)  (NaN propagates)."""
    _unary("relu_forward", RELU_FWD, x, out, 0, n_threads)


def relu_backward(dout, x, dx, int n_threads=1):
    """dx := dout * (x > 0), from the forward input x (derivative 0 at x = 0)."""
    _binary("relu_backward", RELU_BWD, dout, x, "x", dx, 0, n_threads)


def leaky_relu_forward(x, out, double alpha=0.01, int n_threads=1):
    """out := x if x > 0 else alpha * x."""
    _unary("leaky_relu_forward", LEAKY_FWD, x, out, alpha, n_threads)


def leaky_relu_backward(dout, x, dx, double alpha=0.01, int n_threads=1):
    """dx := dout if x > 0 else alpha * dout, from the forward input x."""
    _binary("leaky_relu_backward", LEAKY_BWD, dout, x, "x", dx, alpha, n_threads)


def sigmoid_forward(x, out, int n_threads=1):
    """out := 1 / (1 + exp(-x))  (stable for both signs)."""
    _unary("sigmoid_forward", SIGMOID_FWD, x, out, 0, n_threads)


def sigmoid_backward(dout, y, dx, int n_threads=1):
    """dx := dout * y * (1 - y), from the forward OUTPUT y."""
    _binary("sigmoid_backward", SIGMOID_BWD, dout, y, "y", dx, 0, n_threads)


def tanh_forward(x, out, int n_threads=1):
    """out := tanh(x)."""
    _unary("tanh_forward", TANH_FWD, x, out, 0, n_threads)


def tanh_backward(dout, y, dx, int n_threads=1):
    """dx := dout * (1 - y**2), from the forward OUTPUT y."""
    _binary("tanh_backward", TANH_BWD, dout, y, "y", dx, 0, n_threads)


def elu_forward(x, out, double alpha=1.0, int n_threads=1):
    """out := x if x > 0 else alpha * expm1(x)."""
    _unary("elu_forward", ELU_FWD, x, out, alpha, n_threads)


def elu_backward(dout, x, dx, double alpha=1.0, int n_threads=1):
    """dx := dout if x > 0 else dout * alpha * exp(x), from the forward input x."""
    _binary("elu_backward", ELU_BWD, dout, x, "x", dx, alpha, n_threads)


def gelu_forward(x, out, bint approximate=False, int n_threads=1):
    """out := x * Phi(x); approximate: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x**3)))."""
    _unary("gelu_forward", GELU_TANH_FWD if approximate else GELU_FWD, x, out, 0, n_threads)


def gelu_backward(dout, x, dx, bint approximate=False, int n_threads=1):
    """dx := dout * (Phi(x) + x * phi(x)) (or the exact derivative of the tanh form), from x."""
    _binary("gelu_backward", GELU_TANH_BWD if approximate else GELU_BWD, dout, x, "x", dx, 0,
            n_threads)
