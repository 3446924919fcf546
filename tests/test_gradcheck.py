"""fastbp.gradcheck: course numerical gradients, rel_error, grad_check_sparse, whole-model check.

Analytic gradients of known functions are written inline in NumPy here (nothing from fastbp's
layers), so these tests check the checker, not the kernels.
"""

import re
import warnings

import numpy as np
import pytest

from fastbp import gradcheck
from fastbp.gradcheck import (
    GradCheckReport,
    check_model_gradients,
    eval_numerical_gradient,
    eval_numerical_gradient_array,
    grad_check_sparse,
    rel_error,
)

# --------------------------------------------------------------------------------------------
# the course's own helpers, as the oracle for drop-in behaviour (CS231n gradient_check.py)
# --------------------------------------------------------------------------------------------


def course_eval_numerical_gradient(f, x, verbose=True, h=0.00001):
    f(x)
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        ix = it.multi_index
        oldval = x[ix]
        x[ix] = oldval + h
        fxph = f(x)
        x[ix] = oldval - h
        fxmh = f(x)
        x[ix] = oldval
        grad[ix] = (fxph - fxmh) / (2 * h)
        if verbose:
            print(ix, grad[ix])
        it.iternext()
    return grad


def course_eval_numerical_gradient_array(f, x, df, h=1e-5):
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        ix = it.multi_index
        oldval = x[ix]
        x[ix] = oldval + h
        pos = f(x).copy()
        x[ix] = oldval - h
        neg = f(x).copy()
        x[ix] = oldval
        grad[ix] = np.sum((pos - neg) * df) / (2 * h)
        it.iternext()
    return grad


# --------------------------------------------------------------------------------------------
# known functions and their analytic gradients, inline NumPy
# --------------------------------------------------------------------------------------------


def softmax_ce(scores, y):
    """Mean softmax cross-entropy and its gradient with respect to the scores."""
    shifted = scores - scores.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = scores.shape[0]
    loss = -log_probs[np.arange(n), y].mean()
    dscores = np.exp(log_probs)
    dscores[np.arange(n), y] -= 1
    return loss, dscores / n


def two_layer_loss(X, y, W1, b1, W2, b2, reg):
    """affine - relu - affine - softmax CE + 0.5 * reg * (|W1|^2 + |W2|^2), with gradients."""
    hidden_pre = X @ W1 + b1
    hidden = np.maximum(hidden_pre, 0)
    loss, dscores = softmax_ce(hidden @ W2 + b2, y)
    loss += 0.5 * reg * (np.sum(W1 * W1) + np.sum(W2 * W2))
    dhidden = (dscores @ W2.T) * (hidden_pre > 0)
    grads = {
        "W1": X.T @ dhidden + reg * W1,
        "b1": dhidden.sum(axis=0),
        "W2": hidden.T @ dscores + reg * W2,
        "b2": dscores.sum(axis=0),
    }
    return loss, grads


class TinyTwoLayerNet:
    """A course-style model: `params` read live by `loss(X, y) -> (loss, grads)`."""

    def __init__(self, D=5, H=7, C=3, reg=0.1, dtype=np.float64, seed=0, bug=None):
        rng = np.random.default_rng(seed)
        self.params = {
            "W1": rng.standard_normal((D, H)).astype(dtype),
            "b1": (0.1 * rng.standard_normal(H)).astype(dtype),
            "W2": rng.standard_normal((H, C)).astype(dtype),
            "b2": (0.1 * rng.standard_normal(C)).astype(dtype),
        }
        self.reg = reg
        self.bug = bug
        self.calls = 0

    def loss(self, X, y):
        self.calls += 1
        p = self.params
        loss, grads = two_layer_loss(X, y, p["W1"], p["b1"], p["W2"], p["b2"], self.reg)
        if self.bug == "b2":
            grads["b2"] = 2 * grads["b2"]  # a deliberately wrong gradient
        return loss, grads


@pytest.fixture
def data():
    rng = np.random.default_rng(7)
    return rng.standard_normal((4, 5)), np.array([0, 2, 1, 2])


