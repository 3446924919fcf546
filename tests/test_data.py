"""fastbp.data: IDX/MNIST loading and its error paths, bundled digits, spirals, splits, batches."""

import gzip
import hashlib
import os
import re
import struct

import numpy as np
import pytest

from fastbp import data
from fastbp.data import (
    iterate_minibatches,
    load_digits,
    load_mnist,
    make_spirals,
    read_idx,
    train_test_split,
)

# ---------------------------------------------------------------------------------------------
# Writing IDX files


def idx_bytes(array, magic=None):
    """A valid unsigned-byte IDX file holding `array` (magic 0x0800 | ndim unless given)."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    if magic is None:
        magic = 0x0800 | a.ndim
    return struct.pack(">I", magic) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def write(directory, name, payload, gz):
    """Write payload to directory/name (gzipped to name.gz when gz); return the path."""
    path = os.path.join(directory, name + (".gz" if gz else ""))
    with open(path, "wb") as f:
        f.write(gzip.compress(payload, mtime=0) if gz else payload)
    return path


def write_mnist(directory, images=None, labels=None, kind="t10k", gz=True):
    """Write an MNIST pair; `images`/`labels` are arrays (encoded here) or raw bytes as given."""
    if not isinstance(images, bytes):
        images = idx_bytes(images)
    if not isinstance(labels, bytes):
        labels = idx_bytes(labels)
    image_file = write(directory, f"{kind}-images-idx3-ubyte", images, gz)
    label_file = write(directory, f"{kind}-labels-idx1-ubyte", labels, gz)
    return image_file, label_file


def small_mnist(n=7, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    return images, labels


def named(path):
    """A pytest.raises match pattern for a message that names `path`."""
    return re.escape(str(path))


# ---------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("kind", ["train", "t10k"])
def test_load_mnist_round_trip(tmp_path, gz, kind):
    images, labels = small_mnist()
    write_mnist(tmp_path, images, labels, kind=kind, gz=gz)
    X, y = load_mnist(tmp_path, kind=kind)
    assert X.shape == (7, 784) and X.dtype == np.float32 and X.flags.c_contiguous
    np.testing.assert_array_equal(X, images.reshape(7, 784).astype(np.float32) / 255.0)
    assert X[0, 0] == 0.0 and X[0, 1] == 1.0
    assert y.dtype == np.uint8
    np.testing.assert_array_equal(y, labels)


def test_load_mnist_accepts_str_path(tmp_path):
    images, labels = small_mnist(3)
    write_mnist(tmp_path, images, labels)
    X, y = load_mnist(str(tmp_path), "t10k")
    np.testing.assert_array_equal(np.round(X * 255).astype(np.uint8), images.reshape(3, -1))
    np.testing.assert_array_equal(y, labels)


def test_load_mnist_prefers_uncompressed_when_both_exist(tmp_path):
    images, labels = small_mnist(4)
    write_mnist(tmp_path, images, labels, gz=False)
    write_mnist(tmp_path, images[::-1], labels[::-1], gz=True)
    X, y = load_mnist(tmp_path, "t10k")
    np.testing.assert_array_equal(y, labels)
    np.testing.assert_array_equal(X[0], images[0].reshape(-1) / np.float32(255))


def test_load_mnist_empty_pair(tmp_path):
    write_mnist(tmp_path, np.zeros((0, 28, 28)), np.zeros(0))
    X, y = load_mnist(tmp_path, "t10k")
    assert X.shape == (0, 784) and X.dtype == np.float32 and y.shape == (0,)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), (1, 1, 1, 6)])
def test_read_idx_round_trip(tmp_path, gz, shape):
    a = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape) * 7
    path = write(tmp_path, "a.idx", idx_bytes(a), gz)
    got = read_idx(path)
    assert got.dtype == np.uint8 and got.shape == shape
    assert got.flags.writeable and got.flags.c_contiguous
    np.testing.assert_array_equal(got, a)


def test_read_idx_detects_gzip_by_content_not_name(tmp_path):
    a = np.array([[1, 2], [3, 250]], dtype=np.uint8)
    path = tmp_path / "looks-raw-idx2-ubyte"
    path.write_bytes(gzip.compress(idx_bytes(a)))
    np.testing.assert_array_equal(read_idx(path, magic=0x0802), a)


def test_read_idx_checks_requested_magic(tmp_path):
    path = write(tmp_path, "labels", idx_bytes(np.arange(3)), gz=False)
    assert read_idx(path, magic=2049).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match=named(path) + r".*bad magic number 2049.*expected 2051"):
        read_idx(path, magic=2051)


# ---------------------------------------------------------------------------------------------
# Error paths: every one raises naming the offending file


@pytest.fixture(params=[False, True], ids=["raw", "gz"])
def gz(request):
    return request.param


def test_bad_magic_images(tmp_path, gz):
    images, labels = small_mnist()
    bad = idx_bytes(images, magic=2049)  # a labels magic on an images file
    image_file, _ = write_mnist(tmp_path, bad, labels, gz=gz)
    with pytest.raises(ValueError, match=named(image_file) + r": bad magic number 2049 .*2051"):
        load_mnist(tmp_path, "t10k")


def test_bad_magic_labels(tmp_path, gz):
    images, labels = small_mnist()
    bad = b"\x12\x34\x56\x78" + idx_bytes(labels)[4:]
    _, label_file = write_mnist(tmp_path, images, bad, gz=gz)
    with pytest.raises(ValueError, match=named(label_file) + r": bad magic number 305419896"):
        load_mnist(tmp_path, "t10k")


def test_truncated_images(tmp_path, gz):
    images, labels = small_mnist()
    image_file, _ = write_mnist(tmp_path, idx_bytes(images)[:-1], labels, gz=gz)
    with pytest.raises(
        ValueError,
        match=named(image_file) + r": truncated: .*\(7, 28, 28\) needs 5488 .*found 5487",
    ):
        load_mnist(tmp_path, "t10k")


def test_truncated_labels(tmp_path, gz):
    images, labels = small_mnist()
    _, label_file = write_mnist(tmp_path, images, idx_bytes(labels)[:-2], gz=gz)
    with pytest.raises(ValueError, match=named(label_file) + r": truncated: .*needs 7 .*found 5"):
        load_mnist(tmp_path, "t10k")


def test_truncated_header(tmp_path, gz):
    images, labels = small_mnist()
    image_file, _ = write_mnist(tmp_path, idx_bytes(images)[:10], labels, gz=gz)
    with pytest.raises(ValueError, match=named(image_file) + r": truncated header"):
        load_mnist(tmp_path, "t10k")


def test_empty_file(tmp_path, gz):
    images, labels = small_mnist()
    _, label_file = write_mnist(tmp_path, images, b"", gz=gz)
    with pytest.raises(ValueError, match=named(label_file) + r": 0 bytes is too short"):
        load_mnist(tmp_path, "t10k")


def test_extra_bytes_images(tmp_path, gz):
    images, labels = small_mnist()
    image_file, _ = write_mnist(tmp_path, idx_bytes(images) + b"\0\0\0", labels, gz=gz)
    message = named(image_file) + r": 3 unexpected bytes after the 5488"
    with pytest.raises(ValueError, match=message):
        load_mnist(tmp_path, "t10k")


def test_extra_bytes_labels(tmp_path, gz):
    images, labels = small_mnist()
    _, label_file = write_mnist(tmp_path, images, idx_bytes(labels) + b"\1", gz=gz)
    with pytest.raises(ValueError, match=named(label_file) + r": 1 unexpected bytes after the 7"):
        load_mnist(tmp_path, "t10k")


def test_count_mismatch(tmp_path, gz):
    images, labels = small_mnist()
    image_file, label_file = write_mnist(tmp_path, images, labels[:6], gz=gz)
    with pytest.raises(
        ValueError,
        match=named(label_file) + r": holds 6 labels but " + named(image_file) + " holds 7",
    ):
        load_mnist(tmp_path, "t10k")


def test_label_out_of_range(tmp_path, gz):
    images, labels = small_mnist()
    labels[3] = 10
    _, label_file = write_mnist(tmp_path, images, labels, gz=gz)
    message = named(label_file) + r": label 10 at index 3 is outside 0\.\.9"
    with pytest.raises(ValueError, match=message):
        load_mnist(tmp_path, "t10k")


def test_images_not_28x28(tmp_path, gz):
    _, labels = small_mnist()
    image_file, _ = write_mnist(tmp_path, np.zeros((7, 27, 28)), labels, gz=gz)
    with pytest.raises(ValueError, match=named(image_file) + r": images are 27x28, expected 28x28"):
        load_mnist(tmp_path, "t10k")


def test_wrong_ndim_is_a_bad_magic(tmp_path):
    _, labels = small_mnist()
    image_file, _ = write_mnist(tmp_path, np.zeros((7, 784)), labels, gz=False)  # magic 0x0802
    with pytest.raises(ValueError, match=named(image_file) + r": bad magic number 2050"):
        load_mnist(tmp_path, "t10k")


def test_read_idx_rejects_other_types_and_non_idx(tmp_path):
    floats = write(tmp_path, "f", struct.pack(">II", 0x0D01, 1) + b"\0" * 4, gz=False)
    with pytest.raises(ValueError, match=named(floats) + r": IDX type code 0x0d is not unsigned"):
        read_idx(floats)
    text = write(tmp_path, "t", b"hello world", gz=False)
    with pytest.raises(ValueError, match=named(text) + r": not an IDX file"):
        read_idx(text)
    scalar = write(tmp_path, "s", struct.pack(">I", 0x0800), gz=False)
    with pytest.raises(ValueError, match=named(scalar) + r": IDX header declares 0 dimensions"):
        read_idx(scalar)


def test_huge_declared_shape_is_truncated_not_allocated(tmp_path, gz):
    header = struct.pack(">I3I", 0x0803, 2**32 - 1, 2**32 - 1, 2**32 - 1)
    path = write(tmp_path, "huge", header + b"\0" * 10, gz)
    with pytest.raises(ValueError, match=named(path) + r": truncated: .*found 10$"):
        read_idx(path)


def _corrupt_truncated(blob):
    return blob[: len(blob) // 2]


def _corrupt_deflate_body(blob):
    b = bytearray(blob)
    for i in range(12, len(b) - 8, 7):  # scramble the deflate stream, keep the gzip header
        b[i] ^= 0xA5
    return bytes(b)


def _corrupt_crc(blob):
    b = bytearray(blob)
    b[-8] ^= 0xFF  # first byte of the CRC-32 trailer
    return bytes(b)


@pytest.mark.parametrize("corrupt", [_corrupt_truncated, _corrupt_deflate_body, _corrupt_crc])
@pytest.mark.parametrize("which", ["images", "labels"])
def test_corrupt_gzip(tmp_path, corrupt, which):
    images, labels = small_mnist()
    image_file, label_file = write_mnist(tmp_path, images, labels, gz=True)
    bad_file = image_file if which == "images" else label_file
    with open(bad_file, "rb") as f:
        blob = f.read()
    with open(bad_file, "wb") as f:
        f.write(corrupt(blob))
    with pytest.raises(ValueError, match=named(bad_file) + r": corrupt gzip stream"):
        load_mnist(tmp_path, "t10k")


@pytest.mark.parametrize("which", ["images", "labels"])
def test_missing_file(tmp_path, which):
    images, labels = small_mnist()
    image_file, label_file = write_mnist(tmp_path, images, labels, gz=True)
    os.remove(image_file if which == "images" else label_file)
    stem = os.path.join(tmp_path, f"t10k-{which}-idx{3 if which == 'images' else 1}-ubyte")
    with pytest.raises(FileNotFoundError, match=named(stem) + r"\[\.gz\]: MNIST file not found"):
        load_mnist(tmp_path, "t10k")


def test_missing_directory_and_bad_kind(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=named(missing) + ": MNIST directory not found"):
        load_mnist(missing)
    with pytest.raises(ValueError, match="kind must be one of"):
        load_mnist(tmp_path, kind="test")
    with pytest.raises(FileNotFoundError, match=named(tmp_path / "nothing.idx")):
        read_idx(tmp_path / "nothing.idx")


# ---------------------------------------------------------------------------------------------
# Real MNIST (FASTBP_MNIST_DIR); md5s from shared/data/mnist/README.md

T10K_IMAGES_MD5 = "2646ac647ad5339dbf082846283269ea"
T10K_LABELS_MD5 = "27ae3e4e09519cfbb04c329615203637"
TRAIN_LABELS_MD5 = "a25bea736e30d166cdddb491f175f624"
T10K_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def _path(directory, stem):
    for name in (stem, stem + ".gz"):
        if os.path.isfile(os.path.join(directory, name)):
            return os.path.join(directory, name)
    pytest.skip(f"{stem}[.gz] is not in {directory}")


def test_real_mnist_t10k(mnist_dir):
    X, y = load_mnist(mnist_dir, "t10k")
    assert X.shape == (10000, 784) and X.dtype == np.float32
    assert X.min() == 0.0 and X.max() == 1.0
    assert y.shape == (10000,) and y.dtype == np.uint8
    assert np.bincount(y, minlength=10).tolist() == T10K_COUNTS
    # The arrays are exactly the bytes of the original distribution: rebuild the file, hash it.
    raw = read_idx(_path(mnist_dir, "t10k-images-idx3-ubyte"), magic=2051)
    np.testing.assert_array_equal(np.round(X * 255).astype(np.uint8), raw.reshape(10000, 784))
    assert hashlib.md5(idx_bytes(raw)).hexdigest() == T10K_IMAGES_MD5
    assert hashlib.md5(idx_bytes(y)).hexdigest() == T10K_LABELS_MD5


def test_real_mnist_train_labels(mnist_dir):
    labels = read_idx(_path(mnist_dir, "train-labels-idx1-ubyte"), magic=2049)
    assert labels.shape == (60000,)
    assert np.bincount(labels, minlength=10).tolist() == TRAIN_COUNTS
    assert hashlib.md5(idx_bytes(labels)).hexdigest() == TRAIN_LABELS_MD5
    names = ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz")
    if not any(os.path.isfile(os.path.join(mnist_dir, name)) for name in names):
        with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
            load_mnist(mnist_dir, "train")


# ---------------------------------------------------------------------------------------------
# Bundled digits

DIGITS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_load_digits():
    X, y = load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float32 and X.flags.c_contiguous
    assert y.shape == (1797,) and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    np.testing.assert_array_equal(X * 16, np.round(X * 16))  # pixel counts 0..16, exactly /16
    assert np.bincount(y).tolist() == DIGITS_COUNTS
    first = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0]
    np.testing.assert_array_equal(X[0, :16] * 16, first)
    assert y[:3].tolist() == [0, 1, 2]


def test_load_digits_returns_fresh_arrays():
    X, y = load_digits()
    X[:] = -1
    y[:] = -1
    X2, y2 = load_digits()
    assert X2.min() == 0.0 and y2.min() == 0


def test_load_digits_matches_sklearn():
    datasets = pytest.importorskip("sklearn.datasets")
    ref = datasets.load_digits()
    X, y = load_digits()
    np.testing.assert_array_equal(X, (ref.data / 16).astype(np.float32))
    np.testing.assert_array_equal(y, ref.target)


# ---------------------------------------------------------------------------------------------
# Spirals


def test_spirals_shapes_and_labels():
    X, y = make_spirals(seed=0)
    assert X.shape == (300, 2) and X.dtype == np.float64
    assert y.dtype == np.int64 and y.tolist() == [0] * 100 + [1] * 100 + [2] * 100
    assert np.all(np.hypot(X[:, 0], X[:, 1]) <= 1 + 1e-12)
    X, y = make_spirals(n_per_class=7, n_classes=5, seed=0)
    assert X.shape == (35, 2) and np.bincount(y).tolist() == [7] * 5


def test_spirals_deterministic_for_a_seed():
    a = make_spirals(50, 4, seed=42)
    b = make_spirals(50, 4, seed=42)
    c = make_spirals(50, 4, seed=43)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    g = make_spirals(50, 4, seed=np.random.default_rng(42))  # a Generator seeded alike
    np.testing.assert_array_equal(a[0], g[0])


def test_spirals_noise_free_follow_the_formula():
    n = 11
    X, _ = make_spirals(n_per_class=n, n_classes=3, noise=0.0, seed=None)
    r = np.linspace(0, 1, n)
    for k in range(3):
        t = np.linspace(4 * k, 4 * (k + 1), n)
        expected = np.c_[r * np.sin(t), r * np.cos(t)]
        np.testing.assert_allclose(X[k * n : (k + 1) * n], expected, rtol=0, atol=1e-15)


def test_spirals_validation():
    with pytest.raises(ValueError, match="n_per_class must be >= 1"):
        make_spirals(0)
    with pytest.raises(ValueError, match="n_classes must be >= 1"):
        make_spirals(10, 0)
    with pytest.raises(ValueError, match="noise must be >= 0"):
        make_spirals(noise=-0.1)
    with pytest.raises(TypeError, match="n_per_class must be an int"):
        make_spirals(2.5)


# ---------------------------------------------------------------------------------------------
# train_test_split


def indexed(n):
    """X whose rows name themselves (row i holds i, 1000 + i), y = 10 * i."""
    i = np.arange(n)
    return np.c_[i, 1000 + i], 10 * i


@pytest.mark.parametrize(
    "n, test_size, n_test",
    [
        (10, 0.2, 2),
        (10, 0.25, 3),  # ceil(2.5)
        (25, 0.28, 7),  # 0.28 * 25 == 7.000000000000001: float noise does not round up
        (7, 0.5, 4),
        (10, 3, 3),
        (10, 9, 9),
        (2, 0.5, 1),
    ],
)
def test_split_sizes_disjoint_and_aligned(n, test_size, n_test):
    X, y = indexed(n)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_size, seed=0)
    assert X_te.shape == (n_test, 2) and X_tr.shape == (n - n_test, 2)
    assert y_te.shape == (n_test,) and y_tr.shape == (n - n_test,)
    assert sorted(np.r_[X_tr[:, 0], X_te[:, 0]].tolist()) == list(range(n))  # disjoint, complete
    np.testing.assert_array_equal(y_tr, 10 * X_tr[:, 0])  # rows stay with their labels
    np.testing.assert_array_equal(y_te, 10 * X_te[:, 0])
    assert not np.shares_memory(X_tr, X) and not np.shares_memory(X_te, X)


def test_split_reproducible_for_a_seed():
    X, y = indexed(50)
    a = train_test_split(X, y, seed=3)
    b = train_test_split(X, y, seed=3)
    c = train_test_split(X, y, seed=4)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[1], c[1])


def test_split_without_shuffle_takes_the_tail():
    X, y = indexed(10)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=3, shuffle=False)
    assert X_tr[:, 0].tolist() == list(range(7)) and X_te[:, 0].tolist() == [7, 8, 9]
    assert y_te.tolist() == [70, 80, 90]


def test_split_stratified_proportions():
    y = np.repeat([0, 1, 2], [60, 30, 10])
    X = np.arange(100)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, seed=0, stratify=True)
    assert np.bincount(y_te).tolist() == [12, 6, 2]
    assert np.bincount(y_tr).tolist() == [48, 24, 8]
    np.testing.assert_array_equal(y[X_te], y_te)
    assert sorted(np.r_[X_tr, X_te].tolist()) == list(range(100))
    assert not np.all(np.diff(y_te) >= 0)  # shuffled, not grouped by class


def test_split_stratified_largest_remainder():
    # n_test = 3 of counts (5, 3, 2): ideal shares 1.5, 0.9, 0.6 -> floors (1, 0, 0), and the
    # two missing samples go to the largest remainders 0.9 and 0.6.
    y = np.repeat([7, 8, 9], [5, 3, 2])
    _, _, y_tr, y_te = train_test_split(np.zeros((10, 1)), y, test_size=3, seed=1, stratify=True)
    assert sorted(y_te.tolist()) == [7, 8, 9]
    assert sorted(y_tr.tolist()) == [7, 7, 7, 7, 8, 8, 9]


def test_split_validation():
    X, y = indexed(10)
    with pytest.raises(ValueError, match="X has 10 samples but y has 9"):
        train_test_split(X, y[:9])
    for bad in (0.0, 1.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=r"\(0, 1\)"):
            train_test_split(X, y, test_size=bad)
    for bad in (0, 10, -1):
        with pytest.raises(ValueError, match="both sets must be non-empty"):
            train_test_split(X, y, test_size=bad)
    with pytest.raises(ValueError, match="both sets must be non-empty"):
        train_test_split(X[:1], y[:1], test_size=0.5)
    for bad in (True, "0.2", None):
        with pytest.raises(TypeError, match="test_size"):
            train_test_split(X, y, test_size=bad)
    with pytest.raises(ValueError, match="needs shuffle=True"):
        train_test_split(X, y, shuffle=False, stratify=True)
    with pytest.raises(ValueError, match="1-D class labels"):
        train_test_split(X, np.zeros((10, 2)), stratify=True)


# ---------------------------------------------------------------------------------------------
# iterate_minibatches


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("n, batch_size", [(10, 3), (10, 5), (10, 1), (10, 10), (10, 64), (1, 1)])
def test_minibatches_cover_every_sample_once(n, batch_size, shuffle):
    X, y = indexed(n)
    batches = list(iterate_minibatches(X, y, batch_size, shuffle=shuffle, seed=0))
    sizes = [len(xb) for xb, _ in batches]
    assert sizes == [min(batch_size, n - s) for s in range(0, n, batch_size)]
    seen = np.concatenate([xb[:, 0] for xb, _ in batches])
    assert sorted(seen.tolist()) == list(range(n))
    for xb, yb in batches:
        np.testing.assert_array_equal(yb, 10 * xb[:, 0])
    if not shuffle:
        assert seen.tolist() == list(range(n))
        assert all(np.shares_memory(xb, X) for xb, _ in batches)  # views


@pytest.mark.parametrize(
    "n, batch_size, expected", [(10, 3, [3, 3, 3]), (10, 5, [5, 5]), (10, 64, [])]
)
def test_minibatches_drop_last(n, batch_size, expected):
    X, y = indexed(n)
    batches = list(iterate_minibatches(X, y, batch_size, seed=0, drop_last=True))
    assert [len(xb) for xb, _ in batches] == expected
    seen = np.concatenate([xb[:, 0] for xb, _ in batches]) if batches else np.array([])
    assert len(set(seen.tolist())) == sum(expected)


def test_minibatches_reproducible_and_epochs_with_a_generator():
    X, y = indexed(20)

    def order(seed):
        batches = iterate_minibatches(X, y, 6, seed=seed)
        return np.concatenate([xb[:, 0] for xb, _ in batches]).tolist()

    assert order(5) == order(5)  # an int seed repeats the order
    assert order(5) != order(6)
    rng = np.random.default_rng(5)
    epoch1, epoch2 = order(rng), order(rng)  # one Generator: a new order each epoch ...
    assert epoch1 != epoch2
    rng = np.random.default_rng(5)
    assert [order(rng), order(rng)] == [epoch1, epoch2]  # ... reproducible from its seed
    assert epoch1 == order(5)


def test_minibatches_validate_at_call_time():
    X, y = indexed(10)
    with pytest.raises(ValueError, match="X has 10 samples but y has 4"):
        iterate_minibatches(X, y[:4], 2)  # no next() needed
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        iterate_minibatches(X, y, 0)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        iterate_minibatches(X, y, 2.0)
    with pytest.raises(ValueError, match="sample axis"):
        iterate_minibatches(np.float64(1.0), y, 2)


def test_public_names():
    assert set(data.__all__) == {
        "DATASETS",
        "Dataset",
        "DataSpec",
        "describe_split",
        "load_dataset",
        "iterate_minibatches",
        "load_digits",
        "load_mnist",
        "make_spirals",
        "read_idx",
        "train_test_split",
    }
