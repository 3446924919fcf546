"""Batch norm and layer norm: kernels (fastbp._kernels._norm) vs their NumPy twins, the course
layers (fastbp.layers.batchnorm_* / layernorm_*), finite differences, the course's published
numbers, large-mean inputs, bad input, and PyTorch as an oracle."""

import numpy as np
import pytest
from helpers import DTYPES, ODD_SHAPES, THREADS, numerical_gradient_array, variants

import fastbp
from fastbp import _kernels, reference
from fastbp.layers import (
    NormCache, batchnorm_backward, batchnorm_backward_alt, batchnorm_forward, layernorm_backward,
    layernorm_forward, relu_forward,
)

#: compiled vs reference (the reference's float64 arithmetic is the kernel's; the summation
#: order differs, so float64 results agree to rounding, float32 ones after one rounding)
KTOL = {np.dtype(np.float32): dict(rtol=1e-6, atol=1e-6),
        np.dtype(np.float64): dict(rtol=1e-12, atol=1e-12)}


def _problem(n, d, dtype, seed=0, loc=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    x = (loc + scale * rng.standard_normal((n, d))).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, d).astype(dtype)
    beta = rng.standard_normal(d).astype(dtype)
    dout = rng.standard_normal((n, d)).astype(dtype)
    return x, gamma, beta, dout


def _run_kernels(ns, x, gamma, beta, dout, n_threads):
    """Every norm kernel of namespace `ns` on one problem -> {output name: array}."""
    n, d = x.shape
    dt = x.dtype
    o = {name: np.full(n * d, np.nan, dt) for name in ("bn_out", "bn_dx", "bn_test", "ln_out",
                                                        "ln_dx")}
    o.update({name: np.full(d, np.nan, dt) for name in ("bn_dg", "bn_db", "ln_dg", "ln_db")})
    o.update({name: np.full(size, np.nan) for name, size in (("bn_mean", d), ("bn_inv", d),
                                                             ("ln_mean", n), ("ln_inv", n))})
    o["run_mean"] = np.linspace(-1, 1, d).astype(dt)
    o["run_var"] = np.linspace(0.5, 2, d).astype(dt)
    xf, gf = x.ravel(), dout.ravel()
    if n >= 2:
        ns.batchnorm_forward_train(xf, gamma, beta, o["bn_out"], o["bn_mean"], o["bn_inv"],
                                   o["run_mean"], o["run_var"], 1e-5, 0.9, True, n_threads)
        ns.batchnorm_backward(gf, xf, gamma, o["bn_mean"], o["bn_inv"], o["bn_dx"], o["bn_dg"],
                              o["bn_db"], n_threads)
    ns.batchnorm_forward_test(xf, gamma, beta, o["run_mean"], o["run_var"], o["bn_test"], 1e-5,
                              n_threads)
    ns.layernorm_forward(xf, gamma, beta, o["ln_out"], o["ln_mean"], o["ln_inv"], 1e-5,
                         n_threads)
    ns.layernorm_backward(gf, xf, gamma, o["ln_mean"], o["ln_inv"], o["ln_dx"], o["ln_dg"],
                          o["ln_db"], n_threads)
    return o


def test_kernels_and_reference_export_the_same_norm_names():
    assert _kernels._norm.__all__ == reference.norm.__all__
    assert set(_kernels._norm.__all__) <= set(_kernels.KERNELS)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ODD_SHAPES + ((2, 1), (300, 70), (5, 2100), (1000, 40),
                                                  (40, 2100)))
def test_compiled_matches_reference_and_is_bitwise_equal_for_any_thread_count(dtype, shape):
    """(5, 2100): more features than one column block holds (MAX_COLS), a partial last one.
    (1000, 40), (40, 2100): batch-norm statistics from several row chunks (CHUNK_ELEMS), the
    last one partial, merged with Chan's formula."""
    x, gamma, beta, dout = _problem(*shape, dtype)
    for a in (x, gamma, beta, dout):  # inputs are only read: read-only arrays work
        a.setflags(write=False)
    expected = _run_kernels(reference, x, gamma, beta, dout, 1)
    first = _run_kernels(_kernels, x, gamma, beta, dout, 1)
    for name, got in first.items():
        if shape[0] < 2 and name.startswith(("bn_out", "bn_dx", "bn_dg", "bn_db", "bn_mean",
                                             "bn_inv")):
            continue
        tol = KTOL[np.dtype(np.float64 if got.dtype == np.float64 else dtype)]
        np.testing.assert_allclose(got, expected[name], err_msg=name, **tol)
        assert not np.isnan(got).any(), name
    for n_threads in THREADS[1:]:
        again = _run_kernels(_kernels, x, gamma, beta, dout, n_threads)
        for name in first:
            np.testing.assert_array_equal(again[name], first[name], err_msg=f"{name} {n_threads}")


