"""fastbp.sklearn: scikit-learn's estimator checks, exact agreement with scikit-learn's MLP in
float64, accuracy of the float32 default, validation, persistence and model selection."""

import copy
import pickle
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn", minversion="1.6")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.model_selection import train_test_split as sk_split  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkClassifier  # noqa: E402
from sklearn.neural_network import MLPRegressor as SkRegressor  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils._param_validation import InvalidParameterError  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import fastbp  # noqa: E402
from helpers import run_python  # noqa: E402
from fastbp.data import load_digits, load_mnist  # noqa: E402
from fastbp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402


@pytest.fixture(autouse=True)
def _quiet_convergence():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits()
    return X.astype(np.float64), y


# ------------------------------------------------------------------ scikit-learn's own checks


def _expected_failed_checks(estimator):
    if estimator.dtype == "float64":
        return {}
    expected = {"check_sample_weight_equivalence_on_dense_data":
                "float32: weights and repeated rows agree to float32 rounding, the check asks "
                "rtol=1e-7 (passes with dtype='float64')"}
    return expected


@parametrize_with_checks([
    MLPClassifier(max_iter=100),
    MLPRegressor(max_iter=100),
    # plain momentum SGD without L2: the one-call compiled step; float64 regression
    MLPClassifier(max_iter=100, solver="sgd", alpha=0, nesterovs_momentum=False,
                  learning_rate_init=0.1),
    MLPRegressor(max_iter=100, solver="sgd", activation="tanh", dtype="float64"),
    # (with max_iter=100, float32 L-BFGS fits the toy multilabel set until some sigmoid outputs
    # round to exactly 1.0, which check_classifiers_multilabel_output_format_predict_proba
    # refuses; 30 iterations also keep these checks fast)
    MLPClassifier(max_iter=30, solver="lbfgs"),
], expected_failed_checks=_expected_failed_checks)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# ------------------------------------------------- same results as scikit-learn (float64)

SOLVERS = {
    "adam": dict(solver="adam"),
    "adam-l2-early": dict(solver="adam", alpha=1e-2, early_stopping=True, n_iter_no_change=2),
    "adam-compiled": dict(solver="adam", alpha=0),  # the one-call compiled Adam step
    "sgd-nesterov-invscaling": dict(solver="sgd", learning_rate="invscaling",
                                    learning_rate_init=0.2),
    "sgd-adaptive": dict(solver="sgd", learning_rate="adaptive", learning_rate_init=0.05,
                         tol=0.5, n_iter_no_change=1),
    "sgd-compiled": dict(solver="sgd", alpha=0, nesterovs_momentum=False, momentum=0.5,
                         learning_rate_init=0.05),
    "sgd-plain-batch7": dict(solver="sgd", momentum=0, batch_size=7, shuffle=False,
                             learning_rate_init=0.02),
    "lbfgs-l2": dict(solver="lbfgs", alpha=1e-2),
}


def _targets(kind, X, y):
    if kind == "multiclass":
        return y
    if kind == "binary":
        return np.where(y > 4, "big", "small")
    if kind == "multilabel":
        return np.stack([y > 4, y % 2 == 0, y == 3], axis=1).astype(int)
    if kind == "regression":
        return X[:, 10:20].sum(axis=1) - X[:, 40:45].sum(axis=1)
    return np.stack([X[:, 10:20].sum(axis=1), X[:, 30:33].mean(axis=1)], axis=1)


def _assert_same_fit(ours, theirs, rtol=1e-9):
    assert [c.shape for c in ours.coefs_] == [c.shape for c in theirs.coefs_]
    assert [b.shape for b in ours.intercepts_] == [b.shape for b in theirs.intercepts_]
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-12)
    fitted = {name for name in vars(theirs) if name.endswith("_") and not name.startswith("_")}
    assert {name for name in vars(ours) if name.endswith("_") and not name.startswith("_")} \
        == fitted
    if "loss_curve_" in fitted:  # the stochastic solvers
        np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=rtol)
    for name in ("n_iter_", "t_", "n_layers_", "n_outputs_", "out_activation_",
                 "n_features_in_"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=rtol)
    for name in {"best_loss_", "best_validation_score_"} & fitted:
        assert (getattr(ours, name) is None) == (getattr(theirs, name) is None), name
        if getattr(theirs, name) is not None:
            assert getattr(ours, name) == pytest.approx(getattr(theirs, name), rel=rtol)
    if getattr(theirs, "validation_scores_", None) is not None:
        np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_)


