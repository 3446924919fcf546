"""Backend switch, the checked backend, and the reference/kernels name contract."""

import threading

import numpy as np
import pytest

import fastbp
from fastbp import _kernels, backend, layers, reference


def test_reference_and_kernels_export_the_same_names():
    assert set(_kernels.KERNELS) == set(reference.KERNELS)
    for name in _kernels.KERNELS:
        assert callable(getattr(_kernels, name)) and callable(getattr(reference, name))


def test_set_get_and_context_manager():
    assert fastbp.get_backend() == "compiled"
    try:
        fastbp.set_backend("numpy")
        assert fastbp.get_backend() == "numpy"
        with fastbp.use_backend("checked"):
            assert fastbp.get_backend() == "checked"
            with fastbp.use_backend("compiled"):
                assert fastbp.get_backend() == "compiled"
            assert fastbp.get_backend() == "checked"
        assert fastbp.get_backend() == "numpy"
    finally:
        fastbp.set_backend("compiled")


def test_use_backend_restores_after_an_exception():
    with pytest.raises(RuntimeError):
        with fastbp.use_backend("numpy"):
            raise RuntimeError("boom")
    assert fastbp.get_backend() == "compiled"


def test_use_backend_is_per_thread():
    seen = []
    with fastbp.use_backend("numpy"):
        t = threading.Thread(target=lambda: seen.append(fastbp.get_backend()))
        t.start()
        t.join()
    assert seen == ["compiled"]


@pytest.mark.parametrize("bad", ["torch", "", None, "NUMPY"])
def test_unknown_backend_is_rejected(bad):
    with pytest.raises(ValueError, match="backend must be one of"):
        fastbp.set_backend(bad)
    with pytest.raises(ValueError, match="backend must be one of"):
        with fastbp.use_backend(bad):
            pass


@pytest.mark.parametrize("name", backend.BACKENDS)
def test_every_backend_gives_the_same_affine_result(rng, name):
    x, w, b = rng.standard_normal((5, 4)), rng.standard_normal((4, 3)), rng.standard_normal(3)
    with fastbp.use_backend(name):
        out, cache = layers.affine_forward(x, w, b)
        dx, dw, db = layers.affine_backward(np.ones((5, 3)), cache)
    np.testing.assert_allclose(out, x @ w + b, rtol=1e-12)
    np.testing.assert_allclose(dw, x.T @ np.ones((5, 3)), rtol=1e-12)


def test_checked_backend_catches_a_corrupted_kernel(rng, monkeypatch):
    real = _kernels.linear_forward

    def corrupted(x, w, b, out, n_threads=1):
        real(x, w, b, out, n_threads)
        out[1, 2] += 1e-3

    monkeypatch.setattr(_kernels, "linear_forward", corrupted)
    x, w, b = rng.standard_normal((4, 3)), rng.standard_normal((3, 5)), rng.standard_normal(5)
    with fastbp.use_backend("checked"):
        with pytest.raises(fastbp.CheckError) as info:
            layers.affine_forward(x, w, b)
    msg = str(info.value)
    assert "linear_forward" in msg and "'out'" in msg and "(1, 2)" in msg
    assert "relative error" in msg


def test_checked_backend_tolerates_float32_rounding(rng):
    x = rng.standard_normal((64, 300)).astype(np.float32)
    w = rng.standard_normal((300, 50)).astype(np.float32)
    with fastbp.use_backend("checked"):
        out, cache = layers.affine_forward(x, w, np.zeros(50, np.float32))
        layers.affine_backward(np.ones_like(out), cache)


def test_compare_reports_nan_and_shape_mismatches():
    with pytest.raises(fastbp.CheckError, match="NaN"):
        backend.compare("k", "out", np.array([1.0, np.nan]), np.array([1.0, 2.0]))
    with pytest.raises(fastbp.CheckError, match="shape"):
        backend.compare("k", "out", np.zeros(2), np.zeros(3))
    with pytest.raises(fastbp.CheckError, match="infinity"):
        backend.compare("k", "out", np.array([np.inf]), np.array([1.0]))
    backend.compare("k", "out", np.array([np.nan, np.inf, 1.0]), np.array([np.nan, np.inf, 1.0]))
