"""fastbp.nn: layer classes, losses and containers for training MLPs with reused buffers.

Design
------
* A layer's ``forward(x)`` keeps what its ``backward(dout)`` needs; ``backward`` returns dL/dinput
  and fills ``layer.grads`` (same keys as ``layer.params``: ``"W"``, ``"b"``).
* Buffers (outputs, input gradients) are allocated on the first call with a given batch size and
  reused afterwards, so a steady-state training loop allocates nothing.  The arrays returned by
  ``forward`` / ``backward`` are those buffers: valid until the next call of the same layer
  (copy them to keep them).  ``predict`` / ``predict_proba`` / ``evaluate`` return fresh arrays.
* ``Sequential.train_step`` runs forward, loss, backward and the optimizer update.  When the
  network is a chain of ``Linear`` layers each optionally followed by one norm and one
  activation, it uses the fused kernels (fastbp._kernels._fused): bias + activation in the GEMM
  epilogue (the norm's kernels between them when there is one), the activation derivative fused
  with the bias-gradient reduction, and the optimizer update folded into the weight-gradient
  GEMM where the optimizer allows it (``Optimizer.gemm_fold``).  The plan comes from
  fastbp._planner on every step, from what each layer declares (``Linear.fused_linear``,
  ``_Activation.fused_activation``, read from its spec-table row and its current parameter,
  ``BatchNorm1d.fused_norm`` / ``LayerNorm.fused_norm``, read from its mode, scalars and
  arrays), never from class names.  The unfused path (``forward``,
  ``backward``, ``optimizer.step``) is the reference it is tested against.
* Inference (``inference_forward``, used by ``predict``, ``predict_proba``, ``evaluate`` and
  ``fastbp.sklearn``) runs the same fusion plan without a backward: one GEMM per ``Linear``
  with the bias and activation in its epilogue, or the norm between them
  (fastbp._planner.fused_forward), keeping
  nothing for backward; anything the plan does not cover runs ``forward`` layer by layer.
* Every input is validated before any kernel runs and before any parameter changes, so a failed
  ``train_step`` leaves the parameters as they were.
* Parameter names in a ``Sequential`` are ``"<index>.<name>"`` (``"0.W"``, ``"0.b"``, ...).
"""

import functools
import math
from types import MappingProxyType

import numpy as np

from . import _specs
from . import _validation as val
from ._config import threads_for
from ._planner import FusedNorm, StepCache, fused_forward, fused_train_step, fusion_plan
from ._npz import read_arrays, source_name
from .backend import kernels

__all__ = [
    "Module",
    "Linear",
    "ReLU",
    "LeakyReLU",
    "Sigmoid",
    "Tanh",
    "ELU",
    "GELU",
    "SoftmaxCrossEntropy",
    "MulticlassHinge",
    "MSELoss",
    "Sequential",
    "MLP",
    "ACTIVATIONS",
    "LOSSES",
    "BatchNorm1d",
    "LayerNorm",
    "NORMS",
]

class _Buffers:
    """Named arrays reused while their shape stays the same (kernels never allocate)."""

    __slots__ = ("_arrays",)

    def __init__(self):
        self._arrays = {}

    def get(self, name, shape, dtype):
        a = self._arrays.get(name)
        if a is None or a.shape != shape or a.dtype != dtype:
            a = self._arrays[name] = np.empty(shape, dtype)
        return a


class Module:
    """Base class: parameters, gradients, state dicts and ``.npz`` files.

    Subclasses set ``self.params`` and ``self.grads`` (dicts of arrays with the same keys) and
    implement ``forward`` and ``backward``.
    """

    params = MappingProxyType({})  # read-only defaults: a subclass sets its own dicts
    grads = MappingProxyType({})
    buffers = MappingProxyType({})  # state that is saved but not trained (running statistics)
    training = True  # .train() / .eval() set it; layers that behave differently read it

    def train(self, mode=True):
        """Set training mode (``mode=True``) or inference mode; returns self."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Inference mode (``train(False)``): batch norm uses its running statistics."""
        return self.train(False)

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dout):
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)

    def parameters(self):
        """The parameter arrays (live: updating them in place updates the model)."""
        return list(self.params.values())

    def zero_grad(self):
        """Set every gradient to zero, in place."""
        for g in self.grads.values():
            g.fill(0)

    def state_dict(self):
        """Copies of the parameters and buffers (running statistics), by name."""
        return {k: v.copy() for k, v in {**self.params, **self.buffers}.items()}

    def load_state_dict(self, state):
        """Copy `state` into the parameters, in place.

        Every array is checked (names, shapes, a float dtype) before any parameter changes.
        Buffers (running statistics) are loaded with the parameters.

        Raises
        ------
        ValueError
            If names are missing or unexpected, or a shape differs.
        TypeError
            If an array is not of a real floating dtype.
        """
        params = {**self.params, **self.buffers}
        missing = sorted(set(params) - set(state))
        extra = sorted(set(state) - set(params))
        if missing or extra:
            raise ValueError(
                f"state does not match the model: missing {missing or 'nothing'}, "
                f"unexpected {extra or 'nothing'}"
            )
        arrays = {}
        for name, p in params.items():
            a = np.asarray(state[name])
            if a.shape != p.shape:
                raise ValueError(f"state[{name!r}] has shape {a.shape}, the model's is {p.shape}")
            if a.dtype.kind != "f":
                raise TypeError(f"state[{name!r}] has dtype {a.dtype}, expected floating point")
            arrays[name] = a
        for name, a in arrays.items():
            np.copyto(params[name], a, casting="unsafe")

    def save(self, path):
        """Write the parameters to an ``.npz`` file (no pickle; a bit-exact round trip)."""
        np.savez(path, **self.state_dict())

    def load(self, path):
        """Load parameters written by :meth:`save` (``allow_pickle=False``); returns self.

        Raises
        ------
        FileNotFoundError
            If `path` does not exist.
        ValueError
            If the file is not a readable ``.npz`` of plain arrays (truncated, corrupted, another
            format, pickled objects) or its arrays do not match the model (names, shapes, a
            non-float dtype).  The message starts with the file's name; the parameters are
            unchanged.
        """
        state = read_arrays(path)
        try:
            self.load_state_dict(state)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{source_name(path)}: {e}") from None
        return self


