"""fastbp.distributed: synchronous data-parallel training over MPI (the ``mpi`` extra).

Run one process per core group (``mpiexec -n K python train.py``); each rank holds the whole
model, computes the gradient of ITS part of every global batch with fastbp's kernels, and one
all-reduce per step makes every rank apply the same update to the same parameters.

Design
------
a. Transport: mpi4py over an MPI library installed from PyPI (``pip install 'fastbp[mpi]'``
   brings mpi4py and mpich: no system MPI, no compiler flags).  ``import fastbp`` never imports
   this module; importing it without mpi4py raises ImportError naming the extra.
b. One flat buffer per step.  :class:`DataParallel` allocates, once, a contiguous array of the
   model's dtype holding every gradient (views of it are handed out by parameter name) plus two
   trailing slots: the rank's row count and its summed loss.  The local step writes the SUM of
   the per-row gradients straight into those views -- the fused training step of
   ``Sequential.train_step`` folds its weight-gradient GEMMs into them through the optimizer's
   ``gemm_fold`` protocol (:class:`_GradientSink`), other models go through ``step`` and one
   scaled copy -- then ONE in-place ``Allreduce(SUM)`` adds everything, rows and losses
   included, and one division by the global row count leaves the gradient of the mean loss over
   the concatenated batch.  So unequal shards (and ranks with 0 rows) weigh exactly as the rows
   they hold, and a step costs one collective, not one per parameter.  (The two slots share
   the model's dtype: float32 counts rows exactly up to 2**24 per global batch.)
c. Every rank then runs the user's optimizer on identical gradients: updates, optimizer state
   and parameters stay bitwise identical across ranks without further communication.  Rank 0's
   parameters are broadcast at creation (:meth:`DataParallel.broadcast_parameters`) and its
   optimizer state the first time an optimizer is used, so a checkpoint loaded on rank 0 alone
   is enough.
d. Failure: a collective waits forever for a rank that died (measured here: a rank leaving with
   ``sys.exit(3)`` left the other spinning in a Barrier until killed).  So every local part of a
   step runs under :func:`abort_on_error`: the failing rank prints its rank and the exception,
   then ``comm.Abort`` ends every rank with a non-zero status.  What all ranks compute alike (a
   model that differs between ranks, an empty global batch) raises an ordinary exception on
   every rank instead.
e. Data: :func:`iterate_minibatches` draws the global order exactly as
   :func:`fastbp.data.iterate_minibatches` does, so the concatenation of the ranks' parts of step
   t IS the single-process batch t, and hands each rank its :func:`shard` of it.  The first batch
   is compared across ranks, so a rank seeded differently fails loudly, not silently.
f. Threads: K ranks on one host share its cores.  Unless the user chose a count
   (``OMP_NUM_THREADS``, :func:`fastbp.set_num_threads`), each rank takes its usable cores divided
   by the number of ranks on the node bound to the same cores (:func:`rank_threads`), for both
   fastbp's OpenMP kernels and BLAS, so ``mpiexec -n 2`` on 2 cores does not oversubscribe.
"""

import contextlib
import os
import sys
import time
import traceback
import weakref
import zlib

import numpy as np

try:
    from mpi4py import MPI
except ImportError as e:  # pragma: no cover - exercised by the suite only without mpi4py
    raise ImportError(
        "fastbp.distributed needs mpi4py and an MPI library: pip install 'fastbp[mpi]' "
        f"(mpi4py + mpich) ({e})"
    ) from e

from . import _config, data, nn, optim

__all__ = [
    "DataParallel",
    "abort_on_error",
    "iterate_minibatches",
    "rank_threads",
    "shard",
    "train_command",
]


def _comm(comm):
    if comm is None:
        return MPI.COMM_WORLD
    if not isinstance(comm, MPI.Comm):
        raise TypeError(f"comm must be an mpi4py.MPI.Comm (or None for COMM_WORLD), got "
                        f"{type(comm).__name__}")
    return comm


