"""fastbp.nn: layers, losses, containers, save/load, bad input (the fused train_step: test_step.py)."""

import numpy as np
import pytest
from helpers import assert_close, param_variants

from fastbp import layers, nn, optim
from fastbp._specs import ACTIVATIONS as SPEC_ACTIVATIONS
from fastbp.gradcheck import check_model_gradients

#: an instance of every activation class, for each parameter variant of its spec-table row
ACT_INSTANCES = [nn.ACTIVATIONS[name](**kw) for name, row in SPEC_ACTIVATIONS.items()
                 for kw in param_variants(row)]


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


def test_train_step_and_evaluate_reject_wrong_argument_types():
    model = _mlp([4, 5, 3])
    x, y = np.ones((2, 4)), np.array([0, 1])
    with pytest.raises(TypeError, match="loss must be a fastbp.nn loss"):
        model.train_step(x, y, "softmax", optim.SGD(lr=0.1))
    with pytest.raises(TypeError, match="optimizer must be"):
        model.train_step(x, y, nn.SoftmaxCrossEntropy(), None)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        model.evaluate(x, y, batch_size=0)


# ------------------------------------------------------------------- normalization layers


def _torch_pair(torch, ours):
    """A torch module matching `ours` (BatchNorm1d or LayerNorm), float64, same parameters."""
    if isinstance(ours, nn.BatchNorm1d):
        theirs = torch.nn.BatchNorm1d(ours.num_features, eps=ours.eps, momentum=ours.momentum,
                                      affine=ours.affine, dtype=torch.float64)
    else:
        theirs = torch.nn.LayerNorm(ours.num_features, eps=ours.eps, dtype=torch.float64)
    with torch.no_grad():
        for name, p in ours.params.items():
            getattr(theirs, {"gamma": "weight", "beta": "bias"}[name]).copy_(torch.tensor(p))
    return theirs


@pytest.mark.parametrize("make", [lambda: nn.BatchNorm1d(7, dtype=np.float64),
                                  lambda: nn.BatchNorm1d(7, eps=1e-3, momentum=0.3, affine=False,
                                                         dtype=np.float64),
                                  lambda: nn.LayerNorm(7, eps=1e-4, dtype=np.float64)])
def test_norm_layers_match_torch_over_several_steps(make):
    """Train mode (outputs, input and parameter gradients, running statistics after every
    step), then eval mode, against torch.nn.BatchNorm1d / LayerNorm."""
    torch = pytest.importorskip("torch")
    gen = np.random.default_rng(3)
    ours = make()
    if "gamma" in ours.params:
        ours.params["gamma"][...] = gen.uniform(0.5, 1.5, 7)
    theirs = _torch_pair(torch, ours)
    for _ in range(4):
        x = gen.standard_normal((12, 7)) * 3 + 2
        dout = gen.standard_normal((12, 7))
        t = torch.tensor(x, requires_grad=True)
        y = theirs(t)
        y.backward(torch.tensor(dout))
        np.testing.assert_allclose(ours.forward(x), y.detach().numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ours.backward(dout), t.grad.numpy(), rtol=1e-10, atol=1e-12)
        for name, g in ours.grads.items():
            ref = getattr(theirs, {"gamma": "weight", "beta": "bias"}[name]).grad
            np.testing.assert_allclose(g, ref.numpy(), rtol=1e-10, atol=1e-12)
            ref.zero_()
        for name, buf in ours.buffers.items():
            np.testing.assert_allclose(buf, getattr(theirs, name).numpy(), rtol=1e-13)
    ours.eval()
    theirs.eval()
    x = gen.standard_normal((5, 7))
    with torch.no_grad():
        np.testing.assert_allclose(ours.forward(x), theirs(torch.tensor(x)).numpy(), rtol=1e-12,
                                   atol=1e-12)


def test_batchnorm1d_float32_matches_float64():
    gen = np.random.default_rng(4)
    x = gen.standard_normal((33, 9)) + 100
    a, b = nn.BatchNorm1d(9, dtype=np.float32), nn.BatchNorm1d(9, dtype=np.float64)
    np.testing.assert_allclose(a.forward(x.astype(np.float32)), b.forward(x), atol=2e-4)
    assert a.forward(x.astype(np.float32)).dtype == np.float32
    np.testing.assert_allclose(a.buffers["running_mean"], b.buffers["running_mean"] * 1.9,
                               rtol=1e-5)  # two steps of momentum 0.1 vs one


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_mlp_with_norm_passes_a_gradient_check(norm):
    model = _mlp([5, 8, 6, 3], norm=norm, seed=2)
    assert [type(layer).__name__ for layer in model.layers] == [
        "Linear", nn.NORMS[norm].__name__, "ReLU", "Linear", nn.NORMS[norm].__name__, "ReLU",
        "Linear"]
    gen = np.random.default_rng(5)
    x, y = gen.standard_normal((7, 5)), gen.integers(0, 3, 7)
    report = check_model_gradients(model, x, y, h=1e-6)
    assert {"1.gamma", "1.beta", "4.gamma", "4.beta"} <= {e.name for e in report}
    for entry in report:
        assert entry.max_rel_error < 1e-6 or entry.max_abs_error < 1e-9, str(report)


