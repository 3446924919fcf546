"""The fusion plan of a layer chain, and the fused training step that runs it.

``fastbp.nn.Sequential.train_step`` asks :func:`fusion_plan` for a plan on EVERY step: the plan
is derived from the current layers (what each layer declares: ``fused_linear`` for a GEMM layer,
``fused_norm`` (a :class:`FusedNorm`) for batch norm / layer norm, read from its current mode,
eps, momentum and arrays, ``fused_activation`` for an activation, read from its current
parameter), so no edit of ``model.layers``, of a norm's or an activation's scalars or mode, or
of a parameter or running-statistics array can leave a stale plan behind.  A plan is a few
NamedTuples; its ``key`` holds everything it describes (the layers and arrays by identity,
shapes, the norms' modes and scalars, the activations' codes and scalars), and every cache below
is keyed on it (the cache entries keep those objects alive, so an ``id`` cannot be reused while
cached).
The step's previous plan is handed back in: when reading the layers again finds everything its
key holds unchanged, that same plan is returned and nothing is built (the common case, every
step after the first).

A chain of stages ``Linear [norm] [act]`` runs as:

forward   per stage, one GEMM whose epilogue adds the bias and applies the activation
          (``linear_act_forward``), or a plain ``linear_forward`` without an activation; with a
          norm, the GEMM + bias (``linear_forward``), the norm's forward kernel (batch norm:
          the batch's statistics in training mode, updating the running averages as the layer
          does; layer norm: each row's), then the activation in place (``bias_act_forward``);
loss      the criterion's fused loss + gradient pass (scaled by 1/N);
backward  per stage, from the last: ``act_backward_bias`` (activation derivative and bias
          gradient in one pass, in place in the upstream gradient buffer) -- with a norm, the
          activation derivative, then the norm's backward (dgamma, dbeta, in place), then the
          bias gradient --, then ``linear_backward`` (dx from the old weights, then the
          weight-gradient GEMM);
update    folded into those GEMMs when the optimizer allows it (``Optimizer.gemm_fold``):
          plain SGD writes ``W := W - lr·xᵀ·dz`` directly, momentum SGD writes the velocity
          ``v := xᵀ·dz + mu·v`` and then ``W -= lr·v`` (gamma and beta take the same fold on
          their gradients); any other optimizer gets its gradients and runs ``step`` on them at
          the end.

A batch norm in inference mode normalises with its running statistics; it has no backward
(as the layer's own), so a training step refuses it (RuntimeError) and inference runs it.

With the compiled backend, an optimizer whose ``fused_update()`` says so (plain or heavy-ball
SGD, Adam, RMSProp) and a loss without ``check_finite``, the whole step runs as ONE nogil call
(``fastbp._kernels._step.FusedStep``), built once per (plan, batch size, loss, update kind,
optimizer state arrays);
anything else takes the kernel-by-kernel path, which the compiled step is tested against.

Everything that can fail -- the input, labels, a batch norm's batch of one row or inference
mode, and every parameter, gradient, running statistic and optimizer buffer the step writes
(writeable, C-contiguous, of the plan's dtype and shape) -- is checked before the first write,
so a failed step leaves the model (running statistics included) and the optimizer as they were.
The kernel-by-kernel path updates the running averages in work copies, committed at the end
(its loss checks the labels, or the scores' finiteness, only after the forward).

This module imports no layer or optimizer class: layers and optimizers declare what they are.
"""

from types import MappingProxyType
from typing import NamedTuple, Optional

import numpy as np

from . import _config, _specs
from . import _validation as val
from ._config import threads_for
from ._kernels._step import NORM_KINDS, UPDATE_KINDS, FusedStep
from .backend import get_backend, kernels


class FusedNorm(NamedTuple):
    """How a normalization layer runs inside the fused step: what its ``fused_norm`` declares
    (fastbp.nn.BatchNorm1d, LayerNorm), read from the layer as it is now."""

    layer: object                #: the layer (its position follows its GEMM layer)
    statistics: str              #: "batch" (batch norm, training: the batch's statistics, the
    #: running averages updated), "running" (batch norm, inference), "row" (layer norm)
    dtype: np.dtype
    features: int                #: D, the GEMM layer's out_features
    gamma: np.ndarray            #: (D,) scale and shift: the layer's parameters (fixed ones
    beta: np.ndarray             #: without affine)
    dgamma: np.ndarray           #: (D,) where backward writes their gradients
    dbeta: np.ndarray
    trained: tuple               #: ("gamma", "beta"): parameter names, or () without affine
    running_mean: Optional[np.ndarray]  #: (D,) batch norm's running averages, else None
    running_var: Optional[np.ndarray]
    eps: float                   #: inside the square root, >= 0
    momentum: float              #: weight of the OLD running value (the kernels' convention)


