"""Numerical gradient checks with the CS231n / CS182 contracts, plus a whole-model check.

Design
------
a. Course compatibility. ``eval_numerical_gradient``, ``eval_numerical_gradient_array``,
   ``rel_error`` and ``grad_check_sparse`` keep the names, signatures, printing and numbers of the
   course helpers, so a notebook that imports them from here behaves as before: ``x`` is perturbed
   IN PLACE (``x[ix] = oldval + h``), ``f`` sees the perturbed array, and ``x[ix] = oldval``
   restores it bit for bit.  The only differences are stricter argument checks, a ``try/finally``
   that restores ``x`` even when ``f`` raises, float64 results, and ``grad_check_sparse``
   returning its relative errors.
b. Whole models. ``check_model_gradients`` speaks the course model protocol (``model.params`` read
   live, ``model.loss(X, y) -> (loss, grads)``) and returns a ``GradCheckReport`` that can be
   printed or asserted on.
c. Numerics. Function values are converted to float64 as soon as ``f`` returns them (an array
   result is copied, since ``f`` may return a view of a buffer it reuses).  Finite differences
   are only meaningful when the step ``h`` is large against the rounding of ``x`` and of ``f``;
   in float32 (eps ~1.2e-7) a step of 1e-5 leaves ~1e-3 relative noise, so every function here
   warns on inputs narrower than float64.  ``check_model_gradients`` divides by the step actually
   realised in the parameter's dtype (``x[ix] + h`` rounds in float32), not by the nominal ``2h``.
d. Nothing here imports fastbp's kernels or layers: the module is pure NumPy and can check any
   of them, including the reference.
"""

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import _validation as val

__all__ = [
    "GradCheckEntry",
    "GradCheckReport",
    "check_model_gradients",
    "eval_numerical_gradient",
    "eval_numerical_gradient_array",
    "grad_check_sparse",
    "rel_error",
]

#: Floor of the denominator in relative errors, as in the course's ``rel_error``.
_REL_FLOOR = 1e-8


# --------------------------------------------------------------------------------------------
# argument checks and the one perturbation primitive
# --------------------------------------------------------------------------------------------


