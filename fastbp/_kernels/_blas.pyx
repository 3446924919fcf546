# cython: language_level=3
"""Row-major GEMM through the one BLAS of the process, float32 and float64, nogil.

Design
------
a. Which BLAS (the route, DESIGN.md §6).  NumPy has already loaded an OpenBLAS; SciPy's
   ``cython_blas`` is a second copy, and two OpenBLAS copies in one process starve each other:
   an idle OpenBLAS worker busy-waits ~2^28 cycles before it sleeps, so measured on a 2-core
   machine a 784-100-10 step right after a 256x256 ``np.matmul`` took 6.4x its time alone, and
   the matmul after the step 7.3x (``OPENBLAS_THREAD_TIMEOUT`` is read only when a library
   loads, too late once NumPy is imported).  So GEMMs go through NumPy's own library:

   * ``numpy`` (the default when it can be found): the OpenBLAS that NumPy bundles, located as
     threadpoolctl locates loaded BLAS libraries (the one whose file lies in NumPy's own
     directories), opened with ``RTLD_NOLOAD`` (the loaded instance; never a second copy), its
     symbol affixes (``scipy_`` / ``64_``) and integer width (``USE64BITINT`` in its
     ``openblas_get_config``) found by probing its exports.
   * ``scipy``: ``scipy.linalg.cython_blas`` (32-bit ints), the fallback when NumPy's BLAS cannot
     be found (MKL, Accelerate, a NumPy without a bundled OpenBLAS); its function pointers come
     from the module's ``__pyx_capi__`` capsules, so SciPy's library is loaded only on this route.

   Measured on the same (loaded) machine after the change: the step after a matmul 1.04-1.05x
   its time alone and the matmul after a step 0.95-1.00x on the ``numpy`` route, 230-320x and
   200-230x with ``FASTBP_BLAS=scipy``.

   ``FASTBP_BLAS=auto|numpy|scipy`` (read once, at import) forces a route; ``route()`` says which
   is in use, the library, the symbols and why.  The s/d gemm pointers are resolved ONCE, when
   this module is imported, into module-level C pointers that ``gemm_rm`` calls through (one
   predictable branch on the integer width per call).  ``_select`` is what the import runs; the
   tests call it again to run every kernel on every available route in one process (it is not
   safe while another thread is inside a GEMM, and nothing but the tests calls it).
b. Layout: every fastbp buffer is C-contiguous (row-major).  BLAS is column-major, and a
   row-major matrix is the column-major view of its transpose, so C = op(A)·op(B) is computed
   as Cᵀ = op(B)ᵀ·op(A)ᵀ: the operands are swapped, the transpose flags are kept (the same
   trick as scikit-learn's sklearn/utils/_cython_blas.pyx).
c. Who allocates: nobody here; C is passed in and written (beta = 0) or accumulated into.
d. Threads: BLAS keeps its own pool (sized by threadpoolctl, fastbp.set_num_threads); this
   module never calls BLAS from inside a prange and never changes NumPy's thread settings.
e. Not done: dimensions beyond 2**31 - 1 are rejected by the def wrapper (``gemm_rm`` takes
   C ints, and SciPy's BLAS takes 32-bit ints); no hand-written GEMM fallback (there is always a
   BLAS: SciPy's is a dependency).
"""
import ctypes
import os
from pathlib import Path

import numpy as np

from cpython.pycapsule cimport PyCapsule_GetName, PyCapsule_GetPointer
from cython cimport floating
from libc.stdint cimport int64_t

__all__ = ["gemm"]

cdef int INT_MAX = 2147483647

# Fortran-interface gemm: (transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc), every
# argument by pointer; LP64 libraries take 32-bit ints, ILP64 ones 64-bit ints.
ctypedef void (*sgemm32_t)(char *, char *, int *, int *, int *, float *, const float *, int *,
                           const float *, int *, float *, float *, int *) noexcept nogil
ctypedef void (*dgemm32_t)(char *, char *, int *, int *, int *, double *, const double *, int *,
                           const double *, int *, double *, double *, int *) noexcept nogil
ctypedef void (*sgemm64_t)(char *, char *, int64_t *, int64_t *, int64_t *, float *,
                           const float *, int64_t *, const float *, int64_t *, float *, float *,
                           int64_t *) noexcept nogil
