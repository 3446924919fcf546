# cython: language_level=3
"""Fused layer kernels for the training step: fewer passes over the activations.

Design
------
a. What is fused, and why: a training step's elementwise work is memory-bound, so each pass
   saved over an (N, H) activation is time saved.
   * ``linear_act_forward``: out = act(x·w + b).  The GEMM writes into `out`; one epilogue pass
     adds the bias and applies the activation in place (optionally also storing the
     pre-activation z = x·w + b in `pre`, which only GELU's backward needs).
   * ``bias_act_forward``: that epilogue alone, in place on an (N, M) array another kernel
     wrote (the training step's normalization output, between the GEMM and the activation).
   * ``act_backward_bias``: dz = dout ⊙ act'(·) and db = s·Σ_rows dz + β·db in ONE pass.  dz may
     be dout itself (in place), and db may be the bias itself (s = −lr, β = 1: an SGD step).
b. What the backward reads: the saved OUTPUT a for relu, leaky_relu (alpha >= 0), sigmoid,
   tanh and elu (alpha >= 0) — a > 0 exactly where z > 0, and elu'(z) = a + alpha for z <= 0 —
   so no pre-activation is stored for them; the pre-activation z for gelu / gelu_tanh.
   Negative alpha breaks the output form; the planner (fastbp._planner, from the spec table's
   ``output_form_valid``) never fuses it.
c. Layout and ownership: C-contiguous (N, M) ndarrays of float32 or float64, all passed in;
   nothing is allocated.  The entry checks them with the NumPy C-API (_arrays.pxd), as
   _activations, _optim, _dropout and _norm do (_losses and the test-facing
   _blas.gemm still take typed memoryviews).
d. Parallelism: the epilogue runs over rows; the backward over blocks of 256 columns, each
   thread owning whole columns and adding the rows in order, so db is identical for any thread
   count (the same order as _linear's bias gradient).  The activation is chosen once per row
   segment, never per element.
e. Activations are named by string at the Python boundary (the codes of the spec table,
   fastbp._specs.FUSED_ACTIVATIONS) and mapped once to an enum; the scalar math is shared with
   _activations.pyx through _activation_math.pxd, the row loops with the one-call training step
   (_step.pyx) through _fused_loops.pxd.
f. Only kernels with a NumPy twin (fastbp.reference.fused) live here; the whole-step FusedStep,
   which has none, is in _step.pyx.
"""
cimport numpy as cnp
from cython cimport floating

from ._arrays cimport (
    Affine, affine_arrays, check_threads, float_type, matrix_data, vector_data,
)
from ._blas cimport gemm_rm
from ._fused_loops cimport _backward, _epilogue, activation_codes, differentiated_from_input

cnp.import_array()

__all__ = ["linear_act_forward", "bias_act_forward", "act_backward_bias"]

#: activation name -> code: fastbp._specs.FUSED_ACTIVATIONS, generated into _fused_loops.pxd
ACTIVATION_CODES = activation_codes()
DIFFERENTIATED_FROM_INPUT = differentiated_from_input()


def _code(str activation):
    try:
        return ACTIVATION_CODES[activation]
    except KeyError:
        raise ValueError(f"activation must be one of {sorted(ACTIVATION_CODES)}, "
                         f"got {activation!r}") from None


cdef void _forward(floating tag, const floating *x, const floating *w, const floating *b,
                   floating *pre, floating *out, Py_ssize_t n, Py_ssize_t d, Py_ssize_t m,
                   int act, floating alpha, int n_threads) noexcept nogil:
    """out := act(x·w + b), pre := x·w + b (pre may be NULL), for n, m > 0."""
    gemm_rm(False, False, <int>n, <int>m, <int>d, 1.0, x if d else NULL, <int>max(d, 1),
            w if d else NULL, <int>m, 0.0, out, <int>m)
    _epilogue(out, b, pre, n, m, act, alpha, n_threads)


cdef void _backward_bias(floating tag, const floating *dout, const floating *saved,
                         floating *dz, floating *db, Py_ssize_t n, Py_ssize_t m, int act,
                         double alpha, double scale, double beta,
                         int n_threads) noexcept nogil:
    """dz := dout * act'(saved), db := scale * Σ_rows dz + beta * db (db may be NULL), m > 0."""
    cdef Py_ssize_t j
    if n == 0:
        if db != NULL:
            for j in range(m):
                db[j] = 0 if beta == 0 else <floating>(beta * db[j])
        return
    _backward(dout, saved, dz, db, n, m, act, <floating>alpha, <floating>scale,
              <floating>beta, n_threads)


