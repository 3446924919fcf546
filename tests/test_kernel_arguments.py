"""Argument checks at the entry of the elementwise kernels (_activations, _optim, _dropout).

The kernels take 1-D C-contiguous ndarrays and check them with the NumPy C-API
(fastbp/_kernels/_arrays.pxd): a wrong argument raises TypeError / ValueError naming the kernel
and the argument, before any buffer is written.  One table lists every such kernel with the role
of each array argument, so each rule is tested once for all of them.
"""

import numpy as np
import pytest

from helpers import saved_name

from fastbp import _kernels
from fastbp._specs import ACTIVATIONS

IN, OUT = "in", "out"  # OUT: written by the kernel (outputs and in-place state)

_ACT_SAVED = {name: saved_name(row) for name, row in ACTIVATIONS.items()}

#: kernel -> ((argument, role), ...) for its arrays, then its other positional arguments
KERNELS = {
    **{f"{a}_forward": ((("x", IN), ("out", OUT)), ()) for a in _ACT_SAVED},
    **{f"{a}_backward": ((("dout", IN), (saved, IN), ("dx", OUT)), ())
       for a, saved in _ACT_SAVED.items()},
    "sgd_step": ((("w", OUT), ("dw", IN)), (0.1, 0.01)),
    "sgd_momentum_step": ((("w", OUT), ("dw", IN), ("v", OUT)), (0.1, 0.9)),
    "momentum_step": ((("w", OUT), ("dw", IN), ("v", OUT)), (0.1, 0.9, 0.01, True)),
    "rmsprop_step": ((("w", OUT), ("dw", IN), ("cache", OUT)), (0.1, 0.9, 1e-8, 0.01)),
    "adam_step": ((("w", OUT), ("dw", IN), ("m", OUT), ("v", OUT)),
                  (0.1, 0.9, 0.999, 1e-8, 3, 0.01)),
    "dropout_forward": ((("x", IN), ("out", OUT), ("mask", OUT)), (0.5, 7)),
    "dropout_backward": ((("dout", IN), ("mask", IN), ("dx", OUT)), ()),
}
CASES = [(kernel, name) for kernel, (arrays, _) in KERNELS.items() for name, _ in arrays]
N = 5


def test_the_table_covers_every_elementwise_kernel():
    from fastbp._kernels import _activations, _dropout, _optim

    names = _activations.__all__ + _optim.__all__ + _dropout.__all__
    assert sorted(KERNELS) == sorted(names)


def _arrays(kernel, dtype=np.float64):
    """Valid arrays for `kernel` (positive, so square-root state stays real)."""
    rng = np.random.default_rng(0)
    return {name: rng.uniform(0.5, 1.5, N).astype(dtype) for name, _ in KERNELS[kernel][0]}


def _call(kernel, arrays):
    scalars = KERNELS[kernel][1]
    return getattr(_kernels, kernel)(*arrays.values(), *scalars)


def _raises_and_writes_nothing(kernel, arrays, exc, match):
    before = {k: np.array(v, copy=True) for k, v in arrays.items() if isinstance(v, np.ndarray)}
    with pytest.raises(exc, match=match):
        _call(kernel, arrays)
    for k, v in before.items():
        np.testing.assert_array_equal(arrays[k], v)


def _first(kernel):
    return KERNELS[kernel][0][0][0]


def _second(kernel):
    return KERNELS[kernel][0][1][0]


# ---- what works ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel", KERNELS)
def test_read_only_inputs_work(kernel, dtype):
    arrays = _arrays(kernel, dtype)
    expected = {k: v.copy() for k, v in arrays.items()}
    _call(kernel, expected)
    roles = dict(KERNELS[kernel][0])
    for name, a in arrays.items():
        if roles[name] == IN:
            a.setflags(write=False)
    _call(kernel, arrays)
    for name in arrays:
        np.testing.assert_array_equal(arrays[name], expected[name])


@pytest.mark.parametrize("kernel", KERNELS)
def test_subclasses_of_ndarray_work(kernel):
    class Tagged(np.ndarray):
        pass

    arrays = _arrays(kernel)
    expected = {k: v.copy() for k, v in arrays.items()}
    _call(kernel, expected)
    tagged = {k: v.view(Tagged) for k, v in arrays.items()}
    _call(kernel, tagged)
    for name in arrays:
        np.testing.assert_array_equal(arrays[name], expected[name])


# ---- what raises, naming the argument ------------------------------------------------------

@pytest.mark.parametrize("kernel, name", CASES)
@pytest.mark.parametrize("bad", [
    pytest.param(lambda a: a.tolist(), id="list"),
    pytest.param(memoryview, id="memoryview"),
    pytest.param(lambda a: None, id="None"),
])
def test_non_ndarrays_raise_type_error(kernel, name, bad):
    arrays = _arrays(kernel)
    arrays[name] = bad(arrays[name])
    kind = type(arrays[name]).__name__
    _raises_and_writes_nothing(kernel, arrays, TypeError,
                               f"{kernel}: {name} must be a numpy.ndarray, got {kind}")


@pytest.mark.parametrize("kernel, name", CASES)
@pytest.mark.parametrize("dtype", [np.int64, np.float16, np.complex128, ">f8"])
def test_wrong_dtypes_raise_type_error(kernel, name, dtype):
    arrays = _arrays(kernel)
    arrays[name] = arrays[name].astype(dtype)
    shown = str(np.dtype(dtype))
    if name == _first(kernel):  # the first array chooses the call's dtype
        match = f"{kernel}: {name} must be a float32 or float64 array, got dtype {shown}"
    else:
        match = f"{kernel}: {name} has dtype {shown}, but this call computes in float64"
    _raises_and_writes_nothing(kernel, arrays, TypeError, match)


