"""NumPy twins of fastbp._kernels._norm: batch norm and layer norm, same signatures.

Arrays are 1-D raveled (N, D) matrices with D = len(gamma); statistics (``mean``, ``inv_std``)
are float64; the arithmetic runs in float64 and each output is rounded once to its dtype.
"""

import numpy as np

__all__ = [
    "batchnorm_forward_train",
    "batchnorm_forward_test",
    "batchnorm_backward",
    "layernorm_forward",
    "layernorm_backward",
]


def _matrix(kernel, a, name, d):
    """`a` (1-D, whole rows of length d) as an (N, D) float64 array."""
    if d < 1:
        raise ValueError(f"{kernel}: gamma must have at least one feature, got length {d}")
    if a.shape[0] % d:
        raise ValueError(f"{kernel}: {name} has length {a.shape[0]}, not a multiple of D = {d}")
    return a.reshape(-1, d).astype(np.float64)


def _check(kernel, eps=0.0, momentum=0.0):
    if not eps >= 0:
        raise ValueError(f"{kernel}: eps must be >= 0, got {eps}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"{kernel}: momentum must lie in [0, 1], got {momentum}")


def batchnorm_forward_train(x, gamma, beta, out, mean, inv_std, running_mean, running_var, eps,
                            momentum, unbiased, n_threads=1):
    """Batch statistics (two-pass, biased), out = x_hat * gamma + beta, running averages."""
    _check("batchnorm_forward_train", eps, momentum)
    x2 = _matrix("batchnorm_forward_train", x, "x", gamma.shape[0])
    n = x2.shape[0]
    if n < 1 + bool(unbiased):
        raise ValueError(f"batchnorm_forward_train: needs at least {1 + bool(unbiased)} rows")
    mu = x2.mean(axis=0)
    var = ((x2 - mu) ** 2).mean(axis=0)
    inv = 1.0 / np.sqrt(var + eps)
    out[...] = ((x2 - mu) * (gamma * inv) + beta).ravel()
    mean[...] = mu
    inv_std[...] = inv
    running_var_stat = var * (n / (n - 1.0)) if unbiased else var
    running_mean[...] = momentum * running_mean.astype(np.float64) + (1.0 - momentum) * mu
    running_var[...] = (momentum * running_var.astype(np.float64)
                        + (1.0 - momentum) * running_var_stat)


def batchnorm_forward_test(x, gamma, beta, running_mean, running_var, out, eps, n_threads=1):
    """out = (x - running_mean) / sqrt(running_var + eps) * gamma + beta."""
    _check("batchnorm_forward_test", eps)
    x2 = _matrix("batchnorm_forward_test", x, "x", gamma.shape[0])
    scale = gamma / np.sqrt(running_var.astype(np.float64) + eps)
    out[...] = ((x2 - running_mean) * scale + beta).ravel()


def _param_grads(g, x_hat, dgamma, dbeta):
    dbeta[...] = g.sum(axis=0)
    dgamma[...] = (g * x_hat).sum(axis=0)


def batchnorm_backward(dout, x, gamma, mean, inv_std, dx, dgamma, dbeta, n_threads=1):
    """dx = gamma * inv_std * (dout - mean(dout) - x_hat * mean(dout * x_hat)), per feature."""
    d = gamma.shape[0]
    g = _matrix("batchnorm_backward", dout, "dout", d)
    x_hat = (_matrix("batchnorm_backward", x, "x", d) - mean) * inv_std
    _param_grads(g, x_hat, dgamma, dbeta)
    dx[...] = (gamma * inv_std * (g - g.mean(axis=0) - x_hat * (g * x_hat).mean(axis=0))).ravel()


def layernorm_forward(x, gamma, beta, out, mean, inv_std, eps, n_threads=1):
    """Per-row statistics (two-pass, biased), out = x_hat * gamma + beta."""
    _check("layernorm_forward", eps)
    x2 = _matrix("layernorm_forward", x, "x", gamma.shape[0])
    mu = x2.mean(axis=1, keepdims=True)
    inv = 1.0 / np.sqrt(((x2 - mu) ** 2).mean(axis=1, keepdims=True) + eps)
    out[...] = ((x2 - mu) * inv * gamma + beta).ravel()
    mean[...] = mu[:, 0]
    inv_std[...] = inv[:, 0]


def layernorm_backward(dout, x, gamma, mean, inv_std, dx, dgamma, dbeta, n_threads=1):
    """dx = inv_std * (g - mean(g) - x_hat * mean(g * x_hat)) per row, g = dout * gamma."""
    d = gamma.shape[0]
    dout2 = _matrix("layernorm_backward", dout, "dout", d)
    inv = inv_std[:, None]
    x_hat = (_matrix("layernorm_backward", x, "x", d) - mean[:, None]) * inv
    _param_grads(dout2, x_hat, dgamma, dbeta)
    g = dout2 * gamma
    dx[...] = (inv * (g - g.mean(axis=1, keepdims=True)
                      - x_hat * (g * x_hat).mean(axis=1, keepdims=True))).ravel()
