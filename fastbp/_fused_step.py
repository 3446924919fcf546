"""The fused training step behind ``fastbp.nn.Sequential.train_step``.

A chain ``Linear [act] Linear [act] ... Linear`` runs as:

forward   per layer, one GEMM whose epilogue adds the bias and applies the activation
          (``linear_act_forward``), or a plain ``linear_forward`` for the last layer;
loss      the criterion's fused loss + gradient pass (scaled by 1/N);
backward  per layer, from the last: ``act_backward_bias`` (activation derivative and bias
          gradient in one pass, in place in the upstream gradient buffer), then
          ``linear_backward`` (dx from the old weights, then the weight-gradient GEMM);
update    folded into those GEMMs when the optimizer allows it (``gemm_fold``): plain SGD writes
          ``W := W - lr·xᵀ·dz`` directly, momentum SGD writes the velocity
          ``v := xᵀ·dz + mu·v`` and then ``W -= lr·v``; any other optimizer gets its gradients
          and runs ``step`` on them at the end.

No Python work between kernels beyond dispatch; buffers are kept per model and reused while the
batch size stays the same.  Everything that can fail (input shape, labels, finiteness checks)
is checked before the first parameter changes.

With the compiled backend and plain or heavy-ball SGD (the common case), the whole step runs as
ONE nogil call (``_kernels._fused.FusedStep``): the plan of pointers is built once per batch
size and checked cheaply on every step (the same parameter and velocity arrays, the batch's
dtype and shape), so a step of a tiny network costs microseconds, not a Python loop over
kernels.  Anything else (another optimizer, weight decay, Nesterov, ``check_finite``, the
numpy/checked backends) takes the kernel-by-kernel path below, which the compiled step is
tested against.
"""

import math

import numpy as np

from . import _config
from . import _validation as val
from ._config import threads_for
from .backend import get_backend, kernels

