"""scikit-learn estimators trained on fastbp: ``MLPClassifier`` and ``MLPRegressor``.

A drop-in for ``sklearn.neural_network.MLPClassifier`` / ``MLPRegressor``: change the import,
keep the code.  Requires the optional extra ``pip install "fastbp[sklearn]"`` (scikit-learn);
``import fastbp`` never imports scikit-learn.

Design
------
* Same parameters, parameter validation (scikit-learn's ``_parameter_constraints``, extended by
  fastbp's activations and ``dtype``), input validation (``validate_data``), fitted attributes
  and training loop as scikit-learn's stochastic solvers: Glorot-uniform initial weights drawn
  from the same ``RandomState`` calls, the same shuffling and minibatches, L2 as
  ``alpha / 2 * sum ||W||^2 / n_batch`` on the weights only, the same learning-rate schedules,
  stopping rule (``tol``, ``n_iter_no_change``), stratified early-stopping split, warm start and
  ``partial_fit`` rules.  With ``dtype="float64"`` the fitted weights equal scikit-learn's to
  rounding (tested); the default ``float32`` computes in single precision.
* The network is a ``fastbp.nn.Sequential`` of ``Linear`` layers (with the hidden activation
  between them) whose parameter arrays ARE ``coefs_[i]`` and ``intercepts_[i]``: reading them
  costs nothing, and a step updates them in place.  Each minibatch is one
  ``Sequential.train_step`` (the fused kernels; the one-call compiled step for Adam, and for SGD
  without Nesterov -- with momentum 0 where ``alpha > 0`` -- without sample weights: see
  :meth:`_Solver.fuses`).
  Prediction runs ``Sequential.inference_forward`` (one GEMM + bias/activation epilogue per
  layer), the output activation written from its buffer straight into the result.
* Output layer and loss (``out_activation_``): softmax + cross-entropy for multiclass
  (fastbp's fused kernel); logistic + binary cross-entropy for binary and multilabel targets
  (fastbp has no fused kernel for it: :func:`_logistic_rows` composes the compiled sigmoid
  with NumPy for the loss and ``(p - y) / N``); identity + squared error for regression
  (``nn.MSELoss``).
* scikit-learn's optimizers expressed with ``fastbp.optim`` (:class:`_Solver`): its gradient
  is ``(delta + alpha * W) / n``; fastbp's losses give ``k * delta / n`` (k = 1, or 2 / D for
  the mean squared error over D outputs), so SGD runs at ``lr / k`` with weight decay
  ``k * alpha / n`` on the weights only (``decay_biases=False``: one optimizer for all the
  parameters), and Adam with ``eps' = k * eps / sqrt(1 - beta_2**t)``
  (scikit-learn adds eps to the uncorrected ``sqrt(v)``, PyTorch-style Adam to the corrected
  one).  When the SGD learning rate changes (``invscaling``, ``adaptive``) the momentum
  buffers are rescaled by old / new, which keeps scikit-learn's velocity ``v = mu * v - lr * g``
  exact.
* ``loss_`` is scikit-learn's: cross-entropy with probabilities clipped at machine epsilon, or
  half the mean squared error, plus the L2 term.  Only where training can take the one-call
  step (see above) fastbp's own exact cross-entropy is used: it differs from the clipped one
  when a probability falls below epsilon.
* ``sample_weight``: per-sample losses and gradient rows weighted by ``w_i / sum(w)`` over
  the batch (:class:`_RowLoss`, NumPy over the compiled per-row kernels), the L2 term and
  decay divided by the batch's weight sum, as scikit-learn does.
* ``solver="lbfgs"``: SciPy's L-BFGS-B, as scikit-learn, each evaluation a full-batch fastbp
  forward and backward (unfused: ``Sequential.forward`` / ``backward``).
* Not supported: sparse input
  (TypeError naming it), ``MLPRegressor(loss="poisson")``.

Persistence: estimators pickle and unpickle (scikit-learn's convention; the fastbp network and
its buffers are dropped and rebuilt around ``coefs_`` / ``intercepts_``).  A pickle runs code
when loaded: only load files you trust.  fastbp's own model files (``Module.save`` ->
``.npz``, no pickle) are the safe format for a bare ``fastbp.nn`` network.
"""

import re
import warnings
from collections import namedtuple
from itertools import chain
from numbers import Real

import numpy as np

try:
    import sklearn
