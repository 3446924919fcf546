# cython: language_level=3
"""The whole training step in one nogil call: fastbp.nn.Sequential.train_step's compiled path.

Design
------
a. What it runs: for a chain Linear [norm] [act] ... Linear planned by fastbp._planner, forward
   (GEMM + epilogue per layer; with a norm: GEMM + bias, the norm, the activation in place),
   the loss and its gradient (one pass per row), backward (activation derivative fused with the
   bias-gradient reduction -- with a norm: the derivative, the norm's backward, then the bias
   gradient --, dx from the old weights, the weight-gradient GEMM) and the update: SGD /
   heavy-ball momentum folded into that GEMM, or Adam / RMSProp as _optim's own sweeps
   (_optim.pxd) on the gradients, layer by layer; a norm's gamma and beta get their gradients
   and _optim's sweep for the update kind (SGD, momentum, Adam, RMSProp).  The result is the
   kernel-by-kernel path's to float rounding (tested).  The row loops are the fused kernels'
   (_fused_loops.pxd), the row losses _losses' (_loss_math.pxd), the norms _norm's
   (_norm.pxd: batch norm in training mode, updating its running averages, and layer norm).
b. No reference twin: it is tested against the kernel-by-kernel path (fastbp._planner's
   general path, made of kernels that have twins) in tests/test_step.py and, for chains with
   norms, tests/test_step_norm.py.
c. Ownership: the planner allocates every buffer once per (plan, batch size) and passes them
   in; FusedStep keeps them (and the parameters and velocities it points into) alive.
d. Checks: the planner checks everything when it builds a FusedStep; :meth:`FusedStep.run`
   checks the batch, the labels' range and, before anything is written, that every array the
   step writes is still a writeable, C-contiguous array of the step's dtype (a parameter may
   have been made read-only since).  Loss codes are the spec table's
   (fastbp._specs.LOSS_CODES, tested).
"""
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.stdlib cimport calloc, free

from ._arrays cimport check_array
from ._blas cimport gemm_rm
from ._fused_loops cimport IDENTITY, _backward, _epilogue
from ._loss_math cimport mse_row, softmax_xent_row, svm_row
from ._norm cimport _bn_backward, _bn_train, _ln_backward, _ln_forward
from ._optim cimport _adam, _momentum, _rmsprop, _sgd
from libc.math cimport pow, sqrt

cnp.import_array()

__all__ = []  # no kernel with a reference twin: FusedStep is the planner's

cdef enum LossKind:
    SOFTMAX_XENT, HINGE, SQUARED

#: loss kernel name -> code, in the order of fastbp._specs.LOSS_CODES (tested)
LOSS_KINDS = {"softmax_cross_entropy": SOFTMAX_XENT, "svm_hinge": HINGE, "mse": SQUARED}

cdef enum UpdateKind:
    UPDATE_SGD, UPDATE_ADAM, UPDATE_RMSPROP

#: fastbp.optim.FusedUpdate.kind -> code
UPDATE_KINDS = {"sgd": UPDATE_SGD, "adam": UPDATE_ADAM, "rmsprop": UPDATE_RMSPROP}

cdef enum NormKind:
    NO_NORM, BATCH_NORM, LAYER_NORM

#: fastbp._planner.FusedNorm.statistics -> code, for the norms a training step runs
NORM_KINDS = {"batch": BATCH_NORM, "row": LAYER_NORM}


