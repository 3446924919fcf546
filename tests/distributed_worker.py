"""Programs that tests/test_distributed.py runs under ``mpiexec -n 2 python THIS SCENARIO``.

Each scenario is a function of this module; rank 0 prints one JSON line with what it measured,
the test asserts on it (or on the exit status and stderr, for the failure scenarios).
"""

import json
import sys

import numpy as np
from mpi4py import MPI

from fastbp import data, nn, optim
from fastbp.distributed import DataParallel, abort_on_error, iterate_minibatches, shard

comm = MPI.COMM_WORLD
SIZES = [13, 17, 9, 5]
STEPS = 20
BATCH = 24
#: name -> where each rank's part of a 24-row batch starts (rank 0, rank 1, end)
SHARDS = {"equal": (0, 12, 24), "unequal": (0, 5, 24), "empty rank": (0, 0, 24)}
OPTIMIZERS = {"momentum": lambda: optim.SGD(0.1, momentum=0.9), "adam": lambda: optim.Adam(1e-2)}


def _report(result):
    if comm.rank == 0:
        print(json.dumps(result), flush=True)


def _flat(model):
    return np.concatenate([p.ravel() for p in model.params.values()])


def _same_on_every_rank(array):
    """True when `array` is bitwise equal on every rank."""
    mine = np.ascontiguousarray(array).view(np.uint8)
    first = mine.copy()
    comm.Bcast(first, root=0)
    return bool(comm.allreduce(int(np.array_equal(mine, first)), op=MPI.MIN))


def equivalence():
    """N-rank training == one process on the concatenated batches, for every case."""
    results = []
    rng = np.random.default_rng(0)
    for dtype in ("float64", "float32"):
        X = rng.standard_normal((STEPS, BATCH, SIZES[0])).astype(dtype)
        Y = rng.integers(0, SIZES[-1], (STEPS, BATCH))
        for opt_name, make in OPTIMIZERS.items():
            reference = nn.MLP(SIZES, dtype=dtype, rng=1)
            opt = make()
            ref_losses = [reference.train_step(X[t], Y[t], reference.criterion, opt)
                          for t in range(STEPS)]
            for shard_name, cuts in SHARDS.items():
                # rank 0 holds the reference's initial weights, the others something else
                model = nn.MLP(SIZES, dtype=dtype, rng=1 if comm.rank == 0 else 99 + comm.rank)
                parallel = DataParallel(model, comm)
                broadcast = _same_on_every_rank(_flat(model))
                opt = make()
                identical, losses = True, []
                part = slice(cuts[comm.rank], cuts[comm.rank + 1])
                for t in range(STEPS):
                    losses.append(parallel.train_step(X[t][part], Y[t][part], model.criterion,
                                                      opt))
                    identical &= _same_on_every_rank(_flat(model))
                error = max(float(np.abs(model.params[k] - p).max() / np.abs(p).max())
                            for k, p in reference.params.items())
                loss_error = max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses))
                results.append({"dtype": dtype, "optimizer": opt_name, "shards": shard_name,
                                "param_rel_error": error, "loss_rel_error": loss_error,
                                "identical_every_step": identical, "broadcast": broadcast})
    _report(results)


def optimizer_state():
    """Rank 0's optimizer state reaches every rank at first use; every optimizer and loss run."""
    model = nn.MLP([6, 7, 3], loss="mse", dtype=np.float64, rng=0)
    opt = optim.RMSProp(1e-2)
    if comm.rank == 0:  # a "checkpoint" only rank 0 loaded
        opt.step(model.params, {k: np.ones_like(v) for k, v in model.params.items()})
    parallel = DataParallel(model, comm)
    rng = np.random.default_rng(comm.rank)
    x, target = rng.standard_normal((4, 6)), rng.standard_normal((4, 3))
    parallel.train_step(x, target, nn.MSELoss(), opt)
    states = opt.state_dict()["state"]
    same_state = all(_same_on_every_rank(np.asarray(v)) for s in states.values()
                     for v in s.values())
    hinge = nn.MLP([6, 7, 3], loss="svm", rng=0)
    hinge_parallel = DataParallel(hinge, comm)
    sgd = optim.SGD(0.1, weight_decay=1e-3, nesterov=True, momentum=0.5)
    hinge_parallel.train_step(x.astype(np.float32), rng.integers(0, 3, 4), hinge.criterion, sgd)
    _report({"state_identical": same_state, "hinge_identical": _same_on_every_rank(_flat(hinge))})


class _Halve(nn.Module):
    """A user-defined layer (``x / 2``): no fused plan covers it."""

    def __init__(self):
        self.params, self.grads = {}, {}

    def forward(self, x):
        return x / 2

    def backward(self, dout):
        return dout / 2


def unfused_model():
    """A model the fused step cannot take: gradients reach the all-reduce buffer through the
    optimizer's ``step``, and training still equals one process."""
    def build():
        return nn.Sequential(nn.Linear(5, 7, dtype=np.float64, rng=0), nn.Tanh(), _Halve(),
                             nn.Linear(7, 3, dtype=np.float64, rng=1),
                             criterion=nn.SoftmaxCrossEntropy())
    rng = np.random.default_rng(4)
    X, Y = rng.standard_normal((STEPS, 9, 5)), rng.integers(0, 3, (STEPS, 9))
    reference, model = build(), build()
    parallel = DataParallel(model, comm)
    ref_opt, opt = optim.Adam(1e-2), optim.Adam(1e-2)
    part = slice((0, 2, 9)[comm.rank], (0, 2, 9)[comm.rank + 1])
    for t in range(STEPS):
        reference.train_step(X[t], Y[t], reference.criterion, ref_opt)
        parallel.train_step(X[t][part], Y[t][part], model.criterion, opt)
    error = max(float(np.abs(model.params[k] - p).max() / np.abs(p).max())
                for k, p in reference.params.items())
    _report({"param_rel_error": error, "identical": _same_on_every_rank(_flat(model))})