_OUTPUT_FORM = {"ReLU": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh"}


def _kernel_activation(act):
    """(kernel activation name, alpha) for a fastbp.nn activation, or None if not fusable."""
    name = type(act).__name__
    if name in _OUTPUT_FORM:
        return _OUTPUT_FORM[name], 0.0
    if name in ("LeakyReLU", "ELU"):
        # the backward reads the output: valid only when a > 0 exactly where z > 0
        return ("leaky_relu" if name == "LeakyReLU" else "elu", act.alpha) if act.alpha >= 0 \
            else None
    if name == "GELU":
        return ("gelu_tanh" if act.approximate == "tanh" else "gelu"), 0.0
    return None


def fusion_plan(layers):
    """[(index, Linear, (activation, alpha) or None), ...] for a fusable chain, else None."""
    from .nn import Linear, _Activation

    plan, i, prev = [], 0, None
    while i < len(layers):
        start, lin = i, layers[i]
        if type(lin) is not Linear:
            return None
        if prev is not None and (lin.in_features != prev.out_features or lin.dtype != prev.dtype):
            return None
        act = None
        if i + 1 < len(layers) and isinstance(layers[i + 1], _Activation):
            act = _kernel_activation(layers[i + 1])
            if act is None:
                return None
            i += 1
        plan.append((start, lin, act))
        prev, i = lin, i + 1
    return plan or None


def fused_train_step(model, plan, x, y, loss, optimizer):
    """Run one fused step of `model` (see the module docstring); returns the loss value."""
    value = _compiled_step(model, plan, x, y, loss, optimizer)
    if value is not None:
        return value
    k = kernels()
    first = plan[0][1]
    x = first._input(x)
    n, dtype = x.shape[0], first.dtype
    buf = model.__dict__.setdefault("_step_buffers", {})

    def get(name, shape):
        a = buf.get(name)
        if a is None or a.shape != shape or a.dtype != dtype:
            a = buf[name] = np.empty(shape, dtype)
        return a

    # forward: keep each layer's input and what its activation's backward reads
    inputs, saved = [], []
    h = x
    for i, (_, lin, act) in enumerate(plan):
        out = get(f"out{i}", (n, lin.out_features))
        threads = threads_for(out.size)
        if act is None:
            k.linear_forward(h, lin.params["W"], lin.params.get("b"), out, threads)
            saved.append(None)
        else:
            name, alpha = act
            pre = get(f"pre{i}", out.shape) if name.startswith("gelu") else None
            k.linear_act_forward(h, lin.params["W"], lin.params.get("b"), name, alpha, pre, out,
                                 threads)
            saved.append(pre if pre is not None else out)
        inputs.append(h)
        h = out

    value = loss.forward(h, y)  # validates the labels / targets: nothing has changed yet
    d = loss.backward()

    # backward with the update folded into the GEMMs where the optimizer allows it
    unfolded_params, unfolded_grads = {}, {}
    for i in range(len(plan) - 1, -1, -1):
        index, lin, act = plan[i]
        targets = {}
        for pname, param in lin.params.items():
            full = f"{index}.{pname}"
            fold = optimizer.gemm_fold(full, param) if hasattr(optimizer, "gemm_fold") else None
            if fold is None:
                grad = lin.grads[pname]
                unfolded_params[full], unfolded_grads[full] = param, grad
                fold = (grad, 1.0, 0.0, None)
            targets[pname] = fold
        w_target, scale, beta, w_finish = targets["W"]
        b_target, b_scale, b_beta, b_finish = targets.get("b", (None, scale, beta, None))
        threads = threads_for(d.size)
        if act is not None:
            k.act_backward_bias(d, saved[i], act[0], act[1], d, b_target, b_scale, b_beta,
                                threads)
        dx = get(f"dx{i}", (n, lin.in_features)) if i > 0 else None
        if act is None and b_target is not None and (b_scale, b_beta) != (scale, beta):
            k.act_backward_bias(d, d, "identity", 0.0, d, b_target, b_scale, b_beta, threads)
            b_target = None
        k.linear_backward(d, inputs[i], lin.params["W"], dx, w_target,
                          b_target if act is None else None, scale, beta, threads)
        for finish in (w_finish, b_finish):
            if finish is not None:
                finish()
        d = dx
    if unfolded_params:
        optimizer.step(unfolded_params, unfolded_grads)
    return value



def _loss_kernel(loss):
    from .nn import MSELoss, _ClassificationLoss

    if loss.check_finite:
        return None
    if isinstance(loss, _ClassificationLoss):
        return loss.kernel
    return "mse" if isinstance(loss, MSELoss) else None


def _sgd_hyperparameters(optimizer):
    """(lr, momentum) when the update folds into the compiled step, else None."""
    from .optim import SGD

    if type(optimizer) is not SGD or optimizer.weight_decay != 0 or optimizer.nesterov:
        return None
    lr, mu = optimizer.lr, optimizer.momentum
    if not (isinstance(lr, float) and isinstance(mu, float) and math.isfinite(lr) and lr >= 0
            and 0 <= mu < 1):
        optimizer._validate(**optimizer.hyperparameters())  # raises the precise error
        return None
    return lr, mu


def _compiled_step(model, plan, x, y, loss, optimizer):
    """The whole step in one FusedStep call, or None when this step needs the general path."""
    if get_backend() != "compiled":
        return None
    kernel = _loss_kernel(loss)
    hp = _sgd_hyperparameters(optimizer)
    if kernel is None or hp is None:
        return None
    lr, mu = hp
    first, last = plan[0][1], plan[-1][1]
    dtype = first.dtype
    if not (type(x) is np.ndarray and x.dtype == dtype and x.flags.c_contiguous):
        x = first._input(x)
    n = x.shape[0]
    if n == 0 or x.ndim != 2:
        return None
    labels = target = None
    if kernel == "mse":
        target = val.as_float(y, "target", dtype)
        if target.shape != (n, last.out_features):
            raise ValueError(f"target must have shape {(n, last.out_features)}, got "
                             f"{target.shape}")
    elif type(y) is np.ndarray and y.dtype == np.int64 and y.ndim == 1 and y.flags.c_contiguous:
        labels = y  # the range is checked inside the compiled step, before any update
    else:
        labels = val.as_labels(y, "y", n, last.out_features)
    step = _fused_step_for(model, plan, optimizer, n, kernel, momentum=mu != 0)
    if step is None:
        return None
    return step.run(x, labels, target, lr, mu, _config.get_num_threads(),
                    _config.PARALLEL_MIN_WORK)


def _current_arrays(model, plan, optimizer, momentum):
    """The parameter (and velocity) arrays a compiled plan would point into, right now."""
    arrays = []
    for index, lin, _ in plan:
        for pname in ("W", "b"):
            p = lin.params.get(pname)
            arrays.append(p)
            if momentum and p is not None:
                arrays.append(optimizer.state.get(f"{index}.{pname}", {}).get("momentum_buffer"))
    return arrays


def _fused_step_for(model, plan, optimizer, n, kernel, momentum):
    """The cached FusedStep for this batch size / loss / update, rebuilt when stale."""
    from ._kernels._fused import FusedStep

    cache = model.__dict__.setdefault("_compiled_steps", {})
    key = (n, kernel, momentum, id(optimizer))
    entry = cache.get(key)
    if entry is not None and all(a is b for a, b in zip(entry[1], _current_arrays(
            model, plan, optimizer, momentum))):
        return entry[0]
    dtype = plan[0][1].dtype
    layers = []
    for i, (index, lin, act) in enumerate(plan):
        w, b = lin.params["W"], lin.params.get("b")
        for p in (w, b):
            if p is not None and not (p.dtype == dtype and p.flags.c_contiguous
                                      and p.flags.writeable):
                return None
        folds = [optimizer.gemm_fold(f"{index}.{pname}", p) if p is not None else (None,)
                 for pname, p in (("W", w), ("b", b))]
        name, alpha = act if act is not None else ("identity", 0.0)
        out = np.empty((n, lin.out_features), dtype)
        pre = np.empty_like(out) if name.startswith("gelu") else None
        dx = np.empty((n, lin.in_features), dtype) if i > 0 else None
        layers.append((w, b, folds[0][0], folds[1][0], out, pre, dx, name, float(alpha)))
    dlogits = np.empty((n, plan[-1][1].out_features), dtype)
    step = FusedStep(layers, kernel, dlogits, np.empty(n, np.float64))
    if len(cache) >= 4:  # a few batch sizes (the last partial batch of an epoch), not unbounded
        cache.pop(next(iter(cache)))
    cache[key] = (step, _current_arrays(model, plan, optimizer, momentum))
    return step