def _check_h(h):
    """`h` as a positive finite float, else ValueError."""
    if isinstance(h, (bool, np.bool_)):
        raise ValueError(f"h must be a positive finite float, got {h!r}")
    try:
        value = float(h)
    except (TypeError, ValueError):
        raise ValueError(f"h must be a positive finite float, got {h!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"h must be a positive finite float, got {h!r}")
    return value


def _check_perturbable(x, name):
    """Raise unless `x` is a writeable float ndarray (it is perturbed in place)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(
            f"{name} must be a float numpy array (it is perturbed in place), "
            f"got {type(x).__name__}"
        )
    if x.dtype.kind != "f":
        # x[ix] = oldval + h would truncate in an integer array: a silently wrong gradient.
        raise TypeError(
            f"{name} must have a float dtype (it is perturbed in place), got dtype {x.dtype}"
        )
    if not x.flags.writeable:
        raise ValueError(f"{name} is read-only; it must be writeable to be perturbed in place")


def _warn_if_narrow(dtypes_by_name, stacklevel):
    """Warn once about arrays whose dtype is less precise than float64."""
    narrow = {
        name: dtype
        for name, dtype in dtypes_by_name.items()
        if np.finfo(dtype).eps > np.finfo(np.float64).eps
    }
    if narrow:
        listed = ", ".join(f"{name} ({dtype})" for name, dtype in narrow.items())
        warnings.warn(
            f"finite differences are unreliable below float64 (expect relative errors ~1e-3 in "
            f"float32): {listed}; run the gradient check in float64",
            stacklevel=stacklevel + 1,
        )


def _scalar(value):
    """A scalar result of f as a Python float, else ValueError."""
    a = np.asarray(value)
    if a.size != 1:
        raise ValueError(f"f must return a scalar, got an array of shape {a.shape}")
    return float(a.reshape(()))


def _central_values(f, x, ix, h, read):
    """(read(f(x + h e_ix)), read(f(x - h e_ix)), realised step) with x[ix] restored exactly.

    `read` converts each result as soon as f returns it, before f runs again.  The realised step
    is (x[ix] + h) - (x[ix] - h) as the dtype of x rounds it; it equals 2h exactly only when both
    sums are representable.  The try/finally restores x even when f raises.
    """
    oldval = x[ix]
    try:
        x[ix] = oldval + h
        x_plus = float(x[ix])
        f_plus = read(f(x))
        x[ix] = oldval - h
        x_minus = float(x[ix])
        f_minus = read(f(x))
    finally:
        x[ix] = oldval
    return f_plus, f_minus, x_plus - x_minus


def _indices(x):
    """Every index of x in the order the course visits them (np.nditer, memory order)."""
    it = np.nditer(x, flags=["multi_index", "zerosize_ok"])
    while not it.finished:
        yield it.multi_index
        it.iternext()


# --------------------------------------------------------------------------------------------
# the course helpers
# --------------------------------------------------------------------------------------------


def eval_numerical_gradient(f, x, verbose=True, h=1e-5):
    """Numerical gradient of a scalar function by central differences at every entry of x.

    For each index ``ix`` (in the order ``np.nditer`` visits ``x``), sets ``x[ix] = oldval + h``
    and ``x[ix] = oldval - h`` in place, evaluates ``f(x)`` at both, restores ``x[ix] = oldval``
    and records ``(f(x + h) - f(x - h)) / (2 * h)``: the CS231n contract.

    Parameters
    ----------
    f : callable
        ``f(x) -> scalar``.  It receives `x` itself (perturbed), not a copy; functions that close
        over `x` (e.g. ``lambda _: model.loss(X, y)[0]`` with ``x = model.params["W1"]``) see
        the perturbation too.
    x : ndarray of float, any shape
        Point at which to differentiate.  Perturbed in place and restored bit for bit, also when
        `f` raises.
    verbose : bool, default True
        Print ``ix, grad[ix]`` after each entry, as the course does.
    h : float, default 1e-5
        Half-width of the central difference.

    Returns
    -------
    grad : ndarray of float64, shape ``x.shape``

    Raises
    ------
    TypeError
        If `x` is not a float ndarray (an integer array would silently truncate ``oldval + h``).
    ValueError
        If `h` is not a positive finite float, `x` is read-only, or `f` does not return a scalar.

    Warns
    -----
    UserWarning
        If `x` is less precise than float64.
    """
    h = _check_h(h)
    _check_perturbable(x, "x")
    _warn_if_narrow({"x": x.dtype}, stacklevel=2)
    grad = np.zeros(x.shape, dtype=np.float64)
    for ix in _indices(x):
        f_plus, f_minus, _ = _central_values(f, x, ix, h, _scalar)
        grad[ix] = (f_plus - f_minus) / (2 * h)
        if verbose:
            print(ix, grad[ix])
    return grad


def eval_numerical_gradient_array(f, x, df, h=1e-5):
    """Numerical gradient of ``sum(f(x) * df)`` with respect to x, for array-valued f.

    This is the vector-Jacobian product ``J(x)^T df`` a layer's backward pass computes, from
    central differences: ``np.sum((pos - neg) * df) / (2 * h)`` per entry of `x`, with `x`
    perturbed in place and restored (the CS231n contract).

    Parameters
    ----------
    f : callable
        ``f(x) -> ndarray`` of shape ``df.shape``.  The result may be a view of storage that `f`
        reuses: it is copied (to float64) before `f` runs again.
    x : ndarray of float, any shape
        Perturbed in place and restored bit for bit, also when `f` raises.
    df : array_like of float, shape of ``f(x)``
        Upstream gradient.
    h : float, default 1e-5
        Half-width of the central difference.

    Returns
    -------
    grad : ndarray of float64, shape ``x.shape``

    Raises
    ------
    TypeError
        If `x` is not a float ndarray.
    ValueError
        If `h` is not a positive finite float, `x` is read-only, or ``f(x)`` and `df` differ in
        shape (no broadcasting: a mismatch is almost always a bug in the test).

    Warns
    -----
    UserWarning
        If `x` is less precise than float64.
    """
    h = _check_h(h)
    _check_perturbable(x, "x")
    _warn_if_narrow({"x": x.dtype}, stacklevel=2)
    df = np.asarray(df, dtype=np.float64)

    def read(value):
        out = np.array(value, dtype=np.float64)  # a copy: f may reuse the buffer it returned
        if out.shape != df.shape:
            raise ValueError(f"df has shape {df.shape} but f(x) returned shape {out.shape}")
        return out

    grad = np.zeros(x.shape, dtype=np.float64)
    for ix in _indices(x):
        pos, neg, _ = _central_values(f, x, ix, h, read)
        grad[ix] = np.sum((pos - neg) * df) / (2 * h)
    return grad


def rel_error(x, y):
    """Largest elementwise relative error, ``max(|x - y| / max(1e-8, |x| + |y|))``, as a float.

    The course's definition: the 1e-8 floor keeps entries where both values are ~0 from dividing
    by zero, so such entries count with their absolute error scaled by 1e8.

    Parameters
    ----------
    x, y : array_like
        Broadcastable to a common, non-empty shape.  Computed in float64.

    Returns
    -------
    float
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return float(np.max(np.abs(x - y) / np.maximum(_REL_FLOOR, np.abs(x) + np.abs(y))))


def grad_check_sparse(f, x, analytic_grad, num_checks=10, h=1e-5, seed=None):
    """Compare an analytic gradient with central differences at a few random entries.

    For each of `num_checks` random indices (drawn with replacement, as the course does) prints
    ``numerical: %f analytic: %f, relative error: %e`` and records the relative error
    ``|n - a| / max(1e-8, |n| + |a|)`` (the course divides by ``|n| + |a|`` alone and prints
    ``nan`` when both are 0; the floor makes that 0).

    Parameters
    ----------
    f : callable
        ``f(x) -> scalar``, evaluated on the perturbed `x`.
    x : ndarray of float
        Perturbed in place and restored bit for bit, also when `f` raises.
    analytic_grad : array_like, shape ``x.shape``
        The gradient to check.
    num_checks : int, default 10
        Number of random entries to check.
    h : float, default 1e-5
        Half-width of the central difference.
    seed : None, int or numpy.random.Generator, optional
        Seeds ``numpy.random.default_rng`` for the indices.

    Returns
    -------
    list of float
        The relative error at each checked entry, in the order printed.

    Raises
    ------
    TypeError
        If `x` is not a float ndarray, or `num_checks` is not an integer.
    ValueError
        If `h` is not a positive finite float, `x` is read-only or empty, `analytic_grad` does
        not have the shape of `x`, `num_checks` is negative, or `f` does not return a scalar.

    Warns
    -----
    UserWarning
        If `x` is less precise than float64.
    """
    h = _check_h(h)
    _check_perturbable(x, "x")
    analytic_grad = np.asarray(analytic_grad)
    if analytic_grad.shape != x.shape:
        raise ValueError(
            f"analytic_grad must have the shape of x {x.shape}, got {analytic_grad.shape}"
        )
    num_checks = val.integer(num_checks, "num_checks", 0)
    if x.size == 0 and num_checks:
        raise ValueError("x is empty: there is no entry to check")
    _warn_if_narrow({"x": x.dtype}, stacklevel=2)
    rng = np.random.default_rng(seed)
    errors = []
    for _ in range(num_checks):
        ix = tuple(int(rng.integers(m)) for m in x.shape)
        f_plus, f_minus, _ = _central_values(f, x, ix, h, _scalar)
        numerical = (f_plus - f_minus) / (2 * h)
        analytic = float(analytic_grad[ix])
        error = abs(numerical - analytic) / max(_REL_FLOOR, abs(numerical) + abs(analytic))
        print("numerical: %f analytic: %f, relative error: %e" % (numerical, analytic, error))
        errors.append(error)
    return errors


# --------------------------------------------------------------------------------------------
# whole-model check
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GradCheckEntry:
    """The check of one parameter.

    Attributes
    ----------
    name : str
        Key in ``model.params``.
    shape : tuple of int
        Shape of the parameter.
    max_rel_error : float
        Largest ``|n - a| / max(1e-8, |n| + |a|)`` over the checked entries (``nan`` if any
        gradient was ``nan``; 0.0 when nothing was checked).
    max_abs_error : float
        Largest ``|n - a|`` over the checked entries.
    n_checked : int
        Number of entries compared.
    worst_index : tuple of int or None
        Index of the largest relative error (None when nothing was checked).
    """

    name: str
    shape: tuple
    max_rel_error: float
    max_abs_error: float
    n_checked: int
    worst_index: tuple = None

    def ok(self, tol=1e-6):
        """True when ``max_rel_error <= tol`` (False for nan)."""
        return bool(self.max_rel_error <= tol)


@dataclass
class GradCheckReport:
    """Result of ``check_model_gradients``: one ``GradCheckEntry`` per checked parameter.

    ``report["W1"]`` is the entry of parameter ``W1``; iterating yields the entries in the order
    checked; ``print(report)`` shows a table.

    Attributes
    ----------
    entries : list of GradCheckEntry
    h : float
        Half-width of the central differences used.
    """

    entries: list = field(default_factory=list)
    h: float = 1e-5

    def ok(self, tol=1e-6):
        """True when every parameter's largest relative error is at most `tol`.

        The course's rule of thumb for float64: below ~1e-7 is right, ~1e-2 and above is wrong;
        kinks (ReLU at 0) and tiny gradients (the 1e-8 floor) can land in between.
        """
        return all(entry.ok(tol) for entry in self.entries)

    @property
    def worst(self):
        """The entry with the largest relative error (nan counts as largest); None if empty."""
        if not self.entries:
            return None
        return max(
            self.entries,
            key=lambda e: math.inf if math.isnan(e.max_rel_error) else e.max_rel_error,
        )

    def __getitem__(self, name):
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise KeyError(name)

    def __iter__(self):
        return iter(self.entries)

    def __len__(self):
        return len(self.entries)

    def __str__(self):
        header = ("parameter", "shape", "checked", "max rel error", "max abs error")
        rows = [
            (
                e.name,
                str(e.shape),
                str(e.n_checked),
                f"{e.max_rel_error:.3e}",
                f"{e.max_abs_error:.3e}",
            )
            for e in self.entries
        ]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

        def line(row):
            # names and shapes left-aligned, numbers right-aligned
            cells = [
                cell.ljust(w) if i < 2 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths))
            ]
            return "  ".join(cells).rstrip()

        lines = [line(header), "  ".join("-" * w for w in widths)]
        lines += [line(row) for row in rows]
        worst = self.worst
        if worst is not None:
            lines.append(
                f"worst: {worst.name} at {worst.worst_index}, relative error "
                f"{worst.max_rel_error:.3e} (h = {self.h:g})"
            )
        return "\n".join(lines)


