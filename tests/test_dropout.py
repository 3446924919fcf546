"""Dropout: the counter-based kernels against their NumPy twin (bit for bit, any thread count),
and the course layer contract (statistics, reproducibility, gradients, bad input, backends).

The course draws its mask from ``np.random.rand``; fastbp's mask is a hash of (seed, index), so
the course's exact numbers cannot be reproduced, only its statistics: those are asserted here.
"""

import numpy as np
import pytest
from helpers import DTYPES, THREADS

import fastbp
from fastbp import _kernels, reference
from fastbp.gradcheck import eval_numerical_gradient_array, rel_error
from fastbp.layers import dropout_backward, dropout_forward
from fastbp.reference.dropout import GOLDEN, _mix64_int

SIZES = (0, 1, 7, 33, 40_000)
KEEP = (0.05, 0.25, 0.5, 0.8, 1.0)


def _run_forward(impl, x, keep_prob, seed, n_threads=1):
    out, mask = np.full_like(x, np.nan), np.full_like(x, np.nan)
    impl.dropout_forward(x, out, mask, keep_prob, seed, n_threads)
    return out, mask


# --------------------------------------------------------------------------------------------
# kernels


def test_hash_is_splitmix64():
    # the first output of splitmix64 seeded with 0 (Vigna's reference implementation)
    assert _mix64_int(GOLDEN) == 0xE220A8397B1DCDAF


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("keep_prob", KEEP)
def test_kernel_matches_reference_bitwise(rng, dtype, n, keep_prob):
    x = rng.standard_normal(n).astype(dtype)
    for seed in (0, 1, 12345, 2**64 - 1):
        want_out, want_mask = _run_forward(reference, x, keep_prob, seed)
        for n_threads in THREADS:
            out, mask = _run_forward(_kernels, x, keep_prob, seed, n_threads)
            np.testing.assert_array_equal(mask, want_mask)
            np.testing.assert_array_equal(out, want_out)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_mask_values_and_outputs_in_given_buffers(rng, dtype):
    x = rng.standard_normal(1000).astype(dtype)
    x.setflags(write=False)  # const input
    out, mask = np.empty_like(x), np.empty_like(x)
    _kernels.dropout_forward(x, out, mask, 0.3, 7, 2)
    assert set(np.unique(mask)) == {dtype(0), dtype(1 / 0.3)}
    np.testing.assert_array_equal(out, x * mask)
    dx = np.empty_like(x)
    _kernels.dropout_backward(x, mask, dx, 2)
    np.testing.assert_array_equal(dx, x * mask)


@pytest.mark.parametrize("impl", [_kernels, reference], ids=["compiled", "numpy"])
def test_keep_prob_one_is_identity(rng, impl):
    x = rng.standard_normal(999)
    out, mask = _run_forward(impl, x, 1.0, 3)
    np.testing.assert_array_equal(mask, 1.0)
    np.testing.assert_array_equal(out, x)


@pytest.mark.parametrize("impl", [_kernels, reference], ids=["compiled", "numpy"])
def test_kernel_rejects_bad_lengths_and_keep_prob(impl):
    x = np.ones(5)
    with pytest.raises(ValueError, match="out"):
        impl.dropout_forward(x, np.empty(4), np.empty(5), 0.5, 0)
    with pytest.raises(ValueError, match="mask"):
        impl.dropout_forward(x, np.empty(5), np.empty(6), 0.5, 0)
    for bad in (0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match="keep_prob"):
            impl.dropout_forward(x, np.empty(5), np.empty(5), bad, 0)
    with pytest.raises(ValueError):
        impl.dropout_backward(x, np.empty(4), np.empty(5))


# --------------------------------------------------------------------------------------------
# the course layer: statistics


