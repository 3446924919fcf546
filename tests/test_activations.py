"""fastbp._kernels._activations against its NumPy twin, finite differences and PyTorch.

Every kernel is elementwise over 1-D C-contiguous buffers; the grid is dtype x length x
n_threads x activation (with its alpha / GELU-form variants), inputs read-only.
"""

import numpy as np
import pytest
from helpers import (
    DTYPES, ODD_SHAPES, THREADS, assert_close, param_variants, saved_name, tol, torch_activation,
)

from fastbp._specs import ACTIVATIONS as SPEC_ACTIVATIONS

from fastbp._kernels import _activations as K
from fastbp.reference import activations as R

#: name -> (what backward reads: forward input "x" or output "y", keyword variants), from the
#: spec table
ACTIVATIONS = {name: (saved_name(row), param_variants(row))
               for name, row in SPEC_ACTIVATIONS.items()}
CASES = [
    pytest.param(name, kw, id=name + "".join(f"-{k}={v}" for k, v in kw.items()))
    for name, (_, variants) in ACTIVATIONS.items()
    for kw in variants
]
SIZES = (0, 1, 7, 33, 4097, 100_003)
NAMES = [f"{name}_{part}" for name in ACTIVATIONS for part in ("forward", "backward")]


def readonly(a):
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def inputs(n, dtype, seed=0):
    """x (with exact zeros, the kinks), dout; both read-only."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) * 3
    x[::11] = 0.0
    return readonly(x.astype(dtype)), readonly(rng.standard_normal(n).astype(dtype))


def run(mod, name, kw, x, dout, n_threads=1):
    """(forward output, backward dx) of `mod`; backward is fed the saved x or y it asks for."""
    saved_kind = ACTIVATIONS[name][0]
    out = np.full_like(x, np.nan)
    getattr(mod, f"{name}_forward")(x, out, n_threads=n_threads, **kw)
    saved = readonly(out) if saved_kind == "y" else x
    dx = np.full_like(x, np.nan)
    getattr(mod, f"{name}_backward")(dout, saved, dx, n_threads=n_threads, **kw)
    return out, dx


# ---- API -----------------------------------------------------------------------------------

def test_both_modules_export_the_same_kernels():
    assert len(NAMES) == 2 * len(SPEC_ACTIVATIONS)
    assert sorted(K.__all__) == sorted(R.__all__) == sorted(NAMES)
    for name in NAMES:
        assert callable(getattr(K, name)) and callable(getattr(R, name))


# ---- compiled == reference -----------------------------------------------------------------

@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, kw", CASES)
def test_matches_reference(name, kw, dtype, n, n_threads):
    x, dout = inputs(n, dtype)
    y, dx = run(K, name, kw, x, dout, n_threads)
    assert y.dtype == dx.dtype == dtype
    y_ref = np.empty_like(x)
    getattr(R, f"{name}_forward")(x, y_ref, **kw)
    assert_close(y, y_ref, dtype, scale=10)
    # backward on the same saved array, so only the backward formula is compared
    saved = readonly(y) if ACTIVATIONS[name][0] == "y" else x
    dx_ref = np.empty_like(x)
    getattr(R, f"{name}_backward")(dout, saved, dx_ref, **kw)
    assert_close(dx, dx_ref, dtype, scale=10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ODD_SHAPES)
@pytest.mark.parametrize("name, kw", CASES)
def test_outputs_land_in_the_given_buffers(name, kw, shape, dtype):
    """A raveled 2-D output is filled in place; a window into a larger buffer, exactly."""
    rng = np.random.default_rng(1)
    x2 = readonly(rng.standard_normal(shape).astype(dtype))
    dout2 = readonly(rng.standard_normal(shape).astype(dtype))
    out2 = np.full(shape, np.nan, dtype)
    flat = out2.reshape(-1)
    assert np.shares_memory(flat, out2)
    assert getattr(K, f"{name}_forward")(x2.reshape(-1), flat, **kw) is None
    expected = np.empty(x2.size, dtype)
    getattr(R, f"{name}_forward")(x2.reshape(-1), expected, **kw)
    assert_close(out2, expected.reshape(shape), dtype)

    n = x2.size
    buf = np.full(n + 2, -7.0, dtype)  # sentinels on both sides of the window
    saved = readonly(out2.reshape(-1)) if ACTIVATIONS[name][0] == "y" else x2.reshape(-1)
    assert getattr(K, f"{name}_backward")(dout2.reshape(-1), saved, buf[1:-1], **kw) is None
    expected = np.empty(n, dtype)
    getattr(R, f"{name}_backward")(dout2.reshape(-1), saved, expected, **kw)
    assert buf[0] == buf[-1] == -7.0
    assert_close(buf[1:-1], expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, kw", CASES)
def test_in_place(name, kw, dtype):
    """out may be the input buffer itself (forward), dx may be dout (backward)."""
    x, dout = inputs(4097 * 3, dtype, seed=2)
    y_ref, dx_ref = run(K, name, kw, x, dout)
    buf = x.copy()
    getattr(K, f"{name}_forward")(buf, buf, n_threads=2, **kw)
    np.testing.assert_array_equal(buf, y_ref)
    saved = readonly(y_ref) if ACTIVATIONS[name][0] == "y" else x
    g = dout.copy()
    getattr(K, f"{name}_backward")(g, saved, g, n_threads=2, **kw)
    np.testing.assert_array_equal(g, dx_ref)


# ---- determinism ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, kw", CASES)
def test_bitwise_identical_across_runs_and_thread_counts(name, kw, dtype):
    x, dout = inputs(100_003, dtype, seed=3)
    first = run(K, name, kw, x, dout, n_threads=1)
    for n_threads in THREADS + (1, 3):
        for got, want in zip(run(K, name, kw, x, dout, n_threads), first):
            assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, kw", CASES)
def test_bitwise_identical_at_any_alignment(name, kw, dtype):
    """The vectorised loops give the same bits wherever the buffers start (a compiler peeling
    scalar iterations to align a pointer must not change a result)."""
    n = 4097
    x, dout = inputs(n, dtype, seed=9)
    want_y, want_dx = run(K, name, kw, x, dout)
    saved = want_y if ACTIVATIONS[name][0] == "y" else x
    for offset in range(1, 9):
        def shifted(a):  # a copy of `a` starting `offset` elements into a fresh buffer
            buf = np.empty(n + offset, dtype)
            buf[offset:] = a
            return buf[offset:]
        y, dx = shifted(np.zeros(n)), shifted(np.zeros(n))
        getattr(K, f"{name}_forward")(readonly(shifted(x)), y, **kw)
        getattr(K, f"{name}_backward")(readonly(shifted(dout)), readonly(shifted(saved)), dx,
                                       **kw)
        assert y.tobytes() == want_y.tobytes() and dx.tobytes() == want_dx.tobytes()


# ---- gradients -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, kw", CASES)
def test_backward_matches_central_differences(name, kw):
    """float64, h = 1e-6, x kept 1e-3 away from the kinks at 0."""
    rng = np.random.default_rng(4)
    x = rng.uniform(-6, 6, 2000)
    x[np.abs(x) < 1e-3] = 0.5
    x = readonly(x)
    dout = readonly(rng.standard_normal(x.size))
    h = 1e-6
    fwd = getattr(K, f"{name}_forward")
    fp, fm = np.empty_like(x), np.empty_like(x)
    fwd(readonly(x + h), fp, **kw)
    fwd(readonly(x - h), fm, **kw)
    numeric = dout * (fp - fm) / (2 * h)
    _, dx = run(K, name, kw, x, dout)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_derivative_conventions_at_the_kinks(dtype):
    x = readonly(np.array([-0.0, 0.0, -1.0, 1.0], dtype))
    dout = readonly(np.full(4, 2.0, dtype))
    dx = np.empty_like(x)
    K.relu_backward(dout, x, dx)
    np.testing.assert_array_equal(dx, [0, 0, 0, 2])
    K.leaky_relu_backward(dout, x, dx, alpha=0.25)
    np.testing.assert_array_equal(dx, [0.5, 0.5, 0.5, 2])
    K.elu_backward(dout, x, dx, alpha=0.5)
    np.testing.assert_allclose(dx, [1, 1, 2 * 0.5 * np.exp(-1), 2], rtol=tol(dtype)["rtol"])
    # a masked-out inf gradient stays 0 (select, not dout * mask = inf * 0)
    K.relu_backward(readonly(np.array([np.inf, -np.inf], dtype)),
                    readonly(np.array([-1, 0], dtype)), dx[:2])
    np.testing.assert_array_equal(dx[:2], [0, 0])


# ---- numerics ------------------------------------------------------------------------------

EXTREME = (-1e4, -1e3, -710.0, -89.0, -40.0, -1e-30, 0.0, 1e-30, 40.0, 89.0, 710.0, 1e3, 1e4)
#: (x, forward, dL/dx for dout = 1) at +-inf, where the limit is the sensible answer
AT_INF = {
    "relu": ((np.inf, np.inf, 1.0), (-np.inf, 0.0, 0.0)),
    "leaky_relu": ((np.inf, np.inf, 1.0),),
    "sigmoid": ((np.inf, 1.0, 0.0), (-np.inf, 0.0, 0.0)),
    "tanh": ((np.inf, 1.0, 0.0), (-np.inf, -1.0, 0.0)),
    "elu": ((np.inf, np.inf, 1.0), (-np.inf, None, 0.0)),  # None: -alpha
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, kw", CASES)
def test_extreme_inputs_stay_finite(name, kw, dtype):
    x = readonly(np.array(EXTREME, dtype))
    dout = readonly(np.ones(x.size, dtype))
    y, dx = run(K, name, kw, x, dout)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    y_ref, dx_ref = run(R, name, kw, x, dout)
    assert_close(y, y_ref, dtype, scale=10)
    assert_close(dx, dx_ref, dtype, scale=10)
    for x_inf, y_inf, g_inf in AT_INF.get(name, ()):
        y, dx = run(K, name, kw, readonly(np.array([x_inf], dtype)), readonly(np.ones(1, dtype)))
        assert y[0] == (-kw.get("alpha", 1.0) if y_inf is None else y_inf)
        assert dx[0] == g_inf


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, kw", CASES)
def test_huge_finite_inputs_give_the_limits(name, kw, dtype):
    """|x| near the top of the range (x**3, x**2 overflow there): exact limits, no NaN."""
    big = 1e30 if dtype == np.float32 else 1e300
    alpha = kw.get("alpha", 0.01 if name == "leaky_relu" else 1.0)
    limits = {  # name: (f(-big), f(big), f'(-big), f'(big))
        "relu": (0, big, 0, 1),
        "leaky_relu": (-alpha * big, big, alpha, 1),
        "sigmoid": (0, 1, 0, 0),
        "tanh": (-1, 1, 0, 0),
        "elu": (-alpha, big, 0, 1),
        "gelu": (0, big, 0, 1),
    }[name]
    y, dx = run(K, name, kw, readonly(np.array([-big, big], dtype)), readonly(np.ones(2, dtype)))
    limits = np.array(limits, dtype)
    np.testing.assert_allclose(y, limits[:2], rtol=tol(dtype)["rtol"], atol=0)
    np.testing.assert_array_equal(dx, limits[2:])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, kw", CASES)
def test_nan_propagates_through_forward(name, kw, dtype):
    x = readonly(np.array([1.0, np.nan, -1.0], dtype))
    out = np.zeros(3, dtype)
    getattr(K, f"{name}_forward")(x, out, **kw)
    assert np.isnan(out[1]) and not np.isnan(out[0]) and not np.isnan(out[2])


@pytest.mark.parametrize("dtype", DTYPES)
def test_relative_accuracy_near_zero_and_in_the_tails(dtype):
    """tanh, ELU (expm1), sigmoid and GELU keep relative precision where values are tiny."""
    rtol = 4 * np.finfo(dtype).eps
    tiny = readonly(np.array([1e-30, -1e-20, 1e-8, -1e-8, 3e-5, -3e-4], dtype))
    out = np.empty_like(tiny)
    K.tanh_forward(tiny, out)
    np.testing.assert_allclose(out, np.tanh(tiny.astype(np.float64)), rtol=rtol, atol=0)
    neg = readonly(-np.abs(tiny))
    K.elu_forward(neg, out, alpha=1.5)
    np.testing.assert_allclose(out, 1.5 * np.expm1(neg.astype(np.float64)), rtol=rtol, atol=0)
    K.gelu_forward(tiny, out)
    expected = np.empty(tiny.size)
    R.gelu_forward(tiny.astype(np.float64), expected)
    np.testing.assert_allclose(out, expected, rtol=rtol, atol=0)

    tail = readonly(np.array([-5.0, -9.0, -12.0] if dtype == np.float32 else [-9.0, -30.0],
                             dtype))
    out = np.empty_like(tail)
    expected = np.empty(tail.size)
    K.sigmoid_forward(tail, out)
    R.sigmoid_forward(tail.astype(np.float64), expected)
    np.testing.assert_allclose(out, expected, rtol=rtol, atol=0)
    K.gelu_forward(tail, out)  # x * Phi(x): Phi from erfc, no 1 + erf(...) cancellation
    R.gelu_forward(tail.astype(np.float64), expected)
    np.testing.assert_allclose(out, expected, rtol=8 * rtol if dtype == np.float32 else 1e-12,
                               atol=0)


def test_float32_sigmoid_is_accurate_over_its_whole_range():
    """float32 sigmoid takes the cheaper exp of a non-positive argument (degree-5 minimax,
    csrc/fastbp_math.h): within 4 eps of the float64 value wherever the result is a normal
    float (measured max 2.7e-7 = 2.3 eps), exactly 0 below it (flushed), 1/2 at 0."""
    rng = np.random.default_rng(7)
    x = np.concatenate([np.linspace(-87.3, 20.0, 400_001), rng.uniform(-100, 100, 100_000),
                        np.geomspace(1e-30, 87.0, 2_000), -np.geomspace(1e-30, 87.0, 2_000),
                        [-87.34, -87.5, -88.0, -1e4, -3e38, 0.0]]).astype(np.float32)
    out = np.full_like(x, np.nan)
    K.sigmoid_forward(readonly(x), out)
    x64 = x.astype(np.float64)
    with np.errstate(over="ignore"):
        expected = np.where(x64 >= 0, 1 / (1 + np.exp(-x64)), np.exp(x64) / (1 + np.exp(x64)))
    normal = expected >= np.finfo(np.float32).tiny
    np.testing.assert_allclose(out[normal], expected[normal], rtol=4 * np.finfo(np.float32).eps,
                               atol=0)
    assert not np.any(out[~normal])  # results below the normal range flush to +0
    assert out[-1] == 0.5


# ---- argument checking ---------------------------------------------------------------------

@pytest.mark.parametrize("mod", [K, R], ids=["compiled", "reference"])
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_mismatched_lengths_raise(mod, name):
    a, b = np.zeros(5), np.zeros(4)
    with pytest.raises(ValueError, match=r"x, out must have the same length, got x=5, out=4"):
        getattr(mod, f"{name}_forward")(a, b)
    saved = ACTIVATIONS[name][0]
    bwd = getattr(mod, f"{name}_backward")
    for args in ((b, a, a), (a, b, a), (a, a, b)):
        with pytest.raises(ValueError, match=rf"dout, {saved}, dx must have the same length"):
            bwd(*args)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_kernels_and_twins_have_the_same_signature(name):
    """Same argument names and defaults; a row's parameter defaults to the table's value."""
    import inspect

    row = SPEC_ACTIVATIONS[name]
    for part in ("forward", "backward"):
        compiled = inspect.signature(getattr(K, f"{name}_{part}")).parameters
        twin = inspect.signature(getattr(R, f"{name}_{part}")).parameters
        assert [(p.name, p.default) for p in compiled.values()] == \
            [(p.name, p.default) for p in twin.values()]
        if row.param is not None:
            assert compiled[row.param].default == row.default


FORM_ROWS = [row for row in SPEC_ACTIVATIONS.values() if row.forms]


@pytest.mark.parametrize("mod", [K, R], ids=["compiled", "reference"])
@pytest.mark.parametrize("row", FORM_ROWS, ids=lambda row: row.name)
@pytest.mark.parametrize("bad", ["fast", "", "TANH", True, False, 1, None, b"tanh"])
def test_a_form_outside_the_table_raises_before_writing(mod, row, bad):
    """A form parameter takes the table's names only (not the old bool flag): ValueError
    naming the kernel and the argument, the same message from both modules, nothing written."""
    x = readonly(np.linspace(-2, 2, 5))
    out = np.full(5, 7.0)
    message = rf"^{row.name}_(forward|backward): {row.param} must be {row.forms_text}, got "
    with pytest.raises(ValueError, match=message):
        getattr(mod, f"{row.name}_forward")(x, out, **{row.param: bad})
    with pytest.raises(ValueError, match=message):
        getattr(mod, f"{row.name}_backward")(x, x, out, **{row.param: bad})
    np.testing.assert_array_equal(out, 7.0)


@pytest.mark.parametrize("row", FORM_ROWS, ids=lambda row: row.name)
def test_forms_differ_and_the_default_is_the_first(row):
    """Each form is its own function (no form silently maps to another), and leaving the
    argument out means the table's default."""
    x, dout = inputs(33, np.float64, seed=8)
    results = {form: run(K, row.name, {row.param: form}, x, dout) for form in row.forms}
    default = run(K, row.name, {}, x, dout)
    for got, want in zip(default, results[row.default]):
        np.testing.assert_array_equal(got, want)
    first, *others = results.values()
    for other in others:
        assert not np.array_equal(first[0], other[0]) and not np.array_equal(first[1], other[1])


