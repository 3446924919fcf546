# The update sweeps of _optim.pyx that the one-call training step (_step.pyx) runs too, so a
# compiled Adam / RMSProp step performs exactly the kernels' arithmetic.  Scalars arrive as
# double and are rounded to the dtype inside, as in the kernels.
from cython cimport floating

cdef void _rmsprop(floating *w, const floating *dw, floating *cache, Py_ssize_t n, double lr,
                   double decay_rate, double eps, double weight_decay,
                   int n_threads) noexcept nogil

cdef void _adam(floating *w, const floating *dw, floating *m, floating *v, Py_ssize_t n,
                double step_size, double beta1, double beta2, double inv_sqrt_bc2, double eps,
                double weight_decay, int n_threads) noexcept nogil

cdef void _sgd(floating *w, const floating *dw, Py_ssize_t n, double lr, double weight_decay,
               int n_threads) noexcept nogil

cdef void _momentum(floating *w, const floating *dw, floating *v, Py_ssize_t n, double lr,
                    double momentum, double weight_decay, bint nesterov,
                    int n_threads) noexcept nogil
