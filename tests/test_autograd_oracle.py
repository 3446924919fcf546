"""fastbp.autograd gradients against oracles: central differences (gradcheck, float64) on every
op, PyTorch on random DAGs with fan-out and broadcasting, and the NumPy reference backend
("numpy", "checked") over the whole engine."""

import numpy as np
import pytest

import fastbp
import fastbp.autograd as ag
from fastbp.autograd import GradcheckError, Tensor, gradcheck

SEED = 20261201


def away_from_zero(rng, shape, low=0.2):
    """Random values with |x| >= low: no op sits on a kink (relu at 0, ties, hinge margins)."""
    return rng.choice([-1.0, 1.0], size=shape) * (low + rng.random(shape))


LABELS = np.array([0, 2, 1, 2])

#: name -> (function of tensors, input arrays); every differentiable op of fastbp.autograd
GRADCHECK_CASES = {
    "add": (lambda a, b: a + b, [(3, 1), (4,)]),
    "sub": (lambda a, b: a - b, [(2, 3), (3,)]),
    "rsub": (lambda a: 2.0 - a, [(3,)]),
    "mul": (lambda a, b: a * b, [(2, 1, 3), (4, 1)]),
    "div": (lambda a, b: a / b, [(2, 3), (1, 3)]),
    "rdiv": (lambda a: 1.0 / a, [(3,)]),
    "neg": (lambda a: -a, [(2, 2)]),
    "pow": (lambda a: (a * a) ** 1.5, [(3,)]),
    "matmul 2x2": (lambda a, b: a @ b, [(2, 3), (3, 4)]),
    "matmul 1x2": (lambda a, b: a @ b, [(3,), (3, 4)]),
    "matmul 2x1": (lambda a, b: a @ b, [(2, 3), (3,)]),
    "matmul 1x1": (lambda a, b: a @ b, [(3,), (3,)]),
    "sum": (lambda a: a.sum(), [(2, 3)]),
    "sum axis": (lambda a: a.sum(axis=(0, 2)), [(2, 3, 2)]),
    "mean keepdims": (lambda a: a.mean(axis=1, keepdims=True), [(2, 3)]),
    "max": (lambda a: a.max(axis=0), [(3, 2)]),
    "max all": (lambda a: a.max(), [(3, 2)]),
    "exp": (lambda a: ag.exp(a), [(2, 2)]),
    "log": (lambda a: ag.log(a * a), [(2, 2)]),
    "maximum": (lambda a, b: ag.maximum(a, b), [(2, 3), (3,)]),
    "minimum": (lambda a, b: ag.minimum(a, b), [(2, 3), (2, 1)]),
    "relu": (ag.relu, [(3, 3)]),
    "leaky_relu": (lambda a: ag.leaky_relu(a, 0.2), [(3, 3)]),
    "sigmoid": (ag.sigmoid, [(3, 3)]),
    "tanh": (ag.tanh, [(3, 3)]),
    "elu": (lambda a: ag.elu(a, 0.7), [(3, 3)]),
    "gelu": (ag.gelu, [(3, 3)]),
    "gelu tanh": (lambda a: ag.gelu(a, approximate="tanh"), [(3, 3)]),
    "linear": (ag.linear, [(4, 3), (3, 2), (2,)]),
    "linear no bias": (ag.linear, [(4, 3), (3, 2)]),
    "softmax_cross_entropy": (lambda s: ag.softmax_cross_entropy(s, LABELS), [(4, 3)]),
    "svm_hinge": (lambda s: ag.svm_hinge(s * 3.0, LABELS), [(4, 3)]),
    "mse": (ag.mse, [(4, 3), (4, 3)]),
    "mse 1-D": (ag.mse, [(5,), (5,)]),
    "dropout": (lambda a: ag.dropout(a, 0.4, 11), [(4, 5)]),
    "reshape": (lambda a: a.reshape(3, 2) * np.arange(6.0).reshape(3, 2), [(2, 3)]),
    "transpose": (lambda a: a.transpose(2, 0, 1) * np.arange(12.0).reshape(2, 2, 3),
                  [(2, 3, 2)]),
    "T": (lambda a: a.T @ np.arange(6.0).reshape(2, 3), [(2, 2)]),
    "getitem basic": (lambda a: a[1:, None, ::2] * 3.0, [(3, 4)]),
    "getitem rows": (lambda a: a[[2, 0, 2]], [(3, 2)]),
    "concatenate": (lambda a, b: ag.concatenate([a, b, a], axis=-1), [(2, 1), (2, 3)]),
}


