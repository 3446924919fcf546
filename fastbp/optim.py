"""Update rules and optimizers: the drop-in for CS231n / CS182 ``optim.py``, and optimizer
classes for :mod:`fastbp.nn`.

Course rules
------------
``rule(w, dw, config=None) -> (next_w, config)``, with the course's defaults written into
`config` (the same dict is returned; ``None`` makes a new one).  Who is modified follows the
course code exactly:

==========================  ===========================  ============================
rule                        w                            state in config
==========================  ===========================  ============================
:func:`sgd`                 updated IN PLACE, returned   none
:func:`sgd_momentum`        untouched; next_w is new     new ``velocity``
:func:`sgd_momentum_torch`  untouched; next_w is new     new ``momentum_buffer``
:func:`rmsprop`             untouched; next_w is new     new ``cache``
:func:`adam`                untouched; next_w is new     new ``m``, ``v``; ``t`` += 1
==========================  ===========================  ============================

State arrays already in `config` are never written: the rule stores fresh arrays, as the
course's ``v = mu * v - lr * dw; config["velocity"] = v`` does.  They are kept in w's dtype
(float32 stays float32).

Optimizer classes
-----------------
:class:`SGD`, :class:`Adam` and :class:`RMSProp` take PyTorch's hyper-parameter names and
semantics and update a dict of parameters IN PLACE from a dict of gradients:
``opt.step(params, grads)``, or a list or dict of ``fastbp.autograd`` leaf tensors from their
``.grad``: ``opt.step(params)``.  Per-parameter state is created lazily on the first step.
Their ``weight_decay`` applies to every parameter unless ``decay_biases=False``: then only
parameters with two or more dimensions (weights) are decayed, and 1-D ones (biases,
normalization scales and shifts) are not -- scikit-learn's ``alpha`` and timm's no-decay group.

Validation happens before anything is written: a bad hyper-parameter, shape, dtype, key or state
raises ValueError/TypeError (naming it) and leaves w, the parameters, `config` and the optimizer
state unchanged.  Every update is one fused kernel pass per parameter array
(``fastbp._kernels._optim``), taken from the backend in force (:func:`fastbp.set_backend`), so
``"numpy"`` and ``"checked"`` apply here too.
"""

from collections.abc import Mapping
from operator import attrgetter, is_
from typing import Callable, NamedTuple, Optional

import numpy as np

from . import _validation as val
from ._config import threads_for
from .backend import kernels

__all__ = [
    "sgd",
    "sgd_momentum",
    "sgd_momentum_torch",
    "rmsprop",
    "adam",
    "Optimizer",
    "SGD",
    "Adam",
    "RMSProp",
]

# --------------------------------------------------------------------------------------------
# course rules


def _config(config):
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict or None, got {type(config).__name__}")
    return config


def _gradient(w, dw, w_name="w", dw_name="dw"):
    """dw checked against w (same shape and dtype), as a C-contiguous array (a copy if needed)."""
    if not isinstance(dw, np.ndarray):
        raise TypeError(f"{dw_name} must be a numpy.ndarray, got {type(dw).__name__}")
    if dw.dtype != w.dtype:
        raise TypeError(f"{dw_name} has dtype {dw.dtype}, but {w_name} has dtype {w.dtype}")
    if dw.shape != w.shape:
        raise ValueError(f"{dw_name} has shape {dw.shape}, but {w_name} has shape {w.shape}")
    return np.ascontiguousarray(dw)


def _fresh_state(config, key, w):
    """A new C-contiguous array for config[key] in w's dtype: a copy of it, or zeros if absent."""
    if key not in config:
        return np.zeros(w.shape, w.dtype)
    s = config[key]
    if not isinstance(s, np.ndarray):
        raise TypeError(f"config[{key!r}] must be a numpy.ndarray, got {type(s).__name__}")
    if s.dtype.kind not in "fiu":
        raise TypeError(f"config[{key!r}] must hold real numbers, got dtype {s.dtype}")
    if s.shape != w.shape:
        raise ValueError(f"config[{key!r}] has shape {s.shape}, but w has shape {w.shape}")
    return np.array(s, dtype=w.dtype, order="C", copy=True)


def _flat(a):
    return a.reshape(-1)


