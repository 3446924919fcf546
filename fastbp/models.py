"""The CS231n / CS182 class API: ``TwoLayerNet``, ``FullyConnectedNet`` and ``Solver``.

Design
------
a. Same constructors, attribute names, parameter names (``W1``, ``b1``, ...), random draws and
   numbers as the course's ``fc_net.py`` and ``solver.py``, so a notebook that imports these
   classes from here runs unchanged: weights are drawn from NumPy's GLOBAL random state in the
   course's order (``np.random.seed(231)`` before construction gives the course's weights), and
   Solver samples minibatches with ``np.random.choice`` from the same state.
b. Models are thin: ``loss`` chains the functional layers of :mod:`fastbp.layers` (the compiled
   kernels, or the reference under ``fastbp.use_backend``), so every number the models produce
   is one the layer tests already cover.
c. Parameters are read LIVE from ``self.params[name]`` on every call and never cached: the
   course's numerical gradient check perturbs them in place and Solver rebinds them.
d. Dropout uses fastbp's counter-based mask (:func:`fastbp.layers.dropout_forward`), not
   ``np.random.rand``: with a ``seed`` the loss is deterministic (gradient checks work, as in
   the course), but the masks differ from the course's.  Each dropout layer gets its own seed:
   ``seed + l - 1`` after hidden layer l (so the first layer's mask is what
   ``layers.dropout_forward(x, model.dropout_param)`` draws); the course reseeds every layer
   with the same seed, which gives equal-width layers the same mask.
e. Normalization (``"batchnorm"`` / ``"layernorm"``) goes between each hidden affine layer and
   its ReLU, with ``gamma{l}`` (ones) and ``beta{l}`` (zeros) per hidden layer and one
   ``bn_params[l - 1]`` dict each, as in the course: batch norm's get their mode set from
   ``loss`` (train when y is given) and hold the running statistics.
   Deliberate differences from the course code, all in its error paths: arguments are checked
   up front (ValueError/TypeError naming the argument), and ``Solver.train`` leaves the model's
   parameters alone when no validation accuracy ever beat 0 (the course then sets
   ``model.params = {}``).
"""

import os
import pickle
from collections.abc import Mapping

import numpy as np

from . import _validation as val
from . import optim
from .layers import (
    affine_backward,
    affine_forward,
    affine_relu_backward,
    affine_relu_forward,
    batchnorm_backward,
    batchnorm_forward,
    dropout_backward,
    dropout_forward,
    layernorm_backward,
    layernorm_forward,
    relu_backward,
    relu_forward,
    softmax_loss,
)

__all__ = ["FullyConnectedNet", "Solver", "TwoLayerNet"]

#: normalization name -> (forward, backward) of the course layer placed before each hidden ReLU
_NORMALIZATIONS = {
    "batchnorm": (batchnorm_forward, batchnorm_backward),
    "layernorm": (layernorm_forward, layernorm_backward),
}


# --------------------------------------------------------------------------------------------
# argument checks


def _l2(params, names):
    """sum over names of sum(W * W), in the parameters' dtype."""
    return sum(np.vdot(params[name], params[name]) for name in names)


# --------------------------------------------------------------------------------------------
# models


