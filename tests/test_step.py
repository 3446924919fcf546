"""The fused training step (fastbp._planner + fastbp._kernels._step.FusedStep) against the
kernel-by-kernel path: after every kind of edit of a model between steps, the fused step trains
the CURRENT network (forward, backward, optimizer.step give the same numbers), and nothing is
written through a read-only parameter or optimizer buffer.
"""

import numpy as np
import pytest
from helpers import DTYPES, assert_close

import fastbp
from fastbp import io, nn, optim
from fastbp._specs import ACTIVATIONS as SPEC_ACTIVATIONS

OPTIMIZERS = {
    "sgd": lambda: optim.SGD(lr=0.1),
    "momentum": lambda: optim.SGD(lr=0.05, momentum=0.9),
    "nesterov": lambda: optim.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda: optim.Adam(lr=1e-2),
    "rmsprop": lambda: optim.RMSProp(lr=1e-3),
}


def _model(dtype, act="relu", **kw):
    return nn.MLP([6, 9, 7, 4], activation=act, dtype=dtype, rng=0, **kw)


def _unfused_step(model, x, y, loss, opt):
    value = loss.forward(model.forward(x), y)
    model.backward(loss.backward())
    opt.step(model.params, model.grads)
    return value


def _mlp(sizes, act="relu", dtype=np.float64, seed=0, loss="softmax", **kw):
    return nn.MLP(sizes, activation=act, dtype=dtype, rng=seed, loss=loss, **kw)


def _fresh_linear(model, i, j, dtype):
    return nn.Linear(i, j, dtype=dtype, rng=len(model.layers))


#: edit name -> edit(model, optimizer, dtype); applied identically to both models
EDITS = {
    "replace activation": lambda m, o, dt: m.layers.__setitem__(1, nn.Tanh()),
    "delete layers": lambda m, o, dt: m.layers.__delitem__(slice(3, 5)),
    "insert layers": lambda m, o, dt: (m.layers.__setitem__(
        slice(2, 2), [_fresh_linear(m, 9, 9, dt), nn.Sigmoid()]), o.reset()),
    "append activation": lambda m, o, dt: m.layers.append(nn.ELU(0.5)),
    "append layers": lambda m, o, dt: m.layers.extend([nn.ReLU(), _fresh_linear(m, 4, 4, dt)]),
    "rebind W": lambda m, o, dt: m.layers[2].params.__setitem__(
        "W", (m.layers[2].params["W"] * 0.5).astype(dt)),
    "rebind state": lambda m, o, dt: [s.__setitem__(k, v * 0.5) for s in o.state.values()
                                      for k, v in list(s.items()) if isinstance(v, np.ndarray)],
}


def _edit_alpha(model):
    """Change an activation's parameter in place (same object, same id)."""
    for layer in model.layers:
        if isinstance(layer, (nn.LeakyReLU, nn.ELU)):
            layer.alpha = 0.3
        if isinstance(layer, nn.GELU):
            layer.approximate = "tanh" if layer.approximate == "none" else "none"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("edit", list(EDITS) + ["alpha in place"])
def test_fused_step_follows_every_edit(edit, opt, dtype):
    gen = np.random.default_rng(1)
    x = gen.standard_normal((12, 6)).astype(dtype)
    y = gen.integers(0, 4, 12)
    act = "leaky_relu" if edit == "alpha in place" else "relu"
    fused, plain = _model(dtype, act), _model(dtype, act)
    opt_f, opt_p = OPTIMIZERS[opt](), OPTIMIZERS[opt]()
    loss_f, loss_p = nn.SoftmaxCrossEntropy(), nn.SoftmaxCrossEntropy()
    for _ in range(2):  # warm: the compiled step and the plan are cached
        fused.train_step(x, y, loss_f, opt_f)
        _unfused_step(plain, x, y, loss_p, opt_p)
    for model, o in ((fused, opt_f), (plain, opt_p)):
        if edit == "alpha in place":
            _edit_alpha(model)
        else:
            EDITS[edit](model, o, dtype)
    assert fused._fusion_plan() is not None
    for _ in range(3):
        vf = fused.train_step(x, y, loss_f, opt_f)
        vp = _unfused_step(plain, x, y, loss_p, opt_p)
        assert_close(vf, vp, dtype, scale=10)
    assert fused.params.keys() == plain.params.keys()
    for name, p in plain.params.items():
        assert_close(fused.params[name], p, dtype, scale=10)


