"""The caches that keep a training step cheap never skip a check: the optimizer's validated
hyper-parameters (keyed on the identity of every value), its fast per-parameter checks, and the
plan a model keeps between steps (re-read from the layers on every step).  Each test warms the
cache first, then changes what it describes, and expects the same error (and nothing written)
or the same numbers as a fresh object that never cached anything.
"""

import numpy as np
import pytest

from fastbp import nn, optim


def _arrays(seed=0, dtype=np.float64):
    gen = np.random.default_rng(seed)
    params = {"W": gen.standard_normal((4, 3)).astype(dtype),
              "b": gen.standard_normal(3).astype(dtype)}
    grads = {k: gen.standard_normal(v.shape).astype(dtype) for k, v in params.items()}
    return params, grads


def _warm(opt, params, grads, steps=2):
    for _ in range(steps):
        opt.step(params, grads)


def _snapshot(params, opt):
    return ({k: v.copy() for k, v in params.items()},
            {n: {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in s.items()}
             for n, s in opt.state.items()})


def _assert_unchanged(params, opt, snapshot):
    """Every value as it was (compared flat: an edit may have reshaped an array in place; a
    state array the edit replaced by another dtype is compared in that dtype)."""
    before_params, before_state = snapshot
    for k, v in before_params.items():
        np.testing.assert_array_equal(np.ravel(params[k]), v.ravel())
    assert opt.state.keys() == before_state.keys()
    for n, s in before_state.items():
        for k, v in s.items():
            now = opt.state[n][k]
            np.testing.assert_array_equal(np.ravel(now), np.ravel(v).astype(np.asarray(now).dtype))


# ------------------------------------------------------------------ hyper-parameter cache


@pytest.mark.parametrize("make,attr,bad,exc", [
    (lambda: optim.SGD(0.1, momentum=0.9), "lr", -1.0, ValueError),
    (lambda: optim.SGD(0.1, momentum=0.9), "lr", float("nan"), ValueError),
    (lambda: optim.SGD(1.0), "lr", True, TypeError),  # equal to the cached 1.0, not identical
    (lambda: optim.SGD(0.1, momentum=0.9), "momentum", 1.0, ValueError),
    (lambda: optim.SGD(0.1, momentum=0.9), "nesterov", 1, TypeError),
    (lambda: optim.Adam(), "betas", (0.9, 1.5), ValueError),
    (lambda: optim.Adam(), "eps", 0.0, ValueError),
    (lambda: optim.RMSProp(), "alpha", -0.5, ValueError),
])
def test_hyperparameters_rebound_after_cached_steps_are_validated(make, attr, bad, exc):
    params, grads = _arrays()
    opt = make()
    _warm(opt, params, grads)
    snapshot = _snapshot(params, opt)
    setattr(opt, attr, bad)
    with pytest.raises(exc, match=attr):
        opt.step(params, grads)
    with pytest.raises(exc, match=attr):
        opt.fused_update()
    _assert_unchanged(params, opt, snapshot)


def test_a_list_of_betas_changed_in_place_is_validated_again():
    params, grads = _arrays()
    opt = optim.Adam()
    opt.betas = [0.9, 0.999]  # mutable: never served from the cache
    _warm(opt, params, grads)
    snapshot = _snapshot(params, opt)
    opt.betas[1] = 1.0
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        opt.step(params, grads)
    _assert_unchanged(params, opt, snapshot)


@pytest.mark.parametrize("make", [lambda: optim.SGD(0.1, momentum=0.9),
                                  lambda: optim.Adam(1e-2), lambda: optim.RMSProp(1e-2)])