def linear_act_forward(x, w, b, str activation, double alpha, pre, out, int n_threads=1):
    """out := act(x @ w + b); pre := x @ w + b when pre is not None (required for gelu*)."""
    cdef str k = "linear_act_forward"
    cdef int act = _code(activation)
    cdef Affine a
    cdef int t = affine_arrays(k, x, w, b, out, &a)
    cdef char *ppre = matrix_data(pre, k, "pre", t, True, a.n, a.m)
    check_threads(k, n_threads)
    if pre is None and activation in DIFFERENTIATED_FROM_INPUT:
        raise ValueError(f"linear_act_forward: {activation} needs `pre` (its backward reads z)")
    if a.n == 0 or a.m == 0:
        return
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _forward(<float>0, <const float *>a.x, <const float *>a.w, <const float *>a.b,
                     <float *>ppre, <float *>a.out, a.n, a.d, a.m, act, <float>alpha, n_threads)
        else:
            _forward(<double>0, <const double *>a.x, <const double *>a.w, <const double *>a.b,
                     <double *>ppre, <double *>a.out, a.n, a.d, a.m, act, alpha, n_threads)


def bias_act_forward(z, b, str activation, double alpha, pre, int n_threads=1):
    """z := act(z + b) in place, pre := z + b first when pre is not None (required for gelu*);
    b (m,) may be None.  linear_act_forward's epilogue alone, for an (n, m) z that another
    kernel wrote (a normalization's output in the fused training step)."""
    cdef str k = "bias_act_forward"
    cdef int act = _code(activation)
    if z is None:
        raise TypeError(f"{k}: z must be a numpy.ndarray, got None")
    cdef int t = float_type(z, k, "z")
    cdef char *pz = matrix_data(z, k, "z", t, True, -1, -1)
    cdef Py_ssize_t n = (<cnp.ndarray>z).shape[0], m = (<cnp.ndarray>z).shape[1]
    cdef const char *pb = vector_data(b, k, "b", t, False, m, "z's columns")
    cdef char *ppre = matrix_data(pre, k, "pre", t, True, n, m)
    check_threads(k, n_threads)
    if pre is None and activation in DIFFERENTIATED_FROM_INPUT:
        raise ValueError(f"{k}: {activation} needs `pre` (its backward reads z)")
    if n == 0 or m == 0:
        return
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _epilogue(<float *>pz, <const float *>pb, <float *>ppre, n, m, act, <float>alpha,
                      n_threads)
        else:
            _epilogue(<double *>pz, <const double *>pb, <double *>ppre, n, m, act, alpha,
                      n_threads)


def act_backward_bias(dout, saved, str activation, double alpha, dz, db, double scale=1.0,
                      double beta=0.0, int n_threads=1):
    """dz := dout * act'(saved);  db := scale * Σ_rows dz + beta * db  (db may be None).

    `saved` is the forward output for every activation except gelu / gelu_tanh (their
    pre-activation).  dz may be dout itself.
    """
    cdef str k = "act_backward_bias"
    cdef int act = _code(activation)
    cdef int t = float_type(dout, k, "dout")
    cdef const char *pg = matrix_data(dout, k, "dout", t, False, -1, -1)
    cdef Py_ssize_t n = (<cnp.ndarray>dout).shape[0], m = (<cnp.ndarray>dout).shape[1]
    cdef const char *ps = matrix_data(saved, k, "saved", t, False, n, m)
    cdef char *pdz = matrix_data(dz, k, "dz", t, True, n, m)
    cdef char *pdb = vector_data(db, k, "db", t, True, m, "dout's columns")
    check_threads(k, n_threads)
    if saved is None or dz is None:
        raise TypeError(f"{k}: saved and dz must be numpy.ndarray, got None")
    if m == 0:
        return
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _backward_bias(<float>0, <const float *>pg, <const float *>ps, <float *>pdz,
                           <float *>pdb, n, m, act, alpha, scale, beta, n_threads)
        else:
            _backward_bias(<double>0, <const double *>pg, <const double *>ps, <double *>pdz,
                           <double *>pdb, n, m, act, alpha, scale, beta, n_threads)
