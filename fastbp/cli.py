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
c. Data sets are a pure function of the ``--data`` spec (fastbp.data.load_dataset: every
   split stratified with the fixed ``SPLIT_SEED``), so ``evaluate`` and ``predict`` see exactly
   the test split that ``train`` reported, and ``--seed`` changes only the initial weights and
   the minibatch order.
d. Output: results (the epoch table, accuracy lines, predictions) go to stdout, one flushed line
   at a time; the progress bar (tqdm, only when installed and stderr is a terminal) and errors
   go to stderr.  The same options, seed and thread count give the same model, bit for bit, and
   the same table (the time and samples/s columns aside).
e. Training uses ``Sequential.train_step`` (the fused path) for every step; the epoch's train
   and validation loss / accuracy are measured after the epoch with ``Sequential.evaluate``,
   outside the timed part.
f. This module only parses and prints: data sets live in fastbp.data, the epoch loop in
   fastbp.training (shared by any front end), figures in fastbp.plot; their ValueError /
   ImportError become :class:`CommandError` here.
"""

import argparse
import csv
import math
import os
import sys
from typing import Callable, NamedTuple

import numpy as np

from . import __version__, data, nn, plot
from ._specs import CLASSIFICATION_LOSSES
from .backend import BACKENDS
from .data import DATASETS, Dataset, DataSpec
from .io import architecture, load_model, save_model
from .training import OPTIMIZERS, EpochStats, fit

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


# ------------------------------------------------------- data, plots: library errors -> CommandError

_DATA_METAVAR = "{digits,spirals,mnist:DIR}"


def load_dataset(spec, val_fraction=0.0, dtype=np.float32):
    """:func:`fastbp.data.load_dataset`, its errors as :class:`CommandError` (``--data ...``)."""
    try:
        return data.load_dataset(spec, val_fraction, dtype)
    except ValueError as e:
        raise CommandError(f"--data {e}") from None


def _split_line(ds):
    return data.describe_split(ds)


def _matplotlib_figure():
    try:
        return plot.require_matplotlib()
    except ImportError:
        raise CommandError("--plot needs matplotlib: pip install 'fastbp[plot]'") from None


def plot_curves(history, path, title, test_acc=None):
    """:func:`fastbp.plot.plot_curves`, its errors as :class:`CommandError` (``--plot ...``)."""
    _matplotlib_figure()
    try:
        plot.plot_curves(history, path, title, test_acc)
    except ValueError as e:
        raise CommandError(f"--plot {e}") from None


def _plot_bench(rows, path, title):
    _matplotlib_figure()
    try:
        plot.plot_bench(rows, path, title)
    except ValueError as e:
        raise CommandError(f"--plot {e}") from None


# ------------------------------------------------------------------------------------ printing


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
    norm = f", {arch['norm']} norm" if arch.get("norm") else ""
    return (f"{'-'.join(map(str, arch['sizes']))} MLP ({arch['activation']}{norm}, "
            f"{arch['loss']} loss, {arch['dtype']})")


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
    group.add_argument("--backend", choices=BACKENDS, default="compiled",
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
    model.add_argument("--loss", choices=CLASSIFICATION_LOSSES, default="softmax",
                       help="softmax cross-entropy or multiclass hinge (default: %(default)s)")
    model.add_argument("--norm", choices=sorted(nn.NORMS), default=None,
                       help="batch or layer normalization before each hidden activation "
                            "(default: none)")
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
    training.add_argument("--distributed", action="store_true",
                          help="data-parallel over MPI, run as 'mpiexec -n K fastbp train ... "
                               "--distributed' (needs fastbp[mpi]); --batch-size is global")
    output = p.add_argument_group("output")
    output.add_argument("--save", metavar="PATH",
                        help="write the trained model (parameters + architecture) as .npz")
    output.add_argument("--plot", metavar="PATH",
                        help="save loss/accuracy curves as an image (needs matplotlib)")
    add_runtime_arguments(p)


def _run_train(args, parallel=None):
    if args.distributed and parallel is None:  # every rank runs this; see fastbp.distributed
        try:
            from .distributed import train_command
        except ImportError as e:
            raise CommandError(f"--distributed: {e}") from None
        return train_command(args, _run_train, brief=(CommandError,))
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
    if args.norm == "batch" and len(ds.y_train) % args.batch_size == 1:
        raise CommandError(f"--norm batch: the last minibatch of each epoch would hold one "
                           f"sample ({len(ds.y_train)} training samples, --batch-size "
                           f"{args.batch_size}), whose batch variance is undefined; choose "
                           f"another --batch-size")
    model = nn.MLP([ds.n_features, *args.hidden, ds.n_classes], activation=args.activation,
                   loss=args.loss, dtype=dtype, rng=rng, norm=args.norm)
    optimizer = factory(lr)
    loop = parallel(model, optimizer) if parallel else {}  # fit's step / batches hooks
    arch = architecture(model)
    config = (f"{args.optimizer} lr={lr:g}, batch {args.batch_size}, {args.epochs} epochs, "
              f"seed {args.seed}")

    print(f"fastbp {__version__} | {runtime}")
    print(f"data:  {ds.note}")
    print(f"       {_split_line(ds)}")
    print(f"model: {_describe(arch)} | {config}", flush=True)
    print(_table_header(), flush=True)
    history = fit(model, ds, optimizer, args.epochs, args.batch_size, rng,
                  on_epoch=lambda s: print(_table_row(s), flush=True), **loop)
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
    if arch["loss"] not in CLASSIFICATION_LOSSES:
        raise CommandError(f"{args.model} is a {arch['loss']} (regression) model; evaluate and "
                           f"predict handle classifiers ({' or '.join(CLASSIFICATION_LOSSES)} "
                           "loss)")
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
    p.add_argument("--markdown", action="store_true",
                   help="print the README Performance tables (Markdown) instead of plain text")


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
    print(f"fastbp {__version__} bench: one SGD-momentum step per row, {args.dtype}; each "
          f"implementation in its own process, alternating over {args.rounds} rounds, "
          f">= {min_time:g} s per row; medians", flush=True)
    print(f"machine: {config['platform']}, {config['usable cores']} usable cores; "
          f"BLAS route: {config['blas route']}", flush=True)
    rows = bench.compare(shapes, args.only, np.dtype(args.dtype), args.threads, min_time,
                         args.rounds)
    print(f"threads: {rows[0]['threads'] if rows else '?'} for every implementation")
    print(bench.format_markdown(rows) if args.markdown else bench.format_table(rows))
    print("vs numpy / vs torch: speedup over the course-style NumPy step / PyTorch eager "
          "(higher is better); / gemms, / floor: step time over its GEMMs alone, over its GEMMs "
          "plus the update's memory pass (1.00 is the floor); slowdown: after / alone")
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump({"fastbp": __version__, "machine": config, "rows": rows}, f, indent=1,
                      default=str)
    if args.plot:
        _plot_bench(rows, args.plot, f"fastbp {__version__}: training step speed, {args.dtype}, "
                    f"{rows[0]['threads'] if rows else '?'} threads")
    return 0


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