def test_a_schedule_takes_effect_bit_for_bit(make):
    """Changing lr between steps gives exactly what an optimizer built with each value does."""
    params, grads = _arrays()
    cached, fresh = make(), make()
    p_cached, p_fresh = ({k: v.copy() for k, v in params.items()} for _ in range(2))
    for lr in (0.05, 0.05, np.float32(0.02), 0.02, 0.1):
        cached.lr = lr
        cached.step(p_cached, grads)
        fresh.load_state_dict(dict(fresh.state_dict(), hyperparameters=dict(
            fresh.hyperparameters(), lr=float(lr))))  # a new validation every step
        fresh.__dict__.pop("_validated", None)
        fresh.step(p_fresh, grads)
    for k in params:
        np.testing.assert_array_equal(p_cached[k], p_fresh[k])


# ------------------------------------------------------------------ per-parameter checks


def _read_only_state(opt):
    opt.state["W"][next(k for k, v in opt.state["W"].items()
                        if isinstance(v, np.ndarray))].setflags(write=False)


def _reshaped_state(opt):
    s = opt.state["W"]
    key = next(k for k, v in s.items() if isinstance(v, np.ndarray))
    s[key].shape = s[key].shape[::-1]  # the same array object, another shape


def _state_of_other_dtype(opt):
    s = opt.state["b"]
    key = next(k for k, v in s.items() if isinstance(v, np.ndarray))
    s[key] = s[key].astype(np.float32)


EDITS = {
    "read-only parameter": (lambda p, g, o: p["b"].setflags(write=False), ValueError,
                            "read-only"),
    "parameter reshaped in place": (lambda p, g, o: setattr(p["W"], "shape", (3, 4)),
                                    ValueError, "shape"),
    "gradient of another dtype": (lambda p, g, o: g.__setitem__("b", g["b"].astype(np.float32)),
                                  TypeError, "dtype"),
    "read-only state": (lambda p, g, o: _read_only_state(o), ValueError, "read-only"),
    "state reshaped in place": (lambda p, g, o: _reshaped_state(o), ValueError, "reset"),
    "state of another dtype": (lambda p, g, o: _state_of_other_dtype(o), ValueError, "reset"),
}


@pytest.mark.parametrize("make", [lambda: optim.SGD(0.1, momentum=0.9),
                                  lambda: optim.Adam(), lambda: optim.RMSProp()])
@pytest.mark.parametrize("edit", list(EDITS))
def test_edits_after_cached_steps_raise_before_any_write(make, edit):
    params, grads = _arrays()
    opt = make()
    _warm(opt, params, grads)
    change, exc, match = EDITS[edit]
    snapshot = _snapshot(params, opt)
    change(params, grads, opt)
    with pytest.raises(exc, match=match):
        opt.step(params, grads)
    _assert_unchanged(params, opt, snapshot)


def test_non_contiguous_gradients_still_take_the_full_checks_and_give_the_same_numbers():
    params, grads = _arrays()
    strided = {k: np.repeat(g[..., None], 2, axis=-1)[..., 0] for k, g in grads.items()}
    assert not strided["W"].flags.c_contiguous
    a, b = optim.Adam(), optim.Adam()
    pa, pb = ({k: v.copy() for k, v in params.items()} for _ in range(2))
    for _ in range(3):
        a.step(pa, grads)
        b.step(pb, strided)
    for k in params:
        np.testing.assert_array_equal(pa[k], pb[k])


# ------------------------------------------------------------------ the plan a model keeps


def _problem():
    gen = np.random.default_rng(4)
    return gen.standard_normal((8, 6)), gen.integers(0, 4, 8)


def test_the_plan_is_kept_while_the_layers_are_unchanged():
    x, y = _problem()
    model = nn.MLP([6, 5, 4], rng=0, dtype=np.float64)
    opt, loss = optim.SGD(0.1, momentum=0.9), nn.SoftmaxCrossEntropy()
    model.train_step(x, y, loss, opt)
    plan = model._step_cache.plan
    assert plan is not None and model._fusion_plan() is plan
    model.layers[0].params["W"] = model.layers[0].params["W"].copy()  # same values, new array
    replanned = model._fusion_plan()
    assert replanned is not plan and replanned.key != plan.key
    assert replanned.stages[0].W is model.layers[0].params["W"]


