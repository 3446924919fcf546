"""fastbp.models: the course's TwoLayerNet / FullyConnectedNet / Solver, with the course's numbers.

Every published constant used here is first recomputed by an inline NumPy forward pass (the
course's own formulas), so a wrong constant cannot hide a wrong model or vice versa.
"""

import math
import pickle

import numpy as np
import pytest

import fastbp
import fastbp.data
from fastbp.gradcheck import eval_numerical_gradient, rel_error
from fastbp.models import FullyConnectedNet, Solver, TwoLayerNet

# --------------------------------------------------------------------------------------------
# inline NumPy twins of the course models (no fastbp code)


def _softmax_loss(scores, y):
    z = scores - scores.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(y)), y].mean()


def _mlp_scores(params, X, num_layers):
    h = X.reshape(len(X), -1)
    for layer in range(1, num_layers):
        h = np.maximum(h @ params[f"W{layer}"] + params[f"b{layer}"], 0)
    return h @ params[f"W{num_layers}"] + params[f"b{num_layers}"]


def _mlp_loss(params, X, y, num_layers, reg):
    l2 = sum(np.sum(params[f"W{layer}"] ** 2) for layer in range(1, num_layers + 1))
    return _softmax_loss(_mlp_scores(params, X, num_layers), y) + 0.5 * reg * l2


# --------------------------------------------------------------------------------------------
# TwoLayerNet


def _course_two_layer_net():
    """The CS231n FullyConnectedNets notebook's TwoLayerNet test set-up."""
    N, D, H, C = 3, 5, 50, 7
    model = TwoLayerNet(input_dim=D, hidden_dim=H, num_classes=C, weight_scale=1e-3)
    model.params["W1"] = np.linspace(-0.7, 0.3, num=D * H).reshape(D, H)
    model.params["b1"] = np.linspace(-0.1, 0.9, num=H)
    model.params["W2"] = np.linspace(-0.3, 0.4, num=H * C).reshape(H, C)
    model.params["b2"] = np.linspace(-0.9, 0.1, num=C)
    X = np.linspace(-5.5, 4.5, num=N * D).reshape(D, N).T
    return model, X, np.asarray([0, 5, 1])


COURSE_SCORES = np.asarray([
    [11.53165108, 12.2917344, 13.05181771, 13.81190102, 14.57198434, 15.33206765, 16.09215096],
    [12.05769098, 12.74614105, 13.43459113, 14.1230412, 14.81149128, 15.49994135, 16.18839143],
    [12.58373087, 13.20054771, 13.81736455, 14.43418138, 15.05099822, 15.66781506, 16.2846319],
])
COURSE_LOSS = {0.0: 3.4702243556, 1.0: 26.5948426952}


def test_two_layer_net_course_constants_are_what_the_formulas_give():
    model, X, y = _course_two_layer_net()
    scores = _mlp_scores(model.params, X, 2)
    assert np.max(np.abs(scores - COURSE_SCORES)) < 1e-8
    for reg, loss in COURSE_LOSS.items():
        assert rel_error(_mlp_loss(model.params, X, y, 2, reg), loss) < 1e-10


def test_two_layer_net_course_check():
    model, X, y = _course_two_layer_net()
    scores = model.loss(X)
    assert np.abs(scores - COURSE_SCORES).sum() < 1e-6  # the notebook's criterion
    assert rel_error(scores[0], COURSE_SCORES[0]) < 1e-8
    loss, grads = model.loss(X, y)
    assert abs(loss - COURSE_LOSS[0.0]) < 1e-10
    assert rel_error(loss, COURSE_LOSS[0.0]) < 1e-6
    model.reg = 1.0
    loss, grads = model.loss(X, y)
    assert abs(loss - COURSE_LOSS[1.0]) < 1e-10
    assert rel_error(loss, COURSE_LOSS[1.0]) < 1e-10
    assert set(grads) == {"W1", "b1", "W2", "b2"}