def _check_same(comm, items, what):
    """Raise ValueError on EVERY rank unless the list `items` is equal on all ranks (one
    allgather); the message names each differing rank and its first difference."""
    ranks = comm.allgather(list(items))
    first = ranks[0]
    problems = []
    for r, mine in enumerate(ranks[1:], 1):
        if mine != first:
            k = next((i for i, (a, b) in enumerate(zip(first, mine)) if a != b),
                     min(len(first), len(mine)))
            theirs, ours = (v[k] if k < len(v) else "nothing" for v in (mine, first))
            problems.append(f"rank {r} has {theirs} where rank 0 has {ours}")
    if problems:
        raise ValueError(f"{what} differs between ranks: " + "; ".join(problems))


# ------------------------------------------------------------------------------- failure


@contextlib.contextmanager
def abort_on_error(comm=None, brief=()):
    """End every rank when the enclosed code raises on one: print, then ``comm.Abort(1)``.

    Without this, the other ranks would wait forever in their next collective.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
        The communicator to abort (default ``COMM_WORLD``).
    brief : tuple of exception types
        Reported in one line without a traceback (user errors such as the CLI's).

    Notes
    -----
    The message, on stderr, names the rank: ``fastbp: error: rank 1 of 2: ValueError: ...``.
    ``SystemExit`` with status 0 passes through; every other exception, KeyboardInterrupt
    included, aborts.
    """
    comm = _comm(comm)
    try:
        yield comm
    except SystemExit as e:
        if e.code in (None, 0):
            raise
        _abort(comm, e, brief)
    except BaseException as e:  # noqa: B036 - any failure must end every rank, never hang
        _abort(comm, e, brief)


def _abort(comm, error, brief):
    where = f"rank {comm.Get_rank()} of {comm.Get_size()}"
    if not isinstance(error, brief):
        traceback.print_exception(error, file=sys.stderr)
    detail = str(error) if isinstance(error, brief) else f"{type(error).__name__}: {error}"
    print(f"fastbp: error: {where}: {detail} (aborting every rank)", file=sys.stderr,
          flush=True)
    # Measured: mpiexec's output forwarding can drop what a rank wrote just before Abort
    # (only the traceback's first lines arrived); a moment lets it drain.
    time.sleep(0.2)
    comm.Abort(1)
    os._exit(1)  # measured: MPICH's Abort may return before it kills this process


# ------------------------------------------------------------------------------------ data


