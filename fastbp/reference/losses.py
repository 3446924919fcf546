"""NumPy twin of fastbp._kernels._losses: same names, signatures and output semantics.

Each function fills the buffers it is given (``row_loss`` always, the gradient unless it is None)
and returns ``scale * row_loss.sum()``.  Per-row sums are taken in float64 whatever the input
dtype; the elementwise work (shift, exp, margins, differences) runs in the input dtype, as the
kernels do.  ``n_threads`` is accepted and ignored.
"""

import numpy as np

__all__ = ["softmax_cross_entropy", "svm_hinge", "mse"]


def _check_shapes(fn, name, x, out_name, out, row_loss, labels=None):
    """ValueError naming the arguments unless the buffers agree with x of shape (N, C)."""
    n, c = x.shape
    if out is not None and out.shape != x.shape:
        raise ValueError(f"{fn}: {out_name} has shape {out.shape}, {name} has shape {x.shape}")
    if row_loss.shape != (n,):
        raise ValueError(f"{fn}: row_loss has shape {row_loss.shape}, expected ({n},) rows of {name}")
    if labels is None:
        return
    if labels.shape != (n,):
        raise ValueError(f"{fn}: labels has shape {labels.shape}, expected ({n},) rows of {name}")
    if n and c == 0:
        raise ValueError(f"{fn}: {name} has no columns (classes) but {n} rows")
    bad = (labels < 0) | (labels >= c)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{fn}: labels[{i}] = {labels[i]} is outside [0, {c})")


def softmax_cross_entropy(logits, labels, dlogits, row_loss, scale=1.0, n_threads=1):
    """row_loss = logsumexp(z) - z[y]; dlogits = (softmax(z) - onehot(y))·scale; returns scale·Σ row_loss."""
    _check_shapes("softmax_cross_entropy", "logits", logits, "dlogits", dlogits, row_loss, labels)
    rows = np.arange(logits.shape[0])
    if rows.size == 0:
        return 0.0
    shifted = logits - logits.max(axis=1, keepdims=True)  # max-shift: exp never overflows
    e = np.exp(shifted)
    s = e.sum(axis=1, dtype=np.float64)  # >= 1 (the max contributes exp(0)), so log(s) is safe
    row_loss[...] = np.log(s) - shifted[rows, labels]
    if dlogits is not None:
        g = e / s[:, None]
        g[rows, labels] -= 1.0
        dlogits[...] = g * scale
    return float(scale * row_loss.sum())


def svm_hinge(scores, labels, dscores, row_loss, scale=1.0, n_threads=1):
    """row_loss = Σ_{j≠y} max(0, s_j - s_y + 1); dscores = scale·(1[margin>0] - count·onehot(y))."""
    _check_shapes("svm_hinge", "scores", scores, "dscores", dscores, row_loss, labels)
    rows = np.arange(scores.shape[0])
    if rows.size == 0:
        return 0.0
    margins = np.maximum(0, scores - scores[rows, labels][:, None] + 1)
    margins[rows, labels] = 0
    row_loss[...] = margins.sum(axis=1, dtype=np.float64)
    if dscores is not None:
        positive = margins > 0
        g = scale * positive
        g[rows, labels] = -scale * positive.sum(axis=1)
        dscores[...] = g
    return float(scale * row_loss.sum())


def mse(pred, target, dpred, row_loss, scale=1.0, n_threads=1):
    """row_loss = Σ_j (p - t)²; dpred = 2·scale·(p - t); returns scale·Σ row_loss."""
    if target.shape != pred.shape:
        raise ValueError(f"mse: target has shape {target.shape}, pred has shape {pred.shape}")
    _check_shapes("mse", "pred", pred, "dpred", dpred, row_loss)
    diff = pred - target
    row_loss[...] = np.square(diff, dtype=np.float64).sum(axis=1)
    if dpred is not None:
        dpred[...] = 2 * scale * diff
    return float(scale * row_loss.sum())
