"""fastbp.sklearn.MLPClassifier vs scikit-learn's MLPClassifier: ``fit`` and ``predict_proba``.

Cases (same hyper-parameters for everyone: in-256-10, relu, Adam lr 1e-3, batch 64, alpha 1e-4,
10 epochs, ``tol=0`` so no run stops early, random_state 0):

* ``mnist``   the first 8,000 MNIST t10k images (``FASTBP_MNIST_DIR``); predict_proba on all
              10,000 t10k rows
* ``digits``  the bundled 1,797 digits; predict_proba on 10,000 rows (the digits tiled)

Implementations: ``fastbp`` (float32, its default, on float32 data), ``sklearn-float64``
(scikit-learn on float64 data, its default) and ``sklearn-float32`` (scikit-learn given float32
data, which it then trains in float32).

Script mode runs every (implementation, case) in its OWN process, rounds alternating the order,
and prints medians over rounds with each row's speed-up of fastbp over it::

    python benchmarks/bench_sklearn.py --rounds 3 [--threads 1] [--cases digits]

pytest-benchmark mode (in-process, one group per case and operation)::

    pytest benchmarks/bench_sklearn.py --benchmark-only --benchmark-group-by=group
"""

import argparse
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

IMPLEMENTATIONS = ("fastbp", "sklearn-float64", "sklearn-float32")
CASES = ("mnist", "digits")
HIDDEN, BATCH, EPOCHS, PREDICT_ROWS = (256,), 64, 10, 10_000


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


def make_estimator(implementation, epochs):
    if implementation == "fastbp":
        from fastbp.sklearn import MLPClassifier
    else:
        from sklearn.neural_network import MLPClassifier
    hidden = (3,) if TINY else HIDDEN
    return MLPClassifier(hidden, solver="adam", learning_rate_init=1e-3, batch_size=BATCH,
                         max_iter=epochs, tol=0.0, random_state=0)


def input_dtype(implementation):
    return np.float64 if implementation == "sklearn-float64" else np.float32


def run(implementation, case, epochs=EPOCHS, threads=None):
    """Time one fit and one predict_proba; returns a dict of seconds and the training accuracy.

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
    est = make_estimator(implementation, epochs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter
        start = time.perf_counter()
        est.fit(X, y)
        fit_s = time.perf_counter() - start
    start = time.perf_counter()
    est.predict_proba(X_predict)
    predict_s = time.perf_counter() - start
    return dict(implementation=implementation, case=case, fit_s=fit_s, predict_proba_s=predict_s,
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
    rows = compare(["digits"], rounds=1, epochs=1, threads=1)
    assert {r["implementation"] for r in rows} == set(IMPLEMENTATIONS)
    assert all(r["fit_s"] > 0 and r["predict_proba_s"] > 0 for r in rows)


# ------------------------------------------------------------------------------ script mode


def _in_own_process(implementation, case, epochs, threads):
    command = [sys.executable, __file__, "--worker", implementation, case, "--epochs",
               str(epochs)] + (["--threads", str(threads)] if threads else [])
    proc = subprocess.run(command, capture_output=True, text=True, check=False, env=os.environ)
    if proc.returncode != 0:
        raise RuntimeError(f"{implementation} on {case} failed:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(result), file=sys.stderr)  # progress
    return result


def compare(cases=CASES, rounds=3, epochs=EPOCHS, threads=None):
    """Median fit / predict_proba seconds per (case, implementation), each run in its own
    process, the order of implementations rotating every round."""
    rows = []
    for case in cases:
        runs = {name: [] for name in IMPLEMENTATIONS}
        for r in range(rounds):
            order = IMPLEMENTATIONS[r % 3:] + IMPLEMENTATIONS[:r % 3]
            for name in order:
                runs[name].append(_in_own_process(name, case, epochs, threads))
        fastbp_fit = statistics.median(x["fit_s"] for x in runs["fastbp"])
        fastbp_predict = statistics.median(x["predict_proba_s"] for x in runs["fastbp"])
        for name, results in runs.items():
            fit = statistics.median(x["fit_s"] for x in results)
            predict = statistics.median(x["predict_proba_s"] for x in results)
            rows.append(dict(case=case, implementation=name, rows=results[0]["rows"],
                             fit_s=fit, predict_proba_s=predict,
                             fit_speedup=fit / fastbp_fit,
                             predict_speedup=predict / fastbp_predict,
                             train_accuracy=statistics.median(
                                 x["train_accuracy"] for x in results)))
    return rows


def format_table(rows):
    lines = ["| case | implementation | fit (s) | fastbp faster by | predict_proba (ms) | "
             "fastbp faster by | train acc |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['case']} ({r['rows']}) | {r['implementation']} | {r['fit_s']:.2f} | "
                     f"{r['fit_speedup']:.2f}x | {r['predict_proba_s'] * 1e3:.1f} | "
                     f"{r['predict_speedup']:.2f}x | {r['train_accuracy']:.3f} |")
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
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run(*args.worker, epochs=args.epochs, threads=args.threads)))
        return
    cases = args.cases or [c for c in CASES if c != "mnist" or os.environ.get("FASTBP_MNIST_DIR")]
    print(format_table(compare(cases, rounds=args.rounds, epochs=args.epochs,
                               threads=args.threads)))


if __name__ == "__main__":
    main()
