"""The fastbp.optim API (the kernels against their twins: test_optim_kernels.py).

Course rules are checked against the course's formulas written inline below (NumPy), against
hand-computed scalars, and on the CS231n FullyConnectedNets.ipynb check inputs; the optimizer
classes against the PyTorch algorithms written inline and, when installed, torch.optim itself.
"""

import copy
import math

import numpy as np
import pytest
from helpers import DTYPES, assert_close

import fastbp
from fastbp import _kernels, optim, reference

OPTIM_KERNELS = _kernels._optim.__all__

# --------------------------------------------------------------------------------------------
# course rules: the course's formulas, inline


def course_sgd(w, dw, config):
    config.setdefault("learning_rate", 1e-2)
    w -= config["learning_rate"] * dw
    return w, config


def course_sgd_momentum(w, dw, config):
    config.setdefault("learning_rate", 1e-2)
    config.setdefault("momentum", 0.9)
    v = config.get("velocity", np.zeros_like(w))
    v = config["momentum"] * v - config["learning_rate"] * dw
    next_w = w + v
    config["velocity"] = v
    return next_w, config


def torch_style_momentum(w, dw, config):
    config.setdefault("learning_rate", 1e-2)
    config.setdefault("momentum", 0.9)
    b = config.get("momentum_buffer", np.zeros_like(w))
    b = config["momentum"] * b + dw
    config["momentum_buffer"] = b
    return w - config["learning_rate"] * b, config


def course_rmsprop(w, dw, config):
    config.setdefault("learning_rate", 1e-2)
    config.setdefault("decay_rate", 0.99)
    config.setdefault("epsilon", 1e-8)
    config.setdefault("cache", np.zeros_like(w))
    config["cache"] = config["decay_rate"] * config["cache"] + (1 - config["decay_rate"]) * dw**2
    next_w = w - config["learning_rate"] * dw / (np.sqrt(config["cache"]) + config["epsilon"])
    return next_w, config


def course_adam(w, dw, config):
    config.setdefault("learning_rate", 1e-3)
    config.setdefault("beta1", 0.9)
    config.setdefault("beta2", 0.999)
    config.setdefault("epsilon", 1e-8)
    config.setdefault("m", np.zeros_like(w))
    config.setdefault("v", np.zeros_like(w))
    config.setdefault("t", 0)
    config["t"] += 1
    config["m"] = config["beta1"] * config["m"] + (1 - config["beta1"]) * dw
    mt = config["m"] / (1 - config["beta1"] ** config["t"])
    config["v"] = config["beta2"] * config["v"] + (1 - config["beta2"]) * (dw**2)
    vt = config["v"] / (1 - config["beta2"] ** config["t"])
    next_w = w - config["learning_rate"] * mt / (np.sqrt(vt) + config["epsilon"])
    return next_w, config


# rule name -> (fastbp rule, inline formula, custom hyper-parameters, state keys)
RULES = {
    "sgd": (optim.sgd, course_sgd, dict(learning_rate=0.1), ()),
    "sgd_momentum": (optim.sgd_momentum, course_sgd_momentum,
                     dict(learning_rate=0.05, momentum=0.5), ("velocity",)),
    "sgd_momentum_torch": (optim.sgd_momentum_torch, torch_style_momentum,
                           dict(learning_rate=0.05, momentum=0.5), ("momentum_buffer",)),
    "rmsprop": (optim.rmsprop, course_rmsprop,
                dict(learning_rate=1e-3, decay_rate=0.9, epsilon=1e-6), ("cache",)),
    "adam": (optim.adam, course_adam,
             dict(learning_rate=1e-2, beta1=0.8, beta2=0.99, epsilon=1e-7), ("m", "v")),
}


