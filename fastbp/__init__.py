"""fastbp: compiled backpropagation for fully-connected networks.

Cython kernels over typed memoryviews, OpenMP threads and a real BLAS for every GEMM, behind the
function names and contracts of course-style NumPy code, proven against a pure-NumPy reference
that ships with it (``fastbp.reference``; ``fastbp.set_backend("numpy" | "checked")``).
"""

__version__ = "0.1.0"

from . import layers, nn, optim
from ._config import get_num_threads, set_num_threads, show_config
from ._kernels import openmp_enabled
from .backend import CheckError, get_backend, set_backend, use_backend

__all__ = [
    "CheckError",
    "get_backend",
    "get_num_threads",
    "layers",
    "nn",
    "optim",
    "openmp_enabled",
    "set_backend",
    "set_num_threads",
    "show_config",
    "use_backend",
]
