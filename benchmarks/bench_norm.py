"""Normalization speed: batch norm and layer norm forward + backward, and what batch norm costs
inside a whole training step.

Targets (issue "Normalization layers", float32, medians of the same run): forward + backward
on (64, 1024), (1024, 1024), (8192, 1024) >= 3x the NumPy reference and >= 1.2x PyTorch eager;
a 784-1024-1024-10 step with batch norm after each hidden linear <= 1.15x the same step
without it.  Both steps take the fused path (fastbp._planner fuses ``Linear -> norm ->
activation``: one compiled call with the norm between the GEMM and the activation); the
"plain-unfused" row is the step without batch norm forced through forward / backward /
optimizer.step, what any step the planner cannot fuse costs.

Run: ``pytest benchmarks/bench_norm.py --benchmark-only --benchmark-group-by=group``.
"""

import numpy as np
import pytest
from benchutil import shape

from fastbp import layers, nn, optim

NORM_SHAPES = [shape(64, 1024), shape(1024, 1024), shape(8192, 1024)]
STEP_SIZES = shape(784, 1024, 1024, 10)
STEP_BATCH = shape(256)[0]


def _torch_norm(torch, layer, d):
    F = torch.nn.functional
    if layer == "batchnorm":
        return lambda x, g, b: F.batch_norm(x, None, None, g, b, training=True, eps=1e-5)
    return lambda x, g, b: F.layer_norm(x, (d,), g, b, eps=1e-5)


@pytest.mark.parametrize("layer", ["batchnorm", "layernorm"])
@pytest.mark.parametrize("dims", NORM_SHAPES, ids=str)
def bench_norm_forward_backward(benchmark, impl, rng, layer, dims):
    benchmark.group = f"{layer} fwd+bwd {dims} float32"
    n, d = dims
    x = rng.standard_normal(dims, dtype=np.float32)
    dout = rng.standard_normal(dims, dtype=np.float32)
    gamma = rng.uniform(0.5, 1.5, d).astype(np.float32)
    beta = rng.standard_normal(d, dtype=np.float32)
    if impl == "torch":
        import torch

        f = _torch_norm(torch, layer, d)
        xt, dt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(dout)
        gt = torch.from_numpy(gamma).requires_grad_()
        bt = torch.from_numpy(beta).requires_grad_()

        def step():
            xt.grad = gt.grad = bt.grad = None
            f(xt, gt, bt).backward(dt)
            return xt.grad
    else:
        fwd = getattr(layers, f"{layer}_forward")
        bwd = getattr(layers, f"{layer}_backward")

        def step():
            _, cache = fwd(x, gamma, beta, {"mode": "train"})
            return bwd(dout, cache)

    benchmark(step)


def _torch_step(torch, sizes, norm, x, y):
    torch.manual_seed(0)
    mods = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        mods.append(torch.nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            if norm:
                mods.append(torch.nn.BatchNorm1d(fan_out))
            mods.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*mods)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
        return loss

    return step


#: variant -> (norm, force the unfused path): "plain-unfused" shows what losing the fused path
#: costs, next to what the normalization itself costs
STEP_VARIANTS = {"plain": (None, False), "plain-unfused": (None, True),
                 "batchnorm": ("batch", False)}


def _unfused_step(model, x, y, loss, opt):
    value = loss.forward(model.forward(x), y)
    model.backward(loss.backward())
    opt.step(model.params, model.grads)
    return value


@pytest.mark.parametrize("variant", STEP_VARIANTS)
def bench_mlp_step_with_and_without_batchnorm(benchmark, impl, rng, variant):
    benchmark.group = f"step {'-'.join(map(str, STEP_SIZES))} batch {STEP_BATCH} float32"
    norm, unfused = STEP_VARIANTS[variant]
    if unfused and impl in ("numpy", "torch"):
        pytest.skip("the unfused row is fastbp's own decomposition")
    x = rng.standard_normal((STEP_BATCH, STEP_SIZES[0]), dtype=np.float32)
    y = rng.integers(0, STEP_SIZES[-1], STEP_BATCH)
    if impl == "torch":
        import torch

        step = _torch_step(torch, STEP_SIZES, norm, x, y)
    else:
        model = nn.MLP(list(STEP_SIZES), norm=norm, rng=0)
        loss, opt = nn.SoftmaxCrossEntropy(), optim.SGD(lr=0.01, momentum=0.9)
        assert model._fusion_plan() is not None

        def step():
            if unfused:
                return _unfused_step(model, x, y, loss, opt)
            return model.train_step(x, y, loss, opt)

    benchmark(step)