def _assert_configs_close(got, expected, dtype):
    assert set(got) == set(expected)
    for key, value in expected.items():
        if isinstance(value, np.ndarray):
            assert got[key].dtype == dtype
            assert_close(got[key], value, dtype, scale=4)
        else:
            assert got[key] == value


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("custom", [False, True], ids=["defaults", "custom"])
def test_course_rule_matches_the_course_formula_over_steps(rng, rule, dtype, custom):
    fast, course, hyper, _ = RULES[rule]
    w = rng.standard_normal((13, 7)).astype(dtype)
    w_course = w.copy()
    config = dict(hyper) if custom else None
    config_course = dict(hyper) if custom else {}
    for _ in range(5):
        dw = rng.standard_normal((13, 7)).astype(dtype)
        w, config = fast(w, dw, config)
        w_course, config_course = course(w_course, dw, config_course)
        assert w.dtype == dtype and w_course.dtype == dtype  # course math stays float32 too
        assert_close(w, w_course, dtype, scale=4)
        _assert_configs_close(config, config_course, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_course_rules_hand_computed_over_three_steps(dtype):
    """w = 1, a constant gradient 0.5; the values below are worked by hand."""
    dw = np.array([0.5], dtype)

    w, cfg = np.array([1.0], dtype), {"learning_rate": 0.1}
    for expected in (0.95, 0.90, 0.85):
        w, cfg = optim.sgd(w, dw, cfg)
        assert_close(w, [expected], dtype)

    # v = 0.9 v - 0.05:  -0.05, -0.095, -0.1355
    w, cfg = np.array([1.0], dtype), {"learning_rate": 0.1}
    for v, expected in ((-0.05, 0.95), (-0.095, 0.855), (-0.1355, 0.7195)):
        w, cfg = optim.sgd_momentum(w, dw, cfg)
        assert_close(cfg["velocity"], [v], dtype)
        assert_close(w, [expected], dtype)

    # b = 0.9 b + 0.5:  0.5, 0.95, 1.355;  w -= 0.1 b
    w, cfg = np.array([1.0], dtype), {"learning_rate": 0.1}
    for b, expected in ((0.5, 0.95), (0.95, 0.855), (1.355, 0.7195)):
        w, cfg = optim.sgd_momentum_torch(w, dw, cfg)
        assert_close(cfg["momentum_buffer"], [b], dtype)
        assert_close(w, [expected], dtype)

    # cache_t = (1 - 0.99**t) * 0.25;  w -= 0.01 * 0.5 / (sqrt(cache_t) + 1e-8)
    w, cfg, expected = np.array([1.0], dtype), None, 1.0
    for t in (1, 2, 3):
        w, cfg = optim.rmsprop(w, dw, cfg)
        cache = (1 - 0.99**t) * 0.25
        expected -= 0.01 * 0.5 / (math.sqrt(cache) + 1e-8)
        assert_close(cfg["cache"], [cache], dtype)
        assert_close(w, [expected], dtype)

    # constant g: m_t = (1 - b1**t) g and v_t = (1 - b2**t) g**2, so the bias-corrected step is
    # exactly lr * g / (|g| + eps) every time
    w, cfg = np.array([1.0], dtype), None
    for t in (1, 2, 3):
        w, cfg = optim.adam(w, dw, cfg)
        assert cfg["t"] == t
        assert_close(cfg["m"], [(1 - 0.9**t) * 0.5], dtype)
        assert_close(cfg["v"], [(1 - 0.999**t) * 0.25], dtype)
        assert_close(w, [1 - t * 1e-3 * 0.5 / (0.5 + 1e-8)], dtype)


def _cs231n_check_inputs():
    """The inputs of the update-rule checks in CS231n FullyConnectedNets.ipynb."""
    n, d = 4, 5
    w = np.linspace(-0.4, 0.6, num=n * d).reshape(n, d)
    dw = np.linspace(-0.6, 0.4, num=n * d).reshape(n, d)
    a = np.linspace(0.6, 0.9, num=n * d).reshape(n, d)
    b = np.linspace(0.7, 0.5, num=n * d).reshape(n, d)
    return w, dw, a, b


def test_cs231n_notebook_checks():
    """The notebook's three checks, against the course formula (and a hand-worked w[0, 0])."""
    w, dw, a, b = _cs231n_check_inputs()
    cases = [
        (optim.sgd_momentum, course_sgd_momentum, {"learning_rate": 1e-3, "velocity": a},
         # v = 0.9 * 0.6 - 1e-3 * (-0.6) = 0.5406;  w = -0.4 + 0.5406
         {"velocity": 0.5406}, 0.1406),
        (optim.rmsprop, course_rmsprop, {"learning_rate": 1e-2, "cache": a},
         # cache = 0.99 * 0.6 + 0.01 * 0.36 = 0.5976;  w = -0.4 + 1e-2 * 0.6 / sqrt(0.5976)
         {"cache": 0.5976}, -0.4 + 1e-2 * 0.6 / (math.sqrt(0.5976) + 1e-8)),
        (optim.adam, course_adam, {"learning_rate": 1e-2, "m": a, "v": b, "t": 5},
         # m = 0.9 * 0.6 - 0.1 * 0.6 = 0.48;  v = 0.999 * 0.7 + 0.001 * 0.36 = 0.69966;  t = 6
         {"m": 0.48, "v": 0.69966},
         -0.4 - 1e-2 * (0.48 / (1 - 0.9**6)) / (math.sqrt(0.69966 / (1 - 0.999**6)) + 1e-8)),
    ]
    for fast, course, config, state00, w00 in cases:
        next_w, cfg = fast(w, dw, dict(config))
        exp_w, exp_cfg = course(w.copy(), dw, dict(config))
        np.testing.assert_allclose(next_w, exp_w, rtol=1e-12)
        for key in state00:
            np.testing.assert_allclose(cfg[key], exp_cfg[key], rtol=1e-12)
            assert cfg[key][0, 0] == pytest.approx(state00[key], rel=1e-13)
        assert next_w[0, 0] == pytest.approx(w00, rel=1e-12)
    assert cfg["t"] == 6


# --------------------------------------------------------------------------------------------
# course rules: who is modified, layouts, defaults


def test_sgd_updates_w_in_place_and_returns_it(rng):
    w = rng.standard_normal((5, 3))
    dw = rng.standard_normal((5, 3))
    expected = w - 1e-2 * dw
    view = w[:]
    next_w, config = optim.sgd(w, dw)
    assert next_w is w and np.shares_memory(view, next_w)
    np.testing.assert_array_equal(w, expected)
    assert config == {"learning_rate": 1e-2}


def test_sgd_updates_a_non_contiguous_w_in_place(rng):
    base = rng.standard_normal((6, 8))
    w = base[:, ::2]
    dw = rng.standard_normal((6, 4))
    expected = w - 0.5 * dw
    untouched = base[:, 1::2].copy()
    next_w, _ = optim.sgd(w, dw, {"learning_rate": 0.5})
    assert next_w is w
    np.testing.assert_array_equal(base[:, ::2], expected)
    np.testing.assert_array_equal(base[:, 1::2], untouched)


@pytest.mark.parametrize("rule", ["sgd_momentum", "sgd_momentum_torch", "rmsprop", "adam"])
def test_stateful_rules_leave_w_and_old_state_alone(rng, rule):
    fast, course, _, keys = RULES[rule]
    w = rng.standard_normal((4, 6))
    w.setflags(write=False)  # the course never writes w here, so read-only must work
    dw = rng.standard_normal((8, 6))[::2]  # non-contiguous gradient
    old = {k: np.abs(rng.standard_normal((4, 6))) for k in keys}
    config = dict(old)
    if rule == "adam":
        config["t"] = 2
    w_before, old_before = w.copy(), copy.deepcopy(old)

    next_w, returned = fast(w, dw, config)
    assert returned is config
    assert not np.shares_memory(next_w, w) and next_w.flags.c_contiguous
    np.testing.assert_array_equal(w, w_before)
    for k in keys:
        assert config[k] is not old[k]  # new arrays stored ...
        np.testing.assert_array_equal(old[k], old_before[k])  # ... the old ones untouched
    course_config = copy.deepcopy(old_before)
    if rule == "adam":
        course_config["t"] = 2
    exp_w, exp_cfg = course(w_before.copy(), dw, course_config)
    assert_close(next_w, exp_w, np.float64)
    _assert_configs_close(config, exp_cfg, np.dtype(np.float64))


@pytest.mark.parametrize("rule", RULES)
def test_defaults_are_the_courses(rng, rule):
    fast = RULES[rule][0]
    _, config = fast(rng.standard_normal(3), rng.standard_normal(3))
    defaults = {
        "sgd": {"learning_rate": 1e-2},
        "sgd_momentum": {"learning_rate": 1e-2, "momentum": 0.9},
        "sgd_momentum_torch": {"learning_rate": 1e-2, "momentum": 0.9},
        "rmsprop": {"learning_rate": 1e-2, "decay_rate": 0.99, "epsilon": 1e-8},
        "adam": {"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8, "t": 1},
    }[rule]
    assert {k: v for k, v in config.items() if not isinstance(v, np.ndarray)} == defaults


def test_state_of_another_dtype_is_kept_in_ws_dtype(rng):
    w = rng.standard_normal(5).astype(np.float32)
    dw = rng.standard_normal(5).astype(np.float32)
    v = rng.standard_normal(5)  # float64 velocity
    next_w, config = optim.sgd_momentum(w, dw, {"velocity": v})
    assert next_w.dtype == np.float32 and config["velocity"].dtype == np.float32
    assert_close(config["velocity"], 0.9 * v.astype(np.float32) - np.float32(1e-2) * dw, np.float32)


# --------------------------------------------------------------------------------------------
# course rules: bad input raises and changes nothing


def _assert_unchanged(got, expected):
    if isinstance(expected, dict):
        assert isinstance(got, dict) and set(got) == set(expected)
        for k in expected:
            _assert_unchanged(got[k], expected[k])
    elif isinstance(expected, np.ndarray):
        np.testing.assert_array_equal(got, expected)
    else:
        assert got == expected or (got != got and expected != expected)


BAD_CONFIGS = [
    (rule, {"learning_rate": bad}, err, "learning_rate")
    for rule in RULES
    for bad, err in ((-1e-3, ValueError), (math.nan, ValueError), (math.inf, ValueError),
                     ("0.1", TypeError), (True, TypeError))
] + [
    (rule, {"momentum": bad}, err, "momentum")
    for rule in ("sgd_momentum", "sgd_momentum_torch")
    for bad, err in ((1.0, ValueError), (-0.1, ValueError), (math.nan, ValueError),
                     (None, TypeError))
] + [
    ("rmsprop", {"decay_rate": 1.0}, ValueError, "decay_rate"),
    ("rmsprop", {"decay_rate": -0.5}, ValueError, "decay_rate"),
    ("rmsprop", {"epsilon": 0.0}, ValueError, "epsilon"),
    ("rmsprop", {"epsilon": -1e-8}, ValueError, "epsilon"),
    ("rmsprop", {"epsilon": math.inf}, ValueError, "epsilon"),
    ("adam", {"beta1": 1.0}, ValueError, "beta1"),
    ("adam", {"beta2": -0.1}, ValueError, "beta2"),
    ("adam", {"beta2": 1.5}, ValueError, "beta2"),
    ("adam", {"epsilon": 0}, ValueError, "epsilon"),
    ("adam", {"t": -1}, ValueError, "t"),
    ("adam", {"t": 1.5}, TypeError, "t"),
    ("sgd_momentum", {"velocity": np.zeros((3, 4))}, ValueError, "velocity"),
    ("sgd_momentum", {"velocity": [[0.0] * 3] * 4}, TypeError, "velocity"),
    ("sgd_momentum_torch", {"momentum_buffer": np.zeros(12)}, ValueError, "momentum_buffer"),
    ("rmsprop", {"cache": np.zeros((4, 3), dtype=object)}, TypeError, "cache"),
    ("adam", {"m": np.zeros((4, 4))}, ValueError, "'m'"),
    ("adam", {"v": np.zeros((4, 3), dtype=complex)}, TypeError, "'v'"),
]


@pytest.mark.parametrize("rule,bad,err,match", BAD_CONFIGS)
def test_bad_config_raises_and_changes_nothing(rng, rule, bad, err, match):
    fast = RULES[rule][0]
    w, dw = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    config = dict(bad, note="kept")
    before = copy.deepcopy((w, dw, config))
    with pytest.raises(err, match=match):
        fast(w, dw, config)
    _assert_unchanged(w, before[0])
    _assert_unchanged(dw, before[1])
    _assert_unchanged(config, before[2])  # no defaults were filled in either


def _bad_arrays(rng):
    w = rng.standard_normal((4, 3))
    ro = w.copy()
    ro.setflags(write=False)
    return [
        ("int w", w.astype(np.int64), w, TypeError, "float32 or float64"),
        ("float16 w", w.astype(np.float16), w.astype(np.float16), TypeError, "float32 or float64"),
        ("list w", w.tolist(), w, TypeError, "numpy.ndarray"),
        ("dtype", w, w.astype(np.float32), TypeError, "dtype"),
        ("shape", w, w[:3], ValueError, "shape"),
        ("transposed", w, w.T, ValueError, "shape"),
        ("list dw", w, w.tolist(), TypeError, "dw"),
    ]


@pytest.mark.parametrize("rule", RULES)
def test_bad_arrays_raise_and_change_nothing(rng, rule):
    fast = RULES[rule][0]
    for label, w, dw, err, match in _bad_arrays(rng):
        config = {"learning_rate": 0.1}
        before = copy.deepcopy((w, dw, config))
        with pytest.raises(err, match=match):
            fast(w, dw, config)
        if isinstance(w, np.ndarray):
            np.testing.assert_array_equal(w, before[0], err_msg=label)
        assert config == before[2], label
    with pytest.raises(TypeError, match="config"):
        fast(np.ones(3), np.ones(3), [("learning_rate", 0.1)])


def test_sgd_refuses_a_read_only_w(rng):
    w = rng.standard_normal(4)
    w.setflags(write=False)
    before = w.copy()
    config = {}
    with pytest.raises(ValueError, match="read-only"):
        optim.sgd(w, np.ones(4), config)
    np.testing.assert_array_equal(w, before)
    assert config == {}


# --------------------------------------------------------------------------------------------
# optimizer classes: the PyTorch algorithms, inline


def _decay(param, weight_decay, decay_biases):
    """The weight decay a parameter gets: none for 1-D ones with decay_biases=False."""
    return weight_decay if decay_biases or param.ndim > 1 else 0.0


def inline_sgd(params, grads, state, lr, momentum=0.0, weight_decay=0.0, nesterov=False,
               decay_biases=True):
    for k in params:
        g = grads[k] + _decay(params[k], weight_decay, decay_biases) * params[k]
        if momentum:
            b = state[k] = momentum * state.get(k, np.zeros_like(g)) + g
            g = g + momentum * b if nesterov else b
        params[k] = params[k] - lr * g


def inline_adam(params, grads, state, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                decay_biases=True):
    b1, b2 = betas
    for k in params:
        g = grads[k] + _decay(params[k], weight_decay, decay_biases) * params[k]
        m, v, t = state.get(k, (np.zeros_like(g), np.zeros_like(g), 0))
        t += 1
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        state[k] = (m, v, t)
        params[k] = params[k] - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)


def inline_rmsprop(params, grads, state, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0,
                   decay_biases=True):
    for k in params:
        g = grads[k] + _decay(params[k], weight_decay, decay_biases) * params[k]
        s = state[k] = alpha * state.get(k, np.zeros_like(g)) + (1 - alpha) * g * g
        params[k] = params[k] - lr * g / (np.sqrt(s) + eps)


CLASS_CASES = {
    "sgd": (optim.SGD, inline_sgd, dict(lr=0.1)),
    "sgd-wd": (optim.SGD, inline_sgd, dict(lr=0.1, weight_decay=0.05)),
    "momentum": (optim.SGD, inline_sgd, dict(lr=0.05, momentum=0.9)),
    "nesterov-wd": (optim.SGD, inline_sgd,
                    dict(lr=0.05, momentum=0.8, weight_decay=0.01, nesterov=True)),
    "adam": (optim.Adam, inline_adam, dict()),
    "adam-wd": (optim.Adam, inline_adam,
                dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01)),
    "rmsprop": (optim.RMSProp, inline_rmsprop, dict()),
    "rmsprop-wd": (optim.RMSProp, inline_rmsprop, dict(lr=1e-3, alpha=0.9, weight_decay=0.01)),
    # weight decay on the weights only (scikit-learn's alpha, timm's no-decay group)
    "sgd-weights-wd": (optim.SGD, inline_sgd, dict(lr=0.1, weight_decay=0.05,
                                                   decay_biases=False)),
    "nesterov-weights-wd": (optim.SGD, inline_sgd, dict(lr=0.05, momentum=0.8, weight_decay=0.01,
                                                        nesterov=True, decay_biases=False)),
    "adam-weights-wd": (optim.Adam, inline_adam, dict(lr=1e-2, weight_decay=0.1,
                                                      decay_biases=False)),
    "rmsprop-weights-wd": (optim.RMSProp, inline_rmsprop, dict(lr=1e-3, weight_decay=0.1,
                                                               decay_biases=False)),
}