#: FusedNorm.statistics -> the forward kernel's name
_NORM_FORWARD = {"batch": "batchnorm_forward_train", "running": "batchnorm_forward_test",
                 "row": "layernorm_forward"}


class Stage(NamedTuple):
    """One GEMM layer of a plan and the norm and activation fused after it."""

    index: int                                   #: its position in the layer list
    linear: object                               #: the layer (its ``params`` / ``grads``)
    W: np.ndarray                                #: (in_features, out_features)
    b: Optional[np.ndarray]                      #: (out_features,) or None
    norm: Optional[FusedNorm]                    #: None: no normalization after it
    activation: Optional[_specs.FusedActivation]  #: None: no activation after it

    def parameters(self):
        """(name, array) of every parameter the step trains, in order: W, b, gamma, beta."""
        items = [(f"{self.index}.{pname}", p) for pname, p in (("W", self.W), ("b", self.b))
                 if p is not None]
        if self.norm is not None:
            items += [(f"{self.index + 1}.{pname}", getattr(self.norm, pname))
                      for pname in self.norm.trained]
        return items


class Plan(NamedTuple):
    """A fusable chain: its stages, first first, their dtype, and the key of everything the
    plan describes (equal keys <=> the same layers, arrays and activations)."""

    stages: tuple
    dtype: np.dtype
    key: tuple


class StepLayer(NamedTuple):
    """One layer of a compiled step (what ``FusedStep`` points into)."""

    W: np.ndarray
    b: Optional[np.ndarray]
    W_target: np.ndarray          #: where the weight-gradient GEMM writes (W or a velocity)
    b_target: Optional[np.ndarray]
    out: np.ndarray               #: (n, out_features) activation output
    pre: Optional[np.ndarray]     #: (n, out_features) pre-activation, when backward reads it
    dx: Optional[np.ndarray]      #: (n, in_features); None for the first layer
    act_code: int                 #: index in fastbp._specs.FUSED_ACTIVATIONS
    alpha: float
    W_state: tuple = ()           #: Adam's (exp_avg, exp_avg_sq) / RMSProp's (square_avg,) of W
    b_state: tuple = ()
    norm: Optional["StepNorm"] = None  #: the normalization between the GEMM and the activation


class StepNorm(NamedTuple):
    """The normalization of one layer of a compiled step (what ``FusedStep`` points into)."""

    kind: int                     #: fastbp._kernels._step.NORM_KINDS[FusedNorm.statistics]
    z: np.ndarray                 #: (n, out_features) the GEMM's output, the norm's input
    gamma: np.ndarray
    beta: np.ndarray
    dgamma: np.ndarray
    dbeta: np.ndarray
    mean: np.ndarray              #: float64 statistics: (out_features,) batch norm, (n,) layer
    inv_std: np.ndarray
    running_mean: Optional[np.ndarray]
    running_var: Optional[np.ndarray]
    eps: float
    momentum: float
    trained: bool                 #: gamma and beta are parameters the step updates
    gamma_state: tuple = ()       #: their optimizer state (the velocity for momentum SGD)
    beta_state: tuple = ()


_ACT_CODES = {code: i for i, code in enumerate(_specs.FUSED_ACTIVATIONS)}