def snapshot(params):
    """Bytes and identities of every parameter, to prove an exact in-place restore."""
    return {name: (id(a), a.tobytes(), a.dtype, a.shape) for name, a in params.items()}


def tricky_x(shape, rng):
    """Random values plus ones that (v + h) - h does not give back, and a signed zero."""
    x = rng.standard_normal(shape)
    flat = x.reshape(-1)
    flat[0] = -0.0
    flat[1] = 1.234e-6  # small against h: (v + 1e-5) - 1e-5 != v in float64
    assert (1.234e-6 + 1e-5) - 1e-5 != 1.234e-6
    return x


def assert_bit_equal(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


# --------------------------------------------------------------------------------------------
# eval_numerical_gradient
# --------------------------------------------------------------------------------------------


def test_quadratic_matches_analytic(rng):
    A = rng.standard_normal((6, 6))
    b = rng.standard_normal(6)
    x = rng.standard_normal(6)
    grad = eval_numerical_gradient(lambda v: 0.5 * v @ A @ v + b @ v, x, verbose=False)
    assert grad.dtype == np.float64 and grad.shape == x.shape
    assert rel_error(grad, 0.5 * (A + A.T) @ x + b) < 1e-8


def test_sum_of_squares_3d(rng):
    x = rng.standard_normal((3, 4, 2))
    grad = eval_numerical_gradient(lambda v: np.sum(v**2), x, verbose=False)
    assert grad.shape == (3, 4, 2)
    assert rel_error(grad, 2 * x) < 1e-8


def test_matrix_product_scalar(rng):
    X = rng.standard_normal((4, 3))
    W = rng.standard_normal((3, 5))
    G = rng.standard_normal((4, 5))
    grad_W = eval_numerical_gradient(lambda w: np.sum((X @ w) * G), W, verbose=False)
    grad_X = eval_numerical_gradient(lambda x: np.sum((x @ W) * G), X, verbose=False)
    assert rel_error(grad_W, X.T @ G) < 1e-8
    assert rel_error(grad_X, G @ W.T) < 1e-8


def test_softmax_cross_entropy(rng):
    scores = rng.standard_normal((5, 4))
    y = np.array([0, 3, 1, 1, 2])
    _, dscores = softmax_ce(scores, y)
    grad = eval_numerical_gradient(lambda s: softmax_ce(s, y)[0], scores, verbose=False)
    assert rel_error(grad, dscores) < 1e-8


def test_two_layer_net_all_parameters(data):
    X, y = data
    model = TinyTwoLayerNet()
    p = model.params
    _, grads = model.loss(X, y)
    for name in p:
        grad = eval_numerical_gradient(lambda _: model.loss(X, y)[0], p[name], verbose=False)
        assert rel_error(grad, grads[name]) < 1e-8, name


def test_same_values_and_output_as_course(rng, capsys):
    # a transposed (Fortran-ordered) x: both visit it in memory order
    A = rng.standard_normal((3, 4))
    x = rng.standard_normal((4, 3)).T
    f = lambda v: np.sum(np.tanh(v) * A)  # noqa: E731
    ours = eval_numerical_gradient(f, x)
    printed = capsys.readouterr().out
    theirs = course_eval_numerical_gradient(f, x.copy(order="K"))
    assert capsys.readouterr().out == printed
    assert_bit_equal(ours, theirs)
    lines = printed.splitlines()
    assert len(lines) == 12 and lines[0].startswith("(0, 0) ") and lines[1].startswith("(1, 0) ")


def test_verbose_literal_format(capsys):
    # h = 0.5 and x = 0 make every difference exact: (1.5 - -1.5) / 1.0
    x = np.zeros((2, 2))
    grad = eval_numerical_gradient(lambda v: 3 * np.sum(v), x, h=0.5)
    assert capsys.readouterr().out == "(0, 0) 3.0\n(0, 1) 3.0\n(1, 0) 3.0\n(1, 1) 3.0\n"
    np.testing.assert_array_equal(grad, 3.0)
    eval_numerical_gradient(lambda v: 3 * np.sum(v), x, verbose=False)
    assert capsys.readouterr().out == ""


def test_f_sees_x_itself_and_x_restored_bit_exactly(rng):
    x = tricky_x((3, 4), rng)
    before = x.copy()
    seen = []
    eval_numerical_gradient(lambda v: seen.append(v is x) or float(np.sum(v)), x, verbose=False)
    assert all(seen) and len(seen) == 2 * x.size
    assert_bit_equal(x, before)


def test_scalar_and_empty_x():
    x = np.array(2.0)
    grad = eval_numerical_gradient(lambda v: float(v) ** 3, x, verbose=False)
    assert grad.shape == () and abs(grad - 12.0) < 1e-8
    empty = np.zeros((0, 3))
    assert eval_numerical_gradient(lambda v: 0.0, empty).shape == (0, 3)


# --------------------------------------------------------------------------------------------
# eval_numerical_gradient_array
# --------------------------------------------------------------------------------------------


def test_array_affine(rng):
    x = rng.standard_normal((4, 3))
    w = rng.standard_normal((3, 5))
    b = rng.standard_normal(5)
    dout = rng.standard_normal((4, 5))
    dx = eval_numerical_gradient_array(lambda v: v @ w + b, x, dout)
    dw = eval_numerical_gradient_array(lambda v: x @ v + b, w, dout)
    db = eval_numerical_gradient_array(lambda v: x @ w + v, b, dout)
    assert dx.dtype == np.float64 and dx.shape == x.shape
    assert rel_error(dx, dout @ w.T) < 1e-8
    assert rel_error(dw, x.T @ dout) < 1e-8
    assert rel_error(db, dout.sum(axis=0)) < 1e-8


def test_array_matches_course_bit_exactly(rng):
    x = rng.standard_normal((3, 4))
    dout = rng.standard_normal((3, 4))
    f = lambda v: np.tanh(v) * 2  # noqa: E731
    ours = eval_numerical_gradient_array(f, x, dout)
    assert_bit_equal(ours, course_eval_numerical_gradient_array(f, x.copy(), dout))
    assert rel_error(ours, dout * 2 * (1 - np.tanh(x) ** 2)) < 1e-8


def test_array_copies_results_that_alias_a_buffer(rng):
    """f returns the same internal buffer every call: pos must be copied before neg is taken."""
    x = rng.standard_normal((3, 4))
    dout = rng.standard_normal((3, 4))
    buffer = np.empty((3, 4))

    def relu_into_buffer(v):
        np.maximum(v, 0, out=buffer)
        return buffer

    dx = eval_numerical_gradient_array(relu_into_buffer, x, dout)
    assert rel_error(dx, dout * (x > 0)) < 1e-8


def test_array_restores_x_bit_exactly(rng):
    x = tricky_x((3, 4), rng)
    before = x.copy()
    eval_numerical_gradient_array(lambda v: v**2, x, np.ones((3, 4)))
    assert_bit_equal(x, before)


# --------------------------------------------------------------------------------------------
# rel_error
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x, y, expected",
    [
        (1.0, 1.0, 0.0),
        (1.0, 3.0, 0.5),
        (0.0, 0.0, 0.0),
        (1e-9, 0.0, 0.1),  # the 1e-8 floor
        (-2.0, 2.0, 1.0),
        ([1.0, 2.0, 4.0], [1.0, 2.2, 4.0], 0.2 / 4.2),
        (np.array([[1.0], [2.0]], dtype=np.float32), np.array([1.0, 3.0]), 0.5),  # broadcasts
    ],
)
def test_rel_error_known_values(x, y, expected):
    got = rel_error(x, y)
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-300)


