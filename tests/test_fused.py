"""fastbp._kernels._fused against its NumPy twin and against the unfused kernels."""

import numpy as np
import pytest
from helpers import DTYPES, THREADS, assert_close

from fastbp import _kernels, reference
from fastbp._specs import FUSED_ACTIVATIONS, FUSED_FORMS, FUSED_FROM_INPUT
from fastbp.reference import fused as ref_fused

ALPHA = 0.7  # for the rows with a real parameter


def _alpha(code):
    row = FUSED_FORMS.get(code, (None,))[0]
    return ALPHA if row is not None and row.param and not row.forms else 0.0


#: every fused code of the spec table, with the alpha it is tried at
ACTS = [(code, _alpha(code)) for code in FUSED_ACTIVATIONS]
SHAPES = [(1, 1, 1), (7, 5, 33), (33, 7, 300), (0, 3, 4), (5, 0, 3)]


def test_activation_names_agree_with_the_reference():
    from fastbp._kernels import _fused

    assert _fused.ACTIVATION_CODES == ref_fused.ACTIVATION_CODES
    assert _fused.DIFFERENTIATED_FROM_INPUT == ref_fused.DIFFERENTIATED_FROM_INPUT


@pytest.mark.parametrize("act,alpha", ACTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,m", SHAPES)
@pytest.mark.parametrize("threads", THREADS)
def test_linear_act_forward(rng, act, alpha, dtype, n, d, m, threads):
    x = rng.standard_normal((n, d)).astype(dtype)
    w = rng.standard_normal((d, m)).astype(dtype)
    b = rng.standard_normal(m).astype(dtype)
    x.setflags(write=False)
    got, exp = np.full((n, m), np.nan, dtype), np.empty((n, m), dtype)
    pre_got, pre_exp = np.empty((n, m), dtype), np.empty((n, m), dtype)
    _kernels.linear_act_forward(x, w, b, act, alpha, pre_got, got, threads)
    reference.linear_act_forward(x, w, b, act, alpha, pre_exp, exp)
    assert_close(got, exp, dtype, scale=10)
    assert_close(pre_got, pre_exp, dtype, scale=10)
    if act not in FUSED_FROM_INPUT:
        no_pre = np.empty((n, m), dtype)
        _kernels.linear_act_forward(x, w, None, act, alpha, None, no_pre, threads)
        reference.linear_act_forward(x, w, None, act, alpha, None, exp)
        assert_close(no_pre, exp, dtype, scale=10)


@pytest.mark.parametrize("act,alpha", ACTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,m", [(1, 1), (7, 33), (65, 300), (0, 5)])
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_act_forward(rng, act, alpha, dtype, n, m, threads, with_bias):
    """In place: z := act(z + b), pre := z + b; the epilogue of linear_act_forward alone."""
    z = rng.standard_normal((n, m)).astype(dtype)
    b = rng.standard_normal(m).astype(dtype) if with_bias else None
    if b is not None:
        b.setflags(write=False)
    got, exp = z.copy(), z.copy()
    pre_got, pre_exp = np.full((n, m), np.nan, dtype), np.empty((n, m), dtype)
    _kernels.bias_act_forward(got, b, act, alpha, pre_got, threads)
    reference.bias_act_forward(exp, b, act, alpha, pre_exp)
    assert_close(got, exp, dtype)
    assert_close(pre_got, z + (b if b is not None else 0), dtype)
    assert_close(pre_exp, pre_got, dtype)
    if act not in FUSED_FROM_INPUT:
        no_pre = z.copy()
        _kernels.bias_act_forward(no_pre, b, act, alpha, None, threads)
        np.testing.assert_array_equal(no_pre, got)
    else:
        for fn in (_kernels.bias_act_forward, reference.bias_act_forward):
            with pytest.raises(ValueError, match="needs `pre`"):
                fn(z.copy(), b, act, alpha, None)


@pytest.mark.parametrize("act,alpha", ACTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,m", [(1, 1), (7, 33), (65, 300), (0, 5)])
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("scale,beta", [(1.0, 0.0), (-0.1, 1.0)])
def test_act_backward_bias(rng, act, alpha, dtype, n, m, threads, scale, beta):
    z = rng.standard_normal((n, m)).astype(dtype)
    saved = np.empty_like(z)
    ref_fused._apply(act, alpha, z, saved)
    if act in FUSED_FROM_INPUT:
        saved = z
    dout = rng.standard_normal((n, m)).astype(dtype)
    db0 = rng.standard_normal(m).astype(dtype)
    dz, db = np.empty_like(dout), db0.copy()
    dz_exp, db_exp = np.empty_like(dout), db0.copy()
    _kernels.act_backward_bias(dout, saved, act, alpha, dz, db, scale, beta, threads)
    reference.act_backward_bias(dout, saved, act, alpha, dz_exp, db_exp, scale, beta)
    assert_close(dz, dz_exp, dtype)
    assert_close(db, db_exp, dtype, scale=10)
    inplace = dout.copy()
    _kernels.act_backward_bias(inplace, saved, act, alpha, inplace, None, 1.0, 0.0, threads)
    assert_close(inplace, dz_exp, dtype)


@pytest.mark.parametrize("act", list(FUSED_FORMS))
def test_fused_derivative_matches_elementwise_backward(rng, act):
    """The fused backward (from the output, or z) equals the elementwise backward (from x or y)."""
    row, form = FUSED_FORMS[act]
    alpha = _alpha(act)
    scalars = row.kernel_scalars(form if row.forms else alpha)
    z = rng.standard_normal((9, 40))
    z[0, :3] = [0.0, -0.0, 1e-300]
    a = np.empty_like(z)
    getattr(_kernels, row.name + "_forward")(z.reshape(-1), a.reshape(-1), *scalars)
    saved_by_elementwise = a if row.backward_reads == "output" else z
    dout = rng.standard_normal(z.shape)
    expected = np.empty_like(z)
    getattr(_kernels, row.name + "_backward")(dout.reshape(-1), saved_by_elementwise.reshape(-1),
                                              expected.reshape(-1), *scalars)
    dz = np.empty_like(z)
    saved = z if act in FUSED_FROM_INPUT else a
    _kernels.act_backward_bias(dout, saved, act, alpha, dz, None)
    assert_close(dz, expected, np.float64)


def test_db_identical_across_thread_counts(rng):
    dout = rng.standard_normal((500, 700)).astype(np.float32)
    saved = rng.standard_normal((500, 700)).astype(np.float32)
    results = []
    for threads in (1, 2, 4):
        db = np.empty(700, np.float32)
        _kernels.act_backward_bias(dout, saved, "relu", 0.0, np.empty_like(dout), db, 1.0, 0.0,
                                   threads)
        results.append(db)
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])


@pytest.mark.parametrize("fn", [_kernels.linear_act_forward, reference.linear_act_forward])
def test_bad_arguments(fn):
    x, w = np.ones((2, 3)), np.ones((3, 4))
    with pytest.raises(ValueError, match="activation must be one of"):
        fn(x, w, None, "swish", 0.0, None, np.empty((2, 4)))
    with pytest.raises(ValueError, match="needs `pre`"):
        fn(x, w, None, "gelu", 0.0, None, np.empty((2, 4)))
    if fn is _kernels.linear_act_forward:
        with pytest.raises(ValueError, match="out has shape"):
            fn(x, w, None, "relu", 0.0, None, np.empty((2, 5)))
        with pytest.raises(ValueError, match="b has length"):
            fn(x, w, np.ones(3), "relu", 0.0, None, np.empty((2, 4)))
        with pytest.raises(ValueError, match="saved has shape"):
            _kernels.act_backward_bias(np.ones((2, 3)), np.ones((2, 2)), "relu", 0.0,
                                       np.ones((2, 3)), None)
