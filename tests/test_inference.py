"""The fused inference forward (Sequential.inference_forward, predict, predict_proba, evaluate,
fastbp.sklearn's predict path) against the layer-by-layer path, including after model edits."""

import numpy as np
import pytest
from helpers import DTYPES, param_variants, variants

from fastbp import _specs, nn, set_num_threads
from fastbp.backend import use_backend

#: (activation, kwargs) covering every fused activation code, from the spec table
ACTIVATIONS = [(name, kw) for name, row in _specs.ACTIVATIONS.items() for kw in param_variants(row)]

#: fused vs layer-by-layer: the same GEMM, the epilogue in another order of rounding at most
CLOSE = {np.dtype(np.float32): dict(rtol=1e-5, atol=1e-6),
         np.dtype(np.float64): dict(rtol=1e-12, atol=1e-13)}


def unfused(model, x):
    """The layer-by-layer outputs (Sequential.forward in inference mode), copied."""
    modes = [(layer, layer.training) for layer in model.layers]
    model.eval()
    try:
        return np.array(model.forward(x), copy=True)
    finally:
        for layer, mode in modes:
            layer.training = mode


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def fused_was_used(model):
    """True when no Linear layer kept an input: the fused path keeps nothing for backward."""
    return all(layer._x is None for layer in model.layers if isinstance(layer, nn.Linear))


def check_against_unfused(model, x):
    dtype = np.dtype(model.dtype)
    expected = unfused(model, x)
    for layer in model.layers:  # forget what forward kept, to see which path runs next
        if isinstance(layer, nn.Linear):
            layer._x = None
    got = model.inference_forward(x)
    assert got.dtype == dtype and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, **CLOSE[dtype])
    np.testing.assert_allclose(model.predict_proba(x, batch_size=5), softmax(expected),
                               **CLOSE[dtype])
    np.testing.assert_array_equal(model.predict(x, batch_size=4),
                                  model.inference_forward(x).argmax(axis=1))
    return got


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation,kwargs", ACTIVATIONS)
def test_fused_inference_equals_layer_by_layer(activation, kwargs, dtype, rng):
    model = nn.MLP([7, 13, 9, 3], activation=activation, dtype=dtype, rng=0, **kwargs)
    for layer in model.layers:  # non-zero biases, so a missed bias would show
        if isinstance(layer, nn.Linear):
            layer.params["b"][...] = rng.standard_normal(layer.out_features)
    x = rng.standard_normal((11, 7)).astype(dtype)
    check_against_unfused(model, x)
    assert fused_was_used(model)


@pytest.mark.parametrize("threads", (1, 2))
def test_fused_inference_input_variants_and_threads(threads, rng):
    model = nn.MLP([33, 64, 10], rng=1)
    x = rng.standard_normal((70, 33)).astype(np.float32)
    expected = unfused(model, x)
    set_num_threads(threads)
    try:
        for name, xv in {**variants(x), "float64": x.astype(np.float64),
                         "list": x.tolist()}.items():
            np.testing.assert_allclose(model.inference_forward(xv), expected,
                                       **CLOSE[np.dtype(np.float32)], err_msg=name)
    finally:
        set_num_threads(None)


def test_fused_inference_on_the_numpy_backend(rng):
    model = nn.MLP([6, 8, 4], activation="gelu", dtype=np.float64, rng=2)
    x = rng.standard_normal((9, 6))
    compiled = model.predict_proba(x)
    with use_backend("numpy"):
        np.testing.assert_allclose(model.predict_proba(x), compiled, rtol=1e-12, atol=1e-14)


def test_fused_inference_after_model_edits(rng):
    """Every edit between calls is seen: the plan is derived from the current layers."""
    model = nn.MLP([5, 8, 8, 4], activation="leaky_relu", dtype=np.float64, rng=3)
    x = rng.standard_normal((10, 5))
    first = check_against_unfused(model, x).copy()
    model.layers[1].alpha = 0.5  # an activation's parameter
    assert not np.allclose(check_against_unfused(model, x), first)
    model.layers[3] = nn.Tanh()  # another activation
    check_against_unfused(model, x)
    lin = model.layers[2]
    lin.params["W"] = rng.standard_normal((8, 8))  # a new parameter array
    check_against_unfused(model, x)
    lin.params["W"] *= -2.0  # in place
    lin.params["b"] += 1.0
    check_against_unfused(model, x)
    model.layers[4] = nn.Linear(8, 6, dtype=np.float64, rng=4)  # another output size
    assert check_against_unfused(model, x).shape == (10, 6)
    assert fused_was_used(model)
    model.layers[1].alpha = -0.5  # a negative slope does not fuse: layer by layer
    check_against_unfused(model, x)
    assert not fused_was_used(model)
    model.layers[1].alpha = 0.5
    model.layers.insert(1, nn.BatchNorm1d(8, dtype=np.float64))  # a norm layer: fused too
    model.layers[1].buffers["running_mean"][...] = 0.3  # (with its running statistics)
    with_norm = check_against_unfused(model, x).copy()
    assert fused_was_used(model)
    model.layers[1].buffers["running_var"] = np.full(8, 4.0)  # a new buffer array
    assert not np.allclose(check_against_unfused(model, x), with_norm)
    model.layers[1].eps = 0.5
    check_against_unfused(model, x)
    assert fused_was_used(model)
    del model.layers[1]
    check_against_unfused(model, x)
    assert fused_was_used(model)


