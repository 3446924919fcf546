"""Pure-NumPy twins of every compiled kernel: same names, same signatures, same output semantics.

This is the ``"numpy"`` backend and the oracle the kernels are tested (and ``"checked"``) against.
It is written to be obviously correct, not fast.  ``n_threads`` is accepted and ignored.
It never imports the compiled kernels.
"""

from .blas import gemm
from .dropout import dropout_backward, dropout_forward
from .linear import linear_backward, linear_forward

KERNELS = ("gemm", "linear_forward", "linear_backward", "dropout_forward", "dropout_backward")