except ImportError as e:  # exercised in a subprocess by the tests
    raise ImportError(
        'fastbp.sklearn needs scikit-learn (>= 1.6): pip install "fastbp[sklearn]"') from e
if tuple(map(int, re.match(r"(\d+)\.(\d+)", sklearn.__version__).groups())) < (1, 6):
    raise ImportError(f"fastbp.sklearn needs scikit-learn >= 1.6 (validate_data, "
                      f"__sklearn_tags__), found {sklearn.__version__}: "
                      'pip install -U "fastbp[sklearn]"')
import scipy.optimize
from scipy.special import expit
from sklearn.base import (BaseEstimator, ClassifierMixin, RegressorMixin, _fit_context,
                          is_classifier)
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier as _SkMLPClassifier
from sklearn.neural_network import MLPRegressor as _SkMLPRegressor
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state, column_or_1d, gen_batches, shuffle
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.fixes import _get_additional_lbfgs_options_dict
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import _check_partial_fit_first_call, type_of_target, unique_labels
from sklearn.utils.optimize import _check_optimize_result
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from . import _validation as val
from . import nn, optim
from ._config import threads_for
from .backend import kernels

__all__ = ["MLPClassifier", "MLPRegressor"]

_STOCHASTIC_SOLVERS = ("sgd", "adam")

#: hidden activation name -> fastbp.nn layer class (None: no layer, the identity)
HIDDEN_ACTIVATIONS = {
    "identity": None,
    "logistic": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
}

#: What validate_data accepts as is (anything else becomes float64, as in scikit-learn).
_INPUT_DTYPES = (np.float64, np.float32)

#: Rows per forward pass in predict: bounds the hidden buffers a large X leaves in the model.
_PREDICT_ROWS = 4096


def _constraints(sklearn_estimator):
    """scikit-learn's parameter constraints, with fastbp's activations, momentum < 1 (fastbp's
    SGD) and ``dtype``."""
    return {
        **sklearn_estimator._parameter_constraints,
        "activation": [StrOptions(set(HIDDEN_ACTIVATIONS))],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "dtype": [StrOptions({"float32", "float64"})],
    }


# ------------------------------------------------------------------------------ output layers


def _clip_log_loss(values, dtype):
    """scikit-learn's log losses clip probabilities to [eps, 1 - eps] (eps of the dtype): each
    -log(p) term lies in [-log(1 - eps), -log(eps)].  The gradient is not clipped."""
    eps = np.finfo(dtype).eps
    return np.clip(values, -np.log1p(-eps), -np.log(eps), out=values)


def _softmax_rows(scores, labels, grad, rows):
    """Per-sample cross-entropy (rows, clipped as scikit-learn's) and its gradient
    softmax(z) - onehot(y) (grad)."""
    kernels().softmax_cross_entropy(scores, val.as_labels(labels, "y", *scores.shape), grad,
                                    rows, 1.0, threads_for(scores.size))
    _clip_log_loss(rows, scores.dtype)


def _logistic_rows(scores, target, grad, rows):
    """Per-sample binary cross-entropy summed over outputs, ``sum(softplus(z) - y * z)``
    (``np.logaddexp(0, z)`` never overflows; each term clipped as scikit-learn's), and its
    gradient ``sigmoid(z) - y``: the compiled sigmoid, then NumPy (fastbp has no fused kernel
    for this loss; it runs on the (N, n_outputs) logits only, small next to the GEMMs)."""
    target = val.as_float(target, "target", scores.dtype)
    val.require_shape(target, "target", scores.shape)
    kernels().sigmoid_forward(scores.reshape(-1), grad.reshape(-1), threads_for(scores.size))
    terms = _clip_log_loss(np.logaddexp(0, scores) - target * scores, scores.dtype)
    np.sum(terms, axis=1, dtype=np.float64, out=rows)
    grad -= target


def _squared_rows(scores, target, grad, rows):
    """Per-sample squared error summed over the D outputs and the gradient ``2 / D * (p - t)``
    (MSELoss's convention, so weighted and unweighted steps share the solver's scaling)."""
    target = val.as_float(target, "target", scores.dtype)
    val.require_shape(target, "target", scores.shape)
    kernels().mse(scores, target, grad, rows, 1.0 / scores.shape[1], threads_for(scores.size))