@pytest.mark.parametrize("form", ["none", "tanh"])
def test_gelu_form_changed_in_place_is_followed(form):
    gen = np.random.default_rng(2)
    x, y = gen.standard_normal((8, 6)), gen.integers(0, 4, 8)
    fused, plain = _model(np.float64, "gelu", approximate=form), \
        _model(np.float64, "gelu", approximate=form)
    opt_f, opt_p = optim.SGD(lr=0.1), optim.SGD(lr=0.1)
    fused.train_step(x, y, nn.SoftmaxCrossEntropy(), opt_f)
    _unfused_step(plain, x, y, nn.SoftmaxCrossEntropy(), opt_p)
    for model in (fused, plain):
        _edit_alpha(model)
    assert fused._fusion_plan().stages[0].activation.code == (
        "gelu" if form == "tanh" else "gelu_tanh")
    vf = fused.train_step(x, y, nn.SoftmaxCrossEntropy(), opt_f)
    vp = _unfused_step(plain, x, y, nn.SoftmaxCrossEntropy(), opt_p)
    assert_close(vf, vp, np.float64)


def test_replacing_a_layer_by_an_equal_looking_one_is_not_confused_by_reused_ids():
    """A deleted layer's id may be reused by the next object: the plan must not care."""
    gen = np.random.default_rng(3)
    x, y = gen.standard_normal((8, 6)), gen.integers(0, 4, 8)
    fused, plain = _model(np.float64), _model(np.float64)
    opt_f, opt_p = optim.SGD(lr=0.1, momentum=0.9), optim.SGD(lr=0.1, momentum=0.9)
    for round_ in range(4):
        for model in (fused, plain):
            del model.layers[1]
            model.layers.insert(1, nn.Tanh() if round_ % 2 else nn.LeakyReLU(0.1 * round_))
        vf = fused.train_step(x, y, nn.SoftmaxCrossEntropy(), opt_f)
        vp = _unfused_step(plain, x, y, nn.SoftmaxCrossEntropy(), opt_p)
        assert_close(vf, vp, np.float64)


@pytest.mark.parametrize("backend", ["compiled", "numpy"])
@pytest.mark.parametrize("opt", ["momentum", "adam"])
def test_state_of_renamed_parameters_is_an_error_on_every_path(opt, backend):
    """Inserting layers renames the parameters: stale optimizer state raises (call reset()),
    fused or not, before anything is written."""
    gen = np.random.default_rng(10)
    x, y = gen.standard_normal((8, 6)), gen.integers(0, 4, 8)
    model, o = _model(np.float64), OPTIMIZERS[opt]()
    with fastbp.use_backend(backend):
        model.train_step(x, y, nn.SoftmaxCrossEntropy(), o)
        model.layers[2:2] = [nn.Linear(9, 9, dtype=np.float64, rng=1), nn.ReLU()]
        before = model.state_dict()
        with pytest.raises(ValueError, match="call reset"):
            model.train_step(x, y, nn.SoftmaxCrossEntropy(), o)
        for name, p in model.params.items():
            np.testing.assert_array_equal(p, before[name], err_msg=name)
        o.reset()
        assert np.isfinite(model.train_step(x, y, nn.SoftmaxCrossEntropy(), o))


# ---- nothing written through read-only arrays --------------------------------------------

@pytest.mark.parametrize("backend", ["compiled", "numpy"])
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("warm", [False, True])
@pytest.mark.parametrize("which", ["0.W", "0.b", "4.W", "4.b"])
def test_read_only_parameter_raises_before_anything_changes(which, warm, opt, backend):
    gen = np.random.default_rng(4)
    x, y = gen.standard_normal((8, 6)).astype(np.float32), gen.integers(0, 4, 8)
    model, o = _model(np.float32), OPTIMIZERS[opt]()
    with fastbp.use_backend(backend):
        if warm:
            model.train_step(x, y, nn.SoftmaxCrossEntropy(), o)
        model.params[which].setflags(write=False)
        before = model.state_dict()
        state = o.state_dict()
        with pytest.raises(ValueError, match="read-only"):
            model.train_step(x, y, nn.SoftmaxCrossEntropy(), o)
    for name, p in model.params.items():
        np.testing.assert_array_equal(p, before[name], err_msg=name)
    after = o.state_dict()["state"]
    assert after.keys() == state["state"].keys()
    for name, s in state["state"].items():
        for k, v in s.items():
            np.testing.assert_array_equal(after[name][k], v)


