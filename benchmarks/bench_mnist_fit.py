"""End-to-end MNIST fit (issue 8's "MNIST fit" row): fastbp ``nn.MLP`` + ``optim.Adam`` against
scikit-learn's ``MLPClassifier`` and a PyTorch eager loop, each in its OWN process.

The case: the first 8,000 MNIST t10k images train, the other 2,000 test; 784-256-10, relu,
softmax cross-entropy, Adam lr 1e-3 (betas 0.9/0.999, eps 1e-8), batch 64 drawn in a fresh
shuffled order each epoch, 10 epochs, no weight decay (scikit-learn: ``alpha=0``, ``tol=0`` so
it runs every epoch), each framework's default initialisation.  What is timed is the training
loop alone (data loaded and converted before the clock starts), as a user's script runs it:

* ``fastbp``          ``nn.MLP([784, 256, 10])`` (float32), ``model.train_step`` per batch over
                      ``data.iterate_minibatches`` (one compiled call per step);
* ``sklearn-float64`` ``MLPClassifier(solver="adam")`` on float64 data (its default);
* ``sklearn-float32`` the same given float32 data (it then trains in float32);
* ``torch``           ``nn.Sequential(Linear, ReLU, Linear)`` + ``torch.optim.Adam``, float32,
                      batches by ``torch.randperm``.

Rounds alternate the order of the implementations; the medians over rounds are printed with
fastbp's speed-up over each, in wall-clock and in CPU seconds of the process
(``time.process_time``), and each one's test accuracy::

    FASTBP_MNIST_DIR=../shared/data/mnist python benchmarks/bench_mnist_fit.py [--rounds 3]
        [--threads 1] [--epochs 10]

An implementation whose library is missing is left out with a note.  Under pytest the script
mode is smoke-run on a tiny synthetic problem (``FASTBP_BENCH_TINY=1`` or no MNIST).
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np

IMPLEMENTATIONS = ("fastbp", "sklearn-float64", "sklearn-float32", "torch")
#: the library each implementation needs
REQUIRES = {"fastbp": "fastbp", "sklearn-float64": "sklearn", "sklearn-float32": "sklearn",
            "torch": "torch"}
HIDDEN, LR, BATCH, EPOCHS, N_TRAIN = 256, 1e-3, 64, 10, 8000


def load_case(tiny=False):
    """(X_train, y_train, X_test, y_test): float32 and int64 labels.  `tiny` (or no
    ``FASTBP_MNIST_DIR``): 200 + 50 synthetic rows of 784 features, 10 separable classes."""
    if tiny or not os.environ.get("FASTBP_MNIST_DIR"):
        rng = np.random.default_rng(0)  # class k lights up features 78k .. 78k + 77
        y = rng.integers(0, 10, 250)
        x = rng.random((250, 784), dtype=np.float32)
        x[np.arange(250)[:, None], 78 * y[:, None] + np.arange(78)] += 1
        return x[:200], y[:200], x[200:], y[200:]
    from fastbp import data

    x, y = data.load_mnist(os.environ["FASTBP_MNIST_DIR"], "t10k")
    y = y.astype(np.int64)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def _fit_fastbp(X, y, X_test, epochs):
    from fastbp import data, nn, optim

    model = nn.MLP([X.shape[1], HIDDEN, 10], rng=np.random.default_rng(0))
    opt = optim.Adam(lr=LR)
    rng = np.random.default_rng(0)

    def fit():
        for _ in range(epochs):
            for xb, yb in data.iterate_minibatches(X, y, BATCH, seed=rng):
                model.train_step(xb, yb, model.criterion, opt)

    return fit, lambda: model.predict(X_test)


def _fit_sklearn(X, y, X_test, epochs):
    from sklearn.neural_network import MLPClassifier

    est = MLPClassifier((HIDDEN,), solver="adam", learning_rate_init=LR, batch_size=BATCH,
                        alpha=0.0, max_iter=epochs, tol=0.0, random_state=0)

    def fit():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter
            est.fit(X, y)

    return fit, lambda: est.predict(X_test)


def _fit_torch(X, y, X_test, epochs):
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(X.shape[1], HIDDEN), torch.nn.ReLU(),
                                torch.nn.Linear(HIDDEN, 10))
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    xt, yt = torch.from_numpy(X), torch.from_numpy(y)

    def fit():
        for _ in range(epochs):
            order = torch.randperm(len(yt))
            for start in range(0, len(yt), BATCH):
                idx = order[start:start + BATCH]
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
                opt.step()

    def predict():
        with torch.no_grad():
            return model(torch.from_numpy(X_test)).argmax(dim=1).numpy()

    return fit, predict


def run(implementation, epochs=EPOCHS, threads=None, tiny=False):
    """Train once in this process; returns the fit's wall and CPU seconds and test accuracy.

    `threads` (None: all cores) limits the BLAS pool, fastbp's kernels and torch's threads."""
    if threads is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
        if implementation == "fastbp":
            import fastbp

            fastbp.set_num_threads(threads)
        elif implementation == "torch":
            import torch

            torch.set_num_threads(threads)
    X, y, X_test, y_test = load_case(tiny)
    if implementation == "sklearn-float64":
        X, X_test = X.astype(np.float64), X_test.astype(np.float64)
    make = {"fastbp": _fit_fastbp, "sklearn-float64": _fit_sklearn,
            "sklearn-float32": _fit_sklearn, "torch": _fit_torch}[implementation]
    fit, predict = make(np.ascontiguousarray(X), y, np.ascontiguousarray(X_test), epochs)
    wall, cpu = time.perf_counter(), time.process_time()
    fit()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    accuracy = float(np.mean(np.asarray(predict()) == y_test))
    return dict(implementation=implementation, fit_s=wall, fit_cpu_s=cpu,
                test_accuracy=accuracy)


def available():
    """The implementations whose library is installed."""
    return [name for name in IMPLEMENTATIONS if importlib.util.find_spec(REQUIRES[name])]


def _in_own_process(implementation, epochs, threads, tiny):
    command = [sys.executable, __file__, "--worker", implementation, "--epochs", str(epochs)]
    command += ["--threads", str(threads)] if threads else []
    command += ["--tiny"] if tiny else []
    proc = subprocess.run(command, capture_output=True, text=True, check=False, env=os.environ)
    if proc.returncode != 0:
        raise RuntimeError(f"{implementation} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(rounds=3, epochs=EPOCHS, threads=None, tiny=False):
    """One row per available implementation: medians over `rounds` own-process runs (the
    order rotating every round) and fastbp's speed-up over each."""
    names = available()
    runs = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            runs[name].append(_in_own_process(name, epochs, threads, tiny))
            print(json.dumps(runs[name][-1]), file=sys.stderr)  # progress
    keys = ("fit_s", "fit_cpu_s", "test_accuracy")
    medians = {name: {k: statistics.median(x[k] for x in results) for k in keys}
               for name, results in runs.items()}
    return [dict(implementation=name, **m,
                 fit_speedup=m["fit_s"] / medians["fastbp"]["fit_s"],
                 fit_cpu_speedup=m["fit_cpu_s"] / medians["fastbp"]["fit_cpu_s"])
            for name, m in medians.items()]