class _RowLoss(nn._Loss):
    """A loss given per-sample values and gradients (`rows_function`), averaged over the batch
    with optional sample weights: ``y`` is the targets, or ``(targets, weights)``.

    value = ``value_factor(D) * sum(w_i * row_i) / sum(w)``, gradient row i scaled by
    ``w_i / sum(w)`` (``1 / N`` without weights): scikit-learn's weighted losses (``deltas *=
    sample_weight``, divided by the weight sum).
    """

    def __init__(self, rows_function, value_factor):
        super().__init__()
        self.rows_function = rows_function
        self.value_factor = value_factor

    def forward(self, scores, target):
        """Weighted mean loss for logits (N, K)."""
        target, weights = target if isinstance(target, tuple) else (target, None)
        s = self._scores(scores)
        n = s.shape[0]
        grad = self._buf.get("grad", s.shape, s.dtype)
        rows = self._buf.get("rows", (n,), np.float64)
        self.rows_function(s, target, grad, rows)
        scale = np.full(n, 1.0 / n) if weights is None else weights / weights.sum()
        grad *= scale.astype(s.dtype)[:, None]
        self._grad = grad
        return self.value_factor(s.shape[1]) * float(rows @ scale)


def _expit_into(z, out):
    return expit(z, out=out)


def _copy_into(z, out):
    np.copyto(out, z)
    return out


def _one(d):
    return 1.0


def _per_output(d):
    return 1.0 / d


def _logistic_loss():
    return _RowLoss(_logistic_rows, _one)


#: native: makes fastbp's own loss (exact values, unweighted; lets the one-call compiled step
#: run); rows: makes the per-row loss (scikit-learn's clipped values, sample weights);
#: grad_scale(D): their gradient over scikit-learn's for D outputs; value_scale: their value
#: times this is scikit-learn's loss; link(z, out): out := the output activation of z
#: (out may be z)
_Output = namedtuple("_Output", "native rows grad_scale value_scale link")

OUTPUTS = {
    "softmax": _Output(nn.SoftmaxCrossEntropy, lambda: _RowLoss(_softmax_rows, _one), _one,
                       1.0, nn._softmax_rows),
    "logistic": _Output(_logistic_loss, _logistic_loss, _one, 1.0, _expit_into),
    "identity": _Output(nn.MSELoss, lambda: _RowLoss(_squared_rows, _per_output),
                        lambda d: 2.0 / d, 0.5, _copy_into),
}


# --------------------------------------------------------------------------------- optimizers


class _Solver:
    """scikit-learn's ``SGDOptimizer`` / ``AdamOptimizer`` run by one ``fastbp.optim``
    optimizer (:attr:`optimizer`, what ``Sequential.train_step`` gets).

    scikit-learn's L2 term decays the weights, not the biases: the optimizer has
    ``decay_biases=False`` and its ``weight_decay`` set per batch (:meth:`before_step`), so Adam
    and SGD without Nesterov (momentum 0 for any ``alpha``, heavy-ball with ``alpha == 0``)
    reach the one-call compiled step.  See the module docstring for the scaling.
    """

    def __init__(self, estimator, grad_scale):
        self.solver = estimator.solver
        self.grad_scale = float(grad_scale)
        self.alpha = float(estimator.alpha)
        self.learning_rate_init = float(estimator.learning_rate_init)
        self.learning_rate = self.learning_rate_init  # scikit-learn's current rate
        self.lr_schedule = estimator.learning_rate
        self.power_t = float(estimator.power_t)
        self.epsilon = float(estimator.epsilon)
        self.beta_2 = float(estimator.beta_2)
        decay = self.grad_scale * self.alpha  # a batch of one; before_step sets alpha / n
        if self.solver == "sgd":
            momentum = float(estimator.momentum)
            self.optimizer = optim.SGD(
                lr=self.learning_rate / self.grad_scale, momentum=momentum,
                nesterov=bool(estimator.nesterovs_momentum) and momentum > 0,
                weight_decay=decay, decay_biases=False)
        else:
            self.optimizer = optim.Adam(lr=self.learning_rate,
                                        betas=(float(estimator.beta_1), self.beta_2),
                                        eps=self.epsilon, weight_decay=decay,
                                        decay_biases=False)

    def fuses(self):
        """True when the optimizer's update can run inside the one-call compiled step
        (``fused_update``): Adam, or SGD without Nesterov (and momentum 0 where
        ``alpha > 0``)."""
        return self.optimizer.fused_update() is not None

    def before_step(self, n_samples):
        """Set the per-batch hyper-parameters: weight decay (alpha / n) and Adam's eps."""
        opt = self.optimizer
        decay = self.grad_scale * self.alpha / n_samples
        if decay != opt.weight_decay:  # (unchanged: the validated values stay cached)
            opt.weight_decay = decay
        if self.solver == "adam":
            t = 1 + next((s["step"] for s in opt.state.values() if "step" in s), 0)
            opt.eps = float(self.grad_scale * self.epsilon / np.sqrt(1.0 - self.beta_2 ** t))

    def _set_learning_rate(self, rate):
        old, self.learning_rate = self.learning_rate, float(rate)
        self.optimizer.lr = self.learning_rate / self.grad_scale
        for state in self.optimizer.state.values():
            buf = state.get("momentum_buffer")
            if buf is not None:  # keep scikit-learn's velocity -lr_old * buffer
                buf *= old / self.learning_rate

    def iteration_ends(self, time_step):
        """scikit-learn's per-epoch schedule: invscaling sets lr_init / (t + 1) ** power_t."""
        if self.solver == "sgd" and self.lr_schedule == "invscaling":
            self._set_learning_rate(self.learning_rate_init / (time_step + 1) ** self.power_t)

    def trigger_stopping(self, msg, verbose):
        """True to stop; the adaptive SGD schedule divides the rate by 5 instead, until 1e-6."""
        if self.solver != "sgd" or self.lr_schedule != "adaptive":
            if verbose:
                print(msg + " Stopping.")
            return True
        if self.learning_rate <= 1e-6:
            if verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        self._set_learning_rate(self.learning_rate / 5.0)
        if verbose:
            print(msg + " Setting learning rate to %f" % self.learning_rate)
        return False


