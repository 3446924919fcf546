"""Regenerate the seed corpus of fuzz/corpus/ (small, valid inputs of every target).

    python fuzz/make_seeds.py

Seeds are named ``seed-*``; inputs kept from fuzzing runs (regressions) sit beside them.
"""

import io
import os
import sys
import zipfile
from gzip import compress

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from targets import SEP  # noqa: E402

from fastbp import nn  # noqa: E402
from fastbp.io import META_KEY, save_model  # noqa: E402

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def _members(archive_bytes, json_meta):
    """The member form of an archive: ``name\\nbody`` chunks (metadata as JSON text)."""
    chunks = []
    with zipfile.ZipFile(io.BytesIO(archive_bytes)) as z:
        for info in z.infolist():
            name, body = info.filename.removesuffix(".npy"), z.read(info)
            if name == META_KEY and json_meta:
                body = str(np.load(io.BytesIO(body))[0]).encode()
            chunks.append(name.encode() + b"\n" + body)
    return SEP.join(chunks)


def _idx(shape, payload):
    header = bytes([0, 0, 8, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape)
    return header + bytes(payload)


def seeds():
    model = nn.MLP([3, 4, 2], activation="leaky_relu", rng=0, alpha=0.1)
    buf = io.BytesIO()
    save_model_path = os.path.join(CORPUS, ".tmp-model")
    save_model(save_model_path, model, {"data": "digits", "train": {"lr": 0.1}})
    with open(save_model_path, "rb") as f:
        model_file = f.read()
    os.unlink(save_model_path)
    model.save(buf)
    params_file = buf.getvalue()
    labels = _idx((2,), [3, 7])
    images = _idx((2, 28, 28), bytes(range(256)) * 6 + bytes(2 * 784 - 6 * 256))
    return {
        "load_model": {"file": model_file, "members": _members(model_file, True)},
        "module_load": {"file": params_file, "members": _members(params_file, False)},
        "read_idx": {"labels": labels, "gzip": b"g" + _idx((3, 2), bytes(range(6)))},
        "load_mnist": {"plain": labels + SEP + images, "gzip": b"g" + labels + SEP + images},
        "cli_parser": {"train": b"\0".join([b"train", b"--hidden", b"8,4", b"--epochs", b"1",
                                            b"--data", b"spirals", b"--lr", b"0.5"]),
                       "predict": b"predict\0m.npz\0--limit\0003\0--proba\0--threads\0002",
                       "bench": b"bench\0--help"},
    }


if __name__ == "__main__":
    for target, files in seeds().items():
        os.makedirs(os.path.join(CORPUS, target), exist_ok=True)
        for name, payload in files.items():
            with open(os.path.join(CORPUS, target, f"seed-{name}"), "wb") as f:
                f.write(payload)
