"""NumPy twin of fastbp._kernels._blas."""

__all__ = ["gemm"]


def gemm(trans_a, trans_b, alpha, a, b, beta, c):
    """C := alpha * op(A) @ op(B) + beta * C, in place (beta = 0: C is not read)."""
    prod = (a.T if trans_a else a) @ (b.T if trans_b else b)
    if prod.shape != c.shape:
        raise ValueError(f"gemm: op(a) @ op(b) is {prod.shape}, c is {c.shape}")
    if beta == 0:
        c[...] = alpha * prod
    else:
        c[...] = alpha * prod + beta * c