cdef struct Layer:
    Py_ssize_t d_in, d_out
    int act
    double alpha
    void *w           # (d_in, d_out) parameters
    void *b           # (d_out,) or NULL
    void *w_target    # where the weight-gradient GEMM writes: w itself (plain SGD) or a velocity
    void *b_target
    void *out         # (n, d_out) activation output
    void *pre         # (n, d_out) pre-activation, for gelu*; else NULL
    void *dx          # (n, d_in) gradient w.r.t. the layer input; NULL for the first layer
    void *w_state1    # Adam's exp_avg / RMSProp's square_avg of w (NULL for SGD)
    void *w_state2    # Adam's exp_avg_sq of w
    void *b_state1
    void *b_state2
    int norm          # NormKind: a normalization between the GEMM (+ bias) and the activation
    void *z           # (n, d_out) the GEMM's output, the norm's input (NULL without a norm)
    void *gamma       # (d_out,) the norm's scale and shift, and their gradients
    void *beta
    void *dgamma
    void *dbeta
    double *mean      # float64 statistics the norm's backward reads: (d_out,) / (n,)
    double *inv_std
    void *run_mean    # batch norm's running averages, updated in place
    void *run_var
    double eps, momentum  # momentum weights the OLD running value (the kernels' convention)
    bint trained      # gamma / beta are parameters (updated), not fixed ones
    void *gamma_state1  # their optimizer state, as w_state* (velocity for momentum SGD)
    void *gamma_state2
    void *beta_state1
    void *beta_state2


cdef void *_address(a) except? NULL:
    """a's data pointer (NumPy C-API: ~20x cheaper than ``a.ctypes.data``), or NULL for None."""
    return cnp.PyArray_DATA(<cnp.ndarray?>a) if a is not None else NULL


cdef inline double _loss_row(int loss, const floating *h, const int64_t *labels,
                            const floating *target, floating *dlogits, Py_ssize_t c,
                            Py_ssize_t i, double scale) noexcept nogil:
    """Row i's loss (unscaled) and its gradient row (scaled) for the step's loss kind."""
    if loss == SOFTMAX_XENT:
        return softmax_xent_row(h + i * c, dlogits + i * c, c, labels[i], scale)
    if loss == HINGE:
        return svm_row(h + i * c, dlogits + i * c, c, labels[i], scale)
    return mse_row(h + i * c, target + i * c, dlogits + i * c, c, <floating>(2 * scale))


cdef void _descend(floating *w, const floating *v, Py_ssize_t size, floating step,
                   int n_threads) noexcept nogil:
    """w -= step * v."""
    cdef Py_ssize_t k
    if n_threads > 1:
        for k in prange(size, schedule="static", num_threads=n_threads):
            w[k] = w[k] - step * v[k]
    else:
        for k in range(size):
            w[k] = w[k] - step * v[k]


cdef void _update(floating *p, const floating *g, void *state1, void *state2, Py_ssize_t size,
                  int update, double lr, double momentum, const double *hyper, double decay,
                  int n_threads, Py_ssize_t min_parallel) noexcept nogil:
    """Update p from its gradient g with _optim's own sweep (what optimizer.step runs):
    SGD (momentum: state1 is the velocity), Adam (state1, state2) or RMSProp (state1), with
    weight decay `decay` (the weights' or the 1-D parameters', see _step)."""
    cdef int nt = n_threads if size >= min_parallel else 1
    if update == UPDATE_ADAM:
        _adam(p, g, <floating *>state1, <floating *>state2, size, hyper[0], hyper[1], hyper[2],
              hyper[3], hyper[4], decay, nt)
    elif update == UPDATE_RMSPROP:
        _rmsprop(p, g, <floating *>state1, size, lr, hyper[0], hyper[1], decay, nt)
    elif momentum != 0:
        _momentum(p, g, <floating *>state1, size, lr, momentum, decay, False, nt)
    else:
        _sgd(p, g, size, lr, decay, nt)


cdef void _norm_forward(Layer *L, Py_ssize_t n, double var_scale, floating *out,
                        int nt) noexcept nogil:
    """out := the norm of L.z (batch statistics, the running averages updated; or per row)."""
    if L.norm == BATCH_NORM:
        _bn_train(<floating *>L.z, <floating *>L.gamma, <floating *>L.beta, out, L.mean,
                  L.inv_std, <floating *>L.run_mean, <floating *>L.run_var, n, L.d_out, L.eps,
                  L.momentum, var_scale, nt)
    else:
        _ln_forward(<floating *>L.z, <floating *>L.gamma, <floating *>L.beta, out, L.mean,
                    L.inv_std, n, L.d_out, L.eps, nt)


