# Scalar activation math: one forward and one backward helper per activation, shared by the
# elementwise kernels in _activations.pyx and by fused kernels (bias + activation epilogue after a
# GEMM, activation backward fused with the bias-gradient reduction), which `cimport` them.
#
# Every helper is straight-line code (C ternaries that gcc turns into blends/masks, no `if`), so a
# loop calling it vectorises at -O3 with -fno-trapping-math; the exp-family calls go to the
# branch-free polynomials in csrc/fastbp_math.h.  The one exception is exact GELU in double,
# which calls libm erfc (scalar; no double-accurate vectorisable erfc is provided).
#
# Naming: <code>_fwd(x[, alpha]) -> y and <code>_bwd(dout, saved[, alpha]) -> dx for every code of
# the spec table (fastbp/_specs.py: one per activation, one per GELU form), where `saved` is what
# the row's backward_reads says: the forward INPUT x for relu, leaky_relu, elu and gelu, the
# forward OUTPUT y for sigmoid and tanh.  A row whose fused backward reads the output although
# its elementwise backward reads the input names that helper in `output_backward` (ELU).  The
# kernels' loops are generated from the table (_activations.pyx.tp, _fused_loops.pxd.tp), so
# adding an activation here needs no loop.  NaN inputs give NaN outputs in every forward.
#
# Float stays float: Cython writes an integer literal next to a float as a C double (`1.0`), which
# would promote the arithmetic to double (slower, and a different rounding than the float
# kernels promise), so constants that meet a `floating` go through a typed local (`one`) or a
# `<floating>` cast, and |x| goes through vabs (libm fabs would return double for a float).
from libc.math cimport erfc, fabs, fabsf
from cython cimport floating

from ._math cimport FASTBP_SIMD_CLONES, cloned_void, vexp

cdef extern from "fastbp_math.h" nogil:
    double fastbp_expm1(double x)
    float fastbp_expm1f(float x)
    double fastbp_tanh(double x)
    float fastbp_tanhf(float x)
    float fastbp_expf_nonpos(float x)
    float fastbp_ndtrf(float x)
    float fastbp_npdff(float x)


# ---- building blocks ------------------------------------------------------------------------

cdef inline floating vabs(floating x) noexcept nogil:
    """|x| in the type of x (a sign-bit mask)."""
    if floating is float:
        return fabsf(x)
    else:
        return fabs(x)


cdef inline floating vexp_nonpos(floating x) noexcept nogil:
    """exp(x) for x <= 0 (or NaN): float takes the cheaper non-positive form (no overflow path,
    degree-5 minimax, ~1.4 ulp; csrc/fastbp_math.h), double the general vexp."""
    if floating is float:
        return fastbp_expf_nonpos(x)
    else:
        return vexp(x)


cdef inline floating vexpm1(floating x) noexcept nogil:
    """exp(x) - 1, relatively accurate near 0, branch-free (csrc/fastbp_math.h)."""
    if floating is float:
        return fastbp_expm1f(x)
    else:
        return fastbp_expm1(x)


cdef inline floating vtanh(floating x) noexcept nogil:
    """tanh(x) = -e/(2+e), e = expm1(-2|x|), sign of x: no overflow, relatively accurate near 0."""
    if floating is float:
        return fastbp_tanhf(x)
    else:
        return fastbp_tanh(x)


cdef inline floating ndtr(floating x) noexcept nogil:
    """Phi(x), the standard normal CDF, accurate relative to Phi also in the left tail."""
    if floating is float:
        return fastbp_ndtrf(x)  # vectorisable (erfcx polynomial fit, < 5e-7 relative)
    else:
        return 0.5 * erfc(-0.7071067811865476 * x)  # libm, scalar


cdef inline floating npdf(floating x) noexcept nogil:
    """phi(x) = exp(-x^2/2) / sqrt(2 pi)."""
    if floating is float:
        return fastbp_npdff(x)  # exponent split so float rounding of x*x does not enter it
    else:
        return 0.3989422804014327 * vexp(-0.5 * x * x)  # double: no literal promotion issue


# ---- ReLU: max(x, 0); d/dx = 1 for x > 0, else 0 (0 at x = 0) ---------------------------------

cdef inline floating relu_fwd(floating x) noexcept nogil:
    return 0 if x < 0 else x  # `x < 0`, not `x > 0`: NaN passes through, as np.maximum does


cdef inline floating relu_bwd(floating dout, floating x) noexcept nogil:
    return dout if x > 0 else 0  # a select, so dout = inf with x <= 0 gives 0, not inf*0 = NaN


# ---- leaky ReLU: x for x > 0, alpha*x otherwise ------------------------------------------------

cdef inline floating leaky_relu_fwd(floating x, floating alpha) noexcept nogil:
    return x if x > 0 else alpha * x


