"""fastbp.layers: the course contracts (caches, shapes, dtypes), gradients, bad input, backends.

Kernel-level agreement with the reference lives in test_linear/test_activations/test_losses;
here every public function is checked through the public API against inline NumPy formulas
(the course code), by finite differences, and under every backend.
"""

import math

import numpy as np
import pytest
from helpers import (
    DTYPES, assert_close, numerical_gradient_array, param_variants, torch_activation,
)
from scipy.special import erf, expit

import fastbp
from fastbp import layers
from fastbp._specs import ACTIVATIONS as SPEC_ACTIVATIONS

#: name -> the course's NumPy forward (an oracle independent of fastbp's kernels and reference)
FORMULAS = {
    "relu": lambda x: np.maximum(x, 0),
    "leaky_relu": lambda x, alpha=0.01: np.where(x > 0, x, alpha * x),
    "sigmoid": expit,
    "tanh": np.tanh,
    "elu": lambda x, alpha=1.0: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))),
    "gelu": lambda x, approximate="none": 0.5 * x * (1 + erf(x / math.sqrt(2))),
}


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


#: every activation row of the spec table with each of its parameter variants
CASES = [(name, kw) for name, row in SPEC_ACTIVATIONS.items() for kw in param_variants(row)]


def _formula(name, kwargs):
    if name == "gelu" and kwargs.get("approximate") == "tanh":
        return _gelu_tanh
    f = FORMULAS[name]
    return lambda x: f(x, **kwargs)


def test_registry_lists_every_activation():
    assert set(layers.ACTIVATIONS) == set(FORMULAS) == set(SPEC_ACTIVATIONS)


def test_relu_course_test_vector():
    x = np.linspace(-0.5, 0.5, num=12).reshape(3, 4)
    out, cache = layers.relu_forward(x)
    correct = np.array([[0.0, 0.0, 0.0, 0.0],
                        [0.0, 0.0, 0.04545455, 0.13636364],
                        [0.22727273, 0.31818182, 0.40909091, 0.5]])
    assert np.max(np.abs(out - correct)) < 1e-8
    assert cache is x


def test_relu_derivative_at_zero_is_zero():
    dx = layers.relu_backward(np.ones(3), np.array([-1.0, 0.0, 2.0]))
    np.testing.assert_array_equal(dx, [0.0, 0.0, 1.0])