class TwoLayerNet:
    """Two-layer fully-connected network: affine - relu - affine - softmax.

    Parameters
    ----------
    input_dim : int, default 3*32*32
        Size D of each input.
    hidden_dim : int, default 100
        Size H of the hidden layer.
    num_classes : int, default 10
        Number C of classes.
    weight_scale : float, default 1e-3
        Standard deviation of the initial weights (biases start at zero).
    reg : float, default 0.0
        L2 regularization strength: the loss gains ``0.5 * reg * (sum(W1**2) + sum(W2**2))``.

    Attributes
    ----------
    params : dict
        ``W1`` (D, H), ``b1`` (H,), ``W2`` (H, C), ``b2`` (C,), float64.  ``W1`` then ``W2`` are
        drawn as ``weight_scale * np.random.randn(...)`` from NumPy's global random state, as the
        course does.  Read live by :meth:`loss`.
    reg : float

    Raises
    ------
    TypeError, ValueError
        For non-integer or non-positive dimensions, a negative reg or a non-positive
        weight_scale.
    """

    def __init__(self, input_dim=3 * 32 * 32, hidden_dim=100, num_classes=10, weight_scale=1e-3,
                 reg=0.0):
        input_dim = val.integer(input_dim, "input_dim", 1)
        hidden_dim = val.integer(hidden_dim, "hidden_dim", 1)
        num_classes = val.integer(num_classes, "num_classes", 1)
        weight_scale = val.real(weight_scale, "weight_scale", 0, strict=True)
        self.reg = val.real(reg, "reg", 0)
        self.params = {
            "W1": weight_scale * np.random.randn(input_dim, hidden_dim),
            "b1": np.zeros(hidden_dim),
            "W2": weight_scale * np.random.randn(hidden_dim, num_classes),
            "b2": np.zeros(num_classes),
        }

    def loss(self, X, y=None):
        """Scores, or loss and gradients, for a minibatch.

        Parameters
        ----------
        X : array_like, shape (N, d_1, ..., d_k)
            Inputs, with d_1 * ... * d_k = input_dim.
        y : array_like of int, shape (N,), optional
            Labels in [0, C).

        Returns
        -------
        scores : ndarray, shape (N, C)
            When y is None.
        loss : float scalar
            Otherwise: mean softmax cross-entropy plus the L2 term.
        grads : dict
            Otherwise: the gradient of loss for every entry of ``params`` (``reg * W`` included).
        """
        p = self.params
        hidden, hidden_cache = affine_relu_forward(X, p["W1"], p["b1"])
        scores, scores_cache = affine_forward(hidden, p["W2"], p["b2"])
        if y is None:
            return scores

        loss, dscores = softmax_loss(scores, y)
        loss += 0.5 * self.reg * _l2(p, ("W1", "W2"))
        dhidden, dW2, db2 = affine_backward(dscores, scores_cache)
        _, dW1, db1 = affine_relu_backward(dhidden, hidden_cache)
        if self.reg:
            dW1 += self.reg * p["W1"]
            dW2 += self.reg * p["W2"]
        return loss, {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}


