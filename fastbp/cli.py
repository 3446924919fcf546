"""The ``fastbp`` command line: ``train``, ``evaluate``, ``predict``, ``info`` and ``bench``.

Design
------
a. One subcommand per task, registered in :data:`COMMANDS` as name -> ``Command(help,
   add_arguments, run)``; :func:`main` builds the parser from that table.  Adding a command
   (``fastbp bench``) is two functions and one entry.  Options shared by every command that
   runs the kernels (``--threads``, ``--backend``) come from :func:`add_runtime_arguments`.
b. Errors.  Every option value is converted and range-checked by its ``type=`` function, so a
   bad value is an argparse usage error: exit 2.  Failures the user can fix at run time (a
   missing directory or file, a model that does not fit the data, an optional extra that is not
   installed, an unwritable output) raise :class:`CommandError`: exit 1.  Both print one line,
   ``fastbp: error: ...``, on stderr, with no traceback; so does a MemoryError (a network too
   large for this machine), exit 1; any other exception is a bug and keeps its traceback.
   Ctrl-C prints ``fastbp: interrupted`` and exits 130.
c. Data sets are a pure function of the ``--data`` spec: the spirals are drawn and every split
   is made with the fixed :data:`SPLIT_SEED` (stratified), so ``evaluate`` and ``predict`` see
   exactly the test split that ``train`` reported, and ``--seed`` changes only the initial
   weights and the minibatch order.
d. Output: results (the epoch table, accuracy lines, predictions) go to stdout, one flushed line
   at a time; the progress bar (tqdm, only when installed and stderr is a terminal) and errors
   go to stderr.  The same options, seed and thread count give the same model, bit for bit, and
   the same table (the time and samples/s columns aside).
e. Training uses ``Sequential.train_step`` (the fused path) for every step; the epoch's train
   and validation loss / accuracy are measured after the epoch with ``Sequential.evaluate``,
   outside the timed part.
"""

import argparse
import csv
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from . import __version__, data, nn, optim
from .io import architecture, load_model, save_model

__all__ = [
    "COMMANDS",
    "Command",
    "CommandError",
    "Dataset",
    "DataSpec",
    "EpochStats",
    "add_runtime_arguments",
    "build_parser",
    "fit",
    "load_dataset",
    "main",
    "plot_curves",
]

#: Seed of the spirals and of every train / validation / test split (see design note c).
SPLIT_SEED = 0
#: Fraction of a data set held out for testing when it has no test set of its own.
TEST_FRACTION = 0.2
#: Points per arm of ``--data spirals`` (three arms, as in the CS231n notebook).
SPIRAL_POINTS = 100


class CommandError(Exception):
    """A failure the user can fix (exit status 1, one line on stderr, no traceback)."""


class Command(NamedTuple):
    """A subcommand: its one-line help, a function adding its options, a function running it.

    ``add_arguments(parser)`` receives the subcommand's ``argparse`` parser; ``run(args)``
    receives the parsed namespace and returns the exit status (0 on success) or raises
    :class:`CommandError`.
    """

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# ------------------------------------------------------------------------- option value types