def fusion_plan(layers, previous=None):
    """The :class:`Plan` for `layers` as they are now, or None when they do not fuse.

    A fusable chain alternates layers declaring ``fused_linear`` (True) with at most one layer
    declaring a ``fused_activation`` (not None) after each; consecutive GEMM layers must
    agree on sizes and dtype.  `previous`, a plan derived earlier (the step cache's), is
    returned itself when it still describes `layers` exactly: everything its key holds is read
    again from the layers, only nothing new is built.
    """
    if previous is not None and _describes(previous, layers):
        return previous
    stages, key, i, prev = [], [], 0, None
    count = len(layers)
    while i < count:
        lin = layers[i]
        if not getattr(lin, "fused_linear", False):
            return None
        if prev is not None and (lin.in_features != prev.out_features or lin.dtype != prev.dtype):
            return None
        j, norm, act = i + 1, None, None
        if j < count and not getattr(layers[j], "fused_linear", False):
            norm = getattr(layers[j], "fused_norm", None)
            if norm is not None:
                if norm.features != lin.out_features or norm.dtype != lin.dtype:
                    return None
                j += 1
        if j < count and not getattr(layers[j], "fused_linear", False):
            act = getattr(layers[j], "fused_activation", None)
            if act is None:
                return None
            j += 1
        W, b = lin.params.get("W"), lin.params.get("b")
        stages.append(Stage(i, lin, W, b, norm, act))
        key.append(_stage_key(i, lin, W, b, norm, act))
        prev, i = lin, j
    if not stages:
        return None
    dtype = stages[0].linear.dtype
    return Plan(tuple(stages), dtype, (dtype, count, *key))


def _stage_key(i, lin, W, b, norm, act):
    return (i, id(lin), lin.in_features, lin.out_features, id(W), getattr(W, "shape", None),
            id(b), getattr(b, "shape", None), _norm_key(norm), act)


def _norm_key(norm):
    """Everything a FusedNorm describes: its scalars and names as they are, the layer and
    arrays by identity (with their shapes)."""
    if norm is None:
        return None
    return tuple(v if isinstance(v, (str, float, int, tuple, np.dtype)) or v is None
                 else (id(v), getattr(v, "shape", None)) for v in norm)


def _describes(plan, layers):
    """True when deriving the plan of `layers` now would give `plan`'s key again: the same
    layer count and layers, each GEMM layer still fusing with the same sizes, dtype and
    parameter arrays (and their shapes), each norm still declaring the same mode, scalars and
    arrays, each activation still fusing with the same code and scalar."""
    dtype, count, *keys = plan.key
    if len(layers) != count:
        return False
    for s, key in zip(plan.stages, keys):
        i, lin, act = s.index, s.linear, s.activation
        if layers[i] is not lin or not lin.fused_linear or lin.dtype != dtype:
            return False
        params = lin.params
        norm = None if s.norm is None else getattr(layers[i + 1], "fused_norm", None)
        if _stage_key(i, lin, params.get("W"), params.get("b"), norm, act) != key:
            return False
        if act is not None:
            layer = layers[i + 1 + (s.norm is not None)]
            if (getattr(layer, "fused_linear", False)
                    or getattr(layer, "fused_activation", None) != act):
                return False
    return True


def check_written(name, a, dtype, shape, hint=""):
    """Raise unless `a` is a writeable, C-contiguous ndarray of `dtype` and `shape` (an array
    the step updates in place); `hint` ends the message of a dtype or shape mismatch."""
    if type(a) is not np.ndarray:
        raise TypeError(f"train_step: {name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"train_step: {name} has dtype {a.dtype}, but the layer computes in "
                        f"{dtype}{hint}")
    if a.shape != shape:
        raise ValueError(f"train_step: {name} has shape {a.shape}, expected {shape}{hint}")
    if not a.flags.c_contiguous:
        raise ValueError(f"train_step: {name} must be C-contiguous, got strides {a.strides}")
    if not a.flags.writeable:
        raise ValueError(f"train_step: {name} is read-only, but the step writes it")


#: FusedNorm array -> what an error calls it, given the layer's index (the step writes every
#: one of them)
_NORM_ARRAYS = {"gamma": "parameter '{}.gamma'", "beta": "parameter '{}.beta'",
                "dgamma": "gradient '{}.gamma'", "dbeta": "gradient '{}.beta'",
                "running_mean": "buffer '{}.running_mean'",
                "running_var": "buffer '{}.running_var'"}


def _check_parameters(plan, n):
    """Check every parameter, gradient and buffer the step writes, and that each norm can
    train on a batch of `n` rows, before anything is written."""
    for s in plan.stages:
        lin = s.linear
        check_written(f"parameter '{s.index}.W'", s.W, plan.dtype,
                      (lin.in_features, lin.out_features))
        if s.b is not None:
            check_written(f"parameter '{s.index}.b'", s.b, plan.dtype, (lin.out_features,))
        if s.norm is not None:
            _check_norm(s.index + 1, s.norm, n)


