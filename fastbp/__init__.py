"""fastbp: compiled backpropagation for fully-connected networks.

Cython kernels over C-contiguous arrays, OpenMP threads and a real BLAS for every GEMM, behind the
function names and contracts of course-style NumPy code, proven against a pure-NumPy reference
that ships with it (``fastbp.reference``; ``fastbp.set_backend("numpy" | "checked")``).
"""

__version__ = "0.1.0"

import os as _os

# Before the kernels load libgomp (it reads this once, at load): idle OpenMP workers sleep
# instead of spinning, so they do not fight BLAS's threads between GEMMs.  Measured on a loaded
# 2-core machine: a 784-100-10 step took 76 ms with spinning workers, 0.29 ms with passive ones.
# A value the user set is kept.  See fastbp/_config.py.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import layers, nn, optim
from . import autograd
from ._config import get_num_threads, set_num_threads, show_config
from ._kernels import openmp_enabled
from .backend import CheckError, get_backend, set_backend, use_backend

__all__ = [
    "CheckError",
    "autograd",
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