@pytest.mark.parametrize("n_threads", [1, 2])
def test_kernels_work_in_place(n_threads):
    """out may be x, dx may be dout (design b); one thread takes layer norm's one-read
    backward (dgamma / dbeta added row by row), two its two-region one."""
    x, gamma, beta, dout = _problem(33, 70, np.float64)
    expected = _run_kernels(_kernels, x, gamma, beta, dout, n_threads)
    buf = x.ravel().copy()
    _kernels.layernorm_forward(buf, gamma, beta, buf, np.empty(33), np.empty(33), 1e-5,
                               n_threads)
    np.testing.assert_array_equal(buf, expected["ln_out"])
    buf = x.ravel().copy()
    _kernels.batchnorm_forward_train(buf, gamma, beta, buf, np.empty(70), np.empty(70),
                                     np.linspace(-1, 1, 70), np.linspace(0.5, 2, 70), 1e-5, 0.9,
                                     True, n_threads)
    np.testing.assert_array_equal(buf, expected["bn_out"])
    g = dout.ravel().copy()
    dgamma, dbeta = np.empty(70), np.empty(70)
    _kernels.layernorm_backward(g, x.ravel(), gamma, expected["ln_mean"], expected["ln_inv"], g,
                                dgamma, dbeta, n_threads)
    np.testing.assert_array_equal(g, expected["ln_dx"])
    np.testing.assert_array_equal(dgamma, expected["ln_dg"])
    np.testing.assert_array_equal(dbeta, expected["ln_db"])
    g = dout.ravel().copy()
    _kernels.batchnorm_backward(g, x.ravel(), gamma, expected["bn_mean"], expected["bn_inv"], g,
                                np.empty(70), np.empty(70), n_threads)
    np.testing.assert_array_equal(g, expected["bn_dx"])


# --------------------------------------------------------------------------------------------
# numerics: large mean, two-pass variance


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer", ["batchnorm", "layernorm"])
@pytest.mark.parametrize("n", [64, 2000])
def test_large_mean_small_spread_keeps_its_digits(dtype, layer, n):
    """Mean 1e4, std 1e-2: E[x^2] - E[x]^2 would cancel every digit (in float32 it is pure
    rounding noise).  The oracle normalizes x - 1e4, which is exact (Sterbenz) and small.
    n = 2000: batch norm merges several row chunks' statistics; the float32 output pass
    centres x on the float64 mean split in two floats (a float32 mean alone is 5% of a std off)."""
    x, gamma, beta, dout = _problem(n, 48, dtype, loc=1e4, scale=1e-2)
    shifted = x.astype(np.float64) - 1e4
    axis = 0 if layer == "batchnorm" else 1
    x_hat = (shifted - shifted.mean(axis, keepdims=True)) / np.sqrt(
        shifted.var(axis, keepdims=True) + 1e-5)
    if layer == "batchnorm":
        out, cache = batchnorm_forward(x, gamma, beta, {"mode": "train"})
        dx, dgamma, _ = batchnorm_backward(dout, cache)
    else:
        out, cache = layernorm_forward(x, gamma, beta, {})
        dx, dgamma, _ = layernorm_backward(dout, cache)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(out, x_hat * gamma + beta, **tol)
    np.testing.assert_allclose(dgamma, (dout * x_hat).sum(0), **{k: 10 * v for k, v in tol.items()})
    assert np.abs(out.astype(np.float64) - beta).std() > 0.5  # really normalized, not collapsed
    assert np.isfinite(dx).all()


def test_nan_stays_in_its_column_or_row():
    x, gamma, beta, _ = _problem(6, 40, np.float32)
    x[2, 33] = np.nan
    out, _ = batchnorm_forward(x, gamma, beta, {"mode": "train"})
    assert np.isnan(out[:, 33]).all() and not np.isnan(np.delete(out, 33, axis=1)).any()
    out, _ = layernorm_forward(x, gamma, beta, {})
    assert np.isnan(out[2]).all() and not np.isnan(np.delete(out, 2, axis=0)).any()