def _check_norm(index, norm, n):
    if norm.statistics == "running":
        raise RuntimeError(f"train_step: {norm.layer!r} is in inference mode (.eval()): batch "
                           f"norm has no backward from its running statistics; call .train()")
    if norm.statistics == "batch" and n < 2:
        raise ValueError(f"{norm.layer!r}: training mode needs more than 1 value per feature, "
                         f"got a batch of {n} row(s) (use .eval() for single samples)")
    for name, label in _NORM_ARRAYS.items():
        array = getattr(norm, name)
        if array is not None:
            check_written(label.format(index), array, norm.dtype, (norm.features,))


def _folds(plan, optimizer):
    """{parameter name ("0.W", "1.gamma", ...): GemmFold or None} for every parameter of the
    plan, every written target checked."""
    fold = getattr(optimizer, "gemm_fold", None)
    folds = {}
    for s in plan.stages:
        for name, param in s.parameters():
            f = fold(name, param) if fold is not None else None
            if f is not None and f.target is not param:
                check_written(f"optimizer state for '{name}'", f.target, plan.dtype,
                              param.shape)
            folds[name] = f
    return folds


class StepCache:
    """What a model keeps between fused steps: work buffers, and compiled steps for the plan
    they were built for (dropped as soon as the plan changes)."""

    __slots__ = ("buffers", "plan_key", "plan", "names", "compiled")

    def __init__(self, buffers):
        self.buffers = buffers  # get(name, shape, dtype) -> a reused array (the model's kind)
        self.plan_key = self.plan = None
        self.names = ()  # the plan's parameter names, in order ("0.W", "0.b", "1.gamma", ...)
        self.compiled = {}

    def __reduce__(self):
        """A copy (copy.deepcopy, pickle) is an empty cache: everything here is rebuilt on the
        next step, and a compiled step points into the original's arrays."""
        return type(self), (type(self.buffers)(),)

    def compiled_step(self, plan, optimizer, update, n, loss_kernel):
        """The FusedStep for this plan, batch size, loss and velocity arrays (cached)."""
        if plan is not self.plan:
            if self.plan_key != plan.key:
                self.compiled.clear()
                self.names = tuple(name for s in plan.stages for name, _ in s.parameters())
            self.plan_key, self.plan = plan.key, plan  # the plan keeps the key's objects alive
        key = (n, loss_kernel, update.kind, self._state_ids(optimizer, update))
        step = self.compiled.get(key)
        if step is None:
            step = _build_step(plan, optimizer, update, n, loss_kernel)
            key = (n, loss_kernel, update.kind, self._state_ids(optimizer, update))
            if len(self.compiled) >= 4:  # a few batch sizes (an epoch's last partial batch)
                self.compiled.pop(next(iter(self.compiled)))
            self.compiled[key] = step
        return step


    def _state_ids(self, optimizer, update):
        """ids of the optimizer's state arrays for the plan's parameters (of None where
        absent); the FusedStep built for them keeps them alive."""
        state = optimizer.state
        return tuple(id(state.get(name, _NO_STATE).get(key))
                     for key in update.state_keys for name in self.names)

    def step_count(self, optimizer):
        """The common step count of the plan's parameters (0 before the first step), or None
        when they differ (the kernel-by-kernel path then counts each one)."""
        state = optimizer.state
        counts = {state.get(name, _NO_STATE).get("step", 0) for name in self.names}
        return counts.pop() if len(counts) == 1 else None

    def count_step(self, optimizer, t):
        """Record step `t` for every parameter of the plan, as Optimizer.step does."""
        for name in self.names:
            optimizer.state[name]["step"] = t


_NO_STATE = MappingProxyType({})


