# cython: language_level=3
"""Optimizer updates, in place, one fused pass per parameter array: SGD (plain, CS231n momentum,
PyTorch momentum / Nesterov), RMSProp and Adam.

Design
------
a. Layout and ownership: every buffer is a 1-D C-contiguous ndarray (float32 or float64, one
   dtype per call, fixed by w); callers ravel their parameter arrays (``reshape(-1)`` of a
   C-contiguous array is a view, so the update lands in the caller's array).  The parameter w
   and the optimizer state (v, cache, m, ...) are read and written IN PLACE, so must be
   writeable; the gradient dw is only read (read-only arrays work).  Nothing here allocates:
   the Python layer (fastbp.optim) owns the state arrays and creates them once per parameter.
   The entry validates with the NumPy C-API (_arrays.pxd, which says why not memoryviews:
   adam_step's whole call ~0.85 us with four of them, ~0.17 us now).
b. One pass: each kernel reads w, dw and its state once and writes w and the state once, in one
   loop, so a step is a single sweep over memory (NumPy's course formulas make 4-12 temporaries
   and as many passes).  An optimizer step is memory-bound: passes, not flops, set its speed.
c. Parallel axis: the flat array is cut into BLOCK-element blocks shared out by
   ``prange(schedule="static")``, or run in a plain loop when there is one thread or one block
   (entering a parallel region costs ~0.8 us even for one thread, measured with libgomp); each
   block runs a plain loop the compiler vectorises (sqrt included: setup.py passes
   -fno-math-errno, so sqrt needs no errno path).  Adam's and RMSProp's block loops (a sqrt
   and a divide per element, compute-bound at SSE2 width) are ``cloned_void``: built for
   AVX-512, AVX2 and the baseline with run-time dispatch (csrc/fastbp_math.h).  IEEE sqrt and
   divide are correctly rounded at any width and setup.py's -std=c99 keeps FMA contraction
   off, so every clone gives the same bits.  Each element is computed by the same
   expression whatever the thread count, so results are bitwise identical for any n_threads.
d. Branches out of loops: weight decay is decided once per block, in ``_decayed``.  With
   weight_decay == 0 the update loop reads dw directly; otherwise the block's g = dw + wd*w is
   formed first in a BLOCK-element stack buffer (it stays in L1) and the update loop reads that.
   So each update rule is written once and no loop tests a flag per element; Nesterov selects
   one of two update loops the same way.
e. Numerics: scalars arrive as double and are rounded once to the array's dtype, so float32
   updates compute in float32, as NumPy does with Python-float hyper-parameters (NEP 50), and
   products keep the course's grouping ((1 - rho) * (g*g), (lr*g) / (...)).  Adam's bias
   corrections 1 - beta^t are computed once per call, in double.  Its loop uses PyTorch's
   algebraically equal form  w -= (lr / (1 - b1^t)) * m / (sqrt(v) * (1 / sqrt(1 - b2^t)) + eps)
   (one division per element instead of three), which keeps epsilon OUTSIDE the square root and
   after the bias correction, as in the CS231n / CS182 rule; it agrees with the literal course
   formula (fastbp.reference.adam_step) to a few ulps.
f. Not done here: hyper-parameter range checks (fastbp.optim validates them before any kernel
   runs).  The kernels check their arrays (design a), t >= 1 and n_threads >= 1, raising
   TypeError/ValueError before touching memory.
"""
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport pow, sqrt, sqrtf

from ._arrays cimport array_data, check_threads, float_type, length
from ._math cimport cloned_void

cnp.import_array()

__all__ = ["sgd_step", "sgd_momentum_step", "momentum_step", "rmsprop_step", "adam_step"]

cdef enum:
    BLOCK = 2048  # elements per parallel task, and the size of the weight-decay scratch buffer


