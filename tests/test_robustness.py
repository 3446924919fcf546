"""Hostile input from outside (issue 10, items 3-4): no tracebacks, one error voice for files.

Each test here failed on the code before the fix: the CLI printed a MemoryError or
RecursionError traceback, ``Module.load`` leaked ``BadZipFile`` or NumPy's "pickled data", an
archive header could make the reader allocate terabytes, ``MLP(8)`` said "'int' object is not
iterable", a rebound parameter reached a kernel, ``predict_proba`` of nothing was (0, 0).
Inputs the fuzz targets (fuzz/) found are pinned at the end.
"""

import io
import json
import re
import zipfile

import numpy as np
import pytest

import fastbp
from fastbp import _config, cli, nn
from fastbp.io import META_KEY, load_model, save_model

# ------------------------------------------------------------------------ archive builders


def _npy(array=None, header=None, data=b""):
    """The bytes of one .npy member: `array` written normally, or a raw `header` plus `data`."""
    buf = io.BytesIO()
    if header is None:
        np.lib.format.write_array(buf, array, allow_pickle=True)
    else:
        np.lib.format.write_array_header_1_0(buf, header)
        buf.write(data)
    return buf.getvalue()


def _zip(path, members):
    """Write a zip archive of {member name: bytes}."""
    with zipfile.ZipFile(path, "w") as z:
        for name, payload in members.items():
            z.writestr(name, payload)
    return path


def _model_file(tmp_path, model=None, meta=None):
    path = tmp_path / "model.npz"
    save_model(path, model or nn.MLP([64, 5, 10], rng=0), meta or {"data": "digits"})
    return path


def _members(path):
    with zipfile.ZipFile(path) as z:
        return {info.filename: z.read(info) for info in z.infolist()}


def _with_meta(tmp_path, edit, arrays=None):
    """A saved model file whose metadata record is replaced by edit(record) (a JSON text)."""
    members = _members(_model_file(tmp_path))
    record = json.loads(np.load(io.BytesIO(members[META_KEY + ".npy"]))[0])
    members[META_KEY + ".npy"] = _npy(np.array([edit(record)]))
    for name, array in (arrays or {}).items():
        if array is None:
            members.pop(name + ".npy")
        else:
            members[name + ".npy"] = _npy(array)
    return _zip(tmp_path / "tampered.npz", members)


def _nested(depth):
    value = []
    for _ in range(depth):
        value = [value]
    return value


def _arch(**changes):
    return lambda r: json.dumps({**r, "architecture": {**r["architecture"], **changes}})


TAMPERED = {
    "huge-sizes": (_arch(sizes=[64, 10**12, 10]), None, "'0.W' is float32 (64, 5)"),
    "nested-100k": (lambda r: "[" * 100_000 + "]" * 100_000, None, "not valid JSON"),
    "nested-in-extra-key": (lambda r: json.dumps({**r, "data": _nested(40)}), None,
                            "nested more than 32"),
    "sizes-string": (_arch(sizes="64,5,10"), None, "'sizes' must be a list"),
    "sizes-float": (_arch(sizes=[64, 5.0, 10]), None, "integers >= 1"),
    "sizes-bool": (_arch(sizes=[64, True, 10]), None, "integers >= 1"),
    "sizes-one": (_arch(sizes=[64]), None, "at least two"),
    "bias-string": (_arch(bias="yes"), None, "'bias' must be true or false"),
    "activation-list": (_arch(activation=["relu"]), None, "'activation' must be a string"),
    "kwargs-list": (_arch(activation_kwargs=[1]), None, "'activation_kwargs' must be an object"),
    "kwargs-unknown": (_arch(activation_kwargs={"beta": 1}), None, "beta"),
    "dtype-int": (_arch(dtype="int8"), None, "dtype must be 'float32' or 'float64'"),
    "missing-key": (lambda r: json.dumps({**r, "architecture": {
        k: v for k, v in r["architecture"].items() if k != "loss"}}), None, "expected"),
    "array-missing": (lambda r: json.dumps(r), {"2.b": None}, "missing ['2.b']"),
    "array-extra": (lambda r: json.dumps(r), {"4.W": np.zeros((10, 3), np.float32)},
                    "unexpected ['4.W']"),
    "array-dtype": (lambda r: json.dumps(r), {"0.W": np.zeros((64, 5), np.float64)},
                    "'0.W' is float64"),
    "array-int": (lambda r: json.dumps(r), {"0.b": np.zeros(5, np.int32)}, "'0.b' is int32"),
}


