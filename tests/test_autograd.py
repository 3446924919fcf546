"""fastbp.autograd semantics: the lectures' worked examples, gate patterns, fan-out, broadcasting,
retain_graph / no_grad, deep graphs, errors, dtypes, and optimizers on tensors.

Gradient correctness against finite differences, PyTorch and the backends lives in
test_autograd_oracle.py.
"""

import threading

import numpy as np
import pytest

import fastbp
from fastbp import optim
from fastbp.autograd import (Tensor, concatenate, dropout, exp, linear, maximum, minimum, mse,
                             no_grad, relu, sigmoid, softmax_cross_entropy, svm_hinge)


def leaves(*values, dtype=np.float64):
    return [Tensor(np.array(v, dtype), requires_grad=True) for v in values]


# ------------------------------------------------------------------ the lectures' examples


def test_lecture_add_then_multiply():
    x, y, z = leaves(-2.0, 5.0, -4.0)
    f = (x + y) * z
    f.backward()
    assert f.item() == -12.0
    assert (x.grad, y.grad, z.grad) == (-4.0, -4.0, 3.0)


def _sigmoid_neuron_gradients(w, x):
    s = 1 / (1 + np.exp(-(w[0] * x[0] + w[1] * x[1] + w[2])))
    ds = s * (1 - s)
    return s, [x[0] * ds, w[0] * ds, x[1] * ds, w[1] * ds, ds]


@pytest.mark.parametrize("gate", ["primitive ops", "sigmoid kernel"])
def test_lecture_sigmoid_neuron(gate):
    w0, x0, w1, x1, w2 = leaves(2.0, -1.0, -3.0, -2.0, -3.0)
    z = w0 * x0 + w1 * x1 + w2
    f = 1 / (1 + exp(-z)) if gate == "primitive ops" else sigmoid(z)
    f.backward()
    value, expected = _sigmoid_neuron_gradients([2.0, -3.0, -3.0], [-1.0, -2.0])
    assert f.item() == pytest.approx(0.73105857863, abs=1e-10)
    got = [t.grad for t in (w0, x0, w1, x1, w2)]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # the lecture's rounded numbers
    np.testing.assert_allclose(got, [-0.20, 0.39, -0.39, -0.59, 0.20], atol=0.005)


def test_lecture_squared_norm_of_matrix_vector_product():
    W = Tensor([[0.1, 0.5], [-0.3, 0.8]], requires_grad=True)
    x = Tensor([0.2, 0.4], requires_grad=True)
    q = W @ x
    f = (q * q).sum()
    f.backward()
    np.testing.assert_allclose(q.data, [0.22, 0.26], rtol=1e-12)
    assert f.item() == pytest.approx(0.116, rel=1e-12)
    np.testing.assert_allclose(W.grad, [[0.088, 0.176], [0.104, 0.208]], rtol=1e-12)
    np.testing.assert_allclose(x.grad, [-0.112, 0.636], rtol=1e-12)