def test_two_layer_net_init_follows_the_global_random_state():
    D, H, C, std = 40, 30, 9, 1e-3
    np.random.seed(0)
    model = TwoLayerNet(input_dim=D, hidden_dim=H, num_classes=C, weight_scale=std)
    np.random.seed(0)
    W1 = std * np.random.randn(D, H)
    W2 = std * np.random.randn(H, C)
    np.testing.assert_array_equal(model.params["W1"], W1)
    np.testing.assert_array_equal(model.params["W2"], W2)
    np.testing.assert_array_equal(model.params["b1"], np.zeros(H))
    np.testing.assert_array_equal(model.params["b2"], np.zeros(C))
    # the notebook's sanity checks on the statistics
    assert abs(model.params["W1"].std() - std) < std / 10
    assert abs(model.params["W2"].std() - std) < std / 10
    assert model.params["W1"].dtype == np.float64


@pytest.mark.parametrize("reg", [0.0, 0.7])
def test_two_layer_net_gradients(reg):
    # the notebook's check, on the course set-up's parameters and inputs
    model, X, y = _course_two_layer_net()
    model.reg = reg
    loss, grads = model.loss(X, y)
    assert rel_error(loss, _mlp_loss(model.params, X, y, 2, reg)) < 1e-12
    for name in sorted(grads):
        num = eval_numerical_gradient(lambda _: model.loss(X, y)[0], model.params[name],
                                      verbose=False)
        assert rel_error(num, grads[name]) < 1e-6, name


# --------------------------------------------------------------------------------------------
# FullyConnectedNet


def _fc_model(keep=1, reg=0.0, seed=123, dtype=np.float64, weight_scale=5e-2, dims=(20, 30),
              D=15, C=10):
    return FullyConnectedNet(list(dims), input_dim=D, num_classes=C, reg=reg,
                             weight_scale=weight_scale, dtype=dtype,
                             dropout_keep_ratio=keep, seed=seed)


def test_fc_net_course_initial_losses():
    # the notebook's cell: np.random.seed(231) draws the data, then both models' weights in turn
    np.random.seed(231)
    N, D, H1, H2, C = 2, 15, 20, 30, 10
    X = np.random.randn(N, D)
    y = np.random.randint(C, size=(N,))
    for reg, published in [(0, 2.3004790897684924), (3.14, 7.052114776533016)]:
        model = FullyConnectedNet([H1, H2], input_dim=D, num_classes=C, reg=reg,
                                  weight_scale=5e-2, dtype=np.float64)
        loss, _ = model.loss(X, y)
        expected = _mlp_loss(model.params, X, y, 3, reg)
        assert rel_error(expected, published) < 1e-12  # the constant is what the formula gives
        assert rel_error(loss, published) < 1e-12


def test_fc_net_initial_loss_is_log_c_for_tiny_weights():
    np.random.seed(0)
    model = _fc_model(weight_scale=1e-4, C=10)
    X = np.random.randn(50, 15)
    y = np.random.randint(10, size=50)
    loss, _ = model.loss(X, y)
    assert abs(loss - math.log(10)) < 1e-4


# Data seed 11 keeps every ReLU pre-activation away from its kink for all six models below.
# The check is at h = 1e-5, so a pre-activation within ~1e-5 of 0 gives a one-sided slope; with
# keep ratio 0.25 a sample can lose every unit of a layer, leaving the next pre-activation at
# b = 0 exactly.  That is why the course prints errors up to ~1e-5 for its own seed; here the
# strict 1e-6 holds for every parameter.
@pytest.mark.parametrize("keep", [1, 0.25, 0.5])
@pytest.mark.parametrize("reg", [0.0, 3.14])
def test_fc_net_gradients(keep, reg):
    N, D, C = 2, 15, 10
    rng = np.random.default_rng(11)
    X = rng.standard_normal((N, D))
    y = rng.integers(C, size=N)
    np.random.seed(11)
    model = _fc_model(keep=keep, reg=reg, seed=123)
    loss, grads = model.loss(X, y)
    assert set(grads) == set(model.params) == {"W1", "b1", "W2", "b2", "W3", "b3"}
    if keep == 1:
        assert rel_error(loss, _mlp_loss(model.params, X, y, 3, reg)) < 1e-12
    for name in sorted(model.params):
        num = eval_numerical_gradient(lambda _: model.loss(X, y)[0], model.params[name],
                                      verbose=False)
        assert rel_error(num, grads[name]) < 1e-6, name