@pytest.mark.parametrize("name", list(GRADCHECK_CASES))
def test_gradcheck_every_op(name):
    rng = np.random.default_rng(SEED)
    f, shapes = GRADCHECK_CASES[name]
    inputs = [Tensor(away_from_zero(rng, s), requires_grad=True) for s in shapes]
    assert gradcheck(f, inputs)


def test_gradcheck_catches_a_wrong_gradient():
    def wrong(a):
        out = ag.exp(a)
        out._backward = lambda g: (g * 2.0,)  # deliberately not exp's derivative
        return out

    with pytest.raises(GradcheckError, match=r"input 0.*central differences"):
        gradcheck(wrong, [Tensor([0.5, 1.0], requires_grad=True)])
    with pytest.raises(ValueError, match="no input requires grad"):
        gradcheck(ag.exp, [Tensor([1.0])])


def test_gradcheck_leaves_the_callers_tensors_alone():
    x = Tensor(np.array([1.0, 2.0], np.float32), requires_grad=True)
    gradcheck(lambda a: (a * a).sum(), [x])
    assert x.grad is None and x.dtype == np.float32


# -------------------------------------------------------------- random DAGs, two frameworks

SHAPES = [(4, 3), (3,), (4, 1), (1, 3)]


def _program(rng, n_ops=14):
    """A random program over 4 leaves: [(op, argument indices)], each argument an earlier value
    (so values fan out), shapes broadcasting to (4, 3)."""
    unary = ["exp", "log", "relu", "leaky_relu", "sigmoid", "tanh", "elu", "gelu", "gelu_tanh",
             "square", "cube", "neg", "sum0", "mean1", "max0", "linear", "gram", "rows",
             "concat_cols", "reshape_T"]
    binary = ["add", "sub", "mul", "div", "maximum", "minimum"]
    steps = []
    for i in range(n_ops):
        n_values = 4 + i
        if rng.random() < 0.5:
            args = tuple(int(j) for j in rng.integers(0, n_values, 2))
            steps.append((str(rng.choice(binary)), args))
        else:
            steps.append((str(rng.choice(unary)), (int(rng.integers(0, n_values)),)))
    return steps


def _fastbp_ops(W, b):
    Z = np.zeros((4, 3))
    return {
        "add": lambda x, y: x + y, "sub": lambda x, y: x - y, "mul": lambda x, y: x * y,
        "div": lambda x, y: x / (y * y + 1.0), "maximum": ag.maximum, "minimum": ag.minimum,
        "exp": lambda x: ag.exp(ag.tanh(x)), "log": lambda x: ag.log(x * x + 1.0),
        "relu": ag.relu, "leaky_relu": lambda x: ag.leaky_relu(x, 0.1), "sigmoid": ag.sigmoid,
        "tanh": ag.tanh, "elu": ag.elu, "gelu": ag.gelu,
        "gelu_tanh": lambda x: ag.gelu(x, approximate="tanh"),
        "square": lambda x: x ** 2, "cube": lambda x: ag.tanh(x) ** 3.0, "neg": lambda x: -x,
        "sum0": lambda x: x.sum(axis=0, keepdims=True) * 0.5,
        "mean1": lambda x: x.mean(axis=-1, keepdims=True),
        "max0": lambda x: x.max(axis=0, keepdims=True),
        "linear": lambda x: ag.tanh(ag.linear(x + Z, W, b)),
        "gram": lambda x: (x + Z) @ ((x + Z).T @ ag.tanh(x + Z)) * 0.1,
        "rows": lambda x: (x + Z)[[0, 2, 2, 1]],
        "concat_cols": lambda x: ag.concatenate([(x + Z)[:, :2], ag.sigmoid(x + Z)[:, 2:]], axis=1),
        "reshape_T": lambda x: (x + Z).reshape(3, 4).T.reshape(4, 3),
    }


