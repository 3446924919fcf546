"""Thread settings and show_config."""

import io

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import fastbp
from fastbp import _config


@pytest.fixture
def restore_threads():
    before = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    yield
    fastbp.set_num_threads(None)
    if before:
        fastbp.set_num_threads(max(before))
        fastbp.set_num_threads(None)


def test_default_threads_follow_openmp_capped_at_cores():
    n = fastbp.get_num_threads()
    assert 1 <= n <= _config.USABLE_CORES
    assert n == max(1, min(_kernels_max(), _config.USABLE_CORES))


def _kernels_max():
    from fastbp._kernels import omp_max_threads

    return omp_max_threads()


def test_set_num_threads_sets_fastbp_and_blas(restore_threads):
    fastbp.set_num_threads(1)
    assert fastbp.get_num_threads() == 1
    assert all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")
    fastbp.set_num_threads(None)
    assert fastbp.get_num_threads() == max(1, min(_kernels_max(), _config.USABLE_CORES))


def test_set_num_threads_is_capped_at_usable_cores(restore_threads):
    fastbp.set_num_threads(10_000)
    assert fastbp.get_num_threads() == _config.USABLE_CORES


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-2, ValueError), (1.5, TypeError),
                                     ("2", TypeError), (True, TypeError)])
def test_set_num_threads_rejects_bad_values(bad, exc):
    with pytest.raises(exc, match="n must be"):
        fastbp.set_num_threads(bad)


def test_small_work_runs_serially():
    assert _config.threads_for(10) == 1
    assert _config.threads_for(_config.PARALLEL_MIN_WORK) == fastbp.get_num_threads()


def test_show_config_prints_the_essentials():
    buf = io.StringIO()
    fastbp.show_config(file=buf)
    text = buf.getvalue()
    for key in ("fastbp:", "openmp:", "threads:", "backend:", "blas:", "numpy:"):
        assert key in text
    assert str(fastbp.openmp_enabled()) in text
    assert fastbp.__version__ in text


def test_openmp_enabled_is_a_bool():
    assert isinstance(fastbp.openmp_enabled(), bool)
    assert isinstance(np.float64(fastbp.get_num_threads()), np.floating)