def test_fc_net_init_order_shapes_and_dtype():
    np.random.seed(3)
    model = FullyConnectedNet([7, 5], input_dim=11, num_classes=4, weight_scale=0.1)
    np.random.seed(3)
    for layer, shape in enumerate([(11, 7), (7, 5), (5, 4)], start=1):
        W = (0.1 * np.random.randn(*shape)).astype(np.float32)
        np.testing.assert_array_equal(model.params[f"W{layer}"], W)
        np.testing.assert_array_equal(model.params[f"b{layer}"], np.zeros(shape[1], np.float32))
    assert all(p.dtype == np.float32 for p in model.params.values())
    assert model.num_layers == 3 and model.dtype is np.float32
    assert model.use_dropout is False and model.dropout_param == {} and model.bn_params == []


def test_fc_net_float32_is_respected_and_close_to_float64():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((16, 15))
    y = rng.integers(10, size=16)
    np.random.seed(5)
    m32 = _fc_model(dtype=np.float32, reg=0.1)
    m64 = _fc_model(dtype=np.float64, reg=0.1)
    m64.params = {k: v.astype(np.float64) for k, v in m32.params.items()}
    scores = m32.loss(X)
    loss, grads = m32.loss(X, y)
    assert scores.dtype == np.float32 and np.asarray(loss).dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads.values())
    loss64, grads64 = m64.loss(X, y)
    assert abs(loss - loss64) < 1e-5 * abs(loss64)
    for name in grads:
        np.testing.assert_allclose(grads[name], grads64[name], rtol=1e-3, atol=1e-6)


def test_fc_net_softmax_regression_without_hidden_layers():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((4, 6))
    y = rng.integers(3, size=4)
    model = FullyConnectedNet([], input_dim=6, num_classes=3, dtype=np.float64, reg=0.5)
    loss, grads = model.loss(X, y)
    assert set(grads) == {"W1", "b1"}
    assert rel_error(loss, _mlp_loss(model.params, X, y, 1, 0.5)) < 1e-12


def test_fc_net_reads_params_live():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((5, 15))
    y = rng.integers(10, size=5)
    model = _fc_model()
    loss0, _ = model.loss(X, y)
    model.params["W2"] = model.params["W2"] * 3  # rebinding (what Solver does)
    loss1, _ = model.loss(X, y)
    model.params["b3"][0] += 1.0  # in place (what the numerical gradient check does)
    loss2, _ = model.loss(X, y)
    assert loss0 != loss1 != loss2
    assert rel_error(loss2, _mlp_loss(model.params, X, y, 3, 0.0)) < 1e-12


def test_fc_net_dropout_modes_and_seeding():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((8, 15))
    y = rng.integers(10, size=8)
    np.random.seed(0)
    plain = _fc_model()
    dropped = _fc_model(keep=0.5, seed=7)
    dropped.params = {k: v.copy() for k, v in plain.params.items()}
    assert dropped.use_dropout and dropped.dropout_param == {"mode": "train", "p": 0.5, "seed": 7}
    # test mode (y None) turns dropout off: the scores are the plain network's
    np.testing.assert_array_equal(dropped.loss(X), plain.loss(X))
    assert dropped.dropout_param["mode"] == "test"
    # train mode: seeded, so deterministic, and different from no dropout
    a, _ = dropped.loss(X, y)
    b, _ = dropped.loss(X, y)
    assert dropped.dropout_param["mode"] == "train"
    assert a == b and a != plain.loss(X, y)[0]
    # unseeded: fresh masks every call, reproducible through np.random.seed
    unseeded = _fc_model(keep=0.5, seed=None)
    np.random.seed(1)
    c, _ = unseeded.loss(X, y)
    d, _ = unseeded.loss(X, y)
    np.random.seed(1)
    e, _ = unseeded.loss(X, y)
    assert c != d and c == e


def test_fc_net_dropout_masks_follow_the_documented_seeds():
    # hidden layer l uses dropout seed `seed + l - 1`: recompute the loss with the layer API
    from fastbp.layers import dropout_forward

    rng = np.random.default_rng(6)
    X = rng.standard_normal((7, 15))
    y = rng.integers(10, size=7)
    model = _fc_model(keep=0.5, seed=40, dims=(25, 25), reg=0.2)
    loss, _ = model.loss(X, y)
    h, p = X, model.params
    for layer in (1, 2):
        h = np.maximum(h @ p[f"W{layer}"] + p[f"b{layer}"], 0)
        h, _ = dropout_forward(h, {"mode": "train", "p": 0.5, "seed": 40 + layer - 1})
    l2 = sum(np.sum(p[f"W{layer}"] ** 2) for layer in (1, 2, 3))
    expected = _softmax_loss(h @ p["W3"] + p["b3"], y) + 0.5 * 0.2 * l2
    assert rel_error(loss, expected) < 1e-12