class FullyConnectedNet:
    """Fully-connected network: {affine - [norm] - relu - [dropout]} x (L - 1) - affine - softmax.

    Parameters
    ----------
    hidden_dims : sequence of int
        Sizes of the L - 1 hidden layers (may be empty: softmax regression).
    input_dim : int, default 3*32*32
    num_classes : int, default 10
    dropout_keep_ratio : float, default 1
        Probability of KEEPING a hidden unit, in (0, 1]; 1 means no dropout.
    normalization : {None, "batchnorm", "layernorm"}, default None
        Normalization between each hidden affine layer and its ReLU
        (:func:`fastbp.layers.batchnorm_forward` / :func:`fastbp.layers.layernorm_forward`).
    reg : float, default 0.0
        L2 strength: the loss gains ``0.5 * reg * sum_l sum(W_l**2)``.
    weight_scale : float, default 1e-2
        Standard deviation of the initial weights (biases start at zero).
    dtype : {np.float32, np.float64}, default np.float32
        dtype of the parameters and of the computation (use float64 for gradient checks).
    seed : int, optional
        Seed of the dropout masks, in [0, 2**64): with it the loss is deterministic.  Without
        it each forward pass draws fresh masks from NumPy's global random state.

    Attributes
    ----------
    params : dict
        ``W1, b1, ..., WL, bL``; ``Wl`` of shape (fan_in, fan_out) drawn in that order as
        ``weight_scale * np.random.randn(fan_in, fan_out)`` from NumPy's global random state;
        with normalization also ``gamma1, beta1, ..., gamma{L-1}, beta{L-1}`` (ones, zeros).
        Read live by :meth:`loss`.
    num_layers, reg, dtype, normalization, use_dropout, dropout_param, bn_params
        As in the course; ``dropout_param`` is ``{"mode": ..., "p": keep ratio}`` plus
        ``"seed"`` when given; ``bn_params`` holds one dict per hidden layer with
        normalization (``{"mode": "train"}`` for batch norm, ``{}`` for layer norm), else is
        empty.

    Raises
    ------
    ValueError, TypeError
        For an unknown normalization, non-positive or non-integer sizes, a keep ratio outside
        (0, 1], a negative reg, a non-positive weight_scale, a dtype other than float32/float64,
        or a seed outside [0, 2**64).
    """

    def __init__(self, hidden_dims, input_dim=3 * 32 * 32, num_classes=10, dropout_keep_ratio=1,
                 normalization=None, reg=0.0, weight_scale=1e-2, dtype=np.float32, seed=None):
        if normalization is not None and normalization not in _NORMALIZATIONS:
            raise ValueError(
                f"normalization must be None, 'batchnorm' or 'layernorm', got {normalization!r}"
            )
        if isinstance(hidden_dims, (str, bytes)) or not hasattr(hidden_dims, "__iter__"):
            raise TypeError(f"hidden_dims must be a sequence of ints, got {hidden_dims!r}")
        dims = [val.integer(h, f"hidden_dims[{i}]", 1) for i, h in enumerate(hidden_dims)]
        input_dim = val.integer(input_dim, "input_dim", 1)
        num_classes = val.integer(num_classes, "num_classes", 1)
        keep = val.real(dropout_keep_ratio, "dropout_keep_ratio", 0, strict=True)
        if keep > 1:
            raise ValueError(f"dropout_keep_ratio must lie in (0, 1], got {keep}")
        weight_scale = val.real(weight_scale, "weight_scale", 0, strict=True)
        try:
            np_dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be np.float32 or np.float64, got {dtype!r}") from None
        if np_dtype not in val.FLOAT_DTYPES:
            raise ValueError(f"dtype must be np.float32 or np.float64, got {np_dtype}")
        if seed is not None:
            val.random_seed(seed, "seed")

        self.normalization = normalization
        self.use_dropout = dropout_keep_ratio != 1
        self.reg = val.real(reg, "reg", 0)
        self.num_layers = 1 + len(dims)
        self.dtype = dtype
        self.params = {}
        sizes = [input_dim, *dims, num_classes]
        for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
            self.params[f"W{layer}"] = weight_scale * np.random.randn(fan_in, fan_out)
            self.params[f"b{layer}"] = np.zeros(fan_out)
            if normalization is not None and layer < self.num_layers:
                self.params[f"gamma{layer}"] = np.ones(fan_out)
                self.params[f"beta{layer}"] = np.zeros(fan_out)

        self.dropout_param = {}
        if self.use_dropout:
            self.dropout_param = {"mode": "train", "p": dropout_keep_ratio}
            if seed is not None:
                self.dropout_param["seed"] = seed
        self.bn_params = []
        if normalization is not None:
            first = {"mode": "train"} if normalization == "batchnorm" else {}
            self.bn_params = [dict(first) for _ in range(self.num_layers - 1)]

        for name, value in self.params.items():
            self.params[name] = value.astype(dtype)

    def _layer_dropout_param(self, layer):
        """The dropout_param of hidden layer `layer` (1-based): its own seed when seeded."""
        seed = self.dropout_param.get("seed")
        if seed is None:
            return self.dropout_param
        return {**self.dropout_param, "seed": (seed + layer - 1) % val.SEED_LIMIT}

    def _hidden_forward(self, layer, x):
        """affine - [norm] - relu of hidden layer `layer` (1-based) -> (out, cache)."""
        p = self.params
        if self.normalization is None:
            return affine_relu_forward(x, p[f"W{layer}"], p[f"b{layer}"])
        norm_forward, _ = _NORMALIZATIONS[self.normalization]
        a, fc_cache = affine_forward(x, p[f"W{layer}"], p[f"b{layer}"])
        a, norm_cache = norm_forward(a, p[f"gamma{layer}"], p[f"beta{layer}"],
                                     self.bn_params[layer - 1])
        out, relu_cache = relu_forward(a)
        return out, (fc_cache, norm_cache, relu_cache)

    def _hidden_backward(self, layer, dout, cache, grads):
        """Backward of :meth:`_hidden_forward`: fills grads[...{layer}], returns dx."""
        if self.normalization is None:
            dx, grads[f"W{layer}"], grads[f"b{layer}"] = affine_relu_backward(dout, cache)
            return dx
        _, norm_backward = _NORMALIZATIONS[self.normalization]
        fc_cache, norm_cache, relu_cache = cache
        da, grads[f"gamma{layer}"], grads[f"beta{layer}"] = norm_backward(
            relu_backward(dout, relu_cache), norm_cache)
        dx, grads[f"W{layer}"], grads[f"b{layer}"] = affine_backward(da, fc_cache)
        return dx

    def loss(self, X, y=None):
        """Scores (test mode), or loss and gradients (train mode), for a minibatch.

        Parameters
        ----------
        X : array_like, shape (N, d_1, ..., d_k)
            Inputs, with d_1 * ... * d_k = input_dim; cast to ``self.dtype``.
        y : array_like of int, shape (N,), optional
            Labels in [0, C).  None selects test mode (dropout off) and returns the scores.

        Returns
        -------
        scores : ndarray, shape (N, C)
            When y is None.
        loss : float scalar of self.dtype
            Otherwise: mean softmax cross-entropy plus the L2 term.
        grads : dict
            Otherwise: the gradient of loss for every entry of ``params``, in ``self.dtype``.
        """
        X = np.asarray(X, dtype=self.dtype)
        mode = "test" if y is None else "train"
        if self.use_dropout:
            self.dropout_param["mode"] = mode
        if self.normalization == "batchnorm":
            for bn_param in self.bn_params:
                bn_param["mode"] = mode

        p = self.params
        last = self.num_layers
        out = X
        caches = []
        for layer in range(1, last):
            out, cache = self._hidden_forward(layer, out)
            drop_cache = None
            if self.use_dropout:
                out, drop_cache = dropout_forward(out, self._layer_dropout_param(layer))
            caches.append((cache, drop_cache))
        scores, scores_cache = affine_forward(out, p[f"W{last}"], p[f"b{last}"])
        if mode == "test":
            return scores

        weights = [f"W{layer}" for layer in range(1, last + 1)]
        loss, dout = softmax_loss(scores, y)
        loss += 0.5 * self.reg * _l2(p, weights)
        grads = {}
        dout, grads[f"W{last}"], grads[f"b{last}"] = affine_backward(dout, scores_cache)
        for layer in range(last - 1, 0, -1):
            cache, drop_cache = caches[layer - 1]
            if drop_cache is not None:
                dout = dropout_backward(dout, drop_cache)
            dout = self._hidden_backward(layer, dout, cache, grads)
        if self.reg:
            for name in weights:
                grads[name] += self.reg * p[name]
        return loss, grads