ctypedef void (*dgemm64_t)(char *, char *, int64_t *, int64_t *, int64_t *, double *,
                           const double *, int64_t *, const double *, int64_t *, double *,
                           double *, int64_t *) noexcept nogil

# The route in force: the s/d gemm entry points and their integer width (set by _select).
cdef void *_sgemm = NULL
cdef void *_dgemm = NULL
cdef bint _ilp64 = False

ROUTES = ("auto", "numpy", "scipy")
_route = {}
_keep_alive = {}  # route -> the library handle / module its pointers point into


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
    cdef int64_t m64 = m, n64 = n, k64 = k, lda64 = lda, ldb64 = ldb, ldc64 = ldc
    cdef Py_ssize_t i, j
    if m <= 0 or n <= 0:
        return
    if k <= 0:  # an empty product: C := beta*C, without asking BLAS about a 0-sized operand
        for i in range(m):
            for j in range(n):
                c[i * ldc + j] = 0 if beta == 0 else <floating>(beta * c[i * ldc + j])
        return
    if floating is float:
        if _ilp64:
            (<sgemm64_t>_sgemm)(&tb, &ta, &n64, &m64, &k64, &alpha_f, b, &ldb64, a, &lda64,
                                &beta_f, c, &ldc64)
        else:
            (<sgemm32_t>_sgemm)(&tb, &ta, &n, &m, &k, &alpha_f, b, &ldb, a, &lda, &beta_f, c,
                                &ldc)
    else:
        if _ilp64:
            (<dgemm64_t>_dgemm)(&tb, &ta, &n64, &m64, &k64, &alpha, b, &ldb64, a, &lda64,
                                &beta, c, &ldc64)
        else:
            (<dgemm32_t>_dgemm)(&tb, &ta, &n, &m, &k, &alpha, b, &ldb, a, &lda, &beta, c, &ldc)


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
        raise ValueError("gemm: dimensions beyond 2**31 - 1 are not supported")
    if m == 0 or n == 0:
        return
    cdef const floating *pa = &a[0, 0] if a.shape[0] * a.shape[1] else NULL
    cdef const floating *pb = &b[0, 0] if b.shape[0] * b.shape[1] else NULL
    with nogil:
        gemm_rm(trans_a, trans_b, <int>m, <int>n, <int>k, alpha, pa, <int>max(1, a.shape[1]),
                pb, <int>max(1, b.shape[1]), beta, &c[0, 0], <int>c.shape[1])


# ------------------------------------------------------------------------------------------------
# Finding the routes (Python; runs at import and in the tests)

#: Symbol affixes OpenBLAS builds use (as threadpoolctl probes them): scipy-openblas wheels
#: export ``scipy_sgemm_64_`` (ILP64) or ``scipy_sgemm_``; a plain build ``sgemm_``.
OPENBLAS_AFFIXES = (("scipy_", "64_"), ("scipy_", ""), ("", "64_"), ("", "_64"), ("", ""))


def numpy_blas_file(infos, numpy_dirs):
    """The OpenBLAS file NumPy bundles among threadpoolctl's `infos`, or (None, why not).

    `numpy_dirs` are NumPy's own directories (the package, with ``numpy/.dylibs`` on macOS, and
    ``numpy.libs`` beside it on Linux):
    a library there is NumPy's; one elsewhere may be anybody's (SciPy's, the system's).
    """
    blas = [i for i in infos if i.get("user_api") == "blas"]
    for info in blas:
        path = Path(info.get("filepath", "")).resolve()
        if any(Path(d).resolve() in path.parents for d in numpy_dirs):
            if info.get("internal_api") != "openblas":
                return None, (f"NumPy's BLAS is {info.get('internal_api')} "
                              f"({path.name}); only a bundled OpenBLAS is located")
            return str(path), None
    found = ", ".join(f"{i.get('internal_api')} {Path(i.get('filepath', '')).name}"
                      for i in blas) or "none"
    return None, f"no BLAS in NumPy's own directories (BLAS libraries loaded: {found})"


def _numpy_dirs():
    pkg = Path(np.__file__).resolve().parent
    return [pkg, pkg.parent / "numpy.libs"]