@pytest.mark.parametrize("backend", ["numpy", "checked"])
@pytest.mark.parametrize("keep", [1, 0.5])
def test_fc_net_backends_agree(backend, keep):
    rng = np.random.default_rng(4)
    X = rng.standard_normal((9, 15))
    y = rng.integers(10, size=9)
    np.random.seed(4)
    model = _fc_model(keep=keep, reg=0.3)
    loss, grads = model.loss(X, y)
    scores = model.loss(X)
    with fastbp.use_backend(backend):
        loss_b, grads_b = model.loss(X, y)
        scores_b = model.loss(X)
    assert rel_error(loss_b, loss) < 1e-12
    np.testing.assert_allclose(scores_b, scores, rtol=1e-12, atol=1e-14)
    for name in grads:
        np.testing.assert_allclose(grads_b[name], grads[name], rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------------------------
# FullyConnectedNet with batch / layer normalization


def _course_norm_problem():
    """The BatchNormalization notebook's gradient-check problem (np.random.seed(231))."""
    np.random.seed(231)
    N, D, H1, H2, C = 2, 15, 20, 30, 10
    X = np.random.randn(N, D)
    y = np.random.randint(C, size=(N,))
    return X, y, dict(input_dim=D, num_classes=C, weight_scale=5e-2, dtype=np.float64)


def _norm_net_loss(params, X, y, normalization, reg, eps=1e-5):
    """Inline NumPy forward of {affine - norm - relu} x 2 - affine - softmax (course formulas)."""
    h = X
    for layer in (1, 2):
        a = h @ params[f"W{layer}"] + params[f"b{layer}"]
        axis = 0 if normalization == "batchnorm" else 1
        a = (a - a.mean(axis, keepdims=True)) / np.sqrt(a.var(axis, keepdims=True) + eps)
        h = np.maximum(a * params[f"gamma{layer}"] + params[f"beta{layer}"], 0)
    l2 = sum(np.sum(params[f"W{layer}"] ** 2) for layer in (1, 2, 3))
    return _softmax_loss(h @ params["W3"] + params["b3"], y) + 0.5 * reg * l2


def test_fc_net_batchnorm_reproduces_the_course_initial_losses():
    """CS231n BatchNormalization.ipynb, 'Fully Connected Nets with Batch Normalization': the
    published initial losses, recomputed inline first.  As in the notebook, the reg = 3.14
    model is built after the reg = 0 one (its weights are the next random draws)."""
    X, y, kw = _course_norm_problem()
    for reg, published in ((0, 2.2611955101340957), (3.14, 6.996533220108303)):
        model = FullyConnectedNet([20, 30], reg=reg, normalization="batchnorm", **kw)
        loss, _ = model.loss(X, y)
        inline = _norm_net_loss(model.params, X, y, "batchnorm", reg)
        assert inline == pytest.approx(published, rel=1e-13)
        assert loss == pytest.approx(published, rel=1e-13)


@pytest.mark.parametrize("normalization", ["batchnorm", "layernorm"])
@pytest.mark.parametrize("reg", [0, 3.14])
def test_fc_net_with_normalization_passes_the_course_gradient_check(normalization, reg):
    """The notebook's check: W errors up to ~1e-4 (its published W1 error is 1.10e-04, a net
    of 2 samples), b ~1e-8, gamma / beta ~1e-8 ("1e-08~1e-09"; up to ~1e-5 here where a
    difference step crosses a ReLU kink in the layer-norm net).  A wrong gradient is ~1e-1."""
    X, y, kw = _course_norm_problem()
    model = FullyConnectedNet([20, 30], reg=reg, normalization=normalization, **kw)
    loss, grads = model.loss(X, y)
    assert loss == pytest.approx(_norm_net_loss(model.params, X, y, normalization, reg),
                                 rel=1e-12)
    expected = ["W1", "b1", "gamma1", "beta1", "W2", "b2", "gamma2", "beta2", "W3", "b3"]
    assert sorted(grads) == sorted(model.params) == sorted(expected)
    limits = {"W": 2e-4, "b": 1e-5}
    for name in sorted(grads):
        num = eval_numerical_gradient(lambda _: model.loss(X, y)[0], model.params[name],
                                      verbose=False, h=1e-5)
        assert rel_error(num, grads[name]) < limits.get(name[0], 3e-5), name


def test_fc_net_batchnorm_modes_and_running_statistics():
    X, y, kw = _course_norm_problem()
    model = FullyConnectedNet([20, 30], normalization="batchnorm", **kw)
    assert [p["mode"] for p in model.bn_params] == ["train", "train"]
    model.loss(X, y)
    assert all(set(p) >= {"running_mean", "running_var"} for p in model.bn_params)
    running = [p["running_mean"].copy() for p in model.bn_params]
    scores = model.loss(X)  # test mode: normalizes with the running statistics, updates none
    assert [p["mode"] for p in model.bn_params] == ["test", "test"]
    for p, r in zip(model.bn_params, running):
        np.testing.assert_array_equal(p["running_mean"], r)
    a = X @ model.params["W1"] + model.params["b1"]
    p = model.bn_params[0]
    h = np.maximum((a - p["running_mean"]) / np.sqrt(p["running_var"] + 1e-5), 0)
    a = h @ model.params["W2"] + model.params["b2"]
    p = model.bn_params[1]
    h = np.maximum((a - p["running_mean"]) / np.sqrt(p["running_var"] + 1e-5), 0)
    np.testing.assert_allclose(scores, h @ model.params["W3"] + model.params["b3"], rtol=1e-12)
    assert FullyConnectedNet([5], normalization="layernorm").bn_params == [{}]


@pytest.mark.parametrize("normalization", ["batchnorm", "layernorm"])
def test_solver_trains_a_normalized_net(normalization):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 12))
    y = (X[:, :3].sum(1) > 0).astype(np.int64) + 2 * (X[:, 3] > 0)
    data = {"X_train": X[:150], "y_train": y[:150], "X_val": X[150:], "y_val": y[150:]}
    np.random.seed(0)
    model = FullyConnectedNet([32, 32], input_dim=12, num_classes=4, weight_scale=5e-2,
                              normalization=normalization, dtype=np.float64)
    solver = Solver(model, data, update_rule="adam", optim_config={"learning_rate": 1e-2},
                    num_epochs=15, batch_size=25, verbose=False)
    solver.train()
    assert np.mean(solver.loss_history[-6:]) < 0.5 * solver.loss_history[0]
    assert solver.best_val_acc > 0.7


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"normalization": "groupnorm"}, ValueError, "normalization"),
        ({"hidden_dims": [10, 0]}, ValueError, r"hidden_dims\[1\]"),
        ({"hidden_dims": [10, 2.5]}, TypeError, r"hidden_dims\[1\]"),
        ({"hidden_dims": 10}, TypeError, "hidden_dims"),
        ({"input_dim": 0}, ValueError, "input_dim"),
        ({"num_classes": -3}, ValueError, "num_classes"),
        ({"reg": -1.0}, ValueError, "reg"),
        ({"weight_scale": 0.0}, ValueError, "weight_scale"),
        ({"dropout_keep_ratio": 0.0}, ValueError, "dropout_keep_ratio"),
        ({"dropout_keep_ratio": 1.5}, ValueError, "dropout_keep_ratio"),
        ({"dtype": np.int32}, ValueError, "dtype"),
        ({"dtype": np.float16}, ValueError, "dtype"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": "abc"}, TypeError, "seed"),
    ],
)
def test_fc_net_rejects_bad_arguments(kwargs, error, match):
    args = {"hidden_dims": [10], "input_dim": 8, **kwargs}
    with pytest.raises(error, match=match):
        FullyConnectedNet(**args)


