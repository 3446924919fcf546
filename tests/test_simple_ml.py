"""fastbp.compat.simple_ml: the CMU 10-414 hw0 contracts.

Each function is checked against hw0 written out in NumPy below (batches in order, both
gradients before either update), by finite differences, against fastbp.layers, against hw0's
own published test values where the data to reproduce them is here (the MNIST training labels,
the t10k set), and for its error paths (parameters unchanged after a failed call).
"""

import gzip
import math
import os
import re
import struct
import types

import numpy as np
import pytest
from helpers import numerical_gradient_array

import fastbp
from fastbp import layers
from fastbp.compat import simple_ml
from fastbp.compat.simple_ml import (
    add,
    loss_err,
    nn_epoch,
    parse_mnist,
    softmax_loss,
    softmax_regression_epoch,
    softmax_regression_epoch_cpp,
    train_nn,
    train_softmax,
)
from fastbp.data import read_idx

# float32 after a few SGD steps, relative to the largest parameter entry
EPOCH_TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def assert_params_close(got, expected):
    tol = EPOCH_TOL[np.dtype(expected.dtype)]
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * np.abs(expected).max())


# ---------------------------------------------------------------------------------------------
# hw0, as its reference solution is written (plain NumPy)


def hw0_softmax_loss(Z, y):
    return np.mean(np.log(np.sum(np.exp(Z), axis=1)) - Z[np.arange(Z.shape[0]), y])


def hw0_loss_err(h, y):
    return hw0_softmax_loss(h, y), np.mean(h.argmax(axis=1) != y)


def hw0_softmax_regression_epoch(X, y, theta, lr=0.1, batch=100):
    for i in range(0, X.shape[0], batch):
        Xb, yb = X[i:i + batch], y[i:i + batch]
        Z = np.exp(Xb @ theta)
        Z /= Z.sum(axis=1, keepdims=True)
        Z[np.arange(len(yb)), yb] -= 1
        theta -= lr * (Xb.T @ Z) / len(Xb)


def hw0_nn_epoch(X, y, W1, W2, lr=0.1, batch=100, update_w2_first=False):
    for i in range(0, X.shape[0], batch):
        Xb, yb = X[i:i + batch], y[i:i + batch]
        B = len(Xb)
        Z1 = np.maximum(Xb @ W1, 0)
        G2 = np.exp(Z1 @ W2)
        G2 /= G2.sum(axis=1, keepdims=True)
        G2[np.arange(B), yb] -= 1
        if update_w2_first:  # the bug the contract rules out: G1 from the NEW W2
            W2 -= lr * (Z1.T @ G2) / B
        G1 = (Z1 > 0) * (G2 @ W2.T)
        dW1, dW2 = (Xb.T @ G1) / B, (Z1.T @ G2) / B
        W1 -= lr * dW1
        if not update_w2_first:
            W2 -= lr * dW2


def hw0_init_nn(n, hidden_dim, k):
    """train_nn's initialisation; the division kept in float32, as under NumPy 1 (hw0's)."""
    np.random.seed(0)
    W1 = np.random.randn(n, hidden_dim).astype(np.float32) / np.float32(np.sqrt(hidden_dim))
    W2 = np.random.randn(hidden_dim, k).astype(np.float32) / np.float32(np.sqrt(k))
    return W1, W2


# ---------------------------------------------------------------------------------------------
# Data


