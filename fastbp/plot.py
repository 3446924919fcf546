"""Figures of training curves and benchmark rows (matplotlib, an optional extra).

matplotlib is imported only when a figure is drawn (``import fastbp`` never imports it), through
the object-oriented ``Figure`` API: no pyplot, no GUI backend, no global state.
"""

import math

__all__ = ["plot_bench", "plot_curves", "require_matplotlib"]


def plot_curves(history, path, title, test_acc=None):
    """Save loss and accuracy curves per epoch to an image file with matplotlib.

    Parameters
    ----------
    history : list of EpochStats
    path : str
        Output file; the format follows its extension (``.png``, ``.pdf``, ``.svg``).
    title : str
        Figure title (the CLI puts the configuration there).
    test_acc : float, optional
        Drawn as a dashed horizontal line on the accuracy panel.

    Raises
    ------
    ImportError
        If matplotlib is not installed (:func:`require_matplotlib`).
    ValueError
        If the file cannot be written (the message starts with the path).
    """
    Figure = require_matplotlib()
    epochs = [s.epoch for s in history]
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, [s.train_loss for s in history], "o-", ms=3, label="train")
    acc_ax.plot(epochs, [100 * s.train_acc for s in history], "o-", ms=3, label="train")
    if not math.isnan(history[0].val_loss):
        loss_ax.plot(epochs, [s.val_loss for s in history], "s-", ms=3, label="validation")
        acc_ax.plot(epochs, [100 * s.val_acc for s in history], "s-", ms=3, label="validation")
    if test_acc is not None:
        acc_ax.axhline(100 * test_acc, color="0.3", ls="--", lw=1,
                       label=f"test ({test_acc:.2%})")
    positive = all(s.train_loss > 0 for s in history)  # a hinge loss can reach 0
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Loss", yscale="log" if positive else "linear")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(True, alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title)
    _save(fig, path)


def require_matplotlib():
    """matplotlib's ``Figure`` class (no pyplot: no GUI backend, no global state).

    Raises
    ------
    ImportError
        If matplotlib is not installed (``pip install 'fastbp[plot]'``).
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'fastbp[plot]'") from None
    return Figure


def _save(fig, path):
    try:
        fig.savefig(path, dpi=120)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


def plot_bench(rows, path, title):
    """Grouped bars: speedup over the course-style NumPy step, per shape and implementation
    (the rows of ``fastbp.bench.compare``); raises as :func:`plot_curves` does."""
    Figure = require_matplotlib()
    groups = list(dict.fromkeys(f"{r['sizes']}\nbatch {r['batch']}" for r in rows))
    names = list(dict.fromkeys(r["implementation"] for r in rows))
    fig = Figure(figsize=(max(7, 1.6 * len(groups) + 2), 4.8), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(len(names), 1)
    for k, name in enumerate(names):
        xs, ys = [], []
        for g, group in enumerate(groups):
            for r in rows:
                if r["implementation"] == name and f"{r['sizes']}\nbatch {r['batch']}" == group \
                        and "speedup_vs_course-numpy" in r:
                    xs.append(g + (k - (len(names) - 1) / 2) * width)
                    ys.append(r["speedup_vs_course-numpy"])
        ax.bar(xs, ys, width, label=name)
    ax.axhline(1.0, color="0.3", lw=1, ls="--")
    ax.set_yscale("log")
    ax.set_xticks(range(len(groups)), groups)
    ax.set(ylabel="speedup over course-style NumPy (log scale)", xlabel="network and batch",
           title=title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(ncols=min(4, len(names)), fontsize="small")
    _save(fig, path)
