"""Property-based: every compiled kernel equals its NumPy twin over random arguments (hypothesis).

The kernels come from ``fastbp._kernels.KERNELS`` (the names the reference also exports), and
each kernel's arguments are built from the NAMES of its reference parameters: one table says
what an argument called ``x`` or ``lr`` is, so a new kernel that reuses the project's names is
covered with no edit here, and one with a new name fails ``test_every_kernel_argument_is_known``
until the name is added.  Drawn: shapes (0, 1, odd, up to a few thousand elements), float32 /
float64, magnitudes, every scalar, thread counts; every array the kernel only reads is made
read-only.  Checked: the outputs and the return value agree within the dtype's tolerance, and
the compiled kernel gives bitwise the same result on 1 and on N threads.

Non-contiguous inputs are not part of the kernel contract (kernels take C-contiguous arrays);
they are drawn in ``test_properties_layers.py`` through the public API, which accepts them.
"""

import inspect

import numpy as np
import pytest
from helpers import TOL

from fastbp import _kernels, reference
from fastbp._specs import ACTIVATIONS
from fastbp.reference import fused as ref_fused

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
given, settings = hypothesis.given, hypothesis.settings

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[hypothesis.HealthCheck.too_slow])

#: array argument -> its axes, by the role the name plays: N rows, D inputs, M outputs or classes,
#: L the length of a 1-D (elementwise) kernel.  Elementwise modules take every array as (L,).
_MATRIX_AXES = {
    "x": "ND", "w": "DM", "b": "M", "out": "NM", "pre": "NM", "dout": "NM", "dx": "ND",
    "dw": "DM", "db": "M", "saved": "NM", "dz": "NM", "logits": "NM", "scores": "NM",
    "pred": "NM", "target": "NM", "dlogits": "NM", "dscores": "NM", "dpred": "NM",
    "labels": "N", "row_loss": "N", "z": "NM",
}
#: the norm kernels take raveled (N, D) matrices, per-feature (D) vectors and statistics per
#: feature (batch norm) or per row (layer norm): axis "S"
_NORM_AXES = {
    "x": "ND", "out": "ND", "dout": "ND", "dx": "ND", "gamma": "D", "beta": "D",
    "dgamma": "D", "dbeta": "D", "running_mean": "D", "running_var": "D", "mean": "S",
    "inv_std": "S",
}
#: modules whose kernels work on 1-D arrays of one length L
_ELEMENTWISE = {"activations", "optim", "dropout"}
#: arrays with a dtype of their own (everything else has the drawn float dtype)
_FIXED_DTYPES = {"labels": np.int64, "row_loss": np.float64, "mean": np.float64,
                 "inv_std": np.float64}
#: arrays that must hold values >= 0 (running averages of squares)
_NONNEGATIVE = {"cache", "v", "running_var", "inv_std"}
#: optional arrays (None means: no bias, no bias gradient)
_OPTIONAL = {"b", "db"}

#: scalar argument -> strategy
SCALARS = {
    "alpha": st.sampled_from([0.0, 0.01, 0.5, 1.0, 1.7]),
    "approximate": st.sampled_from(ACTIVATIONS["gelu"].forms),
    "activation": st.sampled_from(sorted(ref_fused.ACTIVATION_CODES)),
    "scale": st.sampled_from([1.0, 0.5, -0.1, 1 / 7]),
    "beta": st.sampled_from([0.0, 1.0, 0.5]),
    "lr": st.floats(1e-4, 1.0),
    "weight_decay": st.sampled_from([0.0, 1e-3, 0.1]),
    "momentum": st.floats(0.0, 0.99),
    "nesterov": st.booleans(),
    "decay_rate": st.floats(0.5, 0.999),
    "eps": st.sampled_from([1e-8, 1e-4]),
    "beta1": st.floats(0.5, 0.99),
    "beta2": st.floats(0.5, 0.999),
    "t": st.integers(1, 1000),
    "keep_prob": st.floats(0.05, 1.0),
    "seed": st.integers(0, 2**64 - 1),
    "trans_a": st.booleans(),
    "trans_b": st.booleans(),
    "unbiased": st.booleans(),
}
THREADS = st.sampled_from([2, 3, 4])
DIM = st.one_of(st.sampled_from([0, 1, 2, 7, 33]), st.integers(0, 70))
LENGTH = st.one_of(st.sampled_from([0, 1, 7, 33]), st.integers(0, 5000))
DTYPE = st.sampled_from([np.float32, np.float64])
MAGNITUDE = st.sampled_from([1.0, 1e-3, 30.0])

_MODULE_OF = {name: module.__name__.rsplit(".", 1)[1]
              for module in reference._MODULES for name in module.__all__}


def _parameters(kernel):
    return [p for p in inspect.signature(getattr(reference, kernel)).parameters.values()
            if p.name != "n_threads"]


def _is_array(kernel, name):
    if kernel == "gemm":
        return name in ("a", "b", "c")
    if _MODULE_OF[kernel] in _ELEMENTWISE:
        return name not in SCALARS
    if _MODULE_OF[kernel] == "norm":
        return name in _NORM_AXES
    return name in _MATRIX_AXES


