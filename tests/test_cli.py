"""fastbp.cli end to end: ``python -m fastbp`` in a subprocess (train, evaluate, predict, info,
--version), reproducibility, every data source, one-line errors with the right exit status,
Ctrl-C, --plot, and the progress bar (in process)."""

import csv
import io
import os
import signal
import struct
import json
import subprocess
import tempfile
import sys
from pathlib import Path

import numpy as np
import pytest

import fastbp
from fastbp import cli
from fastbp.io import load_model, save_model

#: options that keep a training run tiny (the defaults train 30 epochs of a 256-128 network)
TINY = ["--hidden", "16", "--epochs", "2", "--threads", "1"]


def _env():
    """os.environ with PYTHONPATH absolute and led by the fastbp under test (cwd changes)."""
    env = os.environ.copy()
    paths = [str(Path(fastbp.__file__).resolve().parents[1])]
    paths += [os.path.abspath(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


#: where the CLI runs unless a test says otherwise: never the checkout, whose uninstalled
#: ``fastbp/`` (no compiled kernels) ``python -m`` would put ahead of the installed package
OUTSIDE = tempfile.gettempdir()


def fastbp_cli(*args, cwd=None):
    """Run ``python -m fastbp *args``; returns the CompletedProcess (text mode)."""
    return subprocess.run([sys.executable, "-m", "fastbp", *map(str, args)], cwd=cwd or OUTSIDE,
                          env=_env(), capture_output=True, text=True, timeout=300)


def ok(*args, cwd=None):
    """Run the CLI and require exit status 0; returns stdout."""
    proc = fastbp_cli(*args, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout


def table(stdout):
    """The epoch table's rows as lists of cells, without the time and samples/s columns."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["epoch"]) + 1
    rows = []
    for line in lines[start:]:
        if not line.split()[0].isdigit():
            break
        rows.append(line.split()[:-2])
    return rows


def printed_accuracy(stdout):
    """The fraction printed on the 'test accuracy: 97.78% (352/360)' line, as (correct, n)."""
    line = next(line for line in stdout.splitlines() if line.startswith("test accuracy:"))
    correct, n = line.split("(")[1].split(")")[0].replace(",", "").split("/")
    return int(correct), int(n)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model path, stdout) of a tiny digits run saved with --save."""
    path = tmp_path_factory.mktemp("cli") / "model.npz"
    return path, ok("train", *TINY, "--save", path)


# ------------------------------------------------------------------------------------- basics


def test_version():
    assert ok("--version").strip() == f"fastbp {fastbp.__version__}"


def test_no_command_prints_help():
    out = ok()
    for name in cli.COMMANDS:
        assert name in out


def test_info_prints_show_config():
    buf = io.StringIO()
    fastbp.show_config(file=buf)
    keys = [line.split(":")[0] for line in buf.getvalue().splitlines() if line[:1] != " "]
    out = ok("info")
    assert [line.split(":")[0] for line in out.splitlines() if line[:1] != " "] == keys
    assert out.splitlines()[0].split() == ["fastbp:", fastbp.__version__]


def test_train_prints_table_and_saves(trained):
    path, out = trained
    assert "digits: bundled 8x8 digits" in out
    assert "1,293 train / 144 val / 360 test, 64 features, 10 classes" in out
    assert "64-16-10 MLP (relu, softmax loss, float32)" in out
    rows = table(out)
    assert [r[0] for r in rows] == ["1", "2"]
    assert all(len(r) == 5 for r in rows)  # epoch, train loss, train acc, val loss, val acc
    correct, n = printed_accuracy(out)
    assert n == 360 and correct > 36  # above chance after two epochs
    assert f"saved model to {path}" in out
    model, meta = load_model(path)
    assert meta["architecture"]["sizes"] == [64, 16, 10]
    assert meta["data"] == "digits"
    assert meta["train"]["epochs"] == 2 and meta["train"]["optimizer"] == "adam"


def test_evaluate_reports_the_accuracy_train_printed(trained):
    path, train_out = trained
    expected = printed_accuracy(train_out)
    out = ok("evaluate", path, "--data", "digits")
    assert printed_accuracy(out) == expected
    # without --data, the data set recorded in the model file
    assert printed_accuracy(ok("evaluate", path)) == expected


def test_predict_prints_csv(trained):
    path, _ = trained
    out = ok("predict", path, "--limit", "5")
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["index", "label", "predicted"]
    assert [r[0] for r in rows[1:]] == ["0", "1", "2", "3", "4"]


def test_predict_output_file_matches_the_model(trained, tmp_path):
    path, train_out = trained
    target = tmp_path / "preds.csv"
    out = ok("predict", path, "--proba", "--output", target)
    correct, n = printed_accuracy(train_out)
    assert out.strip() == f"wrote {n} predictions ({correct} correct) to {target}"
    with open(target, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["index", "label", "predicted"] + [f"p{k}" for k in range(10)]
    body = np.array(rows[1:], dtype=float)
    assert body.shape == (n, 13)
    np.testing.assert_allclose(body[:, 3:].sum(axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(body[:, 2], body[:, 3:].argmax(axis=1))
    model, _ = load_model(path)
    ds = cli.load_dataset(cli.DataSpec("digits"))
    np.testing.assert_array_equal(body[:, 1], ds.y_test)
    np.testing.assert_array_equal(body[:, 2], model.predict(ds.X_test))


# ----------------------------------------------------------------------------- reproducibility


def test_same_seed_same_numbers_and_model(tmp_path):
    # hidden 512 with batches of 128: the weight updates and activations reach the parallel
    # (2-thread) kernels, not only the serial small-work path
    args = ["train", "--hidden", "512", "--epochs", "2", "--batch-size", "128", "--threads", "2"]
    first = ok(*args, "--save", tmp_path / "a.npz")
    second = ok(*args, "--save", tmp_path / "b.npz")
    assert table(first) == table(second)
    assert printed_accuracy(first) == printed_accuracy(second)
    a, _ = load_model(tmp_path / "a.npz")
    b, _ = load_model(tmp_path / "b.npz")
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])
    other = ok(*args, "--seed", "1")
    assert table(other) != table(first)


# ------------------------------------------------------------------------------- data sources


def test_spirals():
    out = ok("train", "--data", "spirals", "--epochs", "3", "--hidden", "32,16",
             "--threads", "1", "--optimizer", "momentum", "--loss", "svm", "--dtype", "float64")
    assert "216 train / 24 val / 60 test, 2 features, 3 classes" in out
    assert "2-32-16-3 MLP (relu, svm loss, float64)" in out
    assert "momentum lr=0.05" in out
    assert len(table(out)) == 3


def test_mnist_t10k_only(mnist_dir):
    out = ok("train", "--data", f"mnist:{mnist_dir}", "--hidden", "32", "--epochs", "1",
             "--batch-size", "64", "--threads", "1")
    if os.path.isfile(os.path.join(mnist_dir, "train-images-idx3-ubyte.gz")):
        assert "MNIST train images for training, t10k for test" in out
    else:
        assert "t10k images split 8,000 train / 2,000 test" in out
        assert "7,200 train / 800 val / 2,000 test, 784 features, 10 classes" in out
        correct, n = printed_accuracy(out)
        assert n == 2000 and correct > 1600  # one epoch of a small MLP: 87% measured


def _write_idx(path, array):
    a = np.ascontiguousarray(array, np.uint8)
    path.write_bytes(struct.pack(f">I{a.ndim}I", 0x0800 | a.ndim, *a.shape) + a.tobytes())


def _write_mnist(directory, kind, n, seed):
    rng = np.random.default_rng(seed)
    _write_idx(directory / f"{kind}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
    _write_idx(directory / f"{kind}-labels-idx1-ubyte", np.arange(n) % 10)


@pytest.mark.parametrize("with_train", [True, False])
def test_mnist_uses_train_images_when_present(tmp_path, with_train):
    _write_mnist(tmp_path, "t10k", 50, seed=0)
    if with_train:
        _write_mnist(tmp_path, "train", 100, seed=1)
    out = ok("train", "--data", f"mnist:{tmp_path}", *TINY)
    if with_train:
        assert "MNIST train images for training, t10k for test" in out
        assert "90 train / 10 val / 50 test" in out
    else:
        assert "the 50 t10k images split 40 train / 10 test" in out
        assert "36 train / 4 val / 10 test" in out


# ------------------------------------------------------------------------------------- errors


def _assert_one_line_error(proc, status):
    assert proc.returncode == status, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastbp: error: "), proc.stderr


@pytest.mark.parametrize("args", [
    ["train", "--hidden", "0,x"],
    ["train", "--hidden", "0"],
    ["train", "--hidden", "256,"],
    ["train", "--lr", "-0.1"],
    ["train", "--lr", "nan"],
    ["train", "--epochs", "0"],
    ["train", "--batch-size", "-3"],
    ["train", "--val-fraction", "1.5"],
    ["train", "--threads", "0"],
    ["train", "--seed", "-1"],
    ["train", "--data", "cifar"],
    ["train", "--data", "mnist:"],
    ["train", "--data", "digits:x"],
    ["train", "--optimizer", "lbfgs"],
    ["train", "--activation", "swish"],
    ["train", "--dtype", "float16"],
    ["train", "--no-such-option"],
    ["predict", "model.npz", "--limit", "0"],
    ["evaluate"],
    ["frobnicate"],
], ids=lambda a: " ".join(a))
def test_usage_errors_exit_2(args):
    _assert_one_line_error(fastbp_cli(*args), 2)


def test_runtime_errors_exit_1(trained, tmp_path):
    path, _ = trained
    junk = tmp_path / "junk.npz"
    junk.write_text("not a model")
    missing = tmp_path / "no-such-dir"
    regression = tmp_path / "mse.npz"
    save_model(regression, fastbp.nn.MLP([64, 8, 10], loss="mse", rng=0), {"data": "digits"})
    cases = {
        ("train", "--data", f"mnist:{missing}"): "MNIST directory not found",
        ("train", "--data", f"mnist:{tmp_path}"): "MNIST file not found",
        ("train", "--save", missing / "m.npz"): "does not exist",
        ("evaluate", tmp_path / "nope.npz"): "model file not found",
        ("evaluate", junk): "not an .npz model file",
        ("evaluate", path, "--data", "spirals"): "expects 64 features but --data spirals has 2",
        ("predict", regression): "handle classifiers",
        ("predict", path, "--output", missing / "p.csv"): "does not exist",
    }
    for args, message in cases.items():
        proc = fastbp_cli(*args)
        _assert_one_line_error(proc, 1)
        assert message in proc.stderr, (args, proc.stderr)


def test_ctrl_c_exits_130(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastbp", "train", "--epochs", "100000", *TINY[:2],
         "--threads", "1"], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=tmp_path)
    try:
        for line in proc.stdout:
            if line.strip().startswith("1 "):  # the first epoch row: training is under way
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert err.strip() == "fastbp: interrupted"


# ------------------------------------------------------------------------------------- extras


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    target = tmp_path / "curves.png"
    out = ok("train", *TINY, "--plot", target)
    assert f"saved curves to {target}" in out
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def restore_runtime():
    backend = fastbp.get_backend()
    yield
    fastbp.set_backend(backend)


def test_plot_without_matplotlib_fails_before_training(monkeypatch, capsys, tmp_path,
                                                       restore_runtime):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert cli.main(["train", "--plot", str(tmp_path / "c.png")]) == 1
    out, err = capsys.readouterr()
    assert out == ""  # nothing trained
    assert err == "fastbp: error: --plot needs matplotlib: pip install 'fastbp[plot]'\n"


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("have_tqdm", [True, False])
def test_progress_bar_only_with_tqdm_on_a_terminal(monkeypatch, capsys, have_tqdm,
                                                   restore_runtime):
    if have_tqdm:
        pytest.importorskip("tqdm")
    else:
        monkeypatch.setitem(sys.modules, "tqdm", None)
    args = ["train", "--hidden", "8", "--epochs", "1"]
    assert cli.main(args) == 0
    assert capsys.readouterr().err == ""  # stderr is not a terminal: no bar
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert cli.main(args) == 0
    assert ("epoch 1/1" in terminal.getvalue()) == have_tqdm


# ------------------------------------------------------------------------------------ bench


def test_bench_quick_prints_the_comparison_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = fastbp_cli("bench", "--quick", "--only", "fastbp,course-numpy,gemms-only",
                      "--min-time", "0.01", "--threads", "1", "--json", out)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("implementation") and "vs numpy" in line for line in lines)
    rows = json.loads(out.read_text())["rows"]
    mixed = [r for r in rows if r["kind"] == "mixed"]
    rows = [r for r in rows if r["kind"] == "step"]
    assert {r["implementation"] for r in rows} == {"fastbp", "course-numpy", "gemms-only"}
    assert sorted((r["implementation"], r["sizes"]) for r in mixed) == sorted(
        (name, sizes) for name in ("fastbp-after-matmul", "matmul-after-fastbp")
        for sizes in ("8-8-8-10", "784-100-10"))
    assert all(r["slowdown"] > 0 and r["alone_s"] > 0 for r in mixed)
    assert {(r["sizes"], r["batch"]) for r in rows} == {("8-8-8-10", 8), ("784-100-10", 64)}
    for r in rows:
        assert r["median_s"] > 0 and r["threads"] == 1 and r["rounds"] == 5
        base = next(q["median_s"] for q in rows if q["implementation"] == "course-numpy"
                    and q["sizes"] == r["sizes"])
        if r["implementation"] == "course-numpy":
            assert r["speedup_vs_course-numpy"] == 1.0
        else:  # a median of per-round ratios: close to, not equal to, the ratio of medians
            assert 0.5 < r["speedup_vs_course-numpy"] / (base / r["median_s"]) < 2


def test_bench_plot(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "bench.png"
    proc = fastbp_cli("bench", "--quick", "--only", "fastbp,course-numpy", "--min-time", "0.01",
                      "--rounds", "2", "--plot", out)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args,match", [
    (["--only", "fastbp,jax"], "--only: expected a comma list"),
    (["--min-time", "0"], "--min-time"),
    (["--dtype", "float16"], "--dtype"),
    (["--json", "/nonexistent-dir/x.json"], "does not exist"),
])
def test_bench_bad_arguments(args, match):
    proc = fastbp_cli("bench", "--quick", *args)
    assert proc.returncode in (1, 2)
    assert proc.stderr.startswith("fastbp: error:") and match in proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------- --norm


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_train_with_norm_saves_a_model_that_evaluates_the_same(tmp_path, norm):
    path = tmp_path / "m.npz"
    out = ok("train", *TINY, "--norm", norm, "--save", path)
    assert f"64-16-10 MLP (relu, {norm} norm, softmax loss, float32)" in out
    model, meta = load_model(path)
    assert model.norm == norm and meta["architecture"]["norm"] == norm
    if norm == "batch":
        assert not np.array_equal(model.buffers["1.running_var"], np.ones(16))
    evaluated = ok("evaluate", path)
    assert printed_accuracy(evaluated) == printed_accuracy(out)
    assert printed_accuracy(out)[0] > 0.5 * printed_accuracy(out)[1]


def test_norm_batch_refuses_a_last_minibatch_of_one():
    proc = fastbp_cli("train", *TINY, "--norm", "batch", "--batch-size", "2")  # 1,293 samples
    _assert_one_line_error(proc, 1)  # known only once the data are loaded: a runtime error
    assert "one sample" in proc.stderr and "--batch-size" in proc.stderr
