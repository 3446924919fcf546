# cython: language_level=3
"""Fused layer kernels for the training step: fewer passes over the activations.

Design
------
a. What is fused, and why: a training step's elementwise work is memory-bound, so each pass
   saved over an (N, H) activation is time saved.
   * ``linear_act_forward``: out = act(x·w + b).  The GEMM writes into `out`; one epilogue pass
     adds the bias and applies the activation in place (optionally also storing the
     pre-activation z = x·w + b in `pre`, which only GELU's backward needs).
   * ``act_backward_bias``: dz = dout ⊙ act'(·) and db = s·Σ_rows dz + β·db in ONE pass.  dz may
     be dout itself (in place), and db may be the bias itself (s = −lr, β = 1: an SGD step).
b. What the backward reads: the saved OUTPUT a for relu, leaky_relu (alpha >= 0), sigmoid,
   tanh and elu (alpha >= 0) — a > 0 exactly where z > 0, and elu'(z) = a + alpha for z <= 0 —
   so no pre-activation is stored for them; the pre-activation z for gelu / gelu_tanh.
   Negative alpha breaks the output form; the planner (fastbp._planner, from the spec table's
   ``output_form_valid``) never fuses it.
c. Layout and ownership: C-contiguous (N, M) buffers, `floating` (float32 / float64), all
   passed in; nothing is allocated.
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
from cython cimport floating

from ._blas cimport gemm_rm
from ._fused_loops cimport _backward, _epilogue, activation_codes, differentiated_from_input

__all__ = ["linear_act_forward", "act_backward_bias"]

#: activation name -> code: fastbp._specs.FUSED_ACTIVATIONS, generated into _fused_loops.pxd
ACTIVATION_CODES = activation_codes()
DIFFERENTIATED_FROM_INPUT = differentiated_from_input()


def _code(str activation):
    try:
        return ACTIVATION_CODES[activation]
    except KeyError:
        raise ValueError(f"activation must be one of {sorted(ACTIVATION_CODES)}, "
                         f"got {activation!r}") from None


def linear_act_forward(const floating[:, ::1] x, const floating[:, ::1] w,
                       const floating[::1] b, str activation, double alpha,
                       floating[:, ::1] pre, floating[:, ::1] out, int n_threads=1):
    """out := act(x @ w + b); pre := x @ w + b when pre is not None (required for gelu*)."""
    cdef int act = _code(activation)
    cdef Py_ssize_t n = x.shape[0], d = x.shape[1], m = w.shape[1], i
    if w.shape[0] != d:
        raise ValueError(f"linear_act_forward: w has {w.shape[0]} rows, x has {d} columns")
    if out.shape[0] != n or out.shape[1] != m:
        raise ValueError(f"linear_act_forward: out has shape {(out.shape[0], out.shape[1])}, "
                         f"expected {(n, m)}")
    if b is not None and b.shape[0] != m:
        raise ValueError(f"linear_act_forward: b has length {b.shape[0]}, expected {m}")
    if pre is not None and (pre.shape[0] != n or pre.shape[1] != m):
        raise ValueError(f"linear_act_forward: pre has shape {(pre.shape[0], pre.shape[1])}, "
                         f"expected {(n, m)}")
    if pre is None and activation in DIFFERENTIATED_FROM_INPUT:
        raise ValueError(f"linear_act_forward: {activation} needs `pre` (its backward reads z)")
    if n == 0 or m == 0:
        return
    cdef const floating *pb = NULL
    cdef floating *ppre = NULL
    cdef floating falpha = <floating>alpha
    if b is not None:
        pb = &b[0]
    if pre is not None:
        ppre = &pre[0, 0]
    with nogil:
        gemm_rm(False, False, <int>n, <int>m, <int>d, 1.0,
                &x[0, 0] if d else NULL, <int>max(d, 1),
                &w[0, 0] if d else NULL, <int>m, 0.0, &out[0, 0], <int>m)
        _epilogue(&out[0, 0], pb, ppre, n, m, act, falpha, n_threads)


def act_backward_bias(const floating[:, ::1] dout, const floating[:, ::1] saved,
                      str activation, double alpha, floating[:, ::1] dz, floating[::1] db,
                      double scale=1.0, double beta=0.0, int n_threads=1):
    """dz := dout * act'(saved);  db := scale * Σ_rows dz + beta * db  (db may be None).

    `saved` is the forward output for every activation except gelu / gelu_tanh (their
    pre-activation).  dz may be dout itself.
    """
    cdef int act = _code(activation)
    cdef Py_ssize_t n = dout.shape[0], m = dout.shape[1], blk
    for name, arr in (("saved", saved), ("dz", dz)):
        if arr.shape[0] != n or arr.shape[1] != m:
            raise ValueError(f"act_backward_bias: {name} has shape "
                             f"{(arr.shape[0], arr.shape[1])}, expected {(n, m)}")
    if db is not None and db.shape[0] != m:
        raise ValueError(f"act_backward_bias: db has length {db.shape[0]}, expected {m}")
    if m == 0:
        return
    cdef floating *pdb = NULL
    if db is not None:
        pdb = &db[0]
    if n == 0:
        if pdb != NULL:
            for blk in range(m):
                pdb[blk] = 0 if beta == 0 else <floating>(beta * pdb[blk])
        return
    with nogil:
        _backward(&dout[0, 0], &saved[0, 0], &dz[0, 0], pdb, n, m, act, <floating>alpha,
                  <floating>scale, <floating>beta, n_threads)