@pytest.mark.parametrize("backend", ["compiled", "numpy"])
def test_read_only_velocity_raises_before_anything_changes(backend):
    gen = np.random.default_rng(5)
    x, y = gen.standard_normal((8, 6)), gen.integers(0, 4, 8)
    model, o = _model(np.float64), optim.SGD(lr=0.1, momentum=0.9)
    with fastbp.use_backend(backend):
        model.train_step(x, y, nn.SoftmaxCrossEntropy(), o)
        o.state["2.W"]["momentum_buffer"].setflags(write=False)
        before = model.state_dict()
        with pytest.raises(ValueError, match="read-only"):
            model.train_step(x, y, nn.SoftmaxCrossEntropy(), o)
    for name, p in model.params.items():
        np.testing.assert_array_equal(p, before[name], err_msg=name)


@pytest.mark.parametrize("bad,exc,match", [
    (lambda w: np.asfortranarray(w), ValueError, "C-contiguous"),
    (lambda w: w.astype(np.float64), TypeError, "dtype"),
    (lambda w: w[:, :-1].copy(), ValueError, "shape"),
])
def test_rebound_parameter_of_the_wrong_layout_raises_clearly(bad, exc, match):
    gen = np.random.default_rng(6)
    x, y = gen.standard_normal((8, 6)).astype(np.float32), gen.integers(0, 4, 8)
    model, o = _model(np.float32), optim.SGD(lr=0.1)
    model.train_step(x, y, nn.SoftmaxCrossEntropy(), o)
    model.layers[2].params["W"] = bad(model.layers[2].params["W"])
    before = model.state_dict()
    with pytest.raises(exc, match=match):
        model.train_step(x, y, nn.SoftmaxCrossEntropy(), o)
    for name, p in model.params.items():
        np.testing.assert_array_equal(p, before[name], err_msg=name)


# ---- what fuses ---------------------------------------------------------------------------

class MyReLU(nn.ReLU):
    pass


class ReLU(nn.Module):
    """A look-alike: named ReLU, but not fastbp's (here: a shifted ReLU)."""

    def __init__(self):
        self.params, self.grads = {}, {}

    def forward(self, x):
        self.x = np.asarray(x)
        return np.maximum(self.x - 0.5, 0)

    def backward(self, dout):
        return dout * (self.x > 0.5)


class NoisyReLU(nn.ReLU):
    def forward(self, x):
        return super().forward(x) + 1.0


def _chain(act):
    gen = np.random.default_rng(7)
    return nn.Sequential(nn.Linear(5, 6, dtype=np.float64, rng=gen), act,
                         nn.Linear(6, 3, dtype=np.float64, rng=gen))


def test_layers_declare_how_they_fuse():
    assert _chain(MyReLU())._fusion_plan().stages[0].activation.code == "relu"
    assert _chain(ReLU())._fusion_plan() is None
    assert _chain(NoisyReLU())._fusion_plan() is None

    class MyLinear(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    assert nn.Sequential(MyLinear(5, 3))._fusion_plan() is None


@pytest.mark.parametrize("act", [ReLU, NoisyReLU])
def test_look_alikes_train_as_themselves(act):
    gen = np.random.default_rng(8)
    x, y = gen.standard_normal((8, 5)), gen.integers(0, 3, 8)
    a, b = _chain(act()), _chain(act())
    va = a.train_step(x, y, nn.SoftmaxCrossEntropy(), optim.SGD(lr=0.1))
    vb = _unfused_step(b, x, y, nn.SoftmaxCrossEntropy(), optim.SGD(lr=0.1))
    assert va == vb
    for name, p in b.params.items():
        np.testing.assert_array_equal(a.params[name], p)


# ---- an edited MLP saves what it is --------------------------------------------------------

def test_save_model_after_replacing_the_activation(tmp_path):
    model = _model(np.float64)
    model.layers[1] = nn.Tanh()
    model.layers[3] = nn.Tanh()
    path = tmp_path / "m.npz"
    io.save_model(path, model)
    loaded, _ = io.load_model(path)
    assert loaded.activation == "tanh" and loaded.sizes == [6, 9, 7, 4]
    x = np.random.default_rng(9).standard_normal((3, 6))
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))


def test_save_model_after_deleting_layers(tmp_path):
    model = _model(np.float64)
    del model.layers[2:4]
    model.layers[2] = nn.Linear(9, 4, dtype=np.float64, rng=1)
    assert model.sizes == [6, 9, 4]
    io.save_model(tmp_path / "m.npz", model)
    assert io.load_model(tmp_path / "m.npz")[0].sizes == [6, 9, 4]


