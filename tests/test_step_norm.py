"""The fused training step with normalization stages (``Linear -> BatchNorm1d / LayerNorm ->
activation``, fastbp._planner): the one-call compiled step and the kernel-by-kernel path give
what forward / backward / optimizer.step give (parameters, gamma / beta, running statistics,
optimizer state), every check happens before the first write, and inference runs the same plan.
"""

import numpy as np
import pytest
from helpers import DTYPES, assert_close

import fastbp
from fastbp import nn, optim

OPTIMIZERS = {
    "sgd": lambda: optim.SGD(lr=0.1),
    "momentum": lambda: optim.SGD(lr=0.05, momentum=0.9),
    "adam": lambda: optim.Adam(lr=1e-2),
    "rmsprop": lambda: optim.RMSProp(lr=1e-3),
    # weight decay on the weights only (gamma, beta and the biases are 1-D), or on everything
    "sgd-decay": lambda: optim.SGD(lr=0.1, weight_decay=0.05, decay_biases=False),
    "adam-decay": lambda: optim.Adam(lr=1e-2, weight_decay=0.1, decay_biases=False),
    "rmsprop-decay": lambda: optim.RMSProp(lr=1e-3, weight_decay=0.1),
}

NORMS = {
    "batch": lambda d, dtype: nn.BatchNorm1d(d, eps=1e-3, momentum=0.3, dtype=dtype),
    "batch-no-affine": lambda d, dtype: nn.BatchNorm1d(d, affine=False, dtype=dtype),
    "layer": lambda d, dtype: nn.LayerNorm(d, eps=1e-4, dtype=dtype),
}

#: how the step runs: the one-call FusedStep, or the kernel-by-kernel path (forced by a loss
#: that checks its scores, which FusedStep does not do) on the compiled or the NumPy kernels
PATHS = {"compiled": ("compiled", False), "kernels": ("compiled", True),
         "numpy": ("numpy", True)}


def _model(norm, act, dtype, sizes=(6, 9, 7, 4), seed=0):
    """Linear -> norm [-> act] for each hidden size, then Linear."""
    gen = np.random.default_rng(seed)
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out, dtype=dtype, rng=gen))
        if i < len(sizes) - 2:
            layers.append(NORMS[norm](fan_out, dtype))
            if act is not None:
                layers.append(nn.ACTIVATIONS[act]())
    return nn.Sequential(*layers)


def _unfused_step(model, x, y, loss, opt):
    value = loss.forward(model.forward(x), y)
    model.backward(loss.backward())
    opt.step(model.params, model.grads)
    return value


def _problem(dtype, n=12, d=6, classes=4, seed=1):
    gen = np.random.default_rng(seed)
    return gen.standard_normal((n, d)).astype(dtype), gen.integers(0, classes, n)


def _snapshot(model, opt):
    """Copies of the parameters, buffers and optimizer state (empty state entries left out:
    plain SGD keeps none, whether or not a name has one)."""
    return (model.state_dict(),
            {name: {k: np.copy(v) for k, v in s.items()} for name, s in opt.state.items() if s})


def _assert_same(got, expected, dtype=None):
    """Two snapshots agree (to float rounding when `dtype` is given, else bit for bit)."""
    for (a, b) in zip(got, expected):
        assert a.keys() == b.keys()
        for k in b:
            if isinstance(b[k], dict):
                _assert_same((a[k],), (b[k],), dtype)
            elif dtype is None:
                np.testing.assert_array_equal(a[k], b[k])
            else:
                assert_close(a[k], b[k], dtype, scale=10)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("act", ["relu", "gelu", None])
@pytest.mark.parametrize("norm", list(NORMS))
def test_fused_step_with_norm_matches_the_unfused_path(norm, act, opt, dtype, path):
    backend, checks_scores = PATHS[path]
    x, y = _problem(dtype)
    fused, plain = _model(norm, act, dtype), _model(norm, act, dtype)
    assert fused._fusion_plan() is not None
    opt_f, opt_p = OPTIMIZERS[opt](), OPTIMIZERS[opt]()
    loss_f, loss_p = nn.SoftmaxCrossEntropy(check_finite=checks_scores), nn.SoftmaxCrossEntropy()
    with fastbp.use_backend(backend):
        for _ in range(3):
            vf = fused.train_step(x, y, loss_f, opt_f)
            vp = _unfused_step(plain, x, y, loss_p, opt_p)
            assert_close(vf, vp, dtype, scale=10)
    assert bool(fused._step_cache.compiled) == (path == "compiled")
    _assert_same(_snapshot(fused, opt_f), _snapshot(plain, opt_p), dtype)
    trained, last = fused.state_dict(), len(fused.layers) - (2 if act is None else 3)
    if "gamma" in fused.layers[last].params:  # the test can fail: gamma / beta did train
        assert np.abs(trained[f"{last}.gamma"] - 1).max() > 1e-4  # (the first norm's beta
        assert np.abs(trained[f"{last}.beta"]).max() > 1e-4       # gets ~0: the next norm)
    if isinstance(fused.layers[1], nn.BatchNorm1d):
        assert np.abs(trained["1.running_mean"]).max() > 1e-3


