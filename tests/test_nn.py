"""fastbp.nn: layers, losses, containers, the fused train_step, save/load, bad input."""

import numpy as np
import pytest
from helpers import DTYPES, assert_close, layer_variants

import fastbp
from fastbp import layers, nn, optim
from fastbp._specs import ACTIVATIONS as SPEC_ACTIVATIONS
from fastbp.gradcheck import check_model_gradients

#: an instance of every activation class, for each parameter variant of its spec-table row
ACT_INSTANCES = [nn.ACTIVATIONS[name](**kw) for name, row in SPEC_ACTIVATIONS.items()
                 for kw in layer_variants(row)]


def _mlp(sizes, act="relu", dtype=np.float64, seed=0, loss="softmax", **kw):
    return nn.MLP(sizes, activation=act, dtype=dtype, rng=seed, loss=loss, **kw)


def test_linear_matches_affine_layer(rng):
    lin = nn.Linear(6, 4, dtype=np.float64, rng=1)
    x = rng.standard_normal((5, 6))
    out = lin.forward(x)
    ref, cache = layers.affine_forward(x, lin.params["W"], lin.params["b"])
    assert_close(out, ref, np.float64)
    dout = rng.standard_normal((5, 4))
    dx = lin.backward(dout)
    rdx, rdw, rdb = layers.affine_backward(dout, cache)
    assert_close(dx, rdx, np.float64)
    assert_close(lin.grads["W"], rdw, np.float64)
    assert_close(lin.grads["b"], rdb, np.float64)


@pytest.mark.parametrize("init,std", [("he", np.sqrt(2 / 400)), ("xavier", np.sqrt(2 / 600)),
                                      ("normal", 0.01)])
def test_linear_init(init, std):
    lin = nn.Linear(400, 200, init=init, rng=0)
    assert lin.params["W"].dtype == np.float32
    assert abs(lin.params["W"].std() / std - 1) < 0.02
    np.testing.assert_array_equal(lin.params["b"], 0)
    again = nn.Linear(400, 200, init=init, rng=0)
    np.testing.assert_array_equal(lin.params["W"], again.params["W"])


def test_buffers_are_reused_across_steps(rng):
    model = _mlp([8, 16, 3], dtype=np.float32)
    x = rng.standard_normal((4, 8)).astype(np.float32)
    out1 = model.forward(x)
    out2 = model.forward(x + 1)
    assert np.shares_memory(out1, out2)
    g1 = model.backward(np.ones_like(out2))
    g2 = model.backward(np.ones_like(out2))
    assert np.shares_memory(g1, g2)
    y = np.array([0, 1, 2, 0])
    loss = nn.SoftmaxCrossEntropy()
    # the compiled step (SGD, momentum): one plan, built on the first step and reused
    opt = optim.SGD(lr=0.1, momentum=0.9)
    model.train_step(x, y, loss, opt)
    (step,) = model._step_cache.compiled.values()
    model.train_step(x, y, loss, opt)
    assert list(model._step_cache.compiled.values()) == [step]
    # the kernel-by-kernel fused path (Adam): its buffers are reused too
    adam = optim.Adam(lr=1e-3)
    model.train_step(x, y, loss, adam)
    buffers = dict(model._step_cache.buffers)
    model.train_step(x, y, loss, adam)
    assert buffers
    for k, v in model._step_cache.buffers.items():
        assert v is buffers[k]


@pytest.mark.parametrize("act", ACT_INSTANCES, ids=repr)
@pytest.mark.parametrize("loss", ["softmax", "svm", "mse"])
@pytest.mark.parametrize("bias", [True, False])
def test_whole_model_gradients_finite_differences(act, loss, bias):
    gen = np.random.default_rng(3)
    model = nn.Sequential(nn.Linear(5, 7, dtype=np.float64, rng=gen, bias=bias), act,
                          nn.Linear(7, 6, dtype=np.float64, rng=gen, bias=bias),
                          criterion=nn.LOSSES[loss]())
    x = gen.standard_normal((4, 5))
    y = gen.standard_normal((4, 6)) if loss == "mse" else gen.integers(0, 6, 4)
    report = check_model_gradients(model, x, y, h=1e-6)
    for entry in report:  # relative error, unless the gradient entry itself is ~0
        assert entry.max_rel_error < 1e-6 or entry.max_abs_error < 1e-9, str(report)