KINDS = ["multiclass", "binary", "multilabel", "regression", "regression-2d"]


def _fit_both(digits, solver, kind, weighted=False):
    X, y = digits
    X, y = X[:300], y[:300]
    target = _targets(kind, X, y)
    weights = np.random.default_rng(5).uniform(0.1, 3.0, len(X)) if weighted else None
    params = dict(hidden_layer_sizes=(12, 9), max_iter=6, random_state=3, **SOLVERS[solver])
    ours_cls, theirs_cls = ((MLPRegressor, SkRegressor) if kind.startswith("regression")
                            else (MLPClassifier, SkClassifier))
    ours = ours_cls(dtype="float64", **params).fit(X, target, sample_weight=weights)
    theirs = theirs_cls(**params).fit(X, target, sample_weight=weights)
    return X, ours, theirs


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("kind", KINDS)
def test_float64_fit_equals_scikit_learn(digits, solver, kind):
    """Same init draws, shuffles, L2 scaling, schedules and stopping: equal weights."""
    X, ours, theirs = _fit_both(digits, solver, kind)
    _assert_same_fit(ours, theirs)
    np.testing.assert_allclose(ours.predict(X) if kind.startswith("regression")
                               else ours.predict_proba(X),
                               theirs.predict(X) if kind.startswith("regression")
                               else theirs.predict_proba(X), rtol=1e-9, atol=1e-12)
    if not kind.startswith("regression"):
        np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
        np.testing.assert_array_equal(ours.classes_, theirs.classes_)


@pytest.mark.parametrize("solver", ["adam-l2-early", "sgd-compiled", "sgd-nesterov-invscaling",
                                    "lbfgs-l2"])
@pytest.mark.parametrize("kind", KINDS)
def test_float64_weighted_fit_equals_scikit_learn(digits, solver, kind):
    """sample_weight: weighted losses and gradients, L2 over the batch's weight sum."""
    _, ours, theirs = _fit_both(digits, solver, kind, weighted=True)
    _assert_same_fit(ours, theirs)


@pytest.mark.parametrize("solver,compiled", [
    ("adam-compiled", True), ("sgd-compiled", True),
    ("adam", True), ("adam-l2-early", True), ("sgd-plain-batch7", True),  # alpha > 0
    ("sgd-nesterov-invscaling", False), ("sgd-heavy-ball-l2", False)])
def test_one_call_compiled_step_where_the_solver_allows(digits, solver, compiled):
    """Adam (any alpha) and SGD without Nesterov (with momentum 0 where alpha > 0: weight decay
    on the weights only, ``decay_biases=False``) train on the one-call compiled step; Nesterov
    and heavy-ball SGD with alpha > 0 on the kernel-by-kernel path."""
    X, y = digits
    params = SOLVERS.get(solver) or dict(solver="sgd", nesterovs_momentum=False, alpha=1e-3)
    est = MLPClassifier((9,), max_iter=2, random_state=0, **params).fit(X[:100], y[:100])
    assert bool(est._model.model._step_cache.compiled) is compiled
    assert est._solver.optimizer.decay_biases is False


def test_adaptive_schedule_really_lowered_the_rate(digits):
    """The sgd-adaptive case above is only a test of the rescaled momentum if the rate moved."""
    X, y = digits
    clf = MLPClassifier(hidden_layer_sizes=(12, 9), max_iter=6, random_state=3,
                        dtype="float64", **SOLVERS["sgd-adaptive"]).fit(X[:300], y[:300])
    assert clf._solver.learning_rate < 0.05 / 5 * 1.0001


