"""The fusion plan of a layer chain, and the fused training step that runs it.

``fastbp.nn.Sequential.train_step`` asks :func:`fusion_plan` for a plan on EVERY step: the plan
is derived from the current layers (what each layer declares: ``fused_linear`` for a GEMM layer,
``fused_activation`` for an activation, read from its current parameter), so no edit of
``model.layers``, of an activation's parameter or of a parameter array can leave a stale plan
behind.  A plan is a few NamedTuples; its ``key`` holds everything it describes (the layers and
arrays by identity, shapes, the activations' codes and scalars), and every cache below is keyed
on it (the cache entries keep those objects alive, so an ``id`` cannot be reused while cached).
The step's previous plan is handed back in: when reading the layers again finds everything its
key holds unchanged, that same plan is returned and nothing is built (the common case, every
step after the first).

A chain ``Linear [act] Linear [act] ... Linear [act]`` runs as:

forward   per layer, one GEMM whose epilogue adds the bias and applies the activation
          (``linear_act_forward``), or a plain ``linear_forward`` without an activation;
loss      the criterion's fused loss + gradient pass (scaled by 1/N);
backward  per layer, from the last: ``act_backward_bias`` (activation derivative and bias
          gradient in one pass, in place in the upstream gradient buffer), then
          ``linear_backward`` (dx from the old weights, then the weight-gradient GEMM);
update    folded into those GEMMs when the optimizer allows it (``Optimizer.gemm_fold``):
          plain SGD writes ``W := W - lr·xᵀ·dz`` directly, momentum SGD writes the velocity
          ``v := xᵀ·dz + mu·v`` and then ``W -= lr·v``; any other optimizer gets its gradients
          and runs ``step`` on them at the end.

With the compiled backend, an optimizer whose ``fused_update()`` says so (plain or heavy-ball
SGD, Adam, RMSProp) and a loss without ``check_finite``, the whole step runs as ONE nogil call
(``fastbp._kernels._step.FusedStep``), built once per (plan, batch size, loss, update kind,
optimizer state arrays);
anything else takes the kernel-by-kernel path, which the compiled step is tested against.

Everything that can fail -- the input, labels, and every parameter and optimizer buffer the step
writes (writeable, C-contiguous, of the plan's dtype and shape) -- is checked before the first
write, so a failed step leaves the model as it was.

This module imports no layer or optimizer class: layers and optimizers declare what they are.
"""

from types import MappingProxyType
from typing import NamedTuple, Optional

import numpy as np

from . import _config, _specs
from . import _validation as val
from ._config import threads_for
from ._kernels._step import UPDATE_KINDS, FusedStep
from .backend import get_backend, kernels


class Stage(NamedTuple):
    """One GEMM layer of a plan and the activation fused after it."""

    index: int                                   #: its position in the layer list
    linear: object                               #: the layer (its ``params`` / ``grads``)
    W: np.ndarray                                #: (in_features, out_features)
    b: Optional[np.ndarray]                      #: (out_features,) or None
    activation: Optional[_specs.FusedActivation]  #: None: no activation after it


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
        act = None
        if i + 1 < count and not getattr(layers[i + 1], "fused_linear", False):
            act = getattr(layers[i + 1], "fused_activation", None)
            if act is None:
                return None
        W, b = lin.params.get("W"), lin.params.get("b")
        stages.append(Stage(i, lin, W, b, act))
        key.append(_stage_key(i, lin, W, b, act))
        prev, i = lin, i + 1 + (act is not None)
    if not stages:
        return None
    dtype = stages[0].linear.dtype
    return Plan(tuple(stages), dtype, (dtype, count, *key))


def _stage_key(i, lin, W, b, act):
    return (i, id(lin), lin.in_features, lin.out_features, id(W), getattr(W, "shape", None),
            id(b), getattr(b, "shape", None), act)


def _describes(plan, layers):
    """True when deriving the plan of `layers` now would give `plan`'s key again: the same
    layer count and layers, each GEMM layer still fusing with the same sizes, dtype and
    parameter arrays (and their shapes), each activation still fusing with the same code and
    scalar."""
    dtype, count, *keys = plan.key
    if len(layers) != count:
        return False
    for s, key in zip(plan.stages, keys):
        i, lin, act = s.index, s.linear, s.activation
        if layers[i] is not lin or not lin.fused_linear or lin.dtype != dtype:
            return False
        params = lin.params
        if _stage_key(i, lin, params.get("W"), params.get("b"), act) != key:
            return False
        if act is not None:
            layer = layers[i + 1]
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


def _check_parameters(plan):
    for s in plan.stages:
        lin = s.linear
        check_written(f"parameter '{s.index}.W'", s.W, plan.dtype,
                      (lin.in_features, lin.out_features))
        if s.b is not None:
            check_written(f"parameter '{s.index}.b'", s.b, plan.dtype, (lin.out_features,))


def _folds(plan, optimizer):
    """{(stage position, parameter name): GemmFold or None}, every written target checked."""
    fold = getattr(optimizer, "gemm_fold", None)
    folds = {}
    for pos, s in enumerate(plan.stages):
        for pname, param in (("W", s.W), ("b", s.b)):
            if param is None:
                continue
            f = fold(f"{s.index}.{pname}", param) if fold is not None else None
            if f is not None and f.target is not param:
                check_written(f"optimizer state for '{s.index}.{pname}'", f.target, plan.dtype,
                              param.shape)
            folds[pos, pname] = f
    return folds