def _model(rng, dtype, big=False):
    shapes = {"W1": (300, 200) if big else (6, 5), "b1": (5,), "W2": (5, 3), "b2": (3,)}
    if big:
        shapes["b1"], shapes["W2"] = (200,), (200, 3)
    return {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}


def _grads(rng, params):
    return {k: rng.standard_normal(p.shape).astype(p.dtype) for k, p in params.items()}


@pytest.mark.parametrize("case", CLASS_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_optimizer_matches_the_pytorch_algorithm_inline(rng, case, dtype):
    cls, inline, kwargs = CLASS_CASES[case]
    params = _model(rng, dtype, big=case.endswith("wd"))  # big: more than one thread's worth
    expected, inline_state = {k: p.copy() for k, p in params.items()}, {}
    objects = dict(params)
    opt = cls(**kwargs)
    for _ in range(4):
        grads = _grads(rng, params)
        for g in grads.values():
            g.setflags(write=False)
        opt.step(params, grads)
        inline(expected, grads, inline_state, **kwargs)
        for k in params:
            assert params[k] is objects[k] and params[k].dtype == dtype  # updated in place
            assert_close(params[k], expected[k], dtype, scale=4)


def test_optimizer_state_is_lazy_and_in_the_parameters_dtype(rng):
    params = {"W": rng.standard_normal((3, 2)).astype(np.float32), "b": np.zeros(2)}
    opt = optim.Adam()
    assert opt.state == {}
    opt.step(params, _grads(rng, params))
    assert set(opt.state) == {"W", "b"}
    assert opt.state["W"]["exp_avg"].dtype == np.float32
    assert opt.state["b"]["exp_avg_sq"].dtype == np.float64
    assert opt.state["W"]["exp_avg"].shape == (3, 2) and opt.state["W"]["step"] == 1

    sgd = optim.SGD(0.1)
    sgd.step(params, _grads(rng, params))
    assert all(s == {} for s in sgd.state.values())  # no momentum: no buffer
    sgd.momentum = 0.5
    sgd.step(params, _grads(rng, params))
    assert sgd.state["W"]["momentum_buffer"].dtype == np.float32


def test_state_arrays_are_updated_in_place(rng):
    params = _model(rng, np.float64)
    opt = optim.Adam(lr=1e-2)
    opt.step(params, _grads(rng, params))
    m = opt.state["W1"]["exp_avg"]
    before = m.copy()
    opt.step(params, _grads(rng, params))
    assert opt.state["W1"]["exp_avg"] is m and not np.array_equal(m, before)


@pytest.mark.parametrize("case", CLASS_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_optimizer_matches_torch(rng, case, dtype):
    torch = pytest.importorskip("torch")
    cls, _, kwargs = CLASS_CASES[case]
    torch_cls = {optim.SGD: torch.optim.SGD, optim.Adam: torch.optim.Adam,
                 optim.RMSProp: torch.optim.RMSprop}[cls]
    state_names = {optim.SGD: ("momentum_buffer",), optim.Adam: ("exp_avg", "exp_avg_sq"),
                   optim.RMSProp: ("square_avg",)}[cls]
    params = _model(rng, dtype)
    tparams = {k: torch.tensor(p.copy(), requires_grad=True) for k, p in params.items()}
    torch_kwargs = {k: v for k, v in kwargs.items() if k != "decay_biases"}
    if kwargs.get("decay_biases", True):
        topt = torch_cls(list(tparams.values()), **torch_kwargs)
    else:  # timm's convention: 1-D parameters in a group without weight decay
        topt = torch_cls([{"params": [t for t in tparams.values() if t.ndim > 1]},
                          {"params": [t for t in tparams.values() if t.ndim <= 1],
                           "weight_decay": 0.0}], **torch_kwargs)
    opt = cls(**kwargs)
    for _ in range(5):
        grads = _grads(rng, params)
        opt.step(params, grads)
        for k, tp in tparams.items():
            tp.grad = torch.tensor(grads[k])
        topt.step()
    for k, tp in tparams.items():
        assert_close(params[k], tp.detach().numpy(), dtype, scale=4)
        for name in state_names:
            if name in opt.state[k]:
                assert_close(opt.state[k][name], topt.state[tp][name].numpy(), dtype, scale=4)


# --------------------------------------------------------------------------------------------
# optimizer classes: fused_update, state_dict, zero_state / reset


def test_fused_update_says_when_the_compiled_step_may_run_the_update(rng):
    assert optim.SGD(0.1).fused_update() == optim.FusedUpdate("sgd", 0.1, (0.0, 0.0, 0.0), ())
    assert optim.SGD(0.1, momentum=0.9).fused_update() == optim.FusedUpdate(
        "sgd", 0.1, (0.9, 0.0, 0.0), ("momentum_buffer",))
    assert optim.SGD(0.1, weight_decay=1e-4).fused_update() == optim.FusedUpdate(
        "sgd", 0.1, (0.0, 1e-4, 1e-4), ())
    assert optim.SGD(0.1, weight_decay=1e-4, decay_biases=False).fused_update() == \
        optim.FusedUpdate("sgd", 0.1, (0.0, 1e-4, 0.0), ())
    assert optim.SGD(0.1, momentum=0.9, weight_decay=1e-4).fused_update() is None
    assert optim.SGD(0.1, momentum=0.5, nesterov=True).fused_update() is None
    assert optim.Adam(betas=(0.8, 0.9)).fused_update() == optim.FusedUpdate(
        "adam", 1e-3, (0.8, 0.9, 1e-8, 0.0, 0.0), ("exp_avg", "exp_avg_sq"), True)
    assert optim.Adam(weight_decay=0.5, decay_biases=False).fused_update().hyper == (
        0.9, 0.999, 1e-8, 0.5, 0.0)
    assert optim.RMSProp(weight_decay=0.5).fused_update() == optim.FusedUpdate(
        "rmsprop", 1e-2, (0.99, 1e-8, 0.5, 0.5), ("square_avg",))
    assert optim.RMSProp(weight_decay=0.5, decay_biases=False).fused_update().hyper == (
        0.99, 1e-8, 0.5, 0.0)
    opt = optim.SGD(0.1)
    opt.lr = -1.0  # set since construction: validated, as step() would
    with pytest.raises(ValueError, match="lr"):
        opt.fused_update()

    class Custom(optim.SGD):
        def _update(self, w, g, state, hp, n_threads):
            pass

    assert Custom(0.1).fused_update() is None
    # plain SGD is exactly W - lr * dW (what the GEMM with beta = 1 computes)
    plain = optim.SGD(0.25)
    w, dw = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    expected = w - 0.25 * dw
    plain.step({"w": w}, {"w": dw})
    np.testing.assert_array_equal(w, expected)


@pytest.mark.parametrize("case", ["momentum", "nesterov-wd", "adam-wd", "rmsprop",
                                  "adam-weights-wd"])
def test_state_dict_round_trip_resumes_exactly(rng, case):
    cls, _, kwargs = CLASS_CASES[case]
    params = _model(rng, np.float32)
    grads = [_grads(rng, params) for _ in range(5)]
    opt = cls(**kwargs)
    for g in grads[:3]:
        opt.step(params, g)
    saved, saved_params = opt.state_dict(), {k: p.copy() for k, p in params.items()}
    for g in grads[3:]:
        opt.step(params, g)

    # the snapshot did not move with the optimizer
    for name, entry in saved["state"].items():
        for key, value in entry.items():
            if isinstance(value, np.ndarray):
                assert not np.shares_memory(value, opt.state[name][key])
    assert all(e.get("step", 3) == 3 for e in saved["state"].values())

    resumed = cls(lr=0.5)  # other hyper-parameters: load_state_dict restores them
    resumed.load_state_dict(saved)
    assert resumed.hyperparameters() == opt.hyperparameters()
    assert resumed.decay_biases is kwargs.get("decay_biases", True)
    for g in grads[3:]:
        resumed.step(saved_params, g)
    for k in params:
        np.testing.assert_array_equal(saved_params[k], params[k])
    # loading copies: the dict may be reused
    assert not any(np.shares_memory(saved["state"]["W1"][k], resumed.state["W1"][k])
                   for k in saved["state"]["W1"] if k != "step")


@pytest.mark.parametrize("case", ["momentum", "adam-wd", "rmsprop"])
def test_a_state_dict_saved_before_decay_biases_loads_as_decaying_every_parameter(rng, case):
    """fastbp 0.1's optimizers had no decay_biases and decayed every parameter: their saved
    state_dicts load, and resume as they would have."""
    cls, _, kwargs = CLASS_CASES[case]
    params = _model(rng, np.float64)
    opt = cls(**kwargs)
    opt.step(params, _grads(rng, params))
    old = opt.state_dict()
    del old["hyperparameters"]["decay_biases"]
    resumed = cls(lr=0.5, decay_biases=False)
    resumed.load_state_dict(old)
    assert resumed.hyperparameters() == opt.hyperparameters()
    assert resumed.decay_biases is True


def _bad_state_dicts(opt):
    good = opt.state_dict()
    entry = next(iter(good["state"].values()))
    arrays = [k for k in entry if k != "step"]
    out = [
        ("not a dict", [1, 2]),
        ("extra top key", dict(good, extra=1)),
        ("missing hyper", {"hyperparameters": {"lr": 0.1}, "state": good["state"]}),
        ("bad hyper", {"hyperparameters": dict(good["hyperparameters"], lr=-1.0),
                       "state": good["state"]}),
        ("unknown state key", {"hyperparameters": good["hyperparameters"],
                               "state": {"W1": dict(entry, extra=np.zeros(1))}}),
        ("int array", {"hyperparameters": good["hyperparameters"],
                       "state": {"W1": dict(entry, **{arrays[0]: np.zeros((6, 5), int)})}}),
        ("state not a dict", {"hyperparameters": good["hyperparameters"], "state": [1]}),
    ]
    if len(arrays) > 1:
        out.append(("shapes differ", {"hyperparameters": good["hyperparameters"],
                                      "state": {"W1": dict(entry, **{arrays[1]: np.zeros(3)})}}))
    if "step" in entry:
        out.append(("bad step", {"hyperparameters": good["hyperparameters"],
                                 "state": {"W1": dict(entry, step=-1)}}))
        out.append(("partial", {"hyperparameters": good["hyperparameters"],
                                "state": {"W1": {"step": 2}}}))
    return out


@pytest.mark.parametrize("case", ["momentum", "adam-wd", "rmsprop"])
def test_load_state_dict_rejects_malformed_input_and_changes_nothing(rng, case):
    cls, _, kwargs = CLASS_CASES[case]
    params = _model(rng, np.float64)
    opt = cls(**kwargs)
    opt.step(params, _grads(rng, params))
    for label, bad in _bad_state_dicts(opt):
        before = opt.state_dict()
        with pytest.raises((TypeError, ValueError)):
            opt.load_state_dict(bad)
        _assert_unchanged(opt.state_dict(), before)


def test_zero_state_and_reset(rng):
    params = _model(rng, np.float64)
    start = {k: p.copy() for k, p in params.items()}
    grads = _grads(rng, params)
    opt = optim.Adam(lr=1e-2)
    opt.step(params, grads)
    first = {k: p.copy() for k, p in params.items()}
    opt.step(params, _grads(rng, params))

    m = opt.state["W1"]["exp_avg"]
    opt.zero_state()
    assert opt.state["W1"]["exp_avg"] is m and not m.any() and opt.state["W1"]["step"] == 0
    again = {k: p.copy() for k, p in start.items()}
    opt.step(again, grads)  # behaves as the very first step did
    for k in params:
        np.testing.assert_array_equal(again[k], first[k])

    opt.reset()
    assert opt.state == {}
    opt.step({"W1": np.zeros((2, 2))}, {"W1": np.ones((2, 2))})  # new shapes are fine now


# --------------------------------------------------------------------------------------------
# optimizer classes: decay_biases=False (weight decay on the weights only)

WEIGHTS_ONLY = {
    "sgd": lambda **kw: optim.SGD(lr=0.1, weight_decay=0.05, **kw),
    "momentum": lambda **kw: optim.SGD(lr=0.05, momentum=0.9, weight_decay=0.05, **kw),
    "adam": lambda **kw: optim.Adam(lr=1e-2, weight_decay=0.1, **kw),
    "rmsprop": lambda **kw: optim.RMSProp(lr=1e-3, weight_decay=0.1, **kw),
}


@pytest.mark.parametrize("make", WEIGHTS_ONLY.values(), ids=WEIGHTS_ONLY)
@pytest.mark.parametrize("as_tensors", [False, True], ids=["arrays", "tensors"])
def test_decay_biases_false_leaves_1d_parameters_undecayed(rng, make, as_tensors):
    """Zero gradients: only weight decay moves a parameter.  With decay_biases=False the 1-D
    parameters stay exactly as they were and the 2-D ones shrink; with the default every
    parameter shrinks."""
    from fastbp.autograd import Tensor

    for decay_biases in (False, True):
        params = _model(rng, np.float64)
        start = {k: p.copy() for k, p in params.items()}
        opt = make(decay_biases=decay_biases)
        for _ in range(3):
            if as_tensors:
                tensors = [Tensor(p, requires_grad=True) for p in params.values()]
                for t in tensors:
                    t.grad = np.zeros_like(t.data)
                opt.step(tensors)
            else:
                opt.step(params, {k: np.zeros_like(p) for k, p in params.items()})
        for k, p in params.items():
            if p.ndim == 1 and not decay_biases:
                np.testing.assert_array_equal(p, start[k])
            else:
                assert np.all(np.abs(p) < np.abs(start[k])), k


def _weights_only_kernel_by_kernel(opt):
    """The same optimizer as an instance of a subclass that changes _update (to the same
    thing): the compiled step does not run it, the kernel-by-kernel path does."""

    class KernelByKernel(type(opt)):
        def _update(self, w, g, state, hp, n_threads):
            super()._update(w, g, state, hp, n_threads)

    return KernelByKernel(**opt.hyperparameters())


def _reference_step(model, x, y, weights_opt, biases_opt):
    """forward, backward and two optimizers (weights with decay, biases without) on the NumPy
    reference: scikit-learn's and timm's split, written out."""
    with fastbp.use_backend("numpy"):
        value = model.criterion.forward(model.forward(x), y)
        model.backward(model.criterion.backward())
        for opt, ndim in ((weights_opt, 2), (biases_opt, 1)):
            names = [k for k, p in model.params.items() if p.ndim == ndim]
            opt.step({k: model.params[k] for k in names}, {k: model.grads[k] for k in names})
    return value


#: (rtol, atol) of the compiled step vs the NumPy reference after a few steps
STEP_TOLERANCE = {np.dtype(np.float32): (2e-4, 2e-5), np.dtype(np.float64): (1e-9, 1e-11)}


@pytest.mark.parametrize("make", [WEIGHTS_ONLY["sgd"], WEIGHTS_ONLY["adam"],
                                  WEIGHTS_ONLY["rmsprop"]], ids=["sgd", "adam", "rmsprop"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", ["softmax", "mse"])
def test_weights_only_decay_in_the_compiled_step(make, dtype, loss):
    """decay_biases=False runs inside the one-call compiled step: equal to the kernel-by-kernel
    path (bit for bit) and to the NumPy reference with separate weight and bias optimizers;
    the biases differ from those of decay_biases=True."""
    from fastbp import nn

    gen = np.random.default_rng(21)
    x = gen.standard_normal((16, 6)).astype(dtype)
    y = gen.standard_normal((16, 4)).astype(dtype) if loss == "mse" else gen.integers(0, 4, 16)
    models = [nn.MLP([6, 9, 7, 4], activation="tanh", dtype=dtype, rng=0, loss=loss)
              for _ in range(4)]
    compiled, kernel_by_kernel, reference_model, all_decayed = models
    for model in models:  # non-zero biases, so that decaying them would show
        for p in model.params.values():
            p[...] = 0.5 if p.ndim == 1 else p
    opt = make(decay_biases=False)
    opt_k = _weights_only_kernel_by_kernel(opt)
    hp = opt.hyperparameters()
    weights_opt = type(opt)(**hp)
    biases_opt = type(opt)(**dict(hp, weight_decay=0.0))
    opt_all = make(decay_biases=True)
    assert opt.fused_update() is not None and opt_k.fused_update() is None
    for _ in range(4):
        value = compiled.train_step(x, y, compiled.criterion, opt)
        assert kernel_by_kernel.train_step(x, y, kernel_by_kernel.criterion, opt_k) == value
        expected = _reference_step(reference_model, x, y, weights_opt, biases_opt)
        assert value == pytest.approx(expected, rel=STEP_TOLERANCE[np.dtype(dtype)][0])
        all_decayed.train_step(x, y, all_decayed.criterion, opt_all)
    assert compiled._step_cache.compiled and not kernel_by_kernel._step_cache.compiled
    rtol, atol = STEP_TOLERANCE[np.dtype(dtype)]
    for name, p in compiled.params.items():
        np.testing.assert_array_equal(p, kernel_by_kernel.params[name])
        np.testing.assert_allclose(p, reference_model.params[name], rtol=rtol, atol=atol)
        if p.ndim == 1:  # the bias update really skipped the decay
            off = np.abs(p - reference_model.params[name]).max()
            assert np.abs(p - all_decayed.params[name]).max() > max(10 * off, atol), name


# --------------------------------------------------------------------------------------------
# optimizer classes: bad input raises and changes nothing


def _read_only(a):
    a.setflags(write=False)
    return a


def _class_failures():
    """(label, mutate(params, grads, opt), error): each spoils b2, the LAST parameter, or a
    hyper-parameter; W1, b1 and W2 pass their checks first."""

    def replace_param(key, value):
        return lambda p, g, o: p.__setitem__(key, value)

    def replace_grad(key, value):
        return lambda p, g, o: g.__setitem__(key, value)

    def reshape_param_and_grad(p, g, o):  # the state still has the old shape
        p["b2"], g["b2"] = np.ones(4), np.ones(4)

    return [
        ("missing grad", lambda p, g, o: g.pop("b2"), ValueError),
        ("extra grad", lambda p, g, o: g.__setitem__("W3", np.ones(2)), ValueError),
        ("grad shape", replace_grad("b2", np.ones(4)), ValueError),
        ("grad dtype", replace_grad("b2", np.ones(3, np.float32)), TypeError),
        ("grad list", replace_grad("b2", [1.0, 2.0, 3.0]), TypeError),
        ("int param", replace_param("b2", np.ones(3, int)), TypeError),
        ("strided param", replace_param("b2", np.ones(6)[::2]), ValueError),
        ("read-only param", replace_param("b2", _read_only(np.ones(3))), ValueError),
        ("param reshaped", reshape_param_and_grad, ValueError),
        ("nan lr", lambda p, g, o: setattr(o, "lr", math.nan), ValueError),
        ("negative lr", lambda p, g, o: setattr(o, "lr", -0.1), ValueError),
        ("bad wd", lambda p, g, o: setattr(o, "weight_decay", math.inf), ValueError),
        ("bad decay_biases", lambda p, g, o: setattr(o, "decay_biases", 0), TypeError),
        ("strided state", lambda p, g, o: o.state["b2"].update(
            {k: np.zeros(6)[::2] for k, v in o.state["b2"].items() if isinstance(v, np.ndarray)}),
         ValueError),
    ]


@pytest.mark.parametrize("case", ["momentum", "adam", "rmsprop"])
def test_bad_step_raises_and_changes_nothing(rng, case):
    cls, _, kwargs = CLASS_CASES[case]
    for label, mutate, err in _class_failures():
        params = _model(rng, np.float64)
        opt = cls(**kwargs)
        opt.step(params, _grads(rng, params))  # state exists for every parameter
        grads = _grads(rng, params)
        mutate(params, grads, opt)
        before = copy.deepcopy((params, opt.state))
        with pytest.raises(err):
            opt.step(params, grads)
        _assert_unchanged(params, before[0])  # W1, b1, W2 (checked first) were not updated
        _assert_unchanged(opt.state, before[1])
    with pytest.raises(TypeError, match="params"):
        cls(**kwargs).step([np.ones(2)], [np.ones(2)])


@pytest.mark.parametrize("make,err,match", [
    (lambda: optim.SGD(-0.1), ValueError, "lr"),
    (lambda: optim.SGD(math.nan), ValueError, "lr"),
    (lambda: optim.SGD("0.1"), TypeError, "lr"),
    (lambda: optim.SGD(0.1, momentum=1.0), ValueError, "momentum"),
    (lambda: optim.SGD(0.1, momentum=-0.5), ValueError, "momentum"),
    (lambda: optim.SGD(0.1, weight_decay=-1e-4), ValueError, "weight_decay"),
    (lambda: optim.SGD(0.1, nesterov=True), ValueError, "nesterov"),
    (lambda: optim.SGD(0.1, momentum=0.9, nesterov="yes"), TypeError, "nesterov"),
    (lambda: optim.Adam(betas=(0.9, 1.0)), ValueError, r"betas\[1\]"),
    (lambda: optim.Adam(betas=(-0.1, 0.9)), ValueError, r"betas\[0\]"),
    (lambda: optim.Adam(betas=0.9), ValueError, "betas"),
    (lambda: optim.Adam(eps=0.0), ValueError, "eps"),
    (lambda: optim.Adam(lr=math.inf), ValueError, "lr"),
    (lambda: optim.RMSProp(alpha=1.0), ValueError, "alpha"),
    (lambda: optim.RMSProp(eps=-1e-8), ValueError, "eps"),
    (lambda: optim.RMSProp(weight_decay=math.nan), ValueError, "weight_decay"),
    (lambda: optim.SGD(0.1, decay_biases="no"), TypeError, "decay_biases"),
    (lambda: optim.Adam(decay_biases=None), TypeError, "decay_biases"),
    (lambda: optim.RMSProp(decay_biases=1), TypeError, "decay_biases"),
])
def test_constructor_validates_hyperparameters(make, err, match):
    with pytest.raises(err, match=match):
        make()


# --------------------------------------------------------------------------------------------
# backends


@pytest.mark.parametrize("backend", ["numpy", "checked"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rules_and_optimizers_give_the_same_numbers_on_every_backend(rng, backend, dtype):
    w = rng.standard_normal((40, 30)).astype(dtype)
    grads = [rng.standard_normal(w.shape).astype(dtype) for _ in range(3)]

    def run():
        out = {}
        for rule, (fast, _, hyper, _) in RULES.items():
            x, config = w.copy(), dict(hyper)
            for g in grads:
                x, config = fast(x, g, config)
            out[rule] = x
        for case, (cls, _, kwargs) in CLASS_CASES.items():
            params, opt = {"w": w.copy()}, cls(**kwargs)
            for g in grads:
                opt.step(params, {"w": g})
            out[case] = params["w"]
        return out

    compiled = run()
    with fastbp.use_backend(backend):
        other = run()
    for key in compiled:
        assert_close(other[key], compiled[key], dtype, scale=4)


def test_rules_and_optimizers_call_the_backends_kernels(rng, monkeypatch):
    calls = []
    for name in OPTIM_KERNELS:
        real = getattr(reference, name)
        monkeypatch.setattr(reference, name,
                            lambda *a, _real=real, _name=name, **k: calls.append(_name) or
                            _real(*a, **k))
    w, dw = rng.standard_normal(4), rng.standard_normal(4)
    with fastbp.use_backend("numpy"):
        optim.sgd(w.copy(), dw)
        optim.sgd_momentum(w, dw)
        optim.sgd_momentum_torch(w, dw)
        optim.rmsprop(w, dw)
        optim.adam(w, dw)
        for opt in (optim.SGD(0.1), optim.SGD(0.1, momentum=0.9), optim.Adam(), optim.RMSProp()):
            opt.step({"w": w.copy()}, {"w": dw})
    assert calls == ["sgd_step", "sgd_momentum_step", "momentum_step", "rmsprop_step",
                     "adam_step", "sgd_step", "momentum_step", "adam_step", "rmsprop_step"]
    calls.clear()
    optim.adam(w, dw)  # compiled again: the reference is not called
    assert calls == []


def test_checked_backend_catches_a_corrupted_optimizer_kernel(rng, monkeypatch):
    real = _kernels.adam_step

    def corrupted(w, *args, **kwargs):
        real(w, *args, **kwargs)
        w[2] += 1e-3

    monkeypatch.setattr(_kernels, "adam_step", corrupted)
    with fastbp.use_backend("checked"):
        with pytest.raises(fastbp.CheckError, match="adam_step"):
            optim.adam(rng.standard_normal(5), rng.standard_normal(5))
