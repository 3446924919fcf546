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
* ``gemms-only``      the step's matrix multiplies alone through ``np.matmul``: the floor
  (forward, weight gradients, input gradients except the first layer's)

Optional competitors (torch, sklearn) raise :class:`Unavailable` when not installed.
"""

import math
import statistics
import time

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


IMPLEMENTATIONS = {
    "fastbp": fastbp_step,
    "fastbp-unfused": fastbp_unfused_step,
    "numpy-backend": numpy_backend_step,
    "course-numpy": course_numpy_step,
    "torch": torch_step,
    "sklearn": sklearn_step,
    "gemms-only": gemms_only_step,
}


def set_threads(n):
    """Use `n` threads everywhere: fastbp's kernels, the BLAS pools and torch (if loaded)."""
    from . import set_num_threads

    set_num_threads(n)
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def time_step(step, min_time=0.2, min_rounds=5, max_rounds=1000):
    """Median seconds per call of `step` (after one warm-up call), with its IQR."""
    step()
    times, start = [], time.perf_counter()
    while len(times) < min_rounds or (time.perf_counter() - start < min_time
                                      and len(times) < max_rounds):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    q = statistics.quantiles(times, n=4) if len(times) >= 4 else [times[0]] * 3
    return statistics.median(times), q[2] - q[0], len(times)


def compare(shapes=STEP_SHAPES, implementations=tuple(IMPLEMENTATIONS), dtype=np.float32,
            threads=None, min_time=0.2, rounds=5, progress=None):
    """Time every implementation on every (sizes, batch); returns a list of row dicts.

    The implementations of one shape are timed in `rounds` interleaved rounds (each gets
    ``min_time / rounds`` seconds per round), so slow drift on a shared machine hits them alike;
    a row's time is the median of its per-round medians, and its ratios to the course-style NumPy
    step, to PyTorch and to the GEMMs-only floor are medians of the per-round ratios.

    Each row: implementation, sizes, batch, dtype, threads, median seconds, IQR over rounds,
    rounds, samples/s, GFLOP/s of the step's GEMMs, ``speedup_vs_<reference>``.  Unavailable
    competitors (torch, sklearn not installed) are skipped.
    """
    from . import get_num_threads

    unknown = [name for name in implementations if name not in IMPLEMENTATIONS]
    if unknown:
        raise ValueError(f"unknown implementations {unknown}; choose from {list(IMPLEMENTATIONS)}")
    if not (isinstance(rounds, int) and rounds >= 1):
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    if not min_time > 0:
        raise ValueError(f"min_time must be > 0 seconds, got {min_time!r}")
    if threads is not None:
        set_threads(threads)
    threads = get_num_threads()
    rows = []
    for sizes, batches in shapes:
        for batch in batches:
            x, y, weights = make_problem(sizes, batch, dtype)
            steps = {}
            for name in implementations:
                try:
                    steps[name] = IMPLEMENTATIONS[name](sizes, x, y, weights)
                except Unavailable:
                    continue
            set_threads(threads)  # torch is configured once it is imported
            per_round = {name: [] for name in steps}
            for _ in range(rounds):
                for name, step in steps.items():
                    median, _, _ = time_step(step, min_time=min_time / rounds, min_rounds=3)
                    per_round[name].append(median)
            group = []
            for name, times in per_round.items():
                median = statistics.median(times)
                q = statistics.quantiles(times, n=4) if len(times) >= 4 else [median] * 3
                row = dict(implementation=name, sizes="-".join(map(str, sizes)), batch=batch,
                           dtype=np.dtype(dtype).name, threads=threads, median_s=median,
                           iqr_s=q[2] - q[0], rounds=rounds, samples_per_s=batch / median,
                           gflops=step_flops(sizes, batch) / median / 1e9)
                for ref in ("course-numpy", "torch", "gemms-only"):
                    if ref in per_round:
                        row[f"speedup_vs_{ref}"] = statistics.median(
                            b / t for b, t in zip(per_round[ref], times))
                group.append(row)
                if progress:
                    progress(row)
            rows += group
    return rows


def format_table(rows):
    """A plain-text table of :func:`compare` rows."""
    header = (f"{'implementation':15s} {'sizes':>17s} {'batch':>5s} {'ms/step':>9s} "
              f"{'samples/s':>10s} {'GFLOP/s':>8s} {'vs numpy':>8s} {'vs torch':>8s} "
              f"{'/ gemms':>7s}")
    lines = [header, "-" * len(header)]
    for r in rows:
        vs_np = r.get("speedup_vs_course-numpy")
        vs_t = r.get("speedup_vs_torch")
        floor = r.get("speedup_vs_gemms-only")
        lines.append(
            f"{r['implementation']:15s} {r['sizes']:>17s} {r['batch']:5d} "
            f"{r['median_s'] * 1e3:9.3f} {r['samples_per_s']:10.0f} {r['gflops']:8.1f} "
            f"{'' if vs_np is None else f'{vs_np:7.2f}x':>8s} "
            f"{'' if vs_t is None else f'{vs_t:7.2f}x':>8s} "
            f"{'' if floor is None else f'{1 / floor:7.2f}':>7s}"
        )
    return "\n".join(lines)