# --------------------------------------------------------------------------------------------
# grad_check_sparse
# --------------------------------------------------------------------------------------------

SPARSE_LINE = re.compile(
    r"^numerical: (-?\d+\.\d{6}) analytic: (-?\d+\.\d{6}), relative error: (\d\.\d{6}e[+-]\d\d)$"
)


def test_grad_check_sparse_correct_gradient(rng, capsys):
    scores = rng.standard_normal((6, 4))
    y = np.array([0, 1, 2, 3, 0, 1])
    before = scores.copy()
    _, dscores = softmax_ce(scores, y)
    errors = grad_check_sparse(lambda s: softmax_ce(s, y)[0], scores, dscores, 7, seed=3)
    assert len(errors) == 7 and max(errors) < 1e-8
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7
    for line, error in zip(lines, errors):
        match = SPARSE_LINE.match(line)
        assert match, line
        assert float(match.group(3)) == pytest.approx(error, rel=1e-6)
    assert_bit_equal(scores, before)


def test_grad_check_sparse_wrong_gradient(rng, capsys):
    x = rng.uniform(0.5, 1.5, (4, 5))
    errors = grad_check_sparse(lambda v: np.sum(v**2), x, 4 * x, num_checks=5, seed=0)
    # |2x - 4x| / (|2x| + |4x|) = 1/3 at every entry
    assert errors == pytest.approx([1 / 3] * 5, rel=1e-8)
    assert all(SPARSE_LINE.match(line) for line in capsys.readouterr().out.splitlines())