@pytest.mark.parametrize("kernel, name", CASES)
def test_mixed_float_dtypes_raise_type_error(kernel, name):
    """One float32 array among float64 ones: the error names the array whose dtype differs
    from the first array's (the second array, when the first is the odd one out)."""
    arrays = _arrays(kernel)
    arrays[name] = arrays[name].astype(np.float32)
    if name == _first(kernel):
        match = f"{kernel}: {_second(kernel)} has dtype float64, but this call computes in float32"
    else:
        match = f"{kernel}: {name} has dtype float32, but this call computes in float64"
    _raises_and_writes_nothing(kernel, arrays, TypeError, match)


@pytest.mark.parametrize("kernel, name", CASES)
def test_non_contiguous_arrays_raise_value_error(kernel, name):
    arrays = _arrays(kernel)
    strided = np.zeros(2 * N)[::2]
    strided[...] = arrays[name]
    arrays[name] = strided
    _raises_and_writes_nothing(kernel, arrays, ValueError,
                               rf"{kernel}: {name} must be C-contiguous, got strides \(16,\)")


@pytest.mark.parametrize("kernel, name", CASES)
def test_misaligned_arrays_raise_value_error(kernel, name):
    arrays = _arrays(kernel)
    raw = np.zeros(N * 8 + 1, np.uint8)[1:].view(np.float64)
    assert not raw.flags.aligned
    raw[...] = arrays[name]
    arrays[name] = raw
    _raises_and_writes_nothing(kernel, arrays, ValueError,
                               f"{kernel}: {name} must be aligned")


@pytest.mark.parametrize("kernel, name", CASES)
def test_arrays_of_two_dimensions_raise_value_error(kernel, name):
    arrays = _arrays(kernel)
    arrays[name] = np.ones((1, N))
    _raises_and_writes_nothing(kernel, arrays, ValueError,
                               rf"{kernel}: {name} must be 1-D \(the caller ravels\), "
                               rf"got shape \(1, {N}\)")


@pytest.mark.parametrize("kernel, name", [(k, n) for k, n in CASES
                                          if dict(KERNELS[k][0])[n] == OUT])
def test_read_only_outputs_raise_value_error(kernel, name):
    arrays = _arrays(kernel)
    arrays[name].setflags(write=False)
    _raises_and_writes_nothing(kernel, arrays, ValueError,
                               f"{kernel}: {name} is read-only, but the kernel writes it")


@pytest.mark.parametrize("kernel, name", [(k, n) for k, n in CASES if n != _first(k)])
def test_wrong_lengths_raise_value_error_naming_the_argument(kernel, name):
    arrays = _arrays(kernel)
    arrays[name] = arrays[name][:-1].copy()
    _raises_and_writes_nothing(kernel, arrays, ValueError, rf"{kernel}: .*\b{name}\b")


# ---- the 2-D kernels (_linear, _fused) share the convention --------------------------------

def _matrix_calls():
    x, w, b = np.ones((2, 3)), np.ones((3, 4)), np.ones(4)
    out, dout, dz = np.empty((2, 4)), np.ones((2, 4)), np.empty((2, 4))
    return {
        "linear_forward": ((x, w, b, out), {"x": 0, "w": 1, "out": 3}),
        "linear_backward": ((dout, x, w, np.empty((2, 3)), np.empty((3, 4)), np.empty(4)),
                            {"dout": 0, "x": 1, "dw": 4}),
        "linear_act_forward": ((x, w, b, "relu", 0.0, None, out), {"x": 0, "out": 6}),
        "act_backward_bias": ((dout, dout, "relu", 0.0, dz, np.empty(4)), {"saved": 1, "dz": 4}),
        "bias_act_forward": ((np.ones((2, 4)), b, "relu", 0.0, np.empty((2, 4))),
                             {"z": 0, "pre": 4}),
    }


MATRIX_CASES = [(k, name) for k, (_, names) in _matrix_calls().items() for name in names]


@pytest.mark.parametrize("kernel,name", MATRIX_CASES)
def test_matrix_kernels_check_every_array(kernel, name):
    args, names = _matrix_calls()[kernel]
    pos, fn = names[name], getattr(_kernels, kernel)

    def call(value):
        bad = list(args)
        bad[pos] = value
        return fn(*bad)

    a = args[pos]
    with pytest.raises(TypeError, match=f"{kernel}: {name} must be a numpy.ndarray"):
        call(a.tolist())
    with pytest.raises(TypeError, match=f"{kernel}: {name} "):
        call(a.astype(np.float32) if pos else a.astype(np.int64))
    with pytest.raises(ValueError, match=f"{kernel}: {name} must be C-contiguous"):
        call(np.asfortranarray(np.ones((a.shape[0], a.shape[1] + 1)))[:, :-1])
    with pytest.raises(ValueError, match=f"{kernel}: {name} must be 2-D"):
        call(a.reshape(-1))
    if name in ("out", "dw", "dz", "z", "pre"):
        ro = a.copy()
        ro.setflags(write=False)
        with pytest.raises(ValueError, match=f"{kernel}: {name} is read-only"):
            call(ro)
    with pytest.raises(ValueError, match=f"{kernel}: n_threads must be >= 1"):
        fn(*args, n_threads=0)