def problem(dtype=np.float32, n=230, d=20, hidden=16, k=7, seed=0):
    """Seeded data and parameters (not zeros, so an ordering bug shows in the first step)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    y = rng.integers(0, k, n).astype(np.uint8)
    theta = (0.1 * rng.standard_normal((d, k))).astype(dtype)
    W1 = (rng.standard_normal((d, hidden)) / np.sqrt(hidden)).astype(dtype)
    W2 = (rng.standard_normal((hidden, k)) / np.sqrt(k)).astype(dtype)
    return X, y, theta, W1, W2


def mnist_file(directory, stem):
    for name in (stem, stem + ".gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    pytest.skip(f"{stem}[.gz] is not in {directory}")


@pytest.fixture
def t10k(mnist_dir):
    return parse_mnist(mnist_file(mnist_dir, "t10k-images-idx3-ubyte"),
                       mnist_file(mnist_dir, "t10k-labels-idx1-ubyte"))


def write_idx(path, array, magic, gz):
    a = np.ascontiguousarray(array, dtype=np.uint8)
    payload = struct.pack(">I", magic) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()
    with open(path, "wb") as f:
        f.write(gzip.compress(payload) if gz else payload)
    return str(path)


TABLE_HEADER = "| Epoch | Train Loss | Train Err | Test Loss | Test Err |"
TABLE_ROW = re.compile(
    r"^\|  ( {0,3}\d+) \|    (\d+\.\d{5}) \|   (\d\.\d{5}) \|   (\d+\.\d{5}) \|  (\d\.\d{5}) \|$"
)


def parse_table(text, epochs):
    """The printed table's rows as [(epoch, train_loss, train_err, test_loss, test_err)]."""
    lines = text.splitlines()
    assert lines[0] == TABLE_HEADER
    assert len(lines) == epochs + 1
    rows = []
    for epoch, line in enumerate(lines[1:]):
        m = TABLE_ROW.match(line)
        assert m, f"row not in hw0's format: {line!r}"
        assert len(m.group(1)) == 4 and int(m.group(1)) == epoch
        rows.append((int(m.group(1)),) + tuple(float(v) for v in m.groups()[1:]))
    return rows


# ---------------------------------------------------------------------------------------------
# hw0's published checks


def test_add_hw0():
    assert add(5, 6) == 11
    assert add(3.2, 1.0) == 4.2
    assert type(add(4., 4)) is float
    np.testing.assert_allclose(add(np.array([1, 2]), np.array([3, 4])), np.array([4, 6]))


