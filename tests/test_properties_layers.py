"""Property-based: the public layer API gives the same answers on the compiled and the NumPy
backends for inputs of any layout it accepts: non-contiguous views, transposes, read-only
arrays, other float dtypes (hypothesis).

The activations come from ``fastbp.layers.ACTIVATIONS`` (name -> forward, backward, parameter
name, default), so a new activation is covered here with no edit.
"""

import numpy as np
import pytest
from helpers import TOL

import fastbp
from fastbp import layers

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
given, settings = hypothesis.given, hypothesis.settings

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[hypothesis.HealthCheck.too_slow])
DIM = st.one_of(st.sampled_from([1, 2, 7, 33]), st.integers(1, 40))
LAYOUTS = ("contiguous", "strided", "transposed", "readonly")
PARAMETER_VALUES = {"alpha": st.sampled_from([0.01, 0.3, 1.0, 2.0]),
                    "approximate": st.sampled_from(["none", "tanh"])}


def _laid_out(a, layout):
    """`a`'s values in the drawn memory layout (same values, same shape)."""
    if layout == "strided":
        wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        wide[..., ::2] = a
        return wide[..., ::2]
    if layout == "transposed":
        return np.ascontiguousarray(a.T).T
    if layout == "readonly":
        a = a.copy()
        a.setflags(write=False)
    return a


def _array(data, rng, shape, name, dtype, scale=1.0):
    layout = data.draw(st.sampled_from(LAYOUTS), f"{name} layout")
    return _laid_out((rng.standard_normal(shape) * scale).astype(dtype), layout)


def _both(fn):
    """fn() on the compiled backend and on the NumPy backend."""
    with fastbp.use_backend("compiled"):
        got = fn()
    with fastbp.use_backend("numpy"):
        expected = fn()
    return got, expected


def _assert_close(got, expected, dtype):
    for g, e in zip(got, expected):
        if isinstance(e, tuple):  # a cache: compare what it holds
            _assert_close(g, e, dtype)
            continue
        t = TOL[np.dtype(dtype)]
        peak = float(np.max(np.abs(e))) if np.size(e) else 0.0
        np.testing.assert_allclose(g, e, rtol=t["rtol"] * 5, atol=t["atol"] + t["rtol"] * peak)


def _setup(data):
    dtype = data.draw(st.sampled_from([np.float32, np.float64]), "dtype")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), "seed"))
    return dtype, rng, data.draw(DIM, "N"), data.draw(DIM, "D")


@pytest.mark.parametrize("name", sorted(layers.ACTIVATIONS))
@SETTINGS
@given(data=st.data())
def test_activation_layers_agree_across_backends(name, data):
    forward, backward, parameter, _ = layers.ACTIVATIONS[name]
    dtype, rng, n, d = _setup(data)
    x = _array(data, rng, (n, d), "x", dtype)
    dout = _array(data, rng, (n, d), "dout", dtype)
    kwargs = {} if parameter is None else {parameter: data.draw(PARAMETER_VALUES[parameter])}

    def run():
        out, cache = forward(x, **kwargs)
        return out.copy(), backward(dout, cache).copy()

    _assert_close(*_both(run), dtype)


@SETTINGS
@given(data=st.data())
def test_affine_layer_agrees_across_backends(data):
    dtype, rng, n, d = _setup(data)
    m = data.draw(DIM, "M")
    x = _array(data, rng, (n, d, 2), "x", dtype)
    w = _array(data, rng, (2 * d, m), "w", dtype)
    b = _array(data, rng, (1, m), "b", dtype)[0]
    dout = _array(data, rng, (n, m), "dout", dtype)

    def run():
        out, cache = layers.affine_forward(x, w, b)
        return (out.copy(), *(g.copy() for g in layers.affine_backward(dout, cache)))

    got, expected = _both(run)
    assert got[1].shape == x.shape
    _assert_close(got, expected, dtype)


@pytest.mark.parametrize("loss", ["softmax_loss", "svm_loss", "mse_loss"])
@SETTINGS
@given(data=st.data())
def test_loss_layers_agree_across_backends(loss, data):
    dtype, rng, n, c = _setup(data)
    scores = _array(data, rng, (n, c), "scores", dtype,
                    data.draw(st.sampled_from([1.0, 100.0]), "magnitude"))
    target = (_array(data, rng, (n, c), "target", dtype) if loss == "mse_loss"
              else rng.integers(0, c, n))

    def run():
        value, grad = getattr(layers, loss)(scores, target)
        return np.float64(value), grad.copy()

    _assert_close(*_both(run), dtype)
