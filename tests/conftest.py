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