def sgd(w, dw, config=None):
    """Vanilla stochastic gradient descent, in place: ``w -= learning_rate * dw``.

    Parameters
    ----------
    w : ndarray, float32 or float64
        Weights, any shape and layout; must be writeable.  Updated IN PLACE (as the course's
        ``w -= ...``) and returned.
    dw : ndarray
        Gradient, same shape and dtype as w (read-only and non-contiguous arrays are fine).
    config : dict, optional
        ``learning_rate`` (default 1e-2); the default is written into the dict.

    Returns
    -------
    next_w : ndarray
        w itself, updated.
    config : dict
        The same dict (a new one if None was given).

    Raises
    ------
    TypeError
        For a non-ndarray or non-float w, a dw of another dtype, a non-dict config or a
        non-numeric learning rate.
    ValueError
        For mismatched shapes, a read-only w, or a negative or non-finite learning_rate.
    """
    config = _config(config)
    lr = val.real(config.get("learning_rate", 1e-2), "learning_rate", 0)
    val.float_array(w, "w")
    g = _gradient(w, dw)
    if not w.flags.writeable:
        raise ValueError("w is read-only, but sgd updates it in place")
    config.setdefault("learning_rate", 1e-2)
    work = w if w.flags.c_contiguous else np.ascontiguousarray(w)
    kernels().sgd_step(_flat(work), _flat(g), lr, 0.0, threads_for(w.size))
    if work is not w:
        w[...] = work
    return w, config


def sgd_momentum(w, dw, config=None):
    """Stochastic gradient descent with momentum, the CS231n convention.

    ``v = momentum * v - learning_rate * dw;  next_w = w + v``.

    Parameters
    ----------
    w : ndarray, float32 or float64
        Weights (not modified).
    dw : ndarray
        Gradient, same shape and dtype as w.
    config : dict, optional
        ``learning_rate`` (default 1e-2), ``momentum`` in [0, 1) (default 0.9), ``velocity``
        (same shape as w; default zeros).  Defaults are written into the dict.

    Returns
    -------
    next_w : ndarray
        A new C-contiguous array of w's dtype.
    config : dict
        The same dict, with ``config["velocity"]`` a NEW array (the old one is not written).

    Raises
    ------
    TypeError, ValueError
        As for :func:`sgd` (w need not be writeable); also ValueError for a momentum outside
        [0, 1) and a velocity of the wrong shape, TypeError for a non-numeric velocity.
    """
    config = _config(config)
    lr = val.real(config.get("learning_rate", 1e-2), "learning_rate", 0)
    mu = val.fraction(config.get("momentum", 0.9), "momentum")
    val.float_array(w, "w")
    g = _gradient(w, dw)
    v = _fresh_state(config, "velocity", w)
    next_w = np.array(w, order="C", copy=True)
    kernels().sgd_momentum_step(_flat(next_w), _flat(g), _flat(v), lr, mu, threads_for(w.size))
    config.setdefault("learning_rate", 1e-2)
    config.setdefault("momentum", 0.9)
    config["velocity"] = v
    return next_w, config


def sgd_momentum_torch(w, dw, config=None):
    """Stochastic gradient descent with momentum, the PyTorch convention (dampening 0).

    ``b = momentum * b + dw;  next_w = w - learning_rate * b``.  For a constant learning rate
    this is :func:`sgd_momentum` with the velocity rescaled (``v = -learning_rate * b``); the
    two differ once the learning rate changes between steps.

    Parameters
    ----------
    w : ndarray, float32 or float64
        Weights (not modified).
    dw : ndarray
        Gradient, same shape and dtype as w.
    config : dict, optional
        ``learning_rate`` (default 1e-2), ``momentum`` in [0, 1) (default 0.9),
        ``momentum_buffer`` (PyTorch's name for b; same shape as w; default zeros).  Defaults
        are written into the dict.

    Returns
    -------
    next_w : ndarray
        A new C-contiguous array of w's dtype.
    config : dict
        The same dict, with ``config["momentum_buffer"]`` a NEW array.

    Raises
    ------
    TypeError, ValueError
        As for :func:`sgd_momentum`.
    """
    config = _config(config)
    lr = val.real(config.get("learning_rate", 1e-2), "learning_rate", 0)
    mu = val.fraction(config.get("momentum", 0.9), "momentum")
    val.float_array(w, "w")
    g = _gradient(w, dw)
    b = _fresh_state(config, "momentum_buffer", w)
    next_w = np.array(w, order="C", copy=True)
    kernels().momentum_step(_flat(next_w), _flat(g), _flat(b), lr, mu, 0.0, False,
                            threads_for(w.size))
    config.setdefault("learning_rate", 1e-2)
    config.setdefault("momentum", 0.9)
    config["momentum_buffer"] = b
    return next_w, config