def test_save_model_of_a_model_that_is_no_longer_an_mlp_raises(tmp_path):
    model = _model(np.float64)
    model.layers[3] = nn.Sigmoid()  # two kinds of activation
    with pytest.raises(ValueError, match=r"not Linear \[-> norm\] -> activation"):
        io.save_model(tmp_path / "m.npz", model)
    del model.layers[4]
    with pytest.raises(ValueError, match=r"not Linear \[-> norm\] -> activation"):
        model.sizes


# ---- the fused step == the kernel-by-kernel path; its caches ------------------------------

def test_buffers_are_reused_across_steps(rng):
    model = _mlp([8, 16, 3], dtype=np.float32)
    x = rng.standard_normal((4, 8)).astype(np.float32)
    out1 = model.forward(x)
    out2 = model.forward(x + 1)
    assert np.shares_memory(out1, out2)
    g1 = model.backward(np.ones_like(out2))
    g2 = model.backward(np.ones_like(out2))
    assert np.shares_memory(g1, g2)
    y = np.array([0, 1, 2, 0])
    loss = nn.SoftmaxCrossEntropy()
    # the compiled step (SGD, momentum): one plan, built on the first step and reused
    opt = optim.SGD(lr=0.1, momentum=0.9)
    model.train_step(x, y, loss, opt)
    (step,) = model._step_cache.compiled.values()
    model.train_step(x, y, loss, opt)
    assert list(model._step_cache.compiled.values()) == [step]
    # the kernel-by-kernel fused path (Nesterov): its buffers are reused too
    nesterov = optim.SGD(lr=0.1, momentum=0.9, nesterov=True)
    model.train_step(x, y, loss, nesterov)
    buffers = dict(model._step_cache.buffers._arrays)
    model.train_step(x, y, loss, nesterov)
    assert buffers
    for k, v in model._step_cache.buffers._arrays.items():
        assert v is buffers[k]