def test_two_layer_relu_net_with_mse_matches_the_hand_derivation(rng):
    x = rng.standard_normal((6, 4))
    t = rng.standard_normal((6, 3))
    W1, b1, W2, b2 = leaves(rng.standard_normal((4, 5)), rng.standard_normal(5),
                            rng.standard_normal((5, 3)), rng.standard_normal(3))
    loss = mse(linear(relu(linear(x, W1, b1)), W2, b2), t)
    loss.backward()

    z = x @ W1.data + b1.data
    h = np.maximum(z, 0)
    pred = h @ W2.data + b2.data
    assert loss.item() == pytest.approx(np.mean((pred - t) ** 2), rel=1e-12)
    dpred = 2 * (pred - t) / pred.size
    dz = (dpred @ W2.data.T) * (z > 0)
    for tensor, expected in ((W2, h.T @ dpred), (b2, dpred.sum(0)), (W1, x.T @ dz),
                             (b1, dz.sum(0))):
        np.testing.assert_allclose(tensor.grad, expected, rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------------- gate patterns


def test_add_gate_distributes():
    a, b = leaves(3.0, -1.0)
    ((a + b) * 7.0).backward()
    assert a.grad == b.grad == 7.0


def test_mul_gate_swaps():
    a, b = leaves(3.0, -2.0)
    (a * b * 5.0).backward()
    assert (a.grad, b.grad) == (-10.0, 15.0)


@pytest.mark.parametrize("op,winner", [(maximum, 0), (minimum, 1)])
def test_max_and_min_gates_route(op, winner):
    a, b = leaves([4.0, 1.0], [2.0, 3.0])
    (op(a, b) * Tensor([10.0, 100.0])).backward(np.ones(2))
    routed = [[10.0, 0.0], [0.0, 100.0]]
    np.testing.assert_array_equal(a.grad, routed[winner])
    np.testing.assert_array_equal(b.grad, routed[1 - winner])


def test_max_gate_splits_a_tie_like_pytorch():
    a, b = leaves([2.0], [2.0])
    maximum(a, b).sum().backward()
    assert a.grad[0] == b.grad[0] == 0.5


def test_max_reduction_shares_ties_equally():
    x, = leaves([[1.0, 3.0, 3.0], [2.0, 0.0, -1.0]])
    x.max(axis=1).sum().backward()
    np.testing.assert_array_equal(x.grad, [[0, 0.5, 0.5], [1, 0, 0]])


def test_copy_gate_adds():
    x, = leaves(3.0)
    y = x * x * x  # x used three times
    y.backward()
    assert x.grad == 27.0


# ---------------------------------------------------------------- fan-out and shared weights


def test_fan_out_of_an_intermediate_sums_both_paths():
    x, = leaves(2.0)
    h = x * 3.0  # used twice below
    f = h * h + exp(h)
    f.backward()
    assert x.grad == pytest.approx(3 * (2 * 6.0 + np.exp(6.0)), rel=1e-14)


def test_shared_weights_accumulate_over_both_uses(rng):
    W, = leaves(rng.standard_normal((3, 3)))
    x = rng.standard_normal((2, 3))
    (x @ W @ W).sum().backward()
    g = np.ones((2, 3))
    expected = x.T @ g @ W.data.T + (x @ W.data).T @ g
    np.testing.assert_allclose(W.grad, expected, rtol=1e-12)


def test_residual_block_gradient(rng):
    x, W = leaves(rng.standard_normal((4, 3)), rng.standard_normal((3, 3)))
    (x + relu(linear(x, W))).sum().backward()
    z = x.data @ W.data
    g = np.ones((4, 3))
    np.testing.assert_allclose(x.grad, g + (g * (z > 0)) @ W.data.T, rtol=1e-12)


def test_fan_out_does_not_write_into_the_upstream_gradient():
    a, = leaves([1.0, 2.0])
    upstream = np.array([1.0, 1.0])
    y = a + a  # add returns the upstream gradient for both inputs
    y.backward(upstream)
    np.testing.assert_array_equal(upstream, [1.0, 1.0])
    np.testing.assert_array_equal(a.grad, [2.0, 2.0])


def test_leaf_gradients_never_alias_each_other():
    a, b = leaves([1.0, 2.0], [3.0, 4.0])
    (a + b).sum().backward()
    a.grad += 1
    np.testing.assert_array_equal(b.grad, [1.0, 1.0])


# ------------------------------------------------------------------------------ broadcasting


@pytest.mark.parametrize("sa,sb", [((3, 1), (4,)), ((2, 3, 4), (3, 1)), ((1,), (2, 2)),
                                   ((), (2, 3)), ((2, 1, 4), (1, 3, 1))])
def test_broadcast_gradients_sum_back_to_each_shape(rng, sa, sb):
    a, b = leaves(rng.standard_normal(sa), rng.standard_normal(sb))
    out = a * b
    g = rng.standard_normal(out.shape)
    out.backward(g)
    assert a.grad.shape == sa and b.grad.shape == sb
    full_a = np.broadcast_to(a.data, out.shape)
    full_b = np.broadcast_to(b.data, out.shape)
    lead_a, lead_b = out.ndim - len(sa), out.ndim - len(sb)
    np.testing.assert_allclose(
        a.grad, (g * full_b).sum(axis=tuple(range(lead_a))).sum(
            axis=tuple(i for i, n in enumerate(sa) if n == 1), keepdims=True).reshape(sa))
    np.testing.assert_allclose(
        b.grad, (g * full_a).sum(axis=tuple(range(lead_b))).sum(
            axis=tuple(i for i, n in enumerate(sb) if n == 1), keepdims=True).reshape(sb))


def test_bias_broadcast_over_the_batch():
    x = np.ones((5, 3))
    b, = leaves([0.0, 0.0, 0.0])
    (x + b).sum().backward()
    np.testing.assert_array_equal(b.grad, [5.0, 5.0, 5.0])


def test_ndarray_on_the_left_defers_to_the_tensor():
    a, = leaves([1.0, 2.0])
    y = np.array([3.0, 4.0]) * a
    assert isinstance(y, Tensor)
    y.sum().backward()
    np.testing.assert_array_equal(a.grad, [3.0, 4.0])


# --------------------------------------------------------------- retain_graph, no_grad, depth


def test_second_backward_on_a_freed_graph_raises_and_names_retain_graph():
    x, = leaves(2.0)
    y = x * x
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        y.backward()
    assert x.grad == 4.0  # nothing changed by the failed call


def test_retain_graph_allows_a_second_pass_and_grads_accumulate():
    x, = leaves(3.0)
    y = exp(x) * x
    y.backward(retain_graph=True)
    first = float(x.grad)
    y.backward()
    assert x.grad == pytest.approx(2 * first, rel=1e-15)
    assert first == pytest.approx(np.exp(3.0) * 4.0, rel=1e-14)


def test_retained_graph_gives_the_same_gradient_twice_for_every_saving_op(rng):
    x = Tensor(rng.standard_normal((4, 5)), requires_grad=True)
    W = Tensor(rng.standard_normal((5, 3)), requires_grad=True)
    loss = softmax_cross_entropy(sigmoid(linear(x, W)) * 3.0, [0, 1, 2, 0])
    loss.backward(retain_graph=True)
    g1 = W.grad.copy()
    W.zero_grad()
    loss.backward()
    np.testing.assert_array_equal(W.grad, g1)


def test_leaf_grad_accumulates_across_calls_until_zeroed():
    x, = leaves([1.0, 2.0])
    for _ in range(3):
        (x * 2.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [6.0, 6.0])
    x.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(x.grad, [0.0, 0.0])
    x.zero_grad()
    assert x.grad is None


def test_no_grad_records_nothing_as_context_and_decorator():
    x, = leaves([1.0, 2.0])
    with no_grad():
        y = relu(x * 2.0)
        assert not fastbp.autograd.is_grad_enabled()
    assert fastbp.autograd.is_grad_enabled()
    assert not y.requires_grad and y.is_leaf

    @no_grad()
    def f(t):
        return t * t

    z = f(x)
    assert not z.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        z.sum().backward()
    assert x.grad is None


def test_no_grad_decorator_restores_the_mode_after_recursion():
    @no_grad()
    def depth(n):
        assert not fastbp.autograd.is_grad_enabled()
        return 0 if n == 0 else 1 + depth(n - 1)

    assert depth(3) == 3
    assert fastbp.autograd.is_grad_enabled()
    assert depth.__name__ == "depth"


def test_no_grad_restores_the_mode_after_an_exception_and_nests():
    with pytest.raises(ZeroDivisionError):
        with no_grad():
            with no_grad():
                pass
            assert not fastbp.autograd.is_grad_enabled()
            1 / 0
    assert fastbp.autograd.is_grad_enabled()


def test_no_grad_is_per_thread():
    seen = []
    with no_grad():
        t = threading.Thread(target=lambda: seen.append(fastbp.autograd.is_grad_enabled()))
        t.start()
        t.join()
    assert seen == [True]


def test_a_chain_100000_deep_needs_no_recursion():
    x, = leaves(1.0)
    y = x
    for _ in range(100_000):
        y = y * 1.0 + 0.0
    y.backward()
    assert x.grad == 1.0
    del y  # freeing the chain must not overflow the C stack either


def test_backward_from_a_leaf_accumulates_the_given_gradient():
    x, = leaves([1.0, 2.0])
    x.backward(np.array([3.0, 4.0]))
    np.testing.assert_array_equal(x.grad, [3.0, 4.0])


# ----------------------------------------------------------------------------------- errors


def test_requires_grad_on_integer_data_is_a_type_error():
    with pytest.raises(TypeError, match="float32/float64"):
        Tensor([1, 2, 3], requires_grad=True)
    t = Tensor([1, 2, 3])
    assert t.dtype.kind == "i"
    with pytest.raises(TypeError, match="float32/float64"):
        t.requires_grad = True


@pytest.mark.parametrize("data,match", [(np.array(["a"]), "real numbers"),
                                        (np.array([1 + 2j]), "real numbers"),
                                        (np.zeros(2, np.float16), "float32 or float64")])
def test_unsupported_data_is_refused(data, match):
    with pytest.raises(TypeError, match=match):
        Tensor(data)


def test_requires_grad_must_be_a_bool_and_set_on_leaves_only():
    with pytest.raises(TypeError, match="True or False"):
        Tensor([1.0], requires_grad="yes")
    x, = leaves([1.0])
    with pytest.raises(RuntimeError, match="leaf"):
        (x * 2.0).requires_grad = False


@pytest.mark.parametrize("make", [
    lambda a, b: a @ b,
    lambda a, b: linear(a, b),
])
def test_matmul_shape_mismatch_names_both_shapes(make):
    a, b = leaves(np.ones((2, 3)), np.ones((4, 5)))
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 5\)"):
        make(a, b)


