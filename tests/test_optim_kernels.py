"""fastbp._kernels._optim against its NumPy twin fastbp.reference.optim: every update kernel
over dtypes, sizes, thread counts, in place, read-only gradients, bad arguments."""

import copy
import inspect

import numpy as np
import pytest
from helpers import DTYPES, THREADS, assert_close

from fastbp import _kernels, reference

SIZES = (0, 1, 7, 33, 2049, 100_003)  # 2049: one element past a kernel block

# case id -> (kernel, state arrays, scalar arguments between the state arrays and n_threads)
KERNEL_CASES = {
    "sgd": ("sgd_step", (), dict(lr=0.05, weight_decay=0.0)),
    "sgd-wd": ("sgd_step", (), dict(lr=0.05, weight_decay=0.01)),
    "sgd_momentum": ("sgd_momentum_step", ("v",), dict(lr=0.05, momentum=0.9)),
    "momentum": ("momentum_step", ("v",),
                 dict(lr=0.05, momentum=0.9, weight_decay=0.0, nesterov=False)),
    "momentum-wd": ("momentum_step", ("v",),
                    dict(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=False)),
    "nesterov": ("momentum_step", ("v",),
                 dict(lr=0.05, momentum=0.9, weight_decay=0.0, nesterov=True)),
    "nesterov-wd": ("momentum_step", ("v",),
                    dict(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True)),
    "rmsprop": ("rmsprop_step", ("cache",),
                dict(lr=1e-2, decay_rate=0.99, eps=1e-8, weight_decay=0.0)),
    "rmsprop-wd": ("rmsprop_step", ("cache",),
                   dict(lr=1e-2, decay_rate=0.9, eps=1e-6, weight_decay=0.01)),
    "adam": ("adam_step", ("m", "v"),
             dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, t=3, weight_decay=0.0)),
    "adam-wd": ("adam_step", ("m", "v"),
                dict(lr=1e-2, beta1=0.8, beta2=0.99, eps=1e-8, t=1, weight_decay=0.01)),
}
# second-moment state: non-negative
SQUARED = {("rmsprop_step", "cache"), ("adam_step", "v")}
OPTIM_KERNELS = ("sgd_step", "sgd_momentum_step", "momentum_step", "rmsprop_step", "adam_step")


def _kernel_inputs(rng, kernel, states, n, dtype):
    w = rng.standard_normal(n).astype(dtype)
    dw = rng.standard_normal(n).astype(dtype)
    dw.setflags(write=False)
    state = {}
    for name in states:
        s = rng.standard_normal(n).astype(dtype)
        state[name] = np.abs(s) if (kernel, name) in SQUARED else s
    return w, dw, state


def _copies(w, state):
    return w.copy(), {k: v.copy() for k, v in state.items()}



# --------------------------------------------------------------------------------------------
# kernels vs reference


@pytest.mark.parametrize("name", OPTIM_KERNELS)
def test_kernel_and_reference_signatures_agree(name):
    fast = inspect.signature(getattr(_kernels, name)).parameters
    slow = inspect.signature(getattr(reference, name)).parameters
    assert list(fast) == list(slow)
    assert [p.default for p in fast.values()] == [p.default for p in slow.values()]
    assert list(fast)[:2] == ["w", "dw"] and list(fast)[-1] == "n_threads"


