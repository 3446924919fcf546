"""NumPy twins of fastbp._kernels._dropout: the same counter-based mask, bit for bit."""

import numpy as np

__all__ = ["dropout_forward", "dropout_backward"]

_M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15  # the splitmix64 increment


def _mix64(z):
    """splitmix64 finaliser on uint64 arrays (NumPy array arithmetic wraps modulo 2**64)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _mix64_int(z):
    """splitmix64 finaliser on one Python int (no NumPy scalar overflow warnings)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def dropout_forward(x, out, mask, keep_prob, seed, n_threads=1):
    """mask := keep(seed, i) / keep_prob;  out := x * mask   (all 1-D, length N).

    Element i is kept when
    ``mix64(mix64(seed) + (i + 1) * GOLDEN) >> 11 < floor(keep_prob * 2**53)``.
    """
    n = x.shape[0]
    if out.shape[0] != n or mask.shape[0] != n:
        raise ValueError(f"dropout_forward: out and mask must have length {n}")
    if not 0.0 < keep_prob <= 1.0:
        raise ValueError(f"dropout_forward: keep_prob must lie in (0, 1], got {keep_prob}")
    threshold = np.uint64(int(keep_prob * 2.0**53))
    key = np.uint64(_mix64_int(int(seed) & _M64))
    counters = np.arange(1, n + 1, dtype=np.uint64) * np.uint64(GOLDEN) + key
    kept = (_mix64(counters) >> np.uint64(11)) < threshold
    mask[...] = kept * mask.dtype.type(1.0 / keep_prob)
    np.multiply(x, mask, out=out)


def dropout_backward(dout, mask, dx, n_threads=1):
    """dx := dout * mask."""
    if mask.shape[0] != dout.shape[0] or dx.shape[0] != dout.shape[0]:
        raise ValueError(f"dropout_backward: mask and dx must have length {dout.shape[0]}")
    np.multiply(dout, mask, out=dx)
