"""fastbp.io: save_model / load_model round trips (architecture, dtype, metadata) and bad files."""

import json
import zipfile

import numpy as np
import pytest

from fastbp import nn
from fastbp.io import META_KEY, architecture, load_model, save_model

MODELS = {
    "relu-float32": lambda: nn.MLP([6, 9, 4], rng=0),
    "two-hidden-float64": lambda: nn.MLP([6, 9, 5, 4], dtype=np.float64, rng=1),
    "leaky-svm": lambda: nn.MLP([6, 9, 4], activation="leaky_relu", loss="svm", rng=2,
                                alpha=0.2),
    "gelu-tanh": lambda: nn.MLP([6, 9, 4], activation="gelu", rng=3, approximate="tanh"),
    "elu-no-bias": lambda: nn.MLP([6, 9, 4], activation="elu", bias=False, rng=4, alpha=0.5),
    "linear": lambda: nn.MLP([6, 4], loss="mse", rng=5),
}


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_round_trip(make, tmp_path, rng):
    model = make()
    path = tmp_path / "model.npz"
    save_model(path, model, {"data": "digits", "train": {"lr": np.float32(0.5), "epochs": 3}})
    loaded, meta = load_model(path)
    assert type(loaded) is nn.MLP
    assert repr(loaded) == repr(model)
    assert meta["architecture"] == architecture(model)
    assert meta["data"] == "digits" and meta["train"] == {"lr": 0.5, "epochs": 3}
    assert loaded.params.keys() == model.params.keys()
    for name, p in model.params.items():
        assert loaded.params[name].dtype == p.dtype
        np.testing.assert_array_equal(loaded.params[name], p)  # bit-exact
    assert type(loaded.criterion) is type(model.criterion)
    x = rng.standard_normal((5, 6))
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))


def test_file_is_plain_npz_without_pickle(tmp_path):
    model = nn.MLP([3, 5, 2], rng=0)
    path = tmp_path / "m.npz"
    save_model(path, model)
    with np.load(path, allow_pickle=False) as f:
        assert sorted(f.files) == sorted([*model.params, META_KEY])
        entry = f[META_KEY]
        assert entry.dtype.kind == "U" and entry.shape == (1,)
        record = json.loads(entry[0])
    assert record["format"] == "fastbp.MLP" and record["version"] == 1
    assert record["architecture"]["sizes"] == [3, 5, 2]


def test_written_exactly_at_path_and_atomically(tmp_path):
    path = tmp_path / "model.bin"  # np.savez would append .npz
    save_model(path, nn.MLP([3, 2], rng=0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]  # no temporary left
    save_model(path, nn.MLP([3, 4, 2], rng=0))  # overwrites
    assert load_model(path)[1]["architecture"]["sizes"] == [3, 4, 2]


def test_save_rejects(tmp_path):
    with pytest.raises(TypeError, match="MLP"):
        save_model(tmp_path / "a.npz", nn.Sequential(nn.Linear(3, 2)))
    model = nn.MLP([3, 2], rng=0)
    with pytest.raises(ValueError, match="reserved"):
        save_model(tmp_path / "a.npz", model, {"architecture": 1})
    with pytest.raises(TypeError, match="JSON"):
        save_model(tmp_path / "a.npz", model, {"x": object()})
    with pytest.raises(TypeError, match="dict"):
        save_model(tmp_path / "a.npz", model, ["x"])
    with pytest.raises(OSError):
        save_model(tmp_path / "missing" / "a.npz", model)
    assert list(tmp_path.iterdir()) == []


def _rewrite_meta(src, dst, edit):
    """Copy the archive src to dst with its metadata record passed through edit(record)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            if item.filename != META_KEY + ".npy":
                zout.writestr(item, zin.read(item))
        with np.load(src) as f:
            text = edit(json.loads(f[META_KEY][0]))
        with zout.open(META_KEY + ".npy", "w") as member:
            np.lib.format.write_array(member, np.array([text]))


@pytest.mark.parametrize("edit,message", [
    (lambda r: json.dumps({**r, "version": 2}), "unsupported model format"),
    (lambda r: json.dumps({**r, "format": "other"}), "unsupported model format"),
    (lambda r: "{not json", "not valid JSON"),
    (lambda r: json.dumps({k: v for k, v in r.items() if k != "architecture"}),
     "no 'architecture'"),
    (lambda r: json.dumps({**r, "architecture": {**r["architecture"], "sizes": [3, 7, 2]}}),
     "do not describe a valid MLP"),
    (lambda r: json.dumps({**r, "architecture": {**r["architecture"], "activation": "swish"}}),
     "do not describe a valid MLP"),
], ids=["version", "format", "json", "no-architecture", "shape-mismatch", "activation"])
def test_load_rejects_bad_metadata(tmp_path, edit, message):
    good = tmp_path / "good.npz"
    save_model(good, nn.MLP([3, 5, 2], rng=0))
    bad = tmp_path / "bad.npz"
    _rewrite_meta(good, bad, edit)
    with pytest.raises(ValueError, match=message) as info:
        load_model(bad)
    assert str(info.value).startswith(str(bad))


def test_load_rejects_other_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model(tmp_path / "none.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"hello")
    with pytest.raises(ValueError, match="not a zip archive"):
        load_model(junk)
    plain = tmp_path / "plain.npz"
    nn.MLP([3, 2], rng=0).save(plain)  # parameters only
    with pytest.raises(ValueError, match="no fastbp metadata"):
        load_model(plain)