@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh"])
def test_float64_hidden_activations_equal_scikit_learn(digits, activation):
    X, y = digits
    params = dict(hidden_layer_sizes=(10,), activation=activation, max_iter=4, random_state=0)
    ours = MLPClassifier(dtype="float64", **params).fit(X[:200], y[:200])
    _assert_same_fit(ours, SkClassifier(**params).fit(X[:200], y[:200]))


def test_partial_fit_and_warm_start_equal_scikit_learn(digits):
    X, y = digits
    X, y = X[:240], y[:240]
    params = dict(hidden_layer_sizes=(8,), random_state=1, solver="sgd",
                  learning_rate_init=0.1)
    ours, theirs = MLPClassifier(dtype="float64", **params), SkClassifier(**params)
    weights = np.linspace(0.5, 2.0, len(X))
    for start in (0, 80, 160):  # batches with not every class in each; weighted in the middle
        part = slice(start, start + 80)
        w = weights[part] if start == 80 else None
        ours.partial_fit(X[part], y[part], sample_weight=w, classes=np.arange(10))
        theirs.partial_fit(X[part], y[part], sample_weight=w, classes=np.arange(10))
    _assert_same_fit(ours, theirs)
    ours.set_params(warm_start=True, max_iter=3)
    theirs.set_params(warm_start=True, max_iter=3)
    _assert_same_fit(ours.fit(X, y), theirs.fit(X, y))


# ------------------------------------------------------------ float32 accuracy and speed path


def test_digits_accuracy_within_one_point_of_scikit_learn(digits):
    X, y = digits
    X_train, X_test, y_train, y_test = sk_split(X, y, test_size=0.25, random_state=0,
                                                stratify=y)
    params = dict(hidden_layer_sizes=(64,), max_iter=60, random_state=0)
    ours = MLPClassifier(**params).fit(X_train, y_train)
    theirs = SkClassifier(**params).fit(X_train, y_train)
    assert [c.shape for c in ours.coefs_] == [c.shape for c in theirs.coefs_]
    assert ours.coefs_[0].dtype == np.float32
    ours_acc, theirs_acc = ours.score(X_test, y_test), theirs.score(X_test, y_test)
    assert theirs_acc > 0.9
    assert abs(ours_acc - theirs_acc) <= 0.01, (ours_acc, theirs_acc)


def test_mnist_accuracy_within_one_point_of_scikit_learn(mnist_dir):
    X, y = load_mnist(mnist_dir, "t10k")
    X_train, y_train, X_test, y_test = X[:8000], y[:8000], X[8000:], y[8000:]
    params = dict(hidden_layer_sizes=(32,), batch_size=64, max_iter=2, random_state=0)
    ours = MLPClassifier(**params).fit(X_train, y_train)
    theirs = SkClassifier(**params).fit(X_train, y_train)  # float32 data: it trains in float32
    assert [c.shape for c in ours.coefs_] == [(784, 32), (32, 10)]
    ours_acc, theirs_acc = ours.score(X_test, y_test), theirs.score(X_test, y_test)
    assert theirs_acc > 0.9
    assert abs(ours_acc - theirs_acc) <= 0.01, (ours_acc, theirs_acc)


def test_regression_r2_within_0_02_of_scikit_learn():
    X, y = make_regression(n_samples=1200, n_features=12, n_informative=8, n_targets=2,
                           noise=5.0, random_state=0)
    y = y + 0.02 * y ** 2  # a little curvature, so the hidden layer matters
    y = (y - y.mean(axis=0)) / y.std(axis=0)
    X_train, X_test, y_train, y_test = sk_split(X, y, test_size=0.25, random_state=0)
    params = dict(hidden_layer_sizes=(32,), max_iter=80, random_state=0)
    ours = MLPRegressor(**params).fit(X_train, y_train)
    theirs = SkRegressor(**params).fit(X_train, y_train)
    assert [c.shape for c in ours.coefs_] == [c.shape for c in theirs.coefs_]
    ours_r2, theirs_r2 = ours.score(X_test, y_test), theirs.score(X_test, y_test)
    assert theirs_r2 > 0.8
    assert abs(ours_r2 - theirs_r2) <= 0.02, (ours_r2, theirs_r2)


