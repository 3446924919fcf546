"""Datasets and batching: MNIST IDX files, the bundled 8x8 digits, spirals; splits and minibatches.

Design
------
a. Pure Python/NumPy. Nothing here imports fastbp's kernels, layers or backend, so the loaders
   work (and are tested) even where the compiled core is not built.
b. Loaders validate before they return. A file that is missing raises FileNotFoundError; a file
   that is present but wrong (bad magic number, truncated or over-long payload, corrupt gzip
   stream, bad dimensions, labels that disagree with the images or exceed 9) raises ValueError
   whose message starts with the file's path and says what is wrong. No garbage array escapes.
c. IDX files are read in 1 MiB chunks up to the byte count the header declares, so a corrupt
   header that claims terabytes fails as "truncated" instead of attempting a huge allocation.
   Gzip is recognised by content (the 1f 8b magic), not by file name; IDX magic numbers start
   with two zero bytes, so the two cannot be confused.
d. dtypes: MNIST images -> float32 in [0, 1] (``uint8 / 255``, the rounding of the course's
   ``astype(np.float32) / 255.0``), MNIST labels stay uint8 as stored; digits -> float32 in
   [0, 1] (``value / 16``, exact) with int64 labels; spirals -> float64 with int64 labels, as the
   CS231n notebook builds them.
e. Randomness: every random function takes ``seed``, passed to ``np.random.default_rng``: None
   (fresh entropy), an int (reproducible; the same int gives the same draw every call) or a
   ``np.random.Generator`` (used as is and advanced, so one Generator created before the
   training loop gives a different, reproducible shuffle every epoch).
f. Splits return copies; minibatches are views when ``shuffle=False`` and copies otherwise.
"""

import gzip
import math
import numbers
import os
import struct
import zlib
from dataclasses import dataclass
from importlib import resources

import numpy as np

from . import _validation as val

__all__ = [
    "DATASETS",
    "Dataset",
    "DataSpec",
    "describe_split",
    "iterate_minibatches",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "make_spirals",
    "read_idx",
    "train_test_split",
]

MNIST_IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions (count, rows, cols)
MNIST_LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension (count)
_MAGIC_NAMES = {
    MNIST_IMAGES_MAGIC: "an IDX images file",
    MNIST_LABELS_MAGIC: "an IDX labels file",
}
_IDX_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
_MNIST_KINDS = ("train", "t10k")
_MNIST_SIDE = 28


# --------------------------------------------------------------------------------------------
# IDX / MNIST


def read_idx(filename, magic=None):
    """Read an IDX file of unsigned bytes (gzipped or not) into an array of the header's shape.

    Parameters
    ----------
    filename : str or os.PathLike
        Path of the file. Gzip compression is detected from the content, whatever the name.
    magic : int, optional
        The magic number the header must carry, e.g. 2051 for MNIST images or 2049 for MNIST
        labels. By default any unsigned-byte IDX header (``0x0000 08 nd``, nd >= 1) is accepted.

    Returns
    -------
    ndarray of uint8, shape given by the header
        A new, writable, C-contiguous array holding the payload exactly as stored.

    Raises
    ------
    FileNotFoundError
        If `filename` does not exist.
    ValueError
        If the magic number is wrong or not an unsigned-byte IDX header, the header is
        incomplete, the payload is shorter or longer than the header's shape says, or the gzip
        stream is corrupt. The message starts with `filename`.
    """
    filename = os.fspath(filename)
    with open(filename, "rb") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        if not compressed:
            return _parse_idx(raw, filename, magic)
        try:
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                return _parse_idx(stream, filename, magic)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{filename}: corrupt gzip stream ({exc})") from exc


