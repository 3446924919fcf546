"""fastbp.autograd speed: graph steps written with autograd ops, against PyTorch eager and
fastbp's own layer API, in the same process (medians over rounds).

Groups (the issue's targets):

* ``autograd step 8-8-8-10 batch 8``: linear/relu/softmax-CE written with autograd ops + SGD
  momentum (>= 5x PyTorch eager);
* ``autograd step 784-1024-1024-10 batch 64``: the same at size (<= 1.15x fastbp's
  ``Sequential`` unfused step, >= 1.2x PyTorch eager);
* ``autograd residual 784-512x4-10 batch 64 / 512``: ``x + relu(linear(x))`` blocks
  (>= 1.2x PyTorch eager);
* ``autograd tiny op``: ``(a * b + c).sum()`` on 8x8, forward + backward (>= 3x PyTorch eager;
  ``extra_info["nodes"]`` gives the node count, so µs per node = median / nodes).

    pytest benchmarks/bench_autograd.py --benchmark-only --benchmark-group-by=group \\
        --benchmark-columns=median,iqr,rounds

Every row of a group starts from the same weights and data; each step builder returns the
step's loss, and tests/test_autograd_bench.py checks that every one of them trains.
"""

import math

import numpy as np
import pytest
from benchutil import shape

import fastbp
import fastbp.autograd as ag
from fastbp import bench, optim


def _leaves(weights):
    return [ag.Tensor(a.copy(), requires_grad=True) for pair in weights for a in pair]


def _autograd_loop(params, forward, x, y):
    """A step closure: zero grads, forward (-> logits), softmax CE, backward, SGD momentum."""
    opt = optim.SGD(bench.LR, momentum=bench.MOMENTUM)

    def step(xb=x, yb=y):
        for p in params:
            p.zero_grad()
        loss = ag.softmax_cross_entropy(forward(xb), yb)
        loss.backward()
        opt.step(params)
        return loss.item()

    return step


def autograd_mlp_step(sizes, x, y, weights):
    """``fastbp.bench``'s MLP step written with autograd ops."""
    params = _leaves(weights)
    pairs = list(zip(params[::2], params[1::2]))

    def forward(h):
        for W, b in pairs[:-1]:
            h = ag.relu(ag.linear(h, W, b))
        return ag.linear(h, *pairs[-1])

    return _autograd_loop(params, forward, x, y)


def residual_problem(width, blocks, batch, n_in=784, n_out=10, dtype=np.float32, seed=0):
    """A batch and He-normal weights: ``n_in -> width``, `blocks` residual blocks, ``-> n_out``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, n_in)).astype(dtype)
    y = rng.integers(0, n_out, batch)
    dims = [(n_in, width)] + [(width, width)] * blocks + [(width, n_out)]
    # residual blocks start small, so the sum stays of unit scale
    gains = [1.0] + [0.2] * blocks + [1.0]
    weights = [((rng.standard_normal(d) * g * math.sqrt(2.0 / d[0])).astype(dtype),
                np.zeros(d[1], dtype)) for d, g in zip(dims, gains)]
    return x, y, weights


def autograd_residual_step(x, y, weights):
    params = _leaves(weights)
    (W0, b0), *blocks, (Wn, bn) = zip(params[::2], params[1::2])

    def forward(h):
        h = ag.relu(ag.linear(h, W0, b0))
        for W, b in blocks:
            h = h + ag.relu(ag.linear(h, W, b))
        return ag.linear(h, Wn, bn)

    return _autograd_loop(params, forward, x, y)


def torch_residual_step(x, y, weights):
    try:
        import torch
    except ImportError:
        raise bench.Unavailable("torch is not installed")
    F = torch.nn.functional
    # F.linear(h, W, b) = h @ W.T + b, what torch.nn.Linear runs, on the same weights
    layers = [(torch.tensor(w.T).requires_grad_(), torch.tensor(b).requires_grad_())
              for w, b in weights]
    first, *blocks, last = layers
    opt = torch.optim.SGD([p for layer in layers for p in layer], lr=bench.LR,
                          momentum=bench.MOMENTUM)

    def step(xb=x, yb=y):
        opt.zero_grad(set_to_none=True)
        h = torch.relu(F.linear(torch.from_numpy(xb), *first))
        for block in blocks:
            h = h + torch.relu(F.linear(h, *block))
        loss = F.cross_entropy(F.linear(h, *last), torch.from_numpy(yb))
        loss.backward()
        opt.step()
        return loss.item()

    return step


def tiny_op(implementation, rng):
    """``(a * b + c).sum()`` forward + backward on 8x8 float32 (3 nodes)."""
    a, b, c = (rng.standard_normal(shape(8, 8)).astype(np.float32) for _ in range(3))
    if implementation == "torch":
        torch = pytest.importorskip("torch")
        ts = [torch.from_numpy(v).requires_grad_() for v in (a, b, c)]
    else:
        ts = [ag.Tensor(v, requires_grad=True) for v in (a, b, c)]
    ta, tb, tc = ts

    def step():
        for t in ts:
            t.grad = None
        out = (ta * tb + tc).sum()
        out.backward()
        return out

    return step


MLP_STEPS = {"autograd": autograd_mlp_step, "torch": bench.torch_step,
             "fastbp-unfused": bench.fastbp_unfused_step}
RESIDUAL_STEPS = {"autograd": autograd_residual_step, "torch": torch_residual_step}


def _all_threads():
    fastbp.set_num_threads(None)
    bench.set_threads(fastbp.get_num_threads())


def _run(benchmark, builder, *args):
    try:
        step = builder(*args)
    except bench.Unavailable as e:
        pytest.skip(str(e))
    benchmark(step)


@pytest.mark.parametrize("implementation", list(MLP_STEPS))
@pytest.mark.parametrize("sizes,batch", [((8, 8, 8, 10), 8), ((784, 1024, 1024, 10), 64)],
                         ids=["8-8-8-10@8", "784-1024-1024-10@64"])
def bench_autograd_mlp_step(benchmark, sizes, batch, implementation):
    sizes, batch = tuple(shape(*sizes)), shape(batch)[0]
    benchmark.group = f"autograd step {'-'.join(map(str, sizes))} batch {batch} float32"
    _all_threads()
    x, y, weights = bench.make_problem(sizes, batch, np.float32)
    _run(benchmark, MLP_STEPS[implementation], sizes, x, y, weights)


@pytest.mark.parametrize("implementation", list(RESIDUAL_STEPS))
@pytest.mark.parametrize("batch", [64, 512])
def bench_autograd_residual_step(benchmark, batch, implementation):
    width, n_in, batch = shape(512, 784, batch)
    benchmark.group = f"autograd residual {n_in}-{width}x4-10 batch {batch} float32"
    _all_threads()
    x, y, weights = residual_problem(width, 4, batch, n_in=n_in)
    _run(benchmark, RESIDUAL_STEPS[implementation], x, y, weights)


@pytest.mark.parametrize("implementation", ["autograd", "torch"])
def bench_autograd_tiny_op(benchmark, implementation, rng):
    benchmark.group = "autograd tiny op (a * b + c).sum() 8x8 float32, forward + backward"
    benchmark.extra_info["nodes"] = 3
    _all_threads()
    benchmark(tiny_op(implementation, rng))
