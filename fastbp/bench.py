"""Whole-step speed: one SGD-momentum training step of an MLP, implemented by every competitor.

Used by ``benchmarks/bench_step.py`` (pytest-benchmark) and by ``fastbp bench``, so both time
exactly the same code.  Each ``IMPLEMENTATIONS`` entry builds, for a given network and batch,
a ``step(x=x, y=y)`` that runs forward, loss, backward and the parameter update once (on the
given batch, by default the one it was built with; ``bench_epoch`` feeds it every batch); all start from the same weights (He-normal, seeded) and use the same learning rate
and momentum (0.9).

* ``fastbp``          fastbp.nn ``Sequential.train_step`` (the fused path)
* ``fastbp-unfused``  fastbp.nn forward, loss, backward, then ``optimizer.step``
* ``numpy-backend``   the fused path on fastbp's NumPy reference kernels
* ``course-numpy``    a plain course-style NumPy step (cs231n layers + ``sgd_momentum``)
* ``torch``           PyTorch eager: ``nn.Sequential``, ``cross_entropy``, ``optim.SGD``
* ``sklearn``         scikit-learn ``MLPClassifier.partial_fit`` on the batch
* ``gemms-only``      the step's matrix multiplies alone through ``np.matmul``
  (forward, weight gradients, input gradients except the first layer's)
* ``floor``           the true floor of an SGD-momentum step: the same GEMMs as fastbp's step,
  through the same BLAS with the same alpha/beta (the velocity GEMM ``v := xᵀ·dz + mu·v``), plus
  the update's one unavoidable memory pass (read W and v, write W)

Optional competitors (torch, sklearn) raise :class:`Unavailable` when not installed.

How :func:`compare` times them (as users run them): each implementation runs in its OWN
process (``python -m fastbp.bench SPEC``, one per implementation and round), so no
implementation pays for another's thread pools (an idle OpenBLAS worker spins ~0.1 s after its
last GEMM; two OpenBLAS copies in one process made each side up to 7x slower).  Rounds alternate
the implementations (the order rotates every round) and every figure is a median over rounds.
The ``fastbp`` process also times the *mixed process* rows: a fastbp step right after a NumPy
matmul (256x256), and that matmul right after a fastbp step, each against itself alone.
"""

import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from . import nn, optim
from .backend import use_backend

LR, MOMENTUM = 0.01, 0.9

#: The shapes of the issue's targets: (layer sizes, batch sizes)
STEP_SHAPES = [
    ((784, 1024, 1024, 10), (64, 128, 512, 2048)),
    ((784, 100, 10), (64,)),
    ((8, 8, 8, 10), (8,)),
]


class Unavailable(RuntimeError):
    """An optional competitor is not installed."""


def step_flops(sizes, batch):
    """Floating-point operations of one step's GEMMs (2·N·fan_in·fan_out each)."""
    pairs = list(zip(sizes[:-1], sizes[1:]))
    fwd = sum(2 * batch * a * b for a, b in pairs)
    dx = sum(2 * batch * a * b for a, b in pairs[1:])
    return 2 * fwd + dx  # forward, weight gradients, input gradients (not the first layer)