cdef void _norm_backward(Layer *L, Py_ssize_t n, floating *d, int nt) noexcept nogil:
    """d := dL/dz from d = dL/d(norm output), in place; dgamma, dbeta written."""
    if L.norm == BATCH_NORM:
        _bn_backward(d, <floating *>L.z, <floating *>L.gamma, L.mean, L.inv_std, d,
                     <floating *>L.dgamma, <floating *>L.dbeta, n, L.d_out, nt)
    else:
        _ln_backward(d, <floating *>L.z, <floating *>L.gamma, L.mean, L.inv_std, d,
                     <floating *>L.dgamma, <floating *>L.dbeta, n, L.d_out, nt)


cdef double _step(floating dtype_tag, Layer *layers, int n_layers, Py_ssize_t n, const floating *x,
                  const int64_t *labels, const floating *target, int loss, floating *dlogits,
                  double *row_loss, double lr, double momentum, int update, const double *hyper,
                  int n_threads, Py_ssize_t min_parallel) noexcept nogil:
    """Forward, loss, backward and the update; returns the mean loss.

    SGD (momentum) folds into the weight-gradient GEMM (w_target is w or the velocity); Adam
    and RMSProp get their gradients in w_target / b_target (scale 1, beta 0, as the
    kernel-by-kernel path) and run _optim's sweeps on them, layer by layer (each layer's
    weights are read by nothing after its own dx GEMM).  hyper: Adam (step_size, beta1, beta2,
    inv_sqrt_bc2, eps, weight_decay, bias_weight_decay), RMSProp (alpha, eps, weight_decay,
    bias_weight_decay), SGD (weight_decay, bias_weight_decay: momentum 0 only, folded into the
    GEMMs' beta)."""
    cdef Layer *L
    cdef const floating *h = x
    cdef floating *d
    cdef Py_ssize_t i, c
    cdef int l, nt
    cdef double total = 0, loss_scale
    cdef floating scale = 1, beta = momentum, b_beta, step = <floating>lr
    cdef Py_ssize_t size
    cdef floating *y
    cdef double var_scale = n / (n - 1.0) if n > 1 else 1.0  # batch norm's unbiased running var
    if update != UPDATE_SGD:
        beta = 0                         # plain gradients, then _optim's sweep
    elif momentum == 0:                  # the update itself happens inside the GEMM
        scale, beta = <floating>-lr, <floating>(1.0 - lr * hyper[0])
    b_beta = <floating>(1.0 - lr * hyper[1]) if update == UPDATE_SGD and momentum == 0 else beta
    # the weights' and the 1-D parameters' (biases, gamma, beta) weight decay
    cdef int wd_at = 5 if update == UPDATE_ADAM else 2 if update == UPDATE_RMSPROP else 0
    cdef double weight_decay = hyper[wd_at], bias_decay = hyper[wd_at + 1]
    for l in range(n_layers):
        L = &layers[l]
        nt = n_threads if n * L.d_out >= min_parallel else 1
        y = <floating *>L.out if L.norm == NO_NORM else <floating *>L.z
        gemm_rm(False, False, <int>n, <int>L.d_out, <int>L.d_in, 1.0, h, <int>L.d_in,
                <floating *>L.w, <int>L.d_out, 0.0, y, <int>L.d_out)
        if L.norm == NO_NORM:
            _epilogue(y, <floating *>L.b, <floating *>L.pre, n, L.d_out, L.act,
                      <floating>L.alpha, nt)
        else:  # z + b, its norm into out, then the activation in place
            _epilogue(y, <floating *>L.b, <floating *>NULL, n, L.d_out, IDENTITY, 0, nt)
            _norm_forward(L, n, var_scale, <floating *>L.out, nt)
            if L.act != IDENTITY:
                _epilogue(<floating *>L.out, <floating *>NULL, <floating *>L.pre, n, L.d_out,
                          L.act, <floating>L.alpha, nt)
        h = <floating *>L.out
    c = layers[n_layers - 1].d_out
    nt = n_threads if n * c >= min_parallel else 1
    loss_scale = 1.0 / n if loss != SQUARED else 1.0 / (n * c)
    if nt > 1:
        for i in prange(n, schedule="static", num_threads=nt):
            row_loss[i] = _loss_row(loss, h, labels, target, dlogits, c, i, loss_scale)
    else:
        for i in range(n):
            row_loss[i] = _loss_row(loss, h, labels, target, dlogits, c, i, loss_scale)
    for i in range(n):  # in row order: the same total for any thread count
        total += row_loss[i]
    d = dlogits
    for l in range(n_layers - 1, -1, -1):
        L = &layers[l]
        h = x if l == 0 else <floating *>layers[l - 1].out
        nt = n_threads if n * L.d_out >= min_parallel else 1
        if L.norm == NO_NORM:
            _backward(d, <floating *>L.pre if L.pre != NULL else <floating *>L.out, d,
                      <floating *>L.b_target, n, L.d_out, L.act, <floating>L.alpha, scale,
                      b_beta, nt)
        else:  # the activation's derivative, the norm's backward, then the bias gradient
            if L.act != IDENTITY:
                _backward(d, <floating *>L.pre if L.pre != NULL else <floating *>L.out, d,
                          <floating *>NULL, n, L.d_out, L.act, <floating>L.alpha, 1, 0, nt)
            _norm_backward(L, n, d, nt)
            if L.b_target != NULL:  # dz NULL: a plain column sum of d, nothing written to d
                _backward(d, d, <floating *>NULL, <floating *>L.b_target, n, L.d_out,
                          IDENTITY, 0, scale, b_beta, nt)
        if l > 0:  # dx from the old weights, before the GEMM below may update them
            gemm_rm(False, True, <int>n, <int>L.d_in, <int>L.d_out, 1.0, d, <int>L.d_out,
                    <floating *>L.w, <int>L.d_out, 0.0, <floating *>L.dx, <int>L.d_in)
        gemm_rm(True, False, <int>L.d_in, <int>L.d_out, <int>n, scale, h, <int>L.d_in, d,
                <int>L.d_out, beta, <floating *>L.w_target, <int>L.d_out)
        size = L.d_in * L.d_out
        if L.trained:  # gamma and beta: their gradients, then the optimizer's own sweep
            _update(<floating *>L.gamma, <floating *>L.dgamma, L.gamma_state1, L.gamma_state2,
                    L.d_out, update, lr, momentum, hyper, bias_decay, n_threads, min_parallel)
            _update(<floating *>L.beta, <floating *>L.dbeta, L.beta_state1, L.beta_state2,
                    L.d_out, update, lr, momentum, hyper, bias_decay, n_threads, min_parallel)
        if update != UPDATE_SGD:
            _update(<floating *>L.w, <floating *>L.w_target, L.w_state1, L.w_state2, size,
                    update, lr, momentum, hyper, weight_decay, n_threads, min_parallel)
            if L.b != NULL:
                _update(<floating *>L.b, <floating *>L.b_target, L.b_state1, L.b_state2,
                        L.d_out, update, lr, momentum, hyper, bias_decay, n_threads,
                        min_parallel)
        elif momentum != 0:  # w -= lr * velocity, for the weights and the bias
            _descend(<floating *>L.w, <floating *>L.w_target, size, step,
                     n_threads if size >= min_parallel else 1)
            if L.b != NULL:
                _descend(<floating *>L.b, <floating *>L.b_target, L.d_out, step, 1)
        d = <floating *>L.dx
    return total * loss_scale