# --------------------------------------------------------------------------------------------
# Solver


_DEFAULTS = {
    "update_rule": "sgd",
    "optim_config": {},
    "lr_decay": 1.0,
    "batch_size": 100,
    "num_epochs": 10,
    "num_train_samples": 1000,
    "num_val_samples": None,
    "checkpoint_name": None,
    "print_every": 10,
    "verbose": True,
}


def _resolve_update_rule(rule):
    """A callable rule as is; a name: one of fastbp.optim's public update-rule functions."""
    if callable(rule) and not isinstance(rule, type):
        return rule
    if isinstance(rule, str) and rule in optim.__all__:
        found = getattr(optim, rule)
        if not isinstance(found, type):  # the optimizer classes (SGD, Adam, ...) are not rules
            return found
    raise ValueError('Invalid update_rule "%s"' % (rule,))


def _optional_count(value, name):
    return None if value is None else val.integer(value, name, 1)


class Solver:
    """Trains a classification model with minibatch stochastic gradient descent (the course's).

    The model follows the course protocol: ``model.params`` (a dict of arrays) and
    ``model.loss(X, y=None)`` returning scores when y is None, else ``(loss, grads)``.

    Parameters
    ----------
    model : object
        E.g. :class:`TwoLayerNet` or :class:`FullyConnectedNet`.
    data : dict
        ``X_train`` (N_train, ...), ``y_train`` (N_train,), ``X_val`` (N_val, ...),
        ``y_val`` (N_val,).
    update_rule : str or callable, default "sgd"
        Name of an update rule in :mod:`fastbp.optim` ("sgd", "sgd_momentum", "rmsprop",
        "adam", "sgd_momentum_torch"), looked up when the Solver is built, or any callable
        ``rule(w, dw, config) -> (next_w, config)``.
    optim_config : dict, default {}
        Hyper-parameters given to the update rule; each parameter gets its own (shallow) copy.
    lr_decay : float, default 1.0
        Every config's ``learning_rate`` is multiplied by this after each epoch.
    batch_size : int, default 100
    num_epochs : int, default 10
    num_train_samples : int or None, default 1000
        Training samples used for the accuracy checks (None: all).
    num_val_samples : int or None, default None
        Validation samples used for the accuracy checks (None: all).
    checkpoint_name : str, optional
        When given, a pickle ``"%s_epoch_%d.pkl" % (checkpoint_name, epoch)`` is written at
        every accuracy check.
    print_every : int, default 10
        Print the training loss every this many iterations.
    verbose : bool, default True
        Print progress (False: silent).

    Attributes
    ----------
    loss_history : list
        The loss of every iteration.
    train_acc_history, val_acc_history : list
        Accuracies at the first iteration, the end of every epoch and the last iteration.
    best_val_acc : float
    best_params : dict
        Copies of the parameters with the best validation accuracy; written back into
        ``model.params`` at the end of :meth:`train`.
    epoch : int
    optim_configs : dict
        The per-parameter update-rule state.

    Raises
    ------
    ValueError
        ``"Unrecognized arguments ..."`` for unknown keyword arguments,
        ``'Invalid update_rule "..."'`` for an unknown rule, and for missing data entries or
        bad sizes.
    TypeError
        For arguments of the wrong type.
    """

    def __init__(self, model, data, **kwargs):
        self.model = model
        if not isinstance(data, Mapping):
            raise TypeError(f"data must be a dict, got {type(data).__name__}")
        missing = [k for k in ("X_train", "y_train", "X_val", "y_val") if k not in data]
        if missing:
            raise ValueError(f"data is missing {', '.join(missing)}")
        self.X_train = data["X_train"]
        self.y_train = data["y_train"]
        self.X_val = data["X_val"]
        self.y_val = data["y_val"]
        for split in ("train", "val"):
            n_x, n_y = len(getattr(self, f"X_{split}")), len(getattr(self, f"y_{split}"))
            if n_x != n_y:
                raise ValueError(f"X_{split} has {n_x} samples but y_{split} has {n_y}")
        if len(self.X_train) == 0:
            raise ValueError("X_train is empty")

        extra = [k for k in kwargs if k not in _DEFAULTS]
        if extra:
            raise ValueError("Unrecognized arguments %s" % ", ".join('"%s"' % k for k in extra))
        options = {**_DEFAULTS, **kwargs}
        self.update_rule = _resolve_update_rule(options["update_rule"])
        self.optim_config = options["optim_config"]
        if not isinstance(self.optim_config, Mapping):
            raise TypeError(f"optim_config must be a dict, got {type(self.optim_config).__name__}")
        self.lr_decay = val.real(options["lr_decay"], "lr_decay", 0)
        self.batch_size = val.integer(options["batch_size"], "batch_size", 1)
        self.num_epochs = val.integer(options["num_epochs"], "num_epochs", 0)
        self.num_train_samples = _optional_count(options["num_train_samples"],
                                                 "num_train_samples")
        self.num_val_samples = _optional_count(options["num_val_samples"], "num_val_samples")
        self.checkpoint_name = options["checkpoint_name"]
        if self.checkpoint_name is not None and not isinstance(self.checkpoint_name,
                                                               (str, os.PathLike)):
            raise TypeError(f"checkpoint_name must be a str, got {self.checkpoint_name!r}")
        self.print_every = val.integer(options["print_every"], "print_every", 1)
        self.verbose = options["verbose"]

        self._reset()

    def _reset(self):
        """Reset the bookkeeping (histories, best model, per-parameter optimizer state)."""
        self.epoch = 0
        self.best_val_acc = 0
        self.best_params = {}
        self.loss_history = []
        self.train_acc_history = []
        self.val_acc_history = []
        self.optim_configs = {name: dict(self.optim_config) for name in self.model.params}

    def _step(self):
        """One gradient update on a minibatch drawn with replacement by ``np.random.choice``."""
        num_train = self.X_train.shape[0]
        batch_mask = np.random.choice(num_train, self.batch_size)
        X_batch = self.X_train[batch_mask]
        y_batch = self.y_train[batch_mask]

        loss, grads = self.model.loss(X_batch, y_batch)
        self.loss_history.append(loss)

        for name, w in self.model.params.items():
            next_w, next_config = self.update_rule(w, grads[name], self.optim_configs[name])
            self.model.params[name] = next_w
            self.optim_configs[name] = next_config

    def _save_checkpoint(self):
        if self.checkpoint_name is None:
            return
        checkpoint = {
            "model": self.model,
            "update_rule": self.update_rule,
            "lr_decay": self.lr_decay,
            "optim_config": self.optim_config,
            "batch_size": self.batch_size,
            "num_train_samples": self.num_train_samples,
            "num_val_samples": self.num_val_samples,
            "epoch": self.epoch,
            "loss_history": self.loss_history,
            "train_acc_history": self.train_acc_history,
            "val_acc_history": self.val_acc_history,
        }
        filename = "%s_epoch_%d.pkl" % (os.fspath(self.checkpoint_name), self.epoch)
        if self.verbose:
            print('Saving checkpoint to "%s"' % filename)
        with open(filename, "wb") as f:
            pickle.dump(checkpoint, f)

    def check_accuracy(self, X, y, num_samples=None, batch_size=100):
        """Fraction of samples the model classifies correctly.

        Parameters
        ----------
        X : array_like, shape (N, d_1, ..., d_k)
        y : array_like of int, shape (N,)
        num_samples : int, optional
            When given and smaller than N, evaluate on that many samples drawn with replacement
            by ``np.random.choice`` (as the course does).
        batch_size : int, default 100
            Samples per call of ``model.loss`` (bounds the memory used).

        Returns
        -------
        float
        """
        num_samples = _optional_count(num_samples, "num_samples")
        batch_size = val.integer(batch_size, "batch_size", 1)
        N = X.shape[0]
        if N == 0:
            raise ValueError("check_accuracy: X is empty")
        if num_samples is not None and N > num_samples:
            mask = np.random.choice(N, num_samples)
            N = num_samples
            X = X[mask]
            y = y[mask]

        y_pred = []
        for start in range(0, N, batch_size):
            scores = self.model.loss(X[start:start + batch_size])
            y_pred.append(np.argmax(scores, axis=1))
        return np.mean(np.hstack(y_pred) == y)

    def train(self):
        """Run the optimization: ``num_epochs * max(N_train // batch_size, 1)`` updates.

        Checks train and validation accuracy at the first iteration, after every epoch and at
        the last iteration (saving a checkpoint each time when ``checkpoint_name`` is set),
        decays the learning rates after every epoch, and finally writes the parameters with the
        best validation accuracy back into ``model.params``.
        """
        num_train = self.X_train.shape[0]
        iterations_per_epoch = max(num_train // self.batch_size, 1)
        num_iterations = self.num_epochs * iterations_per_epoch

        for t in range(num_iterations):
            self._step()

            if self.verbose and t % self.print_every == 0:
                print("(Iteration %d / %d) loss: %f"
                      % (t + 1, num_iterations, self.loss_history[-1]))

            epoch_end = (t + 1) % iterations_per_epoch == 0
            if epoch_end:
                self.epoch += 1
                for config in self.optim_configs.values():
                    if "learning_rate" in config:
                        config["learning_rate"] *= self.lr_decay

            if t == 0 or t == num_iterations - 1 or epoch_end:
                train_acc = self.check_accuracy(self.X_train, self.y_train,
                                                num_samples=self.num_train_samples)
                val_acc = self.check_accuracy(self.X_val, self.y_val,
                                              num_samples=self.num_val_samples)
                self.train_acc_history.append(train_acc)
                self.val_acc_history.append(val_acc)
                self._save_checkpoint()

                if self.verbose:
                    print("(Epoch %d / %d) train acc: %f; val_acc: %f"
                          % (self.epoch, self.num_epochs, train_acc, val_acc))

                if val_acc > self.best_val_acc:
                    self.best_val_acc = val_acc
                    self.best_params = {k: v.copy() for k, v in self.model.params.items()}

        for name, value in self.best_params.items():
            self.model.params[name] = value.copy()
