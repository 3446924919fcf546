"""fastbp.nn: layers, losses, containers, save/load, bad input (the fused train_step: test_step.py)."""

import numpy as np
import pytest
from helpers import assert_close, layer_variants

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