def test_a_parameter_reshaped_in_place_after_cached_steps_raises_clearly():
    x, y = _problem()
    model = nn.MLP([6, 5, 5, 4], rng=0, dtype=np.float64)
    opt, loss = optim.SGD(0.1, momentum=0.9), nn.SoftmaxCrossEntropy()
    for _ in range(2):
        model.train_step(x, y, loss, opt)
    W = model.layers[2].params["W"]
    W.shape = (W.size,)  # the same array object, no longer (5, 5)
    before = {k: v.copy() for k, v in model.params.items()}
    with pytest.raises(ValueError, match="2.W"):
        model.train_step(x, y, loss, opt)
    for k, v in before.items():
        np.testing.assert_array_equal(model.params[k], v)


def test_an_activation_that_stops_fusing_after_cached_steps_is_followed():
    x, y = _problem()
    fused = nn.MLP([6, 5, 4], activation="leaky_relu", rng=0, dtype=np.float64)
    plain = nn.MLP([6, 5, 4], activation="leaky_relu", rng=0, dtype=np.float64)
    opt_f, opt_p = optim.SGD(0.1), optim.SGD(0.1)
    loss = nn.SoftmaxCrossEntropy()
    for _ in range(2):
        fused.train_step(x, y, loss, opt_f)
        plain.train_step(x, y, loss, opt_p)
    for model in (fused, plain):
        model.layers[1].alpha = -0.5  # a negative slope: its backward cannot read the output
    assert fused._fusion_plan() is None
    fused.train_step(x, y, loss, opt_f)
    value = loss.forward(plain.forward(x), y)
    plain.backward(loss.backward())
    opt_p.step(plain.params, plain.grads)
    for k, v in plain.params.items():
        np.testing.assert_array_equal(fused.params[k], v)
    assert np.isfinite(value)


@pytest.mark.parametrize("clone", ["deepcopy", "pickle"])
def test_a_copied_optimizer_validates_its_own_hyperparameters(clone):
    import copy
    import pickle

    params, grads = _arrays()
    opt = optim.Adam(1e-2)
    _warm(opt, params, grads)
    twin = copy.deepcopy(opt) if clone == "deepcopy" else pickle.loads(pickle.dumps(opt))
    p_opt, p_twin = ({k: v.copy() for k, v in params.items()} for _ in range(2))
    opt.step(p_opt, grads)
    twin.step(p_twin, grads)
    for k in params:
        np.testing.assert_array_equal(p_opt[k], p_twin[k])
    twin.eps = -1.0
    with pytest.raises(ValueError, match="eps"):
        twin.step(p_twin, grads)
    opt.step(p_opt, grads)  # the original is not affected


# ------------------------------------------------------------------ plans with norm layers


def _norm_mlp(norm):
    return nn.MLP([6, 5, 5, 4], rng=0, dtype=np.float64, norm=norm)


#: edit name -> edit(model): what a user may change on a norm layer between steps
NORM_EDITS = {
    "eps": lambda m: setattr(m.layers[1], "eps", 0.5),
    "momentum": lambda m: setattr(m.layers[1], "momentum", 0.9),
    "rebind gamma": lambda m: m.layers[4].params.__setitem__(
        "gamma", m.layers[4].params["gamma"] * 2.0),
    "rebind beta": lambda m: m.layers[1].params.__setitem__(
        "beta", m.layers[1].params["beta"] + 0.5),
    "rebind running_mean": lambda m: m.layers[1].buffers.__setitem__(
        "running_mean", m.layers[1].buffers["running_mean"] + 1.0),
    "rebind running_var": lambda m: m.layers[4].buffers.__setitem__(
        "running_var", m.layers[4].buffers["running_var"] * 3.0),
    "replace batch norm with layer norm": lambda m: m.layers.__setitem__(
        1, nn.LayerNorm(5, dtype=np.float64)),
    "delete a norm": lambda m: m.layers.__delitem__(4),
    "insert a norm": lambda m: m.layers.insert(7, nn.BatchNorm1d(4, dtype=np.float64)),
    "affine off": lambda m: m.layers.__setitem__(
        4, nn.BatchNorm1d(5, affine=False, dtype=np.float64)),
    "eval then train": lambda m: m.layers[1].eval().train(),  # back as it was: the same plan
}


