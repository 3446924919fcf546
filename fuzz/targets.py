"""Fuzz targets: fastbp's readers of untrusted bytes and its argument parser.

Each target takes the fuzzer's bytes and feeds them to one public entry point; the only
exceptions it may raise are the ones that entry point documents (``TARGETS[name].documented``).
Anything else -- another exception, a crash, a hang, a runaway allocation -- is a finding.

This module does not import atheris: ``fuzz/run.py`` runs the targets under atheris
(coverage-guided), and ``tests/test_fuzz_corpus.py`` replays every input of ``fuzz/corpus/``
through them in the ordinary test suite, so each input ever found stays a regression test.

Input formats (kept simple so the seeds are real files and mutations reach deep code):

* ``load_model`` / ``module_load``: a whole file when the bytes start with a zip signature
  (``PK\\x03\\x04``); otherwise members separated by :data:`SEP`, each ``name\\nbody``, zipped
  by the target with correct checksums (so mutations reach the ``.npy`` headers and the JSON
  metadata instead of failing the CRC).  A metadata body that is not ``.npy`` bytes is taken as
  the JSON text itself.
* ``read_idx``: the file; a first byte ``g`` means "gzip the rest".
* ``load_mnist``: the labels file, :data:`SEP`, the images file (each as for ``read_idx``).
* ``cli_parser``: the arguments, separated by NUL bytes.
"""

import atexit
import contextlib
import io
import os
import shutil
import sys
import tempfile
import warnings
import zipfile
from gzip import compress
from typing import Callable, NamedTuple

import numpy as np

from fastbp import cli, nn
from fastbp.data import load_mnist, read_idx
from fastbp.io import META_KEY, load_model

#: separator of members / files inside one fuzz input
SEP = b"\n@@\n"
#: a RAM-backed directory for temporary files, where there is one
SHM = "/dev/shm" if os.path.isdir("/dev/shm") else None


def _scratch_directory():
    """Where the targets write their files: ``FASTBP_FUZZ_SCRATCH`` when set (``fuzz/run.py``
    makes it and removes it after the fuzzing process: libFuzzer ends that process without
    running ``atexit``), else a new directory removed at exit (the corpus replay in pytest)."""
    given = os.environ.get("FASTBP_FUZZ_SCRATCH")
    if given:
        return given
    made = tempfile.mkdtemp(prefix="fastbp-fuzz-", dir=SHM)
    atexit.register(shutil.rmtree, made, ignore_errors=True)
    return made


_SCRATCH = _scratch_directory()


class Target(NamedTuple):
    """``run(data: bytes)`` and the exception types its entry point documents."""

    run: Callable[[bytes], None]
    documented: tuple


def _scratch(name, payload):
    path = os.path.join(_SCRATCH, name)
    with open(path, "wb") as f:
        f.write(payload)
    return path


def _archive(data):
    """The .npz bytes a fuzz input stands for (see the module docstring)."""
    if data.startswith(b"PK\x03\x04"):
        return data
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as z:
        warnings.simplefilter("ignore")  # duplicate member names are part of the game
        for chunk in data.split(SEP):
            name, _, body = chunk.partition(b"\n")
            name = name.decode("utf-8", "replace").replace("\0", "")  # zipfile cuts at NUL
            if name == META_KEY and not body.startswith(b"\x93NUMPY"):
                member = io.BytesIO()
                np.lib.format.write_array(member, np.array([body.decode("utf-8", "replace")]))
                body = member.getvalue()
            z.writestr(name + ".npy", body)
    return buf.getvalue()


def _load_model(data):
    load_model(_scratch("model.npz", _archive(data)))


_MODULE = nn.MLP([3, 4, 2], rng=0)  # the seeds' architecture


def _module_load(data):
    _MODULE.load(io.BytesIO(_archive(data)))


def _idx_bytes(data):
    return compress(data[1:], mtime=0) if data[:1] == b"g" else data


def _read_idx(data):
    assert read_idx(_scratch("file-idx", _idx_bytes(data))).dtype == np.uint8


def _load_mnist(data):
    labels, _, images = data.partition(SEP)
    directory = os.path.join(_SCRATCH, "mnist")
    os.makedirs(directory, exist_ok=True)
    _scratch("mnist/train-labels-idx1-ubyte", _idx_bytes(labels))
    _scratch("mnist/train-images-idx3-ubyte", _idx_bytes(images))
    X, y = load_mnist(directory, "train")
    assert X.shape == (len(y), 784) and X.dtype == np.float32


_PARSER = cli.build_parser()


def _cli_parser(data):
    argv = [a.decode("utf-8", "surrogateescape") for a in data.split(b"\0")] if data else []
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        _PARSER.parse_args(argv)


TARGETS = {
    "load_model": Target(_load_model, (ValueError,)),
    "module_load": Target(_module_load, (ValueError,)),
    "read_idx": Target(_read_idx, (ValueError,)),
    "load_mnist": Target(_load_mnist, (ValueError,)),
    "cli_parser": Target(_cli_parser, (SystemExit,)),
}


def run_documented(name, data):
    """Run target `name` on `data`, swallowing only its documented exceptions."""
    target = TARGETS[name]
    try:
        target.run(data)
    except target.documented:
        pass


if __name__ == "__main__":  # replay files: python fuzz/targets.py NAME FILE...
    for path in sys.argv[2:]:
        with open(path, "rb") as f:
            run_documented(sys.argv[1], f.read())
