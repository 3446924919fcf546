"""Whole-step speed: one SGD-momentum training step per implementation (see fastbp.bench).

Groups are (sizes, batch, dtype); rows are fastbp (fused), fastbp-unfused, the NumPy reference
backend, a course-style NumPy step, PyTorch eager, scikit-learn partial_fit and the GEMMs-only
floor, all on the same thread count.  Thread scaling: ``bench_step_threads`` times the fused
step on 1..all threads.

    pytest benchmarks/bench_step.py --benchmark-only --benchmark-group-by=group \\
        --benchmark-columns=median,iqr,rounds
"""

import numpy as np
import pytest
from benchutil import shape

import fastbp
from fastbp import bench

CASES = [(sizes, batch) for sizes, batches in bench.STEP_SHAPES for batch in batches]


def _case(sizes, batch):
    return tuple(shape(*sizes)), shape(batch)[0]


@pytest.mark.parametrize("implementation", list(bench.IMPLEMENTATIONS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("sizes,batch", CASES, ids=[f"{'-'.join(map(str, s))}@{b}" for s, b in CASES])
def bench_step(benchmark, sizes, batch, dtype, implementation):
    sizes, batch = _case(sizes, batch)
    benchmark.group = f"step {'-'.join(map(str, sizes))} batch {batch} {np.dtype(dtype).name}"
    bench.set_threads(fastbp.get_num_threads() if fastbp.get_num_threads() else None)
    x, y, weights = bench.make_problem(sizes, batch, dtype)
    try:
        step = bench.IMPLEMENTATIONS[implementation](sizes, x, y, weights)
    except bench.Unavailable as e:
        pytest.skip(str(e))
    benchmark.extra_info["gflops_per_step"] = bench.step_flops(sizes, batch) / 1e9
    benchmark(step)


@pytest.mark.parametrize("threads", sorted({1, 2, 4, 8, 16, fastbp._config.USABLE_CORES}))
@pytest.mark.parametrize("sizes,batch", [((784, 1024, 1024, 10), 512), ((784, 1024, 1024, 10), 64)],
                         ids=["784-1024-1024-10@512", "784-1024-1024-10@64"])
def bench_step_threads(benchmark, sizes, batch, threads):
    if threads > fastbp._config.USABLE_CORES:
        pytest.skip(f"only {fastbp._config.USABLE_CORES} usable cores")
    sizes, batch = _case(sizes, batch)
    benchmark.group = f"thread scaling: fastbp step {'-'.join(map(str, sizes))} batch {batch}"
    bench.set_threads(threads)
    try:
        x, y, weights = bench.make_problem(sizes, batch, np.float32)
        benchmark(bench.fastbp_step(sizes, x, y, weights))
    finally:
        fastbp.set_num_threads(None)