def test_grad_check_sparse_seeded_and_zero_gradient(capsys):
    x = np.arange(12.0).reshape(3, 4)
    f = lambda v: np.sum(v**2)  # noqa: E731
    grad_check_sparse(f, x, 2 * x, 4, seed=11)
    first = capsys.readouterr().out
    grad_check_sparse(f, x, 2 * x, 4, seed=11)
    assert capsys.readouterr().out == first
    # both gradients 0: the course would print nan; the floor gives 0
    assert grad_check_sparse(lambda v: 1.0, x, np.zeros_like(x), 3, seed=0) == [0.0] * 3


# --------------------------------------------------------------------------------------------
# check_model_gradients
# --------------------------------------------------------------------------------------------


def test_model_correct_gradients(data):
    X, y = data
    model = TinyTwoLayerNet()
    before = snapshot(model.params)
    report = check_model_gradients(model, X, y)
    assert isinstance(report, GradCheckReport)
    assert [e.name for e in report] == ["W1", "b1", "W2", "b2"]
    for entry in report:
        assert entry.shape == model.params[entry.name].shape
        assert entry.n_checked == model.params[entry.name].size
        assert entry.max_rel_error < 1e-7 and entry.max_abs_error < 1e-8
    assert report.ok() and report.ok(1e-7)
    # analytic once, two per entry, one reproducibility check
    assert model.calls == 1 + 2 * 66 + 1
    assert snapshot(model.params) == before


def test_model_wrong_gradient_is_reported(data):
    X, y = data
    model = TinyTwoLayerNet(bug="b2")
    before = snapshot(model.params)
    report = check_model_gradients(model, X, y)
    assert not report.ok()
    assert report.worst.name == "b2" and report.worst is report["b2"]
    assert report["b2"].max_rel_error == pytest.approx(1 / 3, rel=1e-5)  # |g - 2g| / |3g|
    assert report["W1"].ok() and report["W2"].max_rel_error < 1e-7
    assert snapshot(model.params) == before
    text = str(report)
    assert "parameter" in text and "max rel error" in text
    assert re.search(r"^b2\s+\(3,\)\s+3\s+3\.33\de-01", text, re.M), text
    assert "worst: b2" in text


def test_model_sampled_entries(data):
    X, y = data
    model = TinyTwoLayerNet()
    report = check_model_gradients(model, X, y, num_checks=4, seed=5, params=["W1", "b2"])
    assert [(e.name, e.n_checked) for e in report] == [("W1", 4), ("b2", 3)]
    assert report.ok(1e-7)
    again = check_model_gradients(model, X, y, num_checks=4, seed=5, params=["W1", "b2"])
    assert [e.worst_index for e in again] == [e.worst_index for e in report]
    single = check_model_gradients(model, X, y, params="b1")
    assert len(single) == 1 and single["b1"].n_checked == 7


def test_model_restores_params_when_loss_raises(data):
    X, y = data
    model = TinyTwoLayerNet()
    before = snapshot(model.params)
    original_loss = model.loss

    def flaky_loss(X, y):
        if model.calls == 3:
            raise RuntimeError("boom")
        return original_loss(X, y)

    model.loss = flaky_loss
    with pytest.raises(RuntimeError, match="boom"):
        check_model_gradients(model, X, y)
    assert snapshot(model.params) == before