def _unfused_step(model, x, y, loss, opt):
    value = loss.forward(model.forward(x), y)
    model.backward(loss.backward())
    opt.step(model.params, model.grads)
    return value


OPTIMIZERS = [
    lambda: optim.SGD(lr=0.1),
    lambda: optim.SGD(lr=0.05, momentum=0.9),
    lambda: optim.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda: optim.Adam(lr=1e-2),
    lambda: optim.RMSProp(lr=1e-3),
]


@pytest.mark.parametrize("make_opt", OPTIMIZERS)
@pytest.mark.parametrize("act", list(SPEC_ACTIVATIONS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_train_step_equals_unfused_path(make_opt, act, dtype):
    gen = np.random.default_rng(0)
    x = gen.standard_normal((16, 10)).astype(dtype)
    y = gen.integers(0, 4, 16)
    fused, plain = _mlp([10, 12, 9, 4], act, dtype), _mlp([10, 12, 9, 4], act, dtype)
    assert fused._fusion_plan() is not None
    opt_f, opt_p = make_opt(), make_opt()
    loss_f, loss_p = nn.SoftmaxCrossEntropy(), nn.SoftmaxCrossEntropy()
    for _ in range(3):
        vf = fused.train_step(x, y, loss_f, opt_f)
        vp = _unfused_step(plain, x, y, loss_p, opt_p)
        assert_close(vf, vp, dtype, scale=10)
    for name, p in plain.params.items():
        assert_close(fused.params[name], p, dtype, scale=10)


@pytest.mark.parametrize("loss", ["svm", "mse"])
def test_train_step_with_other_losses(loss):
    gen = np.random.default_rng(1)
    x = gen.standard_normal((8, 5))
    y = gen.standard_normal((8, 3)) if loss == "mse" else gen.integers(0, 3, 8)
    fused, plain = _mlp([5, 6, 3], loss=loss), _mlp([5, 6, 3], loss=loss)
    opt_f, opt_p = optim.SGD(lr=0.1, momentum=0.5), optim.SGD(lr=0.1, momentum=0.5)
    for _ in range(2):
        fused.train_step(x, y, nn.LOSSES[loss](), opt_f)
        _unfused_step(plain, x, y, nn.LOSSES[loss](), opt_p)
    for name, p in plain.params.items():
        assert_close(fused.params[name], p, np.float64)


def test_unfusable_chain_falls_back_to_the_unfused_path():
    gen = np.random.default_rng(2)
    model = nn.Sequential(nn.Linear(4, 5, dtype=np.float64, rng=gen), nn.ReLU(), nn.Tanh(),
                          nn.Linear(5, 3, dtype=np.float64, rng=gen))
    assert model._fusion_plan() is None
    leaky = nn.Sequential(nn.Linear(4, 5, dtype=np.float64), nn.LeakyReLU(-0.5),
                          nn.Linear(5, 3, dtype=np.float64))
    assert leaky._fusion_plan() is None
    x, y = gen.standard_normal((6, 4)), gen.integers(0, 3, 6)
    before = model.state_dict()
    value = model.train_step(x, y, nn.SoftmaxCrossEntropy(), optim.SGD(lr=0.1))
    assert np.isfinite(value)
    assert any(not np.array_equal(before[k], v) for k, v in model.params.items())


@pytest.mark.parametrize("backend", ["numpy", "checked"])
def test_train_step_under_other_backends(backend):
    gen = np.random.default_rng(4)
    x, y = gen.standard_normal((8, 6)), gen.integers(0, 3, 8)
    a, b = _mlp([6, 7, 3], "gelu"), _mlp([6, 7, 3], "gelu")
    va = a.train_step(x, y, nn.SoftmaxCrossEntropy(), optim.SGD(lr=0.1, momentum=0.9))
    with fastbp.use_backend(backend):
        vb = b.train_step(x, y, nn.SoftmaxCrossEntropy(), optim.SGD(lr=0.1, momentum=0.9))
    assert_close(va, vb, np.float64)
    for name, p in a.params.items():
        assert_close(b.params[name], p, np.float64)


def test_failed_train_step_leaves_parameters_unchanged():
    model = _mlp([4, 5, 3])
    opt = optim.SGD(lr=0.1, momentum=0.9)
    loss = nn.SoftmaxCrossEntropy(check_finite=True)
    x = np.ones((2, 4))
    before = model.state_dict()
    for bad_x, bad_y, exc in [(x, np.array([0, 3]), ValueError),
                              (x, np.array([0.5, 1.0]), TypeError),
                              (np.ones((2, 5)), np.array([0, 1]), ValueError),
                              (np.full((2, 4), np.nan), np.array([0, 1]), ValueError)]:
        with pytest.raises(exc):
            model.train_step(bad_x, bad_y, loss, opt)
        for k, v in model.params.items():
            np.testing.assert_array_equal(v, before[k])


def test_linear_rejects_wrong_feature_count():
    lin = nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 3\), got \(4, 5\)"):
        lin.forward(np.ones((4, 5)))
    with pytest.raises(RuntimeError, match="before forward"):
        nn.Linear(3, 2).backward(np.ones((1, 2)))


@pytest.mark.parametrize("call,exc", [
    (lambda: nn.Linear(0, 3), ValueError),
    (lambda: nn.Linear(2.5, 3), TypeError),
    (lambda: nn.Linear(2, 3, dtype=np.int32), TypeError),
    (lambda: nn.Linear(2, 3, init="kaiming"), ValueError),
    (lambda: nn.MLP([4]), ValueError),
    (lambda: nn.MLP([4, 3], activation="swish"), ValueError),
    (lambda: nn.MLP([4, 3], loss="hinge"), ValueError),
    (lambda: nn.LeakyReLU(float("nan")), ValueError),
    (lambda: nn.GELU("fast"), ValueError),
    (lambda: nn.Sequential(nn.Linear(2, 2), "relu"), TypeError),
])
def test_constructor_validation(call, exc):
    with pytest.raises(exc):
        call()


def test_save_load_round_trip_is_exact(tmp_path):
    model = _mlp([5, 8, 3], dtype=np.float32, seed=7)
    path = tmp_path / "model.npz"
    model.save(path)
    other = _mlp([5, 8, 3], dtype=np.float32, seed=8)
    other.load(path)
    for k, v in model.params.items():
        np.testing.assert_array_equal(other.params[k], v)
        assert other.params[k].dtype == v.dtype
    with np.load(path, allow_pickle=False) as f:
        assert sorted(f.files) == sorted(model.params)


def test_load_rejects_a_mismatched_file(tmp_path):
    path = tmp_path / "model.npz"
    _mlp([5, 8, 3]).save(path)
    with pytest.raises(ValueError, match="shape"):
        _mlp([5, 9, 3]).load(path)
    with pytest.raises(ValueError, match="missing"):
        _mlp([5, 8, 8, 3]).load(path)
    before = _mlp([5, 9, 3], seed=1)
    snapshot = before.state_dict()
    with pytest.raises(ValueError):
        before.load(path)
    for k, v in before.params.items():
        np.testing.assert_array_equal(v, snapshot[k])


def test_predict_and_evaluate(rng):
    model = _mlp([4, 6, 3])
    x = rng.standard_normal((10, 4))
    scores = model.forward(x).copy()
    np.testing.assert_array_equal(model.predict(x, batch_size=3), scores.argmax(1))
    proba = model.predict_proba(x, batch_size=4)
    assert_close(proba.sum(1), np.ones(10), np.float64)
    assert_close(np.log(proba), scores - np.log(np.exp(scores).sum(1, keepdims=True)), np.float64)
    y = scores.argmax(1)
    loss, acc = model.evaluate(x, y, batch_size=3)
    assert acc == 1.0
    assert_close(loss, layers.softmax_loss(scores, y)[0], np.float64)


def test_mlp_learns_digits_to_95_percent():
    """An MLP trained with fastbp.nn reaches >= 95% test accuracy on the bundled digits."""
    from fastbp.data import iterate_minibatches, load_digits, train_test_split

    X, y = load_digits()
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, seed=0)
    model = nn.MLP([64, 128, 10], rng=0)
    opt, loss = optim.SGD(lr=0.1, momentum=0.9), nn.SoftmaxCrossEntropy()
    gen = np.random.default_rng(0)
    for _ in range(30):
        for xb, yb in iterate_minibatches(Xtr, ytr, 32, seed=gen):
            model.train_step(xb, yb, loss, opt)
    _, acc = model.evaluate(Xte, yte)
    assert acc >= 0.95


