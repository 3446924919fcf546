"""Thread-count policy and build/runtime configuration (fastbp.show_config).

Policy (DESIGN.md §6):

* fastbp's kernels use OpenMP threads; BLAS keeps its own pool.  ``set_num_threads(n)`` sets
  both (the BLAS pool through threadpoolctl).
* Without a user setting, the count is what OpenMP reports *at call time* (so OMP_NUM_THREADS
  and threadpoolctl limits apply), capped at the cores this process may run on.
* Work below ``PARALLEL_MIN_WORK`` elements runs on one thread: starting a parallel region
  costs more than it saves there.
* Two pools must not fight: fastbp/__init__.py sets ``OMP_WAIT_POLICY=PASSIVE`` (unless the
  user set it) before the kernels load, so OpenMP workers sleep between regions instead of
  spinning while BLAS's threads run a GEMM (a spinning pool made a step 100x slower on a busy
  2-core machine).  ``config()`` reports the policy in force.
* One BLAS in the process: fastbp's GEMMs go through the OpenBLAS NumPy loaded, else SciPy's
  (``FASTBP_BLAS`` forces one; fastbp/_kernels/_blas.pyx).  ``config()`` names the route in
  force and why, and lists every BLAS library loaded in the process.
"""

import os
import platform
import sys

import numpy as np

from ._kernels import omp_max_threads, openmp_enabled

#: Elementwise work (in elements) below which kernels run on one thread.
PARALLEL_MIN_WORK = 1 << 15

_user_threads = None


def _usable_cores():
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


USABLE_CORES = _usable_cores()


def get_num_threads():
    """Number of threads fastbp's kernels use for large work.

    Returns
    -------
    int
        The value given to :func:`set_num_threads`, else what OpenMP reports now (honouring
        ``OMP_NUM_THREADS`` and threadpoolctl limits), capped at the usable cores.
    """
    n = _user_threads if _user_threads is not None else omp_max_threads()
    return max(1, min(n, USABLE_CORES))


def set_num_threads(n):
    """Set the thread count for fastbp's kernels and for the BLAS pool.

    Parameters
    ----------
    n : int or None
        Threads to use (>= 1; capped at the usable cores, for fastbp and for the BLAS pool).
        ``None`` returns fastbp to the default (what OpenMP reports at call time); the BLAS
        pool is then left as it is.

    Raises
    ------
    TypeError
        If `n` is not an integer.
    ValueError
        If `n` < 1.
    """
    global _user_threads
    if n is None:
        _user_threads = None
        return
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"set_num_threads: n must be an int >= 1, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    _user_threads = int(n)
    from threadpoolctl import threadpool_limits

    # capped like fastbp's own count: OpenBLAS 0.3.28/0.3.29 (NumPy 2.2, SciPy 1.15, the
    # builds for Python 3.10) crashed when several Python threads called it with 64 workers
    # on 2 cores (found by the python-versions CI stage)
    threadpool_limits(limits=min(int(n), USABLE_CORES), user_api="blas")


def threads_for(work):
    """Threads for a kernel call doing about `work` elementwise operations."""
    return 1 if work < PARALLEL_MIN_WORK else get_num_threads()


def _simd_clones():
    from ._kernels import _activations

    return ("AVX-512 / AVX2 / baseline, chosen at run time" if _activations.SIMD_CLONES
            else "baseline only")


def _blas_info():
    from threadpoolctl import threadpool_info

    return [
        f"{p.get('internal_api', '?')} {p.get('version', '?')} ({p.get('architecture', '?')}, "
        f"{p.get('num_threads', '?')} threads, {p.get('threading_layer', '?')}) "
        f"{os.path.basename(p.get('filepath', ''))}"
        for p in threadpool_info()
        if p.get("user_api") == "blas"
    ]


def _blas_route():
    from ._kernels._blas import route

    r = route()
    width = "64-bit ints" if r["ilp64"] else "32-bit ints"
    return (f"{r['route']}: {os.path.basename(r['library'])} ({r['sgemm']}/{r['dgemm']}, "
            f"{width}); {r['reason']}")


def config():
    """The configuration as a dict (what :func:`show_config` prints)."""
    from . import __version__
    from .backend import get_backend

    import scipy

    return {
        "fastbp": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "openmp": openmp_enabled(),
        "omp wait policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "simd clones": _simd_clones(),
        "threads": get_num_threads(),
        "usable cores": USABLE_CORES,
        "backend": get_backend(),
        "blas route": _blas_route(),
        "blas": _blas_info(),
    }


def show_config(file=None):
    """Print version, build (OpenMP), threads, backend, the BLAS route and the BLAS libraries.

    Parameters
    ----------
    file : file-like, optional
        Where to print (default: ``sys.stdout``).
    """
    out = file or sys.stdout
    for key, value in config().items():
        if isinstance(value, list):
            print(f"{key + ':':17s}{value[0] if value else 'none found'}", file=out)
            for extra in value[1:]:
                print(f"{'':17s}{extra}", file=out)
        else:
            print(f"{key + ':':17s}{value}", file=out)
