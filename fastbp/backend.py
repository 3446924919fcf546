"""Which implementation of the kernels the public API calls.

* ``"compiled"`` (default): the Cython/OpenMP/BLAS kernels in ``fastbp._kernels``.
* ``"numpy"``: the pure-NumPy twins in ``fastbp.reference``.
* ``"checked"``: both, on the same inputs; raises :class:`CheckError` when an output disagrees
  beyond the dtype's tolerance (:data:`TOLERANCE`).

``set_backend`` sets the process-wide default; ``use_backend`` overrides it in a ``with`` block
(per thread / asyncio task, through a context variable).
"""

import contextlib
import contextvars
import inspect
import types

import numpy as np

from . import _kernels, reference

BACKENDS = ("compiled", "numpy", "checked")

#: (rtol, atol) per dtype for comparing a kernel with its reference, relative to the largest
#: magnitude in the expected array: ``max|got - expected| <= rtol * max|expected| + atol``.
TOLERANCE = {
    np.dtype(np.float32): (1e-4, 1e-6),
    np.dtype(np.float64): (1e-9, 1e-12),
}


class CheckError(AssertionError):
    """A compiled kernel disagreed with its NumPy reference under the ``"checked"`` backend."""


_default = "compiled"
_override = contextvars.ContextVar("fastbp_backend", default=None)


def _validate(name):
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


def get_backend():
    """The backend in force here: ``"compiled"``, ``"numpy"`` or ``"checked"``."""
    return _override.get() or _default


def set_backend(name):
    """Set the process-wide backend.

    Parameters
    ----------
    name : {"compiled", "numpy", "checked"}

    Raises
    ------
    ValueError
        For any other name.
    """
    global _default
    _default = _validate(name)


@contextlib.contextmanager
def use_backend(name):
    """Use backend `name` inside a ``with`` block (this thread / task only), then restore.

    Examples
    --------
    >>> import fastbp
    >>> with fastbp.use_backend("checked"):
    ...     out, cache = fastbp.layers.relu_forward([[-1.0, 2.0]])
    """
    token = _override.set(_validate(name))
    try:
        yield
    finally:
        _override.reset(token)


def _index(flat, shape):
    return tuple(int(i) for i in np.unravel_index(flat, shape)) if shape else ()


def compare(kernel, output, got, expected, dtype=None):
    """Raise CheckError unless `got` matches `expected` within TOLERANCE of `dtype`.

    `dtype` is the precision the kernel computed in (default: that of the arrays); a float64
    scratch output of a float32 kernel is held to the float32 tolerance.
    """
    got = np.asarray(got)
    expected = np.asarray(expected)
    where = f"{kernel}: output {output!r}"
    if got.shape != expected.shape:
        raise CheckError(f"{where} has shape {got.shape}, reference {expected.shape}")
    dtype = np.dtype(dtype) if dtype is not None else np.result_type(got, expected)
    rtol, atol = TOLERANCE.get(dtype, TOLERANCE[np.dtype(np.float64)])
    nan_got, nan_exp = np.isnan(got), np.isnan(expected)
    if not np.array_equal(nan_got, nan_exp):
        idx = _index(np.argmax(nan_got != nan_exp), got.shape)
        raise CheckError(f"{where}: NaN disagrees with the reference at index {idx}")
    g = np.where(nan_got, 0, got).astype(np.float64)
    e = np.where(nan_exp, 0, expected).astype(np.float64)
    inf_mismatch = np.isinf(g) | np.isinf(e)
    if np.any(inf_mismatch & (g != e)):
        idx = _index(np.argmax(inf_mismatch & (g != e)), g.shape)
        raise CheckError(f"{where}: infinity disagrees with the reference at index {idx}")
    g, e = np.where(inf_mismatch, 0, g), np.where(inf_mismatch, 0, e)
    if g.size == 0:
        return
    diff = np.abs(g - e)
    scale = float(np.max(np.abs(e)))
    worst = int(np.argmax(diff))
    if diff.flat[worst] > rtol * scale + atol:
        idx = _index(worst, g.shape)
        rel = diff.flat[worst] / max(scale, np.finfo(np.float64).tiny)
        raise CheckError(
            f"{where} differs from the NumPy reference: largest relative error {rel:.3g} "
            f"(|got - expected| = {diff.flat[worst]:.3g} at index {idx}, got "
            f"{float(g.flat[worst])!r}, expected {float(e.flat[worst])!r}; tolerance rtol={rtol:g} of "
            f"max|expected| = {scale:.3g})"
        )


def _compute_dtype(values):
    """float32 when any floating array argument is float32, else float64."""
    floats = {v.dtype for v in values if isinstance(v, np.ndarray) and v.dtype.kind == "f"}
    return np.dtype(np.float32) if np.dtype(np.float32) in floats else np.dtype(np.float64)


def _snapshot(value, memo):
    if isinstance(value, np.ndarray) and value.flags.writeable:
        if id(value) not in memo:
            memo[id(value)] = value.copy()
        return memo[id(value)]
    return value


def _checked_kernel(name):
    """Run the compiled kernel on the caller's buffers and the reference on copies of them
    (taken before the call), then compare every writable buffer and the return value.

    Both are looked up at call time, so a patched kernel is checked too (the tests rely on it).
    """
    params = list(inspect.signature(getattr(reference, name)).parameters)

    def run(*args, **kwargs):
        fast, slow = getattr(_kernels, name), getattr(reference, name)
        memo = {}  # one copy per distinct buffer, so in-place calls (dz = dout) stay in place
        before_args = [_snapshot(a, memo) for a in args]
        before_kwargs = {k: _snapshot(v, memo) for k, v in kwargs.items()}
        result = fast(*args, **kwargs)
        expected = slow(*before_args, **before_kwargs)
        written = [(params[i], a, before_args[i]) for i, a in enumerate(args)]
        written += [(k, v, before_kwargs[k]) for k, v in kwargs.items()]
        dtype = _compute_dtype(a for _, a, _ in written)
        for arg_name, got, exp in written:
            if isinstance(got, np.ndarray) and got.flags.writeable:
                compare(name, arg_name, got, exp, dtype)
        if result is not None:
            compare(name, "return value", result, expected, dtype)
        return result

    run.__name__ = run.__qualname__ = name
    run.__doc__ = f"Checked {name}: compiled kernel, verified against fastbp.reference.{name}."
    return run


_checked = None


def _checked_namespace():
    global _checked
    if _checked is None:
        _checked = types.SimpleNamespace(**{n: _checked_kernel(n) for n in _kernels.KERNELS})
    return _checked


def kernels():
    """The namespace of kernel functions for the backend in force (used by the public API)."""
    name = _override.get() or _default
    if name == "compiled":
        return _kernels
    if name == "numpy":
        return reference
    return _checked_namespace()