def test_compiled_step_follows_replaced_parameters_and_state():
    """The compiled plan is rebuilt when a parameter array or the optimizer state is replaced
    (Solver-style rebinding, reset(), load_state_dict) — never writes into stale arrays."""
    gen = np.random.default_rng(5)
    x, y = gen.standard_normal((6, 4)), gen.integers(0, 3, 6)
    fused, plain = _mlp([4, 5, 3]), _mlp([4, 5, 3])
    opt_f, opt_p = optim.SGD(lr=0.1, momentum=0.9), optim.SGD(lr=0.1, momentum=0.9)
    loss = nn.SoftmaxCrossEntropy()
    fused.train_step(x, y, loss, opt_f)
    _unfused_step(plain, x, y, loss, opt_p)
    new_w = gen.standard_normal((4, 5))
    fused.layers[0].params["W"] = new_w.copy()
    plain.layers[0].params["W"] = new_w.copy()
    opt_f.reset()
    opt_p.reset()
    for _ in range(2):
        fused.train_step(x, y, loss, opt_f)
        _unfused_step(plain, x, y, loss, opt_p)
    for name, p in plain.params.items():
        assert_close(fused.params[name], p, np.float64)
    assert not np.array_equal(fused.layers[0].params["W"], new_w)


@pytest.mark.parametrize("labels", [np.array([0, 3]), np.array([-1, 0]), np.array([0, 1, 2])])
def test_compiled_step_rejects_bad_labels_before_updating(labels):
    model = _mlp([4, 5, 3])
    opt = optim.SGD(lr=0.1, momentum=0.9)
    x = np.ones((2, 4))
    model.train_step(x, np.array([0, 1]), nn.SoftmaxCrossEntropy(), opt)  # builds the plan
    before = model.state_dict()
    velocity = {k: v["momentum_buffer"].copy() for k, v in opt.state.items()}
    with pytest.raises(ValueError):
        model.train_step(x, labels, nn.SoftmaxCrossEntropy(), opt)
    for k, v in model.params.items():
        np.testing.assert_array_equal(v, before[k])
    for k, v in opt.state.items():
        np.testing.assert_array_equal(v["momentum_buffer"], velocity[k])