def _build_step(plan, optimizer, update, n, loss_kernel):
    """A new FusedStep; every array it writes is checked here (and its flags on every run)."""
    _check_parameters(plan, n)
    dtype, layers, written = plan.dtype, [], []
    folds = _folds(plan, optimizer) if update.kind == "sgd" else None

    def state_of(name, param):
        """The optimizer state arrays of a parameter the step updates with _optim's sweeps."""
        state = optimizer.prepare_state(name, param, update.state_keys)
        arrays = tuple(state[key] for key in update.state_keys)
        for array in arrays:
            check_written(f"optimizer state for '{name}'", array, dtype, param.shape,
                          hint="; call reset() after changing the parameters")
            written.append((f"optimizer state for '{name}'", array))
        return arrays

    for pos, s in enumerate(plan.stages):
        lin, act = s.linear, s.activation
        targets, states = {}, {}
        for pname, param in (("W", s.W), ("b", s.b)):
            if param is None:
                continue
            name = f"{s.index}.{pname}"
            written.append((f"parameter '{name}'", param))
            if folds is not None:  # SGD: the GEMM writes the parameter or its velocity
                target = targets[pname] = folds[name].target
                states[pname] = ()
                if target is not param:
                    check_written(f"optimizer state for '{name}'", target, dtype, param.shape,
                                  hint="; call reset() after changing the parameters")
                    written.append((f"optimizer state for '{name}'", target))
            else:  # Adam / RMSProp: the gradient into a buffer, then the update sweep
                targets[pname], states[pname] = np.empty_like(param), state_of(name, param)
        out = np.empty((n, lin.out_features), dtype)
        layers.append(StepLayer(
            s.W, s.b, targets["W"], targets.get("b"), out,
            np.empty_like(out) if act is not None and act.reads_input else None,
            np.empty((n, lin.in_features), dtype) if pos > 0 else None,
            _ACT_CODES[act.code] if act is not None else _ACT_CODES["identity"],
            act.alpha if act is not None else 0.0, states["W"], states.get("b", ()),
            _step_norm(s, out, state_of, written) if s.norm is not None else None))
    dlogits = np.empty((n, plan.stages[-1].linear.out_features), dtype)
    return FusedStep(layers, _specs.LOSS_CODES[loss_kernel], dlogits, np.empty(n, np.float64),
                     written, UPDATE_KINDS[update.kind])


def _step_norm(stage, out, state_of, written):
    """The StepNorm of `stage` (checked by _check_parameters) for a batch of out's rows; every
    array it writes goes to `written`."""
    norm, index = stage.norm, stage.index + 1
    n = out.shape[0]
    count = norm.features if norm.statistics == "batch" else n
    states = {}
    for name in ("gamma", "beta"):
        if name in norm.trained:
            states[name] = state_of(f"{index}.{name}", getattr(norm, name))
    for name, label in _NORM_ARRAYS.items():
        array = getattr(norm, name)
        if array is not None:
            written.append((label.format(index), array))
    return StepNorm(NORM_KINDS[norm.statistics], np.empty_like(out), norm.gamma, norm.beta,
                    norm.dgamma, norm.dbeta, np.empty(count), np.empty(count),
                    norm.running_mean, norm.running_var, norm.eps, norm.momentum,
                    bool(norm.trained), states.get("gamma", ()), states.get("beta", ()))