def make_problem(sizes, batch, dtype=np.float32, seed=0):
    """A fixed batch ``(x, y)`` and initial weights ``[(W, b), ...]`` (He-normal, zero bias)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], batch)
    weights = [((rng.standard_normal((a, b)) * math.sqrt(2.0 / a)).astype(dtype),
                np.zeros(b, dtype)) for a, b in zip(sizes[:-1], sizes[1:])]
    return x, y, weights


def _fastbp_model(sizes, weights, dtype):
    model = nn.MLP(sizes, dtype=dtype)
    for layer, (w, b) in zip([m for m in model.layers if isinstance(m, nn.Linear)], weights):
        layer.params["W"][...] = w
        layer.params["b"][...] = b
    return model


def fastbp_step(sizes, x, y, weights):
    model = _fastbp_model(sizes, weights, x.dtype)
    loss, opt = nn.SoftmaxCrossEntropy(), optim.SGD(LR, momentum=MOMENTUM)
    return lambda xb=x, yb=y: model.train_step(xb, yb, loss, opt)


def fastbp_unfused_step(sizes, x, y, weights):
    model = _fastbp_model(sizes, weights, x.dtype)
    loss, opt = nn.SoftmaxCrossEntropy(), optim.SGD(LR, momentum=MOMENTUM)

    def step(xb=x, yb=y):
        value = loss.forward(model.forward(xb), yb)
        model.backward(loss.backward())
        opt.step(model.params, model.grads)
        return value

    return step


def numpy_backend_step(sizes, x, y, weights):
    inner = fastbp_step(sizes, x, y, weights)

    def step(xb=x, yb=y):
        with use_backend("numpy"):
            return inner(xb, yb)

    return step


def course_numpy_step(sizes, x, y, weights):
    """What a course notebook does: affine/relu/softmax in NumPy, then ``sgd_momentum``."""
    params = [(w.copy(), b.copy()) for w, b in weights]
    velocity = [(np.zeros_like(w), np.zeros_like(b)) for w, b in params]

    def step(x=x, y=y):
        n = x.shape[0]
        hs, h = [x], x
        for i, (w, b) in enumerate(params):
            h = h @ w + b
            if i < len(params) - 1:
                h = np.maximum(h, 0)
            hs.append(h)
        shifted = h - h.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        loss = -log_probs[np.arange(n), y].mean()
        d = np.exp(log_probs)
        d[np.arange(n), y] -= 1
        d /= n
        for i in range(len(params) - 1, -1, -1):
            w, b = params[i]
            h_in = hs[i]
            dw, db = h_in.T @ d, d.sum(axis=0)
            if i > 0:
                d = (d @ w.T) * (h_in > 0)
            for p, g, v in ((w, dw, velocity[i][0]), (b, db, velocity[i][1])):
                v *= MOMENTUM
                v -= LR * g
                p += v
        return loss

    return step


def torch_step(sizes, x, y, weights):
    try:
        import torch
    except ImportError:
        raise Unavailable("torch is not installed (pip install torch==2.13.0 for the CPU build)")
    layers = []
    for i, (w, b) in enumerate(weights):
        lin = torch.nn.Linear(*w.shape, dtype=torch.float32 if x.dtype == np.float32
                              else torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w.T.copy()))
            lin.bias.copy_(torch.from_numpy(b))
        layers.append(lin)
        if i < len(weights) - 1:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    def step(xb=x, yb=y):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(xb)),
                                                 torch.from_numpy(yb))
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def sklearn_step(sizes, x, y, weights):
    try:
        from sklearn.neural_network import MLPClassifier
    except ImportError:
        raise Unavailable("scikit-learn is not installed")
    import warnings

    clf = MLPClassifier(hidden_layer_sizes=tuple(sizes[1:-1]), solver="sgd", momentum=MOMENTUM,
                        nesterovs_momentum=False, learning_rate_init=LR, alpha=0.0,
                        batch_size=x.shape[0], shuffle=False, random_state=0)
    classes = np.arange(sizes[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.partial_fit(x, y, classes=classes)
    clf.coefs_ = [w.copy() for w, _ in weights]
    clf.intercepts_ = [b.copy() for _, b in weights]
    return lambda xb=x, yb=y: clf.partial_fit(xb, yb)


def gemms_only_step(sizes, x, y, weights):
    """The step's GEMMs alone (np.matmul into preallocated buffers): the floor of any step."""
    n, dtype = x.shape[0], x.dtype
    ws = [w for w, _ in weights]
    outs = [np.empty((n, w.shape[1]), dtype) for w in ws]
    dws = [np.empty_like(w) for w in ws]
    dxs = [np.empty((n, w.shape[0]), dtype) for w in ws]
    grad = [np.ones((n, w.shape[1]), dtype) * 1e-3 for w in ws]

    def step(xb=None, yb=None):
        h = x
        for w, out in zip(ws, outs):
            np.matmul(h, w, out=out)
            h = out
        for i in range(len(ws) - 1, -1, -1):
            h_in = x if i == 0 else outs[i - 1]
            np.matmul(h_in.T, grad[i], out=dws[i])
            if i > 0:
                np.matmul(grad[i], ws[i].T, out=dxs[i])

    return step