@pytest.mark.parametrize("path", ["compiled", "kernels"])
def test_layer_norm_in_inference_mode_trains_as_in_training_mode(path):
    x, y = _problem(np.float64)
    fused, plain = _model("layer", "tanh", np.float64), _model("layer", "tanh", np.float64)
    fused.eval()
    opt_f, opt_p = optim.Adam(1e-2), optim.Adam(1e-2)
    loss = nn.SoftmaxCrossEntropy(check_finite=path == "kernels")
    for _ in range(2):
        fused.train_step(x, y, loss, opt_f)
        _unfused_step(plain, x, y, nn.SoftmaxCrossEntropy(), opt_p)
    _assert_same(_snapshot(fused, opt_f), _snapshot(plain, opt_p), np.float64)


@pytest.mark.parametrize("path", ["compiled", "kernels"])
def test_batch_norm_in_inference_mode_cannot_train_and_changes_nothing(path):
    """As its own backward: no backward from the running statistics (RuntimeError), raised
    before anything is written."""
    x, y = _problem(np.float64)
    model, opt = _model("batch", "relu", np.float64), optim.SGD(0.1, momentum=0.9)
    loss = nn.SoftmaxCrossEntropy(check_finite=path == "kernels")
    model.train_step(x, y, loss, opt)
    model.layers[1].eval()
    before = _snapshot(model, opt)
    with pytest.raises(RuntimeError, match="inference mode"):
        model.train_step(x, y, loss, opt)
    _assert_same(_snapshot(model, opt), before)
    with pytest.raises(RuntimeError, match="training mode"):
        _unfused_step(model, x, y, nn.SoftmaxCrossEntropy(), opt)
    model.layers[1].train()
    model.train_step(x, y, loss, opt)
    assert np.abs(model.state_dict()["0.W"] - before[0]["0.W"]).max() > 0


def _read_only(model, opt, name):
    {**model.params, **model.buffers}[name].setflags(write=False)


#: failure -> (edit(model, opt, x, y) -> (x, y), exception, message)
FAILURES = {
    "label out of range": (lambda m, o, x, y: (x, np.where(y == 0, 9, y)), ValueError,
                           r"\[0, 4\)"),
    "read-only gamma": (lambda m, o, x, y: (_read_only(m, o, "1.gamma"), (x, y))[1],
                        ValueError, "1.gamma.*read-only"),
    "read-only running var": (lambda m, o, x, y: (_read_only(m, o, "4.running_var"),
                                                  (x, y))[1], ValueError, "4.running_var"),
    "gamma of another dtype": (lambda m, o, x, y: (m.layers[4].params.__setitem__(
        "gamma", m.layers[4].params["gamma"].astype(np.float32)), (x, y))[1], TypeError,
        "4.gamma"),
    "a batch of one row": (lambda m, o, x, y: (x[:1], y[:1]), ValueError, "training mode"),
    "read-only optimizer state": (lambda m, o, x, y: (next(
        v for v in o.state["1.beta"].values() if isinstance(v, np.ndarray)).setflags(
        write=False), (x, y))[1], ValueError, "1.beta"),
}


@pytest.mark.parametrize("path", ["compiled", "kernels"])
@pytest.mark.parametrize("opt", ["momentum", "adam"])
@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_failed_step_with_norms_changes_nothing(failure, opt, path):
    x, y = _problem(np.float64)
    model, o = _model("batch", "relu", np.float64), OPTIMIZERS[opt]()
    loss = nn.SoftmaxCrossEntropy(check_finite=path == "kernels")
    model.train_step(x, y, loss, o)  # warm: the plan and the compiled step are cached
    edit, exc, match = FAILURES[failure]
    bad_x, bad_y = edit(model, o, x, y)
    before = _snapshot(model, o)
    with pytest.raises(exc, match=match):
        model.train_step(bad_x, bad_y, loss, o)
    _assert_same(_snapshot(model, o), before)