def _parse_idx(stream, filename, magic):
    """Header, then exactly prod(shape) payload bytes, then end of file."""
    header = _read_up_to(stream, 4)
    if len(header) < 4:
        raise ValueError(f"{filename}: {len(header)} bytes is too short for an IDX header")
    value = int.from_bytes(header, "big")
    if magic is not None and value != magic:
        what = _MAGIC_NAMES.get(value, "not a known IDX magic")
        raise ValueError(
            f"{filename}: bad magic number {value} (0x{value:08x}, {what}); expected {magic} "
            f"(0x{magic:08x}, {_MAGIC_NAMES.get(magic, 'IDX')})"
        )
    if header[:2] != b"\0\0":
        raise ValueError(f"{filename}: not an IDX file (magic number 0x{value:08x})")
    if header[2] != _IDX_UBYTE:
        raise ValueError(
            f"{filename}: IDX type code 0x{header[2]:02x} is not unsigned byte (0x08), "
            "the only type supported"
        )
    ndim = header[3]
    if ndim == 0:
        raise ValueError(f"{filename}: IDX header declares 0 dimensions")
    dims = _read_up_to(stream, 4 * ndim)
    if len(dims) < 4 * ndim:
        raise ValueError(
            f"{filename}: truncated header: {ndim} dimensions need {4 * ndim} bytes after the "
            f"magic number, found {len(dims)}"
        )
    shape = struct.unpack(f">{ndim}I", dims)
    size = math.prod(shape)
    payload = _read_up_to(stream, size)
    if len(payload) < size:
        raise ValueError(
            f"{filename}: truncated: header shape {shape} needs {size} data bytes, "
            f"found {len(payload)}"
        )
    extra = _count_rest(stream)
    if extra:
        raise ValueError(
            f"{filename}: {extra} unexpected bytes after the {size} data bytes of header "
            f"shape {shape}"
        )
    return np.frombuffer(payload, dtype=np.uint8).reshape(shape)


def _read_up_to(stream, n):
    """Up to n bytes from stream (fewer only at end of file), grown one chunk at a time."""
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(min(_CHUNK, n - len(buf)))
        if not chunk:
            break
        buf += chunk
    return buf


def _count_rest(stream):
    """Bytes left in stream (reading to the end also makes gzip verify its CRC and length)."""
    extra = 0
    while chunk := stream.read(_CHUNK):
        extra += len(chunk)
    return extra


def _find_idx(directory, stem):
    """directory/stem, else directory/stem.gz; FileNotFoundError naming both when neither exists."""
    for name in (stem, stem + ".gz"):
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate):
            return candidate
    missing = os.path.join(directory, stem)
    raise FileNotFoundError(f"{missing}[.gz]: MNIST file not found (neither {stem} nor {stem}.gz)")


def load_mnist(path, kind="train"):
    """Load MNIST (or any 28x28 dataset in MNIST's IDX layout) from a directory.

    Reads ``{kind}-images-idx3-ubyte`` and ``{kind}-labels-idx1-ubyte`` from `path`, each either
    uncompressed or gzipped (``.gz``); when both forms exist the uncompressed one is read.

    Parameters
    ----------
    path : str or os.PathLike
        Directory holding the files.
    kind : {"train", "t10k"}
        Which split: the 60,000 training or the 10,000 test images.

    Returns
    -------
    X : ndarray of float32, shape (N, 784)
        Images flattened row-major, scaled to [0, 1] by ``pixel / 255``.
    y : ndarray of uint8, shape (N,)
        Labels in 0..9, the dtype the file stores them in (cast with ``y.astype(np.int64)``
        where an API needs a wider integer; fastbp's own losses accept uint8).

    Raises
    ------
    FileNotFoundError
        If `path` is not an existing directory or either file is missing (the message names the
        directory or the missing file).
    ValueError
        If `kind` is unknown, or a file is malformed (see `read_idx`), its images are not 28x28,
        the image and label counts differ, or a label exceeds 9. The message names the file.
    """
    if kind not in _MNIST_KINDS:
        raise ValueError(f"kind must be one of {_MNIST_KINDS}, got {kind!r}")
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: MNIST directory not found (or not a directory)")
    image_file = _find_idx(path, f"{kind}-images-idx3-ubyte")
    label_file = _find_idx(path, f"{kind}-labels-idx1-ubyte")

    labels = read_idx(label_file, magic=MNIST_LABELS_MAGIC)
    if labels.size and labels.max() > 9:
        i = int(np.argmax(labels > 9))
        raise ValueError(f"{label_file}: label {labels[i]} at index {i} is outside 0..9")
    images = read_idx(image_file, magic=MNIST_IMAGES_MAGIC)
    n, rows, cols = images.shape
    if (rows, cols) != (_MNIST_SIDE, _MNIST_SIDE):
        raise ValueError(
            f"{image_file}: images are {rows}x{cols}, expected {_MNIST_SIDE}x{_MNIST_SIDE}"
        )
    if labels.shape[0] != n:
        raise ValueError(
            f"{label_file}: holds {labels.shape[0]} labels but {image_file} holds {n} images"
        )
    X = images.reshape(n, rows * cols).astype(np.float32)
    X /= 255
    return X, labels