@pytest.mark.parametrize(
    "kwargs, error",
    [({"input_dim": 0}, ValueError), ({"hidden_dim": 1.5}, TypeError),
     ({"weight_scale": -1e-3}, ValueError), ({"reg": float("nan")}, ValueError)],
)
def test_two_layer_net_rejects_bad_arguments(kwargs, error):
    with pytest.raises(error):
        TwoLayerNet(**kwargs)


# --------------------------------------------------------------------------------------------
# Solver


@pytest.fixture(scope="module")
def digits():
    X, y = fastbp.data.load_digits()
    return {"X_train": X[:50], "y_train": y[:50], "X_val": X[50:150], "y_val": y[50:150]}


def _small_data(seed=0, n_train=20, n_val=10, D=6, C=3):
    rng = np.random.default_rng(seed)
    return {
        "X_train": rng.standard_normal((n_train, D)), "y_train": rng.integers(C, size=n_train),
        "X_val": rng.standard_normal((n_val, D)), "y_val": rng.integers(C, size=n_val),
    }


@pytest.mark.parametrize(
    "update_rule, learning_rate, weight_scale, num_epochs",
    [("sgd", 0.2, 0.1, 50), ("adam", 5e-3, 0.1, 30)],
)
def test_solver_overfits_50_digits(digits, update_rule, learning_rate, weight_scale, num_epochs):
    np.random.seed(0)
    model = FullyConnectedNet([100, 100], input_dim=64, num_classes=10,
                              weight_scale=weight_scale)
    solver = Solver(model, digits, update_rule=update_rule,
                    optim_config={"learning_rate": learning_rate}, num_epochs=num_epochs,
                    batch_size=25, verbose=False)
    solver.train()
    assert solver.train_acc_history[-1] == 1.0
    assert solver.loss_history[-1] < 0.1 * solver.loss_history[0]
    assert solver.best_val_acc == max(solver.val_acc_history) > 0.8