def test_kernel_argument_errors():
    a = np.zeros(3)
    with pytest.raises(ValueError, match="n_threads must be >= 1"):
        K.relu_forward(a, a.copy(), n_threads=0)
    with pytest.raises((TypeError, ValueError)):
        K.relu_forward(a, np.zeros(3, np.float32))  # one dtype per call
    with pytest.raises((TypeError, ValueError)):
        K.relu_forward(np.zeros((2, 2)), np.zeros((2, 2)))  # 1-D only: the caller ravels
    with pytest.raises((TypeError, ValueError)):
        K.relu_forward(np.zeros(6)[::2], np.zeros(3))  # C-contiguous only


# ---- PyTorch -------------------------------------------------------------------------------

def _torch_forward(torch, name, kw, t):
    """PyTorch at the kernels' keyword arguments `kw` (the same names and values)."""
    row = SPEC_ACTIVATIONS[name]
    return torch_activation(torch, row, kw.get(row.param) if row.param else None)(t)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, kw", CASES)
def test_matches_pytorch(name, kw, dtype):
    """Forward and backward agree with PyTorch's (float32 / float64 alike).

    Nothing here depends on chance: the inputs are seeded, the kernels give the same bits for
    any thread count, alignment and run (tested above), and PyTorch runs this size serially.
    The tolerance is the dtype's (helpers.TOL, atol x 10), not loosened: both sides are within a
    few ulp of the true function (measured in float32: fastbp tanh 2.5 ulp, PyTorch 0.6), and
    for the backwards that read the output (sigmoid, tanh) the two forward errors reach dx as
    |dout| * 2|y| * |y_fastbp - y_torch| <= 4.5 * 2 * 3 * 2**-24 ~ 1.6e-6, under atol = 2e-5;
    over 40 seeds the largest error was 1/8 of the tolerance (gelu tanh form, float32; tanh
    1/21).  A failure therefore means a real difference, and its message says what ran.
    """
    torch = pytest.importorskip("torch")
    x, dout = inputs(4097, dtype, seed=5)
    y, dx = run(K, name, kw, x, dout, n_threads=2)
    t = torch.tensor(np.array(x), requires_grad=True)
    ty = _torch_forward(torch, name, kw, t)
    ty.backward(torch.from_numpy(np.array(dout)))
    serial = run(K, name, kw, x, dout, n_threads=1)
    context = (f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}, "
               f"{torch.get_num_threads()} threads); fastbp on 2 threads == on 1 thread: "
               f"{y.tobytes() == serial[0].tobytes() and dx.tobytes() == serial[1].tobytes()}")
    t_ = tol(dtype)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=t_["rtol"], atol=10 * t_["atol"],
                               err_msg="forward; " + context)
    np.testing.assert_allclose(dx, t.grad.numpy(), rtol=t_["rtol"], atol=10 * t_["atol"],
                               err_msg="backward; " + context)