# --------------------------------------------------------------------------------------------
# the course layers


def _bn(x, gamma, beta):
    return batchnorm_forward(x, gamma, beta, {"mode": "train"})[0]


def _ln(x, gamma, beta):
    return layernorm_forward(x, gamma, beta, {})[0]


@pytest.mark.parametrize("layer", ["batchnorm", "layernorm"])
def test_backward_matches_finite_differences(layer):
    """float64 central differences of every input of the forward (the course's check)."""
    forward, backward = {"batchnorm": (_bn, batchnorm_backward),
                         "layernorm": (_ln, layernorm_backward)}[layer]
    x, gamma, beta, dout = _problem(6, 5, np.float64, seed=3, loc=12, scale=5)
    _, cache = (batchnorm_forward(x, gamma, beta, {"mode": "train"}) if layer == "batchnorm"
                else layernorm_forward(x, gamma, beta, {}))
    grads = backward(dout, cache)
    for arg, got in zip((x, gamma, beta), grads):
        num = numerical_gradient_array(lambda: forward(x, gamma, beta), arg, dout, h=1e-5)
        np.testing.assert_allclose(got, num, rtol=1e-6, atol=1e-8)


def _staged_batchnorm_backward(dout, x, gamma, eps=1e-5):
    """The course's computation-graph backward (every intermediate node), in float64."""
    n = x.shape[0]
    mu = x.mean(0)
    xc = x - mu
    var = (xc ** 2).mean(0)
    std = np.sqrt(var + eps)
    x_hat = xc / std
    dx_hat = dout * gamma
    dstd = -(dx_hat * xc).sum(0) / std ** 2
    dvar = dstd / (2 * std)
    dxc = dx_hat / std + 2 * xc * dvar / n
    dx = dxc - dxc.mean(0)
    return dx, (dout * x_hat).sum(0), dout.sum(0)


def test_batchnorm_backward_alt_equals_backward_and_the_staged_graph():
    x, gamma, beta, dout = _problem(100, 50, np.float64, seed=231, loc=12, scale=5)
    _, cache = batchnorm_forward(x, gamma, beta, {"mode": "train"})
    got = batchnorm_backward(dout, cache)
    alt = batchnorm_backward_alt(dout, cache)
    for a, b, staged in zip(got, alt, _staged_batchnorm_backward(dout, x, gamma)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, staged, rtol=1e-10, atol=1e-12)


def _course_activations(n=200):
    """The notebook's simulated two-layer activations (np.random.seed(231) first)."""
    N, D1, D2, D3 = n, 50, 60, 3
    X = np.random.randn(N, D1)
    W1 = np.random.randn(D1, D2)
    W2 = np.random.randn(D2, D3)
    return np.maximum(0, X.dot(W1)).dot(W2)


def test_course_batchnorm_forward_numbers():
    """CS231n BatchNormalization.ipynb, 'Check the training-time forward pass' (published
    output, printed to 8 digits)."""
    np.random.seed(231)
    a = _course_activations()
    np.testing.assert_allclose(a.mean(0), [-2.3814598, -13.18038246, 1.91780462], rtol=1e-8)
    np.testing.assert_allclose(a.std(0), [27.18502186, 34.21455511, 37.68611762], rtol=1e-8)
    a_norm = _bn(a, np.ones(3), np.zeros(3))
    np.testing.assert_allclose(a_norm.mean(0), 0, atol=1e-15)
    np.testing.assert_allclose(a_norm.std(0), [0.99999999, 1.0, 1.0], atol=5e-9)
    a_norm = _bn(a, np.array([1.0, 2.0, 3.0]), np.array([11.0, 12.0, 13.0]))
    np.testing.assert_allclose(a_norm.mean(0), [11, 12, 13], rtol=1e-14)
    np.testing.assert_allclose(a_norm.std(0), [0.99999999, 1.99999999, 2.99999999], atol=5e-9)