def test_non_finite_scores_leave_the_running_statistics_unchanged():
    """The kernel-by-kernel path commits the running averages only after the loss checked
    the scores (the forward has already run by then)."""
    x, y = _problem(np.float64)
    model, o = _model("batch", "relu", np.float64), optim.SGD(0.1)
    loss = nn.SoftmaxCrossEntropy(check_finite=True)
    model.train_step(x, y, loss, o)
    model.layers[-1].params["W"][0, 0] = np.inf
    before = _snapshot(model, o)
    with pytest.raises(ValueError, match="NaN or infinity"):
        model.train_step(x, y, loss, o)
    _assert_same(_snapshot(model, o), before)


@pytest.mark.parametrize("backend", ["compiled", "numpy"])
@pytest.mark.parametrize("act", ["relu", "gelu_tanh", None])
@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_inference_runs_the_fused_plan_with_norms(norm, act, backend):
    x, y = _problem(np.float32, n=10)
    model = _model(norm, "gelu" if act == "gelu_tanh" else act, np.float32)
    if act == "gelu_tanh":
        model.layers[2].approximate = "tanh"
    with fastbp.use_backend(backend):
        for _ in range(2):  # running statistics away from their initial values
            model.train_step(x, y, nn.SoftmaxCrossEntropy(), optim.SGD(0.1))
        got = model.inference_forward(x).copy()
        assert model.layers[1].training  # inference_forward gives every layer its mode back
        model.eval()
        assert model._fusion_plan() is not None
        expected = model.forward(x)
    assert_close(got, expected, np.float32, scale=10)
    if norm == "batch":  # the running statistics, not the batch's
        model.train()
        assert np.abs(model.forward(x) - got).max() > 1e-3


def test_compiled_step_with_batch_norm_is_identical_for_any_thread_count():
    x, y = _problem(np.float32, n=64, d=40)
    results = []
    for threads in (1, 2):
        fastbp.set_num_threads(threads)
        try:
            model, o = _model("batch", "relu", np.float32, sizes=(40, 300, 200, 5)), \
                optim.Adam(1e-2)
            for _ in range(2):
                model.train_step(x, y, nn.SoftmaxCrossEntropy(), o)
            results.append(model.state_dict())
        finally:
            fastbp.set_num_threads(None)
    for k, v in results[0].items():
        np.testing.assert_array_equal(results[1][k], v)


def test_fused_forward_refuses_batch_norm_in_training_mode():
    """Inference runs batch norm with its running statistics only (inference_forward puts
    every layer in inference mode first)."""
    from fastbp._planner import fused_forward

    model = _model("batch", "relu", np.float64)
    before = model.state_dict()
    with pytest.raises(ValueError, match="training mode"):
        fused_forward(model._fusion_plan(), model._step_cache.buffers, np.ones((3, 6)))
    _assert_same((model.state_dict(),), (before,))


def test_fused_step_with_norms_equals_unfused_on_drawn_networks():
    """Property-based: drawn widths, norm kind (and affine), activation, dtype, loss, optimizer
    and batch sizes (changing between steps); fused and unfused agree after every step."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=25, deadline=None,
                         suppress_health_check=[hypothesis.HealthCheck.too_slow])
    @hypothesis.given(data=st.data())
    def check(data):
        dtype = np.dtype(data.draw(st.sampled_from(DTYPES), "dtype"))
        sizes = data.draw(st.lists(st.integers(1, 10), min_size=3, max_size=4), "sizes")
        norm = data.draw(st.sampled_from(sorted(NORMS)), "norm")
        act = data.draw(st.sampled_from(["relu", "tanh", "gelu", None]), "activation")
        loss = data.draw(st.sampled_from(sorted(nn.LOSSES)), "loss")
        opt = data.draw(st.sampled_from(sorted(OPTIMIZERS)), "optimizer")
        fused, plain = (_model(norm, act, dtype, sizes=sizes) for _ in range(2))
        opt_f, opt_p = OPTIMIZERS[opt](), OPTIMIZERS[opt]()
        crit_f, crit_p = nn.LOSSES[loss](), nn.LOSSES[loss]()
        rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), "seed"))
        for n in data.draw(st.lists(st.sampled_from([2, 3, 8]), min_size=1, max_size=3), "n"):
            x = rng.standard_normal((n, sizes[0])).astype(dtype)
            y = (rng.standard_normal((n, sizes[-1])).astype(dtype) if loss == "mse"
                 else rng.integers(0, sizes[-1], n))
            vf = fused.train_step(x, y, crit_f, opt_f)
            vp = _unfused_step(plain, x, y, crit_p, opt_p)
            assert_close(vf, vp, dtype, scale=100)
            _assert_same(_snapshot(fused, opt_f), _snapshot(plain, opt_p), dtype)

    check()
