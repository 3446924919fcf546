"""fastbp._validation: one voice for argument errors across the public API."""

import numpy as np
import pytest

from fastbp import _validation as val
from fastbp import autograd, data, layers, models, nn, optim
from fastbp.compat import simple_ml


def _train_nn(hidden_dim):
    x, y = np.zeros((4, 3), np.float32), np.zeros(4, np.uint8)
    return simple_ml.train_nn(x, y, x, y, hidden_dim=hidden_dim)


@pytest.mark.parametrize("call", [
    lambda v: nn.Linear(v, 3),
    lambda v: nn.MLP([4, v, 2]),
    lambda v: data.make_spirals(v),
    lambda v: models.TwoLayerNet(hidden_dim=v),
    _train_nn,
], ids=["nn.Linear", "nn.MLP", "data.make_spirals", "models.TwoLayerNet", "simple_ml.train_nn"])
def test_integer_mistakes_read_the_same_everywhere(call):
    with pytest.raises(TypeError, match=r"must be an integer, got float$"):
        call(2.5)
    with pytest.raises(TypeError, match=r"must be an integer, got bool$"):
        call(True)
    with pytest.raises(ValueError, match=r"must be >= 1, got 0$"):
        call(0)


@pytest.mark.parametrize("call", [
    lambda v: optim.SGD(lr=v),
    lambda v: nn.LeakyReLU(v),
    lambda v: models.TwoLayerNet(reg=v),
], ids=["optim.SGD", "nn.LeakyReLU", "models.TwoLayerNet"])
def test_real_mistakes_read_the_same_everywhere(call):
    with pytest.raises(TypeError, match=r"must be a real number, got str$"):
        call("0.1")
    with pytest.raises(ValueError, match=r"must be finite, got nan$"):
        call(float("nan"))


@pytest.mark.parametrize("call", [
    lambda v: layers.dropout_forward(np.ones(3), {"mode": "train", "p": 0.5, "seed": v}),
    lambda v: autograd.dropout(autograd.Tensor(np.ones(3)), 0.5, seed=v),
    lambda v: models.FullyConnectedNet([4], input_dim=3, dropout_keep_ratio=0.5, seed=v),
], ids=["layers.dropout_forward", "autograd.dropout", "models.FullyConnectedNet"])
def test_seed_mistakes_read_the_same_everywhere(call):
    with pytest.raises(TypeError, match=r"seed'?\]? must be an integer, got float$"):
        call(1.0)
    with pytest.raises(TypeError, match=r"must be an integer, got bool$"):
        call(True)
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\*\*64\), got -1$"):
        call(-1)
    with pytest.raises(ValueError, match=rf"must lie in \[0, 2\*\*64\), got {2**64}$"):
        call(2**64)
    call(2**64 - 1)


def test_helpers():
    assert val.integer(np.int64(3), "n", 1) == 3 and type(val.integer(np.int8(3), "n")) is int
    assert val.real(np.float32(0.5), "x", 0, strict=True) == 0.5
    with pytest.raises(ValueError, match="x must be > 0, got 0.0"):
        val.real(0, "x", 0, strict=True)
    with pytest.raises(ValueError, match=r"m must lie in \[0, 1\), got 1.0"):
        val.fraction(1, "m")
    with pytest.raises(TypeError, match="f must be True or False, got int"):
        val.flag(1, "f")
    assert val.float_dtype("float32") == np.float32
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got float16"):
        val.float_dtype(np.float16)
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        val.float_dtype("not a dtype")
    with pytest.raises(ValueError, match="n_threads must be >= 1, got 0"):
        val.thread_count(0)