def _rng(rng):
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


_INITS = {
    "he": lambda fan_in, fan_out: math.sqrt(2.0 / fan_in),
    "xavier": lambda fan_in, fan_out: math.sqrt(2.0 / (fan_in + fan_out)),
    "normal": lambda fan_in, fan_out: 0.01,
}


class Linear(Module):
    """Fully-connected layer ``y = x @ W + b``.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool, default True
    dtype : {np.float32, np.float64}, default np.float32
    rng : None, int or numpy.random.Generator
        Seed or generator for the initial weights.
    init : {"he", "xavier", "normal"}
        Weights ~ N(0, std²) with std sqrt(2/fan_in) (He), sqrt(2/(fan_in+fan_out)) (Glorot),
        or 0.01; biases start at zero.

    Attributes
    ----------
    params, grads : dict
        ``"W"`` (in_features, out_features) and, with a bias, ``"b"`` (out_features,).
    """

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, rng=None,
                 init="he"):
        self.in_features = val.integer(in_features, "in_features", 1)
        self.out_features = val.integer(out_features, "out_features", 1)
        self.dtype = val.float_dtype(dtype)
        if init not in _INITS:
            raise ValueError(f"init must be one of {sorted(_INITS)}, got {init!r}")
        std = _INITS[init](self.in_features, self.out_features)
        w = _rng(rng).standard_normal((self.in_features, self.out_features)) * std
        self.params = {"W": w.astype(self.dtype)}
        if bias:
            self.params["b"] = np.zeros(self.out_features, self.dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self._buf = _Buffers()
        self._x = None

    def __repr__(self):
        return (f"Linear({self.in_features}, {self.out_features}, "
                f"bias={'b' in self.params}, dtype={self.dtype.name})")

    def _input(self, x):
        a = val.as_array(x, "x")
        if a.ndim != 2 or a.shape[1] != self.in_features:
            raise ValueError(
                f"{self!r} expects input of shape (N, {self.in_features}), got {a.shape}"
            )
        return val.as_float(a, "x", self.dtype)

    def forward(self, x):
        """``x @ W + b`` for x of shape (N, in_features); returns a reused buffer."""
        x = self._input(x)
        n = x.shape[0]
        out = self._buf.get("out", (n, self.out_features), self.dtype)
        b = self._param("b") if "b" in self.params else None
        kernels().linear_forward(x, self._param("W"), b, out, threads_for(out.size))
        self._x = x
        return out

    def backward(self, dout):
        """Fill ``grads`` with dL/dW, dL/db and return dL/dx (a reused buffer)."""
        x = self._saved_input()
        dout = val.as_float(dout, "dout", self.dtype)
        val.require_shape(dout, "dout", (x.shape[0], self.out_features))
        dx = self._buf.get("dx", x.shape, self.dtype)
        kernels().linear_backward(dout, x, self._param("W"), dx, self.grads["W"],
                                  self.grads.get("b"), 1.0, 0.0, threads_for(dout.size))
        return dx

    def _param(self, name):
        """``params[name]``, checked: a rebound parameter must still fit the kernels."""
        p = self.params[name]
        shape = (self.in_features, self.out_features) if name == "W" else (self.out_features,)
        if not isinstance(p, np.ndarray) or p.dtype != self.dtype:
            got = p.dtype if isinstance(p, np.ndarray) else type(p).__name__
            raise TypeError(f"{self!r}: params[{name!r}] must be a {self.dtype} array (the "
                            f"layer's dtype), got {got}")
        if p.shape != shape or not p.flags.c_contiguous:
            raise ValueError(f"{self!r}: params[{name!r}] must be a C-contiguous array of shape "
                             f"{shape}, got shape {p.shape} "
                             f"{'C-contiguous' if p.flags.c_contiguous else 'non-contiguous'} "
                             "(rebind it with np.ascontiguousarray)")
        return p

    def _saved_input(self):
        if self._x is None:
            raise RuntimeError(f"{self!r}: backward called before forward")
        return self._x

    @property
    def fused_linear(self):
        """True: the fused step may run this layer as its GEMM (False for a subclass that
        overrides forward or backward, whose math the fused kernels would not know)."""
        cls = type(self)
        return cls.forward is Linear.forward and cls.backward is Linear.backward


class _Activation(Module):
    """Elementwise activation described by its row of the spec table (``spec``,
    fastbp._specs.ACTIVATIONS): the kernels it calls, what backward reads, how it fuses."""

    spec = None

    def __init__(self):
        self.params, self.grads = {}, {}
        self._buf = _Buffers()
        self._saved = None

    @property
    def kernel(self):
        """The kernels' name: ``<kernel>_forward`` / ``<kernel>_backward``."""
        return self.spec.name

    @property
    def saves_output(self):
        """True when backward reads the forward output (sigmoid, tanh), else the input."""
        return self.spec.backward_reads == "output"

    def _parameter(self):
        """The current value of the spec's parameter, checked (it may be set between steps)."""
        return None

    def _scalars(self):
        return self.spec.kernel_scalars(self._parameter())

    @property
    def fused_activation(self):
        """How the fused kernels run this layer (fastbp._specs.FusedActivation), read from its
        CURRENT parameter; None when they cannot (a subclass overriding forward or backward, or
        a parameter value whose backward cannot be read from the output)."""
        cls = type(self)
        if cls.forward is not _Activation.forward or cls.backward is not _Activation.backward:
            return None
        return self.spec.fused(self._parameter())

    def __repr__(self):
        return f"{type(self).__name__}()"

    def forward(self, x):
        a = val.as_array(x, "x")
        x = val.as_float(a, "x", val.compute_dtype(a))
        out = self._buf.get("out", x.shape, x.dtype)
        getattr(kernels(), self.kernel + "_forward")(
            x.reshape(-1), out.reshape(-1), *self._scalars(), threads_for(x.size))
        self._saved = out if self.saves_output else x
        return out

    def backward(self, dout):
        saved = self._saved
        if saved is None:
            raise RuntimeError(f"{self!r}: backward called before forward")
        dout = val.as_float(dout, "dout", saved.dtype)
        val.require_shape(dout, "dout", saved.shape)
        dx = self._buf.get("dx", saved.shape, saved.dtype)
        getattr(kernels(), self.kernel + "_backward")(
            dout.reshape(-1), saved.reshape(-1), dx.reshape(-1), *self._scalars(),
            threads_for(dx.size))
        return dx


class ReLU(_Activation):
    """``max(x, 0)``; the derivative at 0 is 0."""

    spec = _specs.ACTIVATIONS["relu"]


class _AlphaActivation(_Activation):
    """An activation with one slope parameter ``alpha`` passed to its kernels."""

    def __init__(self, alpha):
        super().__init__()
        self.alpha = val.finite_real(alpha, "alpha")

    def _parameter(self):
        return val.finite_real(self.alpha, "alpha")

    def __repr__(self):
        return f"{type(self).__name__}(alpha={self.alpha})"


class LeakyReLU(_AlphaActivation):
    """``x if x > 0 else alpha * x``."""

    spec = _specs.ACTIVATIONS["leaky_relu"]

    def __init__(self, alpha=0.01):
        super().__init__(alpha)


class Sigmoid(_Activation):
    """Logistic sigmoid (backward reads the saved output)."""

    spec = _specs.ACTIVATIONS["sigmoid"]


class Tanh(_Activation):
    """tanh (backward reads the saved output)."""

    spec = _specs.ACTIVATIONS["tanh"]


class ELU(_AlphaActivation):
    """``x if x > 0 else alpha * (exp(x) - 1)``."""

    spec = _specs.ACTIVATIONS["elu"]

    def __init__(self, alpha=1.0):
        super().__init__(alpha)


class GELU(_Activation):
    """GELU, exact (``approximate="none"``) or PyTorch's tanh approximation."""

    spec = _specs.ACTIVATIONS["gelu"]

    def __init__(self, approximate="none"):
        super().__init__()
        self.approximate = approximate
        self._parameter()

    def _parameter(self):
        return self.spec.checked_form(self.approximate)

    def __repr__(self):
        return f"GELU(approximate={self.approximate!r})"


#: activation name -> class (the CLI and MLP look names up here), one per spec-table row
ACTIVATIONS = {name: globals()[row.nn_class] for name, row in _specs.ACTIVATIONS.items()}


# --------------------------------------------------------------------------------------- losses


class _Loss:
    """A loss: ``forward(pred, target) -> float`` (mean over the batch), ``backward() -> dpred``.

    ``spec`` is its row of the spec table (fastbp._specs.LOSSES); ``kernel`` names its fused
    loss + gradient kernel.

    The gradient is computed in the same fused pass as the loss and kept in a reused buffer.

    Parameters
    ----------
    check_finite : bool, default False
        Raise ValueError when the predictions hold NaN or infinity (before anything else runs).
    """

    spec = None

    @property
    def kernel(self):
        """The fused loss + gradient kernel's name."""
        return self.spec.kernel

    def __init__(self, check_finite=False):
        self.check_finite = bool(check_finite)
        self._buf = _Buffers()
        self._grad = None

    def __repr__(self):
        return f"{type(self).__name__}()"

    def _scores(self, scores):
        s = val.as_array(scores, "scores")
        if s.ndim != 2:
            raise ValueError(f"scores must be 2-D (N, C), got shape {s.shape}")
        if s.shape[0] == 0:
            raise ValueError("scores is an empty batch (N = 0): the mean loss is undefined")
        s = val.as_float(s, "scores", val.compute_dtype(s))
        if self.check_finite and not np.isfinite(s).all():
            raise ValueError(f"{self!r}: scores contain NaN or infinity")
        return s

    def backward(self):
        """dL/dpred from the last forward (a reused buffer)."""
        if self._grad is None:
            raise RuntimeError(f"{self!r}: backward called before forward")
        return self._grad

    def __call__(self, pred, target):
        return self.forward(pred, target)


class _ClassificationLoss(_Loss):

    def forward(self, scores, y):
        """Mean loss over the batch for scores (N, C) and integer labels y (N,) in [0, C)."""
        s = self._scores(scores)
        n, c = s.shape
        labels = val.as_labels(y, "y", n, c)
        grad = self._buf.get("grad", s.shape, s.dtype)
        rows = self._buf.get("rows", (n,), np.float64)
        loss = getattr(kernels(), self.kernel)(s, labels, grad, rows, 1.0 / n, threads_for(s.size))
        self._grad = grad
        return float(loss)


class SoftmaxCrossEntropy(_ClassificationLoss):
    """Softmax cross-entropy on logits (PyTorch's ``CrossEntropyLoss``), mean over the batch."""

    spec = _specs.LOSSES["softmax"]


class MulticlassHinge(_ClassificationLoss):
    """Multiclass SVM hinge loss with margin 1 (CS231n ``svm_loss``), mean over the batch."""

    spec = _specs.LOSSES["svm"]


class MSELoss(_Loss):
    """Mean squared error over all elements (PyTorch's ``MSELoss``)."""

    spec = _specs.LOSSES["mse"]

    def forward(self, pred, target):
        """``mean((pred - target)**2)`` for arrays of equal shape (N, D)."""
        p = self._scores(pred)
        t = val.as_array(target, "target")
        if t.shape != p.shape:
            raise ValueError(f"target must have the shape of pred {p.shape}, got {t.shape}")
        t = val.as_float(t, "target", p.dtype)
        grad = self._buf.get("grad", p.shape, p.dtype)
        rows = self._buf.get("rows", (p.shape[0],), np.float64)
        loss = getattr(kernels(), self.kernel)(p, t, grad, rows, 1.0 / p.size, threads_for(p.size))
        self._grad = grad
        return float(loss)


#: loss name -> class, one per spec-table row
LOSSES = {name: globals()[row.nn_class] for name, row in _specs.LOSSES.items()}


# ----------------------------------------------------------------------------------- containers


def _modules(module):
    """`module` and everything nested in it (the layers of Sequentials), depth first."""
    yield module
    for layer in getattr(module, "layers", ()):
        yield from _modules(layer)


def _inference_mode(method):
    """Run a Sequential `method` in inference mode (``eval()``: batch norm uses its running
    statistics), then give the container and every layer back the mode it had."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        modes = [(module, module.training) for module in _modules(self)]
        self.eval()
        try:
            return method(self, *args, **kwargs)
        finally:
            for module, mode in modes:
                module.training = mode

    return run


class Sequential(Module):
    """A chain of layers.

    Parameters
    ----------
    *layers : Module
    criterion : loss, optional
        The loss used by :meth:`loss` (the ``params`` / ``loss(X, y)`` protocol that
        ``fastbp.gradcheck.check_model_gradients`` and the course tools use).
    """

    def __init__(self, *layers, criterion=None):
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"layer {i} is a {type(layer).__name__}, not a fastbp.nn.Module")
        self.layers = list(layers)
        self.criterion = criterion
        self._step_cache = StepCache(_Buffers())

    def __repr__(self):
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"{type(self).__name__}(\n  {inner}\n)"

    @property
    def params(self):
        """``{"<index>.<name>": array}``, live views of every layer's parameters."""
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers)
                for k, v in layer.params.items()}

    @property
    def grads(self):
        """``{"<index>.<name>": array}``, the gradient buffers matching :attr:`params`."""
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers)
                for k, v in layer.grads.items()}

    @property
    def buffers(self):
        """``{"<index>.<name>": array}``, every layer's buffers (running statistics)."""
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers)
                for k, v in layer.buffers.items()}

    def train(self, mode=True):
        """Set the mode of this container and of every layer in it; returns self."""
        for layer in self.layers:
            layer.train(mode)
        return super().train(mode)

    @property
    def dtype(self):
        for layer in self.layers:
            if getattr(layer, "dtype", None) is not None:
                return layer.dtype
        return np.dtype(np.float64)

    def forward(self, x):
        """Run every layer in order; returns the last layer's output buffer."""
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dout):
        """Backpropagate `dout` through every layer; fills grads, returns dL/dinput."""
        for layer in reversed(self.layers):
            dout = layer.backward(dout)
        return dout

    def loss(self, X, y=None):
        """Course protocol: scores when y is None, else ``(loss, grads)`` (grads copied)."""
        if y is None:
            return self.forward(X).copy()
        if self.criterion is None:
            raise ValueError("this Sequential has no criterion: pass criterion=... to build it")
        value = self.criterion.forward(self.forward(X), y)
        self.backward(self.criterion.backward())
        return value, {k: g.copy() for k, g in self.grads.items()}

    # ------------------------------------------------------------------ training and inference

    def train_step(self, x, y, loss, optimizer):
        """One step: forward, loss, backward and the optimizer update, in place.

        Parameters
        ----------
        x : array_like (N, in_features)
        y : array_like
            Labels (N,) for classification losses, targets for ``MSELoss``.
        loss : SoftmaxCrossEntropy, MulticlassHinge or MSELoss
        optimizer : fastbp.optim optimizer (``SGD``, ``Adam``, ``RMSProp``)

        Returns
        -------
        float
            The loss before the update.

        Notes
        -----
        Chains of ``Linear`` (+ one norm, + one activation) layers take the fused path (a
        batch norm in inference mode raises RuntimeError there, as its backward does); anything
        else runs forward, backward and ``optimizer.step`` (same result within float
        tolerance).  Inputs are validated before any parameter or running statistic changes.
        """
        if not isinstance(loss, _Loss):
            raise TypeError(f"loss must be a fastbp.nn loss (SoftmaxCrossEntropy, "
                            f"MulticlassHinge, MSELoss), got {type(loss).__name__}")
        if not callable(getattr(optimizer, "step", None)):
            raise TypeError(f"optimizer must be a fastbp.optim optimizer with a step(params, "
                            f"grads) method, got {type(optimizer).__name__}")
        plan = self._fusion_plan()
        if plan is None:
            value = loss.forward(self.forward(x), y)
            self.backward(loss.backward())
            optimizer.step(self.params, self.grads)
            return value
        first = plan.stages[0].linear
        if not (type(x) is np.ndarray and x.dtype == plan.dtype and x.flags.c_contiguous
                and x.ndim == 2 and x.shape[1] == first.in_features):
            x = first._input(x)
        return fused_train_step(plan, self._step_cache, x, y, loss, optimizer)

    def _fusion_plan(self):
        """The fused plan of the CURRENT layers (fastbp._planner.fusion_plan; checked against
        the layers on every step, so an edit of the layers or of their parameters can never
        leave it stale)."""
        return fusion_plan(self.layers, self._step_cache.plan)

    def _batches(self, x, batch_size):
        a = val.as_array(x, "x")
        val.integer(batch_size, "batch_size", 1)
        # an empty x still runs once, so the outputs have their width: (0, C)
        for start in range(0, a.shape[0], batch_size) or [0]:
            yield a[start:start + batch_size]

    @_inference_mode
    def inference_forward(self, x):
        """The outputs for `x` (N, in_features) in inference mode, keeping nothing for backward.

        A chain of ``Linear`` (+ one norm, + one activation) layers -- the plan the training
        step fuses (fastbp._planner.fusion_plan, derived from the CURRENT layers on every call)
        -- runs one GEMM per layer with the bias and activation in its epilogue (the norm's
        kernel between them: batch norm with its running statistics); anything else (user
        layers, negative slopes) runs :meth:`forward` layer by layer.  Both give the same
        outputs within dtype rounding.

        Returns
        -------
        ndarray (N, out_features)
            A reused buffer of the model's dtype: valid until the next call (copy it to keep it).

        Raises
        ------
        ValueError, TypeError
            For input of the wrong shape or a non-numeric dtype (the first layer's messages).
        """
        plan = self._fusion_plan()
        if plan is None:
            return self.forward(x)
        first = plan.stages[0].linear
        if not (type(x) is np.ndarray and x.dtype == plan.dtype and x.flags.c_contiguous
                and x.ndim == 2 and x.shape[1] == first.in_features):
            x = first._input(x)
        return fused_forward(plan, self._step_cache.buffers, x)

    @_inference_mode
    def predict_proba(self, x, batch_size=1024):
        """Softmax probabilities of the outputs, (N, C), computed in batches (fused forward,
        see :meth:`inference_forward`; the softmax written straight into the result)."""
        a = val.as_array(x, "x")
        result, start = None, 0
        for xb in self._batches(a, batch_size):
            z = self.inference_forward(xb)
            if result is None:
                result = np.empty((a.shape[0], z.shape[1]), z.dtype)
            _softmax_rows(z, result[start:start + len(z)])
            start += len(z)
        return result

    @_inference_mode
    def predict(self, x, batch_size=1024):
        """Predicted class (argmax of the outputs) per row, as int64, computed in batches."""
        out = [self.inference_forward(xb).argmax(axis=1) for xb in self._batches(x, batch_size)]
        return np.concatenate(out)

    @_inference_mode
    def evaluate(self, x, y, loss=None, batch_size=1024):
        """``(mean loss, accuracy)`` over (x, y), in batches.

        `loss` defaults to the criterion, else softmax cross-entropy.  Accuracy compares the
        argmax of the outputs with integer labels (NaN for regression targets).
        """
        crit = loss or self.criterion or SoftmaxCrossEntropy()
        val.integer(batch_size, "batch_size", 1)
        a = val.as_array(x, "x")
        t = np.asarray(y)
        if t.shape[0] != a.shape[0]:
            raise ValueError(f"x has {a.shape[0]} rows but y has {t.shape[0]}")
        if a.shape[0] == 0:
            raise ValueError("x is empty: nothing to evaluate")
        total, correct = 0.0, 0
        classify = t.ndim == 1 and t.dtype.kind in "iu"
        for start in range(0, a.shape[0], batch_size):
            xb, yb = a[start:start + batch_size], t[start:start + batch_size]
            out = self.inference_forward(xb)
            total += crit.forward(out, yb) * len(xb)
            if classify:
                correct += int(np.count_nonzero(out.argmax(axis=1) == yb))
        return total / a.shape[0], (correct / a.shape[0] if classify else float("nan"))


