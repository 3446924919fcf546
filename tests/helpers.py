"""Shared test helpers (import as `from helpers import ...`): tolerances per dtype, input variants."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import fastbp

DTYPES = (np.float32, np.float64)

#: Kernel vs reference agreement per dtype (DESIGN.md §5: float64 ~1e-12 relative, float32 ~1e-5).
TOL = {
    np.dtype(np.float32): dict(rtol=2e-5, atol=2e-6),
    np.dtype(np.float64): dict(rtol=1e-12, atol=1e-13),
}

THREADS = (1, 2, 4)
ODD_SHAPES = ((1, 1), (1, 7), (7, 1), (7, 33), (33, 7), (64, 130))


def tol(dtype):
    return TOL[np.dtype(dtype)]


def assert_close(got, expected, dtype=None, scale=1.0):
    """assert_allclose with the dtype's tolerance (atol scaled by the data's magnitude)."""
    t = tol(dtype or np.asarray(expected).dtype)
    np.testing.assert_allclose(got, expected, rtol=t["rtol"], atol=t["atol"] * scale)


def variants(a):
    """`a` as given, as a non-contiguous view with equal values, and as a read-only array."""
    strided = np.empty((a.shape[0], 2 * a.shape[1]) if a.ndim == 2 else (2 * a.size,), a.dtype)
    view = strided[:, ::2] if a.ndim == 2 else strided[::2]
    view[...] = a
    ro = a.copy()
    ro.setflags(write=False)
    return {"contiguous": a, "strided": view, "readonly": ro}




def numerical_gradient_array(f, x, df, h=1e-6):
    """Central-difference gradient of sum(f() * df) w.r.t. x, perturbing x in place.

    `f` takes no arguments and reads `x` (so it works for any argument of a layer).  A local
    twin of fastbp.gradcheck, so kernel tests do not depend on the code they would check.
    """
    grad = np.zeros(x.shape)
    flat = x.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        pos = np.array(f(), dtype=np.float64)
        flat[i] = old - h
        neg = np.array(f(), dtype=np.float64)
        flat[i] = old
        grad.reshape(-1)[i] = np.sum((pos - neg) * df) / (2 * h)
    return grad


# ---- test grids derived from the spec tables (fastbp._specs): a new row is tested everywhere

#: values tried for an activation's real parameter, besides its default
REAL_PARAM_VALUES = (0.2, 3.0)


def param_variants(row):
    """The keyword arguments to try for an activation row, the same for the kernels, their
    NumPy twins, layers, nn and autograd: the default, two other values of a real parameter,
    or every form by its name."""
    if row.param is None:
        return ({},)
    if row.forms:
        return tuple({row.param: form} for form in row.forms)
    return ({},) + tuple({row.param: v} for v in REAL_PARAM_VALUES)


def saved_name(row):
    """What the elementwise backward reads, as its argument is named: "x" or "y"."""
    return "y" if row.backward_reads == "output" else "x"


def torch_activation(torch, row, value=None):
    """PyTorch's function of an activation row (the table's names and parameters are
    PyTorch's), at the public parameter `value` (a real, or a form name; default: the row's)."""
    fn = getattr(torch, row.name, None) or getattr(torch.nn.functional, row.name)
    if row.param is None:
        return fn
    value = row.default if value is None else value
    if row.forms:
        return lambda t: fn(t, **{row.param: value})
    return lambda t: fn(t, value)


#: the directory holding the fastbp under test (site-packages, or a checkout built in place)
FASTBP_PARENT = str(Path(fastbp.__file__).resolve().parents[1])


def run_python(*args, timeout=120, **env_vars):
    """``python *args`` in a subprocess that imports the same fastbp as the tests.

    ``-c`` and ``-m`` put the working directory first on sys.path, so the subprocess runs in
    the directory holding the fastbp under test, which also leads PYTHONPATH: from a source
    checkout whose package is installed elsewhere, the uninstalled ``fastbp/`` of the checkout
    would otherwise shadow it.
    """
    env = dict(os.environ, **env_vars)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (FASTBP_PARENT, env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, *args], cwd=FASTBP_PARENT, env=env,
                          capture_output=True, text=True, timeout=timeout)