def test_user_layers_run_layer_by_layer(rng):
    class Doubled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    model = nn.Sequential(Doubled(4, 3, dtype=np.float64, rng=0), nn.ReLU(),
                          nn.Linear(3, 2, dtype=np.float64, rng=1))
    x = rng.standard_normal((5, 4))
    plain = nn.Sequential(model.layers[0], model.layers[1], model.layers[2])
    h = np.maximum(2 * (x @ model.layers[0].params["W"] + model.layers[0].params["b"]), 0)
    expected = h @ model.layers[2].params["W"] + model.layers[2].params["b"]
    np.testing.assert_allclose(plain.inference_forward(x), expected, rtol=1e-12)


def test_batch_sizes_and_read_only_parameters(rng):
    model = nn.MLP([6, 10, 3], dtype=np.float64, rng=5)
    for p in model.params.values():
        p.setflags(write=False)  # inference writes no parameter
    x = rng.standard_normal((23, 6))
    expected = softmax(unfused(model, x))
    for batch_size in (1, 4, 23, 100):  # last partial batches, buffers of several sizes
        np.testing.assert_allclose(model.predict_proba(x, batch_size=batch_size), expected,
                                   rtol=1e-12, atol=1e-14)
    loss, acc = model.evaluate(x, np.arange(23) % 3, batch_size=7)
    labels = np.arange(23) % 3
    np.testing.assert_allclose(loss, -np.mean(np.log(expected[np.arange(23), labels])),
                               rtol=1e-12)
    assert acc == np.mean(expected.argmax(axis=1) == labels)
    assert model.predict_proba(np.empty((0, 6))).shape == (0, 3)  # (0, C): issue 10


def test_bad_input_is_rejected(rng):
    model = nn.MLP([6, 10, 3], rng=5)
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 6\)"):
        model.inference_forward(np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 6\)"):
        model.predict_proba(np.zeros(6, np.float32))
    with pytest.raises(TypeError):
        model.inference_forward(np.array([["a"] * 6]))


@pytest.mark.parametrize("activation", ("identity", "logistic", "tanh", "relu", "gelu"))
@pytest.mark.parametrize("kind", ("multiclass", "binary", "regression"))
def test_sklearn_predict_equals_numpy_forward(activation, kind, rng):
    pytest.importorskip("sklearn", minversion="1.6")
    import fastbp.sklearn as fsk
    from scipy.special import expit

    X = rng.standard_normal((60, 5))
    y = {"multiclass": np.arange(60) % 3, "binary": np.arange(60) % 2,
         "regression": X[:, 0] - X[:, 1]}[kind]
    cls = fsk.MLPRegressor if kind == "regression" else fsk.MLPClassifier
    est = cls(hidden_layer_sizes=(7, 6), activation=activation, max_iter=3, dtype="float64",
              random_state=0).fit(X, y)
    hidden = {"identity": lambda z: z, "logistic": expit, "tanh": np.tanh,
              "relu": lambda z: np.maximum(z, 0),
              "gelu": lambda z: nn.GELU().forward(z).copy()}[activation]
    h = X
    for i, (w, b) in enumerate(zip(est.coefs_, est.intercepts_)):
        h = h @ w + b
        if i < len(est.coefs_) - 1:
            h = hidden(h)
    if kind == "regression":
        np.testing.assert_allclose(est.predict(X), h.ravel(), rtol=1e-10, atol=1e-12)
        return
    proba = softmax(h) if kind == "multiclass" else np.hstack([1 - expit(h), expit(h)])
    np.testing.assert_allclose(est.predict_proba(X), proba, rtol=1e-10, atol=1e-12)
    assert est.predict_proba(X.astype(np.float32)).dtype == np.float32