cdef class FusedStep:
    """A compiled training step (SGD / momentum, Adam, RMSProp) for one chain of Linear
    (+ norm, + activation) layers.

    Built by fastbp._planner once per (plan, batch size, loss, velocity arrays), which checks
    every array (C-contiguous, one float dtype, consistent shapes); FusedStep keeps them alive.
    :meth:`run` checks the batch and the arrays it writes, then runs forward, loss, backward
    and the update in one nogil call.  Parameters are updated in place: the weight-gradient
    GEMM writes ``W := (1 - lr * weight_decay) * W - lr * xᵀ·dz`` directly (momentum 0) or
    the velocity ``v := xᵀ·dz + mu * v`` followed by ``W -= lr * v``.

    Parameters
    ----------
    layers : sequence of fastbp._planner.StepLayer
        First layer first: ``W, b, W_target, b_target, out, pre, dx`` (arrays or None), the
        activation's code and alpha, the optimizer state of W and b, and the norm
        (fastbp._planner.StepNorm: ``NORM_KINDS`` code, arrays, eps, momentum) or None.
    loss : int
        The loss code (``LOSS_KINDS``).
    dlogits : ndarray (n, n_out), row_loss : float64 ndarray (n,)
        Work buffers.
    written : sequence of (str, ndarray)
        Every parameter and velocity the step writes, with the name an error should give.
    """

    cdef Layer *layers
    cdef int n_layers, loss, is_double, update
    cdef Py_ssize_t n, n_in, n_out
    cdef void *dlogits
    cdef double *row_loss
    cdef readonly object arrays  # everything the pointers point into
    cdef readonly tuple written

    def __cinit__(self, layers, int loss, dlogits, row_loss, written, int update=UPDATE_SGD):
        self.n_layers = len(layers)
        self.layers = <Layer *>calloc(self.n_layers, sizeof(Layer))
        if self.layers == NULL:
            raise MemoryError()
        if loss not in (SOFTMAX_XENT, HINGE, SQUARED):
            raise ValueError(f"FusedStep: unknown loss code {loss}")
        self.loss = loss
        if update not in (UPDATE_SGD, UPDATE_ADAM, UPDATE_RMSPROP):
            raise ValueError(f"FusedStep: unknown update code {update}")
        self.update = update
        self.is_double = dlogits.dtype.itemsize == 8
        self.n = dlogits.shape[0]
        self.n_in = layers[0].W.shape[0]
        self.n_out = dlogits.shape[1]
        self.dlogits = _address(dlogits)
        self.row_loss = <double *>_address(row_loss)
        self.arrays = (tuple(layers), dlogits, row_loss)
        self.written = tuple(written)
        cdef Layer *C
        for l, L in enumerate(layers):
            C = &self.layers[l]
            ws, bs = tuple(L.W_state) + (None, None), tuple(L.b_state) + (None, None)
            C.d_in, C.d_out, C.act, C.alpha = L.W.shape[0], L.W.shape[1], L.act_code, L.alpha
            C.w, C.b = _address(L.W), _address(L.b)
            C.w_target, C.b_target = _address(L.W_target), _address(L.b_target)
            C.out, C.pre, C.dx = _address(L.out), _address(L.pre), _address(L.dx)
            C.w_state1, C.w_state2 = _address(ws[0]), _address(ws[1])
            C.b_state1, C.b_state2 = _address(bs[0]), _address(bs[1])
            N = L.norm
            if N is None:
                continue  # calloc: C.norm = NO_NORM, every pointer NULL
            if N.kind not in (BATCH_NORM, LAYER_NORM):
                raise ValueError(f"FusedStep: unknown norm code {N.kind}")
            gs, bs = tuple(N.gamma_state) + (None, None), tuple(N.beta_state) + (None, None)
            C.norm, C.z = N.kind, _address(N.z)
            C.gamma, C.beta = _address(N.gamma), _address(N.beta)
            C.dgamma, C.dbeta = _address(N.dgamma), _address(N.dbeta)
            C.mean, C.inv_std = <double *>_address(N.mean), <double *>_address(N.inv_std)
            C.run_mean, C.run_var = _address(N.running_mean), _address(N.running_var)
            C.eps, C.momentum, C.trained = N.eps, N.momentum, N.trained
            C.gamma_state1, C.gamma_state2 = _address(gs[0]), _address(gs[1])
            C.beta_state1, C.beta_state2 = _address(bs[0]), _address(bs[1])

    def __dealloc__(self):
        free(self.layers)

    def run(self, x, labels, target, double lr, double momentum, int n_threads,
            Py_ssize_t min_parallel, tuple hyper=()):
        """One step on batch x (n, n_in) with int64 labels (n,) or a target (n, n_out) for MSE;
        x, labels and target must be C-contiguous and of the plan's dtype (the caller checks).
        Labels outside [0, n_out) and parameters or velocities that are no longer writeable,
        C-contiguous arrays of the step's dtype raise ValueError before anything is written.
        `hyper`: Adam (beta1, beta2, eps, weight_decay, bias_weight_decay, t), RMSProp (alpha,
        eps, weight_decay, bias_weight_decay), SGD (momentum, weight_decay, bias_weight_decay)
        or () for no weight decay.  Returns the mean loss before the update."""
        cdef const int64_t[::1] y
        cdef const int64_t *py = NULL
        cdef Py_ssize_t i
        cdef double result
        cdef int typenum = cnp.NPY_FLOAT64 if self.is_double else cnp.NPY_FLOAT32
        if x.shape[0] != self.n or x.shape[1] != self.n_in:
            raise ValueError(f"FusedStep.run: x has shape {x.shape}, the plan expects "
                             f"({self.n}, {self.n_in})")
        for name, a in self.written:
            check_array(a, "train_step", name, typenum, True)
        if self.loss != SQUARED:
            y = labels
            if y.shape[0] != self.n:
                raise ValueError(f"FusedStep.run: {y.shape[0]} labels for {self.n} samples")
            py = &y[0]
            for i in range(self.n):
                if py[i] < 0 or py[i] >= self.n_out:
                    raise ValueError(f"y must lie in [0, {self.n_out}), found label {py[i]}")
        elif target.shape != (self.n, self.n_out):
            raise ValueError(f"target must have shape {(self.n, self.n_out)}, got {target.shape}")
        cdef double h[7]
        if self.update == UPDATE_ADAM:  # bias corrections as adam_step computes them
            b1, b2, eps, wd, bias_wd, t = hyper
            h[0] = lr / (1.0 - pow(b1, <double>t))
            h[1], h[2] = b1, b2
            h[3] = 1.0 / sqrt(1.0 - pow(b2, <double>t))
            h[4], h[5], h[6] = eps, wd, bias_wd
        elif self.update == UPDATE_RMSPROP:
            h[0], h[1], h[2], h[3] = hyper
        else:
            h[0], h[1] = hyper[1:] if hyper else (0.0, 0.0)
        cdef void *px = _address(x)
        cdef void *pt = _address(target) if self.loss == SQUARED else NULL
        with nogil:
            if self.is_double:
                result = _step(<double>0, self.layers, self.n_layers, self.n, <double *>px, py,
                               <double *>pt, self.loss, <double *>self.dlogits, self.row_loss,
                               lr, momentum, self.update, h, n_threads, min_parallel)
            else:
                result = _step(<float>0, self.layers, self.n_layers, self.n, <float *>px, py,
                               <float *>pt, self.loss, <float *>self.dlogits, self.row_loss,
                               lr, momentum, self.update, h, n_threads, min_parallel)
        return result