# ------------------------------------------------------------------------------- estimators


#: a built network: the Sequential, its Linear layers, (activation, dtype) it was built for
_Network = namedtuple("_Network", "model linears key")


def _store_parameters(estimator, parameters):
    """An ``__init__`` body: every constructor argument stored as given (scikit-learn's rule)."""
    for name, value in parameters.items():
        if name != "self":
            setattr(estimator, name, value)


class _BaseMLP(BaseEstimator):
    """What MLPClassifier and MLPRegressor share: the network, the training loop, prediction."""

    _TRANSIENT = ("_model",)  # rebuilt on demand; never pickled

    def __getstate__(self):
        return {k: v for k, v in super().__getstate__().items() if k not in self._TRANSIENT}

    # ------------------------------------------------------------------------ the network

    def _network(self):
        """The fastbp Sequential whose parameters are coefs_ / intercepts_ (rebuilt when they
        or the activation changed, e.g. after unpickling)."""
        net = self.__dict__.get("_model")
        if net is not None and net.key == (self.activation, self.dtype):
            built = [a for lin in net.linears for a in (lin.params["W"], lin.params["b"])]
            current = [a for pair in zip(self.coefs_, self.intercepts_) for a in pair]
            if len(built) == len(current) and all(a is b for a, b in zip(built, current)):
                return net.model
        dtype = np.dtype(self.dtype)
        self.coefs_ = [np.ascontiguousarray(w, dtype) for w in self.coefs_]
        self.intercepts_ = [np.ascontiguousarray(b, dtype) for b in self.intercepts_]
        layers, linears = [], []
        activation = HIDDEN_ACTIVATIONS[self.activation]
        for i, (w, b) in enumerate(zip(self.coefs_, self.intercepts_, strict=True)):
            lin = nn.Linear(w.shape[0], w.shape[1], dtype=dtype, init="normal", rng=0)
            lin.params = {"W": w, "b": b}
            lin.grads = {"W": np.zeros_like(w), "b": np.zeros_like(b)}
            layers.append(lin)
            linears.append(lin)
            if activation is not None and i < len(self.coefs_) - 1:
                layers.append(activation())
        self._model = _Network(nn.Sequential(*layers), linears, (self.activation, self.dtype))
        return self._model.model

    def _init_coef(self, fan_in, fan_out, dtype):
        # Glorot et al., with scikit-learn's RandomState calls (same draws, same order)
        factor = 2.0 if self.activation == "logistic" else 6.0
        bound = np.sqrt(factor / (fan_in + fan_out))
        coef = self._random_state.uniform(-bound, bound, (fan_in, fan_out))
        intercept = self._random_state.uniform(-bound, bound, fan_out)
        return np.ascontiguousarray(coef, dtype), np.ascontiguousarray(intercept, dtype)

    def _initialize(self, y, layer_units, dtype):
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = y.shape[1]
        self.n_layers_ = len(layer_units)
        self.out_activation_ = self._output_activation()
        self.coefs_, self.intercepts_ = [], []
        for fan_in, fan_out in zip(layer_units[:-1], layer_units[1:]):
            coef, intercept = self._init_coef(fan_in, fan_out, dtype)
            self.coefs_.append(coef)
            self.intercepts_.append(intercept)
        self._best_coefs = [c.copy() for c in self.coefs_]
        self._best_intercepts = [i.copy() for i in self.intercepts_]
        if self.solver not in _STOCHASTIC_SOLVERS:
            return
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None

    # ----------------------------------------------------------------------- training

    def _fit(self, X, y, sample_weight=None, incremental=False):
        hidden = self.hidden_layer_sizes
        hidden = list(hidden) if hasattr(hidden, "__iter__") else [hidden]
        if np.any(np.array(hidden) <= 0):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {hidden}.")
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        X = self._compute_array(X)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
        if y.ndim == 1:
            y = y.reshape((-1, 1))
        if not first_pass and y.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {y.shape[1]} outputs, the fitted model "
                             f"{self.n_outputs_}: refit with warm_start=False")
        if not first_pass and X.dtype != self.coefs_[0].dtype:
            raise ValueError(f"dtype={self.dtype!r} differs from the fitted weights' "
                             f"{self.coefs_[0].dtype}: refit with warm_start=False")
        layer_units = [X.shape[1]] + hidden + [y.shape[1]]
        self._random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(y, layer_units, X.dtype)
        elif [c.shape[1] for c in self.coefs_[:-1]] != hidden:
            raise ValueError(f"hidden_layer_sizes={hidden} differs from the fitted "
                             f"{[c.shape[1] for c in self.coefs_[:-1]]}: refit with "
                             "warm_start=False")
        if self.solver in _STOCHASTIC_SOLVERS:
            self._fit_stochastic(X, y, sample_weight, incremental)
        else:
            self._fit_lbfgs(X, y, sample_weight)
        if not all(np.isfinite(w).all() for w in chain(self.coefs_, self.intercepts_)):
            raise ValueError(
                "Solver produced non-finite parameter weights. The input data may"
                " contain large values and need to be preprocessed.")
        return self

    def _fit_stochastic(self, X, y, sample_weight, incremental):
        output = OUTPUTS[self.out_activation_]
        if not incremental or not hasattr(self, "_solver"):
            self._solver = _Solver(self, output.grad_scale(self.n_outputs_))
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        early_stopping = self.early_stopping
        if early_stopping:
            stratify = y if is_classifier(self) and self.n_outputs_ == 1 else None
            arrays = (X, y) if sample_weight is None else (X, y, sample_weight)
            split = train_test_split(*arrays, random_state=self._random_state,
                                     test_size=self.validation_fraction, stratify=stratify)
            X_train, X_val, y_train, y_val = split[:4]
            sw_train, sw_val = split[4:] if sample_weight is not None else (None, None)
            if X_val.shape[0] < 2:
                raise ValueError(
                    "The validation set is too small. Increase 'validation_fraction' "
                    "or the size of your dataset.")
            if is_classifier(self):
                y_val = self._label_binarizer.inverse_transform(y_val)
        else:
            X_train, y_train, X_val, y_val = X, y, None, None
            sw_train = sw_val = sample_weight
        targets = self._training_targets(y_train)
        n_samples = X_train.shape[0]
        sample_idx = np.arange(n_samples, dtype=int)
        if self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            if self.batch_size > n_samples:
                warnings.warn("Got `batch_size` less than 1 or larger than "
                              "sample size. It is going to be clipped")
            batch_size = int(np.clip(self.batch_size, 1, n_samples))

        model = self._network()
        solver = self._solver
        loss = (output.native if sw_train is None and solver.fuses() else output.rows)()
        try:
            self.n_iter_ = 0
            for _ in range(self.max_iter):
                if self.shuffle:
                    sample_idx = shuffle(sample_idx, random_state=self._random_state)
                accumulated_loss = 0.0
                for batch in gen_batches(n_samples, batch_size):
                    rows = sample_idx[batch] if self.shuffle else batch
                    x_batch, y_batch = X_train[rows], targets[rows]
                    n_batch = x_batch.shape[0]
                    weight_sum = n_batch  # scikit-learn's divisor of the gradient and L2 term
                    if sw_train is not None:
                        y_batch = (y_batch, sw_train[rows])
                        weight_sum = float(y_batch[1].sum())
                    penalty = self._l2_penalty(weight_sum)  # on the weights before the update
                    solver.before_step(weight_sum)
                    value = model.train_step(x_batch, y_batch, loss, solver.optimizer)
                    accumulated_loss += (value * output.value_scale + penalty) * n_batch
                self.n_iter_ += 1
                self.loss_ = accumulated_loss / n_samples
                self.t_ += n_samples
                self.loss_curve_.append(self.loss_)
                if self.verbose:
                    print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))
                self._update_no_improvement_count(early_stopping, X_val, y_val, sw_val)
                solver.iteration_ends(self.t_)
                if self._no_improvement_count > self.n_iter_no_change:
                    if early_stopping:
                        msg = ("Validation score did not improve more than tol=%f for %d "
                               "consecutive epochs." % (self.tol, self.n_iter_no_change))
                    else:
                        msg = ("Training loss did not improve more than tol=%f for %d "
                               "consecutive epochs." % (self.tol, self.n_iter_no_change))
                    if solver.trigger_stopping(msg, self.verbose):
                        break
                    self._no_improvement_count = 0
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn(
                        "Stochastic Optimizer: Maximum iterations (%d) reached and the "
                        "optimization hasn't converged yet." % self.max_iter, ConvergenceWarning)
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.")
        if early_stopping:  # restore the best weights, in place (coefs_ stay the model's)
            for dst, src in zip(self.coefs_ + self.intercepts_,
                                self._best_coefs + self._best_intercepts):
                np.copyto(dst, src)

    def _fit_lbfgs(self, X, y, sample_weight):
        """scikit-learn's L-BFGS: SciPy's L-BFGS-B over the packed parameters (coefs, then
        intercepts), each evaluation a full-batch forward / backward on the fastbp network."""
        output = OUTPUTS[self.out_activation_]
        model = self._network()
        parameters = self.coefs_ + self.intercepts_
        bounds = np.cumsum([0] + [p.size for p in parameters])
        loss = output.rows()
        targets = self._training_targets(y)
        targets = targets if sample_weight is None else (targets, sample_weight)
        weight_sum = X.shape[0] if sample_weight is None else float(sample_weight.sum())
        grad_scale = output.grad_scale(self.n_outputs_)

        def loss_grad(packed):
            for p, start, stop in zip(parameters, bounds[:-1], bounds[1:]):
                p.reshape(-1)[:] = packed[start:stop]
            value = loss.forward(model.forward(X), targets) * output.value_scale
            model.backward(loss.backward())
            net = self._model
            grads = [lin.grads["W"] / grad_scale + self.alpha / weight_sum * lin.params["W"]
                     for lin in net.linears]
            grads += [lin.grads["b"] / grad_scale for lin in net.linears]
            return value + self._l2_penalty(weight_sum), np.concatenate(
                [g.reshape(-1) for g in grads])

        iprint = 1 if self.verbose is True or self.verbose >= 1 else -1
        result = scipy.optimize.minimize(
            loss_grad, np.concatenate([p.reshape(-1) for p in parameters]), method="L-BFGS-B",
            jac=True, options={"maxfun": self.max_fun, "maxiter": self.max_iter,
                               "gtol": self.tol,
                               **_get_additional_lbfgs_options_dict("iprint", iprint)})
        self.n_iter_ = _check_optimize_result("lbfgs", result, self.max_iter)
        self.loss_ = result.fun
        for p, start, stop in zip(parameters, bounds[:-1], bounds[1:]):
            p.reshape(-1)[:] = result.x[start:stop]

    def _l2_penalty(self, n_samples):
        if self.alpha == 0:
            return 0.0
        squares = sum(float(np.vdot(w, w)) for w in self.coefs_)
        return 0.5 * self.alpha * squares / n_samples

    def _update_no_improvement_count(self, early_stopping, X_val, y_val, sw_val):
        if early_stopping:
            score = self._score(X_val, y_val, sw_val)
            self.validation_scores_.append(score)
            if self.verbose:
                print("Validation score: %f" % score)
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_coefs = [c.copy() for c in self.coefs_]
                self._best_intercepts = [i.copy() for i in self.intercepts_]
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    def _check_solver(self):
        if self.solver not in _STOCHASTIC_SOLVERS:
            raise AttributeError(f"partial_fit is only available for stochastic optimizers. "
                                 f"{self.solver} is not stochastic.")
        return True

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Fit the model to data matrix X and target(s) y.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Dense input (converted to ``dtype``, C-contiguous); NaN and infinity are rejected.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Class labels (2-D 0/1 indicators for multilabel) or regression targets.
        sample_weight : array-like of shape (n_samples,), default None
            Per-sample weights: each batch's loss, gradient and L2 term are divided by the
            batch's weight sum instead of its size (scikit-learn's rule).

        Returns
        -------
        self : object
            The fitted estimator.

        Raises
        ------
        ValueError
            For invalid X or y (scikit-learn's messages) or non-finite weights after training.
        TypeError
            For sparse X.
        """
        return self._fit(X, y, sample_weight, incremental=False)

    # ---------------------------------------------------------------------- prediction

    def _compute_array(self, X):
        """Validated X (float32 or float64) as a C-contiguous array of ``dtype``."""
        dtype = np.dtype(self.dtype)
        if X.dtype == dtype and X.flags.c_contiguous:
            return X
        with np.errstate(over="ignore"):  # reported just below, as a ValueError
            converted = np.ascontiguousarray(X, dtype=dtype)
        if converted.dtype.itemsize < X.dtype.itemsize and not np.isfinite(converted).all():
            raise ValueError(f"X holds values too large for {dtype}: rescale X or use "
                             "dtype='float64'")
        return converted

    def _forward(self, X):
        """Output-layer activations (n_samples, n_outputs) for validated X, computed in
        ``dtype`` in batches and returned in X's dtype (scikit-learn's: float32 X gives
        float32, anything else float64)."""
        model = self._network()
        x = self._compute_array(X)
        link = OUTPUTS[self.out_activation_].link
        out = np.empty((X.shape[0], self.n_outputs_), x.dtype)
        for start in range(0, X.shape[0], _PREDICT_ROWS):  # (gen_batches validates: ~1 ms)
            # the fused inference forward (one GEMM + epilogue per layer), then the output
            # activation from its buffer straight into the result, while it is in cache
            link(model.inference_forward(x[start:start + _PREDICT_ROWS]),
                 out[start:start + _PREDICT_ROWS])
        return out.astype(X.dtype, copy=False)

    def _validate_X(self, X):
        return validate_data(self, X, dtype=_INPUT_DTYPES, reset=False)

    def _score(self, X, y, sample_weight=None):
        """The early-stopping score (accuracy or R²) of validated X; NaN for non-finite
        predictions."""
        y_pred = self._predict(X)
        if np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all():
            return np.nan
        return self._score_function(y, y_pred, sample_weight=sample_weight)

    def predict(self, X):
        """Class labels (n_samples,) (or (n_samples, n_labels) for multilabel), or regression
        predictions (n_samples,) / (n_samples, n_outputs) in X's dtype (float32 X gives
        float32, anything else float64, as scikit-learn).

        Raises
        ------
        sklearn.exceptions.NotFittedError
            Before ``fit``.
        ValueError
            For invalid X (NaN, infinity, wrong shape) or a number of features other than at
            fit time.
        TypeError
            For sparse X.
        """
        check_is_fitted(self)
        return self._predict(self._validate_X(X))


_PARAMETERS_DOC = """
    Parameters
    ----------
    Those of ``sklearn.neural_network.{name}``, with the same meanings and defaults, plus:

    activation : {{"identity", "logistic", "tanh", "relu", "leaky_relu", "elu", "gelu"}}
        The hidden activation; the last three are fastbp's (``nn.LeakyReLU(0.01)``,
        ``nn.ELU(1.0)``, exact ``nn.GELU``).
    solver : {{"lbfgs", "sgd", "adam"}}
        ``"lbfgs"``: SciPy's L-BFGS-B over full-batch forward / backward passes.
    momentum : float in [0, 1)
    dtype : {{"float32", "float64"}}, default "float32"
        The dtype of the weights and of every computation (X is converted to it).

    Attributes
    ----------
    As scikit-learn's (``coefs_`` (n_in, n_out) per layer, ``intercepts_``, ``loss_``,
    ``loss_curve_``, ``best_loss_``, ``validation_scores_``, ``best_validation_score_``,
    ``n_iter_``, ``t_``, ``n_layers_``, ``n_outputs_``, ``out_activation_``,
    ``n_features_in_``, ``feature_names_in_``{classes}).  ``coefs_[i]`` and
    ``intercepts_[i]`` are the fastbp network's own parameter arrays.

    Notes
    -----
    Pickling follows scikit-learn's convention (and its caveat: load only trusted files).
    See the module docstring for what differs from scikit-learn.