@pytest.mark.parametrize("activation", ["leaky_relu", "elu", "gelu"])
def test_fastbp_activations_train(digits, activation):
    X, y = digits
    clf = MLPClassifier((32,), activation=activation, max_iter=30, random_state=0)
    assert clf.fit(X[:1200], y[:1200]).score(X[1200:], y[1200:]) > 0.85


def test_coefs_are_the_networks_parameters(digits):
    """Reading coefs_ costs nothing: they are the arrays the steps update in place, and
    writing into them changes the predictions."""
    X, y = digits
    clf = MLPClassifier((16,), max_iter=2, random_state=0).partial_fit(X, y, classes=range(10))
    arrays = clf.coefs_ + clf.intercepts_
    before = [a.copy() for a in arrays]
    clf.partial_fit(X, y)
    assert all(a is b for a, b in zip(clf.coefs_ + clf.intercepts_, arrays))
    assert all(not np.array_equal(a, b) for a, b in zip(arrays, before))
    clf.coefs_[-1][:] = 0
    clf.intercepts_[-1][:] = np.arange(10)
    assert (clf.predict(X[:5]) == 9).all()
    # arrays replaced by the user (any float dtype) are taken up, in the estimator's dtype
    clf.intercepts_[-1] = np.arange(10.0)[::-1]
    assert (clf.predict(X[:5]) == 0).all()
    assert clf.intercepts_[-1].dtype == np.float32


def test_output_dtypes_follow_the_input_like_scikit_learn(digits):
    X, y = digits
    clf = MLPClassifier((8,), max_iter=2, random_state=0).fit(X, y)
    assert clf.predict_proba(X[:4]).dtype == np.float64
    assert clf.predict_proba(X[:4].astype(np.float32)).dtype == np.float32
    proba = clf.predict_proba(X[:50])
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(clf.predict_log_proba(X[:50]), np.log(proba), rtol=1e-6)
    binary = MLPClassifier((8,), max_iter=2, random_state=0).fit(X, y > 4)
    assert binary.coefs_[-1].shape == (8, 1) and binary.out_activation_ == "logistic"
    assert binary.predict_proba(X[:3]).shape == (3, 2)
    multilabel = MLPClassifier((8,), max_iter=2, random_state=0).fit(
        X, np.stack([y > 4, y < 2], axis=1))
    assert multilabel.predict(X[:3]).shape == (3, 2)


def test_thread_count_does_not_change_the_fit(digits):
    X, y = digits
    fits = []
    try:
        for threads in (1, 2):
            fastbp.set_num_threads(threads)
            fits.append(MLPClassifier((64,), max_iter=3, random_state=0).fit(X, y))
    finally:
        fastbp.set_num_threads(None)
    for a, b in zip(fits[0].coefs_, fits[1].coefs_):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------- validation errors