# --------------------------------------------------------------------------------------------
# Bundled digits, synthetic spirals


def load_digits():
    """The UCI 8x8 handwritten digits bundled with fastbp (works offline, no scikit-learn).

    The same 1,797 samples, in the same order, as ``sklearn.datasets.load_digits()``; see
    ``fastbp/datasets/README.md`` for the source and licence (CC BY 4.0).

    Returns
    -------
    X : ndarray of float32, shape (1797, 64)
        Pixel counts 0..16 of each 8x8 image, row-major, divided by 16 (exact), so in [0, 1].
    y : ndarray of int64, shape (1797,)
        Labels 0..9 (174 to 183 samples per class).
    """
    source = resources.files("fastbp") / "datasets" / "digits.csv.gz"
    with source.open("rb") as raw, gzip.open(raw, "rt", encoding="ascii") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    if table.shape != (1797, 65):
        raise RuntimeError(f"bundled {source} has shape {table.shape}, expected (1797, 65)")
    X = table[:, :64].astype(np.float32)
    X /= 16
    y = np.ascontiguousarray(table[:, 64])
    return X, y


def make_spirals(n_per_class=100, n_classes=3, noise=0.2, seed=None):
    """The CS231n spiral toy: `n_classes` interleaved arms that no linear classifier separates.

    Arm k has radii ``linspace(0, 1, n_per_class)`` and angles
    ``linspace(4k, 4(k+1), n_per_class) + noise * standard_normal(n_per_class)``; a point is
    ``(r sin t, r cos t)``.

    Parameters
    ----------
    n_per_class : int, default 100
        Points per arm, >= 1.
    n_classes : int, default 3
        Number of arms (classes), >= 1.
    noise : float, default 0.2
        Standard deviation of the angular noise, >= 0.
    seed : None, int or np.random.Generator
        Passed to ``np.random.default_rng``; an int gives the same spirals on every call.

    Returns
    -------
    X : ndarray of float64, shape (n_per_class * n_classes, 2)
        Points grouped by class (arm 0 first), inside the unit disc.
    y : ndarray of int64, shape (n_per_class * n_classes,)
        Class k for the rows of arm k.

    Raises
    ------
    ValueError
        If a count is below 1 or `noise` is negative.
    """
    n_per_class = val.integer(n_per_class, "n_per_class", 1)
    n_classes = val.integer(n_classes, "n_classes", 1)
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    rng = np.random.default_rng(seed)
    radius = np.linspace(0.0, 1.0, n_per_class)
    X = np.empty((n_per_class * n_classes, 2))
    for k in range(n_classes):
        theta = np.linspace(4.0 * k, 4.0 * (k + 1), n_per_class)
        theta += noise * rng.standard_normal(n_per_class)
        rows = slice(k * n_per_class, (k + 1) * n_per_class)
        X[rows, 0] = radius * np.sin(theta)
        X[rows, 1] = radius * np.cos(theta)
    y = np.repeat(np.arange(n_classes, dtype=np.int64), n_per_class)
    return X, y


# --------------------------------------------------------------------------------------------
# Splits and minibatches