def test_every_kernel_argument_is_known():
    assert set(reference.KERNELS) == set(_kernels.KERNELS)
    unknown = [(k, p.name) for k in reference.KERNELS for p in _parameters(k)
               if not _is_array(k, p.name) and p.name not in SCALARS]
    assert unknown == [], "add these argument names to SCALARS or _MATRIX_AXES"


def _draw_arguments(kernel, data):
    """({name: value} for one call of `kernel`, the float dtype it computes in)."""
    dtype = np.dtype(data.draw(DTYPE, "dtype"))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), "values seed"))
    magnitude = data.draw(MAGNITUDE, "magnitude")
    elementwise = _MODULE_OF[kernel] in _ELEMENTWISE
    norm = _MODULE_OF[kernel] == "norm"
    dims = {"L": data.draw(LENGTH, "L")} if elementwise else {
        axis: data.draw(DIM, axis) for axis in "NDM"}
    if norm:
        hypothesis.assume(dims["D"] >= 1 and dims["N"] >= 2)  # a feature; a batch variance
        dims["S"] = dims["N"] if kernel.startswith("layernorm") else dims["D"]
    if kernel == "gemm":
        return _gemm_arguments(data, rng, dtype, magnitude), dtype
    args = {}
    for p in _parameters(kernel):
        name = p.name
        if not _is_array(kernel, name):
            args[name] = data.draw(SCALARS[name], name)
            continue
        if name in _OPTIONAL and data.draw(st.booleans(), f"{name} is None"):
            args[name] = None
            continue
        if norm:
            shape = (int(np.prod([dims[a] for a in _NORM_AXES[name]])),)
        else:
            shape = tuple(dims[a] for a in ("L" if elementwise else _MATRIX_AXES[name]))
        if name == "labels":
            args[name] = rng.integers(0, max(dims["M"], 1), shape).astype(np.int64)
            continue
        values = rng.standard_normal(shape) * magnitude
        if name in _NONNEGATIVE:
            values = np.abs(values)
        args[name] = values.astype(_FIXED_DTYPES.get(name, dtype))
    if "labels" in args and dims["M"] == 0 and dims["N"] > 0:
        hypothesis.assume(False)  # no class to label a row with
    return args, dtype


def _gemm_arguments(data, rng, dtype, magnitude):
    m, n, k = (data.draw(DIM, axis) for axis in "mnk")
    trans_a, trans_b = data.draw(st.booleans(), "trans_a"), data.draw(st.booleans(), "trans_b")
    a = rng.standard_normal((k, m) if trans_a else (m, k)) * magnitude
    b = rng.standard_normal((n, k) if trans_b else (k, n)) * magnitude
    return {"trans_a": trans_a, "trans_b": trans_b,
            "alpha": data.draw(st.sampled_from([1.0, -0.5, 2.0]), "alpha"),
            "a": a.astype(dtype), "b": b.astype(dtype),
            "beta": data.draw(st.sampled_from([0.0, 1.0, -0.5]), "beta"),
            "c": rng.standard_normal((m, n)).astype(dtype)}


def _copy(args):
    return {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in args.items()}


def _call(fn, args, threads=None):
    return fn(**args) if threads is None else fn(**args, n_threads=threads)


def _assert_close(got, expected, dtype, name):
    """Within `dtype`'s tolerance, relative to the largest magnitude (sums may cancel)."""
    if expected is None:
        assert got is None
        return
    expected = np.asarray(expected)
    t = TOL[dtype]
    peak = float(np.abs(expected).max()) if expected.size else 0.0
    np.testing.assert_allclose(got, expected, rtol=t["rtol"] * 5,
                               atol=t["atol"] + t["rtol"] * 5 * peak, err_msg=name)


@pytest.mark.parametrize("kernel", _kernels.KERNELS)
@SETTINGS
@given(data=st.data())
def test_compiled_equals_reference(kernel, data):
    args, dtype = _draw_arguments(kernel, data)
    threaded = "n_threads" in inspect.signature(getattr(reference, kernel)).parameters
    expected = _copy(args)
    returned = _call(getattr(reference, kernel), expected)
    # whatever the reference left unchanged is an input: the kernel must accept it read-only
    for name, a in args.items():
        if isinstance(a, np.ndarray) and np.array_equal(a, expected[name], equal_nan=True):
            a.setflags(write=False)
    serial = _copy(args)
    got = _call(getattr(_kernels, kernel), serial, 1 if threaded else None)
    _assert_close(got, returned, dtype, "return value")
    for name, a in serial.items():
        if isinstance(a, np.ndarray):
            _assert_close(a, expected[name], dtype, name)
    if threaded:
        parallel = _copy(args)
        got_parallel = _call(getattr(_kernels, kernel), parallel, data.draw(THREADS, "threads"))
        np.testing.assert_array_equal(got_parallel, got)
        for name, a in parallel.items():
            if isinstance(a, np.ndarray):
                np.testing.assert_array_equal(a, serial[name], err_msg=f"{name}: 1 vs N threads")