@pytest.mark.parametrize("name,kwargs", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_forward_matches_formula(rng, name, kwargs, dtype):
    fwd = layers.ACTIVATIONS[name][0]
    x = (3 * rng.standard_normal((5, 3, 7))).astype(dtype)
    out, cache = fwd(x, **kwargs)
    assert out.shape == x.shape and out.dtype == dtype
    assert_close(out, _formula(name, kwargs)(x.astype(np.float64)).astype(dtype), dtype, scale=10)


@pytest.mark.parametrize("name,kwargs", CASES)
def test_activation_backward_finite_differences(rng, name, kwargs):
    fwd, bwd = layers.ACTIVATIONS[name][:2]
    x = rng.standard_normal((4, 9))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kinks of relu / leaky_relu / elu
    dout = rng.standard_normal(x.shape)
    _, cache = fwd(x, **kwargs)
    dx = bwd(dout, cache)
    numeric = numerical_gradient_array(lambda: fwd(x, **kwargs)[0], x, dout)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name,kwargs", CASES)
def test_activation_cache_layout(rng, name, kwargs):
    fwd = layers.ACTIVATIONS[name][0]
    x = rng.standard_normal((2, 3))
    out, cache = fwd(x, **kwargs)
    row = SPEC_ACTIVATIONS[name]
    if row.backward_reads == "output":
        assert cache is out
    elif row.param is None:
        assert cache is x
    else:
        param, default = layers.ACTIVATIONS[name][2:]
        assert cache[0] is x and cache[1] == kwargs.get(param, default)


@pytest.mark.parametrize("name,kwargs", CASES)
def test_activation_accepts_noncontiguous_readonly_lists_and_empty(rng, name, kwargs):
    fwd, bwd = layers.ACTIVATIONS[name][:2]
    f = _formula(name, kwargs)
    base = rng.standard_normal((6, 10))
    strided = base[:, ::3]
    ro = base.copy()
    ro.setflags(write=False)
    for x in (strided, ro, base.T):
        before = np.array(x, copy=True)
        out, cache = fwd(x, **kwargs)
        assert_close(out, f(before), np.float64, scale=10)
        dx = bwd(np.ones_like(before), cache)
        assert dx.shape == x.shape
        np.testing.assert_array_equal(x, before)
    out, _ = fwd([[1.0, -2.0]], **kwargs)
    assert_close(out, f(np.array([[1.0, -2.0]])), np.float64)
    out, cache = fwd(np.empty((0, 4)), **kwargs)
    assert out.shape == (0, 4)
    assert bwd(np.empty((0, 4)), cache).shape == (0, 4)


@pytest.mark.parametrize("name,kwargs", CASES)
def test_activation_backward_off_the_fast_path(rng, name, kwargs):
    """Gradients that need converting (other dtype, Fortran order, lists; 0-d too) give dx of
    x's shape and the promoted dtype, equal to the gradient converted by hand."""
    fwd, bwd = layers.ACTIVATIONS[name][:2]
    for shape in ((), (3, 4)):
        for dtype in DTYPES:
            x = rng.standard_normal(shape).astype(dtype)
            _, cache = fwd(x, **kwargs)
            g = rng.standard_normal(shape)
            fortran = [np.asfortranarray(g)] if g.ndim else []  # (it makes 0-d 1-D)
            for dout in [g.astype(np.float32), g.tolist(), *fortran]:
                want_dtype = np.result_type(np.asarray(dout).dtype, dtype)
                dx = bwd(dout, cache)
                assert dx.shape == shape and dx.dtype == want_dtype
                np.testing.assert_array_equal(dx, bwd(np.array(dout, want_dtype), cache))


@pytest.mark.parametrize("name,kwargs", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_activations_stay_finite_at_extremes(name, kwargs, dtype):
    fwd, bwd = layers.ACTIVATIONS[name][:2]
    x = np.array([-1e4, -1e3, -50.0, -1e-30, 0.0, 1e-30, 50.0, 1e3, 1e4], dtype)
    out, cache = fwd(x, **kwargs)
    dx = bwd(np.ones_like(x), cache)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(dx))


@pytest.mark.parametrize("call,exc,match", [
    (lambda: layers.relu_backward(np.ones(3), np.ones(4)), ValueError, "dout has shape"),
    (lambda: layers.relu_forward(np.array(["a"])), TypeError, "x must be a real numeric"),
    (lambda: layers.leaky_relu_forward(np.ones(2), alpha="0.1"), TypeError, "alpha"),
    (lambda: layers.leaky_relu_forward(np.ones(2), alpha=np.nan), ValueError, "alpha"),
    (lambda: layers.elu_backward(np.ones(2), np.ones(2)), ValueError, "cache must be the 2-tuple"),
    (lambda: layers.gelu_forward(np.ones(2), approximate="fast"), ValueError, "approximate"),
    (lambda: layers.sigmoid_backward(np.ones((2, 2)), np.ones((2, 3))), ValueError, "dout"),
])
def test_activation_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_affine_relu_sandwich(rng):
    x, w, b = rng.standard_normal((5, 2, 3)), rng.standard_normal((6, 4)), rng.standard_normal(4)
    out, cache = layers.affine_relu_forward(x, w, b)
    (cx, cw, cb), a = cache
    assert cx is x and cw is w and cb is b
    assert_close(a, x.reshape(5, -1) @ w + b, np.float64, scale=10)
    assert_close(out, np.maximum(a, 0), np.float64)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = layers.affine_relu_backward(dout, cache)
    f = lambda: layers.affine_relu_forward(x, w, b)[0]  # noqa: E731
    for analytic, wrt in ((dx, x), (dw, w), (db, b)):
        np.testing.assert_allclose(analytic, numerical_gradient_array(f, wrt, dout),
                                   rtol=1e-6, atol=1e-8)


# -------------------------------------------------------------------------------- losses


def _softmax_loss_course(x, y):
    shifted = x - x.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = x.shape[0]
    dx = np.exp(log_probs)
    dx[np.arange(n), y] -= 1
    return -log_probs[np.arange(n), y].mean(), dx / n


def _svm_loss_course(x, y):
    n = x.shape[0]
    correct = x[np.arange(n), y][:, None]
    margins = np.maximum(0, x - correct + 1.0)
    margins[np.arange(n), y] = 0
    num_pos = (margins > 0).sum(axis=1)
    dx = (margins > 0).astype(x.dtype)
    dx[np.arange(n), y] -= num_pos
    return margins.sum() / n, dx / n


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss_name,course", [("softmax_loss", _softmax_loss_course),
                                              ("svm_loss", _svm_loss_course)])