def train_test_split(X, y, test_size=0.2, seed=None, shuffle=True, stratify=False):
    """Split samples into a training and a test set.

    Parameters
    ----------
    X : array_like, shape (N, ...)
        Samples along the first axis.
    y : array_like, shape (N, ...)
        Targets along the first axis.
    test_size : float in (0, 1) or int, default 0.2
        A fraction of N or a count. A fraction gives ``ceil(test_size * N)`` test samples, as
        in scikit-learn, except that floating-point noise is rounded off first: 0.28 of 25 is
        7 here (``0.28 * 25 == 7.000000000000001``, which scikit-learn rounds up to 8). Both
        sets must end up non-empty.
    seed : None, int or np.random.Generator
        Passed to ``np.random.default_rng``; an int gives the same split on every call.
    shuffle : bool, default True
        If False, the last samples form the test set, in order, and `seed` is unused.
    stratify : bool, default False
        Give each class (value of the 1-D `y`) a share of the test set proportional to its
        size: ``floor(n_test * n_c / N)`` samples, plus one for the classes with the largest
        remainders (ties to the smaller label) until the total is exactly ``n_test``.
        Requires ``shuffle=True``.

    Returns
    -------
    X_train, X_test, y_train, y_test : ndarray
        New arrays (copies), with the dtypes and trailing shapes of `X` and `y`.

    Raises
    ------
    ValueError
        If X and y differ in length, a size leaves a set empty, the fraction is outside (0, 1),
        or `stratify` is used without `shuffle` or with a `y` that is not 1-D.
    TypeError
        If `test_size` is neither an int nor a float.
    """
    X, y = np.asarray(X), np.asarray(y)
    n = _check_samples(X, y)
    n_test = _test_count(test_size, n)
    rng = np.random.default_rng(seed) if shuffle else None
    if stratify:
        if not shuffle:
            raise ValueError("stratify=True needs shuffle=True")
        if y.ndim != 1:
            raise ValueError(f"stratify=True needs 1-D class labels y, got shape {y.shape}")
        train, test = _stratified_indices(y, n_test, rng)
    elif shuffle:
        order = rng.permutation(n)
        train, test = order[n_test:], order[:n_test]
    else:
        train, test = np.arange(n - n_test), np.arange(n - n_test, n)
    return X[train], X[test], y[train], y[test]


def _test_count(test_size, n):
    """Number of test samples for `test_size` (a fraction or a count) out of n."""
    if isinstance(test_size, bool) or not isinstance(test_size, numbers.Real):
        raise TypeError(f"test_size must be a float in (0, 1) or an int, got {test_size!r}")
    if isinstance(test_size, numbers.Integral):
        n_test = int(test_size)
    else:
        if not 0 < test_size < 1:
            raise ValueError(f"a fractional test_size must lie in (0, 1), got {test_size}")
        n_test = math.ceil(round(test_size * n, 9))
    if not 1 <= n_test <= n - 1:
        raise ValueError(
            f"test_size={test_size} gives {n_test} test samples out of {n}; both sets must be "
            "non-empty"
        )
    return n_test


def _stratified_indices(y, n_test, rng):
    """Per-class shuffled (train, test) indices with the largest-remainder allocation."""
    _, codes, counts = np.unique(y, return_inverse=True, return_counts=True)
    n = y.shape[0]
    share, remainder = np.divmod(n_test * counts, n)  # integers: exact
    short = n_test - int(share.sum())
    share[np.argsort(-remainder, kind="stable")[:short]] += 1
    train, test = [], []
    for c, k in enumerate(share):
        members = rng.permutation(np.flatnonzero(codes == c))
        test.append(members[:k])
        train.append(members[k:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def iterate_minibatches(X, y, batch_size, shuffle=True, seed=None, drop_last=False):
    """Yield ``(X_batch, y_batch)`` minibatches covering each sample once: one epoch.

    Arguments are checked, and the shuffle drawn, when this function is called (not at the
    first ``next``). The last batch is smaller when `batch_size` does not divide N, unless
    `drop_last` is set.

    Parameters
    ----------
    X : array_like, shape (N, ...)
        Samples along the first axis.
    y : array_like, shape (N, ...)
        Targets along the first axis.
    batch_size : int
        Samples per batch, >= 1 (a size above N gives one batch of N, or none with
        `drop_last`).
    shuffle : bool, default True
        Visit samples in a random order; if False, in order, and `seed` is unused.
    seed : None, int or np.random.Generator
        Passed to ``np.random.default_rng``. An int gives the same order on every call, so pass
        a Generator created once (``rng = np.random.default_rng(0)``, then ``seed=rng`` each
        epoch) for a fresh, reproducible order per epoch.
    drop_last : bool, default False
        Skip the final partial batch, so every batch has exactly `batch_size` samples.

    Yields
    ------
    X_batch : ndarray, shape (B, ...)
    y_batch : ndarray, shape (B, ...)
        Views into `X` and `y` when ``shuffle=False``, copies when shuffled.

    Raises
    ------
    ValueError
        If X and y differ in length or `batch_size` < 1.
    TypeError
        If `batch_size` is not an integer.
    """
    X, y = np.asarray(X), np.asarray(y)
    n = _check_samples(X, y)
    batch_size = val.integer(batch_size, "batch_size", 1)
    order = np.random.default_rng(seed).permutation(n) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    return _batches(X, y, order, batch_size, stop)


def _batches(X, y, order, batch_size, stop):
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, stop)
        rows = slice(start, end) if order is None else order[start:end]
        yield X[rows], y[rows]


# --------------------------------------------------------------------------------------------
# Argument checks


def _check_samples(X, y):
    """N, after checking that X and y are arrays with N samples each."""
    if X.ndim == 0 or y.ndim == 0:
        raise ValueError("X and y must have a sample axis (at least 1-D)")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} samples but y has {y.shape[0]}")
    return X.shape[0]


