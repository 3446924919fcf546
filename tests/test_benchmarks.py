"""The benchmark suite cannot rot: every benchmark runs once, on tiny shapes.

Speed is measured in benchmarks/, never asserted here.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastbp import bench

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (ROOT / "benchmarks").is_dir(), reason="benchmarks/ not in this tree")
def test_every_benchmark_runs_once_on_tiny_shapes():
    import fastbp

    env = dict(os.environ, FASTBP_BENCH_TINY="1")
    env.pop("FASTBP_MNIST_DIR", None)
    # the subprocess must import the same fastbp as this one (installed, or a source checkout)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(fastbp.__file__).resolve().parents[1]), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-disable",
         "-o", "addopts=--import-mode=importlib", str(ROOT / "benchmarks")],
        cwd=ROOT / "benchmarks", env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout


def _loss_value(result):
    return float(result.loss_) if hasattr(result, "loss_") else float(result)


@pytest.mark.parametrize("name", [n for n in bench.IMPLEMENTATIONS if n != "gemms-only"])
def test_every_step_implementation_trains(name):
    """Each competitor's step lowers the loss of a fixed batch: it really is a training step,
    and all start from the same loss (same weights, same data)."""
    sizes = (6, 8, 3)
    x, y, weights = bench.make_problem(sizes, 16, np.float64, seed=1)
    try:
        step = bench.IMPLEMENTATIONS[name](sizes, x, y, weights)
    except bench.Unavailable as e:
        pytest.skip(str(e))
    losses = [_loss_value(step()) for _ in range(20)]
    reference = bench.course_numpy_step(sizes, x, y, weights)
    assert losses[0] == pytest.approx(_loss_value(reference()), rel=1e-6)
    assert losses[-1] < 0.9 * losses[0]


def test_gemms_only_step_runs():
    sizes = (6, 8, 3)
    x, y, weights = bench.make_problem(sizes, 4, np.float32)
    assert bench.gemms_only_step(sizes, x, y, weights)() is None


def test_step_flops():
    assert bench.step_flops((784, 100, 10), 64) == 2 * (2 * 64 * 784 * 100 + 2 * 64 * 100 * 10) \
        + 2 * 64 * 100 * 10


@pytest.mark.parametrize("kwargs,match", [
    (dict(implementations=("jax",)), "unknown implementations"),
    (dict(rounds=0), "rounds must be"),
    (dict(min_time=0), "min_time must be"),
])
def test_compare_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bench.compare([((4, 3), (2,))], **{"implementations": ("fastbp",), **kwargs})
