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


@pytest.mark.parametrize("name", [n for n in bench.IMPLEMENTATIONS
                                  if n not in ("gemms-only", "floor")])
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


def test_floor_step_does_the_steps_gemms_and_one_update_pass():
    """The floor's last pass is W := W - lr * v, with v from the velocity GEMM (beta = mu)."""
    sizes = (5, 4, 3)
    x, y, weights = bench.make_problem(sizes, 6, np.float64)
    step = bench.floor_step(sizes, x, y, weights)
    assert step() is None
    v = x.T @ np.full((6, 4), 1e-3)  # the first layer's velocity after one step from v = 0
    np.testing.assert_allclose(step.weights[0], weights[0][0] - bench.LR * v, rtol=1e-12)
    step()  # v := x^T g + mu v
    np.testing.assert_allclose(step.weights[0],
                               weights[0][0] - bench.LR * v - bench.LR * (1 + bench.MOMENTUM) * v,
                               rtol=1e-12)


def test_run_worker_times_every_shape_and_the_mixed_rows():
    spec = dict(implementation="fastbp", shapes=[[[6, 5, 3], 4], [[4, 3], 2]], dtype="float32",
                threads=1, min_time=0.001, mixed=True)
    results = bench.run_worker(spec)
    assert len(results) == 2
    for r in results:
        assert r["median_s"] > 0
        assert set(r["mixed"]) == {"matmul_s", "step_after_matmul_s", "matmul_after_step_s"}
        assert all(t > 0 for t in r["mixed"].values())


def test_compare_runs_each_implementation_in_its_own_process_and_formats_tables(monkeypatch):
    spawned = []
    real = bench._spawn_worker
    monkeypatch.setattr(bench, "_spawn_worker", lambda spec: spawned.append(spec) or real(spec))
    rows = bench.compare([((6, 5, 3), (4,))], ("fastbp", "course-numpy", "floor"),
                         np.float32, threads=1, min_time=0.003, rounds=3)
    assert [s["implementation"] for s in spawned] == [
        "fastbp", "course-numpy", "floor", "course-numpy", "floor", "fastbp",
        "floor", "fastbp", "course-numpy"]  # rounds alternate, the order rotates
    assert [s["mixed"] for s in spawned[:3]] == [True, False, False]
    steps = {r["implementation"]: r for r in rows if r["kind"] == "step"}
    assert set(steps) == {"fastbp", "course-numpy", "floor"}
    assert steps["floor"]["speedup_vs_floor"] == 1.0 and steps["fastbp"]["rounds"] == 3
    mixed = {r["implementation"]: r for r in rows if r["kind"] == "mixed"}
    assert set(mixed) == {"fastbp-after-matmul", "matmul-after-fastbp"}
    assert mixed["fastbp-after-matmul"]["alone_s"] == steps["fastbp"]["median_s"]
    table, markdown = bench.format_table(rows), bench.format_markdown(rows)
    assert "/ floor" in table and "mixed process" in table
    assert markdown.splitlines()[0].startswith("| network, batch | fastbp ms/step |")
    assert "| 6-5-3, 4 | " in markdown and "after a 256² np.matmul" in markdown


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
