"""The training loop shared by the front ends (the CLI, and any other): epochs of
``Sequential.train_step`` over shuffled minibatches, measured after each epoch.

``fit`` trains in place and reports each epoch (:class:`EpochStats`) to a callback, so a front
end prints or plots as it likes; the optional progress bar (tqdm, when installed and stderr is
a terminal) is imported only when a bar is shown.
"""

import math
import sys
import time
from typing import NamedTuple

from . import data, optim

__all__ = ["OPTIMIZERS", "EpochStats", "fit"]

#: --optimizer name -> (factory(lr), default lr)
OPTIMIZERS = {
    "sgd": (lambda lr: optim.SGD(lr), 0.1),
    "momentum": (lambda lr: optim.SGD(lr, momentum=0.9), 0.05),
    "adam": (lambda lr: optim.Adam(lr), 1e-3),
    "rmsprop": (lambda lr: optim.RMSProp(lr), 1e-3),
}


class EpochStats(NamedTuple):
    """One row of the training table.  Loss and accuracy are measured after the epoch; the
    validation fields are NaN without a validation set; ``seconds`` times the steps alone."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    seconds: float
    samples_per_s: float


def _progress_bar(total, desc):
    """A tqdm bar on stderr, or None when tqdm is missing or stderr is not a terminal."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="batch", leave=False, file=sys.stderr,
                dynamic_ncols=True)


def fit(model, ds, optimizer, epochs, batch_size, rng, on_epoch=None, step=None,
        batches=None):
    """Train `model` on ``ds.X_train`` with ``Sequential.train_step``; returns the history.

    Parameters
    ----------
    model : fastbp.nn.Sequential
        Trained in place with its ``criterion``.
    ds : Dataset
    optimizer : fastbp.optim.Optimizer
    epochs, batch_size : int
    rng : numpy.random.Generator
        Draws each epoch's minibatch order.
    on_epoch : callable, optional
        Called with each :class:`EpochStats` as soon as the epoch is measured.
    step, batches : callable, optional
        Replace ``model.train_step`` and :func:`fastbp.data.iterate_minibatches` (same
        signatures); ``fastbp.distributed`` passes its data-parallel step and sharded batches.

    Returns
    -------
    list of EpochStats
    """
    step = step or model.train_step
    batches = batches or data.iterate_minibatches
    history = []
    n = len(ds.y_train)
    steps = math.ceil(n / batch_size)
    for epoch in range(1, epochs + 1):
        bar = _progress_bar(steps, f"epoch {epoch}/{epochs}")
        start = time.perf_counter()
        running, seen = 0.0, 0  # the bar shows the epoch's mean minibatch loss so far
        try:
            for xb, yb in batches(ds.X_train, ds.y_train, batch_size, seed=rng):
                loss = step(xb, yb, model.criterion, optimizer)
                if bar is not None:
                    running, seen = running + loss * len(yb), seen + len(yb)
                    bar.set_postfix(loss=f"{running / seen:.4f}", refresh=False)
                    bar.update()
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - start
        train_loss, train_acc = model.evaluate(ds.X_train, ds.y_train)
        val_loss, val_acc = (model.evaluate(ds.X_val, ds.y_val) if len(ds.y_val)
                             else (math.nan, math.nan))
        stats = EpochStats(epoch, train_loss, train_acc, val_loss, val_acc, seconds,
                           n / seconds if seconds > 0 else math.inf)
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
    return history
