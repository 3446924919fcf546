"""Shared fixtures: a seeded generator, the MNIST directory."""

import os

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def mnist_dir():
    path = os.environ.get("FASTBP_MNIST_DIR")
    if not path:
        pytest.skip("FASTBP_MNIST_DIR is not set (point it at a directory of MNIST IDX files)")
    return path


@pytest.fixture(autouse=True)
def _thread_setting_does_not_leak():
    """A test that sets fastbp's thread count (and fails before resetting it) must not change
    the defaults the next test sees."""
    from fastbp import _config

    before = _config._user_threads
    yield
    if _config._user_threads != before:
        _config.set_num_threads(before)