"""


class MLPClassifier(ClassifierMixin, _BaseMLP):
    __doc__ = ("Multi-layer perceptron classifier trained on fastbp's compiled step "
               "(scikit-learn's MLPClassifier, one import away).\n"
               + _PARAMETERS_DOC.format(name="MLPClassifier", classes=", ``classes_``"))

    _parameter_constraints = _constraints(_SkMLPClassifier)
    _score_function = staticmethod(accuracy_score)

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 dtype="float32"):
        _store_parameters(self, locals())

    def _output_activation(self):
        return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

    def _training_targets(self, y):
        if self.out_activation_ == "softmax":
            return np.ascontiguousarray(y.argmax(axis=1), dtype=np.int64)
        return np.ascontiguousarray(y, dtype=np.dtype(self.dtype))

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, multi_output=True, dtype=_INPUT_DTYPES, reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(
                        "warm_start can only be used where `y` has the same classes as in the "
                        f"previous call to fit. Previously got {self.classes_}, `y` has "
                        f"{classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has "
                                 f"{self.classes_}. 'y' has {classes}.")
        return X, self._label_binarizer.transform(y).astype(bool)

    @available_if(lambda est: est._check_solver())
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """Update the model with one epoch over (X, y).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
        sample_weight : array-like of shape (n_samples,), default None
        classes : array of shape (n_classes,), default None
            Every class of all calls; required on the first call (ignored for multilabel y).

        Returns
        -------
        self : object

        Raises
        ------
        ValueError
            Without `classes` on the first call, with other `classes` later, for labels not
            in ``classes_``, or with ``early_stopping=True``.
        """
        if _check_partial_fit_first_call(self, classes):
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, sample_weight, incremental=True)

    def _predict(self, X):
        y_pred = self._forward(X)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        return self._label_binarizer.inverse_transform(y_pred)

    def predict_proba(self, X):
        """Class probabilities (n_samples, n_classes), columns in the order of ``classes_``.

        Binary problems give ``[1 - p, p]``; multilabel problems one probability per label.
        Computed in ``dtype``, returned in X's dtype (float32 X gives float32, else float64).

        Raises
        ------
        sklearn.exceptions.NotFittedError, ValueError, TypeError
            As :meth:`predict`.
        """
        check_is_fitted(self)
        y_pred = self._forward(self._validate_X(X))
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        if y_pred.ndim == 1:
            return np.vstack([1 - y_pred, y_pred]).T
        return y_pred

    def predict_log_proba(self, X):
        """``log(predict_proba(X))``."""
        y_prob = self.predict_proba(X)
        return np.log(y_prob, out=y_prob)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    __doc__ = ("Multi-layer perceptron regressor trained on fastbp's compiled step "
               "(scikit-learn's MLPRegressor, one import away).\n"
               + _PARAMETERS_DOC.format(name="MLPRegressor", classes="")
               + '\n    loss : {"squared_error"} (scikit-learn\'s "poisson" is not supported)\n')

    _parameter_constraints = {**_constraints(_SkMLPRegressor),
                              "loss": [StrOptions({"squared_error"})]}
    _score_function = staticmethod(r2_score)

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 dtype="float32"):
        _store_parameters(self, locals())

    def _output_activation(self):
        return "identity"

    def _training_targets(self, y):
        return np.ascontiguousarray(y, dtype=np.dtype(self.dtype))

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True,
                             dtype=_INPUT_DTYPES, reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y

    @available_if(lambda est: est._check_solver())
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, sample_weight=None):
        """Update the model with one epoch over (X, y), optionally weighted per sample.

        Raises
        ------
        ValueError
            For invalid input, or with ``early_stopping=True``.
        """
        return self._fit(X, y, sample_weight, incremental=True)

    def _predict(self, X):
        y_pred = self._forward(X)
        return y_pred.ravel() if y_pred.shape[1] == 1 else y_pred

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