def _torch_ops(torch, W, b):
    F = torch.nn.functional
    Z = torch.zeros((4, 3), dtype=torch.float64)
    rows = torch.tensor([0, 2, 2, 1])
    return {
        "add": lambda x, y: x + y, "sub": lambda x, y: x - y, "mul": lambda x, y: x * y,
        "div": lambda x, y: x / (y * y + 1.0), "maximum": torch.maximum, "minimum": torch.minimum,
        "exp": lambda x: torch.exp(torch.tanh(x)), "log": lambda x: torch.log(x * x + 1.0),
        "relu": torch.relu, "leaky_relu": lambda x: F.leaky_relu(x, 0.1), "sigmoid": torch.sigmoid,
        "tanh": torch.tanh, "elu": F.elu, "gelu": F.gelu,
        "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
        "square": lambda x: x ** 2, "cube": lambda x: torch.tanh(x) ** 3.0, "neg": lambda x: -x,
        "sum0": lambda x: x.sum(dim=0, keepdim=True) * 0.5,
        "mean1": lambda x: x.mean(dim=-1, keepdim=True),
        "max0": lambda x: torch.amax(x, dim=0, keepdim=True),
        "linear": lambda x: torch.tanh((x + Z) @ W + b),
        "gram": lambda x: (x + Z) @ ((x + Z).T @ torch.tanh(x + Z)) * 0.1,
        "rows": lambda x: (x + Z)[rows],
        "concat_cols": lambda x: torch.cat([(x + Z)[:, :2], torch.sigmoid(x + Z)[:, 2:]], dim=1),
        "reshape_T": lambda x: (x + Z).reshape(3, 4).T.reshape(4, 3),
    }


def _run(program, values, ops, losses, scale):
    """Evaluate `program` on the leaves `values`; return a scalar touching every value."""
    values = list(values)
    for op, args in program:
        values.append(ops[op](*(values[i] for i in args)))
    ce, hinge, mse = losses
    total = sum(v.sum() * (0.1 * (k + 1)) for k, v in enumerate(values))
    last, other = values[-1], values[-2]
    return (total + ce(last * scale) + hinge(other * scale)
            + mse(ops["add"](last, other), ops["mul"](other, other)))


N_TRIALS = 12


def test_the_random_programs_cover_every_op():
    used = {op for trial in range(N_TRIALS)
            for op, _ in _program(np.random.default_rng(SEED + trial))}
    assert used == set(_fastbp_ops(None, None))


@pytest.mark.parametrize("scale", [1.0, 1e4], ids=["logits ~1", "logits ~1e4"])
@pytest.mark.parametrize("trial", range(N_TRIALS))
def test_random_dags_match_pytorch(trial, scale):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(SEED + trial)
    program = _program(rng)
    leaf_values = [rng.standard_normal(s) for s in SHAPES]
    w, bias = rng.standard_normal((3, 3)), rng.standard_normal(3)
    labels = rng.integers(0, 3, 4)
    F = torch.nn.functional
    Zt = torch.zeros((4, 3), dtype=torch.float64)

    ours = [Tensor(v.copy(), requires_grad=True) for v in leaf_values]
    W, b = Tensor(w.copy(), requires_grad=True), Tensor(bias.copy(), requires_grad=True)
    Z = np.zeros((4, 3))
    loss = _run(program, ours, _fastbp_ops(W, b),
                (lambda s: ag.softmax_cross_entropy(s + Z, labels),
                 lambda s: ag.svm_hinge(s + Z, labels),
                 lambda p, t: ag.mse(p + Z, t + Z)), scale)
    loss.backward()

    theirs = [torch.tensor(v, requires_grad=True) for v in leaf_values]
    Wt, bt = torch.tensor(w, requires_grad=True), torch.tensor(bias, requires_grad=True)
    yt = torch.tensor(labels)
    expected = _run(program, theirs, _torch_ops(torch, Wt, bt),
                    (lambda s: F.cross_entropy(s + Zt, yt),
                     lambda s: F.multi_margin_loss(s + Zt, yt) * 3,  # torch divides by C
                     lambda p, t: F.mse_loss(p + Zt, t + Zt)), scale)
    expected.backward()

    assert loss.item() == pytest.approx(expected.item(), rel=1e-10, abs=1e-10)
    for mine, ref in zip(ours + [W, b], theirs + [Wt, bt]):
        if ref.grad is None:
            assert mine.grad is None or not np.any(mine.grad)
            continue
        np.testing.assert_allclose(mine.grad, ref.grad.numpy(), rtol=1e-9, atol=1e-9 * scale)