@pytest.mark.parametrize("p", [0.25, 0.4, 0.7])
def test_train_statistics_match_the_course_check(p):
    # the course notebook's check: x = randn(500, 500) + 10, modes train and test
    np.random.seed(231)
    x = np.random.randn(500, 500) + 10
    out, (param, mask) = dropout_forward(x, {"mode": "train", "p": p})
    out_test, _ = dropout_forward(x, {"mode": "test", "p": p})
    n = x.size
    kept = np.mean(out != 0)
    assert abs(kept - p) < 5 * np.sqrt(p * (1 - p) / n)
    # E[out] = E[x]; the sample mean's standard deviation is sqrt(E[x^2] (1 - p) / p / n)
    sigma = np.sqrt(np.mean(x**2) * (1 - p) / p / n)
    assert abs(out.mean() - x.mean()) < 5 * sigma
    np.testing.assert_array_equal(out[mask != 0], x[mask != 0] * (1 / p))  # inverted: scaled by 1/p
    assert out_test is x and np.mean(out_test == 0) == 0


def test_mask_has_no_visible_structure():
    # kept indicators of neighbouring elements, rows and columns are uncorrelated, and every
    # block of the array keeps about p (a weak hash would show stripes or periodicity)
    p = 0.5
    out, (_, mask) = dropout_forward(np.ones((400, 400)), {"mode": "train", "p": p, "seed": 9})
    k = (mask != 0).astype(np.float64) - p
    bound = 5 * p * (1 - p) / np.sqrt(k.size)
    assert abs(np.mean(k[:, 1:] * k[:, :-1])) < bound
    assert abs(np.mean(k[1:, :] * k[:-1, :])) < bound
    blocks = (mask != 0).reshape(20, 20, 20, 20).mean(axis=(1, 3))
    assert np.all(np.abs(blocks - p) < 5 * np.sqrt(p * (1 - p) / 400))


def test_seeded_masks_are_reproducible_and_seeds_differ(rng):
    x = rng.standard_normal((64, 33))
    a, (_, ma) = dropout_forward(x, {"mode": "train", "p": 0.5, "seed": 123})
    b, (_, mb) = dropout_forward(x, {"mode": "train", "p": 0.5, "seed": 123})
    c, (_, mc) = dropout_forward(x, {"mode": "train", "p": 0.5, "seed": 124})
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma, mb)
    # two independent masks agree on about half the entries
    assert 0.4 < np.mean((ma != 0) == (mc != 0)) < 0.6


def test_unseeded_masks_follow_numpy_global_state(rng):
    x = rng.standard_normal((50, 50))
    param = {"mode": "train", "p": 0.5}
    np.random.seed(0)
    a, _ = dropout_forward(x, param)
    b, _ = dropout_forward(x, param)
    np.random.seed(0)
    c, _ = dropout_forward(x, param)
    assert not np.array_equal(a, b)  # a fresh mask every call
    np.testing.assert_array_equal(a, c)  # np.random.seed makes the run reproducible
    assert "seed" not in param  # the caller's dict is not modified


def test_thread_count_does_not_change_the_mask(rng):
    x = rng.standard_normal((300, 300))
    param = {"mode": "train", "p": 0.3, "seed": 5}
    outs = []
    for n in (1, 2):
        fastbp.set_num_threads(n)
        try:
            outs.append(dropout_forward(x, param)[0])
        finally:
            fastbp.set_num_threads(None)
    np.testing.assert_array_equal(outs[0], outs[1])


# --------------------------------------------------------------------------------------------
# the course layer: contract, gradients, dtypes


def test_backward_course_check():
    np.random.seed(231)
    x = np.random.randn(10, 10) + 10
    dout = np.random.randn(*x.shape)
    dropout_param = {"mode": "train", "p": 0.2, "seed": 123}
    out, cache = dropout_forward(x, dropout_param)
    dx = dropout_backward(dout, cache)
    dx_num = eval_numerical_gradient_array(
        lambda xx: dropout_forward(xx, dropout_param)[0], x, dout)
    assert rel_error(dx, dx_num) < 1e-10
    np.testing.assert_array_equal(dx, dout * cache[1])


def test_test_mode_passes_through():
    x = np.arange(6.0).reshape(2, 3)
    out, cache = dropout_forward(x, {"mode": "test", "p": 0.3})
    assert out is x and cache[1] is None
    dout = np.ones((2, 3))
    assert dropout_backward(dout, cache) is dout


