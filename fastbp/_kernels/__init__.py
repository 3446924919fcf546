"""The compiled core (private): one Cython module per concern; see each module's design block.

Every name exported here has a NumPy twin with the same signature in ``fastbp.reference``;
``KERNELS`` lists them, and a test asserts both sides export the same set.
"""

from ._blas import gemm
from ._dropout import dropout_backward, dropout_forward
from ._linear import linear_backward, linear_forward
from ._threads import omp_max_threads, openmp_enabled

KERNELS = ("gemm", "linear_forward", "linear_backward", "dropout_forward", "dropout_backward")