def test_course_batchnorm_test_time_numbers():
    """The notebook's test-time check: 50 train-mode passes warm the running averages (from
    zeros, momentum 0.9), then one test-mode pass; published means and stds."""
    np.random.seed(231)
    N, D1, D2, D3 = 200, 50, 60, 3
    W1 = np.random.randn(D1, D2)
    W2 = np.random.randn(D2, D3)
    bn_param = {"mode": "train"}
    for _ in range(50):
        a = np.maximum(0, np.random.randn(N, D1).dot(W1)).dot(W2)
        batchnorm_forward(a, np.ones(D3), np.zeros(D3), bn_param)
    bn_param["mode"] = "test"
    a = np.maximum(0, np.random.randn(N, D1).dot(W1)).dot(W2)
    a_norm, _ = batchnorm_forward(a, np.ones(D3), np.zeros(D3), bn_param)
    np.testing.assert_allclose(a_norm.mean(0), [-0.03927354, -0.04349152, -0.10452688],
                               rtol=2e-7)
    np.testing.assert_allclose(a_norm.std(0), [1.01531428, 1.01238373, 0.97819988], rtol=1e-8)


def test_course_layernorm_forward_numbers():
    np.random.seed(231)
    a = _course_activations(n=4)
    np.testing.assert_allclose(a.std(1), [10.07429373, 28.39478981, 35.28360729, 4.01831507],
                               rtol=1e-8)
    a_norm = _ln(a, np.ones(3), np.zeros(3))
    np.testing.assert_allclose(a_norm.mean(1), 0, atol=1e-15)
    np.testing.assert_allclose(a_norm.std(1), [0.99999995, 0.99999999, 1.0, 0.99999969],
                               atol=5e-9)
    a_norm = _ln(a, np.full(3, 3.0), np.full(3, 5.0))
    np.testing.assert_allclose(a_norm.std(1), [2.99999985, 2.99999998, 2.99999999, 2.99999907],
                               atol=5e-9)


def test_bn_param_is_updated_like_the_course():
    x, gamma, beta, _ = _problem(8, 4, np.float64)
    bn_param = {"mode": "train", "momentum": 0.8}
    batchnorm_forward(x, gamma, beta, bn_param)
    np.testing.assert_allclose(bn_param["running_mean"], 0.2 * x.mean(0), rtol=1e-14)
    np.testing.assert_allclose(bn_param["running_var"], 0.2 * x.var(0), rtol=1e-14)
    first = bn_param["running_mean"]
    batchnorm_forward(x, gamma, beta, bn_param)
    np.testing.assert_allclose(bn_param["running_mean"], 0.36 * x.mean(0), rtol=1e-14)
    np.testing.assert_allclose(first, 0.2 * x.mean(0), rtol=1e-14)  # rebound, not overwritten