def format_table(rows):
    lines = ["| implementation | fit wall (s) | fastbp faster | fit CPU (s) | fastbp faster "
             "| test accuracy |", "| --- |" + " ---: |" * 5]
    lines += [f"| {r['implementation']} | {r['fit_s']:.2f} | {r['fit_speedup']:.2f}x | "
              f"{r['fit_cpu_s']:.2f} | {r['fit_cpu_speedup']:.2f}x | {r['test_accuracy']:.4f} |"
              for r in rows]
    return "\n".join(lines)


def bench_script_mode_runs():
    """Every available implementation trains in its own process and learns the tiny problem."""
    rows = compare(rounds=1, epochs=3, threads=1, tiny=True)
    assert [r["implementation"] for r in rows] == available()
    assert all(r["fit_s"] > 0 and r["test_accuracy"] > 0.8 for r in rows), rows
    assert "| fastbp | " in format_table(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--threads", type=int, default=None,
                        help="BLAS, fastbp and torch threads (default: all cores)")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run(args.worker, args.epochs, args.threads, args.tiny)))
        return
    if not os.environ.get("FASTBP_MNIST_DIR"):
        sys.exit("set FASTBP_MNIST_DIR to a directory of MNIST IDX files")
    missing = [name for name in IMPLEMENTATIONS if name not in available()]
    if missing:
        print(f"left out (library not installed): {', '.join(missing)}", file=sys.stderr)
    print(format_table(compare(args.rounds, args.epochs, args.threads)))


if __name__ == "__main__":
    main()