def test_broadcast_mismatch_names_both_shapes():
    a, b = leaves(np.ones((2, 3)), np.ones((4,)))
    with pytest.raises(ValueError, match=r"\(2,3\).*\(4,\)"):
        a + b


def test_linear_bias_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"b has shape \(4,\), expected \(5,\)"):
        linear(np.ones((2, 3)), np.ones((3, 5)), np.ones(4))


@pytest.mark.parametrize("loss", [softmax_cross_entropy, svm_hinge])
def test_labels_out_of_range_raise_before_anything_runs(loss):
    s, = leaves(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        loss(s, [0, 3])
    with pytest.raises(TypeError, match="integer"):
        loss(s, [0.0, 1.0])
    with pytest.raises(ValueError, match="shape"):
        loss(s, [0, 1, 2])
    assert s.grad is None


def test_losses_refuse_non_matrix_and_empty_scores():
    with pytest.raises(ValueError, match="2-D"):
        softmax_cross_entropy(np.zeros(3), [0])
    with pytest.raises(ValueError, match="empty"):
        softmax_cross_entropy(np.zeros((0, 3)), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        mse(np.zeros((2, 3)), np.zeros((3, 2)))


def test_backward_grad_checks():
    x, = leaves([1.0, 2.0])
    y = x * 2.0
    with pytest.raises(RuntimeError, match="shape \\(2,\\)"):
        y.backward()
    with pytest.raises(ValueError, match=r"grad has shape \(3,\).*\(2,\)"):
        y.backward(np.ones(3))
    with pytest.raises(TypeError, match="real numbers"):
        y.backward(np.array(["a", "b"]))
    assert x.grad is None
    y.backward(np.ones(2))  # the graph was not freed by the failed calls
    np.testing.assert_array_equal(x.grad, [2.0, 2.0])


def test_grad_setter_checks_shape():
    x, = leaves([1.0, 2.0])
    with pytest.raises(ValueError, match="shape"):
        x.grad = np.zeros(3)
    x.grad = [1, 1]
    assert x.grad.dtype == np.float64


def test_power_needs_a_scalar_exponent_and_item_one_element():
    x, = leaves([1.0, 2.0])
    with pytest.raises(TypeError, match="exponent"):
        x ** x
    with pytest.raises(ValueError, match="one element"):
        x.item()


def test_dropout_argument_checks():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dropout(np.ones(3), 1.0, 0)
    with pytest.raises(TypeError, match="seed"):
        dropout(np.ones(3), 0.5, 1.5)


# ----------------------------------------------------------------------------------- dtypes


def test_float32_stays_float32_end_to_end(rng):
    f32 = np.float32
    x = rng.standard_normal((8, 6)).astype(f32)
    W1, b1, W2 = (Tensor(a.astype(f32), requires_grad=True) for a in
                  (rng.standard_normal((6, 5)), np.zeros(5), rng.standard_normal((5, 4))))
    h = relu(linear(x, W1, b1)) * 0.5 + 1.0
    h = maximum(h, 1.2) / 2.0 - sigmoid(h) ** 2
    h = concatenate([h, exp(h)[:, :3]], axis=1).reshape(8, 8).T.mean(axis=0, keepdims=True)
    logits = linear(dropout(x, 0.25, 7), W1) @ W2 + h.T[:, :1]
    loss = softmax_cross_entropy(logits, rng.integers(0, 4, 8)) + mse(logits, np.zeros((8, 4), f32))
    for t in (h, logits, loss):
        assert t.dtype == f32
    loss.backward()
    for p in (W1, b1, W2):
        assert p.grad.dtype == f32 and p.grad.flags.c_contiguous


def test_integers_are_promoted_as_numpy_does():
    x = Tensor([1, 2])
    assert (x * 0.5).dtype == np.float64
    assert relu(x).dtype == np.float64
    w = Tensor(np.ones(2, np.float32), requires_grad=True)
    y = w * x  # float32 with int64 -> float64, the gradient comes back as float32
    assert y.dtype == np.float64
    y.sum().backward()
    assert w.grad.dtype == np.float32
    np.testing.assert_array_equal(w.grad, [1, 2])


def test_tensor_wraps_without_copy_and_detach_shares():
    a = np.ones(3)
    t = Tensor(a, requires_grad=True)
    assert t.data is a and t.numpy() is a
    d = t.detach()
    assert d.data is a and not d.requires_grad
    assert (t.shape, t.ndim, t.size, len(t)) == ((3,), 1, 3, 3)
    assert "requires_grad=True" in repr(t)


# ----------------------------------------------------------------------- indexing, shapes


def test_integer_array_indexing_accumulates_repeated_rows():
    x, = leaves(np.arange(6.0).reshape(3, 2))
    x[[0, 2, 2]].sum().backward()
    np.testing.assert_array_equal(x.grad, [[1, 1], [0, 0], [2, 2]])


def test_basic_indexing_and_slices():
    x, = leaves(np.arange(6.0).reshape(3, 2))
    (x[1] * 2.0 + x[0:2, 1:].sum()).sum().backward()
    np.testing.assert_array_equal(x.grad, [[0, 2], [2, 4], [0, 0]])


def test_concatenate_splits_the_gradient():
    a, b = leaves(np.ones((2, 2)), np.ones((2, 3)))
    (concatenate([a, b], axis=1) * np.arange(5.0)).sum().backward()
    np.testing.assert_array_equal(a.grad, [[0, 1], [0, 1]])
    np.testing.assert_array_equal(b.grad, [[2, 3, 4], [2, 3, 4]])


# ---------------------------------------------------------------------- optimizers on tensors


@pytest.mark.parametrize("make", [lambda: optim.SGD(0.1, momentum=0.9),
                                  lambda: optim.Adam(0.01), lambda: optim.RMSProp(0.01)])
@pytest.mark.parametrize("container", ["list", "dict"])
def test_optimizers_step_tensors_like_the_array_api(rng, make, container):
    arrays = {"W": rng.standard_normal((3, 2)), "b": rng.standard_normal(2)}
    grads = {"W": rng.standard_normal((3, 2)), "b": rng.standard_normal(2)}
    tensors = {k: Tensor(v.copy(), requires_grad=True) for k, v in arrays.items()}
    for k, t in tensors.items():
        t.grad = grads[k]
    by_arrays, by_tensors = make(), make()
    for _ in range(2):
        by_arrays.step(arrays, grads)
        by_tensors.step(list(tensors.values()) if container == "list" else tensors)
    for k in arrays:
        np.testing.assert_array_equal(tensors[k].data, arrays[k])


def test_optimizer_updates_in_place_and_skips_tensors_without_grad():
    a = np.ones(2)
    w = Tensor(a, requires_grad=True)
    frozen = Tensor(np.ones(2), requires_grad=True)
    (w * 3.0).sum().backward()
    optim.SGD(0.5).step([w, frozen])
    np.testing.assert_array_equal(a, [-0.5, -0.5])  # the wrapped array itself
    np.testing.assert_array_equal(frozen.data, [1.0, 1.0])


def test_optimizer_refuses_non_leaves_and_non_tensors_before_any_update():
    w, = leaves([1.0])
    y = w * 2.0
    y.backward()
    with pytest.raises(ValueError, match="leaf"):
        optim.SGD(0.1).step([w, y])
    with pytest.raises(TypeError, match="tensors"):
        optim.SGD(0.1).step([w, np.ones(1)])
    assert w.data[0] == 1.0


def test_training_a_small_net_with_autograd_lowers_the_loss(rng):
    x = rng.standard_normal((32, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    W1 = Tensor((rng.standard_normal((4, 16)) * 0.5).astype(np.float32), requires_grad=True)
    b1 = Tensor(np.zeros(16, np.float32), requires_grad=True)
    W2 = Tensor((rng.standard_normal((16, 2)) * 0.5).astype(np.float32), requires_grad=True)
    params = [W1, b1, W2]
    opt = optim.Adam(0.05)
    losses = []
    for _ in range(40):
        for p in params:
            p.zero_grad()
        h = relu(linear(x, W1, b1))
        loss = softmax_cross_entropy(linear(h + h * 0.1, W2), y)
        loss.backward()
        opt.step(params)
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


@pytest.mark.parametrize("layout", ["strided", "readonly"])
def test_non_contiguous_and_read_only_data_give_the_same_gradients(rng, layout):
    x = rng.standard_normal((5, 4))
    w = rng.standard_normal((4, 3))

    def grads(x_data, w_data):
        W = Tensor(w_data, requires_grad=True)
        X = Tensor(x_data, requires_grad=True)
        loss = softmax_cross_entropy(sigmoid(linear(relu(X), W)) @ W.T @ W, [0, 1, 2, 0, 1])
        loss.backward()
        return loss.item(), X.grad, W.grad

    if layout == "strided":
        xv, wv = np.asfortranarray(x), np.empty((4, 6))[:, ::2]
        wv[...] = w
    else:
        xv, wv = x.copy(), w.copy()
        xv.setflags(write=False)
        wv.setflags(write=False)
    expected = grads(x, w)
    got = grads(xv, wv)
    assert got[0] == pytest.approx(expected[0], rel=1e-14)
    for a, b in zip(got[1:], expected[1:]):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
