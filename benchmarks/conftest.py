"""Benchmark plumbing: implementations to compare, thread settings, tiny shapes for smoke runs.

Run: ``pytest benchmarks --benchmark-only`` (add ``--benchmark-group-by=group`` for tables;
``--benchmark-columns=median,iqr,rounds``).  Each group is one (operation, shape, dtype); its
rows are implementations timed in the same process, so every table carries its own baseline.

``FASTBP_BENCH_TINY=1`` swaps every shape for a tiny one: the test suite uses it with
``--benchmark-disable`` to run each benchmark once so the suite cannot rot.
"""

import numpy as np
import pytest

import fastbp



def all_threads():
    fastbp.set_num_threads(None)
    return fastbp.get_num_threads()


@pytest.fixture(params=["numpy", "fastbp-1", "fastbp-all", "torch"])
def impl(request):
    """Which implementation a benchmark row runs; sets threads (fastbp, BLAS, torch) to match."""
    name = request.param
    n = all_threads()
    if name == "torch":
        torch = pytest.importorskip("torch")
        torch.set_num_threads(n)
    threads = 1 if name == "fastbp-1" else n
    fastbp.set_num_threads(threads)
    backend = "numpy" if name == "numpy" else "compiled"
    with fastbp.use_backend(backend):
        yield name
    fastbp.set_num_threads(n)
    fastbp.set_num_threads(None)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
