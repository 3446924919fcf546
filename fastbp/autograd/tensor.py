"""The autograd ``Tensor``: an ndarray plus the node of the graph that produced it.

Design
------
a. A Tensor wraps an ndarray without copying it (``.data``) and carries ``.grad`` (an ndarray of
   the same shape and dtype, or None) and ``requires_grad``.  A tensor made by an op while
   gradients are recorded is also its graph node: ``_backward``, the op's closure (it keeps what
   the op's backward needs, as ``torch.autograd.Function.save_for_backward`` does;
   ``backward(g)`` returns one gradient per input), and ``_inputs``, the input tensors that
   receive a gradient, position by position (None for the others).  A leaf has ``_inputs`` None.
   After a backward pass without ``retain_graph`` the closure is dropped (``_backward`` None):
   what it saved is freed, and a second pass raises.
b. Graph overhead is part of the product, so the hot path is lean: ``__slots__``, no separate
   node object, results built by :func:`make` without re-validating what the op already knows,
   and no wrapper objects around the data.  Validation happens at the public boundary (the
   constructor, the ``requires_grad`` / ``grad`` setters, ``backward``'s arguments, each op's
   operands).
c. Recording is on unless a :class:`no_grad` block (or decorated function) is running; the
   switch is per thread, as in PyTorch.
d. The operators (``+ - * / @ **``, indexing, ``sum``, ``relu``...) are the functions of
   :mod:`fastbp.autograd.functions`, bound as methods there in one table; this module knows
   nothing about any op, so it imports none of them (no import circle).
"""

import functools
import threading

import numpy as np

from .._validation import FLOAT_DTYPES
from .engine import run_backward

__all__ = ["Tensor", "no_grad", "is_grad_enabled"]


def _one(dtype):
    one = np.ones((), dtype)
    one.setflags(write=False)
    return one


_ONES = {dtype: _one(dtype) for dtype in FLOAT_DTYPES}


class _GradMode(threading.local):
    enabled = True  # each thread starts with recording on


_mode = _GradMode()


def is_grad_enabled():
    """True unless called inside :class:`no_grad` (in this thread)."""
    return _mode.enabled


class no_grad:
    """Record no graph inside a ``with`` block or a decorated function (this thread only).

    Ops still compute their results, which then do not require grad.  A decorated function
    enters a fresh ``no_grad`` on every call, so recursion and threads restore the mode right.

    Examples
    --------
    >>> from fastbp.autograd import Tensor, no_grad
    >>> w = Tensor([1.0, 2.0], requires_grad=True)
    >>> with no_grad():
    ...     y = w * 2
    >>> y.requires_grad
    False
    """

    def __enter__(self):
        self._previous = _mode.enabled
        _mode.enabled = False
        return self

    def __exit__(self, *exc):
        _mode.enabled = self._previous
        return False

    def __call__(self, func):
        @functools.wraps(func)
        def without_grad(*args, **kwargs):
            with no_grad():
                return func(*args, **kwargs)

        return without_grad


def _numeric(a, name):
    """`a` as an ndarray of a supported dtype: float32/float64, or integers/bools (no grad)."""
    kind = a.dtype.kind
    if kind not in "fiub":
        raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
    if kind == "f" and a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {a.dtype}; autograd tensors are float32 or float64")
    return a


