"""fastbp.distributed under ``mpiexec -n 2``: data-parallel training equals single-process
training, every rank stays identical, failures end every rank (never a hang), and
``fastbp train --distributed`` matches the single-process run.

This process never initialises MPI: each test launches ``mpiexec -n 2 python ...`` (the
scenarios live in ``distributed_worker.py``) with a timeout.  ``FASTBP_MPIEXEC`` overrides the
launcher command (e.g. ``"mpiexec -launcher fork"`` where hydra cannot start ranks itself).
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fastbp

HERE = Path(__file__).resolve().parent
WORKER = HERE / "distributed_worker.py"
ROOT = HERE.parent
MPIEXEC = shlex.split(os.environ.get("FASTBP_MPIEXEC", "mpiexec"))
#: seconds any one mpiexec run may take before the test fails (a hang, not a slow machine)
TIMEOUT = 60


def _env():
    """os.environ with the fastbp under test first on PYTHONPATH (the ranks import it)."""
    env = os.environ.copy()
    paths = [str(Path(fastbp.__file__).resolve().parents[1])]
    paths += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.pop("OMP_NUM_THREADS", None)
    return env


def _run(argv, timeout=TIMEOUT):
    return subprocess.run(argv, cwd=HERE, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _missing_mpi():
    try:
        import mpi4py  # noqa: F401  (the package only: MPI is not initialised here)
    except ImportError:
        return "mpi4py is not installed (pip install 'fastbp[mpi]')"
    if shutil.which(MPIEXEC[0]) is None:
        return f"{MPIEXEC[0]} is not on PATH (pip install 'fastbp[mpi]' brings mpich's)"
    return None


needs_mpi = pytest.mark.skipif(_missing_mpi() is not None, reason=str(_missing_mpi()))


def mpirun(*args, n=2):
    """``mpiexec -n N python ARGS``; returns the CompletedProcess (text)."""
    return _run([*MPIEXEC, "-n", str(n), sys.executable, *map(str, args)])


def report(*scenario):
    """Run a worker scenario that must succeed; returns rank 0's JSON report."""
    proc = mpirun(WORKER, *scenario)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- without an MPI runtime


def test_import_fastbp_never_imports_mpi4py():
    code = ("import sys, fastbp, fastbp.cli, fastbp.nn, fastbp.data; "
            "print('mpi4py' in sys.modules)")
    out = _run([sys.executable, "-c", code]).stdout
    assert out.strip() == "False"


def test_without_mpi4py_import_and_cli_name_the_extra():
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "try:\n    import fastbp.distributed\nexcept ImportError as e:\n    print(e)\n"
            "from fastbp.cli import main\n"
            "sys.exit(main(['train', '--distributed', '--epochs', '1']))")
    proc = _run([sys.executable, "-c", code])
    assert "pip install 'fastbp[mpi]'" in proc.stdout
    assert proc.returncode == 1
    assert "fastbp: error: --distributed: fastbp.distributed needs mpi4py" in proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------ equivalence


@pytest.fixture(scope="module")
def equivalence():
    return report("equivalence")


#: parameters after 20 steps vs one process on the concatenated batches (relative, max-norm)
TOLERANCE = {"float64": 1e-12, "float32": 1e-5}


@needs_mpi
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
@pytest.mark.parametrize("shards", ["equal", "unequal", "empty rank"])
def test_two_ranks_train_like_one_process(equivalence, dtype, optimizer, shards):
    case = next(c for c in equivalence if (c["dtype"], c["optimizer"], c["shards"])
                == (dtype, optimizer, shards))
    assert case["param_rel_error"] < TOLERANCE[dtype]
    assert case["loss_rel_error"] < TOLERANCE[dtype]
    assert case["broadcast"], "rank 0's parameters were not broadcast at creation"
    assert case["identical_every_step"], "parameters differ between ranks after some step"


@needs_mpi
def test_optimizer_state_broadcast_and_other_optimizers_and_losses():
    result = report("optimizer_state")
    assert result == {"state_identical": True, "hinge_identical": True}


@needs_mpi
def test_unfused_model_trains_like_one_process():
    result = report("unfused_model")
    assert result["param_rel_error"] < TOLERANCE["float64"]
    assert result["identical"]


@needs_mpi
def test_sharded_batches_tile_the_single_process_batches():
    result = report("batches")
    assert result["shard_tiles"] and result["batches_match"] and result["rows_match"]
    assert result["fresh_seed_ok"]
    assert result["seed_error"].startswith("the data (pass the same X, y and seed on every "
                                           "rank) differs between ranks: rank 1 has")