def _softmax_rows(z, out):
    """``out := softmax(z)`` row by row (max-shifted; `out` may be `z`): (N, C) arrays of one
    float dtype.  Returns `out`."""
    np.subtract(z, z.max(axis=1, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=1, keepdims=True)
    return out


class MLP(Sequential):
    """A multilayer perceptron: ``Linear -> activation`` for each hidden size, then ``Linear``.

    Parameters
    ----------
    sizes : sequence of int
        ``[in_features, hidden_1, ..., n_outputs]`` (at least two entries).
    activation : str, default "relu"
        A key of :data:`ACTIVATIONS`.
    loss : {"softmax", "svm", "mse"}, default "softmax"
        The criterion used by :meth:`loss` and as the default in ``evaluate``.
    bias, dtype, rng, init :
        As for :class:`Linear` (one generator draws every layer's weights in order).
    **activation_kwargs :
        Passed to the activation (``alpha=``, ``approximate=``).
    """

    def __init__(self, sizes, activation="relu", loss="softmax", bias=True, dtype=np.float32,
                 rng=None, init="he", norm=None, **activation_kwargs):
        if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
            raise TypeError(f"sizes must be a sequence of ints such as [64, 128, 10], got "
                            f"{type(sizes).__name__}")
        sizes = [val.integer(s, f"sizes[{i}]", 1) for i, s in enumerate(sizes)]
        if len(sizes) < 2:
            raise ValueError(f"sizes needs at least input and output sizes, got {sizes}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
        if norm is not None and norm not in NORMS:
            raise ValueError(f"norm must be None or one of {sorted(NORMS)}, got {norm!r}")
        gen = _rng(rng)
        layers = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(Linear(fan_in, fan_out, bias=bias, dtype=dtype, rng=gen, init=init))
            if i < len(sizes) - 2:
                if norm is not None:
                    layers.append(NORMS[norm](fan_out, dtype=dtype))
                layers.append(ACTIVATIONS[activation](**activation_kwargs))
        super().__init__(*layers, criterion=LOSSES[loss]())
        self._activation, self._norm = activation, norm

    def _architecture(self):
        """(sizes, activation name, norm name) read from the CURRENT layers; ValueError when they
        are no longer ``Linear [-> norm] -> activation -> ... -> Linear`` with one kind of
        activation and of norm (``model.layers`` was edited so)."""
        layers, sizes, acts, norms = list(self.layers), [], set(), set()
        norm_names = {cls: name for name, cls in NORMS.items()}
        i, ok = 0, True
        while ok and i < len(layers):
            lin = layers[i]
            if not isinstance(lin, Linear) or (sizes and sizes[-1] != lin.in_features):
                ok = False
                break
            sizes[len(sizes) - 1:] = [lin.in_features, lin.out_features]
            i += 1
            if i == len(layers):
                break
            norms.add(norm_names.get(type(layers[i])) if isinstance(layers[i], _Norm) else None)
            i += isinstance(layers[i], _Norm)
            if i == len(layers) or not isinstance(layers[i], _Activation):
                ok = False
                break
            acts.add(layers[i].spec.name)
            i += 1
        else:
            ok = False  # ended after an activation: no output Linear
        if ok and len(acts) <= 1 and len(norms) <= 1:
            return (sizes, acts.pop() if acts else self._activation,
                    norms.pop() if norms else self._norm)
        raise ValueError(
            f"this MLP's layers were edited into something that is not Linear [-> norm] -> "
            f"activation -> ... -> Linear with one activation and one norm: "
            f"{[type(layer).__name__ for layer in layers]}"
        )

    @property
    def sizes(self):
        """``[in_features, hidden_1, ..., n_outputs]``, read from the current layers."""
        return self._architecture()[0]

    @property
    def activation(self):
        """The hidden activation's name (a key of :data:`ACTIVATIONS`), from the current layers."""
        return self._architecture()[1]

    @property
    def norm(self):
        """The hidden normalization's name (a key of :data:`NORMS`) or None, from the current
        layers."""
        return self._architecture()[2]


# -------------------------------------------------------------------------------- normalization


class _Norm(Module):
    """Shared body of BatchNorm1d and LayerNorm: (N, num_features) input of the layer's dtype,
    ``gamma`` / ``beta`` parameters (or fixed ones / zeros without ``affine``), reused buffers,
    and the float64 statistics the backward kernel reads."""

    def __init__(self, num_features, eps, affine, dtype):
        self.num_features = val.integer(num_features, "num_features", 1)
        self.eps = val.real(eps, "eps", minimum=0)
        self.dtype = val.float_dtype(dtype)
        gamma = np.ones(self.num_features, self.dtype)
        beta = np.zeros(self.num_features, self.dtype)
        self.affine = bool(affine)
        self.params = {"gamma": gamma, "beta": beta} if self.affine else {}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        # without affine, the kernels still read gamma = 1, beta = 0 and write dgamma / dbeta
        self._fixed = {"gamma": gamma, "beta": beta, "dgamma": np.empty_like(gamma),
                       "dbeta": np.empty_like(beta)}
        self._buf = _Buffers()
        self._saved = None

    def _gamma_beta(self):
        p = self.params if self.affine else self._fixed
        return p["gamma"], p["beta"]

    def _param_grads(self):
        if self.affine:
            return self.grads["gamma"], self.grads["beta"]
        return self._fixed["dgamma"], self._fixed["dbeta"]

    def _declare(self, cls, statistics, running=(None, None), momentum=0.0):
        """The FusedNorm of this layer as it is now (see ``fused_norm``); None when `cls`'s
        forward or backward is overridden (the fused kernels would not know that math)."""
        if type(self).forward is not cls.forward or type(self).backward is not cls.backward:
            return None
        return FusedNorm(self, statistics, self.dtype, self.num_features, *self._gamma_beta(),
                         *self._param_grads(), ("gamma", "beta") if self.affine else (),
                         *running, val.real(self.eps, "eps", minimum=0), momentum)

    def _input(self, x):
        a = val.as_array(x, "x")
        if a.ndim != 2 or a.shape[1] != self.num_features:
            raise ValueError(
                f"{self!r} expects input of shape (N, {self.num_features}), got {a.shape}")
        return val.as_float(a, "x", self.dtype)

    def _backward(self, kernel, dout):
        if self._saved is None:
            raise RuntimeError(f"{self!r}: backward needs a forward in training mode first "
                               "(eval-mode forward saves no batch statistics)")
        x, mean, inv_std = self._saved
        dout = val.as_float(dout, "dout", self.dtype)
        val.require_shape(dout, "dout", x.shape)
        dx = self._buf.get("dx", x.shape, self.dtype)
        dgamma, dbeta = self._param_grads()
        getattr(kernels(), kernel)(dout.reshape(-1), x.reshape(-1), self._gamma_beta()[0],
                                   mean, inv_std, dx.reshape(-1), dgamma, dbeta,
                                   threads_for(x.size))
        return dx


class BatchNorm1d(_Norm):
    """Batch normalization over the batch axis of (N, num_features) input (PyTorch semantics).

    Training mode normalizes each feature with the batch mean and biased variance and updates
    the running statistics: ``running = (1 - momentum) * running + momentum * batch`` (the
    running variance from the UNBIASED batch variance, as PyTorch); inference mode
    (``.eval()``) normalizes with the running statistics.

    Parameters
    ----------
    num_features : int
    eps : float, default 1e-5
        Added to the variance inside the square root (>= 0).
    momentum : float, default 0.1
        Weight of the NEW batch statistic in the running averages, in [0, 1] (PyTorch's
        convention; the course's ``bn_param["momentum"]`` weights the old value).
    affine : bool, default True
        Learn ``gamma`` (ones) and ``beta`` (zeros); without it the output is the normalized x.
    dtype : {np.float32, np.float64}, default np.float32

    Attributes
    ----------
    params, grads : dict
        ``"gamma"``, ``"beta"`` (num_features,) when affine, else empty.
    buffers : dict
        ``"running_mean"`` (zeros) and ``"running_var"`` (ones), saved with the model.

    Raises
    ------
    ValueError
        For num_features < 1, eps < 0, momentum outside [0, 1]; in training mode, for a batch
        of one row (its variance is undefined; PyTorch refuses it too).
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, dtype=np.float32):
        super().__init__(num_features, eps, affine, dtype)
        self.momentum = val.unit_interval(momentum, "momentum")
        self.buffers = {"running_mean": np.zeros(self.num_features, self.dtype),
                        "running_var": np.ones(self.num_features, self.dtype)}

    def __repr__(self):
        return (f"BatchNorm1d({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, dtype={self.dtype.name})")

    def forward(self, x):
        """Normalize x (N, num_features); returns a reused buffer."""
        x = self._input(x)
        n = x.shape[0]
        out = self._buf.get("out", x.shape, self.dtype)
        gamma, beta = self._gamma_beta()
        run_mean, run_var = self.buffers["running_mean"], self.buffers["running_var"]
        if not self.training:
            kernels().batchnorm_forward_test(x.reshape(-1), gamma, beta, run_mean, run_var,
                                             out.reshape(-1), self.eps, threads_for(x.size))
            self._saved = None
            return out
        if n < 2:
            raise ValueError(f"{self!r}: training mode needs more than 1 value per feature, "
                             f"got input of shape {x.shape} (use .eval() for single samples)")
        mean = self._buf.get("mean", (self.num_features,), np.float64)
        inv_std = self._buf.get("inv_std", (self.num_features,), np.float64)
        # the kernel takes the course's momentum (weight of the old value)
        kernels().batchnorm_forward_train(x.reshape(-1), gamma, beta, out.reshape(-1), mean,
                                          inv_std, run_mean, run_var, self.eps,
                                          1.0 - self.momentum, True, threads_for(x.size))
        self._saved = (x, mean, inv_std)
        return out

    def backward(self, dout):
        """Fill grads (dgamma, dbeta) and return dL/dx (training-mode forward only)."""
        return self._backward("batchnorm_backward", dout)

    @property
    def fused_norm(self):
        """How the fused step runs this layer (fastbp._planner.FusedNorm), read from its
        CURRENT mode, eps, momentum and arrays: batch statistics in training mode (the running
        averages updated in place, as :meth:`forward` does), the running ones in inference mode;
        None for a subclass overriding forward or backward."""
        return self._declare(BatchNorm1d, "batch" if self.training else "running",
                             (self.buffers["running_mean"], self.buffers["running_var"]),
                             1.0 - val.unit_interval(self.momentum, "momentum"))


class LayerNorm(_Norm):
    """Layer normalization over the last axis of (N, num_features) input (PyTorch semantics:
    biased variance, eps inside the square root, the same in training and inference).

    Parameters
    ----------
    num_features : int
    eps : float, default 1e-5
    dtype : {np.float32, np.float64}, default np.float32

    Attributes
    ----------
    params, grads : dict
        ``"gamma"`` (ones) and ``"beta"`` (zeros), (num_features,).
    """

    def __init__(self, num_features, eps=1e-5, dtype=np.float32):
        super().__init__(num_features, eps, True, dtype)

    def __repr__(self):
        return f"LayerNorm({self.num_features}, eps={self.eps}, dtype={self.dtype.name})"

    def forward(self, x):
        """Normalize each row of x (N, num_features); returns a reused buffer."""
        x = self._input(x)
        n = x.shape[0]
        out = self._buf.get("out", x.shape, self.dtype)
        mean = self._buf.get("mean", (n,), np.float64)
        inv_std = self._buf.get("inv_std", (n,), np.float64)
        gamma, beta = self._gamma_beta()
        kernels().layernorm_forward(x.reshape(-1), gamma, beta, out.reshape(-1), mean, inv_std,
                                    self.eps, threads_for(x.size))
        self._saved = (x, mean, inv_std)
        return out

    def backward(self, dout):
        """Fill grads (dgamma, dbeta) and return dL/dx."""
        return self._backward("layernorm_backward", dout)

    @property
    def fused_norm(self):
        """How the fused step runs this layer (fastbp._planner.FusedNorm): each row's own
        statistics, in both modes; None for a subclass overriding forward or backward."""
        return self._declare(LayerNorm, "row")


#: MLP(norm=...) name -> normalization class
NORMS = {"batch": BatchNorm1d, "layer": LayerNorm}