def test_model_that_reuses_its_gradient_buffers(data):
    """Analytic gradients are copied before the numerical loop overwrites them."""
    X, y = data

    class BufferedNet(TinyTwoLayerNet):
        def loss(self, X, y):
            loss, grads = super().loss(X, y)
            if not hasattr(self, "_grads"):
                self._grads = {k: np.empty_like(v) for k, v in grads.items()}
            for k, v in grads.items():
                self._grads[k][...] = v
            return loss, self._grads

    assert check_model_gradients(BufferedNet(), X, y).ok(1e-7)


def test_model_float32_warns(data):
    X, y = data
    model = TinyTwoLayerNet(dtype=np.float32)
    before = snapshot(model.params)
    with pytest.warns(UserWarning, match="float64"):
        report = check_model_gradients(model, X.astype(np.float32), y)
    assert snapshot(model.params) == before
    # why it warns: a float32 loss cannot resolve 2h * (small gradient) (entries read 0)
    assert report.worst.max_rel_error > 1e-3


def test_model_h_below_float32_resolution(data):
    X, y = data
    model = TinyTwoLayerNet(dtype=np.float32)
    model.params["b2"][0] = 1000.0  # float32 spacing at 1000 is 6.1e-5 > 2 * 1e-5
    before = snapshot(model.params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="b2"):
            check_model_gradients(model, X.astype(np.float32), y, params=["b2"])
    assert snapshot(model.params) == before


def test_model_nondeterministic_loss_warns(data):
    X, y = data
    model = TinyTwoLayerNet()
    noise = np.random.default_rng(0)
    original_loss = model.loss
    model.loss = lambda X, y: (original_loss(X, y)[0] + noise.random(), original_loss(X, y)[1])
    with pytest.warns(UserWarning, match="not reproducible"):
        check_model_gradients(model, X, y, params=["b2"])


def test_model_scalar_parameter():
    class Scale:
        def __init__(self):
            self.params = {"s": np.array(1.5)}

        def loss(self, X, y):
            s = self.params["s"]
            return float(np.sum((s * X - y) ** 2)), {"s": np.sum(2 * (s * X - y) * X)}

    X = np.array([1.0, 2.0, -1.0])
    report = check_model_gradients(Scale(), X, np.zeros(3))
    assert report["s"].shape == () and report["s"].n_checked == 1 and report.ok(1e-8)


# --------------------------------------------------------------------------------------------
# argument checks, and x restored whatever happens
# --------------------------------------------------------------------------------------------

BAD_H = [0.0, -1e-5, float("nan"), float("inf"), "a", None, True]


@pytest.mark.parametrize("h", BAD_H)
def test_bad_h(h, data):
    x = np.ones(3)
    with pytest.raises(ValueError, match="h must be"):
        eval_numerical_gradient(np.sum, x, h=h)
    with pytest.raises(ValueError, match="h must be"):
        eval_numerical_gradient_array(lambda v: v, x, np.ones(3), h=h)
    with pytest.raises(ValueError, match="h must be"):
        grad_check_sparse(np.sum, x, np.ones(3), h=h)
    with pytest.raises(ValueError, match="h must be"):
        check_model_gradients(TinyTwoLayerNet(), *data, h=h)


@pytest.mark.parametrize("x", [np.arange(3), np.array([True, False]), [1.0, 2.0], 1.0])
def test_x_must_be_a_float_ndarray(x):
    with pytest.raises(TypeError, match="x must"):
        eval_numerical_gradient(np.sum, x)
    with pytest.raises(TypeError, match="x must"):
        eval_numerical_gradient_array(lambda v: v, x, np.ones(3))
    with pytest.raises(TypeError, match="x must"):
        grad_check_sparse(np.sum, x, np.ones(3))


def test_readonly_x():
    x = np.ones(3)
    x.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        eval_numerical_gradient(np.sum, x)


def test_float32_x_warns():
    x = np.ones(3, dtype=np.float32)
    with pytest.warns(UserWarning, match="float32"):
        eval_numerical_gradient(np.sum, x, verbose=False)