def test_hw0_softmax_loss_on_the_mnist_training_labels(mnist_dir):
    # hw0's test_softmax_loss (and the label check of test_parse_mnist): only y is used
    y = read_idx(mnist_file(mnist_dir, "train-labels-idx1-ubyte"), magic=2049)
    np.testing.assert_equal(y[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
    np.random.seed(0)
    Z = np.zeros((y.shape[0], 10))
    np.testing.assert_allclose(softmax_loss(Z, y), 2.3025850)
    Z = np.random.randn(y.shape[0], 10)
    np.testing.assert_allclose(softmax_loss(Z, y), 2.7291998)


def test_hw0_softmax_regression_epoch_numerical_gradient():
    # hw0's test_softmax_regression_epoch, first half (central differences for numdifftools)
    np.random.seed(0)
    X = np.random.randn(50, 5).astype(np.float32)
    y = np.random.randint(3, size=(50,)).astype(np.uint8)
    Theta = np.zeros((5, 3), dtype=np.float32)
    Th = np.zeros((5, 3))
    dTheta = -numerical_gradient_array(lambda: softmax_loss(X @ Th, y), Th, 1.0)
    softmax_regression_epoch(X, y, Theta, lr=1.0, batch=50)
    np.testing.assert_allclose(dTheta, Theta, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dTheta, Theta, rtol=1e-5, atol=1e-7)  # and tighter


def test_hw0_nn_epoch_numerical_gradient():
    # hw0's test_nn_epoch, first half
    np.random.seed(0)
    X = np.random.randn(50, 5).astype(np.float32)
    y = np.random.randint(3, size=(50,)).astype(np.uint8)
    W1 = np.random.randn(5, 10).astype(np.float32) / np.float32(np.sqrt(10))
    W2 = np.random.randn(10, 3).astype(np.float32) / np.float32(np.sqrt(3))
    V1, V2 = W1.astype(np.float64), W2.astype(np.float64)
    dW1 = numerical_gradient_array(lambda: softmax_loss(np.maximum(X @ V1, 0) @ W2, y), V1, 1.0)
    dW2 = numerical_gradient_array(lambda: softmax_loss(np.maximum(X @ W1, 0) @ V2, y), V2, 1.0)
    W1_0, W2_0 = W1.copy(), W2.copy()
    nn_epoch(X, y, W1, W2, lr=1.0, batch=50)
    np.testing.assert_allclose(dW1, W1_0 - W1, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dW2, W2_0 - W2, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# parse_mnist


def test_parse_mnist_t10k(t10k, mnist_dir):
    X, y = t10k
    assert X.dtype == np.float32 and y.dtype == np.uint8
    assert X.shape == (10000, 784) and y.shape == (10000,)
    assert X.min() == 0.0 and X.max() == 1.0
    assert X.flags.c_contiguous and X.flags.writeable
    raw = read_idx(mnist_file(mnist_dir, "t10k-images-idx3-ubyte"))
    np.testing.assert_array_equal(X, raw.reshape(10000, 784).astype(np.float32) / 255.0)
    np.testing.assert_array_equal(y, read_idx(mnist_file(mnist_dir, "t10k-labels-idx1-ubyte")))
    np.testing.assert_equal(y[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])  # the t10k set's first digits
    zero = softmax_loss(np.zeros((10000, 10), np.float32), y)
    assert type(zero) is np.float32
    np.testing.assert_allclose(zero, math.log(10), rtol=1e-7)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_parse_mnist_small_files(tmp_path, gz):
    images = np.array([[[0, 255, 17], [3, 128, 0]],
                       [[255, 255, 255], [0, 0, 1]],
                       [[9, 8, 7], [6, 5, 4]]], np.uint8)
    labels = np.array([3, 0, 9], np.uint8)
    X, y = parse_mnist(write_idx(tmp_path / "img", images, 2051, gz),
                       write_idx(tmp_path / "lbl", labels, 2049, gz))
    assert X.dtype == np.float32 and X.shape == (3, 6)  # rows * cols, whatever the size
    np.testing.assert_array_equal(X, images.reshape(3, 6).astype(np.float32) / 255.0)
    assert y.dtype == np.uint8
    np.testing.assert_array_equal(y, labels)


def test_parse_mnist_errors_name_the_file(tmp_path):
    images = write_idx(tmp_path / "img", np.zeros((3, 2, 2)), 2051, gz=True)
    labels = write_idx(tmp_path / "lbl", np.zeros(3), 2049, gz=True)
    four = write_idx(tmp_path / "lbl4", np.zeros(4), 2049, gz=False)
    with pytest.raises(ValueError, match=re.escape(labels) + ": bad magic number 2049"):
        parse_mnist(labels, images)  # swapped
    with pytest.raises(ValueError, match=re.escape(four) + ": holds 4 labels but .*img holds 3"):
        parse_mnist(images, four)
    with pytest.raises(FileNotFoundError):
        parse_mnist(tmp_path / "missing", labels)
    corrupt = tmp_path / "corrupt.gz"
    corrupt.write_bytes(gzip.compress(b"\0\0\x08\x03")[:-6])
    with pytest.raises(ValueError, match=re.escape(str(corrupt))):
        parse_mnist(corrupt, labels)


# ---------------------------------------------------------------------------------------------
# softmax_loss, loss_err


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_loss_matches_hw0_and_layers(dtype, rng):
    Z = rng.standard_normal((37, 10)).astype(dtype)
    y = rng.integers(0, 10, 37).astype(np.uint8)
    loss = softmax_loss(Z, y)
    assert type(loss) is np.dtype(dtype).type  # a NumPy scalar of Z's dtype, as hw0 returns
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(loss, hw0_softmax_loss(Z.astype(np.float64), y), rtol=tol)
    assert loss == layers.softmax_loss(Z, y)[0]


def test_softmax_loss_integer_logits_and_large_logits():
    y = np.array([0, 2])
    assert type(softmax_loss([[1, 2, 3], [4, 5, 6]], y)) is np.float64
    Z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], np.float32)  # hw0's formula overflows
    np.testing.assert_allclose(softmax_loss(Z, y), (0.0 + math.log(2)) / 2, rtol=1e-6)


def test_loss_err_matches_hw0(rng):
    h = rng.standard_normal((101, 4)).astype(np.float32)
    y = rng.integers(0, 4, 101)
    loss, err = loss_err(h, y)
    ref_loss, ref_err = hw0_loss_err(h.astype(np.float64), y)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    assert err == ref_err and type(err) is np.float64
    assert 0 < err < 1


# ---------------------------------------------------------------------------------------------
# The epochs against hw0 in NumPy: in order, last partial batch, in place


# (batch, lr): 3 full batches + a partial one of 38; one batch; batch > N; plain SGD
BATCHES = [(64, 0.5), (230, 0.5), (500, 0.5), (1, 0.05)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch,lr", BATCHES)
def test_softmax_regression_epoch_matches_hw0(dtype, batch, lr):
    X, y, theta, _, _ = problem(dtype)
    expected = theta.copy()
    hw0_softmax_regression_epoch(X, y, expected, lr=lr, batch=batch)
    same = theta
    assert softmax_regression_epoch(X, y, theta, lr=lr, batch=batch) is None
    assert theta is same and theta.dtype == dtype
    assert_params_close(theta, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch,lr", BATCHES)
def test_nn_epoch_matches_hw0(dtype, batch, lr):
    X, y, _, W1, W2 = problem(dtype)
    E1, E2 = W1.copy(), W2.copy()
    hw0_nn_epoch(X, y, E1, E2, lr=lr, batch=batch)
    assert nn_epoch(X, y, W1, W2, lr=lr, batch=batch) is None
    assert W1.dtype == W2.dtype == dtype
    assert_params_close(W1, E1)
    assert_params_close(W2, E2)


def test_nn_epoch_takes_both_gradients_before_either_update():
    X, y, _, W1, W2 = problem(np.float64)
    wrong1, wrong2 = W1.copy(), W2.copy()
    hw0_nn_epoch(X, y, wrong1, wrong2, lr=0.5, batch=64, update_w2_first=True)
    nn_epoch(X, y, W1, W2, lr=0.5, batch=64)
    assert np.abs(W1 - wrong1).max() > 1e-3  # the comparison above would see the difference


def test_default_lr_and_batch_are_hw0s():
    X, y, theta, W1, W2 = problem(np.float64, n=250)
    expected = theta.copy()
    hw0_softmax_regression_epoch(X, y, expected)
    softmax_regression_epoch(X, y, theta)
    assert_params_close(theta, expected)
    E1, E2 = W1.copy(), W2.copy()
    hw0_nn_epoch(X, y, E1, E2)
    nn_epoch(X, y, W1, W2)
    assert_params_close(W1, E1)
    assert_params_close(W2, E2)
    assert softmax_regression_epoch_cpp is softmax_regression_epoch


def test_empty_data_is_no_step():
    X, y, theta, W1, W2 = problem(np.float32, n=0)
    before = theta.copy(), W1.copy(), W2.copy()
    softmax_regression_epoch(X, y, theta)
    nn_epoch(X, y, W1, W2)
    for got, old in zip((theta, W1, W2), before):
        np.testing.assert_array_equal(got, old)


# ---------------------------------------------------------------------------------------------
# Finite differences (float64): each step is -lr times the gradient of the batch's mean loss


def test_softmax_step_is_minus_lr_times_the_batch_gradient():
    X, y, theta, _, _ = problem(np.float64, n=7, d=4, k=3)
    lr = 0.3
    th = theta.copy()
    grad = numerical_gradient_array(lambda: softmax_loss(X[:5] @ th, y[:5]), th, 1.0)
    first = theta.copy()
    softmax_regression_epoch(X[:5], y[:5], first, lr=lr, batch=5)
    np.testing.assert_allclose(first, theta - lr * grad, rtol=1e-8, atol=1e-10)
    # the last partial batch (2 of 7 rows) is the mean over ITS rows, taken at the new theta
    th[...] = first
    grad = numerical_gradient_array(lambda: softmax_loss(X[5:] @ th, y[5:]), th, 1.0)
    softmax_regression_epoch(X, y, theta, lr=lr, batch=5)
    np.testing.assert_allclose(theta, first - lr * grad, rtol=1e-8, atol=1e-10)


def test_nn_step_is_minus_lr_times_the_batch_gradient():
    X, y, _, W1, W2 = problem(np.float64, n=7, d=4, hidden=6, k=3)
    lr = 0.3

    def loss(rows):
        return lambda: softmax_loss(np.maximum(X[rows] @ V1, 0) @ V2, y[rows])

    V1, V2 = W1.copy(), W2.copy()
    g1 = numerical_gradient_array(loss(slice(0, 5)), V1, 1.0)
    g2 = numerical_gradient_array(loss(slice(0, 5)), V2, 1.0)
    A1, A2 = W1.copy(), W2.copy()
    nn_epoch(X[:5], y[:5], A1, A2, lr=lr, batch=5)
    np.testing.assert_allclose(A1, W1 - lr * g1, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(A2, W2 - lr * g2, rtol=1e-7, atol=1e-9)
    V1[...], V2[...] = A1, A2
    g1 = numerical_gradient_array(loss(slice(5, 7)), V1, 1.0)
    g2 = numerical_gradient_array(loss(slice(5, 7)), V2, 1.0)
    nn_epoch(X, y, W1, W2, lr=lr, batch=5)
    np.testing.assert_allclose(W1, A1 - lr * g1, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(W2, A2 - lr * g2, rtol=1e-7, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Agreement with fastbp.layers (zero biases)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_batch_equals_the_layers_composition(dtype):
    X, y, theta, W1, W2 = problem(dtype, n=40)
    lr = 0.7
    b1 = np.zeros(W1.shape[1], dtype)
    b2 = np.zeros(W2.shape[1], dtype)
    a, fc1 = layers.affine_forward(X, W1, b1)
    h, relu = layers.relu_forward(a)
    scores, fc2 = layers.affine_forward(h, W2, b2)
    _, dscores = layers.softmax_loss(scores, y)
    dh, dW2, _ = layers.affine_backward(dscores, fc2)
    _, dW1, _ = layers.affine_backward(layers.relu_backward(dh, relu), fc1)
    E1, E2 = W1 - lr * dW1, W2 - lr * dW2
    nn_epoch(X, y, W1, W2, lr=lr, batch=40)
    assert_params_close(W1, E1)
    assert_params_close(W2, E2)

    scores, fc = layers.affine_forward(X, theta, b2)
    _, dscores = layers.softmax_loss(scores, y)
    expected = theta - lr * layers.affine_backward(dscores, fc)[1]
    softmax_regression_epoch(X, y, theta, lr=lr, batch=1000)
    assert_params_close(theta, expected)


# ---------------------------------------------------------------------------------------------
# dtypes and layouts


def test_float64_data_with_float32_parameters_trains_in_float32():
    X, y, theta, W1, W2 = problem(np.float64)
    X32 = X.astype(np.float32)
    expected = theta.astype(np.float32)
    hw0_softmax_regression_epoch(X32, y, expected, lr=0.5, batch=64)
    theta = theta.astype(np.float32)
    softmax_regression_epoch(X, y, theta, lr=0.5, batch=64)
    assert theta.dtype == np.float32
    assert_params_close(theta, expected)
    E1, E2 = W1.astype(np.float32), W2.astype(np.float32)
    hw0_nn_epoch(X32, y, E1, E2, lr=0.5, batch=64)
    W1, W2 = W1.astype(np.float32), W2.astype(np.float32)
    nn_epoch(X, y, W1, W2, lr=0.5, batch=64)
    assert_params_close(W1, E1)
    assert_params_close(W2, E2)


def test_layouts_read_only_inputs_and_integer_data():
    X, y, theta, W1, W2 = problem(np.float32)
    expected = theta.copy()
    hw0_softmax_regression_epoch(X, y, expected, lr=0.5, batch=64)
    wide = np.zeros((X.shape[0], 2 * X.shape[1]), np.float32)
    wide[:, ::2] = X  # a strided view of X
    X_ro, y_ro = X.copy(), y.astype(np.int64)
    X_ro.setflags(write=False)
    y_ro.setflags(write=False)
    for data, labels in ((wide[:, ::2], y), (X_ro, y_ro), (np.asfortranarray(X), list(y))):
        t = np.asfortranarray(theta)  # trained in a contiguous copy, written back
        softmax_regression_epoch(data, labels, t, lr=0.5, batch=64)
        assert t.flags.f_contiguous
        assert_params_close(t, expected)
    E1, E2 = W1.copy(), W2.copy()
    hw0_nn_epoch(X, y, E1, E2, lr=0.5, batch=64)
    big = np.zeros((W1.shape[0], 3 * W1.shape[1]), np.float32)
    w1 = big[:, 1::3]  # a non-contiguous view: the parent array sees the update
    w1[...] = W1
    nn_epoch(X, y, w1, W2, lr=0.5, batch=64)
    assert_params_close(big[:, 1::3], E1)
    assert_params_close(W2, E2)
    assert not big[:, ::3].any()

    pixels = np.random.default_rng(1).integers(0, 256, (50, 6)).astype(np.uint8)
    labels = np.arange(50) % 3
    t, expected = np.zeros((6, 3)), np.zeros((6, 3))
    softmax_regression_epoch(pixels, labels, t, lr=1e-3, batch=16)
    hw0_softmax_regression_epoch(pixels.astype(np.float64), labels, expected, lr=1e-3, batch=16)
    assert_params_close(t, expected)


# ---------------------------------------------------------------------------------------------
# Kernels: backends, buffer reuse


@pytest.mark.parametrize("backend", ["numpy", "checked"])
def test_backends_agree(backend):
    X, y, theta, W1, W2 = problem(np.float32)
    expected = theta.copy(), W1.copy(), W2.copy()
    softmax_regression_epoch(X, y, expected[0], lr=0.5, batch=64)
    nn_epoch(X, y, expected[1], expected[2], lr=0.5, batch=64)
    with fastbp.use_backend(backend):
        softmax_regression_epoch(X, y, theta, lr=0.5, batch=64)
        nn_epoch(X, y, W1, W2, lr=0.5, batch=64)
        assert softmax_loss(X @ theta, y) == pytest.approx(softmax_loss(X @ expected[0], y),
                                                           rel=1e-6)
    for got, want in zip((theta, W1, W2), expected):
        assert_params_close(got, want)


def test_buffers_are_allocated_once_per_epoch(monkeypatch):
    X, y, theta, W1, W2 = problem(np.float32)  # 230 rows: batches of 64, 64, 64, 38
    calls = {}
    real = fastbp.backend.kernels()

    def recorder(name):
        def call(*args):
            calls.setdefault(name, []).append(args)
            return getattr(real, name)(*args)
        return call

    names = ("linear_forward", "linear_act_forward", "linear_backward", "act_backward_bias",
             "softmax_cross_entropy")
    spy = types.SimpleNamespace(**{n: recorder(n) for n in names})
    monkeypatch.setattr(simple_ml, "kernels", lambda: spy)
    nn_epoch(X, y, W1, W2, lr=0.5, batch=64)
    losses = calls["softmax_cross_entropy"]
    assert [args[0].shape[0] for args in losses] == [64, 64, 64, 38]
    for position in (0, 2, 3):  # logits, dlogits and row-loss buffers: one each, reused
        assert all(np.shares_memory(args[position], losses[0][position]) for args in losses)
    hidden = calls["linear_act_forward"]
    assert all(np.shares_memory(args[6], hidden[0][6]) for args in hidden)
    assert all(np.shares_memory(args[0], X) for args in hidden)  # batches are views of X
    updates = calls["linear_backward"]  # the steps are the GEMMs' dw = W, scale -lr, beta 1
    assert all(args[4] is args[2] and args[6:8] == (-0.5, 1.0) for args in updates)

    calls.clear()
    softmax_regression_epoch(X, y, theta, lr=0.5, batch=64)
    losses = calls["softmax_cross_entropy"]
    assert len(losses) == 4
    assert all(np.shares_memory(args[2], losses[0][2]) for args in losses)
    assert all(args[4] is theta and args[3] is None for args in calls["linear_backward"])


# ---------------------------------------------------------------------------------------------
# train_softmax / train_nn: hw0's table


def test_train_softmax_on_mnist_subset(t10k, capsys):
    X, y = t10k
    X_tr, y_tr, X_te, y_te = X[:1000], y[:1000], X[1000:1500], y[1000:1500]
    train_softmax(X_tr, y_tr, X_te, y_te, epochs=3, lr=0.5, batch=100)
    rows = parse_table(capsys.readouterr().out, 3)
    theta = np.zeros((784, 10), np.float32)
    for epoch, *printed in rows:
        hw0_softmax_regression_epoch(X_tr, y_tr, theta, lr=0.5, batch=100)
        expected = (*hw0_loss_err(X_tr @ theta, y_tr), *hw0_loss_err(X_te @ theta, y_te))
        np.testing.assert_allclose(printed, expected, rtol=0, atol=1.1e-5)
    assert rows[-1][4] < 0.2  # test error, from 0.9 for theta = 0
    assert rows[0][1] > rows[1][1] > rows[2][1]


def test_train_nn_on_mnist_subset(t10k, capsys):
    X, y = t10k
    train_nn(X[:2000], y[:2000], X[2000:2500], y[2000:2500], hidden_dim=32, epochs=3, batch=50)
    rows = parse_table(capsys.readouterr().out, 3)
    assert rows[-1][4] < 0.25  # test error


def test_train_nn_table_reproduces_hw0(capsys):
    X, y, _, _, _ = problem(np.float32, n=300, d=12, k=4, seed=3)
    y = (X[:, :4].argmax(axis=1)).astype(np.uint8)  # learnable
    X_tr, y_tr, X_te, y_te = X[:200], y[:200], X[200:], y[200:]
    train_nn(X_tr, y_tr, X_te, y_te, hidden_dim=16, epochs=4, lr=0.3, batch=32)
    rows = parse_table(capsys.readouterr().out, 4)
    W1, W2 = hw0_init_nn(12, 16, 4)
    for epoch, *printed in rows:
        hw0_nn_epoch(X_tr, y_tr, W1, W2, lr=0.3, batch=32)
        expected = (*hw0_loss_err(np.maximum(X_tr @ W1, 0) @ W2, y_tr),
                    *hw0_loss_err(np.maximum(X_te @ W1, 0) @ W2, y_te))
        np.testing.assert_allclose(printed, expected, rtol=0, atol=1.1e-5)
    assert rows[-1][2] < rows[0][2]


def test_train_functions_print_nothing_for_zero_epochs_but_the_header(capsys):
    X, y, _, _, _ = problem(np.float32, n=20, d=3, k=2)
    train_softmax(X, y, X, y, epochs=0, cpp=True)
    train_nn(X, y, X, y, hidden_dim=4, epochs=0)
    assert capsys.readouterr().out == TABLE_HEADER + "\n" + TABLE_HEADER + "\n"


# ---------------------------------------------------------------------------------------------
# Bad input: a clear error naming the argument, parameters unchanged


def _softmax_args(**change):
    X, y, theta, _, _ = problem(np.float32, n=30, d=5, k=3)
    args = dict(X=X, y=y, theta=theta, lr=0.1, batch=8)
    args.update(change)
    return args


def _nn_args(**change):
    X, y, _, W1, W2 = problem(np.float32, n=30, d=5, hidden=4, k=3)
    args = dict(X=X, y=y, W1=W1, W2=W2, lr=0.1, batch=8)
    args.update(change)
    return args


def _last_label(value, dtype=np.uint8):
    y = problem(np.float32, n=30, d=5, k=3)[1].astype(dtype)
    y[-1] = value  # in the LAST batch: caught before the first step
    return y


def _read_only(a):
    a.setflags(write=False)
    return a


COMMON_CASES = [
    ({"y": _last_label(3)}, ValueError, r"y must lie in \[0, 3\), found label 3"),
    ({"y": _last_label(-1, np.int8)}, ValueError, r"y must lie in \[0, 3\), found label -1"),
    ({"y": np.zeros(29, np.uint8)}, ValueError, r"y must have shape \(30,\).*X has 30 rows"),
    ({"y": np.zeros(30)}, TypeError, "y must hold integer class labels"),
    ({"y": np.zeros((30, 3), np.uint8)}, ValueError, r"y must have shape \(30,\)"),  # one-hot
    ({"X": np.zeros(30, np.float32)}, ValueError, "X must be 2-D"),
    ({"X": np.array([["a"] * 5] * 30)}, TypeError, "X must be a real numeric array"),
    ({"batch": 0}, ValueError, "batch must be >= 1"),
    ({"batch": 8.0}, TypeError, "batch must be an int"),
    ({"batch": True}, TypeError, "batch must be an int"),
    ({"lr": float("nan")}, ValueError, "lr must be finite"),
    ({"lr": float("inf")}, ValueError, "lr must be finite"),
    ({"lr": "0.1"}, TypeError, "lr must be a real number"),
    ({"lr": None}, TypeError, "lr must be a real number"),
]

SOFTMAX_CASES = COMMON_CASES + [
    ({"theta": np.zeros((4, 3), np.float32)}, ValueError,
     r"theta must have shape \(5, m\) with 5 = X.shape\[1\].*got \(4, 3\)"),
    ({"theta": np.zeros(5, np.float32)}, ValueError, "theta must have shape"),
    ({"theta": np.zeros((5, 0), np.float32)}, ValueError, "theta must have shape"),
    ({"theta": [[0.0] * 3] * 5}, TypeError, "theta must be a NumPy array"),
    ({"theta": np.zeros((5, 3), np.int64)}, TypeError, "theta must be float32 or float64"),
    ({"theta": np.zeros((5, 3), np.float16)}, TypeError, "theta must be float32 or float64"),
    ({"theta": _read_only(np.zeros((5, 3), np.float32))}, ValueError, "theta is read-only"),
]

NN_CASES = COMMON_CASES + [
    ({"W1": np.zeros((4, 4), np.float32)}, ValueError,
     r"W1 must have shape \(5, m\) with 5 = X.shape\[1\]"),
    ({"W2": np.zeros((5, 3), np.float32)}, ValueError,
     r"W2 must have shape \(4, m\) with 4 = W1.shape\[1\]"),
    ({"W2": np.zeros((4, 3))}, TypeError, "W1 and W2 must have the same dtype"),
    ({"W1": list(np.zeros((5, 4)))}, TypeError, "W1 must be a NumPy array"),
    ({"W2": _read_only(np.zeros((4, 3), np.float32))}, ValueError, "W2 is read-only"),
]


@pytest.mark.parametrize("change,error,match", SOFTMAX_CASES, ids=lambda c: repr(c)[:40])
def test_softmax_regression_epoch_rejects(change, error, match):
    args = _softmax_args(**change)
    theta = args["theta"]
    before = np.array(theta, copy=True)
    with pytest.raises(error, match=match):
        softmax_regression_epoch(**args)
    np.testing.assert_array_equal(np.asarray(theta), before)


@pytest.mark.parametrize("change,error,match", NN_CASES, ids=lambda c: repr(c)[:40])
def test_nn_epoch_rejects(change, error, match):
    args = _nn_args(**change)
    before = [np.array(args[w], copy=True) for w in ("W1", "W2")]
    with pytest.raises(error, match=match):
        nn_epoch(**args)
    for w, old in zip(("W1", "W2"), before):
        np.testing.assert_array_equal(np.asarray(args[w]), old)


def test_nn_epoch_rejects_aliased_weights():
    X = np.zeros((6, 4), np.float32)
    W = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="W1 and W2 must not share memory"):
        nn_epoch(X, np.zeros(6, np.uint8), W, W)


@pytest.mark.parametrize("Z,y,error,match", [
    (np.zeros(10), [0], ValueError, "Z must be 2-D"),
    (np.zeros((0, 10)), [], ValueError, "Z is an empty batch"),
    (np.zeros((3, 0)), [0, 0, 0], ValueError, "Z has no classes"),
    (np.zeros((3, 10)), [0, 1], ValueError, r"y must have shape \(3,\)"),
    (np.zeros((3, 10)), np.eye(10, dtype=int)[:3], ValueError, r"y must have shape \(3,\)"),
    (np.zeros((3, 10)), [0, 1, 10], ValueError, r"y must lie in \[0, 10\), found label 10"),
    (np.zeros((3, 10)), [0.0, 1.0, 2.0], TypeError, "y must hold integer class labels"),
    (np.zeros((3, 10), complex), [0, 1, 2], TypeError, "Z must be a real numeric array"),
])
def test_softmax_loss_rejects(Z, y, error, match):
    with pytest.raises(error, match=match):
        softmax_loss(Z, y)
    with pytest.raises(error, match=match):
        loss_err(Z, y)


@pytest.mark.parametrize("train", [train_softmax, train_nn])
@pytest.mark.parametrize("change,error,match", [
    ({"X_te": np.zeros((10, 4), np.float32)}, ValueError, "X_te has 4 columns but X_tr has 5"),
    ({"y_te": np.full(10, 3, np.uint8)}, ValueError,
     r"y_te must lie in \[0, 3\).*num_classes = y_tr.max\(\) \+ 1 = 3"),
    ({"y_tr": np.zeros(30)}, TypeError, "y_tr must hold integer class labels"),
    ({"X_tr": np.zeros((0, 5))}, ValueError, "X_tr has no examples"),
    ({"epochs": -1}, ValueError, "epochs must be >= 0"),
    ({"lr": float("nan")}, ValueError, "lr must be finite"),
    ({"batch": 0}, ValueError, "batch must be >= 1"),
])
def test_train_functions_reject_before_printing(train, change, error, match, capsys):
    X, y, _, _, _ = problem(np.float32, n=30, d=5, k=3)
    args = dict(X_tr=X, y_tr=y, X_te=X[:10], y_te=y[:10])
    args.update(change)
    with pytest.raises(error, match=match):
        train(**args)
    assert capsys.readouterr().out == ""


def test_train_nn_rejects_bad_hidden_dim(capsys):
    X, y, _, _, _ = problem(np.float32, n=30, d=5, k=3)
    with pytest.raises(ValueError, match="hidden_dim must be >= 1"):
        train_nn(X, y, X, y, hidden_dim=0)
    with pytest.raises(TypeError, match="hidden_dim must be an int"):
        train_nn(X, y, X, y, hidden_dim=2.5)
    assert capsys.readouterr().out == ""