def test_train_and_eval_propagate_and_predict_runs_in_eval_mode():
    model = _mlp([4, 6, 3], norm="batch")
    bn = model.layers[1]
    assert model.training and bn.training
    model.eval()
    assert not model.training and not bn.training and not model.layers[2].training
    assert model.train() is model and bn.training
    gen = np.random.default_rng(6)
    x = gen.standard_normal((10, 4))
    before = {k: v.copy() for k, v in model.buffers.items()}
    model.predict(x[:1])  # one row: only possible in eval mode
    model.predict_proba(x)
    model.evaluate(x, gen.integers(0, 3, 10))
    assert bn.training and model.training  # the training flags are restored
    outer = nn.Sequential(model)
    outer.layers[0].layers[2].eval()
    outer.predict(x)
    assert [layer.training for layer in model.layers] == [True, True, False, True]
    for k, v in model.buffers.items():
        np.testing.assert_array_equal(v, before[k])  # inference never updates running stats


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_norm_models_save_and_load_with_running_statistics(tmp_path, norm):
    from fastbp.io import load_model, save_model

    gen = np.random.default_rng(8)
    model = _mlp([6, 5, 3], norm=norm, dtype=np.float32)
    for _ in range(3):
        model.train_step(gen.standard_normal((9, 6)), gen.integers(0, 3, 9),
                         nn.SoftmaxCrossEntropy(), optim.SGD(lr=0.1))
    if norm == "batch":
        assert set(model.buffers) == {"1.running_mean", "1.running_var"}
        assert not np.array_equal(model.buffers["1.running_var"], np.ones(5))
    x = gen.standard_normal((4, 6))
    expected = model.predict_proba(x)
    model.save(tmp_path / "p.npz")
    fresh = _mlp([6, 5, 3], norm=norm, dtype=np.float32, seed=99).load(tmp_path / "p.npz")
    save_model(tmp_path / "m.npz", model)
    loaded, meta = load_model(tmp_path / "m.npz")
    assert meta["architecture"]["norm"] == norm and loaded.norm == norm
    for other in (fresh, loaded):
        for name, v in model.state_dict().items():
            np.testing.assert_array_equal(other.state_dict()[name], v)
        np.testing.assert_array_equal(other.predict_proba(x), expected)


@pytest.mark.parametrize("make, exc, match", [
    (lambda: nn.BatchNorm1d(4, momentum=1.5), ValueError, r"momentum.*\[0, 1\]"),
    (lambda: nn.BatchNorm1d(4, momentum=None), TypeError, "momentum"),
    (lambda: nn.BatchNorm1d(4, eps=-1e-5), ValueError, "eps"),
    (lambda: nn.LayerNorm(0), ValueError, "num_features"),
    (lambda: nn.BatchNorm1d(4, dtype=np.int32), TypeError, "dtype"),
    (lambda: nn.MLP([3, 4, 2], norm="group"), ValueError, "norm must be"),
    (lambda: nn.BatchNorm1d(4).forward(np.ones((1, 4), np.float32)), ValueError, "more than 1"),
    (lambda: nn.BatchNorm1d(4).forward(np.ones((3, 5), np.float32)), ValueError, r"\(N, 4\)"),
    (lambda: nn.BatchNorm1d(4).backward(np.ones((3, 4))), RuntimeError, "forward in training"),
    (lambda: nn.LayerNorm(4).backward(np.ones((3, 4))), RuntimeError, "forward in training"),
])
def test_norm_layers_reject_bad_input(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_batchnorm1d_eval_forward_then_backward_is_refused():
    bn = nn.BatchNorm1d(3, dtype=np.float64)
    bn.forward(np.arange(6.0).reshape(2, 3))
    bn.eval()
    bn.forward(np.ones((1, 3)))
    with pytest.raises(RuntimeError, match="eval-mode forward"):
        bn.backward(np.ones((1, 3)))