def test_compiled_step_handles_changing_batch_sizes_and_label_dtypes():
    gen = np.random.default_rng(6)
    fused, plain = _mlp([4, 6, 3], dtype=np.float32), _mlp([4, 6, 3], dtype=np.float32)
    opt_f, opt_p = optim.SGD(lr=0.05), optim.SGD(lr=0.05)
    for n in (5, 2, 5, 7):
        x = gen.standard_normal((n, 4))  # float64 data into a float32 model
        y = gen.integers(0, 3, n).astype(np.uint8)
        vf = fused.train_step(x, y, nn.SoftmaxCrossEntropy(), opt_f)
        vp = _unfused_step(plain, x.astype(np.float32), y, nn.SoftmaxCrossEntropy(), opt_p)
        assert_close(vf, vp, np.float32)
    for name, p in plain.params.items():
        assert_close(fused.params[name], p, np.float32)


def test_train_step_and_evaluate_reject_wrong_argument_types():
    model = _mlp([4, 5, 3])
    x, y = np.ones((2, 4)), np.array([0, 1])
    with pytest.raises(TypeError, match="loss must be a fastbp.nn loss"):
        model.train_step(x, y, "softmax", optim.SGD(lr=0.1))
    with pytest.raises(TypeError, match="optimizer must be"):
        model.train_step(x, y, nn.SoftmaxCrossEntropy(), None)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        model.evaluate(x, y, batch_size=0)
