"""fastbp.sklearn.MLPClassifier vs scikit-learn's MLPClassifier: ``fit`` and ``predict_proba``.

Cases (same hyper-parameters for everyone: in-256-10, relu, Adam lr 1e-3, batch 64, alpha 1e-4
(``--alpha`` changes it for everyone; fastbp trains on its one-call compiled step either way),
10 epochs, ``tol=0`` so no run stops early, random_state 0):

* ``mnist``   the first 8,000 MNIST t10k images (``FASTBP_MNIST_DIR``); predict_proba on all
              10,000 t10k rows
* ``digits``  the bundled 1,797 digits; predict_proba on 10,000 rows (the digits tiled)

Implementations: ``fastbp`` (float32, its default, on float32 data), ``sklearn-float64``
(scikit-learn on float64 data, its default) and ``sklearn-float32`` (scikit-learn given float32
data, which it then trains in float32).

Script mode runs every (implementation, case) in its OWN process, rounds alternating the order,
and prints medians over rounds with each row's speed-up of fastbp over it, in wall-clock and in
CPU seconds of the process (``time.process_time``: on a loaded machine the wall clock also
counts the time other jobs held the cores; with ``--threads 1`` CPU time is the work done).
``predict_proba`` is the best of 5 calls in the process::

    python benchmarks/bench_sklearn.py --rounds 3 [--threads 1] [--cases digits] [--alpha 0]

pytest-benchmark mode (in-process, one group per case and operation)::

    pytest benchmarks/bench_sklearn.py --benchmark-only --benchmark-group-by=group
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
from pathlib import Path

import numpy as np
import pytest

try:
    from benchutil import TINY
except ImportError:  # script mode from another directory
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from benchutil import TINY

pytestmark = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None,
                                reason="scikit-learn is not installed (pip install \"fastbp[sklearn]\")")

IMPLEMENTATIONS = ("fastbp", "sklearn-float64", "sklearn-float32")
CASES = ("mnist", "digits")
HIDDEN, BATCH, EPOCHS, PREDICT_ROWS, ALPHA = (256,), 64, 10, 10_000, 1e-4
PREDICT_REPEATS = 5


def load_case(case):
    """(X_train, y_train, X_predict) in float32; tiny stand-ins under FASTBP_BENCH_TINY=1."""
    from fastbp import data

    if case == "mnist":
        path = os.environ.get("FASTBP_MNIST_DIR")
        if not path:
            raise FileNotFoundError("the mnist case needs FASTBP_MNIST_DIR")
        X, y = data.load_mnist(path, "t10k")
        train, predict = (X[:8000], y[:8000]), X
    else:
        X, y = data.load_digits()
        train, predict = (X, y), np.resize(X, (PREDICT_ROWS, X.shape[1]))
    if TINY:
        return train[0][:40], train[1][:40], predict[:50]
    return train[0], train[1], predict


def make_estimator(implementation, epochs, alpha=ALPHA):
    if implementation == "fastbp":
        from fastbp.sklearn import MLPClassifier
    else:
        from sklearn.neural_network import MLPClassifier
    hidden = (3,) if TINY else HIDDEN
    return MLPClassifier(hidden, solver="adam", learning_rate_init=1e-3, batch_size=BATCH,
                         max_iter=epochs, tol=0.0, random_state=0, alpha=alpha)


def input_dtype(implementation):
    return np.float64 if implementation == "sklearn-float64" else np.float32


def _timed(function, *args):
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    function(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def run(implementation, case, epochs=EPOCHS, threads=None, alpha=ALPHA):
    """Time one fit and the best of PREDICT_REPEATS predict_proba calls (wall and CPU);
    returns a dict of seconds and the training accuracy.

    `threads` (None: the default, all cores) limits the BLAS pool for everyone and fastbp's
    kernels (``fastbp.set_num_threads``) for fastbp."""
    if threads is not None:
        from threadpoolctl import threadpool_limits

        import fastbp

        fastbp.set_num_threads(threads)
        threadpool_limits(threads)
    X, y, X_predict = load_case(case)
    X = np.ascontiguousarray(X, input_dtype(implementation))
    X_predict = np.ascontiguousarray(X_predict, input_dtype(implementation))
    est = make_estimator(implementation, epochs, alpha)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter
        fit_s, fit_cpu_s = _timed(est.fit, X, y)
    predict = [_timed(est.predict_proba, X_predict) for _ in range(PREDICT_REPEATS)]
    return dict(implementation=implementation, case=case, fit_s=fit_s, fit_cpu_s=fit_cpu_s,
                predict_proba_s=min(w for w, c in predict),
                predict_proba_cpu_s=min(c for w, c in predict),
                train_accuracy=float(est.score(X, y)), rows=int(X.shape[0]))


# ------------------------------------------------------------------------ pytest-benchmark


def _fitted(implementation, case):
    try:
        X, y, X_predict = load_case(case)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    dtype = input_dtype(implementation)
    return make_estimator(implementation, 1 if TINY else EPOCHS), X.astype(dtype), y, \
        X_predict.astype(dtype)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", CASES)
def bench_sklearn_fit(benchmark, case, implementation):
    est, X, y, _ = _fitted(implementation, case)
    benchmark.group = f"sklearn fit {case}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        benchmark.pedantic(est.fit, args=(X, y), rounds=1 if TINY else 3)
    assert est.n_iter_ >= 1


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", CASES)
def bench_sklearn_predict_proba(benchmark, case, implementation):
    est, X, y, X_predict = _fitted(implementation, case)
    benchmark.group = f"sklearn predict_proba {case} {X_predict.shape[0]} rows"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.set_params(max_iter=1).fit(X, y)
    proba = benchmark(est.predict_proba, X_predict)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)


def bench_script_mode_runs():
    """The process-per-implementation mode works (one tiny round, digits only)."""
    rows = compare(["digits"], rounds=1, epochs=1, threads=1, alpha=0.0)
    assert {r["implementation"] for r in rows} == set(IMPLEMENTATIONS)
    assert all(r[t] > 0 for r in rows for t in TIMINGS)
    assert "| fit CPU (s) |" in format_table(rows)


# ------------------------------------------------------------------------------ script mode


def _in_own_process(implementation, case, epochs, threads, alpha):
    command = [sys.executable, __file__, "--worker", implementation, case, "--epochs",
               str(epochs), "--alpha", repr(alpha)] + (["--threads", str(threads)] if threads
                                                       else [])
    proc = subprocess.run(command, capture_output=True, text=True, check=False, env=os.environ)
    if proc.returncode != 0:
        raise RuntimeError(f"{implementation} on {case} failed:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(result), file=sys.stderr)  # progress
    return result


#: the timings compare reports (median over rounds), each with fastbp's speed-up over it
TIMINGS = ("fit_s", "fit_cpu_s", "predict_proba_s", "predict_proba_cpu_s")


def compare(cases=CASES, rounds=3, epochs=EPOCHS, threads=None, alpha=ALPHA):
    """Median fit / predict_proba seconds (wall and CPU) per (case, implementation), each run
    in its own process, the order of implementations rotating every round."""
    rows = []
    for case in cases:
        runs = {name: [] for name in IMPLEMENTATIONS}
        for r in range(rounds):
            order = IMPLEMENTATIONS[r % 3:] + IMPLEMENTATIONS[:r % 3]
            for name in order:
                runs[name].append(_in_own_process(name, case, epochs, threads, alpha))
        medians = {name: {t: statistics.median(x[t] for x in results) for t in TIMINGS}
                   for name, results in runs.items()}
        for name, results in runs.items():
            rows.append(dict(case=case, implementation=name, rows=results[0]["rows"],
                             **medians[name],
                             **{t + "_speedup": medians[name][t] / medians["fastbp"][t]
                                for t in TIMINGS},
                             train_accuracy=statistics.median(
                                 x["train_accuracy"] for x in results)))
    return rows


def format_table(rows):
    lines = ["| case | implementation | fit wall (s) | x | fit CPU (s) | x | "
             "predict_proba wall (ms) | x | predict_proba CPU (ms) | x | train acc |",
             "| --- | --- |" + " ---: |" * 9]
    for r in rows:
        cells = [(f"{r[t] * 1e3:.1f}" if t.startswith("predict") else f"{r[t]:.2f}")
                 + f" | {r[t + '_speedup']:.2f}x" for t in TIMINGS]
        lines.append(f"| {r['case']} ({r['rows']}) | {r['implementation']} | "
                     + " | ".join(cells) + f" | {r['train_accuracy']:.3f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=2, metavar=("IMPLEMENTATION", "CASE"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=None)
    parser.add_argument("--threads", type=int, default=None,
                        help="BLAS and fastbp threads (default: all cores)")
    parser.add_argument("--alpha", type=float, default=ALPHA,
                        help=f"L2 penalty for every implementation (default {ALPHA})")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run(*args.worker, epochs=args.epochs, threads=args.threads,
                             alpha=args.alpha)))
        return
    cases = args.cases or [c for c in CASES if c != "mnist" or os.environ.get("FASTBP_MNIST_DIR")]
    print(format_table(compare(cases, rounds=args.rounds, epochs=args.epochs,
                               threads=args.threads, alpha=args.alpha)))


if __name__ == "__main__":
    main()