class StepCache:
    """What a model keeps between fused steps: work buffers, and compiled steps for the plan
    they were built for (dropped as soon as the plan changes)."""

    __slots__ = ("buffers", "plan_key", "plan", "names", "compiled")

    def __init__(self, buffers):
        self.buffers = buffers  # get(name, shape, dtype) -> a reused array (the model's kind)
        self.plan_key = self.plan = None
        self.names = ()  # the plan's parameter names, in order ("0.W", "0.b", "2.W", ...)
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
                self.names = tuple(f"{s.index}.{pname}" for s in plan.stages
                                   for pname, p in (("W", s.W), ("b", s.b)) if p is not None)
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
    _check_parameters(plan)
    dtype, layers, written = plan.dtype, [], []
    folds = _folds(plan, optimizer) if update.kind == "sgd" else None
    for pos, s in enumerate(plan.stages):
        lin, act = s.linear, s.activation
        targets, states = {}, {}
        for pname, param in (("W", s.W), ("b", s.b)):
            if param is None:
                continue
            name = f"{s.index}.{pname}"
            written.append((f"parameter '{name}'", param))
            if folds is not None:  # SGD: the GEMM writes the parameter or its velocity
                targets[pname], states[pname] = folds[pos, pname].target, ()
            else:  # Adam / RMSProp: the gradient into a buffer, then the update sweep
                targets[pname] = np.empty_like(param)
                state = optimizer.prepare_state(name, param, update.state_keys)
                states[pname] = tuple(state[key] for key in update.state_keys)
            for array in (targets[pname],) * (folds is not None) + states[pname]:
                if array is not param:
                    check_written(f"optimizer state for '{name}'", array, dtype, param.shape,
                                  hint="; call reset() after changing the parameters")
                    written.append((f"optimizer state for '{name}'", array))
        out = np.empty((n, lin.out_features), dtype)
        layers.append(StepLayer(
            s.W, s.b, targets["W"], targets.get("b"), out,
            np.empty_like(out) if act is not None and act.reads_input else None,
            np.empty((n, lin.in_features), dtype) if pos > 0 else None,
            _ACT_CODES[act.code] if act is not None else _ACT_CODES["identity"],
            act.alpha if act is not None else 0.0, states["W"], states.get("b", ())))
    dlogits = np.empty((n, plan.stages[-1].linear.out_features), dtype)
    return FusedStep(layers, _specs.LOSS_CODES[loss_kernel], dlogits, np.empty(n, np.float64),
                     written, UPDATE_KINDS[update.kind])


def fused_train_step(plan, cache, x, y, loss, optimizer):
    """One fused step of the chain `plan` describes (see the module docstring).

    `x` is the batch already checked by the first layer (C-contiguous, of the plan's dtype,
    (N, in_features)); `cache` is the model's :class:`StepCache`.  Returns the loss value.
    """
    value = _compiled_step(plan, cache, x, y, loss, optimizer)
    if value is not None:
        return value
    _check_parameters(plan)
    k = kernels()
    n, dtype = x.shape[0], plan.dtype
    get = cache.buffers.get

    # forward: keep each layer's input and what its activation's backward reads
    inputs, saved = [], []
    h = x
    for i, s in enumerate(plan.stages):
        out = get(f"out{i}", (n, s.linear.out_features), dtype)
        threads = threads_for(out.size)
        act = s.activation
        if act is None:
            k.linear_forward(h, s.W, s.b, out, threads)
            saved.append(None)
        else:
            pre = get(f"pre{i}", out.shape, dtype) if act.reads_input else None
            k.linear_act_forward(h, s.W, s.b, act.code, act.alpha, pre, out, threads)
            saved.append(pre if pre is not None else out)
        inputs.append(h)
        h = out

    value = loss.forward(h, y)  # validates the labels / targets: nothing has changed yet
    d = loss.backward()
    folds = _folds(plan, optimizer)  # checks every fold target: still nothing written

    # backward with the update folded into the GEMMs where the optimizer allows it
    unfolded_params, unfolded_grads = {}, {}
    for i in range(len(plan.stages) - 1, -1, -1):
        s = plan.stages[i]
        lin, act = s.linear, s.activation
        targets = {}
        for pname, param in (("W", s.W), ("b", s.b)):
            if param is None:
                continue
            fold = folds[i, pname]
            if fold is None:
                grad = lin.grads[pname]
                full = f"{s.index}.{pname}"
                unfolded_params[full], unfolded_grads[full] = param, grad
                fold = (grad, 1.0, 0.0, None)
            targets[pname] = fold
        w_target, scale, beta, w_finish = targets["W"]
        b_target, b_scale, b_beta, b_finish = targets.get("b", (None, scale, beta, None))
        threads = threads_for(d.size)
        if act is not None:
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
    return value


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
    and applies the activation (``linear_act_forward``), or ``linear_forward`` without one.

    Nothing is kept for a backward pass, and read-only parameters are fine (nothing is
    written but the work buffers).  `x` is the batch already checked by the first layer
    (C-contiguous, of the plan's dtype, (N, in_features)); `buffers` is the model's
    ``StepCache.buffers`` (``get(name, shape, dtype)``: reused while the batch size stays the
    same; the names differ from the training step's).  Returns the last stage's output, a
    reused (N, out_features) buffer.  The kernels check every array they read.
    """
    k = kernels()
    n, dtype, h = x.shape[0], plan.dtype, x
    for i, s in enumerate(plan.stages):
        out = buffers.get(f"infer_out{i}", (n, s.linear.out_features), dtype)
        threads, act = threads_for(out.size), s.activation
        if act is None:
            k.linear_forward(h, s.W, s.b, out, threads)
        else:  # gelu's kernel also stores z; nothing reads it here
            pre = buffers.get(f"infer_pre{i}", out.shape, dtype) if act.reads_input else None
            k.linear_act_forward(h, s.W, s.b, act.code, act.alpha, pre, out, threads)
        h = out
    return h