@pytest.mark.parametrize("opt", ["momentum", "adam"])
@pytest.mark.parametrize("edit", list(NORM_EDITS))
def test_the_fused_step_follows_every_edit_of_a_norm(edit, opt):
    """After cached steps, an edit of a norm layer gives exactly what the unfused path gives
    after the same edit (running statistics included): the plan is never stale."""
    x, y = _problem()
    make = (lambda: optim.SGD(0.1, momentum=0.9)) if opt == "momentum" else \
        (lambda: optim.Adam(1e-2))
    fused, plain = _norm_mlp("batch"), _norm_mlp("batch")
    opt_f, opt_p, loss = make(), make(), nn.SoftmaxCrossEntropy()
    for _ in range(2):
        fused.train_step(x, y, loss, opt_f)
        _unfused(plain, x, y, loss, opt_p)
    plan = fused._step_cache.plan
    for model in (fused, plain):
        NORM_EDITS[edit](model)
    replanned = fused._fusion_plan()
    assert replanned is not None
    assert (replanned is plan) == (edit == "eval then train")
    for _ in range(2):
        vf = fused.train_step(x, y, loss, opt_f)
        vp = _unfused(plain, x, y, loss, opt_p)
        np.testing.assert_allclose(vf, vp, rtol=1e-12)
    after_f, after_p = fused.state_dict(), plain.state_dict()
    assert after_f.keys() == after_p.keys()
    for k, v in after_p.items():
        np.testing.assert_allclose(after_f[k], v, rtol=1e-10, atol=1e-12, err_msg=k)


def test_the_plan_of_a_batch_norm_follows_its_mode():
    x, y = _problem()
    model = _norm_mlp("batch")
    model.train_step(x, y, nn.SoftmaxCrossEntropy(), optim.SGD(0.1))
    trained = model._step_cache.plan
    model.layers[4].eval()
    inferring = model._fusion_plan()
    assert inferring.key != trained.key
    assert [s.norm.statistics for s in inferring.stages[:2]] == ["batch", "running"]
    model.layers[4].train()
    assert model._fusion_plan() is trained  # the cached plan describes the layers again


def _unfused(model, x, y, loss, opt):
    value = loss.forward(model.forward(x), y)
    model.backward(loss.backward())
    opt.step(model.params, model.grads)
    return value


def test_a_norm_parameter_reshaped_in_place_after_cached_steps_raises_clearly():
    x, y = _problem()
    model = _norm_mlp("layer")
    opt, loss = optim.SGD(0.1, momentum=0.9), nn.SoftmaxCrossEntropy()
    for _ in range(2):
        model.train_step(x, y, loss, opt)
    gamma = model.layers[4].params["gamma"]
    gamma.shape = (1, 5)  # the same array object, no longer (5,)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="4.gamma"):
        model.train_step(x, y, loss, opt)
    for k, v in before.items():
        np.testing.assert_array_equal(model.state_dict()[k], v)


@pytest.mark.parametrize("bad,exc", [(-1.0, ValueError), ("0.1", TypeError)])
def test_a_norm_scalar_set_to_a_bad_value_after_cached_steps_is_refused(bad, exc):
    x, y = _problem()
    model = _norm_mlp("batch")
    opt, loss = optim.SGD(0.1), nn.SoftmaxCrossEntropy()
    model.train_step(x, y, loss, opt)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    for attr in ("eps", "momentum"):
        old = getattr(model.layers[1], attr)
        setattr(model.layers[1], attr, bad)
        with pytest.raises(exc, match=attr):
            model.train_step(x, y, loss, opt)
        setattr(model.layers[1], attr, old)
    for k, v in before.items():
        np.testing.assert_array_equal(model.state_dict()[k], v)