@pytest.mark.parametrize("variant", ["strided", "readonly"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_layers_take_strided_and_readonly_inputs(variant, dtype):
    x, gamma, beta, dout = _problem(9, 13, dtype)
    for forward, backward, param in ((batchnorm_forward, batchnorm_backward, {"mode": "train"}),
                                     (layernorm_forward, layernorm_backward, {})):
        out, cache = forward(x, gamma, beta, dict(param))
        grads = backward(dout, cache)
        xv, dv = variants(x)[variant], variants(dout)[variant]
        out_v, cache_v = forward(xv, gamma, beta, dict(param))
        np.testing.assert_array_equal(out_v, out)
        for a, b in zip(backward(dv, cache_v), grads):
            np.testing.assert_array_equal(a, b)
            assert a.dtype == dtype


@pytest.mark.parametrize("backend", ["numpy", "checked"])
def test_every_backend_gives_the_same_layers(backend):
    x, gamma, beta, dout = _problem(17, 9, np.float32)
    expected = [batchnorm_forward(x, gamma, beta, {"mode": "train"}),
                layernorm_forward(x, gamma, beta, {})]
    with fastbp.use_backend(backend):
        got = [batchnorm_forward(x, gamma, beta, {"mode": "train"}),
               layernorm_forward(x, gamma, beta, {})]
        got_grads = [batchnorm_backward(dout, got[0][1]), layernorm_backward(dout, got[1][1])]
    want_grads = [batchnorm_backward(dout, expected[0][1]),
                  layernorm_backward(dout, expected[1][1])]
    for (o, _), (e, _) in zip(got, expected):
        np.testing.assert_allclose(o, e, rtol=1e-5, atol=1e-5)
    for g, w in zip(got_grads, want_grads):
        for a, b in zip(g, w):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------
# bad input: clear errors, nothing written


@pytest.mark.parametrize("args, exc, match", [
    (dict(gamma=np.ones(3)), ValueError, r"gamma must have shape \(4,\)"),
    (dict(beta=np.ones((4, 1))), ValueError, r"beta must have shape \(4,\)"),
    (dict(x=np.ones((1, 4))), ValueError, "at least 2 rows"),
    (dict(x=np.ones(4)), ValueError, "2-D"),
    (dict(bn_param={"mode": "train", "eps": -1e-5}), ValueError, "eps.*>= 0"),
    (dict(bn_param={"mode": "train", "momentum": 1.5}), ValueError, r"momentum.*\[0, 1\]"),
    (dict(bn_param={"mode": "train", "momentum": -0.1}), ValueError, r"momentum.*\[0, 1\]"),
    (dict(bn_param={"mode": "eval"}), ValueError, "mode.*'train' or 'test'"),
    (dict(bn_param={}), ValueError, "mode"),
    (dict(bn_param="train"), TypeError, "bn_param must be a dict"),
    (dict(bn_param={"mode": "train", "eps": "1e-5"}), TypeError, "eps"),
    (dict(bn_param={"mode": "train", "running_mean": np.zeros(3)}), ValueError,
     "running_mean"),
])
def test_batchnorm_forward_rejects_bad_input_before_writing(args, exc, match):
    kw = dict(x=np.arange(8.0).reshape(2, 4), gamma=np.ones(4), beta=np.zeros(4),
              bn_param={"mode": "train", "running_mean": np.ones(4), "running_var": np.ones(4)})
    kw.update(args)
    before = dict(kw["bn_param"]) if isinstance(kw["bn_param"], dict) else None
    with pytest.raises(exc, match=match):
        batchnorm_forward(kw["x"], kw["gamma"], kw["beta"], kw["bn_param"])
    if before is not None:
        assert kw["bn_param"].keys() == before.keys()
        for k, v in before.items():
            assert kw["bn_param"][k] is v


@pytest.mark.parametrize("args, exc, match", [
    (dict(gamma=np.ones(5)), ValueError, "gamma"),
    (dict(ln_param={"eps": -1.0}), ValueError, "eps"),
    (dict(ln_param=None), TypeError, "ln_param must be a dict"),
])
def test_layernorm_forward_rejects_bad_input(args, exc, match):
    kw = dict(x=np.ones((3, 4)), gamma=np.ones(4), beta=np.zeros(4), ln_param={})
    kw.update(args)
    with pytest.raises(exc, match=match):
        layernorm_forward(kw["x"], kw["gamma"], kw["beta"], kw["ln_param"])


def test_a_cache_from_another_layer_is_refused():
    x, gamma, beta, dout = _problem(4, 3, np.float64)
    _, ln_cache = layernorm_forward(x, gamma, beta, {})
    _, bn_cache = batchnorm_forward(x, gamma, beta, {"mode": "train"})
    _, test_cache = batchnorm_forward(x, gamma, beta, {"mode": "test"})
    with pytest.raises(ValueError, match="from layernorm_forward, not batchnorm_forward"):
        batchnorm_backward(dout, ln_cache)
    with pytest.raises(ValueError, match="from batchnorm_forward, not layernorm_forward"):
        layernorm_backward(dout, bn_cache)
    with pytest.raises(ValueError, match="test-mode"):
        batchnorm_backward_alt(dout, test_cache)
    with pytest.raises(ValueError, match="NormCache"):
        batchnorm_backward(dout, relu_forward(x)[1])
    with pytest.raises(ValueError, match="NormCache"):
        layernorm_backward(dout, tuple(bn_cache))
    with pytest.raises(ValueError, match="dout must have shape"):
        batchnorm_backward(dout[:, :2], bn_cache)
    assert isinstance(bn_cache, NormCache)


def _kernel_args(kernel, n=4, d=3, dtype=np.float64):
    """Valid positional arguments of `kernel`, by name."""
    rng = np.random.default_rng(1)
    mat = lambda: rng.standard_normal(n * d).astype(dtype)  # noqa: E731
    vec = lambda: rng.uniform(0.5, 1.5, d).astype(dtype)  # noqa: E731
    stats = n if kernel.startswith("layernorm") else d
    if kernel == "batchnorm_forward_train":
        return dict(x=mat(), gamma=vec(), beta=vec(), out=mat(), mean=np.zeros(d),
                    inv_std=np.zeros(d), running_mean=vec(), running_var=vec(), eps=1e-5,
                    momentum=0.9, unbiased=True, n_threads=2)
    if kernel == "batchnorm_forward_test":
        return dict(x=mat(), gamma=vec(), beta=vec(), running_mean=vec(), running_var=vec(),
                    out=mat(), eps=1e-5, n_threads=2)
    if kernel == "layernorm_forward":
        return dict(x=mat(), gamma=vec(), beta=vec(), out=mat(), mean=np.zeros(n),
                    inv_std=np.zeros(n), eps=1e-5, n_threads=2)
    return dict(dout=mat(), x=mat(), gamma=vec(), mean=np.zeros(stats), inv_std=np.ones(stats),
                dx=mat(), dgamma=vec(), dbeta=vec(), n_threads=2)


_BAD = [
    ("x", lambda a: a[:-1], ValueError, "x has length 11"),
    ("gamma", lambda a: a[:0], ValueError, "at least one feature"),
    ("beta", lambda a: a[:-1], ValueError, "beta has length"),
    ("mean", lambda a: a.astype(np.float32), TypeError, "mean has dtype float32"),
    ("out", lambda a: a.reshape(-1, 1), ValueError, "out must be 1-D"),
    ("out", lambda a: np.repeat(a, 2)[::2], ValueError, "C-contiguous"),
    ("x", lambda a: list(a), TypeError, "numpy.ndarray"),
    ("running_var", lambda a: a.astype(np.float32), TypeError, "running_var has dtype"),
    ("dgamma", lambda a: a.copy().setflags(write=False) or a, None, None),
    ("eps", lambda a: -1.0, ValueError, "eps must be >= 0"),
    ("momentum", lambda a: 1.01, ValueError, "momentum"),
    ("n_threads", lambda a: 0, ValueError, "n_threads must be >= 1"),
]


@pytest.mark.parametrize("kernel, arg, make, exc, match", [
    (kernel, *bad) for kernel in _kernels._norm.__all__ for bad in _BAD
    if bad[0] in _kernel_args(kernel)
])
def test_kernel_entry_rejects_bad_arguments_before_writing(kernel, arg, make, exc, match):
    args = _kernel_args(kernel)
    if exc is None:  # a read-only output
        ro = args[arg].copy()
        ro.setflags(write=False)
        args[arg], exc, match = ro, ValueError, "read-only"
    else:
        args[arg] = make(args[arg])
    before = {k: v.copy() for k, v in args.items() if isinstance(v, np.ndarray)}
    with pytest.raises(exc, match=match):
        getattr(_kernels, kernel)(*args.values())
    for k, v in before.items():
        np.testing.assert_array_equal(args[k], v, err_msg=k)


def test_train_kernel_needs_two_rows_for_the_unbiased_variance():
    args = _kernel_args("batchnorm_forward_train", n=1)
    with pytest.raises(ValueError, match="at least 2 rows"):
        _kernels.batchnorm_forward_train(*args.values())
    args["unbiased"] = False
    _kernels.batchnorm_forward_train(*args.values())
    np.testing.assert_array_equal(args["out"], args["beta"])  # one row: x_hat = 0


# --------------------------------------------------------------------------------------------
# PyTorch as an oracle


def test_functional_layers_match_torch():
    torch = pytest.importorskip("torch")
    x, gamma, beta, dout = _problem(16, 7, np.float64, seed=5, loc=3, scale=2)
    for ours, theirs in (
        (lambda: batchnorm_forward(x, gamma, beta, {"mode": "train"}),
         lambda t, g, b: torch.nn.functional.batch_norm(t, None, None, g, b, training=True,
                                                        eps=1e-5)),
        (lambda: layernorm_forward(x, gamma, beta, {}),
         lambda t, g, b: torch.nn.functional.layer_norm(t, (7,), g, b, eps=1e-5)),
    ):
        out, cache = ours()
        backward = batchnorm_backward if cache[0] == "batchnorm" else layernorm_backward
        dx, dgamma, dbeta = backward(dout, cache)
        t, g, b = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
        y = theirs(t, g, b)
        y.backward(torch.tensor(dout))
        np.testing.assert_allclose(out, y.detach().numpy(), rtol=1e-12, atol=1e-12)
        for a, ref in ((dx, t), (dgamma, g), (dbeta, b)):
            np.testing.assert_allclose(a, ref.grad.numpy(), rtol=1e-10, atol=1e-12)
