"""fastbp.autograd: reverse-mode backpropagation over any graph, on the compiled kernels.

Write the math of the lecture with :class:`Tensor` operations; ``backward()`` runs the graph in
reverse topological order, summing gradients where a value is used more than once and over
broadcast axes, and accumulates into each leaf's ``.grad``::

    >>> from fastbp.autograd import Tensor
    >>> x, y, z = (Tensor(v, requires_grad=True) for v in (-2.0, 5.0, -4.0))
    >>> f = (x + y) * z
    >>> f.backward()
    >>> float(x.grad), float(y.grad), float(z.grad)
    (-4.0, -4.0, 3.0)

Modules: ``tensor`` (the Tensor, graph nodes, ``no_grad``), ``engine`` (the backward pass),
``functions`` (the ops: NumPy for broadcasting arithmetic, the kernels for ``linear``, ``@``,
activations, losses and dropout), ``gradcheck`` (finite differences in float64).  Optimizers
of :mod:`fastbp.optim` update lists or dicts of leaf tensors: ``opt.step(params)``.
"""

from .functions import (concatenate, dropout, elu, exp, gelu, leaky_relu, linear, log,
                        matmul, maximum, minimum, mse, relu, sigmoid, softmax_cross_entropy,
                        svm_hinge, tanh)
from .gradcheck import GradcheckError, gradcheck
from .tensor import Tensor, is_grad_enabled, no_grad

__all__ = [
    "GradcheckError",
    "Tensor",
    "concatenate",
    "dropout",
    "elu",
    "exp",
    "gelu",
    "gradcheck",
    "is_grad_enabled",
    "leaky_relu",
    "linear",
    "log",
    "matmul",
    "maximum",
    "minimum",
    "mse",
    "no_grad",
    "relu",
    "sigmoid",
    "softmax_cross_entropy",
    "svm_hinge",
    "tanh",
]