def test_solver_histories_and_best_params(digits):
    np.random.seed(1)
    model = FullyConnectedNet([30], input_dim=64, weight_scale=0.1)
    solver = Solver(model, digits, update_rule="sgd", optim_config={"learning_rate": 0.1},
                    num_epochs=6, batch_size=20, verbose=False)
    solver.train()
    # 50 // 20 = 2 iterations per epoch; accuracy at t = 0 and after each of the 6 epochs
    assert len(solver.loss_history) == 12
    assert len(solver.train_acc_history) == len(solver.val_acc_history) == 7
    assert solver.epoch == 6
    assert solver.best_val_acc == max(solver.val_acc_history)
    assert set(solver.best_params) == set(model.params)
    for name, value in solver.best_params.items():
        np.testing.assert_array_equal(model.params[name], value)
        assert model.params[name] is not value  # the snapshot stays independent
    assert solver.check_accuracy(digits["X_val"], digits["y_val"]) == solver.best_val_acc


def test_solver_follows_the_course_loop_exactly():
    # the course's _step with a plain NumPy sgd, replayed by hand from the same random state
    data = _small_data()

    def rule(w, dw, config):
        config.setdefault("learning_rate", 1e-2)
        return w - config["learning_rate"] * dw, config

    twin = TwoLayerNet(input_dim=6, hidden_dim=8, num_classes=3)
    np.random.seed(2)
    model = TwoLayerNet(input_dim=6, hidden_dim=8, num_classes=3, weight_scale=0.1)
    replay = {k: v.copy() for k, v in model.params.items()}
    solver = Solver(model, data, update_rule=rule, optim_config={"learning_rate": 0.5},
                    batch_size=5, verbose=False)
    state = np.random.get_state()
    solver._step()
    solver._step()
    np.random.set_state(state)
    for _ in range(2):
        twin.params = replay
        mask = np.random.choice(20, 5)
        loss, grads = twin.loss(data["X_train"][mask], data["y_train"][mask])
        replay = {k: v - 0.5 * grads[k] for k, v in replay.items()}
    for name in replay:
        np.testing.assert_allclose(model.params[name], replay[name], rtol=1e-12)
    assert solver.update_rule is rule
    assert solver.optim_configs["W1"] == {"learning_rate": 0.5}
    assert solver.optim_configs["W1"] is not solver.optim_configs["W2"]


def test_solver_lr_decay_and_per_parameter_configs():
    config = {"learning_rate": 0.1}
    solver = Solver(TwoLayerNet(input_dim=6, hidden_dim=4, num_classes=3), _small_data(),
                    optim_config=config, lr_decay=0.5, num_epochs=3, batch_size=10,
                    verbose=False)
    solver.train()
    assert config == {"learning_rate": 0.1}  # the caller's dict is copied, not modified
    for name in solver.model.params:
        assert solver.optim_configs[name]["learning_rate"] == pytest.approx(0.1 * 0.5**3)


