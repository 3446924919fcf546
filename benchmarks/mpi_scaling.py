"""Data-parallel scaling: one ``DataParallel.train_step`` and its all-reduce, per rank count.

Run under MPI with each rank count to compare (the README's numbers came from this script)::

    mpiexec -n 1 python benchmarks/mpi_scaling.py --sizes 784,1024,1024,10 --batch 256
    mpiexec -n 2 python benchmarks/mpi_scaling.py --sizes 784,1024,1024,10 --batch 256

Not a pytest-benchmark file: a step is a collective over every rank, so the ranks must time the
same steps in lock step.  ``tests/test_distributed.py`` smoke-runs it on tiny shapes.

Printed (rank 0): the median step time over ``--steps`` timed steps (after warm-up), the
median time of the step's Allreduce alone on the same buffer, their ratio (the all-reduce
share of a step), and the compute time per sample of the step without it.
"""

import argparse
import time

import numpy as np
from mpi4py import MPI

from fastbp import nn, optim
from fastbp.distributed import DataParallel, shard


def _median_seconds(run, steps, comm):
    times = []
    for _ in range(steps):
        comm.Barrier()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    slowest = np.array(times)
    comm.Allreduce(MPI.IN_PLACE, slowest, op=MPI.MAX)  # a step lasts as long as its slowest rank
    return float(np.median(slowest))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="784,1024,1024,10", help="layer sizes (default %(default)s)")
    p.add_argument("--batch", type=int, default=256, help="global batch rows (default %(default)s)")
    p.add_argument("--steps", type=int, default=20, help="timed steps (default %(default)s)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    args = p.parse_args()
    comm = MPI.COMM_WORLD
    sizes = [int(s) for s in args.sizes.split(",")]
    model = nn.MLP(sizes, dtype=args.dtype, rng=0)
    parallel = DataParallel(model, comm)
    opt = optim.SGD(0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, sizes[0])).astype(args.dtype)[shard(args.batch, comm)]
    y = rng.integers(0, sizes[-1], args.batch)[shard(args.batch, comm)]

    def step():
        parallel.train_step(x, y, model.criterion, opt)

    buffer = np.zeros(sum(p.size for p in model.params.values()) + 2, args.dtype)

    def allreduce():
        comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)

    for _ in range(3):  # warm-up: buffers, BLAS threads
        step()
    step_s = _median_seconds(step, args.steps, comm)
    allreduce_s = _median_seconds(allreduce, args.steps, comm)
    if comm.Get_rank() == 0:
        per_sample = (step_s - allreduce_s) * comm.Get_size() / args.batch
        print(f"{'-'.join(map(str, sizes))} {args.dtype}, global batch {args.batch}, "
              f"{comm.Get_size()} rank(s) x {parallel.threads} thread(s), "
              f"{buffer.nbytes / 1e6:.1f} MB all-reduced per step")
        print(f"step {step_s * 1e3:.2f} ms | allreduce {allreduce_s * 1e3:.2f} ms | "
              f"allreduce share {allreduce_s / step_s:.1%} | compute "
              f"{per_sample * 1e6:.1f} us/sample/rank (median of {args.steps} steps)")


if __name__ == "__main__":
    main()