def test_bad_input_is_rejected_like_scikit_learn(digits):
    X, y = digits
    X, y = X[:100], y[:100]
    clf = MLPClassifier((4,), max_iter=1)
    with pytest.raises(NotFittedError):
        clf.predict(X)
    for bad in (np.nan, np.inf):
        X_bad = X.copy()
        X_bad[3, 5] = bad
        with pytest.raises(ValueError, match="Input X contains"):
            clone(clf).fit(X_bad, y)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        clone(clf).fit(X, y[:-1])
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        clone(clf).partial_fit(X, y)
    fitted = clone(clf).partial_fit(X, y, classes=np.arange(10))
    with pytest.raises(ValueError, match="`y` has classes not in `self.classes_`"):
        fitted.partial_fit(X, y + 10)
    with pytest.raises(ValueError, match="features"):
        fitted.predict(X[:, :10])
    with pytest.raises(InvalidParameterError, match="activation"):
        MLPClassifier(activation="swish").fit(X, y)
    with pytest.raises(InvalidParameterError, match="dtype"):
        MLPClassifier(dtype="float16").fit(X, y)
    with pytest.raises(AttributeError, match="partial_fit"):
        MLPClassifier(solver="lbfgs").partial_fit
    with pytest.raises(ValueError, match="early_stopping"):
        MLPRegressor(early_stopping=True).partial_fit(X, y)
    with pytest.raises(ValueError, match="hidden_layer_sizes must be > 0"):
        MLPClassifier(hidden_layer_sizes=(4, 0)).fit(X, y)
    with pytest.raises(ValueError, match="too large for float32"):
        MLPRegressor(hidden_layer_sizes=(4,), max_iter=1).fit(X * 1e300, y)
    with pytest.raises(TypeError, match="[Ss]parse"):
        from scipy.sparse import csr_matrix
        MLPClassifier((4,), max_iter=1).fit(csr_matrix(X), y)


# --------------------------------------------------------- persistence and model selection


def test_pickle_and_deepcopy_keep_predictions_and_training_state(digits):
    X, y = digits
    clf = MLPClassifier((16,), solver="sgd", random_state=0, max_iter=3).fit(X, y)
    for copied in (pickle.loads(pickle.dumps(clf)), copy.deepcopy(clf)):
        np.testing.assert_array_equal(copied.predict_proba(X), clf.predict_proba(X))
        assert "_model" not in pickle.loads(pickle.dumps(clf)).__dict__
    twin = pickle.loads(pickle.dumps(clf))
    clf.partial_fit(X, y)
    twin.partial_fit(X, y)  # momentum buffers travelled with it
    for a, b in zip(clf.coefs_, twin.coefs_):
        np.testing.assert_array_equal(a, b)


def test_clone_pipeline_grid_search_and_cross_val_score(digits):
    X, y = digits
    X, y = X[:600], y[:600]
    clf = MLPClassifier((16,), max_iter=30, learning_rate_init=0.01, random_state=0)
    assert clone(clf).get_params() == clf.get_params()
    pipe = make_pipeline(StandardScaler(), clf)
    assert pipe.fit(X, y).score(X, y) > 0.95
    scores = cross_val_score(pipe, X, y, cv=3)
    reference = cross_val_score(make_pipeline(StandardScaler(), SkClassifier(
        **{k: v for k, v in clf.get_params().items() if k != "dtype"})), X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.75
    assert abs(scores.mean() - reference.mean()) < 0.02, (scores, reference)
    for n_jobs in (1, 2):
        search = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1e-1]}, cv=2,
                              n_jobs=n_jobs).fit(X, y)
        assert search.best_score_ > 0.75
        assert isinstance(search.best_estimator_[-1], MLPClassifier)
        assert search.best_estimator_[-1].n_iter_ > 0


def test_convergence_warning_and_verbose(digits, capsys):
    X, y = digits
    with pytest.warns(ConvergenceWarning, match="Maximum iterations \\(2\\)"):
        MLPClassifier((4,), max_iter=2, verbose=True).fit(X[:50], y[:50])
    assert "Iteration 2, loss = " in capsys.readouterr().out
    with pytest.warns(UserWarning, match="batch_size"):
        MLPClassifier((4,), max_iter=1, batch_size=500).fit(X[:50], y[:50])


# -------------------------------------------------------------------- optional dependency


def _run(code):
    return run_python("-c", code)


def test_import_fastbp_does_not_import_scikit_learn():
    proc = _run("import sys, fastbp; assert 'sklearn' not in sys.modules, 'imported'")
    assert proc.returncode == 0, proc.stderr


def test_without_scikit_learn_the_error_names_the_extra():
    proc = _run("import sys; sys.modules['sklearn'] = None\n"
                "try:\n    import fastbp.sklearn\nexcept ImportError as e:\n    print(e)")
    assert proc.returncode == 0, proc.stderr
    assert 'pip install "fastbp[sklearn]"' in proc.stdout