@pytest.mark.parametrize("make_opt", list(OPTIMIZERS.values()), ids=list(OPTIMIZERS))
@pytest.mark.parametrize("act", list(SPEC_ACTIVATIONS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_train_step_equals_unfused_path(make_opt, act, dtype):
    gen = np.random.default_rng(0)
    x = gen.standard_normal((16, 10)).astype(dtype)
    y = gen.integers(0, 4, 16)
    fused, plain = _mlp([10, 12, 9, 4], act, dtype), _mlp([10, 12, 9, 4], act, dtype)
    assert fused._fusion_plan() is not None
    opt_f, opt_p = make_opt(), make_opt()
    loss_f, loss_p = nn.SoftmaxCrossEntropy(), nn.SoftmaxCrossEntropy()
    for _ in range(3):
        vf = fused.train_step(x, y, loss_f, opt_f)
        vp = _unfused_step(plain, x, y, loss_p, opt_p)
        assert_close(vf, vp, dtype, scale=10)
    for name, p in plain.params.items():
        assert_close(fused.params[name], p, dtype, scale=10)


@pytest.mark.parametrize("loss", ["svm", "mse"])
def test_train_step_with_other_losses(loss):
    gen = np.random.default_rng(1)
    x = gen.standard_normal((8, 5))
    y = gen.standard_normal((8, 3)) if loss == "mse" else gen.integers(0, 3, 8)
    fused, plain = _mlp([5, 6, 3], loss=loss), _mlp([5, 6, 3], loss=loss)
    opt_f, opt_p = optim.SGD(lr=0.1, momentum=0.5), optim.SGD(lr=0.1, momentum=0.5)
    for _ in range(2):
        fused.train_step(x, y, nn.LOSSES[loss](), opt_f)
        _unfused_step(plain, x, y, nn.LOSSES[loss](), opt_p)
    for name, p in plain.params.items():
        assert_close(fused.params[name], p, np.float64)


def test_unfusable_chain_falls_back_to_the_unfused_path():
    gen = np.random.default_rng(2)
    model = nn.Sequential(nn.Linear(4, 5, dtype=np.float64, rng=gen), nn.ReLU(), nn.Tanh(),
                          nn.Linear(5, 3, dtype=np.float64, rng=gen))
    assert model._fusion_plan() is None
    leaky = nn.Sequential(nn.Linear(4, 5, dtype=np.float64), nn.LeakyReLU(-0.5),
                          nn.Linear(5, 3, dtype=np.float64))
    assert leaky._fusion_plan() is None
    x, y = gen.standard_normal((6, 4)), gen.integers(0, 3, 6)
    before = model.state_dict()
    value = model.train_step(x, y, nn.SoftmaxCrossEntropy(), optim.SGD(lr=0.1))
    assert np.isfinite(value)
    assert any(not np.array_equal(before[k], v) for k, v in model.params.items())


@pytest.mark.parametrize("backend", ["numpy", "checked"])
def test_train_step_under_other_backends(backend):
    gen = np.random.default_rng(4)
    x, y = gen.standard_normal((8, 6)), gen.integers(0, 3, 8)
    a, b = _mlp([6, 7, 3], "gelu"), _mlp([6, 7, 3], "gelu")
    va = a.train_step(x, y, nn.SoftmaxCrossEntropy(), optim.SGD(lr=0.1, momentum=0.9))
    with fastbp.use_backend(backend):
        vb = b.train_step(x, y, nn.SoftmaxCrossEntropy(), optim.SGD(lr=0.1, momentum=0.9))
    assert_close(va, vb, np.float64)
    for name, p in a.params.items():
        assert_close(b.params[name], p, np.float64)


def test_compiled_step_follows_replaced_parameters_and_state():
    """The compiled plan is rebuilt when a parameter array or the optimizer state is replaced
    (Solver-style rebinding, reset(), load_state_dict) — never writes into stale arrays."""
    gen = np.random.default_rng(5)
    x, y = gen.standard_normal((6, 4)), gen.integers(0, 3, 6)
    fused, plain = _mlp([4, 5, 3]), _mlp([4, 5, 3])
    opt_f, opt_p = optim.SGD(lr=0.1, momentum=0.9), optim.SGD(lr=0.1, momentum=0.9)
    loss = nn.SoftmaxCrossEntropy()
    fused.train_step(x, y, loss, opt_f)
    _unfused_step(plain, x, y, loss, opt_p)
    new_w = gen.standard_normal((4, 5))
    fused.layers[0].params["W"] = new_w.copy()
    plain.layers[0].params["W"] = new_w.copy()
    opt_f.reset()
    opt_p.reset()
    for _ in range(2):
        fused.train_step(x, y, loss, opt_f)
        _unfused_step(plain, x, y, loss, opt_p)
    for name, p in plain.params.items():
        assert_close(fused.params[name], p, np.float64)
    assert not np.array_equal(fused.layers[0].params["W"], new_w)


@pytest.mark.parametrize("labels", [np.array([0, 3]), np.array([-1, 0]), np.array([0, 1, 2])])
def test_compiled_step_rejects_bad_labels_before_updating(labels):
    model = _mlp([4, 5, 3])
    opt = optim.SGD(lr=0.1, momentum=0.9)
    x = np.ones((2, 4))
    model.train_step(x, np.array([0, 1]), nn.SoftmaxCrossEntropy(), opt)  # builds the plan
    before = model.state_dict()
    velocity = {k: v["momentum_buffer"].copy() for k, v in opt.state.items()}
    with pytest.raises(ValueError):
        model.train_step(x, labels, nn.SoftmaxCrossEntropy(), opt)
    for k, v in model.params.items():
        np.testing.assert_array_equal(v, before[k])
    for k, v in opt.state.items():
        np.testing.assert_array_equal(v["momentum_buffer"], velocity[k])


def test_compiled_step_handles_changing_batch_sizes_and_label_dtypes():
    gen = np.random.default_rng(6)
    fused, plain = _mlp([4, 6, 3], dtype=np.float32), _mlp([4, 6, 3], dtype=np.float32)
    opt_f, opt_p = optim.SGD(lr=0.05), optim.SGD(lr=0.05)
    for n in (5, 2, 5, 7):
        x = gen.standard_normal((n, 4))  # float64 data into a float32 model
        y = gen.integers(0, 3, n).astype(np.uint8)
        vf = fused.train_step(x, y, nn.SoftmaxCrossEntropy(), opt_f)
        vp = _unfused_step(plain, x.astype(np.float32), y, nn.SoftmaxCrossEntropy(), opt_p)
        assert_close(vf, vp, np.float32)
    for name, p in plain.params.items():
        assert_close(fused.params[name], p, np.float32)


def test_a_trained_model_copies_and_pickles_with_an_empty_step_cache():
    import copy
    import pickle

    gen = np.random.default_rng(11)
    x, y = gen.standard_normal((8, 6)), gen.integers(0, 4, 8)
    model, o = _model(np.float64), optim.SGD(lr=0.1, momentum=0.9)
    model.train_step(x, y, nn.SoftmaxCrossEntropy(), o)
    clones = [copy.deepcopy(model), pickle.loads(pickle.dumps(model))]
    expected = model.train_step(x, y, nn.SoftmaxCrossEntropy(), copy.deepcopy(o))
    for clone in clones:
        assert not clone._step_cache.compiled
        assert clone.train_step(x, y, nn.SoftmaxCrossEntropy(), copy.deepcopy(o)) == expected
        for name, p in clone.params.items():
            assert not np.shares_memory(p, model.params[name])
            np.testing.assert_array_equal(p, model.params[name])


# ---- Adam and RMSProp in the one-call compiled step ---------------------------------------

class _KernelByKernel:
    """Mixin: the same optimizer through the kernel-by-kernel path (a subclass changing
    _update is not run by the compiled step)."""

    def _update(self, w, g, state, hp, n_threads):
        super()._update(w, g, state, hp, n_threads)


class KernelAdam(_KernelByKernel, optim.Adam):
    pass


class KernelRMSProp(_KernelByKernel, optim.RMSProp):
    pass


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", ["softmax", "svm", "mse"])
@pytest.mark.parametrize("make", [
    (lambda: optim.Adam(lr=1e-2), lambda: KernelAdam(lr=1e-2)),
    (lambda: optim.Adam(lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-2),
     lambda: KernelAdam(lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-2)),
    (lambda: optim.RMSProp(lr=1e-3), lambda: KernelRMSProp(lr=1e-3)),
    (lambda: optim.RMSProp(lr=1e-3, alpha=0.9, weight_decay=1e-2),
     lambda: KernelRMSProp(lr=1e-3, alpha=0.9, weight_decay=1e-2)),
], ids=["adam", "adam-wd", "rmsprop", "rmsprop-wd"])
def test_adam_and_rmsprop_run_in_the_compiled_step(make, loss, dtype):
    gen = np.random.default_rng(12)
    x = gen.standard_normal((16, 6)).astype(dtype)
    y = gen.standard_normal((16, 4)).astype(dtype) if loss == "mse" else gen.integers(0, 4, 16)
    compiled, kernels = _model(dtype, "tanh", loss=loss), _model(dtype, "tanh", loss=loss)
    opt_c, opt_k = make[0](), make[1]()
    assert opt_c.fused_update() is not None and opt_k.fused_update() is None
    for _ in range(4):
        vc = compiled.train_step(x, y, compiled.criterion, opt_c)
        vk = kernels.train_step(x, y, kernels.criterion, opt_k)
        assert vc == vk  # the same kernels' arithmetic: bit for bit
    assert len(compiled._step_cache.compiled) == 1 and not kernels._step_cache.compiled
    for name, p in kernels.params.items():
        np.testing.assert_array_equal(compiled.params[name], p)
        for key, s in opt_k.state[name].items():
            np.testing.assert_array_equal(opt_c.state[name][key], s)
    if isinstance(opt_c, optim.Adam):
        assert {s["step"] for s in opt_c.state.values()} == {4}


def test_compiled_adam_checks_its_state_before_writing():
    gen = np.random.default_rng(13)
    x, y = gen.standard_normal((8, 6)), gen.integers(0, 4, 8)
    model, o = _model(np.float64), optim.Adam(lr=1e-2)
    model.train_step(x, y, nn.SoftmaxCrossEntropy(), o)
    o.state["2.b"]["exp_avg"].setflags(write=False)
    before, state = model.state_dict(), o.state_dict()
    with pytest.raises(ValueError, match="read-only"):
        model.train_step(x, y, nn.SoftmaxCrossEntropy(), o)
    for name, p in model.params.items():
        np.testing.assert_array_equal(p, before[name])
    assert {s["step"] for s in o.state.values()} == {1}
    o.state["0.W"]["step"] = 5  # step counts that differ: the kernel-by-kernel path counts each
    o.state["2.b"]["exp_avg"] = o.state["2.b"]["exp_avg"].copy()
    model.train_step(x, y, nn.SoftmaxCrossEntropy(), o)
    assert o.state["0.W"]["step"] == 6 and o.state["0.b"]["step"] == 2