def _parse(text, convert, what):
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_int(text):
    """argparse type: an integer >= 1."""
    value = _parse(text, int, "an integer >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def nonnegative_int(text):
    """argparse type: an integer >= 0."""
    value = _parse(text, int, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def positive_float(text):
    """argparse type: a finite number > 0."""
    value = _parse(text, float, "a number > 0")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def fraction(text):
    """argparse type: a number in [0, 1)."""
    value = _parse(text, float, "a number in [0, 1)")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def hidden_sizes(text):
    """argparse type: comma-separated hidden layer widths (``"256,128"``); ``"none"`` for none."""
    if text.strip().lower() == "none":
        return ()
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers >= 1 such as 256,128 (or 'none'), got {text!r}")
    return sizes


@dataclass(frozen=True)
class DataSpec:
    """A parsed ``--data`` value: ``kind`` (a key of :data:`DATASETS`) and its argument."""

    kind: str
    arg: str = ""

    def __str__(self):
        return f"{self.kind}:{self.arg}" if self.arg else self.kind


def data_spec(text):
    """argparse type: ``digits``, ``spirals`` or ``mnist:DIR``."""
    kind, sep, arg = text.partition(":")
    if kind not in DATASETS:
        raise argparse.ArgumentTypeError(
            f"expected one of digits, spirals, mnist:DIR, got {text!r}")
    needs_dir = kind == "mnist"
    if needs_dir and not arg:
        raise argparse.ArgumentTypeError("mnist needs a directory: --data mnist:DIR")
    if not needs_dir and sep:
        raise argparse.ArgumentTypeError(f"{kind} takes no argument, got {text!r}")
    return DataSpec(kind, arg)


# ------------------------------------------------------------------------------------ data


@dataclass
class Dataset:
    """A data set split three ways (``X_val``/``y_val`` hold 0 rows without validation).

    ``X_*`` are C-contiguous float arrays of the requested dtype, ``y_*`` int64 labels in
    ``[0, n_classes)``; ``note`` is one line saying where the data came from and how it was split.
    """

    spec: DataSpec
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    note: str

    @property
    def n_features(self):
        return self.X_train.shape[1]

    @property
    def n_classes(self):
        return int(max(self.y_train.max(), self.y_test.max())) + 1


def _split(X, y, test_size):
    return data.train_test_split(X, y, test_size=test_size, seed=SPLIT_SEED, stratify=True)


def _digits(spec):
    X, y = data.load_digits()
    X_train, X_test, y_train, y_test = _split(X, y, TEST_FRACTION)
    return X_train, y_train, X_test, y_test, (
        f"bundled 8x8 digits, {len(y):,} images, {TEST_FRACTION:.0%} held out for test")


def _spirals(spec):
    X, y = data.make_spirals(SPIRAL_POINTS, 3, seed=SPLIT_SEED)
    X_train, X_test, y_train, y_test = _split(X, y, TEST_FRACTION)
    return X_train, y_train, X_test, y_test, (
        f"3 spiral arms of {SPIRAL_POINTS} points, {TEST_FRACTION:.0%} held out for test")


def _mnist_has_train(directory):
    stem = os.path.join(directory, "train-images-idx3-ubyte")
    return os.path.isfile(stem) or os.path.isfile(stem + ".gz")


def _mnist(spec):
    directory = spec.arg
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: MNIST directory not found (or not a directory)")
    if _mnist_has_train(directory):
        X_train, y_train = data.load_mnist(directory, "train")
        X_test, y_test = data.load_mnist(directory, "t10k")
        return X_train, y_train, X_test, y_test, "MNIST train images for training, t10k for test"
    X, y = data.load_mnist(directory, "t10k")
    X_train, X_test, y_train, y_test = _split(X, y, TEST_FRACTION)
    return X_train, y_train, X_test, y_test, (
        f"no train images in {directory}: the {len(y):,} t10k images split "
        f"{len(y_train):,} train / {len(y_test):,} test")


#: --data kind -> loader(spec) returning (X_train, y_train, X_test, y_test, note)
DATASETS = {"digits": _digits, "spirals": _spirals, "mnist": _mnist}
_DATA_METAVAR = "{digits,spirals,mnist:DIR}"


def load_dataset(spec, val_fraction=0.0, dtype=np.float32):
    """Load and split the data set that `spec` names.

    Parameters
    ----------
    spec : DataSpec
    val_fraction : float in [0, 1), default 0
        Share of the training part held out (stratified, :data:`SPLIT_SEED`) for validation.
    dtype : {np.float32, np.float64}
        dtype of the returned samples.

    Returns
    -------
    Dataset

    Raises
    ------
    CommandError
        If files are missing or malformed (the message names them), or `val_fraction` leaves
        too few samples to split.
    """
    try:
        X_train, y_train, X_test, y_test, note = DATASETS[spec.kind](spec)
        if val_fraction > 0:
            X_train, X_val, y_train, y_val = _split(X_train, y_train, val_fraction)
        else:
            X_val, y_val = X_train[:0], y_train[:0]
    except (OSError, ValueError) as e:
        raise CommandError(f"--data {spec}: {e}") from None
    arrays = [np.ascontiguousarray(a, dtype) for a in (X_train, X_val, X_test)]
    labels = [np.ascontiguousarray(a, np.int64) for a in (y_train, y_val, y_test)]
    return Dataset(spec, arrays[0], labels[0], arrays[1], labels[1], arrays[2], labels[2],
                   f"{spec}: {note}")


def _split_line(ds):
    return (f"{len(ds.y_train):,} train / {len(ds.y_val):,} val / {len(ds.y_test):,} test, "
            f"{ds.n_features} features, {ds.n_classes} classes")


# ---------------------------------------------------------------------------------- training


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


def fit(model, ds, optimizer, epochs, batch_size, rng, on_epoch=None):
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

    Returns
    -------
    list of EpochStats
    """
    history = []
    n = len(ds.y_train)
    steps = math.ceil(n / batch_size)
    for epoch in range(1, epochs + 1):
        bar = _progress_bar(steps, f"epoch {epoch}/{epochs}")
        start = time.perf_counter()
        running, seen = 0.0, 0  # the bar shows the epoch's mean minibatch loss so far
        try:
            for xb, yb in data.iterate_minibatches(ds.X_train, ds.y_train, batch_size, seed=rng):
                loss = model.train_step(xb, yb, model.criterion, optimizer)
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


#: (header, width, format) of each table column, in EpochStats order
_COLUMNS = (("epoch", 5, "{:d}"), ("train loss", 10, "{:.4f}"), ("train acc", 9, "{:.2%}"),
            ("val loss", 8, "{:.4f}"), ("val acc", 7, "{:.2%}"), ("time (s)", 8, "{:.2f}"),
            ("samples/s", 9, "{:,.0f}"))


def _table_header():
    return "  ".join(f"{title:>{width}}" for title, width, _ in _COLUMNS)


def _table_row(stats):
    cells = []
    for value, (_, width, fmt) in zip(stats, _COLUMNS):
        text = "-" if isinstance(value, float) and math.isnan(value) else fmt.format(value)
        cells.append(f"{text:>{width}}")
    return "  ".join(cells)


def _describe(arch):
    return (f"{'-'.join(map(str, arch['sizes']))} MLP ({arch['activation']}, "
            f"{arch['loss']} loss, {arch['dtype']})")


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
    CommandError
        If matplotlib is not installed or the file cannot be written.
    """
    Figure = _matplotlib_figure()
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
    try:
        fig.savefig(path, dpi=120)
    except (OSError, ValueError) as e:
        raise CommandError(f"--plot {path}: {e}") from None


def _matplotlib_figure():
    try:
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
    except ImportError:
        raise CommandError("--plot needs matplotlib: pip install 'fastbp[plot]'") from None
    return Figure


def _check_writable(path, option):
    """Fail before training, not after, when `path`'s directory does not exist."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise CommandError(f"{option} {path}: directory {directory} does not exist")


# ---------------------------------------------------------------------------------- commands


def add_runtime_arguments(parser):
    """Add ``--threads`` and ``--backend`` (for every command that runs the kernels)."""
    group = parser.add_argument_group("runtime")
    group.add_argument("--threads", type=positive_int, metavar="N",
                       help="threads for fastbp's kernels and BLAS (default: what OpenMP "
                            "reports, capped at the usable cores)")
    group.add_argument("--backend", choices=("compiled", "numpy", "checked"), default="compiled",
                       help="kernel implementation (default: %(default)s)")


def _apply_runtime(args):
    from . import get_num_threads, set_backend, set_num_threads

    set_backend(args.backend)
    if args.threads is not None:
        set_num_threads(args.threads)
    n = get_num_threads()
    return f"{n} thread{'s' if n > 1 else ''}, {args.backend} backend"


def _add_train_arguments(p):
    p.add_argument("--data", type=data_spec, default=DataSpec("digits"), metavar=_DATA_METAVAR,
                   help="digits (bundled, default), spirals, or mnist:DIR (IDX files; without "
                        "train images, the t10k images are split 80/20)")
    p.add_argument("--val-fraction", type=fraction, default=0.1, metavar="F",
                   help="share of the training part held out for validation (default: "
                        "%(default)s; 0 for none)")
    model = p.add_argument_group("model")
    model.add_argument("--hidden", type=hidden_sizes, default=(256, 128), metavar="SIZES",
                       help="hidden layer widths, comma-separated (default: 256,128)")
    model.add_argument("--activation", choices=sorted(nn.ACTIVATIONS), default="relu",
                       help="hidden activation (default: %(default)s)")
    model.add_argument("--loss", choices=("softmax", "svm"), default="softmax",
                       help="softmax cross-entropy or multiclass hinge (default: %(default)s)")
    model.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                       help="parameter and data dtype (default: %(default)s)")
    training = p.add_argument_group("training")
    training.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="adam",
                          help="momentum is SGD with momentum 0.9 (default: %(default)s)")
    training.add_argument("--lr", type=positive_float, metavar="LR",
                          help="learning rate (default: " + ", ".join(
                              f"{lr:g} for {name}" for name, (_, lr) in OPTIMIZERS.items()) + ")")
    training.add_argument("--epochs", type=positive_int, default=30, metavar="N",
                          help="passes over the training part (default: %(default)s)")
    training.add_argument("--batch-size", type=positive_int, default=32, metavar="N",
                          help="minibatch size (default: %(default)s)")
    training.add_argument("--seed", type=nonnegative_int, default=0, metavar="N",
                          help="seed of the initial weights and the minibatch order (default: "
                               "%(default)s); the data splits are fixed")
    output = p.add_argument_group("output")
    output.add_argument("--save", metavar="PATH",
                        help="write the trained model (parameters + architecture) as .npz")
    output.add_argument("--plot", metavar="PATH",
                        help="save loss/accuracy curves as an image (needs matplotlib)")
    add_runtime_arguments(p)


def _run_train(args):
    if args.plot:
        _matplotlib_figure()
        _check_writable(args.plot, "--plot")
    if args.save:
        _check_writable(args.save, "--save")
    runtime = _apply_runtime(args)
    dtype = np.dtype(args.dtype)
    ds = load_dataset(args.data, args.val_fraction, dtype)
    factory, default_lr = OPTIMIZERS[args.optimizer]
    lr = default_lr if args.lr is None else args.lr
    rng = np.random.default_rng(args.seed)
    model = nn.MLP([ds.n_features, *args.hidden, ds.n_classes], activation=args.activation,
                   loss=args.loss, dtype=dtype, rng=rng)
    optimizer = factory(lr)
    arch = architecture(model)
    config = (f"{args.optimizer} lr={lr:g}, batch {args.batch_size}, {args.epochs} epochs, "
              f"seed {args.seed}")

    print(f"fastbp {__version__} | {runtime}")
    print(f"data:  {ds.note}")
    print(f"       {_split_line(ds)}")
    print(f"model: {_describe(arch)} | {config}", flush=True)
    print(_table_header(), flush=True)
    history = fit(model, ds, optimizer, args.epochs, args.batch_size, rng,
                  on_epoch=lambda s: print(_table_row(s), flush=True))
    test_loss, test_acc = model.evaluate(ds.X_test, ds.y_test)
    n_test = len(ds.y_test)
    seconds = sum(s.seconds for s in history)
    samples = len(ds.y_train) * args.epochs
    print(f"test accuracy: {test_acc:.2%} ({round(test_acc * n_test):,}/{n_test:,}), "
          f"test loss {test_loss:.4f} | trained in {seconds:.2f} s "
          f"({samples / seconds if seconds > 0 else math.inf:,.0f} samples/s)", flush=True)

    if args.save:
        meta = {"data": str(args.data), "train": {
            "optimizer": args.optimizer, "lr": lr, "epochs": args.epochs,
            "batch_size": args.batch_size, "seed": args.seed, "val_fraction": args.val_fraction,
            "test_loss": test_loss, "test_accuracy": test_acc, "fastbp": __version__}}
        try:
            save_model(args.save, model, meta)
        except OSError as e:
            raise CommandError(f"--save {args.save}: {e.strerror or e}") from None
        print(f"saved model to {args.save}")
    if args.plot:
        title = f"fastbp: {args.data}, {_describe(arch)}\n{config}"
        plot_curves(history, args.plot, title, test_acc)
        print(f"saved curves to {args.plot}")
    return 0


def _add_model_arguments(p):
    p.add_argument("model", metavar="MODEL.npz", help="a model written by 'fastbp train --save'")
    p.add_argument("--data", type=data_spec, metavar=_DATA_METAVAR,
                   help="digits, spirals or mnist:DIR; its test split is used (default: the "
                        "data the model was trained on)")
    add_runtime_arguments(p)


def _load_for(args):
    """(model, meta, Dataset) for evaluate / predict, after checking that they fit."""
    try:
        model, meta = load_model(args.model)
    except (OSError, ValueError) as e:
        raise CommandError(str(e)) from None
    arch = meta["architecture"]
    if arch["loss"] not in ("softmax", "svm"):
        raise CommandError(f"{args.model} is a {arch['loss']} (regression) model; evaluate and "
                           "predict handle classifiers (softmax or svm loss)")
    spec = args.data
    if spec is None:
        if "data" not in meta:
            raise CommandError(f"{args.model} does not record its training data: pass --data")
        try:
            spec = data_spec(str(meta["data"]))
        except argparse.ArgumentTypeError as e:
            raise CommandError(f"{args.model} records its data as {meta['data']!r}: {e}") from None
    ds = load_dataset(spec, 0.0, np.dtype(arch["dtype"]))
    n_in, n_out = arch["sizes"][0], arch["sizes"][-1]
    if ds.n_features != n_in:
        raise CommandError(f"{args.model} expects {n_in} features but --data {spec} has "
                           f"{ds.n_features}")
    if ds.n_classes > n_out:
        raise CommandError(f"{args.model} predicts {n_out} classes but --data {spec} has "
                           f"labels up to {ds.n_classes - 1}")
    return model, meta, ds


def _run_evaluate(args):
    runtime = _apply_runtime(args)
    model, meta, ds = _load_for(args)
    loss, acc = model.evaluate(ds.X_test, ds.y_test)
    n = len(ds.y_test)
    print(f"model: {args.model}: {_describe(meta['architecture'])}")
    print(f"data:  {ds.note} | {runtime}")
    print(f"test accuracy: {acc:.2%} ({round(acc * n):,}/{n:,}), test loss "
          f"{loss:.4f} ({meta['architecture']['loss']})")
    return 0


def _add_predict_arguments(p):
    _add_model_arguments(p)
    p.add_argument("--limit", type=positive_int, metavar="N",
                   help="predict only the first N test samples")
    p.add_argument("--proba", action="store_true",
                   help="add the softmax probability of each class (p0, p1, ...)")
    p.add_argument("--output", metavar="PATH",
                   help="write the CSV here instead of printing it")


def _run_predict(args):
    if args.output:
        _check_writable(args.output, "--output")
    _apply_runtime(args)
    model, meta, ds = _load_for(args)
    X, y = ds.X_test[:args.limit], ds.y_test[:args.limit]
    predicted = model.predict(X)
    header = ["index", "label", "predicted"]
    columns = [np.arange(len(y)), y, predicted]
    if args.proba:
        proba = model.predict_proba(X)
        header += [f"p{k}" for k in range(proba.shape[1])]
        columns += [np.char.mod("%.6f", p) for p in proba.T]
    rows = zip(*columns)
    if not args.output:
        _write_csv(sys.stdout, header, rows)
        return 0
    try:
        with open(args.output, "w", newline="") as f:
            _write_csv(f, header, rows)
    except OSError as e:
        raise CommandError(f"--output {args.output}: {e.strerror or e}") from None
    correct = int(np.count_nonzero(predicted == y))
    print(f"wrote {len(y):,} predictions ({correct:,} correct) to {args.output}")
    return 0


def _write_csv(f, header, rows):
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)


def _add_info_arguments(p):
    """info takes no options."""


def _run_info(args):
    from . import show_config

    show_config()
    return 0


def _add_bench_arguments(p):
    from . import bench

    p.add_argument("--quick", action="store_true",
                   help="two small shapes and short timings (a smoke run of a few seconds)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="dtype of every implementation (default: %(default)s)")
    p.add_argument("--only", type=_implementations(bench.IMPLEMENTATIONS), metavar="NAMES",
                   default=tuple(bench.IMPLEMENTATIONS),
                   help=f"comma list of implementations (default: all of "
                        f"{','.join(bench.IMPLEMENTATIONS)}; missing extras are skipped)")
    p.add_argument("--min-time", type=positive_float, default=None, metavar="SECONDS",
                   help="timing budget per row (default: 1.0, or 0.1 with --quick)")
    p.add_argument("--rounds", type=positive_int, default=5, metavar="N",
                   help="interleaved rounds per shape; times and ratios are medians over them "
                        "(default: %(default)s)")
    p.add_argument("--json", metavar="FILE", help="also write the rows and the machine as JSON")
    p.add_argument("--plot", metavar="FILE", help="bar chart of the speedups (needs matplotlib)")
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="threads for every implementation (default: all usable cores)")


def _implementations(known):
    def parse(text):
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        unknown = [n for n in names if n not in known]
        if not names or unknown:
            raise argparse.ArgumentTypeError(
                f"expected a comma list of {', '.join(known)}, got {text!r}")
        return names
    return parse


#: the shapes of ``fastbp bench --quick``: per-call overhead and a small real network
QUICK_SHAPES = [((8, 8, 8, 10), (8,)), ((784, 100, 10), (64,))]


def _run_bench(args):
    from . import _config, bench

    for path, option in ((args.json, "--json"), (args.plot, "--plot")):
        if path:
            _check_writable(path, option)
    if args.plot:
        _matplotlib_figure()
    shapes = QUICK_SHAPES if args.quick else bench.STEP_SHAPES
    min_time = args.min_time or (0.1 if args.quick else 1.0)
    config = _config.config()
    print(f"fastbp {__version__} bench: one SGD-momentum step per row, {args.dtype}; "
          f"implementations interleaved over {args.rounds} rounds, >= {min_time:g} s per row; "
          f"medians", flush=True)
    print(f"machine: {config['platform']}, {config['usable cores']} usable cores; "
          f"BLAS: {'; '.join(config['blas']) or 'unknown'}", flush=True)
    rows = bench.compare(shapes, args.only, np.dtype(args.dtype), args.threads, min_time,
                         args.rounds)
    print(f"threads: {rows[0]['threads'] if rows else '?'} for every implementation")
    print(bench.format_table(rows))
    print("vs numpy / vs torch: speedup over the course-style NumPy step / PyTorch eager "
          "(higher is better); / gemms: step time over its GEMMs alone (1.00 is the floor)")
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump({"fastbp": __version__, "machine": config, "rows": rows}, f, indent=1,
                      default=str)
    if args.plot:
        _plot_bench(rows, args.plot, f"fastbp {__version__}: training step speed, {args.dtype}, "
                    f"{rows[0]['threads'] if rows else '?'} threads")
    return 0


def _plot_bench(rows, path, title):
    """Grouped bars: speedup over the course-style NumPy step, per shape and implementation."""
    Figure = _matplotlib_figure()
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
    try:
        fig.savefig(path, dpi=120)
    except (OSError, ValueError) as e:
        raise CommandError(f"--plot {path}: {e}") from None


#: subcommand name -> Command; ``fastbp <name> --help`` lists each one's options
COMMANDS = {
    "train": Command("train an MLP (default: the bundled digits, offline)",
                     _add_train_arguments, _run_train),
    "evaluate": Command("loss and accuracy of a saved model on a data set's test split",
                        _add_model_arguments, _run_evaluate),
    "predict": Command("predicted labels (CSV) of a saved model on a test split",
                       _add_predict_arguments, _run_predict),
    "info": Command("version, OpenMP build, threads, backend and BLAS",
                    _add_info_arguments, _run_info),
    "bench": Command("time one training step of fastbp against NumPy, PyTorch and scikit-learn",
                     _add_bench_arguments, _run_bench),
}


# ------------------------------------------------------------------------------------- main


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``fastbp: error: ... (see 'fastbp train --help')``."""

    def error(self, message):
        self.exit(2, f"fastbp: error: {message} (see '{self.prog} --help')\n")


def build_parser():
    """The ``fastbp`` argument parser, one subparser per entry of :data:`COMMANDS`.

    Returns
    -------
    argparse.ArgumentParser
        With a ``subcommands`` attribute: name -> that command's parser.
    """
    parser = _Parser(prog="fastbp", description="Train and run MLPs with fastbp's compiled "
                     "backpropagation core.")
    parser.add_argument("--version", action="version", version=f"fastbp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.subcommands = {}
    for name, command in COMMANDS.items():
        parser.subcommands[name] = sub.add_parser(name, help=command.help,
                                                  description=command.help)
        command.add_arguments(parser.subcommands[name])
    return parser


def _parse_args(parser, argv):
    """parse_args, but an unknown option is reported by the subcommand's parser (its --help)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        parser.subcommands.get(args.command, parser).error(
            f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv=None):
    """Run the ``fastbp`` command line; returns the exit status.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 1 for a runtime error, 2 for a usage error (argparse exits with 2 and
        ``--help`` / ``--version`` with 0 by raising SystemExit), 130 after Ctrl-C.
    """
    parser = build_parser()
    args = _parse_args(parser, argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command].run(args)
    except CommandError as e:
        print(f"fastbp: error: {e}", file=sys.stderr)
        return 1
    except MemoryError as e:
        # e.g. --hidden 10000000000: NumPy says how much it could not allocate
        print(f"fastbp: error: out of memory: {e or 'an allocation failed'} (try smaller "
              "--hidden sizes or --batch-size)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nfastbp: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (fastbp predict ... | head): stop quietly, as cat does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