def rmsprop(w, dw, config=None):
    """RMSProp: a moving average of squared gradients sets a per-weight learning rate.

    ``cache = decay_rate * cache + (1 - decay_rate) * dw**2;
    next_w = w - learning_rate * dw / (sqrt(cache) + epsilon)``.

    Parameters
    ----------
    w : ndarray, float32 or float64
        Weights (not modified).
    dw : ndarray
        Gradient, same shape and dtype as w.
    config : dict, optional
        ``learning_rate`` (default 1e-2), ``decay_rate`` in [0, 1) (default 0.99), ``epsilon``
        > 0 (default 1e-8), ``cache`` (same shape as w; default zeros).  Defaults are written
        into the dict.

    Returns
    -------
    next_w : ndarray
        A new C-contiguous array of w's dtype.
    config : dict
        The same dict, with ``config["cache"]`` a NEW array.

    Raises
    ------
    TypeError, ValueError
        As for :func:`sgd_momentum`, with ValueError for a decay_rate outside [0, 1) or an
        epsilon <= 0 (or non-finite).
    """
    config = _config(config)
    lr = val.real(config.get("learning_rate", 1e-2), "learning_rate", 0)
    rho = val.fraction(config.get("decay_rate", 0.99), "decay_rate")
    eps = val.real(config.get("epsilon", 1e-8), "epsilon", 0, strict=True)
    val.float_array(w, "w")
    g = _gradient(w, dw)
    cache = _fresh_state(config, "cache", w)
    next_w = np.array(w, order="C", copy=True)
    kernels().rmsprop_step(_flat(next_w), _flat(g), _flat(cache), lr, rho, eps, 0.0,
                           threads_for(w.size))
    config.setdefault("learning_rate", 1e-2)
    config.setdefault("decay_rate", 0.99)
    config.setdefault("epsilon", 1e-8)
    config["cache"] = cache
    return next_w, config


def adam(w, dw, config=None):
    """Adam, with bias correction; ``t`` is incremented BEFORE it is used.

    ``t += 1;  m = beta1 * m + (1 - beta1) * dw;  v = beta2 * v + (1 - beta2) * dw**2;
    next_w = w - learning_rate * (m / (1 - beta1**t)) / (sqrt(v / (1 - beta2**t)) + epsilon)``
    -- epsilon outside the square root, as in the course.

    Parameters
    ----------
    w : ndarray, float32 or float64
        Weights (not modified).
    dw : ndarray
        Gradient, same shape and dtype as w.
    config : dict, optional
        ``learning_rate`` (default 1e-3), ``beta1`` and ``beta2`` in [0, 1) (defaults 0.9 and
        0.999), ``epsilon`` > 0 (default 1e-8), ``m`` and ``v`` (same shape as w; default
        zeros), ``t`` (an integer >= 0, the number of steps taken; default 0).  Defaults are
        written into the dict.

    Returns
    -------
    next_w : ndarray
        A new C-contiguous array of w's dtype.
    config : dict
        The same dict, with ``config["m"]`` and ``config["v"]`` NEW arrays and ``config["t"]``
        incremented.

    Raises
    ------
    TypeError, ValueError
        As for :func:`rmsprop`, with ValueError for betas outside [0, 1) or a negative t and
        TypeError for a non-integer t.
    """
    config = _config(config)
    lr = val.real(config.get("learning_rate", 1e-3), "learning_rate", 0)
    beta1 = val.fraction(config.get("beta1", 0.9), "beta1")
    beta2 = val.fraction(config.get("beta2", 0.999), "beta2")
    eps = val.real(config.get("epsilon", 1e-8), "epsilon", 0, strict=True)
    t = val.integer(config.get("t", 0), "t", 0) + 1
    val.float_array(w, "w")
    g = _gradient(w, dw)
    m = _fresh_state(config, "m", w)
    v = _fresh_state(config, "v", w)
    next_w = np.array(w, order="C", copy=True)
    kernels().adam_step(_flat(next_w), _flat(g), _flat(m), _flat(v), lr, beta1, beta2, eps, t,
                        0.0, threads_for(w.size))
    for key, default in (("learning_rate", 1e-3), ("beta1", 0.9), ("beta2", 0.999),
                         ("epsilon", 1e-8)):
        config.setdefault(key, default)
    config["m"], config["v"], config["t"] = m, v, t
    return next_w, config


# --------------------------------------------------------------------------------------------
# optimizer classes


def _tensor_arrays(tensors):
    """``(params, grads)`` dicts of arrays from a list or dict of autograd leaf tensors.

    A tensor is recognised by what it has (an ndarray ``data`` and a ``grad``), so this module
    needs no import of fastbp.autograd (which sits above it).  Tensors without a grad are left
    out.
    """
    if isinstance(tensors, Mapping):
        items = list(tensors.items())
    elif isinstance(tensors, (list, tuple)):
        items = list(enumerate(tensors))
    else:
        raise TypeError(f"params must be a dict of arrays or a list/dict of tensors, got "
                        f"{type(tensors).__name__}")
    params, grads = {}, {}
    for key, t in items:
        data, grad = getattr(t, "data", None), getattr(t, "grad", _MISSING)
        if grad is _MISSING or not isinstance(data, np.ndarray):
            raise TypeError(f"params[{key!r}] is a {type(t).__name__}: without grads, params "
                            "must be autograd tensors (pass grads=... for arrays)")
        if not getattr(t, "is_leaf", True):
            raise ValueError(f"params[{key!r}] is not a leaf tensor (it was computed from "
                             "others); optimize the leaves")
        if grad is not None:
            params[key], grads[key] = data, grad
    return params, grads


_MISSING = object()