# ------------------------------------------------------------------ the backends, whole engine


def _mlp_gradients(rng_seed, dtype):
    rng = np.random.default_rng(rng_seed)
    x = rng.standard_normal((16, 7)).astype(dtype)
    y = rng.integers(0, 5, 16)
    params = [Tensor(a.astype(dtype), requires_grad=True) for a in (
        rng.standard_normal((7, 9)) * 0.4, rng.standard_normal(9) * 0.1,
        rng.standard_normal((9, 9)) * 0.3, rng.standard_normal((9, 5)) * 0.4)]
    W1, b1, W2, W3 = params
    h = ag.relu(ag.linear(x, W1, b1))
    h = h + ag.gelu(ag.linear(ag.dropout(h, 0.2, 3), W2))  # a residual block
    h = ag.sigmoid(h) * ag.tanh(h) + ag.elu(h) - ag.leaky_relu(h, 0.05)
    logits = h @ W3
    loss = (ag.softmax_cross_entropy(logits, y) + ag.svm_hinge(logits, y)
            + ag.mse(logits, np.zeros_like(logits)))
    loss.backward()
    return loss.item(), [p.grad for p in params]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", ["numpy", "checked"])
def test_the_whole_engine_runs_on_every_backend(backend, dtype):
    loss, grads = _mlp_gradients(3, dtype)
    with fastbp.use_backend(backend):  # "checked" raises CheckError on any disagreement
        other_loss, other_grads = _mlp_gradients(3, dtype)
    tol = dict(rtol=2e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-12)
    assert other_loss == pytest.approx(loss, rel=tol["rtol"])
    for g, h in zip(grads, other_grads):
        assert g.dtype == h.dtype == dtype
        np.testing.assert_allclose(h, g, **tol)


def test_checked_backend_catches_a_wrong_kernel_inside_the_engine(monkeypatch):
    from fastbp import _kernels

    real = _kernels.relu_backward

    def broken(dout, x, dx, n_threads=1):
        real(dout, x, dx, n_threads)
        dx *= 2

    monkeypatch.setattr(_kernels, "relu_backward", broken)
    x = Tensor(np.array([[1.0, -1.0, 2.0]]), requires_grad=True)
    with fastbp.use_backend("checked"):
        y = ag.relu(x).sum()
        with pytest.raises(fastbp.CheckError, match="relu_backward"):
            y.backward()


def test_dropout_gradient_is_the_mask_and_backends_agree():
    x = Tensor(np.ones((50, 40)), requires_grad=True)
    out = ag.dropout(x, 0.3, 123)
    out.sum().backward()
    np.testing.assert_array_equal(x.grad, out.data)  # mask / keep_prob, from the same draw
    kept = np.count_nonzero(out.data) / out.size
    assert 0.6 < kept < 0.8
    np.testing.assert_allclose(out.data[out.data != 0], 1 / 0.7)
    with fastbp.use_backend("numpy"):
        np.testing.assert_array_equal(ag.dropout(x, 0.3, 123).data, out.data)