def fused_train_step(plan, cache, x, y, loss, optimizer):
    """One fused step of the chain `plan` describes (see the module docstring).

    `x` is the batch already checked by the first layer (C-contiguous, of the plan's dtype,
    (N, in_features)); `cache` is the model's :class:`StepCache`.  Returns the loss value.
    """
    value = _compiled_step(plan, cache, x, y, loss, optimizer)
    if value is not None:
        return value
    k = kernels()
    n, dtype = x.shape[0], plan.dtype
    _check_parameters(plan, n)
    get = cache.buffers.get

    # forward: keep each layer's input, each norm's input and statistics, and what each
    # activation's backward reads.  Batch norm's running averages are updated in work copies,
    # committed once nothing can fail any more (the loss checks its labels after the forward)
    inputs, saved, normed, running = [], [], [], []
    h = x
    for i, s in enumerate(plan.stages):
        out, pre, stats = _stage_forward(k, s, h, n, dtype, get, str(i), running)
        normed.append(stats)
        saved.append(None if s.activation is None else pre if pre is not None else out)
        inputs.append(h)
        h = out

    value = loss.forward(h, y)  # validates the labels / targets: no parameter has changed yet
    d = loss.backward()
    folds = _folds(plan, optimizer)  # checks every fold target: still no parameter written

    # backward with the update folded into the GEMMs where the optimizer allows it; the norms'
    # gamma and beta get their gradients and are updated by optimizer.step at the end
    unfolded_params, unfolded_grads = {}, {}
    for i in range(len(plan.stages) - 1, -1, -1):
        s = plan.stages[i]
        lin, act, norm = s.linear, s.activation, s.norm
        targets = {}
        for pname, param in (("W", s.W), ("b", s.b)):
            if param is None:
                continue
            full = f"{s.index}.{pname}"
            fold = folds[full]
            if fold is None:
                grad = lin.grads[pname]
                unfolded_params[full], unfolded_grads[full] = param, grad
                fold = (grad, 1.0, 0.0, None)
            targets[pname] = fold
        w_target, scale, beta, w_finish = targets["W"]
        b_target, b_scale, b_beta, b_finish = targets.get("b", (None, scale, beta, None))
        threads = threads_for(d.size)
        if norm is not None:
            if act is not None:
                k.act_backward_bias(d, saved[i], act.code, act.alpha, d, None, 1.0, 0.0,
                                    threads)
            z, mean, inv_std = normed[i]
            getattr(k, "layernorm_backward" if norm.statistics == "row" else
                    "batchnorm_backward")(d.reshape(-1), z.reshape(-1), norm.gamma, mean, inv_std,
                                          d.reshape(-1), norm.dgamma, norm.dbeta, threads)
            for pname in norm.trained:
                full, grad = f"{s.index + 1}.{pname}", getattr(norm, "d" + pname)
                fold = folds[full]
                if fold is None:
                    unfolded_params[full], unfolded_grads[full] = getattr(norm, pname), grad
                    continue
                # the fold's target := scale * grad + beta * target, as a one-row column sum
                row = grad.reshape(1, -1)
                k.act_backward_bias(row, row, "identity", 0.0, row, fold.target, fold.scale,
                                    fold.beta, 1)
                if fold.finish is not None:
                    fold.finish()
            act = None  # what is left is the GEMM layer's own backward
        elif act is not None:
            k.act_backward_bias(d, saved[i], act.code, act.alpha, d, b_target, b_scale, b_beta,
                                threads)
        dx = get(f"dx{i}", (n, lin.in_features), dtype) if i > 0 else None
        if act is None and b_target is not None and (b_scale, b_beta) != (scale, beta):
            k.act_backward_bias(d, d, "identity", 0.0, d, b_target, b_scale, b_beta, threads)
            b_target = None
        k.linear_backward(d, inputs[i], s.W, dx, w_target,
                          b_target if act is None else None, scale, beta, threads)
        for finish in (w_finish, b_finish):
            if finish is not None:
                finish()
        d = dx
    if unfolded_params:
        optimizer.step(unfolded_params, unfolded_grads)
    for target, update in running:
        np.copyto(target, update)
    return value


def _norm_forward(k, norm, x, out, get, tag, threads, running=None):
    """out := the norm of x (N, D) with the kernel `norm.statistics` names; returns the
    (mean, inv_std) its backward reads (float64 work buffers named with `tag`; None for the
    running statistics).  Batch norm in training mode updates copies of the running averages,
    appended to `running` as (running array, its update) pairs for the caller to commit."""
    kernel = getattr(k, _NORM_FORWARD[norm.statistics])
    x, out = x.reshape(-1), out.reshape(-1)
    if norm.statistics == "running":
        kernel(x, norm.gamma, norm.beta, norm.running_mean, norm.running_var, out, norm.eps,
               threads)
        return None, None
    count = norm.features if norm.statistics == "batch" else len(x) // norm.features
    mean = get(f"norm_mean{tag}", (count,), np.float64)
    inv_std = get(f"norm_inv_std{tag}", (count,), np.float64)
    if norm.statistics == "batch":
        updates = []
        for name in ("running_mean", "running_var"):
            update = get(f"norm_{name}{tag}", (norm.features,), norm.dtype)
            np.copyto(update, getattr(norm, name))
            running.append((getattr(norm, name), update))
            updates.append(update)
        kernel(x, norm.gamma, norm.beta, out, mean, inv_std, *updates, norm.eps, norm.momentum,
               True, threads)
    else:
        kernel(x, norm.gamma, norm.beta, out, mean, inv_std, norm.eps, threads)
    return mean, inv_std