def _address(lib, name):
    try:
        return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
    except AttributeError:
        return None


def _numpy_route():
    """(route dict, library handle) for NumPy's OpenBLAS; raises LookupError saying why not."""
    from threadpoolctl import threadpool_info

    path, why_not = numpy_blas_file(threadpool_info(), _numpy_dirs())
    if path is None:
        raise LookupError(why_not)
    # RTLD_NOLOAD: the instance NumPy loaded, or nothing; never a second copy
    lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOW", 0) | getattr(os, "RTLD_NOLOAD", 0))
    for prefix, suffix in OPENBLAS_AFFIXES:
        s = _address(lib, f"{prefix}sgemm_{suffix}")
        d = _address(lib, f"{prefix}dgemm_{suffix}")
        config = getattr(lib, f"{prefix}openblas_get_config{suffix}", None)
        if s and d and config is not None:
            config.restype = ctypes.c_char_p
            build = config().decode(errors="replace")
            ilp64 = "USE64BITINT" in build.split()
            return dict(route="numpy", library=path, sgemm=f"{prefix}sgemm_{suffix}",
                        dgemm=f"{prefix}dgemm_{suffix}", ilp64=ilp64, s=s, d=d), lib
    raise LookupError(f"{Path(path).name} exports no s/dgemm + openblas_get_config pair with "
                      f"the affixes {OPENBLAS_AFFIXES}")


def _scipy_route():
    """(route dict, module) for scipy.linalg.cython_blas (32-bit ints)."""
    from scipy.linalg import cython_blas

    from threadpoolctl import threadpool_info

    capi = cython_blas.__pyx_capi__
    pointers = {}
    for name in ("sgemm", "dgemm"):
        capsule = capi[name]
        pointers[name[0]] = <size_t>PyCapsule_GetPointer(capsule, PyCapsule_GetName(capsule))
    library = next((i["filepath"] for i in threadpool_info()
                    if i.get("user_api") == "blas"
                    and "scipy" in Path(i.get("filepath", "")).parent.name),
                   "scipy.linalg.cython_blas")
    return dict(route="scipy", library=library, sgemm="scipy.linalg.cython_blas.sgemm",
                dgemm="scipy.linalg.cython_blas.dgemm", ilp64=False, **pointers), cython_blas


def _select(str requested):
    """Resolve and install the route `requested` ("auto", "numpy" or "scipy"); returns route().

    Raises
    ------
    ValueError
        If `requested` is not a known route.
    RuntimeError
        If "numpy" is requested and NumPy's BLAS cannot be used here (the reason is named).
    """
    global _sgemm, _dgemm, _ilp64
    if requested not in ROUTES:
        raise ValueError(f"FASTBP_BLAS must be one of {ROUTES}, got {requested!r}")
    why = None
    if requested == "scipy":
        chosen, handle = _scipy_route()
        reason = "forced by FASTBP_BLAS=scipy"
    else:
        try:
            chosen, handle = _numpy_route()
            reason = ("forced by FASTBP_BLAS=numpy" if requested == "numpy" else
                      "NumPy's own OpenBLAS, found loaded: one BLAS pool in the process")
        except (LookupError, OSError) as e:
            if requested == "numpy":
                raise RuntimeError(f"FASTBP_BLAS=numpy, but NumPy's BLAS cannot be used: {e}")
            why = str(e)
            chosen, handle = _scipy_route()
            reason = f"fallback: NumPy's BLAS cannot be used ({why})"
    _sgemm = <void *><size_t>chosen.pop("s")
    _dgemm = <void *><size_t>chosen.pop("d")
    _ilp64 = chosen["ilp64"]
    _keep_alive[chosen["route"]] = handle
    _route.clear()
    _route.update(chosen, reason=reason, requested=requested)
    return route()


def route():
    """The BLAS route in force, as a dict.

    Keys: ``route`` ("numpy" or "scipy"), ``library`` (the file), ``sgemm`` / ``dgemm`` (the
    symbols called), ``ilp64`` (64-bit integer interface), ``reason`` (why this route) and
    ``requested`` (the ``FASTBP_BLAS`` value, "auto" by default).
    """
    return dict(_route)


_select(os.environ.get("FASTBP_BLAS", "auto").strip().lower() or "auto")