@pytest.mark.parametrize("dtype", DTYPES)
def test_dtype_and_shape_are_kept(rng, dtype):
    x = rng.standard_normal((3, 4, 5)).astype(dtype)
    out, cache = dropout_forward(x, {"mode": "train", "p": 0.6, "seed": 1})
    mask = cache[1]
    assert out.dtype == dtype and mask.dtype == dtype and out.shape == mask.shape == x.shape
    dx = dropout_backward(np.ones_like(x), cache)
    assert dx.dtype == dtype and dx.shape == x.shape


def test_integer_input_computes_in_float64_and_noncontiguous_input_works():
    x = np.arange(24).reshape(4, 6)
    out, (_, mask) = dropout_forward(x, {"mode": "train", "p": 0.5, "seed": 2})
    assert out.dtype == np.float64
    strided = np.asarray(x, dtype=np.float64)[:, ::2]
    out2, (_, mask2) = dropout_forward(strided, {"mode": "train", "p": 0.5, "seed": 2})
    np.testing.assert_array_equal(out2, strided * mask2)


@pytest.mark.parametrize(
    "param, error, match",
    [
        ({"mode": "eval", "p": 0.5}, ValueError, "mode"),
        ({"p": 0.5}, ValueError, "mode"),
        ({"mode": "train"}, ValueError, "'p'"),
        ({"mode": "train", "p": 0.0}, ValueError, r"\(0, 1\]"),
        ({"mode": "train", "p": 1.2}, ValueError, r"\(0, 1\]"),
        ({"mode": "test", "p": -1}, ValueError, r"\(0, 1\]"),
        ({"mode": "train", "p": "0.5"}, TypeError, "real number"),
        ({"mode": "train", "p": 0.5, "seed": -1}, ValueError, "seed"),
        ({"mode": "train", "p": 0.5, "seed": 2**64}, ValueError, "seed"),
        ({"mode": "train", "p": 0.5, "seed": 1.5}, TypeError, "seed"),
        ([("mode", "train")], TypeError, "dict"),
    ],
)
def test_bad_dropout_param(param, error, match):
    with pytest.raises(error, match=match):
        dropout_forward(np.ones((2, 2)), param)


def test_backward_rejects_bad_caches():
    _, cache = dropout_forward(np.ones((2, 3)), {"mode": "train", "p": 0.5, "seed": 0})
    with pytest.raises(ValueError, match="shape"):
        dropout_backward(np.ones((3, 2)), cache)
    with pytest.raises(ValueError, match="no mask"):
        dropout_backward(np.ones((2, 3)), ({"mode": "train", "p": 0.5}, None))
    with pytest.raises(ValueError, match="2-tuple"):
        dropout_backward(np.ones((2, 3)), cache[1])


@pytest.mark.parametrize("backend", ["numpy", "checked"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_backends_agree_bitwise(rng, backend, dtype):
    x = rng.standard_normal((129, 257)).astype(dtype)
    param = {"mode": "train", "p": 0.35, "seed": 77}
    out, cache = dropout_forward(x, param)
    dx = dropout_backward(x, cache)
    with fastbp.use_backend(backend):
        out_b, cache_b = dropout_forward(x, param)
        dx_b = dropout_backward(x, cache_b)
    np.testing.assert_array_equal(out_b, out)
    np.testing.assert_array_equal(cache_b[1], cache[1])
    np.testing.assert_array_equal(dx_b, dx)


@pytest.mark.parametrize("n_threads", [0, -1])
def test_kernels_reject_a_thread_count_below_one(n_threads):
    x = np.ones(5)
    with pytest.raises(ValueError, match="n_threads must be >= 1"):
        _kernels.dropout_forward(x, np.empty(5), np.empty(5), 0.5, 1, n_threads)
    with pytest.raises(ValueError, match="n_threads must be >= 1"):
        _kernels.dropout_backward(x, x, np.empty(5), n_threads)