def test_classification_losses_match_course_code(rng, dtype, loss_name, course):
    x = (2 * rng.standard_normal((33, 7))).astype(dtype)
    y = rng.integers(0, 7, 33)
    loss, dx = getattr(layers, loss_name)(x, y)
    exp_loss, exp_dx = course(x.astype(np.float64), y)
    assert dx.dtype == dtype and isinstance(loss, np.floating) and loss.dtype == dtype
    assert_close(loss, exp_loss, dtype, scale=10)
    assert_close(dx, exp_dx, dtype)


def test_course_sanity_values(rng):
    """The notebook's sanity check: tiny random scores give loss ~ log(C) and ~ C - 1."""
    x = 0.001 * rng.standard_normal((100, 10))
    y = rng.integers(0, 10, 100)
    assert abs(layers.softmax_loss(x, y)[0] - math.log(10)) < 0.01
    assert abs(layers.svm_loss(x, y)[0] - 9.0) < 0.01


@pytest.mark.parametrize("loss_name", ["softmax_loss", "svm_loss"])
def test_classification_loss_gradient_finite_differences(rng, loss_name):
    x = rng.standard_normal((6, 5))
    y = rng.integers(0, 5, 6)
    fn = getattr(layers, loss_name)
    _, dx = fn(x, y)
    numeric = numerical_gradient_array(lambda: fn(x, y)[0], x, 1.0)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mse_loss(rng, dtype):
    p = rng.standard_normal((4, 3, 2)).astype(dtype)
    t = rng.standard_normal((4, 3, 2)).astype(dtype)
    loss, dp = layers.mse_loss(p, t)
    assert_close(loss, np.mean((p.astype(np.float64) - t) ** 2), dtype)
    assert_close(dp, 2 * (p - t) / p.size, dtype)
    assert dp.shape == p.shape
    pp = rng.standard_normal(7)
    tt = rng.standard_normal(7)
    _, dpp = layers.mse_loss(pp, tt)
    numeric = numerical_gradient_array(lambda: layers.mse_loss(pp, tt)[0], pp, 1.0)
    np.testing.assert_allclose(dpp, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
def test_losses_stay_finite_for_huge_logits(dtype):
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, 1e4]], dtype)
    y = np.array([1, 0, 2])
    for fn in (layers.softmax_loss, layers.svm_loss):
        loss, dx = fn(x, y)
        assert np.isfinite(loss) and np.all(np.isfinite(dx))
    loss, _ = layers.softmax_loss(x, y)
    assert_close(loss, (2e4 + math.log(3) + math.log(3)) / 3, dtype)


@pytest.mark.parametrize("labels", [np.array([0, 1, 2], np.uint8), np.array([0, 1, 2], np.int16),
                                    [0, 1, 2]])
def test_any_integer_label_dtype(rng, labels):
    x = rng.standard_normal((3, 3))
    np.testing.assert_allclose(layers.softmax_loss(x, labels)[0],
                               _softmax_loss_course(x, np.array([0, 1, 2]))[0])


@pytest.mark.parametrize("fn", [layers.softmax_loss, layers.svm_loss])
@pytest.mark.parametrize("x,y,exc,match", [
    (np.ones((3, 4)), np.array([0, 1, 4]), ValueError, r"y must lie in \[0, 4\), found label 4"),
    (np.ones((3, 4)), np.array([0, -1, 2]), ValueError, "found label -1"),
    (np.ones((3, 4)), np.array([0.0, 1.0, 2.0]), TypeError, "integer class labels"),
    (np.ones((3, 4)), np.array([0, 1]), ValueError, r"shape \(3,\)"),
    (np.ones((3, 4)), np.array([[0, 1, 2]]), ValueError, r"shape \(3,\)"),
    (np.ones(4), np.array([0]), ValueError, "2-D scores"),
    (np.ones((0, 4)), np.array([], np.int64), ValueError, "empty batch"),
    (np.ones((3, 0)), np.array([0, 0, 0]), ValueError, "no classes"),
    (np.array([["a"]]), np.array([0]), TypeError, "real numeric"),
])
def test_classification_loss_bad_input(fn, x, y, exc, match):
    with pytest.raises(exc, match=match):
        fn(x, y)


