"""The compiled core (private): one Cython module per concern; see each module's design block.

Every name listed in ``KERNELS`` has a NumPy twin with the same signature in
``fastbp.reference``, and a test asserts both sides export the same set.
"""

from . import _activations, _blas, _dropout, _fused, _linear, _losses, _optim
from . import _norm
from ._activations import *  # noqa: F401,F403
from ._blas import *  # noqa: F401,F403
from ._dropout import *  # noqa: F401,F403
from ._fused import *  # noqa: F401,F403
from ._linear import *  # noqa: F401,F403
from ._losses import *  # noqa: F401,F403
from ._norm import *  # noqa: F401,F403
from ._optim import *  # noqa: F401,F403
from ._threads import omp_max_threads, openmp_enabled

_MODULES = (_blas, _linear, _activations, _losses, _fused, _optim, _dropout)
_MODULES += (_norm,)
KERNELS = tuple(name for module in _MODULES for name in module.__all__)