# --------------------------------------------------------------------------------------------
# Data sets by name (the CLI's ``--data``, and any other front end): a pure function of the spec,
# every split stratified with the fixed SPLIT_SEED, so ``evaluate`` and ``predict`` see exactly
# the test split that ``train`` reported.

#: Seed of the spirals and of every train / validation / test split (the CLI's splits are a pure function of the spec).
SPLIT_SEED = 0
#: Fraction of a data set held out for testing when it has no test set of its own.
TEST_FRACTION = 0.2
#: Points per arm of ``--data spirals`` (three arms, as in the CS231n notebook).
SPIRAL_POINTS = 100


@dataclass(frozen=True)
class DataSpec:
    """A parsed ``--data`` value: ``kind`` (a key of :data:`DATASETS`) and its argument."""

    kind: str
    arg: str = ""

    def __str__(self):
        return f"{self.kind}:{self.arg}" if self.arg else self.kind


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
    return train_test_split(X, y, test_size=test_size, seed=SPLIT_SEED, stratify=True)


def _digits(spec):
    X, y = load_digits()
    X_train, X_test, y_train, y_test = _split(X, y, TEST_FRACTION)
    return X_train, y_train, X_test, y_test, (
        f"bundled 8x8 digits, {len(y):,} images, {TEST_FRACTION:.0%} held out for test")


def _spirals(spec):
    X, y = make_spirals(SPIRAL_POINTS, 3, seed=SPLIT_SEED)
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
        X_train, y_train = load_mnist(directory, "train")
        X_test, y_test = load_mnist(directory, "t10k")
        return X_train, y_train, X_test, y_test, "MNIST train images for training, t10k for test"
    X, y = load_mnist(directory, "t10k")
    X_train, X_test, y_train, y_test = _split(X, y, TEST_FRACTION)
    return X_train, y_train, X_test, y_test, (
        f"no train images in {directory}: the {len(y):,} t10k images split "
        f"{len(y_train):,} train / {len(y_test):,} test")


#: --data kind -> loader(spec) returning (X_train, y_train, X_test, y_test, note)
DATASETS = {"digits": _digits, "spirals": _spirals, "mnist": _mnist}


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
    ValueError
        If files are missing or malformed, or `val_fraction` leaves too few samples to split;
        the message starts with the spec (``mnist:DIR: ...``) and names the file.
    """
    try:
        X_train, y_train, X_test, y_test, note = DATASETS[spec.kind](spec)
        if val_fraction > 0:
            X_train, X_val, y_train, y_val = _split(X_train, y_train, val_fraction)
        else:
            X_val, y_val = X_train[:0], y_train[:0]
    except (OSError, ValueError) as e:
        raise ValueError(f"{spec}: {e}") from None
    arrays = [np.ascontiguousarray(a, dtype) for a in (X_train, X_val, X_test)]
    labels = [np.ascontiguousarray(a, np.int64) for a in (y_train, y_val, y_test)]
    return Dataset(spec, arrays[0], labels[0], arrays[1], labels[1], arrays[2], labels[2],
                   f"{spec}: {note}")


def describe_split(ds):
    """One line: the split sizes, features and classes of a :class:`Dataset`."""
    return (f"{len(ds.y_train):,} train / {len(ds.y_val):,} val / {len(ds.y_test):,} test, "
            f"{ds.n_features} features, {ds.n_classes} classes")