def floor_step(sizes, x, y, weights):
    """The step's GEMMs as fastbp's step issues them, plus one pass W -= lr * v per layer.

    Forward x·W (beta 0), input gradients d·Wᵀ (all layers but the first) and the velocity
    GEMM v := xᵀ·d + mu·v, through fastbp's BLAS route (``_kernels.gemm``); then the SGD
    update's only memory pass, W := W - lr·v (``_kernels.sgd_step``: reads W and v, writes W).
    No bias, activation or loss work: what is left is what no SGD-momentum step can avoid.
    """
    from . import _kernels
    from ._config import threads_for

    n, dtype = x.shape[0], x.dtype
    ws = [w.copy() for w, _ in weights]
    vs = [np.zeros_like(w) for w in ws]
    outs = [np.empty((n, w.shape[1]), dtype) for w in ws]
    dxs = [np.empty((n, w.shape[0]), dtype) for w in ws]
    grad = [np.full((n, w.shape[1]), 1e-3, dtype) for w in ws]

    def step(xb=x, yb=None):
        h = xb
        for w, out in zip(ws, outs):
            _kernels.gemm(False, False, 1.0, h, w, 0.0, out)
            h = out
        for i in range(len(ws) - 1, -1, -1):
            h_in = xb if i == 0 else outs[i - 1]
            if i > 0:
                _kernels.gemm(False, True, 1.0, grad[i], ws[i], 0.0, dxs[i])
            _kernels.gemm(True, False, 1.0, h_in, grad[i], MOMENTUM, vs[i])
            _kernels.sgd_step(ws[i].reshape(-1), vs[i].reshape(-1), LR, 0.0,
                              threads_for(ws[i].size))

    step.weights = ws  # its own copy, updated in place (for inspection)
    return step


IMPLEMENTATIONS = {
    "fastbp": fastbp_step,
    "fastbp-unfused": fastbp_unfused_step,
    "numpy-backend": numpy_backend_step,
    "course-numpy": course_numpy_step,
    "torch": torch_step,
    "sklearn": sklearn_step,
    "gemms-only": gemms_only_step,
    "floor": floor_step,
}

#: Rows every other row is compared with (``speedup_vs_<name>``), when they were timed.
REFERENCES = ("course-numpy", "torch", "sklearn", "gemms-only", "floor")

#: The NumPy operation of the mixed-process rows: a (MIXED_MATMUL, MIXED_MATMUL) matmul in the
#: run's dtype.
MIXED_MATMUL = 256


def set_threads(n):
    """Use `n` threads everywhere: fastbp's kernels, the BLAS pools and torch (if loaded)."""
    from . import set_num_threads

    set_num_threads(n)
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def time_step(step, min_time=0.2, min_rounds=5, max_rounds=1000, before=None):
    """Median seconds per call of `step` (after one warm-up call), with its IQR and sample count.

    `before`, if given, runs (untimed) before every call: ``time_step(step, before=matmul)``
    times a step that follows a NumPy matmul.
    """
    if before:
        before()
    step()
    times, start = [], time.perf_counter()
    while len(times) < min_rounds or (time.perf_counter() - start < min_time
                                      and len(times) < max_rounds):
        if before:
            before()
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    q = statistics.quantiles(times, n=4) if len(times) >= 4 else [times[0]] * 3
    return statistics.median(times), q[2] - q[0], len(times)


def _mixed_times(step, dtype, min_time):
    """Seconds of: the matmul alone, the step after a matmul, the matmul after a step."""
    a = np.random.default_rng(0).standard_normal((MIXED_MATMUL, MIXED_MATMUL)).astype(dtype)
    out = np.empty_like(a)

    def matmul():
        np.matmul(a, a, out=out)

    return dict(matmul_s=time_step(matmul, min_time, 3)[0],
                step_after_matmul_s=time_step(step, min_time, 3, before=matmul)[0],
                matmul_after_step_s=time_step(matmul, min_time, 3, before=step)[0])


def run_worker(spec):
    """Time one implementation on every shape of `spec`, in this process (the worker's body).

    `spec`: implementation, shapes [[sizes, batch], ...], dtype, threads, min_time (seconds
    per shape) and mixed (also time the mixed-process rows).  Returns one result per shape:
    ``{"median_s": ...}`` (plus ``"mixed": {...}`` when asked), or ``{"unavailable": why}``.
    """
    dtype = np.dtype(spec["dtype"])
    set_threads(spec["threads"])
    results = []
    for sizes, batch in spec["shapes"]:
        x, y, weights = make_problem(tuple(sizes), batch, dtype)
        try:
            step = IMPLEMENTATIONS[spec["implementation"]](tuple(sizes), x, y, weights)
        except Unavailable as e:
            return [{"unavailable": str(e)}]
        set_threads(spec["threads"])  # torch is configured once it is imported
        result = {"median_s": time_step(step, spec["min_time"], 3)[0]}
        if spec["mixed"]:
            result["mixed"] = _mixed_times(step, dtype, spec["min_time"])
        results.append(result)
    return results