cdef inline floating leaky_relu_bwd(floating dout, floating x, floating alpha) noexcept nogil:
    return dout if x > 0 else alpha * dout


# ---- sigmoid: 1/(1 + exp(-x)); backward from the saved output y --------------------------------

cdef inline floating sigmoid_fwd(floating x) noexcept nogil:
    # e = exp(-|x|) <= 1 never overflows; x >= 0: 1/(1+e), x < 0: e/(1+e) (no 1 - tiny loss)
    cdef floating one = 1
    cdef floating e = vexp_nonpos(-vabs(x))
    return (one if x >= 0 else e) / (one + e)


cdef inline floating sigmoid_bwd(floating dout, floating y) noexcept nogil:
    cdef floating one = 1
    return dout * y * (one - y)


# ---- tanh; backward from the saved output y ----------------------------------------------------

cdef inline floating tanh_fwd(floating x) noexcept nogil:
    return vtanh(x)


cdef inline floating tanh_bwd(floating dout, floating y) noexcept nogil:
    cdef floating one = 1
    return dout * (one - y * y)


# ---- ELU: x for x > 0, alpha*(exp(x) - 1) otherwise; backward from the saved input x -----------

cdef inline floating elu_fwd(floating x, floating alpha) noexcept nogil:
    # exp only ever sees min(x, 0) (so never inf), written so that NaN stays NaN
    cdef floating xn = 0 if x > 0 else x
    return x if x > 0 else alpha * vexpm1(xn)  # expm1: alpha*(exp(x)-1) loses digits near 0


cdef inline floating elu_bwd(floating dout, floating x, floating alpha) noexcept nogil:
    cdef floating xn = 0 if x > 0 else x
    return dout if x > 0 else dout * alpha * vexp(xn)


cdef inline floating elu_bwd_from_output(floating g, floating a, floating alpha) noexcept nogil:
    """ELU'(z)·g from the output a (the fused backward, alpha >= 0): 1 where a > 0, a + alpha
    (= alpha·e^z) elsewhere."""
    return g if a > 0 else g * (a + alpha)


# ---- GELU, exact: x * Phi(x); d/dx = Phi(x) + x*phi(x) -----------------------------------------

cdef inline floating gelu_fwd(floating x) noexcept nogil:
    return x * ndtr(x)


cdef inline floating gelu_bwd(floating dout, floating x) noexcept nogil:
    return dout * (ndtr(x) + x * npdf(x))


# ---- GELU, tanh approximation (PyTorch approximate="tanh") -------------------------------------
# y = 0.5*x*(1 + tanh(u)), u = sqrt(2/pi)*(x + 0.044715*x^3), evaluated as y = x*s with
# s = sigmoid(2u) = (1 + tanh(u))/2, which keeps relative precision for x << 0 where 1 + tanh(u)
# cancels.  dy/dx = s + 2*x*s*(1-s)*u', with s*(1-s) = e/(1+e)^2, e = exp(-2|u|), exact for both
# signs of u.  x is clamped to +-1e3 inside u: beyond it s is exactly 0 or 1 and s*(1-s) exactly 0
# in both formats, so results are unchanged, and x^3, u' stay finite (no 0*inf = NaN).
# For x << 0, y ~ x*exp(2u) inherits the rounding of u amplified by |2u|: up to 1.2e-5 relative
# in float32 (measured, |y| < 1e-6 there), 2e-13 in float64; 0.5*x*(1 + tanh(u)) loses all digits.

cdef inline floating _gelu_tanh_clamp(floating x) noexcept nogil:
    cdef floating lim = 1e3
    return -lim if x < -lim else (lim if x > lim else x)  # NaN passes through


cdef inline floating gelu_tanh_fwd(floating x) noexcept nogil:
    cdef floating one = 1, two = 2
    cdef floating c = 0.7978845608028654, k = 0.044715  # sqrt(2/pi), cubic coefficient
    cdef floating xc = _gelu_tanh_clamp(x)
    cdef floating u = c * (xc + k * xc * xc * xc)
    cdef floating e = vexp(-two * vabs(u))
    return x * (one if u >= 0 else e) / (one + e)


cdef inline floating gelu_tanh_bwd(floating dout, floating x) noexcept nogil:
    cdef floating one = 1, two = 2
    cdef floating c = 0.7978845608028654, k = 0.044715, k3 = 0.134145  # k3 = 3k
    cdef floating xc = _gelu_tanh_clamp(x)
    cdef floating u = c * (xc + k * xc * xc * xc)
    cdef floating du = c * (one + k3 * xc * xc)
    cdef floating e = vexp(-two * vabs(u))
    cdef floating q = one / (one + e)
    cdef floating s = q if u >= 0 else e * q
    return dout * (s + two * x * (e * q * q) * du)
