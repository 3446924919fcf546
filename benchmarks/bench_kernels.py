"""Per-kernel speed: fastbp (1 thread, all threads) vs the NumPy reference and PyTorch eager.

Targets (issue "Compiled core"; float32, all threads, medians of the same run):
softmax-CE loss + grad >= 4x the reference and >= 1.5x PyTorch; activation forward + backward
>= 2x the reference and >= 1.0x PyTorch; affine_backward (512, 1024 -> 1024) within 10% of two
bare np.matmul + sum(axis=0); an 8x8 relu_forward call <= 2x np.maximum(x, 0).  The sigmoid
kernel group (preallocated outputs) splits the sigmoid fwd+bwd row into its two kernels.
"""

import numpy as np
import pytest
from benchutil import shape

from fastbp import layers

ACTIVATION_SHAPES = [shape(64, 4096), shape(1024, 4096)]
SOFTMAX_SHAPES = [shape(n, c) for n in (64, 1024, 8192) for c in (10, 1000)]


def _torch_activation(torch, name):
    """PyTorch's function of the same name (the spec table's names are PyTorch's)."""
    return getattr(torch, name, None) or getattr(torch.nn.functional, name)


@pytest.mark.parametrize("name", sorted(layers.ACTIVATIONS))
@pytest.mark.parametrize("dims", ACTIVATION_SHAPES, ids=str)
def bench_activation_forward_backward(benchmark, impl, rng, name, dims):
    benchmark.group = f"activation {name} fwd+bwd {dims} float32"
    x = rng.standard_normal(dims, dtype=np.float32)
    dout = rng.standard_normal(dims, dtype=np.float32)
    if impl == "torch":
        import torch

        f = _torch_activation(torch, name)
        xt, dt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(dout)

        def step():
            xt.grad = None
            f(xt).backward(dt)
            return xt.grad
    else:
        fwd, bwd = layers.ACTIVATIONS[name][:2]

        def step():
            _, cache = fwd(x)
            return bwd(dout, cache)

    benchmark(step)


@pytest.mark.parametrize("part", ["forward", "backward"])
@pytest.mark.parametrize("dims", [shape(1024, 4096)], ids=str)
def bench_sigmoid_kernel_preallocated(benchmark, impl, rng, part, dims):
    """The sigmoid kernels alone, into preallocated outputs (no allocation, no page faults):
    fastbp's compiled kernels (the NumPy reference for the numpy row) against torch.sigmoid(out=)
    and aten.sigmoid_backward(grad_input=), which is what the fwd+bwd group above splits into."""
    benchmark.group = f"sigmoid_{part} kernel, preallocated output {dims} float32"
    x = rng.standard_normal(dims, dtype=np.float32).ravel()
    dout = rng.standard_normal(dims, dtype=np.float32).ravel()
    y, out = np.empty_like(x), np.empty_like(x)
    if impl == "torch":
        import torch

        xt, dt, yt, ot = (torch.from_numpy(a) for a in (x, dout, y, out))
        torch.sigmoid(xt, out=yt)
        if part == "forward":
            benchmark(lambda: torch.sigmoid(xt, out=ot))
        else:
            benchmark(lambda: torch.ops.aten.sigmoid_backward.grad_input(dt, yt, grad_input=ot))
        return
    import fastbp
    from fastbp._kernels import _activations as compiled
    from fastbp.reference import activations as reference

    kernels, threads = ((reference, {}) if impl == "numpy"
                        else (compiled, {"n_threads": fastbp.get_num_threads()}))
    kernels.sigmoid_forward(x, y, **threads)
    if part == "forward":
        benchmark(kernels.sigmoid_forward, x, out, **threads)
    else:
        benchmark(kernels.sigmoid_backward, dout, y, out, **threads)


@pytest.mark.parametrize("dims", SOFTMAX_SHAPES, ids=str)
def bench_softmax_loss(benchmark, impl, rng, dims):
    benchmark.group = f"softmax_loss loss+grad {dims} float32"
    x = rng.standard_normal(dims, dtype=np.float32)
    y = rng.integers(0, dims[1], dims[0])
    if impl == "torch":
        import torch

        xt, yt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(y)

        def step():
            xt.grad = None
            torch.nn.functional.cross_entropy(xt, yt).backward()
            return xt.grad
    else:

        def step():
            return layers.softmax_loss(x, y)

    benchmark(step)


@pytest.mark.parametrize("dims", [shape(512, 1024, 1024)], ids=str)
@pytest.mark.parametrize("variant", ["layers", "bare-matmul"])
def bench_affine_backward(benchmark, impl, rng, dims, variant):
    n, d, m = dims
    benchmark.group = f"affine_backward N={n} {d}->{m} float32"
    if impl == "torch" or (variant == "bare-matmul" and impl != "numpy"):
        pytest.skip("baseline rows: bare matmul runs once, under the numpy row")
    x = rng.standard_normal((n, d), dtype=np.float32)
    w = rng.standard_normal((d, m), dtype=np.float32)
    dout = rng.standard_normal((n, m), dtype=np.float32)
    if variant == "bare-matmul":
        def step():
            return dout @ w.T, x.T @ dout, dout.sum(axis=0)
    else:
        cache = (x, w, np.zeros(m, np.float32))

        def step():
            return layers.affine_backward(dout, cache)

    benchmark(step)


@pytest.mark.parametrize("variant", ["layers.relu_forward", "np.maximum"])
def bench_tiny_call_overhead(benchmark, impl, rng, variant):
    benchmark.group = "tiny call: relu_forward 8x8 float32"
    if impl != "fastbp-all":
        pytest.skip("one row per variant")
    x = rng.standard_normal((8, 8), dtype=np.float32)
    if variant == "np.maximum":
        benchmark(np.maximum, x, 0)
    else:
        benchmark(layers.relu_forward, x)