def _validate_decay(weight_decay, decay_biases):
    """The checked ``weight_decay`` and ``decay_biases`` entries of a hyper-parameter dict."""
    return {"weight_decay": val.real(weight_decay, "weight_decay", 0),
            "decay_biases": val.flag(decay_biases, "decay_biases")}


def _bias_decay(hp):
    """The weight decay of parameters with fewer than two dimensions (biases): none with
    ``decay_biases=False``."""
    return hp["weight_decay"] if hp["decay_biases"] else 0.0


def _without_bias_decay(hp):
    """Checked hyper-parameters `hp` as they apply to a parameter with fewer than two
    dimensions: `hp` itself, or a copy with no weight decay (``decay_biases=False``)."""
    if "decay_biases" not in hp or _bias_decay(hp) == hp["weight_decay"]:
        return hp
    return {**hp, "weight_decay": 0.0}


class GemmFold(NamedTuple):
    """How a fused step folds one parameter's update into its gradient GEMM: the GEMM computes
    ``target := scale * gradient + beta * target``, then ``finish()`` (if not None) completes
    the update."""

    target: np.ndarray
    scale: float
    beta: float
    finish: Optional[Callable[[], None]]


class FusedUpdate(NamedTuple):
    """An update the one-call compiled step runs itself, with checked hyper-parameters.

    ``kind`` is "sgd" (``hyper`` = (momentum, weight_decay, bias_weight_decay)), "adam"
    ((beta1, beta2, eps, weight_decay, bias_weight_decay)) or "rmsprop" ((alpha, eps,
    weight_decay, bias_weight_decay)): ``weight_decay`` is the weights', ``bias_weight_decay``
    the biases' (0 with ``decay_biases=False``); ``state_keys`` name the arrays of
    ``state[param name]`` the update reads and writes (created by :meth:`Optimizer.prepare_state`),
    ``counts_steps`` says whether ``state[name]["step"]`` counts the updates (Adam).
    """

    kind: str
    lr: float
    hyper: tuple
    state_keys: tuple
    counts_steps: bool = False


