"""The swap-the-import case of issue 8: CS231n ``FullyConnectedNet([256, 256])`` + ``Solver``.

adam, lr 1e-3, batch 100, 3 epochs, float64, on the first 8,000 MNIST t10k images (the other
2,000 validate), after one ``np.matmul`` (as in any notebook).  Each backend runs in its OWN
process, rounds alternate, and the medians are printed:

* ``compiled`` -- fastbp.models on fastbp's kernels;
* ``numpy``    -- the same course code on fastbp's NumPy reference kernels (plain NumPy:
  ``x.reshape(N, -1) @ w + b``, ``np.maximum``, a max-shifted softmax), standing in for the
  course's own NumPy layers.

Usage::

    FASTBP_MNIST_DIR=../shared/data/mnist python benchmarks/course_solver.py [--rounds 3]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np


def run_once(backend):
    """Train once in this process; returns (seconds, best validation accuracy)."""
    import fastbp
    from fastbp import data, models

    x, y = data.load_mnist(os.environ["FASTBP_MNIST_DIR"], "t10k")
    x = x.reshape(len(x), -1).astype(np.float64)
    y = y.astype(np.int64)
    split = dict(X_train=x[:8000], y_train=y[:8000], X_val=x[8000:], y_val=y[8000:])
    np.random.seed(0)
    with fastbp.use_backend(backend):
        model = models.FullyConnectedNet([256, 256], input_dim=x.shape[1], num_classes=10,
                                         dtype=np.float64, weight_scale=5e-2)
        solver = models.Solver(model, split, update_rule="adam",
                               optim_config={"learning_rate": 1e-3}, batch_size=100,
                               num_epochs=3, verbose=False)
        np.matmul(x[:256, :256], x[:256, :256])
        start = time.perf_counter()
        solver.train()
        return time.perf_counter() - start, solver.best_val_acc


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--worker", choices=("compiled", "numpy"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        seconds, acc = run_once(args.worker)
        print(f"{seconds} {acc}")
        return
    if not os.environ.get("FASTBP_MNIST_DIR"):
        sys.exit("set FASTBP_MNIST_DIR to a directory of MNIST IDX files")
    times = {"compiled": [], "numpy": []}
    accuracy = {}
    for r in range(args.rounds):
        for backend in (("compiled", "numpy") if r % 2 == 0 else ("numpy", "compiled")):
            out = subprocess.run([sys.executable, __file__, "--worker", backend],
                                 capture_output=True, text=True, check=True).stdout.split()
            times[backend].append(float(out[0]))
            accuracy[backend] = float(out[1])
    med = {b: statistics.median(t) for b, t in times.items()}
    for backend in times:
        print(f"{backend:9s} median {med[backend]:.2f} s over {args.rounds} rounds "
              f"({', '.join(f'{t:.2f}' for t in times[backend])}), best val acc "
              f"{accuracy[backend]:.4f}")
    print(f"fastbp compiled is {med['numpy'] / med['compiled']:.2f}x the NumPy course layers")


if __name__ == "__main__":
    main()