@pytest.mark.parametrize("case", KERNEL_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("threads", THREADS)
def test_kernel_matches_reference_in_place(rng, case, dtype, n, threads):
    kernel, states, scalars = KERNEL_CASES[case]
    w, dw, state = _kernel_inputs(rng, kernel, states, n, dtype)
    w_exp, state_exp = _copies(w, state)
    w_one, state_one = _copies(w, state)
    w_obj, state_objs, w_start = w, dict(state), w.copy()

    getattr(reference, kernel)(w_exp, dw, **state_exp, **scalars)
    assert getattr(_kernels, kernel)(w, dw, **state, **scalars, n_threads=threads) is None
    getattr(_kernels, kernel)(w_one, dw, **state_one, **scalars, n_threads=1)

    # the caller's arrays were updated in place (same objects), with the reference's values
    assert w is w_obj and all(state[k] is state_objs[k] for k in state)
    assert w.dtype == dtype
    assert_close(w, w_exp, dtype, scale=4)
    for k in state:
        assert_close(state[k], state_exp[k], dtype, scale=4)
    assert n == 0 or not np.array_equal(w, w_start)  # a real update happened
    # elementwise work: bitwise identical for every thread count
    np.testing.assert_array_equal(w, w_one)
    for k in state:
        np.testing.assert_array_equal(state[k], state_one[k])


@pytest.mark.parametrize("case", ["sgd-wd", "nesterov-wd", "rmsprop-wd", "adam-wd"])
def test_kernel_updates_a_raveled_view_of_the_callers_array(rng, case):
    kernel, states, scalars = KERNEL_CASES[case]
    w2d = rng.standard_normal((33, 7))
    state2d = {k: np.abs(rng.standard_normal((33, 7))) for k in states}
    dw = rng.standard_normal((33, 7))
    before = w2d.copy()
    w_exp, state_exp = _copies(w2d.reshape(-1), {k: v.reshape(-1) for k, v in state2d.items()})
    getattr(reference, kernel)(w_exp, dw.reshape(-1), **state_exp, **scalars)

    flat = w2d.reshape(-1)
    assert np.shares_memory(flat, w2d)
    flat_state = {k: v.reshape(-1) for k, v in state2d.items()}
    getattr(_kernels, kernel)(flat, dw.reshape(-1), **flat_state, **scalars, n_threads=2)
    assert not np.array_equal(w2d, before)
    assert_close(w2d.reshape(-1), w_exp, np.float64)
    for k in states:
        assert_close(state2d[k].reshape(-1), state_exp[k], np.float64)


def test_kernels_are_exact_textbook_arithmetic():
    """Hand-computed single elements (float64), one per kernel."""
    w, dw = np.array([1.0]), np.array([0.5])
    _kernels.sgd_step(w, dw, 0.1, 0.2)  # 1 - 0.1 * (0.5 + 0.2 * 1)
    assert w[0] == pytest.approx(0.93, abs=1e-15)

    w, v = np.array([1.0]), np.array([0.25])
    _kernels.sgd_momentum_step(w, dw, v, 0.1, 0.9)  # v = 0.225 - 0.05; w = 1 + 0.175
    assert (v[0], w[0]) == pytest.approx((0.175, 1.175), abs=1e-15)

    w, v = np.array([1.0]), np.array([0.25])
    _kernels.momentum_step(w, dw, v, 0.1, 0.9, 0.0, True)  # v = 0.725; w = 1 - 0.1*(0.5+0.6525)
    assert (v[0], w[0]) == pytest.approx((0.725, 0.88475), abs=1e-15)

    w, c = np.array([1.0]), np.array([0.0])
    _kernels.rmsprop_step(w, dw, c, 0.01, 0.75, 1e-8, 0.0)  # c = 0.0625; w = 1 - 0.005/0.25
    assert (c[0], w[0]) == pytest.approx((0.0625, 1 - 0.005 / (0.25 + 1e-8)), abs=1e-15)

    w, m, v = np.array([1.0]), np.array([0.0]), np.array([0.0])
    _kernels.adam_step(w, dw, m, v, 0.01, 0.9, 0.999, 1e-8, 1, 0.0)
    # first step: m_hat = g, v_hat = g**2, so w = 1 - lr * g / (|g| + eps)
    assert (m[0], v[0]) == pytest.approx((0.05, 0.00025), abs=1e-15)
    assert w[0] == pytest.approx(1 - 0.01 * 0.5 / (0.5 + 1e-8), abs=1e-15)


@pytest.mark.parametrize("case", KERNEL_CASES)
def test_kernel_rejects_mismatched_lengths_before_writing(rng, case):
    kernel, states, scalars = KERNEL_CASES[case]
    for bad in ("dw",) + states:
        w, dw, state = _kernel_inputs(rng, kernel, states, 7, np.float64)
        args = dict(state, dw=dw)
        args[bad] = args[bad][:5].copy()
        snapshot = copy.deepcopy((w, args))
        for impl in (_kernels, reference):
            with pytest.raises(ValueError, match=rf"{kernel}: {bad} has length 5, expected 7"):
                getattr(impl, kernel)(w, **args, **scalars)
            np.testing.assert_array_equal(w, snapshot[0])
            for k in args:
                np.testing.assert_array_equal(args[k], snapshot[1][k])


@pytest.mark.parametrize("case", ["sgd", "momentum", "rmsprop", "adam"])
def test_kernel_rejects_read_only_or_mixed_dtype_buffers(rng, case):
    kernel, states, scalars = KERNEL_CASES[case]
    w, dw, state = _kernel_inputs(rng, kernel, states, 7, np.float64)
    ro = w.copy()
    ro.setflags(write=False)
    with pytest.raises(ValueError, match=f"{kernel}: w is read-only"):
        getattr(_kernels, kernel)(ro, dw, **state, **scalars)
    mixed = "has dtype float32, but this call computes in float64"
    with pytest.raises(TypeError, match=f"{kernel}: dw {mixed}"):
        getattr(_kernels, kernel)(w, dw.astype(np.float32), **state, **scalars)
    for k in states:
        bad = dict(state, **{k: state[k].astype(np.float32)})
        with pytest.raises(TypeError, match=f"{kernel}: {k} {mixed}"):
            getattr(_kernels, kernel)(w.copy(), dw, **bad, **scalars)
    with pytest.raises(TypeError, match=f"{kernel}: w must be a float32 or float64 array"):
        getattr(_kernels, kernel)(w.astype(np.int64), dw, **state, **scalars)


def test_adam_kernel_rejects_step_zero_and_bad_thread_counts(rng):
    w, dw, state = _kernel_inputs(rng, "adam_step", ("m", "v"), 7, np.float64)
    before = w.copy()
    scalars = dict(KERNEL_CASES["adam"][2], t=0)
    for impl in (_kernels, reference):
        with pytest.raises(ValueError, match="t must be >= 1"):
            getattr(impl, "adam_step")(w, dw, **state, **scalars)
    with pytest.raises(ValueError, match="n_threads must be >= 1"):
        _kernels.sgd_step(w, dw, 0.1, 0.0, 0)
    np.testing.assert_array_equal(w, before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("wd", [0.0, 1e-2])
def test_adam_and_rmsprop_vector_loops_give_the_scalar_bits(rng, dtype, threads, wd):
    """The per-ISA (AVX-512 / AVX2 / baseline) loops give, bit for bit, the kernels' expression
    evaluated element by element in the dtype with IEEE ops (NumPy's sqrt and divide are
    correctly rounded too), over every lane and an odd tail (100_003 = 48 full blocks + 1699)."""
    n, lr, b1, b2, eps, rho = 100_003, 1e-3, 0.9, 0.999, 1e-8, 0.99
    s = dtype  # hyper-parameters are rounded once to the dtype, as in the kernels
    w0, dw = rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)
    m0, v0 = rng.standard_normal(n).astype(dtype), np.abs(rng.standard_normal(n)).astype(dtype)
    w, m, v = w0.copy(), m0.copy(), v0.copy()
    for t in (1, 2, 7):
        _kernels.adam_step(w, dw, m, v, lr, b1, b2, eps, t, wd, n_threads=threads)
        g = dw + s(wd) * w0 if wd else dw
        m0 = s(b1) * m0 + s(1.0 - b1) * g
        v0 = s(b2) * v0 + s(1.0 - b2) * (g * g)
        step, inv = s(lr / (1.0 - b1**t)), s(1.0 / np.sqrt(1.0 - b2**t))
        w0 = w0 - (step * m0) / (np.sqrt(v0) * inv + s(eps))
        for got, want in ((w, w0), (m, m0), (v, v0)):
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes()

    w, c, w0, c0 = w0.copy(), v0.copy(), w0, v0
    for _ in range(3):
        _kernels.rmsprop_step(w, dw, c, lr, rho, eps, wd, n_threads=threads)
        g = dw + s(wd) * w0 if wd else dw
        c0 = s(rho) * c0 + s(1.0 - rho) * (g * g)
        w0 = w0 - (s(lr) * g) / (np.sqrt(c0) + s(eps))
        assert w.tobytes() == w0.tobytes() and c.tobytes() == c0.tobytes()