def test_mse_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        layers.mse_loss(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="empty"):
        layers.mse_loss(np.ones((0, 2)), np.ones((0, 2)))


# -------------------------------------------------------------------------------- backends


def _whole_api(rng, dtype):
    x = rng.standard_normal((9, 2, 4)).astype(dtype)
    w = rng.standard_normal((8, 6)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    y = rng.integers(0, 6, 9)
    results = []
    h, cache = layers.affine_relu_forward(x, w, b)
    for name, kwargs in CASES:
        fwd, bwd = layers.ACTIVATIONS[name][:2]
        a, c = fwd(h, **kwargs)
        results += [a, bwd(np.ones_like(a), c)]
    for fn in (layers.softmax_loss, layers.svm_loss):
        loss, d = fn(h, y)
        results += [loss, d]
    loss, d = layers.mse_loss(h, np.zeros_like(h))
    results += [loss, d, *layers.affine_relu_backward(d, cache)]
    return results


@pytest.mark.parametrize("dtype", DTYPES)
def test_checked_backend_passes_whole_layer_api(dtype):
    with fastbp.use_backend("checked"):
        checked = _whole_api(np.random.default_rng(5), dtype)
    with fastbp.use_backend("numpy"):
        ref = _whole_api(np.random.default_rng(5), dtype)
    compiled = _whole_api(np.random.default_rng(5), dtype)
    for c, r, k in zip(checked, ref, compiled):
        assert_close(c, r, dtype, scale=10)
        np.testing.assert_array_equal(c, k)


# -------------------------------------------------------------------------------- PyTorch


@pytest.mark.parametrize("name,kwargs", CASES)
def test_activations_match_pytorch(rng, name, kwargs):
    torch = pytest.importorskip("torch")
    row = SPEC_ACTIVATIONS[name]
    torch_fn = torch_activation(torch, row, kwargs.get(row.param) if row.param else None)
    x = rng.standard_normal((7, 11))
    dout = rng.standard_normal((7, 11))
    t = torch.tensor(x, requires_grad=True)
    y = torch_fn(t)
    y.backward(torch.tensor(dout))
    fwd, bwd = layers.ACTIVATIONS[name][:2]
    out, cache = fwd(x, **kwargs)
    assert_close(out, y.detach().numpy(), np.float64)
    assert_close(bwd(dout, cache), t.grad.numpy(), np.float64)


def test_losses_match_pytorch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((33, 10))
    y = rng.integers(0, 10, 33)
    t = torch.tensor(x, requires_grad=True)
    loss_t = torch.nn.functional.cross_entropy(t, torch.tensor(y))
    loss_t.backward()
    loss, dx = layers.softmax_loss(x, y)
    assert_close(loss, loss_t.item(), np.float64)
    assert_close(dx, t.grad.numpy(), np.float64)
    p = torch.tensor(x, requires_grad=True)
    target = rng.standard_normal((33, 10))
    mse_t = torch.nn.functional.mse_loss(p, torch.tensor(target))
    mse_t.backward()
    loss, dp = layers.mse_loss(x, target)
    assert_close(loss, mse_t.item(), np.float64)
    assert_close(dp, p.grad.numpy(), np.float64)


# ---------------------------------------------------------------------------- affine layers


@pytest.mark.parametrize("dtype", DTYPES)
def test_affine_forward_keeps_course_contract(rng, dtype):
    x = rng.standard_normal((4, 2, 3, 5)).astype(dtype)
    w = rng.standard_normal((30, 6)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    out, cache = layers.affine_forward(x, w, b)
    assert out.dtype == dtype and out.shape == (4, 6)
    assert cache[0] is x and cache[1] is w and cache[2] is b
    assert_close(out, x.reshape(4, -1) @ w + b, dtype, scale=10)
    dx, dw, db = layers.affine_backward(np.ones((4, 6), dtype), cache)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape
    assert dx.dtype == dw.dtype == db.dtype == dtype


def test_affine_course_test_vector():
    """The CS231n affine_forward check: inputs from linspace, known output."""
    num_inputs, input_shape, output_dim = 2, (4, 5, 6), 3
    input_size = num_inputs * np.prod(input_shape)
    weight_size = output_dim * np.prod(input_shape)
    x = np.linspace(-0.1, 0.5, num=input_size).reshape(num_inputs, *input_shape)
    w = np.linspace(-0.2, 0.3, num=weight_size).reshape(np.prod(input_shape), output_dim)
    b = np.linspace(-0.3, 0.1, num=output_dim)
    out, _ = layers.affine_forward(x, w, b)
    correct_out = np.array([[1.49834967, 1.70660132, 1.91485297],
                            [3.25553199, 3.5141327, 3.77273342]])
    assert np.max(np.abs(out - correct_out) / np.maximum(1e-8, np.abs(out) + np.abs(correct_out))) < 1e-7


def test_affine_backward_finite_differences(rng):
    x = rng.standard_normal((10, 2, 3))
    w = rng.standard_normal((6, 5))
    b = rng.standard_normal(5)
    dout = rng.standard_normal((10, 5))
    _, cache = layers.affine_forward(x, w, b)
    dx, dw, db = layers.affine_backward(dout, cache)
    f = lambda: layers.affine_forward(x, w, b)[0]  # noqa: E731
    for analytic, wrt in ((dx, x), (dw, w), (db, b)):
        numeric = numerical_gradient_array(f, wrt, dout)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-8)


def test_affine_accepts_noncontiguous_readonly_and_integer_inputs(rng):
    x = rng.standard_normal((6, 8))[:, ::2]
    w = np.asfortranarray(rng.standard_normal((4, 3)))
    w.setflags(write=False)
    b = np.arange(3)
    out, cache = layers.affine_forward(x, w, b)
    assert_close(out, x @ w + b, np.float64, scale=10)
    assert x.flags.writeable and not w.flags.writeable
    xi = np.arange(12).reshape(3, 4)
    out, _ = layers.affine_forward(xi, np.ones((4, 2), np.int32), np.zeros(2, np.int8))
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out[:, 0], xi.sum(1))


