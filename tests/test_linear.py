"""fastbp._kernels._linear against fastbp.reference, and the affine layers (gemm: test_blas.py)."""

import threading

import numpy as np
import pytest
from helpers import DTYPES, THREADS, assert_close, numerical_gradient_array

from fastbp import _kernels, layers, reference

SHAPES = [(1, 1, 1), (1, 7, 33), (7, 1, 1), (7, 33, 7), (33, 7, 1), (64, 130, 17), (0, 5, 3)]


def _data(rng, n, d, m, dtype):
    return (
        rng.standard_normal((n, d)).astype(dtype),
        rng.standard_normal((d, m)).astype(dtype),
        rng.standard_normal(m).astype(dtype),
    )


@pytest.mark.parametrize("n,d,m", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_forward_matches_reference(rng, n, d, m, dtype, threads, bias):
    x, w, b = _data(rng, n, d, m, dtype)
    b = b if bias else None
    for arr in (x, w) + ((b,) if bias else ()):
        arr.setflags(write=False)
    out = np.full((n, m), np.nan, dtype)
    expected = np.empty((n, m), dtype)
    _kernels.linear_forward(x, w, b, out, threads)
    reference.linear_forward(x, w, b, expected)
    assert_close(out, expected, dtype, scale=np.sqrt(d) + 1)


@pytest.mark.parametrize("n,d,m", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("scale,beta", [(1.0, 0.0), (0.25, 0.0), (0.5, 1.0)])
def test_linear_backward_matches_reference(rng, n, d, m, dtype, threads, scale, beta):
    x, w, _ = _data(rng, n, d, m, dtype)
    dout = rng.standard_normal((n, m)).astype(dtype)
    for arr in (x, w, dout):
        arr.setflags(write=False)
    dw0 = rng.standard_normal((d, m)).astype(dtype)
    db0 = rng.standard_normal(m).astype(dtype)
    got = [np.full((n, d), np.nan, dtype), dw0.copy(), db0.copy()]
    exp = [np.empty((n, d), dtype), dw0.copy(), db0.copy()]
    _kernels.linear_backward(dout, x, w, *got, scale=scale, beta=beta, n_threads=threads)
    reference.linear_backward(dout, x, w, *exp, scale=scale, beta=beta)
    for g, e in zip(got, exp):
        assert_close(g, e, dtype, scale=np.sqrt(max(n, d, m)) + 1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_backward_fuses_an_sgd_step(rng, dtype):
    """dw = w, db = b with scale = -lr, beta = 1 updates the parameters; dx uses the old w."""
    x, w, b = _data(rng, 9, 6, 4, dtype)
    dout = rng.standard_normal((9, 4)).astype(dtype)
    w0, b0, lr = w.copy(), b.copy(), 0.1
    dx = np.empty((9, 6), dtype)
    _kernels.linear_backward(dout, x, w, dx, w, b, scale=-lr, beta=1.0)
    assert_close(dx, dout @ w0.T, dtype, scale=10)
    assert_close(w, w0 - lr * x.T @ dout, dtype, scale=10)
    assert_close(b, b0 - lr * dout.sum(0), dtype, scale=10)


def test_linear_backward_skips_none_outputs(rng):
    x, w, _ = _data(rng, 5, 4, 3, np.float64)
    dout = rng.standard_normal((5, 3))
    db = np.empty(3)
    _kernels.linear_backward(dout, x, w, None, None, db)
    assert_close(db, dout.sum(0), np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_gradient_is_identical_across_thread_counts(rng, dtype):
    dout = rng.standard_normal((300, 1000)).astype(dtype)
    x, w = rng.standard_normal((300, 2)).astype(dtype), rng.standard_normal((2, 1000)).astype(dtype)
    results = []
    for threads in (1, 2, 4, 1):
        db = np.empty(1000, dtype)
        _kernels.linear_backward(dout, x, w, None, None, db, n_threads=threads)
        results.append(db)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


@pytest.mark.parametrize("kernel,args", [
    ("linear_forward", lambda: (np.ones((2, 3)), np.ones((4, 5)), None, np.ones((2, 5)))),
    ("linear_forward", lambda: (np.ones((2, 3)), np.ones((3, 5)), np.ones(4), np.ones((2, 5)))),
    ("linear_forward", lambda: (np.ones((2, 3)), np.ones((3, 5)), None, np.ones((2, 4)))),
    ("linear_backward", lambda: (np.ones((2, 5)), np.ones((3, 3)), np.ones((3, 5)),
                                 None, None, None)),
    ("linear_backward", lambda: (np.ones((2, 5)), np.ones((2, 3)), np.ones((3, 5)),
                                 np.ones((2, 2)), None, None)),
    ("linear_backward", lambda: (np.ones((2, 5)), np.ones((2, 3)), np.ones((3, 5)),
                                 None, np.ones((3, 4)), None)),
    ("linear_backward", lambda: (np.ones((2, 5)), np.ones((2, 3)), np.ones((3, 5)),
                                 None, None, np.ones(4))),
])
def test_kernels_reject_mismatched_buffers(kernel, args):
    with pytest.raises(ValueError, match=kernel):
        getattr(_kernels, kernel)(*args())


def test_kernels_are_reentrant_across_python_threads(rng):
    """Two Python threads calling the kernels at once on separate buffers get correct results."""
    jobs = [_data(rng, 200, 300, 100, np.float64) for _ in range(4)]
    results = [None] * len(jobs)

    def work(i):
        x, w, b = jobs[i]
        for _ in range(20):
            out = np.empty((200, 100))
            _kernels.linear_forward(x, w, b, out, 2)
        results[i] = out

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (x, w, b), out in zip(jobs, results):
        assert_close(out, x @ w + b, np.float64, scale=30)


# ---------------------------------------------------------------------------- affine layers


@pytest.mark.parametrize("dtype", DTYPES)
def test_affine_forward_keeps_course_contract(rng, dtype):
    x = rng.standard_normal((4, 2, 3, 5)).astype(dtype)
    w = rng.standard_normal((30, 6)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    out, cache = layers.affine_forward(x, w, b)
    assert out.dtype == dtype and out.shape == (4, 6)
    assert cache[0] is x and cache[1] is w and cache[2] is b
    assert_close(out, x.reshape(4, -1) @ w + b, dtype, scale=10)
    dx, dw, db = layers.affine_backward(np.ones((4, 6), dtype), cache)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape
    assert dx.dtype == dw.dtype == db.dtype == dtype


def test_affine_course_test_vector():
    """The CS231n affine_forward check: inputs from linspace, known output."""
    num_inputs, input_shape, output_dim = 2, (4, 5, 6), 3
    input_size = num_inputs * np.prod(input_shape)
    weight_size = output_dim * np.prod(input_shape)
    x = np.linspace(-0.1, 0.5, num=input_size).reshape(num_inputs, *input_shape)
    w = np.linspace(-0.2, 0.3, num=weight_size).reshape(np.prod(input_shape), output_dim)
    b = np.linspace(-0.3, 0.1, num=output_dim)
    out, _ = layers.affine_forward(x, w, b)
    correct_out = np.array([[1.49834967, 1.70660132, 1.91485297],
                            [3.25553199, 3.5141327, 3.77273342]])
    assert np.max(np.abs(out - correct_out) / np.maximum(1e-8, np.abs(out) + np.abs(correct_out))) < 1e-7


def test_affine_backward_finite_differences(rng):
    x = rng.standard_normal((10, 2, 3))
    w = rng.standard_normal((6, 5))
    b = rng.standard_normal(5)
    dout = rng.standard_normal((10, 5))
    _, cache = layers.affine_forward(x, w, b)
    dx, dw, db = layers.affine_backward(dout, cache)
    f = lambda: layers.affine_forward(x, w, b)[0]  # noqa: E731
    for analytic, wrt in ((dx, x), (dw, w), (db, b)):
        numeric = numerical_gradient_array(f, wrt, dout)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-8)


def test_affine_accepts_noncontiguous_readonly_and_integer_inputs(rng):
    x = rng.standard_normal((6, 8))[:, ::2]
    w = np.asfortranarray(rng.standard_normal((4, 3)))
    w.setflags(write=False)
    b = np.arange(3)
    out, cache = layers.affine_forward(x, w, b)
    assert_close(out, x @ w + b, np.float64, scale=10)
    assert x.flags.writeable and not w.flags.writeable
    xi = np.arange(12).reshape(3, 4)
    out, _ = layers.affine_forward(xi, np.ones((4, 2), np.int32), np.zeros(2, np.int8))
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out[:, 0], xi.sum(1))


def test_affine_promotes_mixed_dtypes(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    out, cache = layers.affine_forward(x, np.ones((4, 2)), np.zeros(2, np.float32))
    assert out.dtype == np.float64
    dx, dw, db = layers.affine_backward(np.ones((3, 2), np.float32), cache)
    assert dx.dtype == np.float64


@pytest.mark.parametrize("call,match", [
    (lambda: layers.affine_forward(np.ones((2, 3)), np.ones((4, 2)), np.ones(2)), "w must have shape"),
    (lambda: layers.affine_forward(np.ones((2, 3)), np.ones((3, 2)), np.ones(3)), "b must have shape"),
    (lambda: layers.affine_forward(np.ones((2, 3)), np.ones(3), np.ones(3)), "w must have shape"),
    (lambda: layers.affine_forward(np.float64(1.0), np.ones((1, 2)), np.ones(2)), "x must have"),
    (lambda: layers.affine_backward(np.ones((2, 3)), (np.ones((2, 3)), np.ones((3, 2)), np.ones(2))),
     "dout must have shape"),
    (lambda: layers.affine_backward(np.ones((2, 2)), (np.ones((2, 3)), np.ones((3, 2)))),
     "cache must be the 3-tuple"),
    (lambda: layers.affine_backward(np.ones((2, 2)), None), "cache must be the 3-tuple"),
])
def test_affine_rejects_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_affine_rejects_non_numeric():
    with pytest.raises(TypeError, match="x"):
        layers.affine_forward(np.array([["a", "b"]]), np.ones((2, 2)), np.ones(2))
    with pytest.raises(TypeError, match="w"):
        layers.affine_forward(np.ones((1, 2)), np.ones((2, 2), complex), np.ones(2))