class Tensor:
    """An n-dimensional array that records the operations applied to it.

    Parameters
    ----------
    data : array_like or Tensor
        Wrapped without a copy when it is already an ndarray of the requested dtype (so an
        optimizer step on the tensor updates that array).  A Tensor gives its data (detached).
        float32 and float64 are kept; integer and bool data are allowed for tensors that need
        no gradient (ops promote them as NumPy does, to float64 for the compiled kernels).
    requires_grad : bool, default False
        Record operations on this tensor so that ``backward`` fills its ``.grad``.
    dtype : numpy dtype, optional
        Convert the data to this dtype first.

    Attributes
    ----------
    data : ndarray
    grad : ndarray or None
        The gradient accumulated by :meth:`backward` calls (same shape and dtype as data).
    requires_grad : bool
    shape, ndim, dtype, size
        Those of ``data``.

    Raises
    ------
    TypeError
        If the data is not real-valued, is a float other than float32/float64, if
        ``requires_grad`` is not a bool, or if ``requires_grad=True`` for non-float data.

    Examples
    --------
    >>> from fastbp.autograd import Tensor
    >>> x = Tensor([1.0, 2.0, 3.0], requires_grad=True)
    >>> (x * x).sum().backward()
    >>> x.grad
    array([2., 4., 6.])
    """

    __slots__ = ("data", "_grad", "_rg", "_backward", "_inputs", "__weakref__")
    __array_ufunc__ = None  # ndarray (op) Tensor defers to the Tensor's reflected operator

    def __init__(self, data, requires_grad=False, dtype=None):
        if isinstance(data, Tensor):
            data = data.data
        a = data if (type(data) is np.ndarray and dtype is None) else np.asarray(data, dtype)
        self.data = _numeric(a, "data")
        self._grad = None
        self._backward = self._inputs = None
        self._rg = False
        self.requires_grad = requires_grad

    # attributes ---------------------------------------------------------------------------

    @property
    def requires_grad(self):
        """Whether ops on this tensor are recorded (settable on leaves, True for float only)."""
        return self._rg

    @requires_grad.setter
    def requires_grad(self, flag):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"requires_grad must be True or False, got {type(flag).__name__}")
        if self._inputs is not None:
            raise RuntimeError("requires_grad can only be changed on leaf tensors; use "
                               ".detach() to get a leaf")
        if flag and self.data.dtype.kind != "f":
            raise TypeError(f"only float32/float64 tensors can require grad, got dtype "
                            f"{self.data.dtype}")
        self._rg = bool(flag)

    @property
    def grad(self):
        """The accumulated gradient (ndarray of data's shape and dtype) or None."""
        return self._grad

    @grad.setter
    def grad(self, value):
        if value is not None:
            g = np.asarray(value.data if isinstance(value, Tensor) else value)
            if g.shape != self.data.shape:
                raise ValueError(f"grad has shape {g.shape}, but the tensor has shape "
                                 f"{self.data.shape}")
            if g.dtype.kind not in "fiu":
                raise TypeError(f"grad must hold real numbers, got dtype {g.dtype}")
            value = np.array(g, dtype=self.data.dtype, order="C")  # owned: accumulated in place
        self._grad = value

    @property
    def is_leaf(self):
        """True for tensors not produced by a recorded op."""
        return self._inputs is None

    @property
    def shape(self):
        return self.data.shape

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self):
        return self.data.size

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        body = np.array2string(self.data, separator=", ", prefix="Tensor(")
        flag = ", requires_grad=True" if self._rg else ""
        return f"Tensor({body}{flag})"

    # conversions --------------------------------------------------------------------------

    def numpy(self):
        """The data array itself (shared, not copied)."""
        return self.data

    def __array__(self, dtype=None, copy=None):
        return np.array(self.data, dtype=dtype, copy=copy)

    def item(self):
        """The single element as a Python float (or int/bool).

        Raises
        ------
        ValueError
            If the tensor does not have exactly one element.
        """
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.data.item()

    def __float__(self):
        return float(self.item())

    def detach(self):
        """A new leaf sharing this data, outside the graph (requires_grad False)."""
        return make(self.data)

    def zero_grad(self, set_to_none=True):
        """Forget the gradient (``grad = None``), or zero it in place (``set_to_none=False``).

        None is the default, as in ``torch.optim.Optimizer.zero_grad``: the next backward then
        stores its gradient without an extra pass over memory.
        """
        if set_to_none or self._grad is None:
            self._grad = None
        else:
            self._grad.fill(0)

    # the backward pass --------------------------------------------------------------------

    def backward(self, grad=None, retain_graph=False):
        """Accumulate d(self)/d(leaf) into the ``.grad`` of every leaf that requires grad.

        Parameters
        ----------
        grad : array_like or Tensor, optional
            The gradient flowing into this tensor, of its shape.  Required unless the tensor
            has exactly one element (then 1).
        retain_graph : bool, default False
            Keep what the ops saved, so that backward can run through this graph again.

        Raises
        ------
        RuntimeError
            If this tensor does not require grad, if grad is omitted for a tensor with more
            than one element, or if the graph was already freed by an earlier backward (pass
            ``retain_graph=True`` to the first one).
        ValueError, TypeError
            If grad has another shape, or is not real-valued.  Nothing is computed then.
        """
        if not self._rg:
            raise RuntimeError("backward: this tensor does not require grad (no leaf it depends "
                               "on has requires_grad=True, or it was made under no_grad)")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward: grad can be omitted only for a tensor with one "
                                   f"element; this one has shape {self.shape}, pass grad=")
            grad = _ONES[self.data.dtype]  # read-only: the engine never writes it
            if self.data.ndim:
                grad = grad.reshape(self.data.shape)
        else:
            g = _numeric(np.asarray(grad.data if isinstance(grad, Tensor) else grad), "grad")
            if g.shape != self.data.shape:
                raise ValueError(f"backward: grad has shape {g.shape}, but the tensor has shape "
                                 f"{self.data.shape}")
            grad = g.astype(self.data.dtype, copy=False)
        run_backward(self, grad, bool(retain_graph))


_new = object.__new__


def make(data, backward=None, inputs=None):
    """A Tensor over `data` (an ndarray, trusted): a leaf outside the graph, or, given the op's
    `backward` closure and its recorded `inputs`, a node that requires grad."""
    t = _new(Tensor)
    t.data = data
    t._grad = None
    t._rg = inputs is not None
    t._backward = backward
    t._inputs = inputs
    return t
