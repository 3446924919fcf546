"""Pure-NumPy twins of every compiled kernel: same names, same signatures, same output semantics.

This is the ``"numpy"`` backend and the oracle the kernels are tested (and ``"checked"``) against.
It is written to be obviously correct, not fast.  ``n_threads`` is accepted and ignored.
It never imports the compiled kernels.
"""

from .blas import gemm
from .linear import linear_backward, linear_forward
from .optim import adam_step, momentum_step, rmsprop_step, sgd_momentum_step, sgd_step

KERNELS = (
    "gemm", "linear_forward", "linear_backward",
    "sgd_step", "sgd_momentum_step", "momentum_step", "rmsprop_step", "adam_step",
)
