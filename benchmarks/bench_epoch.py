"""One training epoch per implementation on real data: the MNIST 10k set (FASTBP_MNIST_DIR)
or, without it, the bundled digits.  in-256-10, batch 64, SGD momentum, float32."""

import os

import numpy as np
import pytest
from benchutil import TINY

from fastbp import bench, data

BATCH = 64


def _dataset():
    path = os.environ.get("FASTBP_MNIST_DIR")
    if path and not TINY:
        X, y = data.load_mnist(path, "t10k")
        return "mnist-10k", X, y.astype(np.int64)
    X, y = data.load_digits()
    return ("digits", X[:2 * BATCH], y[:2 * BATCH]) if TINY else ("digits", X, y)


@pytest.mark.parametrize("implementation", ["fastbp", "fastbp-unfused", "course-numpy", "torch"])
def bench_epoch(benchmark, implementation):
    name, X, y = _dataset()
    benchmark.group = f"epoch {name} {X.shape[1]}-256-10 batch {BATCH} float32"
    sizes = (X.shape[1], 256, 10)
    batches = [(np.ascontiguousarray(X[i:i + BATCH]), y[i:i + BATCH])
               for i in range(0, len(X) - BATCH + 1, BATCH)]
    _, _, weights = bench.make_problem(sizes, BATCH, np.float32)
    try:
        step = bench.IMPLEMENTATIONS[implementation](sizes, *batches[0], weights)
    except bench.Unavailable as e:
        pytest.skip(str(e))

    def epoch():
        for xb, yb in batches:
            step(xb, yb)

    benchmark(epoch)