def _loss_and_grads(model, X, y):
    """Call ``model.loss(X, y)`` and check it returned ``(loss, grads)``."""
    result = model.loss(X, y)
    if not (isinstance(result, tuple) and len(result) == 2 and hasattr(result[1], "keys")):
        raise TypeError(
            "model.loss(X, y) must return (loss, grads) with grads a dict of parameter "
            f"gradients, got {type(result).__name__}"
        )
    return result


def check_model_gradients(model, X, y, h=1e-5, params=None, num_checks=None, seed=None):
    """Check every parameter gradient of a model against central differences.

    Model protocol (duck typing; the CS231n model contract, which ``fastbp.models`` and
    ``fastbp.nn.Sequential`` are designed to follow):

    - ``model.params``: a dict ``name -> ndarray`` that ``loss`` reads LIVE on every call.
      Entries are perturbed in place (``model.params[name][ix] = oldval +/- h``) and restored
      bit for bit, also when ``loss`` raises.
    - ``model.loss(X, y) -> (loss, grads)``: a scalar loss and a dict with the gradient of the
      loss for (at least) every checked parameter, shaped like it.  The gradients are copied
      right away, so a model that reuses its gradient buffers is fine.
    - ``loss`` must be deterministic (e.g. dropout with a fixed seed); this is verified by
      comparing the loss before and after the check, with a warning when it changed.

    The analytic gradients are taken once at the unperturbed parameters.  Each numerical
    gradient is ``(L(p + h) - L(p - h)) / step`` in float64, where ``step`` is the difference
    actually realised in the parameter's dtype (2h up to rounding).

    Parameters
    ----------
    model : object
        Follows the protocol above.
    X, y : array_like
        Passed to ``model.loss`` unchanged.
    h : float, default 1e-5
        Half-width of the central difference.
    params : str or iterable of str, optional
        Names of the parameters to check (default: all of ``model.params``, in its order).
    num_checks : int, optional
        Entries to check per parameter, drawn at random without replacement (all entries when
        the parameter has fewer).  None (default) checks every entry.
    seed : None, int or numpy.random.Generator, optional
        Seeds ``numpy.random.default_rng`` for the sampled entries.

    Returns
    -------
    GradCheckReport
        ``report.ok(tol)``, ``report.worst``, ``report["W1"].max_rel_error``, ``print(report)``.

    Raises
    ------
    TypeError
        If `model` has no ``params`` dict or ``loss`` does not return ``(loss, grads)``, a
        checked parameter is not a float ndarray, or `num_checks` is not an integer.
    ValueError
        If `h` is not a positive finite float, a name in `params` is not in ``model.params``,
        no parameter is selected, ``grads`` lacks a checked parameter or has the wrong shape, a
        parameter is read-only, `num_checks` < 1, or `h` is too small to move a parameter entry
        in its dtype.

    Warns
    -----
    UserWarning
        If a checked parameter is less precise than float64 (float32 finite differences carry
        ~1e-3 relative noise), or the loss is not reproducible.
    """
    h = _check_h(h)
    model_params = getattr(model, "params", None)
    if not hasattr(model_params, "keys"):
        raise TypeError("model must have a `params` dict (name -> ndarray), read by model.loss")
    if params is None:
        names = list(model_params.keys())
    else:
        names = [params] if isinstance(params, str) else list(params)
        missing = [name for name in names if name not in model_params]
        if missing:
            raise ValueError(
                f"no parameter named {missing[0]!r} in model.params "
                f"(it has {sorted(model_params.keys())})"
            )
    if not names:
        raise ValueError("no parameters to check")
    if num_checks is not None:
        num_checks = val.integer(num_checks, "num_checks", 1)
    for name in names:
        _check_perturbable(model_params[name], f"model.params[{name!r}]")
    _warn_if_narrow({name: model_params[name].dtype for name in names}, stacklevel=2)

    loss0, grads = _loss_and_grads(model, X, y)
    loss0 = _scalar(loss0)
    analytic = {}
    for name in names:
        if name not in grads:
            raise ValueError(f"model.loss returned no gradient for parameter {name!r}")
        # float64 copies: the model may overwrite its gradient buffers on the next call
        analytic[name] = np.array(grads[name], dtype=np.float64)
        if analytic[name].shape != model_params[name].shape:
            raise ValueError(
                f"gradient of {name!r} has shape {analytic[name].shape}, "
                f"parameter has shape {model_params[name].shape}"
            )

    def loss_at(_):
        return _scalar(_loss_and_grads(model, X, y)[0])

    rng = np.random.default_rng(seed)
    report = GradCheckReport(h=h)
    for name in names:
        p = model_params[name]
        if num_checks is None or num_checks >= p.size:
            flat = np.arange(p.size)
        else:
            flat = np.sort(rng.choice(p.size, size=num_checks, replace=False))
        indices = [tuple(int(i) for i in np.unravel_index(j, p.shape)) for j in flat]
        numerical = np.empty(len(indices))
        for k, ix in enumerate(indices):
            f_plus, f_minus, step = _central_values(loss_at, p, ix, h, float)
            if step == 0:
                raise ValueError(
                    f"h = {h:g} does not change model.params[{name!r}]{list(ix)} = {p[ix]} in "
                    f"{p.dtype}; use a larger h or float64 parameters"
                )
            numerical[k] = (f_plus - f_minus) / step
        report.entries.append(_entry(name, p.shape, indices, numerical, analytic[name]))

    loss1 = loss_at(None)
    if not np.isclose(loss0, loss1, rtol=1e-10, atol=0.0, equal_nan=True):
        warnings.warn(
            f"model.loss(X, y) is not reproducible ({loss0!r} before the check, {loss1!r} after): "
            "numerical gradients of a random loss are meaningless (fix the dropout seed)",
            stacklevel=2,
        )
    return report


def _entry(name, shape, indices, numerical, analytic_grad):
    """Summarise one parameter's comparison into a GradCheckEntry."""
    if not indices:
        return GradCheckEntry(name, tuple(shape), 0.0, 0.0, 0, None)
    analytic = np.array([analytic_grad[ix] for ix in indices])
    abs_err = np.abs(numerical - analytic)
    rel_err = abs_err / np.maximum(_REL_FLOOR, np.abs(numerical) + np.abs(analytic))
    worst = int(np.argmax(rel_err))  # argmax returns the first nan, if any
    return GradCheckEntry(
        name=name,
        shape=tuple(shape),
        max_rel_error=float(rel_err[worst]),
        max_abs_error=float(np.max(abs_err)),
        n_checked=len(indices),
        worst_index=indices[worst],
    )
