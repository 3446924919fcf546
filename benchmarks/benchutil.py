"""Shapes for benchmarks: real ones, or tiny stand-ins under FASTBP_BENCH_TINY=1 (smoke runs)."""

import os

TINY = os.environ.get("FASTBP_BENCH_TINY") == "1"


def shape(*dims):
    """`dims`, or a tiny stand-in of the same rank under FASTBP_BENCH_TINY=1."""
    return tuple(min(d, 3) for d in dims) if TINY else dims