def _compiled_step(plan, cache, x, y, loss, optimizer):
    """The whole step in one FusedStep call, or None when this step needs the general path."""
    if get_backend() != "compiled":
        return None
    spec = getattr(loss, "spec", None)
    if spec is None or loss.check_finite:
        return None
    fused_update = getattr(optimizer, "fused_update", None)
    update = fused_update() if fused_update is not None else None
    n = x.shape[0]
    if update is None or n == 0:
        return None
    n_out = plan.stages[-1].linear.out_features
    labels = target = None
    if spec.kind == "regression":
        target = val.as_float(y, "target", plan.dtype)
        if target.shape != (n, n_out):
            raise ValueError(f"target must have shape {(n, n_out)}, got {target.shape}")
    elif type(y) is np.ndarray and y.dtype == np.int64 and y.ndim == 1 and y.flags.c_contiguous:
        labels = y  # the range is checked inside the compiled step, before any update
    else:
        labels = val.as_labels(y, "y", n, n_out)
    step = cache.compiled_step(plan, optimizer, update, n, spec.kernel)
    threads, min_work = _config.get_num_threads(), _config.PARALLEL_MIN_WORK
    if update.kind == "sgd":
        return step.run(x, labels, target, update.lr, update.hyper[0], threads, min_work,
                        update.hyper)
    if not update.counts_steps:
        return step.run(x, labels, target, update.lr, 0.0, threads, min_work, update.hyper)
    t = cache.step_count(optimizer)  # Adam: one count for all parameters, else the general path
    if t is None:
        return None
    value = step.run(x, labels, target, update.lr, 0.0, threads, min_work, (*update.hyper, t + 1))
    cache.count_step(optimizer, t + 1)
    return value


def fused_forward(plan, buffers, x):
    """Inference forward of the chain `plan`: per stage ONE GEMM whose epilogue adds the bias
    and applies the activation (``linear_act_forward``), or ``linear_forward`` without one;
    with a norm, the GEMM + bias, the norm (batch norm with its running statistics: the plan
    of layers in inference mode; ValueError for one in training mode), then the activation.

    Nothing is kept for a backward pass, and read-only parameters are fine (nothing is
    written but the work buffers).  `x` is the batch already checked by the first layer
    (C-contiguous, of the plan's dtype, (N, in_features)); `buffers` is the model's
    ``StepCache.buffers`` (``get(name, shape, dtype)``: reused while the batch size stays the
    same; the names differ from the training step's).  Returns the last stage's output, a
    reused (N, out_features) buffer.  The kernels check every array they read.
    """
    for s in plan.stages:
        if s.norm is not None and s.norm.statistics == "batch":
            raise ValueError(f"fused_forward: {s.norm.layer!r} is in training mode; "
                             "inference runs batch norm with its running statistics")
    k = kernels()
    n, dtype, h = x.shape[0], plan.dtype, x
    for i, s in enumerate(plan.stages):  # (gelu's kernels also store z; nothing reads it here)
        h, _, _ = _stage_forward(k, s, h, n, dtype, buffers.get, f"infer_{i}")
    return h


def _stage_forward(k, stage, h, n, dtype, get, tag, running=None):
    """One stage's forward from its input `h` (N rows) into reused buffers named with `tag`:
    ONE GEMM whose epilogue adds the bias and applies the activation (``linear_act_forward``,
    or ``linear_forward`` without one); with a norm, the GEMM + bias into z, the norm
    (:func:`_norm_forward`, which appends batch norm's running-average updates to `running`),
    then the activation in place (``bias_act_forward``).  Returns ``(out, pre, normed)``: the
    stage's output, the pre-activation where the activation's backward reads it (else None)
    and, for a norm stage, ``(z, mean, inv_std)`` (else None)."""
    act, norm = stage.activation, stage.norm
    out = get(f"out{tag}", (n, stage.linear.out_features), dtype)
    threads = threads_for(out.size)
    pre = get(f"pre{tag}", out.shape, dtype) if act is not None and act.reads_input else None
    if norm is None:
        if act is None:
            k.linear_forward(h, stage.W, stage.b, out, threads)
        else:
            k.linear_act_forward(h, stage.W, stage.b, act.code, act.alpha, pre, out, threads)
        return out, pre, None
    z = get(f"z{tag}", out.shape, dtype)
    k.linear_forward(h, stage.W, stage.b, z, threads)
    statistics = _norm_forward(k, norm, z, out, get, tag, threads, running)
    if act is not None:
        k.bias_act_forward(out, None, act.code, act.alpha, pre, threads)
    return out, pre, (z, *statistics)