@needs_mpi
def test_each_rank_takes_its_share_of_the_cores():
    result = report("threads")
    share = max(1, result["usable_cores"] // 2)  # two ranks on one node, same cores
    assert result["threads"] == result["fastbp"] == share
    assert result["blas"] == [share]


@needs_mpi
def test_a_user_thread_setting_wins():
    result = report("threads", "user")
    assert result["threads"] == result["fastbp"] == min(2, result["usable_cores"])


@needs_mpi
def test_bad_arguments_raise_clear_errors():
    errors = report("bad_arguments")
    assert errors == {
        "shard(-1)": "ValueError: n_rows must be >= 0, got -1",
        "shard(2.5)": "TypeError: n_rows must be an int, got float",
        "shard(comm='world')": "TypeError: comm must be an mpi4py.MPI.Comm (or None for "
                               "COMM_WORLD), got str",
        "DataParallel(Linear)": "TypeError: model must be a fastbp.nn.Sequential (MLP), got "
                                "Linear",
        "train_step(optimizer=None)": "TypeError: optimizer must be a fastbp.optim optimizer, "
                                      "got NoneType",
        "iterate_minibatches(3 rows, 2 labels)": "ValueError: X and y must hold the same number "
                                                 "of rows, got shapes (3, 2) and (2,)",
        "train_step(every rank empty)": "ValueError: the global batch is empty: every rank "
                                        "passed 0 rows",
    }


# ---------------------------------------------------------------------------------- failures


@needs_mpi
@pytest.mark.parametrize("scenario, message", [
    ("fail_in_step", "rank 1 of 2: ValueError: y must lie in [0, 3), found label 7"),
    ("fail_in_user_code", "rank 1 of 2: RuntimeError: corrupt shard file"),
])
def test_a_failing_rank_ends_every_rank_quickly(scenario, message):
    start = time.monotonic()
    proc = mpirun(WORKER, scenario)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert f"fastbp: error: {message} (aborting every rank)" in proc.stderr
    assert "finished" not in proc.stdout  # rank 0 did not carry on alone
    assert elapsed < 30


@needs_mpi
def test_mismatched_models_raise_on_every_rank():
    proc = mpirun(WORKER, "mismatched_models")
    assert proc.returncode != 0
    expected = ("ValueError: the model differs between ranks: rank 1 has layer 0: Linear(6, 8, "
                "bias=True, dtype=float64) where rank 0 has layer 0: Linear(6, 8, bias=True, "
                "dtype=float32)")
    for rank in (0, 1):  # both ranks raise, neither waits for the other
        assert f"rank {rank}: {expected}" in proc.stderr, proc.stderr[-3000:]


# ------------------------------------------------------------------------------- command line


def _table(stdout):
    """Epoch rows without the time columns, and the test accuracy line without the timing."""
    lines = stdout.splitlines()
    rows = [line.split()[:-2] for line in lines if line.split()[:1] in (["1"], ["2"])]
    accuracy = next(line.split("|")[0] for line in lines if line.startswith("test accuracy"))
    return rows, accuracy


@needs_mpi
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cli_distributed_matches_single_process(tmp_path, dtype):
    options = ["train", "--epochs", "2", "--hidden", "16", "--dtype", dtype]
    single = _run([sys.executable, "-m", "fastbp", *options, "--threads", "1"])
    assert single.returncode == 0, single.stderr
    model = tmp_path / "model.npz"
    proc = mpirun("-m", "fastbp", *options, "--distributed", "--save", model)
    assert proc.returncode == 0, proc.stderr
    assert _table(proc.stdout) == _table(single.stdout)
    # rank 0 alone prints and saves
    assert proc.stdout.count("epoch  train loss") == 1
    assert proc.stdout.startswith("distributed: 2 MPI ranks, ")
    assert proc.stdout.count(f"saved model to {model}") == 1 and model.is_file()


@needs_mpi
def test_cli_user_error_is_one_line_and_ends_every_rank():
    proc = mpirun("-m", "fastbp", "train", "--distributed", "--data", "mnist:/nonexistent")
    assert proc.returncode == 1
    assert ("of 2: --data mnist:/nonexistent: /nonexistent: MNIST directory not found (or not a "
            "directory) (aborting every rank)") in proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------- benchmark


@needs_mpi
def test_scaling_benchmark_runs_on_tiny_shapes():
    proc = mpirun(ROOT / "benchmarks" / "mpi_scaling.py", "--sizes", "8,16,4",
                  "--batch", "8", "--steps", "3")
    assert proc.returncode == 0, proc.stderr
    assert "allreduce share" in proc.stdout

