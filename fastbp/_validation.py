"""Checks at the Python boundary, before any nogil kernel runs: one voice for every error.

Every public function funnels its arguments through these helpers (integers, reals, flags,
dtypes, arrays, labels, thread counts), so a wrong value raises ValueError/TypeError naming the
argument with the same wording for the same mistake, never a crash inside a kernel.  The
helpers are cheap (no copies unless a dtype change or non-contiguous layout forces one), since
they run on every call of the course API.
"""

import math
import numbers

import numpy as np

#: the float dtypes the kernels compute in
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def integer(value, name, minimum=None):
    """`value` as an int: TypeError unless an integer (bools are not), ValueError below
    `minimum`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def real(value, name, minimum=None, strict=False):
    """`value` as a finite float: TypeError unless a real number (bools are not), ValueError
    when not finite or below `minimum` (at or below it with `strict`)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value}")
    return value


#: random seeds are 64-bit unsigned integers (the dropout kernels' splitmix64 counter)
SEED_LIMIT = 1 << 64


def random_seed(value, name):
    """A random seed: an integer in [0, 2**64) (TypeError unless an integer, bools are not;
    ValueError outside the range)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if not 0 <= value < SEED_LIMIT:
        raise ValueError(f"{name} must lie in [0, 2**64), got {value}")
    return int(value)


def fraction(value, name):
    """A decay factor (momentum, beta, decay rate): a real number in [0, 1)."""
    value = real(value, name)
    if not 0 <= value < 1:
        raise ValueError(f"{name} must lie in [0, 1), got {value}")
    return value


def unit_interval(value, name):
    """A weight in [0, 1] (a batch-norm momentum): a real number in the closed interval."""
    value = real(value, name)
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return value


def flag(value, name):
    """`value` as a bool: TypeError unless True or False (NumPy's bool too)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}")
    return bool(value)


def float_dtype(dtype, name="dtype"):
    """`dtype` as float32 or float64 (TypeError otherwise, also for what is not a dtype)."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be float32 or float64, got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {dt}")
    return dt


def float_array(a, name):
    """Raise unless `a` is an ndarray of float32 or float64 (a parameter updated in place)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got dtype {a.dtype}")
    return a


def thread_count(value, name="n_threads"):
    """A thread count: an integer >= 1."""
    return integer(value, name, 1)


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
    if dtype in FLOAT_DTYPES:
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
    return real(value, name)


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
