# The normalization loops of _norm.pyx that the one-call training step (_step.pyx) runs too, so
# a compiled step with batch norm / layer norm performs exactly the kernels' arithmetic (bits
# included).  Arguments as the entry points document them; nothing is checked here.
from cython cimport floating

cdef void _bn_train(const floating *x, const floating *gamma, const floating *beta,
                    floating *out, double *mean, double *inv_std, floating *run_mean,
                    floating *run_var, Py_ssize_t n, Py_ssize_t d, double eps, double momentum,
                    double var_scale, int n_threads) noexcept nogil

cdef void _bn_backward(const floating *dout, const floating *x, const floating *gamma,
                       const double *mean, const double *inv_std, floating *dx,
                       floating *dgamma, floating *dbeta, Py_ssize_t n, Py_ssize_t d,
                       int n_threads) noexcept nogil

cdef void _ln_forward(const floating *x, const floating *gamma, const floating *beta,
                      floating *out, double *mean, double *inv_std, Py_ssize_t n, Py_ssize_t d,
                      double eps, int n_threads) noexcept nogil

cdef void _ln_backward(const floating *dout, const floating *x, const floating *gamma,
                       const double *mean, const double *inv_std, floating *dx,
                       floating *dgamma, floating *dbeta, Py_ssize_t n, Py_ssize_t d,
                       int n_threads) noexcept nogil
