"""Checks at the Python boundary, before any nogil kernel runs.

Every public function funnels its arguments through these helpers, so a wrong shape, dtype or
label raises ValueError/TypeError naming the argument, never a crash inside a kernel.  The
helpers are cheap (no copies unless a dtype change or non-contiguous layout forces one), since
they run on every call of the course API.
"""

import math

import numpy as np

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def compute_dtype(*arrays):
    """The float dtype a call computes in: NumPy promotion of the inputs, integers -> float64.

    float16 computes (and returns) in float32; complex, object, string and longdouble arrays
    raise TypeError.
    """
    for a in arrays:
        kind = a.dtype.kind
        if kind not in "fiub":
            raise TypeError(f"expected a real numeric array, got dtype {a.dtype}")
    dtype = np.result_type(*arrays)
    if dtype in _FLOATS:
        return dtype
    if dtype.kind in "iub":
        return np.dtype(np.float64)
    if dtype == np.float16:
        return np.dtype(np.float32)
    raise TypeError(f"dtype {dtype} is not supported; use float32 or float64")


def as_array(x, name):
    """`x` as an ndarray of real numbers (no copy when it already is one)."""
    a = x if type(x) is np.ndarray else np.asarray(x)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    return a


def as_float(x, name, dtype, ndim=None):
    """`x` as a C-contiguous array of `dtype` (a copy only when needed), checking ndim."""
    a = as_array(x, name)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if a.dtype != dtype or not a.flags.c_contiguous:
        a = np.ascontiguousarray(a, dtype=dtype)
    return a


def as_labels(y, name, n, n_classes):
    """Integer labels in [0, n_classes) of shape (n,), as a C-contiguous int64 array."""
    a = y if type(y) is np.ndarray else np.asarray(y)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer class labels, got dtype {a.dtype}")
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the scores, got {a.shape}")
    if n and (a.min() < 0 or a.max() >= n_classes):
        bad = a[(a < 0) | (a >= n_classes)][0]
        raise ValueError(f"{name} must lie in [0, {n_classes}), found label {bad}")
    return np.ascontiguousarray(a, dtype=np.int64)


def finite_real(value, name):
    """`value` as a float: TypeError unless a real number, ValueError unless finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def require_shape(a, name, shape):
    """Raise ValueError unless a.shape == shape."""
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")


def unpack_cache(cache, name, size):
    """`cache` as a tuple of `size` items, or a ValueError saying what was expected."""
    if not isinstance(cache, tuple) or len(cache) != size:
        got = f"a {type(cache).__name__}" + (
            f" of length {len(cache)}" if isinstance(cache, (tuple, list)) else ""
        )
        raise ValueError(f"{name} must be the {size}-tuple its forward returned, got {got}")
    return cache