def shard(n_rows, comm=None):
    """This rank's contiguous part of `n_rows` rows, balanced across the ranks.

    The first ``n_rows % size`` ranks get one row more; ranks past `n_rows` get an empty slice.

    Parameters
    ----------
    n_rows : int >= 0
    comm : mpi4py.MPI.Comm, optional
        Default ``COMM_WORLD``.

    Returns
    -------
    slice
        ``slice(start, stop)``; the slices of ranks 0..size-1 tile ``range(n_rows)`` in order.

    Raises
    ------
    TypeError, ValueError
        If `n_rows` is not an integer >= 0.
    """
    if isinstance(n_rows, bool) or not isinstance(n_rows, (int, np.integer)):
        raise TypeError(f"n_rows must be an int, got {type(n_rows).__name__}")
    if n_rows < 0:
        raise ValueError(f"n_rows must be >= 0, got {n_rows}")
    comm = _comm(comm)
    rank, size = comm.Get_rank(), comm.Get_size()
    base, extra = divmod(int(n_rows), size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def iterate_minibatches(X, y, batch_size, comm=None, shuffle=True, seed=None, drop_last=False):
    """This rank's part of each global minibatch: one epoch, in lock step with the other ranks.

    Every rank passes the same full `X`, `y` and `seed`; the global batches are exactly those of
    :func:`fastbp.data.iterate_minibatches` with the same arguments, and each rank receives
    the :func:`shard` of every batch (so a batch smaller than the number of ranks leaves some
    ranks with 0 rows, which :meth:`DataParallel.train_step` accepts).

    Parameters
    ----------
    X, y : array_like, shape (N, ...)
        The whole data set, identical on every rank.
    batch_size : int
        Rows of each GLOBAL batch (all ranks together).
    comm : mpi4py.MPI.Comm, optional
        Default ``COMM_WORLD``.
    shuffle, drop_last :
        As for :func:`fastbp.data.iterate_minibatches`.
    seed : None, int, numpy.random.SeedSequence or numpy.random.Generator
        The same on every rank (a Generator created once from the same seed gives a fresh,
        reproducible order per epoch).  ``None`` draws fresh entropy on rank 0 and broadcasts
        it.

    Yields
    ------
    X_part, y_part : ndarray
        Copies of this rank's rows of the batch, in batch order.

    Raises
    ------
    ValueError
        On every rank, if X and y differ in length, or (at the first batch) the ranks' orders
        differ: a different seed or data set on some rank.
    TypeError
        If `batch_size` is not an integer.
    """
    comm = _comm(comm)
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim == 0 or y.ndim == 0 or len(X) != len(y):
        raise ValueError(f"X and y must hold the same number of rows, got shapes {X.shape} and "
                         f"{y.shape}")
    if shuffle and seed is None:
        seed = np.random.SeedSequence(comm.bcast(
            np.random.SeedSequence().entropy if comm.Get_rank() == 0 else None))
    rows = np.arange(len(X))
    batches = data.iterate_minibatches(rows, rows, batch_size, shuffle=shuffle, seed=seed,
                                       drop_last=drop_last)
    return _shards(X, y, batches, comm)


def _shards(X, y, batches, comm):
    for step, (index, _) in enumerate(batches):
        if step == 0:
            _check_same(comm, [f"{len(X)} rows, first batch order checksum "
                               f"{zlib.crc32(index.tobytes()):08x}"],
                        "the data (pass the same X, y and seed on every rank)")
        mine = index[shard(len(index), comm)]
        yield X[mine], y[mine]


# --------------------------------------------------------------------------------- threads


def rank_threads(comm=None):
    """Cores this rank should use: its usable cores / the ranks on its node bound to them.

    Collective over `comm` (ranks are grouped by shared-memory node).

    Returns
    -------
    int >= 1
    """
    comm = _comm(comm)
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        mine = frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        sharing = sum(cores == mine for cores in node.allgather(mine))
    finally:
        node.Free()
    return max(1, _config.USABLE_CORES // sharing)


def _user_chose_threads():
    return _config._user_threads is not None or "OMP_NUM_THREADS" in os.environ


def _default_threads(comm):
    """Apply :func:`rank_threads` unless the user chose a count; returns (threads, applied)."""
    threads = rank_threads(comm)  # collective: every rank calls it
    if _user_chose_threads():
        return _config.get_num_threads(), False
    _config.set_num_threads(threads)
    return threads, True


# --------------------------------------------------------------------------- data parallel


class _GradientSink:
    """An "optimizer" for ``Sequential.train_step`` that stores gradients instead of applying
    them: ``scale * gradient`` lands in the given views (the all-reduce buffer).

    The fused step asks :meth:`gemm_fold` where each weight-gradient GEMM should write (the
    view, with alpha = `scale` and beta = 0, so nothing is copied); the unfused path calls
    :meth:`step` with the model's gradients, which are scaled into the views.
    """

    def __init__(self, views):
        self.views = views
        self.scale = 1.0

    def gemm_fold(self, name, param):
        return optim.GemmFold(self.views[name], self.scale, 0.0, None)

    def step(self, params, grads):
        for name, g in grads.items():
            np.multiply(g, self.scale, out=self.views[name])


def _rows(x, y):
    """Rows of a local part: 0 for an empty part (x and y both empty), else x's first axis
    (``Sequential.train_step`` validates such parts)."""
    x_shape, y_shape = np.shape(x), np.shape(y)
    if x_shape[:1] == (0,) or y_shape[:1] == (0,):
        if x_shape[:1] != y_shape[:1]:
            raise ValueError(f"x_local and y_local must hold the same number of rows, got "
                             f"shapes {x_shape} and {y_shape}")
        return 0
    return x_shape[0] if x_shape else 1


def _layer_text(layer):
    """A layer's repr, or its class name where the repr is object's (it holds an address)."""
    cls = type(layer)
    return repr(layer) if cls.__repr__ is not object.__repr__ else f"a {cls.__qualname__}"


def _signature(model):
    """What must agree across ranks: the layers and every parameter's name, shape and dtype."""
    return ([f"layer {i}: {_layer_text(layer)}" for i, layer in enumerate(model.layers)]
            + [f"params[{name!r}]: {p.dtype} {p.shape}" for name, p in model.params.items()])


class DataParallel:
    """Synchronous data-parallel training of a :class:`fastbp.nn.Sequential` over MPI.

    Collective: every rank of `comm` creates one, with the same architecture and dtype.

    Parameters
    ----------
    model : fastbp.nn.Sequential (e.g. ``fastbp.nn.MLP``)
        Trained in place.  Rank 0's parameters are copied to every rank now.
    comm : mpi4py.MPI.Comm, optional
        Default ``COMM_WORLD``.
    optimizer : fastbp.optim.Optimizer, optional
        Synchronised (rank 0's hyper-parameters and state) now instead of at its first step.

    Attributes
    ----------
    model, comm, rank, size :
    threads : int
        OpenMP and BLAS threads this rank uses (see the module notes, f).
    grads : dict of str -> ndarray
        After :meth:`train_step`, the global mean gradients (views into the all-reduce buffer).

    Raises
    ------
    TypeError
        If `model` is not a Sequential or `comm` not an MPI communicator.
    ValueError
        On every rank, if the models differ between ranks (layers, parameter names, shapes or
        dtypes), or the model mixes dtypes.
    ImportError
        When mpi4py is not installed (at import of this module).
    """

    def __init__(self, model, comm=None, optimizer=None):
        if not isinstance(model, nn.Sequential):
            raise TypeError(f"model must be a fastbp.nn.Sequential (MLP), got "
                            f"{type(model).__name__}")
        self.comm = _comm(comm)
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.model = model
        _check_same(self.comm, _signature(model), "the model")
        params = model.params
        dtypes = {p.dtype for p in params.values()}
        if len(dtypes) != 1:
            raise ValueError(f"DataParallel needs one parameter dtype, the model has "
                             f"{sorted(d.name for d in dtypes)}")
        sizes = [p.size for p in params.values()]
        self._buffer = np.zeros(sum(sizes) + 2, dtypes.pop())  # gradients, rows, summed loss
        self._flat_grads = self._buffer[:-2]
        offsets = np.cumsum([0, *sizes])
        self.grads = {name: self._flat_grads[lo:hi].reshape(p.shape)
                      for (name, p), lo, hi in zip(params.items(), offsets[:-1], offsets[1:])}
        self._sink = _GradientSink(self.grads)
        self._synced = weakref.WeakSet()
        self.threads, _ = _default_threads(self.comm)
        self.broadcast_parameters()
        if optimizer is not None:
            self._sync_optimizer(optimizer)

    def __repr__(self):
        return (f"DataParallel(rank {self.rank} of {self.size}, {self.threads} thread(s), "
                f"{self._flat_grads.size:,} parameters)")

    def broadcast_parameters(self):
        """Copy rank 0's parameters to every rank (one Bcast of the flat buffer).  Collective."""
        params = self.model.params
        if self.rank == 0:
            for name, p in params.items():
                self.grads[name][...] = p
        self.comm.Bcast(self._flat_grads, root=0)
        if self.rank != 0:
            for name, p in params.items():
                p[...] = self.grads[name]
        self._buffer.fill(0)

    def _sync_optimizer(self, optimizer):
        """First use of `optimizer`: every rank takes rank 0's hyper-parameters and state."""
        if optimizer in self._synced:
            return
        _check_same(self.comm, [f"optimizer {type(optimizer).__qualname__}"], "the optimizer")
        state = self.comm.bcast(optimizer.state_dict() if self.rank == 0 else None, root=0)
        with abort_on_error(self.comm):
            if self.rank != 0:
                optimizer.load_state_dict(state)
        self._synced.add(optimizer)

    def train_step(self, x_local, y_local, loss, optimizer):
        """One synchronous step on the global batch made of every rank's part.  Collective.

        Parameters
        ----------
        x_local : array_like (n_local, in_features)
            This rank's rows; n_local may differ between ranks and may be 0.
        y_local : array_like
            Their labels (n_local,) or targets (n_local, out_features).
        loss : a fastbp.nn loss (SoftmaxCrossEntropy, MulticlassHinge, MSELoss)
        optimizer : fastbp.optim.Optimizer (SGD, Adam, RMSProp)
            Applied on every rank to the global mean gradient.

        Returns
        -------
        float
            The mean loss over the global batch (before the update), the same on every rank.

        Raises
        ------
        TypeError
            If `optimizer` has no ``step(params, grads)`` (on every rank alike).
        ValueError
            On every rank, if the global batch has no rows (or, for float32, over 2**24).

        Notes
        -----
        An exception in this rank's local part (bad rows or labels, a failing kernel) prints
        the rank and the error and aborts every rank (module notes, d).  The result equals
        ``model.train_step`` on the concatenation of the ranks' rows, in rank order, within
        float tolerance.
        """
        if not (hasattr(optimizer, "state_dict") and callable(getattr(optimizer, "step", None))):
            raise TypeError(f"optimizer must be a fastbp.optim optimizer, got "
                            f"{type(optimizer).__name__}")
        self._sync_optimizer(optimizer)
        buf = self._buffer
        with abort_on_error(self.comm):
            rows = _rows(x_local, y_local)
            if rows:
                self._sink.scale = float(rows)  # local sums, so ranks weigh by their rows
                buf[-1] = rows * self.model.train_step(x_local, y_local, loss, self._sink)
            else:
                buf.fill(0)
            buf[-2] = rows
        self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        total = float(buf[-2])
        if total == 0:
            raise ValueError("the global batch is empty: every rank passed 0 rows")
        if total > 2.0 ** (np.finfo(buf.dtype).nmant + 1):
            raise ValueError(f"a global batch of {total:,.0f} rows is more than {buf.dtype} "
                             "counts exactly: use smaller batches or a float64 model")
        np.divide(self._flat_grads, buf[-2], out=self._flat_grads)
        with abort_on_error(self.comm):
            optimizer.step(self.model.params, self.grads)
        return float(buf[-1]) / total

    def iterate_minibatches(self, X, y, batch_size, shuffle=True, seed=None, drop_last=False):
        """:func:`iterate_minibatches` over this object's communicator."""
        return iterate_minibatches(X, y, batch_size, self.comm, shuffle=shuffle, seed=seed,
                                   drop_last=drop_last)


# ------------------------------------------------------------------------------ command line


def train_command(args, run, brief=()):
    """Run ``fastbp train --distributed`` on this rank (used by :mod:`fastbp.cli`).

    Sets the per-rank thread default, keeps stdout, ``--save`` and ``--plot`` to rank 0, aborts
    every rank when one fails, and calls ``run(args, parallel=hooks)``, where
    ``hooks(model, optimizer)`` wraps the model in :class:`DataParallel` and returns the
    ``step`` / ``batches`` arguments of the training loop.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed ``train`` options (``threads``, ``save`` and ``plot`` are read; the latter two
        are cleared on ranks other than 0).
    run : callable
        The single-process training command.
    brief : tuple of exception types
        Errors reported in one line (the CLI's user errors).

    Returns
    -------
    int
        What `run` returns.
    """
    comm = MPI.COMM_WORLD
    with abort_on_error(comm, brief):
        threads, applied = _default_threads(comm)
        if args.threads is not None:
            threads, applied = args.threads, False
        if comm.Get_rank() == 0:
            how = "cores / ranks on the node" if applied else "as set by the user"
            print(f"distributed: {comm.Get_size()} MPI ranks, {threads} thread(s) each ({how})",
                  flush=True)

        def hooks(model, optimizer):
            parallel = DataParallel(model, comm, optimizer)
            return {"step": parallel.train_step, "batches": parallel.iterate_minibatches}

        if comm.Get_rank() == 0:
            return run(args, parallel=hooks)
        args.save = args.plot = None
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            return run(args, parallel=hooks)
