"""fastbp._kernels._linear against fastbp.reference (the affine layers: test_layers.py; gemm:
test_blas.py)."""

import threading

import numpy as np
import pytest
from helpers import DTYPES, THREADS, assert_close

from fastbp import _kernels, reference

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
