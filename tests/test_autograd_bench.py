"""The autograd benchmark's steps are real training steps: each lowers the loss of a fixed batch,
and the competitors of a group start from the same loss (same weights, same data).

tests/test_benchmarks.py smoke-runs the benchmark file itself on tiny shapes.
"""

import numpy as np
import pytest

from fastbp import bench

bench_autograd = pytest.importorskip("bench_autograd")  # benchmarks/ is on the pytest path


def _losses(step, n=25):
    return [float(step()) for _ in range(n)]


@pytest.mark.parametrize("name", list(bench_autograd.MLP_STEPS))
def test_every_mlp_step_trains_from_the_same_start(name):
    sizes = (6, 8, 8, 3)
    x, y, weights = bench.make_problem(sizes, 16, np.float64, seed=2)
    try:
        step = bench_autograd.MLP_STEPS[name](sizes, x, y, weights)
    except bench.Unavailable as e:
        pytest.skip(str(e))
    losses = _losses(step)
    reference = bench.course_numpy_step(sizes, x, y, weights)
    assert losses[0] == pytest.approx(float(reference()), rel=1e-6)
    assert losses[-1] < 0.9 * losses[0]


@pytest.mark.parametrize("name", list(bench_autograd.RESIDUAL_STEPS))
def test_every_residual_step_trains_from_the_same_start(name):
    x, y, weights = bench_autograd.residual_problem(12, 3, 16, n_in=7, n_out=4,
                                                    dtype=np.float64, seed=3)
    try:
        step = bench_autograd.RESIDUAL_STEPS[name](x, y, weights)
    except bench.Unavailable as e:
        pytest.skip(str(e))
    losses = _losses(step)
    start = bench_autograd.RESIDUAL_STEPS["autograd"](x, y, weights)()
    assert losses[0] == pytest.approx(start, rel=1e-9)
    assert losses[-1] < 0.9 * losses[0]


@pytest.mark.parametrize("implementation", ["autograd", "torch"])
def test_tiny_op_computes_the_same_value(implementation):
    if implementation == "torch":
        pytest.importorskip("torch")
    out = bench_autograd.tiny_op(implementation, np.random.default_rng(0))()
    ours = bench_autograd.tiny_op("autograd", np.random.default_rng(0))()
    assert float(out.detach()) == pytest.approx(float(ours.detach()), rel=1e-5)