class Optimizer:
    """Base class of the optimizers: per-parameter state, validation, state_dict.

    Subclasses name their hyper-parameters (``_hyper``), their per-parameter state arrays
    (``_arrays``) and whether they count steps (``_counts_steps``), and implement
    ``_validate`` (hyper-parameters -> checked dict), ``_arrays_needed`` and ``_update`` (one
    kernel call on flat views).

    Attributes
    ----------
    state : dict
        Parameter name -> dict of that parameter's state (arrays of the parameter's shape and
        dtype, and an int ``"step"`` where steps are counted).  Filled lazily by :meth:`step`.
    """

    _hyper = ()
    _arrays = ()
    _counts_steps = False
    #: hyper-parameters added after a release, with the value a state_dict saved before them
    #: stands for (what its optimizer did): load_state_dict fills them in
    _added_hyper = {"decay_biases": True}

    def __init__(self, **hyperparameters):
        for name, value in self._validate(**hyperparameters).items():
            setattr(self, name, value)
        self.state = {}

    def __init_subclass__(cls, **kwargs):
        """Give each optimizer class ``_hyper_values(obj)``: the tuple of its hyper-parameter
        values, read in one C call (attrgetter returns a bare value for a single name)."""
        super().__init_subclass__(**kwargs)
        names = cls._hyper
        if len(names) > 1:
            cls._hyper_values = staticmethod(attrgetter(*names))
        else:
            cls._hyper_values = staticmethod(lambda obj: tuple(getattr(obj, n) for n in names))

    # subclass hooks ------------------------------------------------------------------------

    @classmethod
    def _validate(cls, **hp):
        raise NotImplementedError

    def _arrays_needed(self, hp):
        return self._arrays

    def _update(self, w, g, state, hp, n_threads):
        raise NotImplementedError

    # public API ----------------------------------------------------------------------------

    def gemm_fold(self, name, param):
        """How a fused step may fold this parameter's update into its gradient GEMM.

        Returns a :class:`GemmFold` ``(target, scale, beta, finish)``: the GEMM computes
        ``target := scale * gradient + beta * target``, then ``finish()`` (if not None)
        completes the update; or None when the update needs the gradient itself (then the
        caller fills ``grads`` and calls :meth:`step`).  The base class folds nothing.
        """
        return None

    def fused_update(self):
        """The :class:`FusedUpdate` the one-call compiled step may run instead of :meth:`step`,
        or None (the base class: the step then calls :meth:`step`).  Validates the
        hyper-parameters first (they may have been set since construction), raising as
        :meth:`step` would."""
        self._checked_hyperparameters()
        return None

    def hyperparameters(self):
        """The current hyper-parameters as a dict (name -> value), in constructor order."""
        return {name: getattr(self, name) for name in self._hyper}

    def _checked_hyperparameters(self):
        """``_validate`` of the current hyper-parameters, raising as it does.

        Every step calls this, so the validated dict is cached, keyed on the identity of every
        hyper-parameter object (the cache holds them, so an identity is never that of another
        object): rebinding any attribute (a schedule, an invalid value) validates again.  Only
        immutable values are cached (numbers, strings, tuples of them), so a list mutated in
        place is validated on every call.  ``_validate`` must depend on the values alone.
        """
        values = self._hyper_values(self)
        cached = self.__dict__.get("_validated")
        if cached is not None and all(map(is_, values, cached[0])):
            return cached[1]
        hp = self._validate(**dict(zip(self._hyper, values)))
        if _immutable(values):
            self._validated = (values, hp)
        return hp

    def step(self, params, grads=None):
        """Update every parameter IN PLACE from its gradient (one fused kernel pass each).

        Parameters
        ----------
        params : dict of str -> ndarray, or list / dict of autograd tensors
            C-contiguous, writeable float32/float64 arrays; updated in place.  Leaf
            ``fastbp.autograd.Tensor`` objects (anything with an ndarray ``data`` and a ``grad``)
            are updated in place from their ``.grad``; those whose grad is None are skipped, as
            in PyTorch.  A list's state is keyed by position.
        grads : dict of str -> ndarray, optional
            The same keys; each gradient has its parameter's shape and dtype (read-only or
            non-contiguous gradients are fine: they are copied to a contiguous buffer).  Omit
            it for tensors.

        Raises
        ------
        TypeError
            For non-mapping arguments, non-ndarray or non-float parameters, a gradient of
            another dtype, or a non-numeric hyper-parameter.
        ValueError
            For mismatched keys or shapes, a non-contiguous or read-only parameter, a
            hyper-parameter out of range (e.g. set on the instance since construction), or
            existing state whose shape or dtype no longer matches its parameter (call
            :meth:`reset` after changing the parameters).

        Notes
        -----
        Everything -- hyper-parameters, every parameter and gradient, existing state -- is
        checked before the first parameter is touched, so an error leaves all of it unchanged.
        """
        hp = self._checked_hyperparameters()
        if grads is None:
            params, grads = _tensor_arrays(params)
        work = self._checked(params, grads)
        needed = self._arrays_needed(hp)
        prepare, update = self.prepare_state, self._update
        hp_1d = _without_bias_decay(hp)
        for name, p, g in work:
            state = prepare(name, p, needed)
            update(_flat(p), _flat(g), state, hp if p.ndim > 1 else hp_1d, threads_for(p.size))

    def prepare_state(self, name, param, keys):
        """``state[name]`` with its arrays `keys` created (zeros like `param`) where missing,
        and its step count where the optimizer counts steps: what :meth:`step` does before
        updating (a fused step that updates the parameter itself calls it too)."""
        state = self.state.get(name)
        if state is None:
            state = self.state[name] = {}
        for key in keys:
            if key not in state:
                state[key] = np.zeros(param.shape, param.dtype)
        if self._counts_steps:
            state.setdefault("step", 0)
        return state

    def _checked(self, params, grads):
        """[(name, param, contiguous grad)] after checking everything; raises before any write."""
        for arg, value in (("params", params), ("grads", grads)):
            if not isinstance(value, Mapping):
                raise TypeError(f"{arg} must be a dict of name -> ndarray, got "
                                f"{type(value).__name__}")
        if params.keys() != grads.keys():  # the lists only when they may differ
            missing = [k for k in params if k not in grads]
            extra = [k for k in grads if k not in params]
            if missing or extra:
                raise ValueError(f"grads must have the same keys as params: missing {missing}, "
                                 f"unexpected {extra}")
        work = []
        states = self.state
        for name, p in params.items():
            g = grads[name]
            if _fits(p, g, states.get(name)):
                work.append((name, p, g))
                continue
            val.float_array(p, f"params[{name!r}]")
            if not p.flags.c_contiguous:
                raise ValueError(f"params[{name!r}] must be C-contiguous (it is updated in place "
                                 "through a flat view)")
            if not p.flags.writeable:
                raise ValueError(f"params[{name!r}] is read-only")
            g = _gradient(p, grads[name], f"params[{name!r}]", f"grads[{name!r}]")
            self._check_state(name, p)
            work.append((name, p, g))
        return work

    def _check_state(self, name, p):
        """Raise unless every state array of parameter `name` still fits `p` and is writeable."""
        for key, s in self.state.get(name, {}).items():
            if not isinstance(s, np.ndarray):
                continue
            if s.shape != p.shape or s.dtype != p.dtype:
                raise ValueError(
                    f"state[{name!r}][{key!r}] is {s.dtype} {s.shape}, but params[{name!r}] "
                    f"is {p.dtype} {p.shape}; call reset() after changing the parameters"
                )
            if not (s.flags.c_contiguous and s.flags.writeable):
                raise ValueError(f"state[{name!r}][{key!r}] must be a C-contiguous, "
                                 "writeable array (it is updated in place; it is read-only "
                                 "or not contiguous)")

    def zero_state(self):
        """Zero every state array in place and every step count (the arrays are kept).

        The next step then behaves as the first one did; use :meth:`reset` instead when the
        parameters change shape or dtype.
        """
        for state in self.state.values():
            for key, value in state.items():
                if isinstance(value, np.ndarray):
                    value.fill(0)
                else:
                    state[key] = 0

    def reset(self):
        """Forget all per-parameter state; it is created afresh on the next :meth:`step`."""
        self.state.clear()

    def state_dict(self):
        """A snapshot of the optimizer: plain dicts of numbers and (copied) arrays.

        Returns
        -------
        dict
            ``{"hyperparameters": {name: value}, "state": {param name: {key: ndarray or int}}}``.
            The arrays are copies: later steps do not change a saved state_dict.
        """
        return {
            "hyperparameters": self.hyperparameters(),
            "state": {
                name: {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in s.items()}
                for name, s in self.state.items()
            },
        }

    def load_state_dict(self, state_dict):
        """Restore hyper-parameters and state from :meth:`state_dict` output (arrays are copied).

        Parameters
        ----------
        state_dict : dict
            ``{"hyperparameters": {...}, "state": {...}}`` as :meth:`state_dict` returns, for an
            optimizer of the same class.  A state_dict saved before ``decay_biases`` existed
            loads as ``decay_biases=True`` (what that optimizer did).

        Raises
        ------
        TypeError, ValueError
            For a malformed dict, hyper-parameters that are missing, unknown or out of range,
            or state entries with unknown keys, non-float arrays, arrays of differing shapes
            or dtypes, or a bad step count.  Nothing is changed then.
        """
        if not isinstance(state_dict, Mapping) or set(state_dict) != {"hyperparameters", "state"}:
            raise ValueError("state_dict must be a dict with exactly the keys 'hyperparameters' "
                             "and 'state'")
        hyper, states = state_dict["hyperparameters"], state_dict["state"]
        if isinstance(hyper, Mapping):  # saved before a hyper-parameter existed
            hyper = {**{k: v for k, v in self._added_hyper.items() if k in self._hyper}, **hyper}
        if not isinstance(hyper, Mapping) or set(hyper) != set(self._hyper):
            got = list(hyper) if isinstance(hyper, Mapping) else type(hyper).__name__
            raise ValueError(f"state_dict['hyperparameters'] must have exactly the keys "
                             f"{list(self._hyper)}, got {got}")
        hp = self._validate(**hyper)
        if not isinstance(states, Mapping):
            raise TypeError(f"state_dict['state'] must be a dict, got {type(states).__name__}")
        loaded = {name: self._loaded_entry(name, entry) for name, entry in states.items()}
        for name, value in hp.items():
            setattr(self, name, value)
        self.state = loaded

    def _loaded_entry(self, name, entry):
        where = f"state_dict['state'][{name!r}]"
        # exactly what step() creates: every array (and the step count), or nothing at all
        complete = set(self._arrays) | ({"step"} if self._counts_steps else set())
        if not isinstance(entry, Mapping) or set(entry) not in (complete, set()):
            raise ValueError(f"{where} must be a dict with the keys {sorted(complete)}, got "
                             f"{sorted(entry) if isinstance(entry, Mapping) else entry!r}")
        out, layout = {}, None
        for key, value in entry.items():
            if key == "step":
                out[key] = val.integer(value, f"{where}['step']", 0)
                continue
            val.float_array(value, f"{where}[{key!r}]")
            if layout is not None and (value.shape, value.dtype) != layout:
                raise ValueError(f"{where}: the state arrays differ in shape or dtype")
            layout = (value.shape, value.dtype)
            out[key] = np.array(value, order="C", copy=True)
        return out

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov and weight decay (PyTorch's
    ``torch.optim.SGD`` with dampening 0).

    ``g = dw + weight_decay * w;  b = momentum * b + g;
    w -= lr * (g + momentum * b if nesterov else b)``, and plain ``w -= lr * g`` (no state) when
    momentum is 0.

    Parameters
    ----------
    lr : float
        Learning rate, finite and >= 0.
    momentum : float, default 0.0
        In [0, 1).
    weight_decay : float, default 0.0
        L2 penalty coefficient, finite and >= 0 (added to the gradient).
    nesterov : bool, default False
        Nesterov momentum; requires momentum > 0.
    decay_biases : bool, default True
        False: weight decay applies only to parameters with two or more dimensions (weights),
        not to 1-D ones (biases, normalization scales and shifts).

    Attributes
    ----------
    lr, momentum, weight_decay, nesterov, decay_biases
        May be changed between steps (a schedule); :meth:`step` re-validates them.
    state : dict
        ``{name: {"momentum_buffer": ndarray}}`` once momentum is used.

    Raises
    ------
    TypeError, ValueError
        For hyper-parameters of the wrong type or out of range.

    Examples
    --------
    >>> import numpy as np
    >>> params = {"W": np.ones((2, 2))}
    >>> opt = SGD(lr=0.1, momentum=0.9)
    >>> opt.step(params, {"W": np.full((2, 2), 0.5)})
    >>> float(params["W"][0, 0])
    0.95
    """

    _hyper = ("lr", "momentum", "weight_decay", "nesterov", "decay_biases")
    _arrays = ("momentum_buffer",)

    def __init__(self, lr, momentum=0.0, weight_decay=0.0, nesterov=False, decay_biases=True):
        super().__init__(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                         decay_biases=decay_biases)

    @classmethod
    def _validate(cls, lr, momentum, weight_decay, nesterov, decay_biases):
        hp = {
            "lr": val.real(lr, "lr", 0),
            "momentum": val.fraction(momentum, "momentum"),
            "nesterov": val.flag(nesterov, "nesterov"),
            **_validate_decay(weight_decay, decay_biases),
        }
        if hp["nesterov"] and hp["momentum"] == 0:
            raise ValueError("nesterov requires momentum > 0")
        return hp

    def _arrays_needed(self, hp):
        return self._arrays if hp["momentum"] else ()

    def gemm_fold(self, name, param):
        """Plain SGD: ``W := -lr * grad + (1 - lr * weight_decay) * W`` in the GEMM (the weight
        decay of `param`: none for a bias with ``decay_biases=False``).  Heavy-ball momentum
        (no Nesterov, no weight decay): ``b := grad + momentum * b`` in the GEMM, then
        ``W -= lr * b``.  Otherwise None (see :meth:`Optimizer.gemm_fold`)."""
        hp = self._checked_hyperparameters()
        if hp["nesterov"]:
            return None
        if hp["momentum"] == 0:
            decay = hp["weight_decay"] if param.ndim > 1 else _bias_decay(hp)
            return GemmFold(param, -hp["lr"], 1.0 - hp["lr"] * decay, None)
        if hp["weight_decay"] != 0:
            return None
        self._check_state(name, param)  # as step() does: stale state is an error, not reset
        state = self.state.setdefault(name, {})
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = np.zeros(param.shape, param.dtype)
        lr = hp["lr"]

        def finish():
            kernels().sgd_step(_flat(param), _flat(buf), lr, 0.0, threads_for(param.size))

        return GemmFold(buf, 1.0, hp["momentum"], finish)

    def fused_update(self):
        """Plain SGD (with or without weight decay) and heavy-ball SGD (no Nesterov, no weight
        decay) run inside the compiled step; a subclass that changes the update (overrides
        ``_update``) does not."""
        hp = self._checked_hyperparameters()
        mu = hp["momentum"]
        if (mu != 0 and hp["weight_decay"] != 0) or hp["nesterov"] or not _plain(self, SGD):
            return None
        return FusedUpdate("sgd", hp["lr"], (mu, hp["weight_decay"], _bias_decay(hp)),
                           ("momentum_buffer",) if mu else ())

    def _update(self, w, g, state, hp, n_threads):
        if hp["momentum"] == 0:
            kernels().sgd_step(w, g, hp["lr"], hp["weight_decay"], n_threads)
        else:
            kernels().momentum_step(w, g, _flat(state["momentum_buffer"]), hp["lr"],
                                    hp["momentum"], hp["weight_decay"], hp["nesterov"],
                                    n_threads)


_F32, _F64 = val.FLOAT_DTYPES


def _fits(p, g, state):
    """True when parameter `p`, its gradient `g` and its `state` pass every check of
    :meth:`Optimizer._checked` as they are (no copy needed): the common case, in a few attribute
    reads.  False sends them through the full checks, which raise or copy."""
    if type(p) is not np.ndarray or type(g) is not np.ndarray:
        return False
    dtype, shape = p.dtype, p.shape
    if not ((dtype is _F32 or dtype is _F64) and g.dtype is dtype and g.shape == shape
            and p.flags.carray and g.flags.c_contiguous):
        return False
    if state:
        for s in state.values():
            if type(s) is np.ndarray:
                if not (s.dtype is dtype and s.shape == shape and s.flags.carray):
                    return False
            elif isinstance(s, np.ndarray):
                return False
    return True


_IMMUTABLE = frozenset((bool, int, float, str, type(None)))


def _immutable(values):
    """True when every value (recursively through tuples) can never change in place."""
    for v in values:
        kind = type(v)
        if kind is tuple:
            if not _immutable(v):
                return False
        elif kind not in _IMMUTABLE and not isinstance(v, (np.number, np.bool_)):
            return False
    return True


def _plain(optimizer, cls):
    """True unless a subclass of `cls` changes how the update is computed."""
    kind = type(optimizer)
    return kind._update is cls._update and kind.step is Optimizer.step


class Adam(Optimizer):
    """Adam with L2 weight decay (PyTorch's ``torch.optim.Adam``, amsgrad off; not AdamW).

    ``g = dw + weight_decay * w;  t += 1;  m = b1 * m + (1 - b1) * g;  v = b2 * v + (1 - b2) * g**2;
    w -= lr * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)``, with t counted per
    parameter.

    Parameters
    ----------
    lr : float, default 1e-3
        Learning rate, finite and >= 0.
    betas : (float, float), default (0.9, 0.999)
        Decay rates of the first and second moment estimates, each in [0, 1).
    eps : float, default 1e-8
        Added to the bias-corrected ``sqrt(v)`` (outside the square root); finite and > 0.
    weight_decay : float, default 0.0
        L2 penalty coefficient, finite and >= 0.
    decay_biases : bool, default True
        False: weight decay applies only to parameters with two or more dimensions (weights),
        not to 1-D ones (biases, normalization scales and shifts).

    Attributes
    ----------
    lr, betas, eps, weight_decay, decay_biases
        May be changed between steps; :meth:`step` re-validates them.
    state : dict
        ``{name: {"exp_avg": m, "exp_avg_sq": v, "step": t}}`` (PyTorch's names).

    Raises
    ------
    TypeError, ValueError
        For hyper-parameters of the wrong type or out of range.
    """

    _hyper = ("lr", "betas", "eps", "weight_decay", "decay_biases")
    _arrays = ("exp_avg", "exp_avg_sq")
    _counts_steps = True

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decay_biases=True):
        super().__init__(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         decay_biases=decay_biases)

    @classmethod
    def _validate(cls, lr, betas, eps, weight_decay, decay_biases):
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        return {
            "lr": val.real(lr, "lr", 0),
            "betas": (val.fraction(betas[0], "betas[0]"), val.fraction(betas[1], "betas[1]")),
            "eps": val.real(eps, "eps", 0, strict=True),
            **_validate_decay(weight_decay, decay_biases),
        }

    def _update(self, w, g, state, hp, n_threads):
        t = state["step"] + 1
        beta1, beta2 = hp["betas"]
        kernels().adam_step(w, g, _flat(state["exp_avg"]), _flat(state["exp_avg_sq"]), hp["lr"],
                            beta1, beta2, hp["eps"], t, hp["weight_decay"], n_threads)
        state["step"] = t

    def fused_update(self):
        """Adam runs inside the compiled step (the same kernel loop as :meth:`step`)."""
        hp = self._checked_hyperparameters()
        if not _plain(self, Adam):
            return None
        return FusedUpdate("adam", hp["lr"], (*hp["betas"], hp["eps"], hp["weight_decay"],
                                              _bias_decay(hp)), self._arrays, True)


class RMSProp(Optimizer):
    """RMSProp with L2 weight decay (PyTorch's ``torch.optim.RMSprop`` without momentum and
    centering).

    ``g = dw + weight_decay * w;  s = alpha * s + (1 - alpha) * g**2;
    w -= lr * g / (sqrt(s) + eps)``.

    Parameters
    ----------
    lr : float, default 1e-2
        Learning rate, finite and >= 0.
    alpha : float, default 0.99
        Smoothing constant of the squared-gradient average, in [0, 1) (the course's
        ``decay_rate``).
    eps : float, default 1e-8
        Added to ``sqrt(s)``; finite and > 0.
    weight_decay : float, default 0.0
        L2 penalty coefficient, finite and >= 0.
    decay_biases : bool, default True
        False: weight decay applies only to parameters with two or more dimensions (weights),
        not to 1-D ones (biases, normalization scales and shifts).

    Attributes
    ----------
    lr, alpha, eps, weight_decay, decay_biases
        May be changed between steps; :meth:`step` re-validates them.
    state : dict
        ``{name: {"square_avg": s}}`` (PyTorch's name).

    Raises
    ------
    TypeError, ValueError
        For hyper-parameters of the wrong type or out of range.
    """

    _hyper = ("lr", "alpha", "eps", "weight_decay", "decay_biases")
    _arrays = ("square_avg",)

    def __init__(self, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, decay_biases=True):
        super().__init__(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         decay_biases=decay_biases)

    @classmethod
    def _validate(cls, lr, alpha, eps, weight_decay, decay_biases):
        return {
            "lr": val.real(lr, "lr", 0),
            "alpha": val.fraction(alpha, "alpha"),
            "eps": val.real(eps, "eps", 0, strict=True),
            **_validate_decay(weight_decay, decay_biases),
        }

    def _update(self, w, g, state, hp, n_threads):
        kernels().rmsprop_step(w, g, _flat(state["square_avg"]), hp["lr"], hp["alpha"],
                               hp["eps"], hp["weight_decay"], n_threads)

    def fused_update(self):
        """RMSProp runs inside the compiled step (the same kernel loop as :meth:`step`)."""
        hp = self._checked_hyperparameters()
        if not _plain(self, RMSProp):
            return None
        return FusedUpdate("rmsprop", hp["lr"], (hp["alpha"], hp["eps"], hp["weight_decay"],
                                                 _bias_decay(hp)), self._arrays)
