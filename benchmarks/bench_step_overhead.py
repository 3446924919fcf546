"""The Python around a training step: what ``Sequential.train_step`` and ``Optimizer.step`` cost
beyond their kernels, against the floor the kernels set (medians over rounds).

Groups:

* ``train_step 8-8-8-10 batch 8``: the compiled step at a size where almost everything is
  Python (plain SGD, SGD momentum), next to ``fastbp.bench``'s floor (the step's GEMMs and its
  update pass alone);
* ``train_step 784-100-10 batch 64``: SGD momentum and Adam against the same floor (the
  issue's targets: SGD momentum <= 1.15x the floor, Adam <= 1.10x SGD momentum);
* ``optimizer.step 8-8-8-10 leaves``: ``SGD(momentum).step`` on the six autograd leaves of the
  8-8-8-10 MLP (a list of tensors, and the same arrays as dicts) against its six kernel calls.

Threads: whatever the process is given (``OMP_NUM_THREADS=1`` for the one-thread numbers the
overhead is measured with)::

    OMP_NUM_THREADS=1 pytest benchmarks/bench_step_overhead.py --benchmark-only \\
        --benchmark-group-by=group --benchmark-columns=min,median,iqr,rounds
"""

import numpy as np
import pytest
from benchutil import shape

import fastbp
import fastbp.autograd as ag
from fastbp import _kernels, bench, nn, optim

OPTIMIZERS = {
    "sgd": lambda: optim.SGD(bench.LR),
    "sgd-momentum": lambda: optim.SGD(bench.LR, momentum=bench.MOMENTUM),
    "adam": lambda: optim.Adam(1e-3),
}


def train_step(sizes, x, y, weights, optimizer):
    """``fastbp.bench``'s MLP (same weights) stepped by ``Sequential.train_step``."""
    model = bench._fastbp_model(sizes, weights, x.dtype)
    loss, opt = nn.SoftmaxCrossEntropy(), OPTIMIZERS[optimizer]()
    return lambda: model.train_step(x, y, loss, opt)


def _threads():
    bench.set_threads(fastbp.get_num_threads())


@pytest.mark.parametrize("row", ["sgd", "sgd-momentum", "adam", "floor"])
@pytest.mark.parametrize("sizes,batch", [((8, 8, 8, 10), 8), ((784, 100, 10), 64)],
                         ids=["8-8-8-10@8", "784-100-10@64"])
def bench_train_step(benchmark, sizes, batch, row):
    sizes, batch = tuple(shape(*sizes)), shape(batch)[0]
    benchmark.group = f"train_step {'-'.join(map(str, sizes))} batch {batch} float32"
    _threads()
    x, y, weights = bench.make_problem(sizes, batch, np.float32)
    step = (bench.floor_step(sizes, x, y, weights) if row == "floor"
            else train_step(sizes, x, y, weights, row))
    benchmark(step)


def optimizer_leaves(sizes=(8, 8, 8, 10)):
    """The MLP's weights as autograd leaves with fixed gradients, and an SGD momentum
    optimizer that has taken one step (its state exists)."""
    _, _, weights = bench.make_problem(sizes, 8, np.float32)
    leaves = [ag.Tensor(a.copy(), requires_grad=True) for pair in weights for a in pair]
    for t in leaves:
        t.grad = np.full(t.shape, 1e-3, np.float32)
    opt = optim.SGD(bench.LR, momentum=bench.MOMENTUM)
    opt.step(leaves)
    return leaves, opt


@pytest.mark.parametrize("row", ["tensors", "dicts", "kernels only"])
def bench_optimizer_step(benchmark, row):
    sizes = tuple(shape(8, 8, 8, 10))
    benchmark.group = f"optimizer.step SGD momentum, {'-'.join(map(str, sizes))} leaves"
    _threads()
    leaves, opt = optimizer_leaves(sizes)
    if row == "tensors":
        benchmark(opt.step, leaves)
        return
    params = {i: t.data for i, t in enumerate(leaves)}
    grads = {i: t.grad for i, t in enumerate(leaves)}
    if row == "dicts":
        benchmark(opt.step, params, grads)
        return
    buffers = [opt.state[i]["momentum_buffer"] for i in params]

    def kernels_only():
        for p, g, v in zip(params.values(), grads.values(), buffers):
            _kernels.momentum_step(p.reshape(-1), g.reshape(-1), v.reshape(-1), bench.LR,
                                   bench.MOMENTUM, 0.0, False, 1)

    benchmark(kernels_only)