def test_df_shape_mismatch_restores_x(rng):
    x = tricky_x((2, 3), rng)
    before = x.copy()
    with pytest.raises(ValueError, match=r"df has shape \(3, 2\)"):
        eval_numerical_gradient_array(lambda v: v * 2, x, np.ones((3, 2)))
    assert_bit_equal(x, before)


def test_sparse_argument_checks():
    x = np.ones((2, 3))
    with pytest.raises(ValueError, match="analytic_grad"):
        grad_check_sparse(np.sum, x, np.ones(6))
    with pytest.raises(TypeError, match="num_checks"):
        grad_check_sparse(np.sum, x, np.ones_like(x), num_checks=2.0)
    with pytest.raises(ValueError, match="num_checks"):
        grad_check_sparse(np.sum, x, np.ones_like(x), num_checks=-1)


def test_f_must_return_a_scalar():
    x = np.ones(3)
    with pytest.raises(ValueError, match="scalar"):
        eval_numerical_gradient(lambda v: v * 2, x)
    assert_bit_equal(x, np.ones(3))


@pytest.mark.parametrize("which", ["eval", "array", "sparse"])
def test_x_restored_when_f_raises(which, rng):
    x = tricky_x((3, 3), rng)
    before = x.copy()
    calls = []

    def f(v):
        calls.append(1)
        if len(calls) == 4:  # the minus side of the second checked entry
            assert v.tobytes() != before.tobytes()  # x is perturbed right now
            raise ArithmeticError("f failed")
        return v * 2 if which == "array" else float(np.sum(v**2))

    with pytest.raises(ArithmeticError, match="f failed"):
        if which == "eval":
            eval_numerical_gradient(f, x, verbose=False)
        elif which == "array":
            eval_numerical_gradient_array(f, x, np.ones((3, 3)))
        else:
            grad_check_sparse(f, x, np.zeros((3, 3)), num_checks=3, seed=4)
    assert_bit_equal(x, before)


def test_model_argument_checks(data):
    X, y = data
    with pytest.raises(ValueError, match="'W3'"):
        check_model_gradients(TinyTwoLayerNet(), X, y, params=["W1", "W3"])
    with pytest.raises(ValueError, match="no parameters"):
        check_model_gradients(TinyTwoLayerNet(), X, y, params=[])
    with pytest.raises(ValueError, match="num_checks"):
        check_model_gradients(TinyTwoLayerNet(), X, y, num_checks=0)
    with pytest.raises(TypeError, match="num_checks"):
        check_model_gradients(TinyTwoLayerNet(), X, y, num_checks="all")
    with pytest.raises(TypeError, match="params"):
        check_model_gradients(object(), X, y)

    int_model = TinyTwoLayerNet()
    int_model.params["b1"] = np.zeros(7, dtype=np.int64)
    with pytest.raises(TypeError, match="b1"):
        check_model_gradients(int_model, X, y)

    scalar_only = TinyTwoLayerNet()
    scalar_only.loss = lambda X, y: 1.0
    with pytest.raises(TypeError, match=r"\(loss, grads\)"):
        check_model_gradients(scalar_only, X, y)

    missing = TinyTwoLayerNet()
    full_loss = missing.loss
    missing.loss = lambda X, y: (full_loss(X, y)[0], {"W1": full_loss(X, y)[1]["W1"]})
    with pytest.raises(ValueError, match="no gradient for parameter 'b1'"):
        check_model_gradients(missing, X, y)

    misshapen = TinyTwoLayerNet()
    misshapen.loss = lambda X, y: (full_loss(X, y)[0], {"b2": np.zeros(4)})
    with pytest.raises(ValueError, match="'b2' has shape"):
        check_model_gradients(misshapen, X, y, params="b2")


def test_public_names():
    assert set(gradcheck.__all__) == {
        "GradCheckEntry",
        "GradCheckReport",
        "check_model_gradients",
        "eval_numerical_gradient",
        "eval_numerical_gradient_array",
        "grad_check_sparse",
        "rel_error",
    }