cdef inline floating _sqrt(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline const floating *_decayed(const floating *w, const floating *dw, floating wd,
                                     floating *buf, Py_ssize_t n) noexcept nogil:
    """The block's gradient with L2 weight decay: dw itself when wd == 0, else buf := dw + wd*w."""
    cdef Py_ssize_t i
    if wd == 0:
        return dw
    for i in range(n):
        buf[i] = dw[i] + wd * w[i]
    return buf


# --------------------------------------------------------------------------------------------
# per-block update loops: block `blk` of an n-element array, i.e. elements
# [blk * BLOCK, min((blk + 1) * BLOCK, n)); the pointers are moved to its start first.

cdef inline Py_ssize_t _n_blocks(Py_ssize_t n) noexcept nogil:
    return (n + BLOCK - 1) // BLOCK


cdef inline Py_ssize_t _block_size(Py_ssize_t n, Py_ssize_t blk) noexcept nogil:
    return min(<Py_ssize_t>BLOCK, n - blk * BLOCK)


cdef void _sgd_block(floating *w, const floating *dw, Py_ssize_t n, Py_ssize_t blk,
                     floating lr, floating wd) noexcept nogil:
    w += blk * BLOCK; dw += blk * BLOCK; n = _block_size(n, blk)
    cdef floating buf[BLOCK]
    cdef const floating *g = _decayed(w, dw, wd, buf, n)
    cdef Py_ssize_t i
    for i in range(n):
        w[i] = w[i] - lr * g[i]


cdef void _sgd_momentum_block(floating *w, const floating *dw, floating *v, Py_ssize_t n,
                              Py_ssize_t blk, floating lr, floating mu) noexcept nogil:
    w += blk * BLOCK; dw += blk * BLOCK; v += blk * BLOCK; n = _block_size(n, blk)
    cdef Py_ssize_t i
    for i in range(n):
        v[i] = mu * v[i] - lr * dw[i]
        w[i] = w[i] + v[i]


cdef void _momentum_block(floating *w, const floating *dw, floating *v, Py_ssize_t n,
                          Py_ssize_t blk, floating lr, floating mu, floating wd,
                          bint nesterov) noexcept nogil:
    w += blk * BLOCK; dw += blk * BLOCK; v += blk * BLOCK; n = _block_size(n, blk)
    cdef floating buf[BLOCK]
    cdef const floating *g = _decayed(w, dw, wd, buf, n)
    cdef Py_ssize_t i
    if nesterov:
        for i in range(n):
            v[i] = mu * v[i] + g[i]
            w[i] = w[i] - lr * (g[i] + mu * v[i])
    else:
        for i in range(n):
            v[i] = mu * v[i] + g[i]
            w[i] = w[i] - lr * v[i]


cdef cloned_void _rmsprop_block(floating *w, const floating *dw, floating *cache,
                                Py_ssize_t n, Py_ssize_t blk, floating lr, floating rho, floating one_minus_rho,
                                floating eps, floating wd) noexcept nogil:
    w += blk * BLOCK; dw += blk * BLOCK; cache += blk * BLOCK; n = _block_size(n, blk)
    cdef floating buf[BLOCK]
    cdef const floating *g = _decayed(w, dw, wd, buf, n)
    cdef Py_ssize_t i
    for i in range(n):
        cache[i] = rho * cache[i] + one_minus_rho * (g[i] * g[i])
        w[i] = w[i] - lr * g[i] / (_sqrt(cache[i]) + eps)


cdef cloned_void _adam_block(floating *w, const floating *dw, floating *m, floating *v,
                             Py_ssize_t n, Py_ssize_t blk, floating step_size, floating b1,
                             floating one_minus_b1, floating b2, floating one_minus_b2,
                             floating inv_sqrt_bc2, floating eps, floating wd) noexcept nogil:
    w += blk * BLOCK; dw += blk * BLOCK; m += blk * BLOCK; v += blk * BLOCK
    n = _block_size(n, blk)
    cdef floating buf[BLOCK]
    cdef const floating *g = _decayed(w, dw, wd, buf, n)
    cdef Py_ssize_t i
    for i in range(n):
        m[i] = b1 * m[i] + one_minus_b1 * g[i]
        v[i] = b2 * v[i] + one_minus_b2 * (g[i] * g[i])
        w[i] = w[i] - step_size * m[i] / (_sqrt(v[i]) * inv_sqrt_bc2 + eps)


# --------------------------------------------------------------------------------------------
# sweeps: the blocks of one array, one rule each (design c): a plain loop for one thread or
# one block, shared out by prange otherwise.  Scalars arrive as double and are rounded to the
# dtype here, once (design e).

cdef void _sgd(floating *w, const floating *dw, Py_ssize_t n, double lr, double weight_decay,
               int n_threads) noexcept nogil:
    cdef floating lr_ = <floating>lr, wd_ = <floating>weight_decay
    cdef Py_ssize_t blk
    if n_threads == 1 or n <= BLOCK:
        for blk in range(_n_blocks(n)):
            _sgd_block(w, dw, n, blk, lr_, wd_)
    else:
        for blk in prange(_n_blocks(n), schedule="static", num_threads=n_threads):
            _sgd_block(w, dw, n, blk, lr_, wd_)


cdef void _sgd_momentum(floating *w, const floating *dw, floating *v, Py_ssize_t n, double lr,
                        double momentum, int n_threads) noexcept nogil:
    cdef floating lr_ = <floating>lr, mu = <floating>momentum
    cdef Py_ssize_t blk
    if n_threads == 1 or n <= BLOCK:
        for blk in range(_n_blocks(n)):
            _sgd_momentum_block(w, dw, v, n, blk, lr_, mu)
    else:
        for blk in prange(_n_blocks(n), schedule="static", num_threads=n_threads):
            _sgd_momentum_block(w, dw, v, n, blk, lr_, mu)


cdef void _momentum(floating *w, const floating *dw, floating *v, Py_ssize_t n, double lr,
                    double momentum, double weight_decay, bint nesterov,
                    int n_threads) noexcept nogil:
    cdef floating lr_ = <floating>lr, mu = <floating>momentum, wd_ = <floating>weight_decay
    cdef Py_ssize_t blk
    if n_threads == 1 or n <= BLOCK:
        for blk in range(_n_blocks(n)):
            _momentum_block(w, dw, v, n, blk, lr_, mu, wd_, nesterov)
    else:
        for blk in prange(_n_blocks(n), schedule="static", num_threads=n_threads):
            _momentum_block(w, dw, v, n, blk, lr_, mu, wd_, nesterov)


cdef void _rmsprop(floating *w, const floating *dw, floating *cache, Py_ssize_t n, double lr,
                   double decay_rate, double eps, double weight_decay,
                   int n_threads) noexcept nogil:
    cdef floating lr_ = <floating>lr, rho = <floating>decay_rate
    cdef floating one_minus_rho = <floating>(1.0 - decay_rate)
    cdef floating eps_ = <floating>eps, wd_ = <floating>weight_decay
    cdef Py_ssize_t blk
    if n_threads == 1 or n <= BLOCK:
        for blk in range(_n_blocks(n)):
            _rmsprop_block(w, dw, cache, n, blk, lr_, rho, one_minus_rho, eps_, wd_)
    else:
        for blk in prange(_n_blocks(n), schedule="static", num_threads=n_threads):
            _rmsprop_block(w, dw, cache, n, blk, lr_, rho, one_minus_rho, eps_, wd_)


cdef void _adam(floating *w, const floating *dw, floating *m, floating *v, Py_ssize_t n,
                double step_size, double beta1, double beta2, double inv_sqrt_bc2, double eps,
                double weight_decay, int n_threads) noexcept nogil:
    cdef floating step_ = <floating>step_size, inv_sqrt_bc2_ = <floating>inv_sqrt_bc2
    cdef floating b1 = <floating>beta1, one_minus_b1 = <floating>(1.0 - beta1)
    cdef floating b2 = <floating>beta2, one_minus_b2 = <floating>(1.0 - beta2)
    cdef floating eps_ = <floating>eps, wd_ = <floating>weight_decay
    cdef Py_ssize_t blk
    if n_threads == 1 or n <= BLOCK:
        for blk in range(_n_blocks(n)):
            _adam_block(w, dw, m, v, n, blk, step_, b1, one_minus_b1, b2, one_minus_b2,
                        inv_sqrt_bc2_, eps_, wd_)
    else:
        for blk in prange(_n_blocks(n), schedule="static", num_threads=n_threads):
            _adam_block(w, dw, m, v, n, blk, step_, b1, one_minus_b1, b2, one_minus_b2,
                        inv_sqrt_bc2_, eps_, wd_)


# --------------------------------------------------------------------------------------------
# kernels: check every argument (design a) with the GIL, before any memory is touched, then
# run the float or double sweep without it.  w fixes the dtype and the length of a call.

def sgd_step(w, dw, double lr, double weight_decay, int n_threads=1):
    """w := w - lr * (dw + weight_decay * w), in place  (all 1-D, same length and dtype).

    With weight_decay == 0 this is exactly the course rule w -= lr * dw.
    """
    cdef int t = float_type(w, "sgd_step", "w")
    cdef char *pw = array_data(w, "sgd_step", "w", t, True, -1, None)
    cdef Py_ssize_t n = length(w)
    cdef const char *pdw = array_data(dw, "sgd_step", "dw", t, False, n, "w")
    check_threads("sgd_step", n_threads)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _sgd(<float *>pw, <const float *>pdw, n, lr, weight_decay, n_threads)
        else:
            _sgd(<double *>pw, <const double *>pdw, n, lr, weight_decay, n_threads)


def sgd_momentum_step(w, dw, v, double lr, double momentum, int n_threads=1):
    """CS231n momentum, in place: v := momentum * v - lr * dw;  w := w + v."""
    cdef int t = float_type(w, "sgd_momentum_step", "w")
    cdef char *pw = array_data(w, "sgd_momentum_step", "w", t, True, -1, None)
    cdef Py_ssize_t n = length(w)
    cdef const char *pdw = array_data(dw, "sgd_momentum_step", "dw", t, False, n, "w")
    cdef char *pv = array_data(v, "sgd_momentum_step", "v", t, True, n, "w")
    check_threads("sgd_momentum_step", n_threads)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _sgd_momentum(<float *>pw, <const float *>pdw, <float *>pv, n, lr, momentum,
                          n_threads)
        else:
            _sgd_momentum(<double *>pw, <const double *>pdw, <double *>pv, n, lr, momentum,
                          n_threads)


def momentum_step(w, dw, v, double lr, double momentum, double weight_decay, bint nesterov,
                  int n_threads=1):
    """PyTorch SGD momentum (dampening 0), in place.

    g := dw + weight_decay * w;  v := momentum * v + g;
    w := w - lr * (g + momentum * v)  if nesterov  else  w - lr * v.
    """
    cdef int t = float_type(w, "momentum_step", "w")
    cdef char *pw = array_data(w, "momentum_step", "w", t, True, -1, None)
    cdef Py_ssize_t n = length(w)
    cdef const char *pdw = array_data(dw, "momentum_step", "dw", t, False, n, "w")
    cdef char *pv = array_data(v, "momentum_step", "v", t, True, n, "w")
    check_threads("momentum_step", n_threads)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _momentum(<float *>pw, <const float *>pdw, <float *>pv, n, lr, momentum,
                      weight_decay, nesterov, n_threads)
        else:
            _momentum(<double *>pw, <const double *>pdw, <double *>pv, n, lr, momentum,
                      weight_decay, nesterov, n_threads)


def rmsprop_step(w, dw, cache, double lr, double decay_rate, double eps, double weight_decay,
                 int n_threads=1):
    """RMSProp, in place: g := dw + weight_decay * w;
    cache := decay_rate * cache + (1 - decay_rate) * g**2;  w := w - lr * g / (sqrt(cache) + eps).
    """
    cdef int t = float_type(w, "rmsprop_step", "w")
    cdef char *pw = array_data(w, "rmsprop_step", "w", t, True, -1, None)
    cdef Py_ssize_t n = length(w)
    cdef const char *pdw = array_data(dw, "rmsprop_step", "dw", t, False, n, "w")
    cdef char *pc = array_data(cache, "rmsprop_step", "cache", t, True, n, "w")
    check_threads("rmsprop_step", n_threads)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _rmsprop(<float *>pw, <const float *>pdw, <float *>pc, n, lr, decay_rate, eps,
                     weight_decay, n_threads)
        else:
            _rmsprop(<double *>pw, <const double *>pdw, <double *>pc, n, lr, decay_rate, eps,
                     weight_decay, n_threads)


def adam_step(w, dw, m, v, double lr, double beta1, double beta2, double eps, Py_ssize_t t,
              double weight_decay, int n_threads=1):
    """Adam (L2 weight decay, not AdamW), in place; t is the step number, already incremented.

    g := dw + weight_decay * w;  m := beta1 * m + (1 - beta1) * g;
    v := beta2 * v + (1 - beta2) * g**2;
    w := w - lr * (m / (1 - beta1**t)) / (sqrt(v / (1 - beta2**t)) + eps).
    """
    cdef int typ = float_type(w, "adam_step", "w")
    cdef char *pw = array_data(w, "adam_step", "w", typ, True, -1, None)
    cdef Py_ssize_t n = length(w)
    cdef const char *pdw = array_data(dw, "adam_step", "dw", typ, False, n, "w")
    cdef char *pm = array_data(m, "adam_step", "m", typ, True, n, "w")
    cdef char *pv = array_data(v, "adam_step", "v", typ, True, n, "w")
    check_threads("adam_step", n_threads)
    if t < 1:
        raise ValueError(f"adam_step: t must be >= 1 (the step number, already incremented), "
                         f"got {t}")
    # bias corrections once per call, in double (design note e)
    cdef double step_size = lr / (1.0 - pow(beta1, <double>t))
    cdef double inv_sqrt_bc2 = 1.0 / sqrt(1.0 - pow(beta2, <double>t))
    with nogil:
        if typ == cnp.NPY_FLOAT32:
            _adam(<float *>pw, <const float *>pdw, <float *>pm, <float *>pv, n, step_size,
                  beta1, beta2, inv_sqrt_bc2, eps, weight_decay, n_threads)
        else:
            _adam(<double *>pw, <const double *>pdw, <double *>pm, <double *>pv, n, step_size,
                  beta1, beta2, inv_sqrt_bc2, eps, weight_decay, n_threads)
