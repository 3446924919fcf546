"""Pure-NumPy twins of every compiled kernel: same names, same signatures, same output semantics.

This is the ``"numpy"`` backend and the oracle the kernels are tested (and ``"checked"``) against.
It is written to be obviously correct, not fast.  ``n_threads`` is accepted and ignored.
It never imports the compiled kernels.
"""

from . import activations, blas, dropout, fused, linear, losses, optim
from . import norm
from .activations import *  # noqa: F401,F403
from .blas import *  # noqa: F401,F403
from .dropout import *  # noqa: F401,F403
from .fused import *  # noqa: F401,F403
from .linear import *  # noqa: F401,F403
from .losses import *  # noqa: F401,F403
from .norm import *  # noqa: F401,F403
from .optim import *  # noqa: F401,F403

_MODULES = (blas, linear, activations, losses, fused, optim, dropout)
_MODULES += (norm,)
KERNELS = tuple(name for module in _MODULES for name in module.__all__)
