"""Whole-step speed: one SGD-momentum training step per implementation (see fastbp.bench).

Each implementation runs in its OWN process, as users run them (``fastbp.bench.compare``: one
fresh process per implementation and round, rounds alternating, medians over rounds), so the
figures are in each test's ``extra_info`` (``--benchmark-json``) and printed with ``-s``; the
pytest-benchmark time of a test is the whole comparison's wall time, not a step.  Rows: fastbp
(fused), fastbp-unfused, a course-style NumPy step, PyTorch eager, scikit-learn partial_fit,
the GEMMs-only and floor rows, and the mixed-process rows (a fastbp step after a NumPy matmul
and the reverse).  Thread scaling (``bench_step_threads``) times fastbp alone in this process.

    pytest benchmarks/bench_step.py --benchmark-only -s --benchmark-json=step.json

The README table comes from ``fastbp bench --markdown`` (the same code).
"""

import numpy as np
import pytest
from benchutil import TINY, shape

import fastbp
from fastbp import bench

#: Under FASTBP_BENCH_TINY=1 (the suite's smoke run): few rows, one short round.
IMPLEMENTATIONS = ("fastbp", "course-numpy", "floor") if TINY else (
    "fastbp", "fastbp-unfused", "course-numpy", "torch", "sklearn", "gemms-only", "floor")
ROUNDS, MIN_TIME = (1, 0.001) if TINY else (5, 0.5)


def _case(sizes, batch):
    return tuple(shape(*sizes)), shape(batch)[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def bench_step(benchmark, dtype):
    shapes = [(tuple(shape(*sizes)), tuple(dict.fromkeys(shape(*batches))))
              for sizes, batches in bench.STEP_SHAPES]
    benchmark.group = f"step, each implementation in its own process, {np.dtype(dtype).name}"
    rows = benchmark.pedantic(bench.compare, args=(shapes, IMPLEMENTATIONS, dtype),
                              kwargs=dict(min_time=MIN_TIME, rounds=ROUNDS), rounds=1,
                              iterations=1)
    assert {r["implementation"] for r in rows if r["kind"] == "step"} >= {"fastbp", "floor"}
    benchmark.extra_info["rows"] = rows
    print("\n" + bench.format_table(rows))


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
