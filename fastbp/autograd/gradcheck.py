"""``gradcheck``: every gradient the engine computes, against central differences in float64.

The inputs are copied to float64 leaves (the originals and their ``.grad`` are untouched).  The
analytical Jacobian comes from one backward pass per output element (a one-hot upstream
gradient through a retained graph); the numerical one perturbs each input element by ±eps and
re-evaluates `f` under ``no_grad``.  Tolerances follow ``torch.autograd.gradcheck``.
"""

import numpy as np

from .tensor import Tensor, no_grad

__all__ = ["gradcheck", "GradcheckError"]


class GradcheckError(AssertionError):
    """An analytical gradient disagreed with the finite-difference one."""


def _output(f, inputs):
    out = f(*inputs)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: f must return a Tensor, got {type(out).__name__}")
    return out


def _analytical(f, inputs, checked):
    out = _output(f, inputs)
    jac = [np.zeros((out.size, inputs[i].size)) for i in checked]
    if out.requires_grad:
        for row in range(out.size):
            for i in checked:
                inputs[i].zero_grad()
            seed = np.zeros(out.size)
            seed[row] = 1.0
            out.backward(seed.reshape(out.shape), retain_graph=True)
            for col, i in enumerate(checked):
                if inputs[i].grad is not None:
                    jac[col][row] = inputs[i].grad.reshape(-1)
    return out.data.astype(np.float64), jac


def _numerical(f, inputs, checked, n_out, eps):
    jac = []
    with no_grad():
        for i in checked:
            flat = inputs[i].data.reshape(-1)
            cols = np.zeros((n_out, flat.size))
            for j in range(flat.size):
                old = flat[j]
                flat[j] = old + eps
                plus = np.asarray(_output(f, inputs).data, np.float64).reshape(-1)
                flat[j] = old - eps
                minus = np.asarray(_output(f, inputs).data, np.float64).reshape(-1)
                flat[j] = old
                cols[:, j] = (plus - minus) / (2 * eps)
            jac.append(cols)
    return jac


def gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-3):
    """Check ``f``'s gradients with respect to every input that requires grad.

    Parameters
    ----------
    f : callable
        ``f(*tensors) -> Tensor`` (any shape), built from autograd ops.
    inputs : sequence of Tensor or array_like
        Tensors with ``requires_grad=True`` are checked (as float64 copies); the others are
        passed as float64 constants.
    eps : float
        Central-difference step.
    atol, rtol : float
        Pass when ``|analytical - numerical| <= atol + rtol * |numerical|`` everywhere.

    Returns
    -------
    True

    Raises
    ------
    GradcheckError
        Naming the input, the worst element (input index, output index), both values.
    ValueError
        If no input requires grad.
    """
    inputs = [Tensor(np.array(t.data if isinstance(t, Tensor) else t, np.float64),
                     requires_grad=isinstance(t, Tensor) and t.requires_grad) for t in inputs]
    checked = [i for i, t in enumerate(inputs) if t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input requires grad")
    value, analytical = _analytical(f, inputs, checked)
    numerical = _numerical(f, inputs, checked, value.size, eps)
    for col, i in enumerate(checked):
        a, n = analytical[col], numerical[col]
        excess = np.abs(a - n) - (atol + rtol * np.abs(n))
        if excess.size and excess.max() > 0:
            out_i, in_j = np.unravel_index(int(np.argmax(excess)), excess.shape)
            shape = inputs[i].shape
            where = tuple(int(k) for k in np.unravel_index(in_j, shape)) if shape else ()
            raise GradcheckError(
                f"gradcheck: input {i}: d output[{out_i}] / d input{list(where)} is "
                f"{a[out_i, in_j]!r} by backward but {n[out_i, in_j]!r} by central differences "
                f"(eps={eps}, atol={atol}, rtol={rtol})")
    return True
