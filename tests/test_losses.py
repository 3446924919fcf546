"""Loss kernels (fastbp._kernels._losses) against their NumPy twins (fastbp.reference.losses)."""

import inspect
import threading

import numpy as np
import pytest
from helpers import DTYPES, THREADS, assert_close

from fastbp._kernels import _losses
from fastbp.reference import losses

NAMES = ("softmax_cross_entropy", "svm_hinge", "mse")
SCALE = 0.37


def _inputs(name, n, c, dtype, rng, spread=3.0):
    """Read-only inputs (x, second) for kernel `name`: second is int64 labels or an mse target."""
    x = (spread * rng.standard_normal((n, c))).astype(dtype)
    if name == "mse":
        second = rng.standard_normal((n, c)).astype(dtype)
    else:
        second = rng.integers(0, max(c, 1), n).astype(np.int64)
    x.setflags(write=False)
    second.setflags(write=False)
    return x, second


def _run(module, name, x, second, grad=True, scale=SCALE, n_threads=1):
    """Call `name` on NaN-filled outputs; returns (loss, gradient or None, row_loss)."""
    g = np.full(x.shape, np.nan, x.dtype) if grad else None
    row_loss = np.full(x.shape[0], np.nan)
    loss = getattr(module, name)(x, second, g, row_loss, scale, n_threads)
    return loss, g, row_loss


def _same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# --- the grid: every kernel, dtype, shape and thread count against the reference ----------------

@pytest.mark.parametrize("c", (1, 2, 10, 33, 1000))
@pytest.mark.parametrize("n", (0, 1, 7, 33, 257))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_matches_reference_bitwise_across_threads(name, dtype, n, c, rng):
    x, second = _inputs(name, n, c, dtype, rng)
    ref_loss, ref_g, ref_rl = _run(losses, name, x, second)

    loss, g, row_loss = _run(_losses, name, x, second)
    assert type(loss) is float
    assert np.isfinite(g).all() and np.isfinite(row_loss).all()  # every output element written
    assert_close(row_loss, ref_rl, dtype)
    assert_close(g, ref_g, dtype)
    assert_close(loss, ref_loss, dtype, scale=max(1, n))
    if n == 0:
        assert loss == 0.0

    # bitwise identical run to run and for every thread count, with and without the gradient
    for n_threads in THREADS:
        for _ in range(2):
            loss_t, g_t, rl_t = _run(_losses, name, x, second, n_threads=n_threads)
            assert loss_t.hex() == loss.hex()
            assert _same_bits(rl_t, row_loss) and _same_bits(g_t, g)
        loss_only, none, rl_only = _run(_losses, name, x, second, grad=False, n_threads=n_threads)
        assert none is None
        assert loss_only.hex() == loss.hex() and _same_bits(rl_only, row_loss)


@pytest.mark.parametrize("n", (31, 32, 33, 100))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_rows_batched_in_blocks_equal_rows_one_at_a_time(name, dtype, n, rng):
    """The softmax runs its exps and logs over blocks of rows: every row's loss and gradient is
    bitwise what a one-row call gives, wherever the row falls in a block."""
    x, second = _inputs(name, n, 10, dtype, rng)
    loss, g, row_loss = _run(_losses, name, x, second)
    for i in range(n):
        _, g_i, rl_i = _run(_losses, name, x[i:i + 1], second[i:i + 1])
        assert _same_bits(rl_i, row_loss[i:i + 1]) and _same_bits(g_i, g[i:i + 1])


@pytest.mark.parametrize("c", (1, 7, 512, 513, 1029, 2003))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_loss_only_path_is_the_same_sum(name, dtype, c, rng):
    """Widths around the kernel's stack block (512) and lane count (8): same loss, same bits."""
    x, second = _inputs(name, 5, c, dtype, rng)
    with_grad = _run(_losses, name, x, second)
    loss_only = _run(_losses, name, x, second, grad=False)
    assert loss_only[0].hex() == with_grad[0].hex()
    assert _same_bits(loss_only[2], with_grad[2])
    assert_close(with_grad[2], _run(losses, name, x, second)[2], dtype)


def test_writable_inputs_and_default_arguments(rng):
    x, y = _inputs("softmax_cross_entropy", 7, 10, np.float64, rng)
    x, y = x.copy(), y.copy()
    g, row_loss = np.empty_like(x), np.empty(7)
    loss = _losses.softmax_cross_entropy(x, y, g, row_loss)  # scale=1, n_threads=1
    assert loss == pytest.approx(row_loss.sum(), rel=1e-15)
    assert_close(g.sum(), 0.0, np.float64, scale=10)


# --- hand-worked examples ------------------------------------------------------------------------