def test_affine_promotes_mixed_dtypes(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    out, cache = layers.affine_forward(x, np.ones((4, 2)), np.zeros(2, np.float32))
    assert out.dtype == np.float64
    dx, dw, db = layers.affine_backward(np.ones((3, 2), np.float32), cache)
    assert dx.dtype == np.float64


@pytest.mark.parametrize("call,match", [
    (lambda: layers.affine_forward(np.ones((2, 3)), np.ones((4, 2)), np.ones(2)), "w must have shape"),
    (lambda: layers.affine_forward(np.ones((2, 3)), np.ones((3, 2)), np.ones(3)), "b must have shape"),
    (lambda: layers.affine_forward(np.ones((2, 3)), np.ones(3), np.ones(3)), "w must have shape"),
    (lambda: layers.affine_forward(np.float64(1.0), np.ones((1, 2)), np.ones(2)), "x must have"),
    (lambda: layers.affine_backward(np.ones((2, 3)), (np.ones((2, 3)), np.ones((3, 2)), np.ones(2))),
     "dout must have shape"),
    (lambda: layers.affine_backward(np.ones((2, 2)), (np.ones((2, 3)), np.ones((3, 2)))),
     "cache must be the 3-tuple"),
    (lambda: layers.affine_backward(np.ones((2, 2)), None), "cache must be the 3-tuple"),
])
def test_affine_rejects_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_affine_rejects_non_numeric():
    with pytest.raises(TypeError, match="x"):
        layers.affine_forward(np.array([["a", "b"]]), np.ones((2, 2)), np.ones(2))
    with pytest.raises(TypeError, match="w"):
        layers.affine_forward(np.ones((1, 2)), np.ones((2, 2), complex), np.ones(2))