def _spawn_worker(spec):
    """run_worker(spec) in a fresh Python process importing this same fastbp."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    # run in `root`: ``-m`` puts the working directory first on sys.path, and a source
    # checkout's uninstalled fastbp/ there would shadow the installed one
    proc = subprocess.run([sys.executable, "-m", "fastbp.bench", json.dumps(spec)], env=env,
                          cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"bench worker for {spec['implementation']} failed:\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def _quartiles(times):
    median = statistics.median(times)
    q = statistics.quantiles(times, n=4) if len(times) >= 4 else [median] * 3
    return median, q[2] - q[0]


def compare(shapes=STEP_SHAPES, implementations=tuple(IMPLEMENTATIONS), dtype=np.float32,
            threads=None, min_time=0.2, rounds=5, progress=None, mixed=True):
    """Time every implementation on every (sizes, batch), each in its own process.

    In each of `rounds` rounds every implementation runs once in a fresh process (the order
    rotates from round to round, so slow drift on a shared machine hits all alike) and times
    every shape for ``min_time / rounds`` seconds; a row's time is the median of its per-round
    medians, and its ratios to the references (course-style NumPy, PyTorch, scikit-learn,
    GEMMs-only, floor) are medians of the per-round ratios.  With `mixed` (and ``fastbp``
    among the implementations), the fastbp process also times the mixed-process rows.

    Returns a list of row dicts.  Step rows (``kind`` "step"): implementation, sizes, batch,
    dtype, threads, median_s, iqr_s (over rounds), rounds, samples_per_s, gflops (of the step's
    GEMMs), ``speedup_vs_<reference>``.  Mixed rows (``kind`` "mixed"): implementation
    "fastbp-after-matmul" (the step after a NumPy matmul) or "matmul-after-fastbp" (the
    matmul after a step), median_s, alone_s (the same operation alone, same process) and
    slowdown (median over rounds of after / alone).  Unavailable competitors (torch, sklearn not
    installed) are skipped.

    Raises
    ------
    ValueError
        For an unknown implementation, rounds < 1 or min_time <= 0.
    RuntimeError
        If a worker process fails (its stderr is included).
    """
    from . import get_num_threads

    unknown = [name for name in implementations if name not in IMPLEMENTATIONS]
    if unknown:
        raise ValueError(f"unknown implementations {unknown}; choose from {list(IMPLEMENTATIONS)}")
    if not (isinstance(rounds, int) and rounds >= 1):
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    if not min_time > 0:
        raise ValueError(f"min_time must be > 0 seconds, got {min_time!r}")
    if threads is None:
        threads = get_num_threads()
    cases = [(tuple(sizes), batch) for sizes, batches in shapes for batch in batches]
    names = list(dict.fromkeys(implementations))
    per_round = {name: [] for name in names}  # name -> [round][case] worker result
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if per_round[name] is None:
                continue
            results = _spawn_worker(dict(
                implementation=name, shapes=cases, dtype=np.dtype(dtype).name, threads=threads,
                min_time=min_time / rounds, mixed=bool(mixed) and name == "fastbp"))
            per_round[name] = None if "unavailable" in results[0] else per_round[name] + [results]
    timed = {name: runs for name, runs in per_round.items() if runs}
    rows = []
    for c, (sizes, batch) in enumerate(cases):
        series = {name: [run[c]["median_s"] for run in runs] for name, runs in timed.items()}
        for name, times in series.items():
            median, iqr = _quartiles(times)
            row = dict(kind="step", implementation=name, sizes="-".join(map(str, sizes)),
                       batch=batch, dtype=np.dtype(dtype).name, threads=threads, median_s=median,
                       iqr_s=iqr, rounds=len(times), samples_per_s=batch / median,
                       gflops=step_flops(sizes, batch) / median / 1e9)
            for ref in REFERENCES:
                if ref in series:
                    row[f"speedup_vs_{ref}"] = statistics.median(
                        b / t for b, t in zip(series[ref], times))
            rows.append(row)
            if progress:
                progress(row)
        if "fastbp" in timed and "mixed" in timed["fastbp"][0][c]:
            mixes = [(run[c]["median_s"], run[c]["mixed"]) for run in timed["fastbp"]]
            for name, after, alone in (
                    ("fastbp-after-matmul", [m["step_after_matmul_s"] for _, m in mixes],
                     [t for t, _ in mixes]),
                    ("matmul-after-fastbp", [m["matmul_after_step_s"] for _, m in mixes],
                     [m["matmul_s"] for _, m in mixes])):
                median, iqr = _quartiles(after)
                rows.append(dict(kind="mixed", implementation=name,
                                 sizes="-".join(map(str, sizes)), batch=batch,
                                 dtype=np.dtype(dtype).name, threads=threads, median_s=median,
                                 iqr_s=iqr, rounds=len(after), alone_s=statistics.median(alone),
                                 slowdown=statistics.median(a / b for a, b in zip(after, alone))))
                if progress:
                    progress(rows[-1])
    return rows


def _ratio(value, invert=False, unit="x"):
    if value is None:
        return ""
    return f"{1 / value if invert else value:.2f}{unit}"


def format_table(rows):
    """A plain-text table of :func:`compare` rows (step rows, then the mixed-process rows)."""
    header = (f"{'implementation':15s} {'sizes':>17s} {'batch':>5s} {'ms/step':>9s} "
              f"{'samples/s':>10s} {'GFLOP/s':>8s} {'vs numpy':>8s} {'vs torch':>8s} "
              f"{'/ gemms':>7s} {'/ floor':>7s}")
    lines = [header, "-" * len(header)]
    for r in rows:
        if r["kind"] != "step":
            continue
        lines.append(
            f"{r['implementation']:15s} {r['sizes']:>17s} {r['batch']:5d} "
            f"{r['median_s'] * 1e3:9.3f} {r['samples_per_s']:10.0f} {r['gflops']:8.1f} "
            f"{_ratio(r.get('speedup_vs_course-numpy')):>8s} "
            f"{_ratio(r.get('speedup_vs_torch')):>8s} "
            f"{_ratio(r.get('speedup_vs_gemms-only'), True, ''):>7s} "
            f"{_ratio(r.get('speedup_vs_floor'), True, ''):>7s}")
    mixed = [r for r in rows if r["kind"] == "mixed"]
    if mixed:
        lines += ["", f"mixed process (one process; a {MIXED_MATMUL}x{MIXED_MATMUL} np.matmul):",
                  f"{'row':21s} {'sizes':>17s} {'batch':>5s} {'ms after':>9s} {'ms alone':>9s} "
                  f"{'slowdown':>8s}"]
        lines += [f"{r['implementation']:21s} {r['sizes']:>17s} {r['batch']:5d} "
                  f"{r['median_s'] * 1e3:9.3f} {r['alone_s'] * 1e3:9.3f} "
                  f"{r['slowdown']:7.2f}x" for r in mixed]
    return "\n".join(lines)


def format_markdown(rows):
    """The README "Performance" tables (Markdown) from :func:`compare` rows of a full run."""
    steps = {(r["sizes"], r["batch"], r["implementation"]): r for r in rows
             if r["kind"] == "step"}
    cases = list(dict.fromkeys((r["sizes"], r["batch"]) for r in rows))
    lines = ["| network, batch | fastbp ms/step | vs course NumPy | vs PyTorch eager "
             "| vs scikit-learn | fastbp / floor | course NumPy / floor | floor ms |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for sizes, batch in cases:
        fast, numpy_row = steps.get((sizes, batch, "fastbp")), steps.get((sizes, batch,
                                                                          "course-numpy"))
        floor = steps.get((sizes, batch, "floor"))
        if fast is None:
            continue
        lines.append(
            f"| {sizes}, {batch} | {fast['median_s'] * 1e3:.3f} "
            f"| {_ratio(fast.get('speedup_vs_course-numpy'))} "
            f"| {_ratio(fast.get('speedup_vs_torch'))} "
            f"| {_ratio(fast.get('speedup_vs_sklearn'))} "
            f"| {_ratio(fast.get('speedup_vs_floor'), True, '')} "
            f"| {_ratio(numpy_row and numpy_row.get('speedup_vs_floor'), True, '')} "
            f"| {'' if floor is None else format(floor['median_s'] * 1e3, '.3f')} |")
    mixed = {(r["sizes"], r["batch"], r["implementation"]): r for r in rows
             if r["kind"] == "mixed"}
    if mixed:
        lines += ["", f"| network, batch | fastbp step alone, ms | after a {MIXED_MATMUL}² "
                  f"np.matmul | slowdown | np.matmul alone, ms | after a fastbp step "
                  f"| slowdown |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for sizes, batch in cases:
            step = mixed.get((sizes, batch, "fastbp-after-matmul"))
            mm = mixed.get((sizes, batch, "matmul-after-fastbp"))
            if step and mm:
                lines.append(
                    f"| {sizes}, {batch} | {step['alone_s'] * 1e3:.3f} "
                    f"| {step['median_s'] * 1e3:.3f} | {step['slowdown']:.2f}x "
                    f"| {mm['alone_s'] * 1e3:.3f} | {mm['median_s'] * 1e3:.3f} "
                    f"| {mm['slowdown']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":  # a compare() worker: python -m fastbp.bench SPEC_JSON
    print(json.dumps(run_worker(json.loads(sys.argv[1]))))