def batches():
    """The ranks' parts of each batch tile the single-process batch; shard tiles ranges."""
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((23, 4)), np.arange(23)
    tiles = True
    for n in range(8):
        parts = comm.allgather(shard(n, comm))
        tiles &= [i for s in parts for i in range(n)[s]] == list(range(n))
    mine = list(iterate_minibatches(X, y, 5, comm, seed=np.random.default_rng(7)))
    gathered = comm.allgather([yb.tolist() for _, yb in mine])
    expected = [yb.tolist() for _, yb in data.iterate_minibatches(
        X, y, 5, seed=np.random.default_rng(7))]
    joined = [a + b for a, b in zip(*gathered)]
    rows_match = all(np.array_equal(xb, X[yb]) for xb, yb in mine)
    fresh = [yb.tolist() for _, yb in iterate_minibatches(X, y, 5, comm)]  # seed=None
    fresh_ok = sorted(sum(comm.allgather(sum(fresh, [])), [])) == list(range(23))
    try:
        list(iterate_minibatches(X, y, 5, comm, seed=comm.rank))
        seed_error = ""
    except ValueError as e:
        seed_error = str(e)
    _report({"shard_tiles": tiles, "batches_match": joined == expected,
             "rows_match": rows_match, "fresh_seed_ok": fresh_ok, "seed_error": seed_error})


def threads():
    """Threads per rank (fastbp's and BLAS's) after creating a DataParallel; argv[2] == "user"
    means the user called fastbp.set_num_threads(2) first."""
    import fastbp
    from threadpoolctl import threadpool_info

    from fastbp._config import USABLE_CORES

    if sys.argv[2:] == ["user"]:
        fastbp.set_num_threads(2)
    parallel = DataParallel(nn.MLP([3, 2]), comm)
    blas = sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})
    _report({"threads": parallel.threads, "fastbp": fastbp.get_num_threads(), "blas": blas,
             "usable_cores": USABLE_CORES})


def bad_arguments():
    """Clear errors (type and message) for arguments that can be checked locally."""
    cases = {
        "shard(-1)": lambda: shard(-1, comm),
        "shard(2.5)": lambda: shard(2.5, comm),
        "shard(comm='world')": lambda: shard(3, "world"),
        "DataParallel(Linear)": lambda: DataParallel(nn.Linear(3, 2), comm),
        "train_step(optimizer=None)": lambda: DataParallel(nn.MLP([3, 2]), comm).train_step(
            np.ones((2, 3), np.float32), [0, 1], nn.SoftmaxCrossEntropy(), None),
        "iterate_minibatches(3 rows, 2 labels)": lambda: list(iterate_minibatches(
            np.ones((3, 2)), np.ones(2), 2, comm)),
        "train_step(every rank empty)": lambda: DataParallel(nn.MLP([3, 2]), comm).train_step(
            np.ones((0, 3), np.float32), np.ones(0, int), nn.SoftmaxCrossEntropy(),
            optim.SGD(0.1)),
    }
    errors = {}
    for name, call in cases.items():
        try:
            call()
            errors[name] = "no error"
        except (TypeError, ValueError) as e:
            errors[name] = f"{type(e).__name__}: {e}"
    _report(errors)


def fail_in_step():
    """Rank 1 passes an out-of-range label at step 3: DataParallel aborts every rank."""
    model = nn.MLP([6, 8, 3], rng=0)
    parallel = DataParallel(model, comm)
    opt = optim.Adam()
    rng = np.random.default_rng(0)
    for t in range(10):
        x, y = rng.standard_normal((4, 6)).astype(np.float32), rng.integers(0, 3, 4)
        if t == 3 and comm.rank == 1:
            y[0] = 7
        parallel.train_step(x, y, model.criterion, opt)
    print("finished", flush=True)


def fail_in_user_code():
    """Rank 1 raises in the user's own loop at step 3, under abort_on_error."""
    model = nn.MLP([6, 8, 3], rng=0)
    parallel = DataParallel(model, comm)
    opt = optim.SGD(0.1)
    rng = np.random.default_rng(0)
    with abort_on_error(comm):
        for t in range(10):
            if t == 3 and comm.rank == 1:
                raise RuntimeError("corrupt shard file")
            x, y = rng.standard_normal((4, 6)).astype(np.float32), rng.integers(0, 3, 4)
            parallel.train_step(x, y, model.criterion, opt)
    print("finished", flush=True)


def mismatched_models():
    """Rank 1 builds a float64 model: every rank raises ValueError at creation.

    Each rank prints its error in one flushed write and the ranks meet at a barrier before
    exiting 1: mpiexec kills the other ranks as soon as one exits with an error, which cut the
    second rank's traceback mid-write (seen in CI).  A rank that did not raise prints "no
    error" and exits 0, leaving the other at the barrier (the test's timeout then fails)."""
    try:
        DataParallel(nn.MLP([6, 8, 3], dtype=np.float64 if comm.rank else np.float32, rng=0),
                     comm)
    except ValueError as e:
        print(f"rank {comm.rank}: ValueError: {e}", file=sys.stderr, flush=True)
        comm.Barrier()
        sys.exit(1)
    print("no error", flush=True)


if __name__ == "__main__":
    globals()[sys.argv[1]]()