def test_solver_prints_like_the_course(capsys):
    solver = Solver(TwoLayerNet(input_dim=6, hidden_dim=4, num_classes=3), _small_data(),
                    num_epochs=2, batch_size=10, print_every=3)
    solver.train()
    lines = capsys.readouterr().out.splitlines()
    iterations = [ln for ln in lines if ln.startswith("(Iteration")]
    epochs = [ln for ln in lines if ln.startswith("(Epoch")]
    assert [ln.split(")")[0] for ln in iterations] == ["(Iteration 1 / 4", "(Iteration 4 / 4"]
    assert iterations[0] == "(Iteration 1 / 4) loss: %f" % solver.loss_history[0]
    assert epochs[0] == "(Epoch 0 / 2) train acc: %f; val_acc: %f" % (
        solver.train_acc_history[0], solver.val_acc_history[0])
    assert len(epochs) == 3


def test_solver_writes_checkpoints(tmp_path):
    name = str(tmp_path / "ck")
    solver = Solver(TwoLayerNet(input_dim=6, hidden_dim=4, num_classes=3), _small_data(),
                    num_epochs=2, batch_size=10, checkpoint_name=name, verbose=False)
    solver.train()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ck_epoch_0.pkl", "ck_epoch_1.pkl", "ck_epoch_2.pkl"]
    with open(tmp_path / "ck_epoch_2.pkl", "rb") as f:
        checkpoint = pickle.load(f)
    assert checkpoint["epoch"] == 2
    assert checkpoint["loss_history"] == solver.loss_history
    assert checkpoint["update_rule"] is fastbp.optim.sgd
    assert set(checkpoint) == {
        "model", "update_rule", "lr_decay", "optim_config", "batch_size", "num_train_samples",
        "num_val_samples", "epoch", "loss_history", "train_acc_history", "val_acc_history"}
    assert isinstance(checkpoint["model"], TwoLayerNet)


def test_solver_check_accuracy_subsamples_and_batches():
    data = _small_data(n_train=250)
    model = TwoLayerNet(input_dim=6, hidden_dim=4, num_classes=3)
    solver = Solver(model, data, verbose=False)
    pred = np.argmax(model.loss(data["X_train"]), axis=1)
    full = np.mean(pred == data["y_train"])
    assert solver.check_accuracy(data["X_train"], data["y_train"], batch_size=7) == full
    np.random.seed(0)
    sub = solver.check_accuracy(data["X_train"], data["y_train"], num_samples=40)
    np.random.seed(0)
    mask = np.random.choice(250, 40)
    assert sub == np.mean(pred[mask] == data["y_train"][mask])


def test_solver_rejects_unknown_arguments_and_rules():
    model, data = TwoLayerNet(input_dim=6, hidden_dim=4, num_classes=3), _small_data()
    with pytest.raises(ValueError, match='Unrecognized arguments "learning_rate", "foo"'):
        Solver(model, data, learning_rate=1e-3, foo=1)
    for rule in ("nope", "_config", "np", "Adam", "SGD", 42):
        with pytest.raises(ValueError, match='Invalid update_rule "%s"' % rule):
            Solver(model, data, update_rule=rule)
    with pytest.raises(ValueError, match="y_val"):
        Solver(model, {k: v for k, v in data.items() if k != "y_val"})
    with pytest.raises(ValueError, match="batch_size"):
        Solver(model, data, batch_size=0)
    with pytest.raises(TypeError, match="optim_config"):
        Solver(model, data, optim_config=[("learning_rate", 1.0)])


@pytest.mark.parametrize("update_rule", ["sgd", "sgd_momentum", "rmsprop", "adam",
                                         "sgd_momentum_torch"])
def test_solver_runs_every_course_rule(update_rule):
    np.random.seed(0)
    model = FullyConnectedNet([8], input_dim=6, num_classes=3)
    solver = Solver(model, _small_data(), update_rule=update_rule, num_epochs=2, batch_size=10,
                    verbose=False)
    assert solver.update_rule is getattr(fastbp.optim, update_rule)
    solver.train()
    assert len(solver.loss_history) == 4
    assert all(p.dtype == np.float32 for p in model.params.values())
