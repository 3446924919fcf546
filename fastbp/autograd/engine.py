"""The backward pass: reverse-mode accumulation over the recorded graph.

Design
------
a. Order without recursion.  A first walk (an explicit stack, never Python recursion, so a
   chain 100,000 ops deep works) counts, for every tensor reachable from the root, how many
   recorded edges lead out of it (its consumers inside this graph).  The second walk is Kahn's
   algorithm in reverse: a tensor is processed once all its consumers have passed their
   gradient to it, so each node's backward runs exactly once, after its gradient is complete
   (the reverse topological order the lectures describe), whatever the fan-out.
b. Fan-out ("copy gate: gradient adder").  The gradients arriving at one tensor are summed.  The
   first one is kept by reference; later ones are added in place into a buffer the engine owns
   (the first fresh gradient to arrive; a new buffer only when none is fresh).
   A gradient an op returns is the engine's to own (and to accumulate into, or to hand to a
   leaf as its ``.grad``) only if it is a fresh array: not the upstream gradient itself and not
   a view (``base is None``).  The upstream gradient, views of it and broadcast views are never
   written.  Ops never return an array they saved for backward, so retained graphs stay intact.
c. Leaves.  ``.grad`` accumulates across backward calls, as in PyTorch: the first gradient is
   stored (taken over when the engine owns it, copied otherwise), later ones are added in
   place.  Gradients are cast to the tensor's dtype and checked against its shape on arrival
   (an op returning a wrong shape is a bug and raises RuntimeError, never a silent broadcast).
d. Freeing.  After a node's backward ran, its closure (and everything it saved) is dropped
   unless ``retain_graph``; a later pass through the node raises RuntimeError before any
   gradient is computed, since the first walk visits every node first.
"""

import numpy as np

__all__ = ["run_backward"]

_FREED = ("backward: the graph was already freed by an earlier backward pass (the values saved "
          "for it are gone); pass retain_graph=True to the first backward to run it again")


def _consumers(root):
    """{id(tensor): number of recorded edges into it} over the graph below `root` (a non-leaf).

    Raises RuntimeError if a node on the way was freed by an earlier pass.
    """
    counts = {}
    stack = [root]
    while stack:
        t = stack.pop()
        if t._backward is None:
            raise RuntimeError(_FREED)
        for inp in t._inputs:
            if inp is None:
                continue
            key = id(inp)
            n = counts.get(key)
            if n is None:
                counts[key] = 1
                if inp._inputs is not None:  # leaves have nothing below them
                    stack.append(inp)
            else:
                counts[key] = n + 1
    return counts


def _arrived(tensor, g, backward):
    """`g` as an ndarray of the tensor's dtype; RuntimeError if its shape is not the tensor's."""
    if type(g) is not np.ndarray:
        g = np.asarray(g)
    data = tensor.data
    if g.dtype != data.dtype:
        g = g.astype(data.dtype)
    if g.shape != data.shape:
        raise RuntimeError(f"{backward.__qualname__} returned a gradient of shape {g.shape} for "
                           f"an input of shape {data.shape} (a bug in that op)")
    return g


def _accumulate_leaf(leaf, g, owned):
    grad = leaf._grad
    if grad is None:
        leaf._grad = g if owned else g.copy()
    else:
        np.add(grad, g, out=grad)


def run_backward(root, grad, retain_graph):
    """Run the backward pass from `root` with upstream gradient `grad` (validated ndarray)."""
    if root._inputs is None:
        _accumulate_leaf(root, grad, False)
        return
    pending = _consumers(root)
    grads = {}  # id -> the sum so far, for tensors still waiting for consumers
    owned = set()  # ids whose summed gradient the engine may write into / give away
    ready = [(root, grad)]  # tensors whose gradient is complete
    ndarray = np.ndarray
    while ready:
        t, g = ready.pop()
        backward = t._backward
        if not retain_graph:
            t._backward = None
        for inp, gi in zip(t._inputs, backward(g)):
            if inp is None:
                continue
            data = inp.data
            if type(gi) is not ndarray or gi.dtype != data.dtype or gi.shape != data.shape:
                gi = _arrived(inp, gi, backward)
            j = id(inp)
            n = pending[j] - 1
            if n == 0 and j not in grads:  # its only consumer: complete, nothing to sum
                if inp._inputs is None:
                    _accumulate_leaf(inp, gi, gi is not g and gi.base is None)
                else:
                    ready.append((inp, gi))
                continue
            pending[j] = n
            prev = grads.get(j)
            if prev is None:
                grads[j] = gi
                if gi is not g and gi.base is None:
                    owned.add(j)
            elif j in owned:
                np.add(prev, gi, out=prev)
            else:
                if gi is not g and gi.base is None:  # fresh: add into it, no new buffer
                    np.add(gi, prev, out=gi)
                else:
                    gi = prev + gi
                grads[j] = gi
                owned.add(j)
            if n == 0:
                if inp._inputs is None:
                    _accumulate_leaf(inp, grads.pop(j), j in owned)
                else:
                    ready.append((inp, grads.pop(j)))