@pytest.mark.parametrize("edit,arrays,message", TAMPERED.values(), ids=TAMPERED.keys())
def test_load_model_checks_metadata_against_the_arrays_first(tmp_path, edit, arrays, message):
    path = _with_meta(tmp_path, edit, arrays)
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        load_model(path)
    assert str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize("command", ["evaluate", "predict"])
@pytest.mark.parametrize("case", ["huge-sizes", "nested-100k", "sizes-float", "array-dtype"])
def test_cli_on_a_tampered_model_prints_one_line(tmp_path, capsys, command, case):
    edit, arrays, message = TAMPERED[case]
    path = _with_meta(tmp_path, edit, arrays)
    assert cli.main([command, str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"fastbp: error: {path}: ") and err.count("\n") == 1, err
    assert message in err


def test_cli_train_too_large_a_network_is_one_line(capsys):
    assert cli.main(["train", "--hidden", "10000000000", "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fastbp: error: out of memory") and err.count("\n") == 1, err
    assert "10000000000" in err  # NumPy's message names the shape it could not allocate


# -------------------------------------------------------------- one voice for file problems


class _Unpickled(Exception):
    pass


def _explode():
    raise _Unpickled("the archive was unpickled")


class _Trap:
    def __reduce__(self):
        return (_explode, ())


def _saved(tmp_path, model):
    path = tmp_path / "params.npz"
    model.save(path)
    return path


def _truncated(tmp_path, good):
    data = good.read_bytes()
    return _write(tmp_path / "truncated.npz", data[: len(data) // 2])


def _corrupted(tmp_path, good):
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as z:
        start = z.infolist()[0].header_offset + 30 + len(z.infolist()[0].filename)
    data[start + 20: start + 60] = b"\xff" * 40  # inside the first member's .npy header
    return _write(tmp_path / "corrupted.npz", bytes(data))


def _write(path, data):
    path.write_bytes(data)
    return path


BAD_FILES = {
    "truncated": (_truncated, "not an .npz (model )?file"),
    "corrupted": (_corrupted, "entry '0.W' is not a readable array"),
    "text": (lambda t, g: _write(t / "notes.npz", b"just some text\n" * 20),
             "not an .npz (model )?file"),
    "npy": (lambda t, g: _write(t / "one.npy", _npy(np.zeros((5, 8), np.float32))),
            "not an .npz (model )?file"),
    "object-array": (lambda t, g: _zip(t / "evil.npz", {"0.W.npy": _npy(np.array(
        [_Trap()], dtype=object))}), "refused"),
    "huge-header": (lambda t, g: _zip(t / "huge.npz", {"0.W.npy": _npy(header={
        "descr": "<f4", "fortran_order": False, "shape": (10**12,)}, data=b"\0" * 16)}),
        r"declares shape \(1000000000000,\)"),
    "short-data": (lambda t, g: _zip(t / "short.npz", {"0.W.npy": _npy(header={
        "descr": "<f4", "fortran_order": False, "shape": (5, 8)}, data=b"\0" * 16)}),
        "holds 16 bytes"),
    "not-npy-member": (lambda t, g: _zip(t / "other.npz", {"readme.txt": b"hi"}),
                       "is not an .npy array"),
    "struct-dtype": (lambda t, g: _zip(t / "rec.npz", {"0.W.npy": _npy(np.zeros(
        3, [("a", "<f4")]))}), "not a plain numeric"),
}
MODEL_PROBLEMS = {
    "missing-key": (lambda m: {k: v for k, v in m.state_dict().items() if k != "2.b"},
                    r"missing \['2.b'\]"),
    "wrong-shape": (lambda m: {**m.state_dict(), "0.W": np.zeros((5, 9), np.float32)},
                    r"state\['0.W'\] has shape"),
    "int-dtype": (lambda m: {**m.state_dict(), "0.b": np.zeros(8, np.int64)},
                  "expected floating point"),
}


@pytest.mark.parametrize("make,message", BAD_FILES.values(), ids=BAD_FILES.keys())
@pytest.mark.parametrize("reader", ["Module.load", "load_model"])
def test_bad_files_are_one_value_error_naming_the_file(tmp_path, make, message, reader):
    model = nn.MLP([5, 8, 3], rng=0)
    path = make(tmp_path, _saved(tmp_path, model))
    before = model.state_dict()
    load = model.load if reader == "Module.load" else load_model
    with pytest.raises(ValueError, match=message) as info:
        load(path)
    assert str(info.value).startswith(f"{path}: ")
    for name, p in model.params.items():
        np.testing.assert_array_equal(p, before[name])


@pytest.mark.parametrize("state,message", MODEL_PROBLEMS.values(), ids=MODEL_PROBLEMS.keys())
def test_module_load_mismatch_is_a_value_error(tmp_path, state, message):
    model = nn.MLP([5, 8, 3], rng=0)
    path = tmp_path / "p.npz"
    np.savez(path, **state(model))
    with pytest.raises(ValueError, match=message) as info:
        model.load(path)
    assert str(info.value).startswith(f"{path}: ")


def test_module_load_reads_compressed_and_fortran_archives(tmp_path):
    model = nn.MLP([5, 8, 3], rng=0)
    path = tmp_path / "c.npz"
    np.savez_compressed(path, **{k: np.asfortranarray(v) for k, v in model.state_dict().items()})
    other = nn.MLP([5, 8, 3], rng=1).load(path)
    for name, p in model.params.items():
        np.testing.assert_array_equal(other.params[name], p)
        assert other.params[name].flags.c_contiguous


# ------------------------------------------------------------------------- nn constructors


@pytest.mark.parametrize("sizes,exc,message", [
    (None, TypeError, "sizes must be a sequence of ints"),
    (8, TypeError, "sizes must be a sequence of ints"),
    ("64,10", TypeError, "sizes must be a sequence of ints"),
    ([8, "4"], TypeError, r"sizes\[1\] must be an int"),
    ([8, 4.0], TypeError, r"sizes\[1\] must be an int"),
    ([8, 0, 3], ValueError, r"sizes\[1\] must be >= 1"),
    ([8], ValueError, "at least input and output"),
])
def test_mlp_sizes(sizes, exc, message):
    with pytest.raises(exc, match=message):
        nn.MLP(sizes)


# ------------------------------------------------------------- parameters rebound by a user


@pytest.mark.parametrize("rebind,exc,message", [
    (lambda w: np.asfortranarray(w), ValueError, "C-contiguous"),
    (lambda w: w.astype(np.float64), TypeError, "float32 array"),
    (lambda w: w[:, :3], ValueError, r"shape \(5, 4\)"),
    (lambda w: w.tolist(), TypeError, "got list"),
])
def test_a_rebound_parameter_is_named(rng, rebind, exc, message):
    model = nn.MLP([5, 4, 3], rng=0)
    model.layers[0].params["W"] = rebind(model.layers[0].params["W"])
    x = rng.standard_normal((6, 5)).astype(np.float32)
    with pytest.raises(exc, match=rf"Linear\(5, 4.*params\['W'\] must be.*{message}"
                       if exc is TypeError else rf"params\['W'\] must be.*{message}"):
        model.forward(x)


def test_a_parameter_rebound_after_forward_is_named_by_backward(rng):
    model = nn.MLP([5, 4, 3], rng=0)
    x = rng.standard_normal((6, 5)).astype(np.float32)
    out = model.forward(x)
    model.layers[2].params["W"] = np.asfortranarray(model.layers[2].params["W"])
    with pytest.raises(ValueError, match=r"params\['W'\] must be a C-contiguous"):
        model.backward(np.ones_like(out))


def test_a_rebound_parameter_of_the_right_kind_is_used(rng):
    model = nn.MLP([5, 4, 3], rng=0)
    x = rng.standard_normal((6, 5)).astype(np.float32)
    w = np.ascontiguousarray(model.layers[0].params["W"][::-1])
    model.layers[0].params["W"] = w
    expected = np.maximum(x @ w + model.layers[0].params["b"], 0) @ model.layers[2].params["W"]
    np.testing.assert_allclose(model.forward(x), expected + model.layers[2].params["b"],
                               rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- empty input


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_predict_on_an_empty_batch(dtype):
    model = nn.MLP([5, 4, 3], dtype=dtype, rng=0)
    proba = model.predict_proba(np.empty((0, 5), dtype))
    assert proba.shape == (0, 3) and proba.dtype == dtype
    labels = model.predict(np.empty((0, 5)))
    assert labels.shape == (0,) and labels.dtype == np.int64


# ------------------------------------------------------------------------------------ threads


def test_set_num_threads_caps_the_blas_pool_too():
    """Found by the Python 3.10 CI stage: set_num_threads(10_000) gave OpenBLAS 64 workers on
    2 cores, and OpenBLAS 0.3.28 then crashed under concurrent callers."""
    from threadpoolctl import threadpool_info

    before = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    try:
        fastbp.set_num_threads(10_000)
        pools = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
        assert pools and max(pools) <= _config.USABLE_CORES
    finally:
        fastbp.set_num_threads(max(before) if before else None)
        fastbp.set_num_threads(None)