@pytest.mark.parametrize("module", (_losses, losses), ids=("kernel", "reference"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", (1, 2, 10, 1000))
def test_softmax_equal_logits_give_log_c(module, dtype, c):
    n = 4
    x = np.full((n, c), 2.5, dtype)
    y = np.arange(n, dtype=np.int64) % c
    g, row_loss = np.empty_like(x), np.empty(n)
    loss = module.softmax_cross_entropy(x, y, g, row_loss, 0.5)
    np.testing.assert_allclose(row_loss, np.log(c), rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(loss, 0.5 * n * np.log(c), rtol=1e-7, atol=1e-7)
    expected = np.full((n, c), 0.5 / c)
    expected[np.arange(n), y] -= 0.5
    assert_close(g, expected, dtype)


@pytest.mark.parametrize("module", (_losses, losses), ids=("kernel", "reference"))
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_two_classes_by_hand(module, dtype):
    # logits (0, log 3): softmax = (1/4, 3/4); label 0 -> loss log 4; label 1 -> log(4/3)
    x = np.array([[0.0, np.log(3.0)], [0.0, np.log(3.0)]], dtype)
    y = np.array([0, 1], np.int64)
    g, row_loss = np.empty_like(x), np.empty(2)
    loss = module.softmax_cross_entropy(x, y, g, row_loss, 1.0)
    np.testing.assert_allclose(row_loss, [np.log(4.0), np.log(4.0 / 3.0)], rtol=1e-6)
    np.testing.assert_allclose(loss, np.log(16.0 / 3.0), rtol=1e-6)
    np.testing.assert_allclose(g, [[-0.75, 0.75], [0.25, -0.25]], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("module", (_losses, losses), ids=("kernel", "reference"))
@pytest.mark.parametrize("dtype", DTYPES)
def test_svm_by_hand(module, dtype):
    # row 0, y = 0: margins 2 - 1 + 1 = 2 and 0.5 - 1 + 1 = 0.5 -> loss 2.5, two positive
    # row 1, y = 2: margins 0 - 0 + 1 = 1 and -1 - 0 + 1 = 0 (exactly 0: no loss, no gradient)
    s = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 0.0]], dtype)
    y = np.array([0, 2], np.int64)
    g, row_loss = np.empty_like(s), np.empty(2)
    loss = module.svm_hinge(s, y, g, row_loss, 0.5)
    assert row_loss.tolist() == [2.5, 1.0]
    assert loss == 0.5 * 3.5
    assert g.tolist() == [[-1.0, 0.5, 0.5], [0.5, 0.0, -0.5]]


@pytest.mark.parametrize("module", (_losses, losses), ids=("kernel", "reference"))
@pytest.mark.parametrize("dtype", DTYPES)
def test_mse_by_hand(module, dtype):
    p = np.array([[1.0, 2.0], [3.0, 4.0]], dtype)
    t = np.array([[0.0, 2.0], [5.0, 4.0]], dtype)
    g, row_loss = np.empty_like(p), np.empty(2)
    loss = module.mse(p, t, g, row_loss, 0.25)  # the mean over N·D = 4 elements
    assert row_loss.tolist() == [1.0, 4.0]
    assert loss == 1.25
    assert g.tolist() == [[0.5, 0.0], [-1.0, 0.0]]


@pytest.mark.parametrize("name", ("softmax_cross_entropy", "svm_hinge"))
def test_one_class_has_zero_loss_and_gradient(name, rng):
    x = rng.standard_normal((7, 1))
    loss, g, row_loss = _run(_losses, name, x, np.zeros(7, np.int64))
    assert loss == 0.0 and not row_loss.any() and not g.any()


# --- calculus ------------------------------------------------------------------------------------

def _numerical_gradient(f, x, h):
    x = x.copy()
    grad = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + h
        up = f(x)
        x[idx] = old - h
        down = f(x)
        x[idx] = old
        grad[idx] = (up - down) / (2 * h)
    return grad


def _away_from_kinks(rng, n, c, gap=0.05):
    """float64 scores whose every hinge margin s_j - s_y + 1 (j != y) is at least `gap` from 0."""
    while True:
        s = rng.standard_normal((n, c))
        y = rng.integers(0, c, n)
        margins = s - s[np.arange(n), y][:, None] + 1
        margins[np.arange(n), y] = 1
        if np.abs(margins).min() > gap and (margins > 0).sum() > n:
            return s, y


@pytest.mark.parametrize("name", NAMES)
def test_gradient_matches_finite_differences(name, rng):
    n, c = 5, 7
    if name == "svm_hinge":
        x, second = _away_from_kinks(rng, n, c)
    else:
        x, second = _inputs(name, n, c, np.float64, rng, spread=2.0)
    kernel = getattr(_losses, name)
    row_loss = np.empty(n)
    g = np.empty((n, c))
    kernel(x, second, g, row_loss, SCALE)
    numerical = _numerical_gradient(lambda v: kernel(v, second, None, row_loss, SCALE), x, 1e-6)
    np.testing.assert_allclose(g, numerical, rtol=1e-6, atol=1e-9)
    assert np.abs(g).max() > 0.01  # a real gradient was compared


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", (2, 10, 1000))
def test_softmax_gradient_rows_sum_to_zero(dtype, c, rng):
    x, y = _inputs("softmax_cross_entropy", 33, c, dtype, rng)
    _, g, _ = _run(_losses, "softmax_cross_entropy", x, y)
    row_sums = g.astype(np.float64).sum(axis=1)
    assert np.abs(row_sums).max() <= 8 * np.finfo(dtype).eps * SCALE
    assert np.abs(g).max() > 0.01 * SCALE


# --- numerics at the edges -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", (2, 10, 1000))
def test_extreme_logits_stay_finite(dtype, c, rng):
    n = 9
    x = (1e4 * rng.choice([-1.0, 1.0], (n, c)) + rng.standard_normal((n, c))).astype(dtype)
    x[0] = 1e4  # all equal and huge: log C
    x[1] = -1e4
    x.setflags(write=False)
    y = rng.integers(0, c, n).astype(np.int64)
    for name in ("softmax_cross_entropy", "svm_hinge"):
        loss, g, row_loss = _run(_losses, name, x, y)
        ref_loss, ref_g, ref_rl = _run(losses, name, x, y)
        assert np.isfinite(loss) and np.isfinite(g).all() and np.isfinite(row_loss).all()
        assert_close(row_loss, ref_rl, dtype, scale=1e4)
        assert_close(g, ref_g, dtype)
        assert_close(loss, ref_loss, dtype, scale=1e4 * n)
    _, _, row_loss = _run(_losses, "softmax_cross_entropy", x, y)
    np.testing.assert_allclose(row_loss[:2], np.log(c), rtol=1e-6)
    assert row_loss.max() > 1e4  # some rows are ~2e4 away from the max: a large, finite loss


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_nan_propagates_to_its_row(name, dtype, rng):
    x, second = _inputs(name, 6, 10, dtype, rng)
    x = x.copy()
    x[2, 3] = np.nan  # not the first column: the running max may skip it
    x[4, 0] = np.nan
    if name != "mse":
        second = np.where(np.arange(6) == 2, 5, second)  # NaN off the label column in row 2
    loss, g, row_loss = _run(_losses, name, x, second)
    ref_loss, ref_g, ref_rl = _run(losses, name, x, second)
    assert np.isnan(loss) and np.isnan(ref_loss)
    assert np.isnan(row_loss[[2, 4]]).all() and np.isfinite(row_loss[[0, 1, 3, 5]]).all()
    assert_close(row_loss, ref_rl, dtype)  # NaN in the same places, equal elsewhere
    assert_close(g, ref_g, dtype)
    assert np.isfinite(g[[0, 1, 3, 5]]).all()
    if name == "softmax_cross_entropy":  # the normaliser is NaN: the whole row
        assert np.isnan(g[[2, 4]]).all()
    elif name == "mse":  # elementwise: only the NaN entries
        assert np.isnan(g).sum() == 2 and np.isnan(g[2, 3]) and np.isnan(g[4, 0])
    else:  # a NaN margin is not > 0, so it gets no gradient (as in the course code)
        assert np.isfinite(g).all()


# --- contracts -----------------------------------------------------------------------------------

def test_kernels_and_reference_export_the_same_signatures():
    assert _losses.__all__ == losses.__all__ == list(NAMES)
    for name in NAMES:
        kernel_sig = inspect.signature(getattr(_losses, name))
        reference_sig = inspect.signature(getattr(losses, name))
        assert list(kernel_sig.parameters) == list(reference_sig.parameters)
        assert list(kernel_sig.parameters)[-2:] == ["scale", "n_threads"]


def _bad_calls(name, dtype):
    """(description, args, message pattern) for calls whose shapes disagree."""
    n, c = 4, 3
    x = np.zeros((n, c), dtype)
    rl = np.zeros(n)
    if name == "mse":
        return [
            ("target shape", (x, np.zeros((n, c + 1), dtype), None, rl), "target"),
            ("dpred shape", (x, x.copy(), np.zeros((n, c + 1), dtype), rl), "dpred"),
            ("row_loss rows", (x, x.copy(), None, np.zeros(n + 1)), "row_loss"),
        ]
    grad = "dlogits" if name == "softmax_cross_entropy" else "dscores"
    y = np.zeros(n, np.int64)
    return [
        ("labels rows", (x, np.zeros(n + 1, np.int64), None, rl), "labels"),
        ("gradient shape", (x, y, np.zeros((n + 1, c), dtype), rl), grad),
        ("row_loss rows", (x, y, None, np.zeros(n - 1)), "row_loss"),
        ("label too big", (x, np.array([0, 1, 3, 0]), None, rl), r"labels\[2\] = 3"),
        ("negative label", (x, np.array([0, -1, 0, 0]), None, rl), r"labels\[1\] = -1"),
        ("no classes", (np.zeros((n, 0), dtype), y, None, rl), "no columns"),
    ]


@pytest.mark.parametrize("module", (_losses, losses), ids=("kernel", "reference"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_mismatched_shapes_raise_value_error(module, name, dtype):
    for what, args, message in _bad_calls(name, dtype):
        with pytest.raises(ValueError, match=message):
            getattr(module, name)(*args)


@pytest.mark.parametrize("name", NAMES)
def test_kernel_rejects_wrong_dtypes_overlap_and_threads(name):
    x = np.zeros((4, 3), np.float32)
    second = x.copy() if name == "mse" else np.zeros(4, np.int64)
    kernel = getattr(_losses, name)
    with pytest.raises(ValueError):  # gradient dtype differs from the input's
        kernel(x, second, np.zeros((4, 3), np.float64), np.zeros(4))
    with pytest.raises(ValueError):  # row_loss must be float64
        kernel(x, second, None, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="overlaps"):  # gradient written over the input
        kernel(x, second, x, np.zeros(4))
    with pytest.raises(ValueError, match="n_threads"):
        kernel(x, second, None, np.zeros(4), 1.0, 0)
    if name != "mse":
        with pytest.raises(ValueError):  # labels must be int64
            kernel(x, second.astype(np.int32), None, np.zeros(4))


@pytest.mark.parametrize("module", (_losses, losses), ids=("kernel", "reference"))
def test_empty_batch(module):
    for c in (0, 1, 10):
        x = np.zeros((0, c))
        assert module.softmax_cross_entropy(x, np.zeros(0, np.int64), x.copy(), np.zeros(0)) == 0.0
        assert module.svm_hinge(x, np.zeros(0, np.int64), None, np.zeros(0)) == 0.0
        assert module.mse(x, x.copy(), x.copy(), np.zeros(0)) == 0.0
    row_loss = np.full(3, np.nan)
    assert module.mse(np.zeros((3, 0)), np.zeros((3, 0)), None, row_loss) == 0.0
    assert not row_loss.any()


def test_two_python_threads_at_once(rng):
    """The kernels are re-entrant: concurrent calls on separate buffers give the serial answer."""
    x, y = _inputs("softmax_cross_entropy", 257, 1000, np.float32, rng)
    expected = _run(_losses, "softmax_cross_entropy", x, y)
    results = [None, None]

    def work(k):
        results[k] = [_run(_losses, "softmax_cross_entropy", x, y, n_threads=2) for _ in range(5)]

    workers = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for loss, g, row_loss in results[0] + results[1]:
        assert loss == expected[0] and _same_bits(g, expected[1])


# --- PyTorch ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_torch(dtype, rng):
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    n, c = 33, 10

    def torch_loss_and_grad(fn, x, *rest, **kw):
        xt = torch.tensor(np.asarray(x), requires_grad=True)
        loss = fn(xt, *[torch.tensor(np.asarray(r)) for r in rest], **kw)
        loss.backward()
        return loss.item(), xt.grad.numpy()

    # cross_entropy (mean over N) == softmax_cross_entropy with scale 1/N
    x, y = _inputs("softmax_cross_entropy", n, c, dtype, rng)
    want, want_g = torch_loss_and_grad(functional.cross_entropy, x, y)
    loss, g, _ = _run(_losses, "softmax_cross_entropy", x, y, scale=1 / n)
    assert_close(loss, want, dtype)
    assert_close(g, want_g, dtype)

    # multi_margin_loss divides each row's hinge sum by C, then means over N: scale 1/(N·C)
    s, y = _away_from_kinks(rng, n, c)
    s = s.astype(dtype)
    want, want_g = torch_loss_and_grad(functional.multi_margin_loss, s, y, p=1, margin=1.0)
    loss, g, _ = _run(_losses, "svm_hinge", s, y, scale=1 / (n * c))
    assert_close(loss, want, dtype)
    assert_close(g, want_g, dtype)

    # mse_loss (mean over all elements) == mse with scale 1/(N·D)
    p, t = _inputs("mse", n, c, dtype, rng)
    want, want_g = torch_loss_and_grad(functional.mse_loss, p, t)
    loss, g, _ = _run(_losses, "mse", p, t, scale=1 / (n * c))
    assert_close(loss, want, dtype)
    assert_close(g, want_g, dtype)
