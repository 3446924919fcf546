"""NumPy twins of fastbp._kernels._optim: in-place optimizer steps on 1-D arrays.

Each function updates w and the state arrays in place (``arr[...] = ...`` / ``-=``) with the
textbook formula, written the way the CS231n / CS182 ``optim.py`` writes it; dw is only read.
The length checks mirror the kernels' (ValueError naming the argument, before anything is
written).  ``n_threads`` is accepted and ignored.
"""

import numpy as np

__all__ = ["sgd_step", "sgd_momentum_step", "momentum_step", "rmsprop_step", "adam_step"]


def _check_lengths(kernel, w, **others):
    for name, a in others.items():
        if a.shape[0] != w.shape[0]:
            raise ValueError(
                f"{kernel}: {name} has length {a.shape[0]}, expected {w.shape[0]} "
                "(the length of w)"
            )


def _decayed(w, dw, weight_decay):
    """g = dw + weight_decay * w (L2 weight decay); dw itself when weight_decay == 0."""
    return dw + weight_decay * w if weight_decay != 0 else dw


def sgd_step(w, dw, lr, weight_decay, n_threads=1):
    """w := w - lr * (dw + weight_decay * w), in place."""
    _check_lengths("sgd_step", w, dw=dw)
    w -= lr * _decayed(w, dw, weight_decay)


def sgd_momentum_step(w, dw, v, lr, momentum, n_threads=1):
    """CS231n momentum, in place: v := momentum * v - lr * dw;  w := w + v."""
    _check_lengths("sgd_momentum_step", w, dw=dw, v=v)
    v[...] = momentum * v - lr * dw
    w += v


def momentum_step(w, dw, v, lr, momentum, weight_decay, nesterov, n_threads=1):
    """PyTorch SGD momentum (dampening 0), in place.

    g := dw + weight_decay * w;  v := momentum * v + g;
    w := w - lr * (g + momentum * v)  if nesterov  else  w - lr * v.
    """
    _check_lengths("momentum_step", w, dw=dw, v=v)
    g = _decayed(w, dw, weight_decay)
    v[...] = momentum * v + g
    w -= lr * (g + momentum * v) if nesterov else lr * v


def rmsprop_step(w, dw, cache, lr, decay_rate, eps, weight_decay, n_threads=1):
    """RMSProp, in place: g := dw + weight_decay * w;
    cache := decay_rate * cache + (1 - decay_rate) * g**2;  w := w - lr * g / (sqrt(cache) + eps).
    """
    _check_lengths("rmsprop_step", w, dw=dw, cache=cache)
    g = _decayed(w, dw, weight_decay)
    cache[...] = decay_rate * cache + (1 - decay_rate) * g**2
    w -= lr * g / (np.sqrt(cache) + eps)


def adam_step(w, dw, m, v, lr, beta1, beta2, eps, t, weight_decay, n_threads=1):
    """Adam (L2 weight decay, not AdamW), in place; t is the step number, already incremented.

    g := dw + weight_decay * w;  m := beta1 * m + (1 - beta1) * g;
    v := beta2 * v + (1 - beta2) * g**2;
    w := w - lr * (m / (1 - beta1**t)) / (sqrt(v / (1 - beta2**t)) + eps).
    """
    _check_lengths("adam_step", w, dw=dw, m=m, v=v)
    if t < 1:
        raise ValueError(
            f"adam_step: t must be >= 1 (the step number, already incremented), got {t}"
        )
    g = _decayed(w, dw, weight_decay)
    m[...] = beta1 * m + (1 - beta1) * g
    v[...] = beta2 * v + (1 - beta2) * g**2
    m_hat = m / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    w -= lr * m_hat / (np.sqrt(v_hat) + eps)
