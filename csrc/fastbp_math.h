/*
 * fastbp_math.h -- branch-free scalar math that the compiler can vectorise.
 *
 * Why: libm's exp()/expf() are opaque calls, so a loop over exp(x[i]) never vectorises
 * (measured here: a fused softmax-CE with scalar expf ran at 0.9x NumPy for C = 1000, about
 * 8x with a vectorised exp).  Every function here is straight-line code (selects, not
 * branches) built only from +, *, comparisons and integer bit moves, so gcc/clang vectorise the
 * loops that call them at -O3 without -ffast-math.
 *
 * exp: Cody-Waite reduction x = k*ln2 + r, |r| <= ln2/2, a Taylor polynomial for e^r
 * (degree 13 for double, 9 for float), and 2^k built directly in the exponent bits; k is
 * clamped so 2^k stays a normal number (r then grows to at most ln2 at the extreme ends).  k comes from the "magic number" rounding trick
 * (x*log2e + 1.5*2^52) so no rint()/floor() call is needed on baseline SSE2.
 * Inputs whose result is below the smallest normal number return +0 (denormal results are
 * flushed: an absolute difference below 2.3e-308 in double, 1.2e-38 in float); inputs whose
 * result overflows return +inf; NaN propagates.  Measured against glibc over the whole finite
 * range: max relative error 2.4e-16 (double) and 1.2e-7 (float).
 */
#ifndef FASTBP_MATH_H
#define FASTBP_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline double fastbp_exp(double x)
{
    const double log2e = 1.4426950408889634;
    const double ln2_hi = 6.93147180369123816490e-01;
    const double ln2_lo = 1.90821492927058770002e-10;
    const double shifter = 6755399441055744.0; /* 1.5 * 2^52: kd's low bits hold round(x/ln2) */
    double kd = x * log2e + shifter;
    kd = kd > shifter + 1023.0 ? shifter + 1023.0 : kd; /* 2^k must stay a normal double */
    kd = kd < shifter - 1022.0 ? shifter - 1022.0 : kd;
    uint64_t kbits;
    memcpy(&kbits, &kd, sizeof kbits);
    double k = kd - shifter;
    double r = (x - k * ln2_hi) - k * ln2_lo; /* |r| <= ln2/2, up to ln2 at the clamped ends */
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    uint64_t sbits = (kbits + 1023u) << 52; /* 2^k in the exponent field */
    double scale;
    memcpy(&scale, &sbits, sizeof scale);
    double y = p * scale;
    y = x > 709.782712893384 ? (double)INFINITY : y;
    y = x < -708.39641853226408 ? 0.0 : y; /* flush denormal results */
    return x != x ? x : y;
}

/* exp(hi + lo) for float, where hi is exact and lo is a small correction (|lo| <= ~4): the
   reduction subtracts k*ln2 from hi before lo is added, so when |hi| is large its digits are not
   rounded away by first forming hi + lo in float (fastbp_expf's argument rounding would cost
   |hi| * 2^-24 relative error: 6e-6 at hi = -100).  Clamps and special values are decided on
   hi + lo. */
static inline float fastbp_expf_hilo(float hi, float lo)
{
    const float log2e = 1.44269504f;
    const float ln2_hi = 0.693145751953125f;
    const float ln2_lo = 1.428606765330187e-06f;
    const float shifter = 12582912.0f;
    float x = hi + lo;
    float kf = x * log2e + shifter;
    kf = kf > shifter + 127.0f ? shifter + 127.0f : kf;
    kf = kf < shifter - 126.0f ? shifter - 126.0f : kf;
    uint32_t kbits;
    memcpy(&kbits, &kf, sizeof kbits);
    float k = kf - shifter;
    float r = ((hi - k * ln2_hi) + lo) - k * ln2_lo;
    float p = 1.0f / 362880.0f;
    p = p * r + 1.0f / 40320.0f;
    p = p * r + 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    uint32_t sbits = (kbits + 127u) << 23;
    float scale;
    memcpy(&scale, &sbits, sizeof scale);
    float y = p * scale;
    y = x > 88.7228391f ? (float)INFINITY : y;
    y = x < -87.3365447f ? 0.0f : y;
    return x != x ? x : y;
}

/* exp(x) in float: the hi/lo form with no correction (bitwise the same computation). */
static inline float fastbp_expf(float x)
{
    return fastbp_expf_hilo(x, 0.0f);
}

/*
 * ---- exp of a non-positive float, for the sigmoid ----------------------------------------------
 *
 * sigmoid(x) = 1/(1 + e) or e/(1 + e) with e = exp(-|x|) needs exp only on (-inf, 0] and only to
 * float accuracy, and the float32 sigmoid loop was bound by fastbp_expf's arithmetic (2.9 ms for
 * 4M elements on one AVX-512 core against a 1.1 ms memory floor).  fastbp_expf_nonpos keeps
 * its Cody-Waite reduction but drops what a non-positive argument does not need: no overflow
 * branch, no hi/lo split, and no clamp of k: for x >= -87.3365 (= ln of the smallest normal
 * float) k >= -126 and 2^k is normal, and below it the final flush select replaces whatever the
 * wrapped exponent bits (or, for -inf, the NaN r) produced, which measured 4% faster than
 * clamping x first.  e^r is 1 + r + r^2*q(r) with q a degree-3 minimax fit of the relative
 * error on |r| <= ln2/2 (Lawson's iteration in float64, coefficients rounded to float): 1.05e-7
 * relative in exact arithmetic, 1.65e-7 evaluated in float (~1.4 ulp), against 6.7e-8 for the
 * degree-9 Taylor form; that cut the loop to ~1.6 ms.  Results below the smallest normal float
 * (x < -87.3365) flush to +0 as in fastbp_expf; NaN propagates.  Only for x <= 0: a positive x
 * would wrap the exponent bits.
 */
static inline float fastbp_expf_nonpos(float x)
{
    const float log2e = 1.44269504f;
    const float ln2_hi = 0.693145751953125f;
    const float ln2_lo = 1.428606765330187e-06f;
    const float shifter = 12582912.0f;
    float kf = x * log2e + shifter;
    uint32_t kbits;
    memcpy(&kbits, &kf, sizeof kbits);
    float k = kf - shifter;
    float r = (x - k * ln2_hi) - k * ln2_lo;
    float q = 0.008312525227665901f;
    q = q * r + 0.041890114545822144f;
    q = q * r + 0.16667114198207855f;
    q = q * r + 0.499992311000824f;
    float p = (q * (r * r) + r) + 1.0f;
    uint32_t sbits = (kbits + 127u) << 23;
    float scale;
    memcpy(&scale, &sbits, sizeof scale);
    float y = p * scale;
    return x < -87.3365447f ? 0.0f : y; /* flush denormal results (as fastbp_expf) and the
                                            lanes where k < -126 wrapped; NaN passes */
}

/*
 * ---- Activation math (added for fastbp/_kernels/_activations.pyx) --------------------------
 *
 * expm1: the same reduction as exp, x = k*ln2 + r, then expm1(x) = 2^k*expm1(r) + (2^k - 1)
 * with a Taylor polynomial for expm1(r) that is relatively accurate for tiny r (degree 14 for
 * double, 9 for float).  For k = 0 (|x| <= ln2/2) the result is the polynomial itself, so
 * expm1(1e-10) keeps full relative precision; for k != 0 the subtraction 2^k - 1 is exact and
 * cancels at most one bit.  As in exp, k is clamped so 2^k stays normal; where that lets r
 * grow (x < -40 in double, -20 in float, where the result rounds to -1, and overflow) the
 * polynomial's value is replaced by a final select, which measured 20% faster than clamping x
 * first (gcc then evaluated the polynomial twice).  NaN propagates, overflow gives +inf.
 *
 * tanh: tanh(|x|) = -e/(2 + e) with e = expm1(-2|x|), sign restored by copysign.  The
 * argument of expm1 is <= 0, so nothing overflows for any |x| (tanh(+-inf) = +-1), and for
 * small |x| both e and the quotient are relatively accurate (tanh(1e-8) = 1e-8), unlike
 * 1 - 2/(exp(2x) + 1).
 *
 * ndtrf / npdff: the standard normal CDF Phi(x) and density phi(x) in float (for GELU).
 * Phi(-a) = erfc(z)/2 = t*q(t)*exp(-a^2/2)/2 with z = a/sqrt2, t = 1/(1 + z/2) and q a degree-9
 * Chebyshev fit of erfcx(z)/t over t in [0.16, 1] (z <= 10.5; fitted with scipy.special.erfcx:
 * 4e-8 relative error exactly, 1.7e-7 evaluated in float).  Phi(x) = 1 - Phi(-x) for x >= 0 (no
 * cancellation there, Phi >= 1/2).  Both functions share the Gaussian factor, so a loop calling
 * both (the GELU gradient) needs one exp.  Its exponent -a^2/2 is split as -ah^2/2 (exact: ah =
 * a rounded to 12 significant bits) plus a small remainder and fed to fastbp_expf_hilo, so the
 * float rounding of a^2 (up to 5e-6 relative error near a = 13) never enters it.  |x| is clamped
 * to 14 (Phi(-14) and phi(14) are below the float range and flush to 0), NaN propagates.
 * Double GELU uses libm erfc instead (a double-accurate vectorisable erfc is not provided).
 */

static inline double fastbp_expm1(double x)
{
    const double log2e = 1.4426950408889634;
    const double ln2_hi = 6.93147180369123816490e-01;
    const double ln2_lo = 1.90821492927058770002e-10;
    const double shifter = 6755399441055744.0;
    double kd = x * log2e + shifter;
    kd = kd > shifter + 1023.0 ? shifter + 1023.0 : kd; /* 2^k stays a normal double */
    kd = kd < shifter - 60.0 ? shifter - 60.0 : kd;     /* below: result -1, selected */
    uint64_t kbits;
    memcpy(&kbits, &kd, sizeof kbits);
    double k = kd - shifter;
    double r = (x - k * ln2_hi) - k * ln2_lo;
    double p = 1.0 / 87178291200.0;
    p = p * r + 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r; /* expm1(r), relatively accurate for tiny r */
    uint64_t sbits = (kbits + 1023u) << 52;
    double scale;
    memcpy(&scale, &sbits, sizeof scale);
    double y = scale * p + (scale - 1.0);
    y = x < -40.0 ? -1.0 : y; /* expm1(-40) rounds to -1 in double */
    y = x > 709.782712893384 ? (double)INFINITY : y;
    return x != x ? x : y;
}

static inline float fastbp_expm1f(float x)
{
    const float log2e = 1.44269504f;
    const float ln2_hi = 0.693145751953125f;
    const float ln2_lo = 1.428606765330187e-06f;
    const float shifter = 12582912.0f;
    float kf = x * log2e + shifter;
    kf = kf > shifter + 127.0f ? shifter + 127.0f : kf;
    kf = kf < shifter - 30.0f ? shifter - 30.0f : kf;
    uint32_t kbits;
    memcpy(&kbits, &kf, sizeof kbits);
    float k = kf - shifter;
    float r = (x - k * ln2_hi) - k * ln2_lo;
    float p = 1.0f / 362880.0f;
    p = p * r + 1.0f / 40320.0f;
    p = p * r + 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r;
    uint32_t sbits = (kbits + 127u) << 23;
    float scale;
    memcpy(&scale, &sbits, sizeof scale);
    float y = scale * p + (scale - 1.0f);
    y = x < -20.0f ? -1.0f : y; /* expm1f(-20) rounds to -1 in float */
    y = x > 88.7228391f ? (float)INFINITY : y;
    return x != x ? x : y;
}

static inline double fastbp_tanh(double x)
{
    double e = fastbp_expm1(-2.0 * fabs(x)); /* in (-1, 0]: never overflows */
    return copysign(-e / (2.0 + e), x);
}

static inline float fastbp_tanhf(float x)
{
    float e = fastbp_expm1f(-2.0f * fabsf(x));
    return copysignf(-e / (2.0f + e), x);
}


/* a rounded toward 0 to 12 significant bits: then a_hi*a_hi is exact in float. */
static inline float fastbp_hi12f_(float a)
{
    uint32_t bits;
    memcpy(&bits, &a, sizeof bits);
    bits &= 0xFFFFF000u;
    memcpy(&a, &bits, sizeof a);
    return a;
}

/* exp(-a*a/2) for float 0 <= a <= 14: -a^2/2 = -ah^2/2 (exact) - (a - ah)(a + ah)/2 (small). */
static inline float fastbp_gaussf_(float a)
{
    float ah = fastbp_hi12f_(a);
    return fastbp_expf_hilo(-0.5f * ah * ah, -0.5f * (a - ah) * (a + ah));
}

static inline float fastbp_npdff(float x)
{
    float a = fabsf(x);
    a = a < 14.0f ? a : 14.0f; /* phi(14) flushes to 0; NaN becomes 14 here, restored below */
    float y = 0.398942280401432678f * fastbp_gaussf_(a);
    return x != x ? x : y;
}

static inline float fastbp_ndtrf(float x)
{
    float a = fabsf(x);
    a = a < 14.0f ? a : 14.0f;
    float t = 1.0f / (1.0f + 0.353553390593273762f * a); /* 1/(1 + z/2), z = a/sqrt2 */
    float u = (t - 0.58f) * 2.38095238f;                 /* t in [0.16, 1] -> u in [-1, 1] */
    float q = 6.552899322e-06f;                          /* q(u) ~ erfcx(z)/t */
    q = q * u - 5.669025632e-05f;
    q = q * u + 9.800644875e-06f;
    q = q * u + 6.125494838e-04f;
    q = q * u - 6.748692831e-04f;
    q = q * u - 6.322850939e-03f;
    q = q * u + 6.308424287e-03f;
    q = q * u + 1.035204306e-01f;
    q = q * u + 3.271878958e-01f;
    q = q * u + 5.694087148e-01f;
    float tail = 0.5f * t * q * fastbp_gaussf_(a); /* Phi(-a) = erfc(z)/2 = erfcx(z) e^{-z^2}/2 */
    float y = x < 0.0f ? tail : 1.0f - tail;
    return x != x ? x : y;
}

/*
 * ---- log (added for the softmax cross-entropy's per-row log, fastbp/_kernels/_loss_math.pxd) --
 *
 * libm's log() is an opaque call, ~20 ns per row of a C = 10 softmax: a loop over it never
 * vectorises.  fastbp_log splits x = 2^k * m with m in [sqrt(1/2), sqrt(2)) by integer moves on
 * the bits (subnormal x is first scaled by 2^54), then log(m) = log(1 + f), f = m - 1 (exact),
 * through s = f / (2 + f): log(1 + f) = 2 atanh(s) = f - s*f + s*R(s^2), R(z) = sum_{i=1..10}
 * 2/(2i+1) z^i (|s| <= 0.1716, so z <= 0.0295 and the first omitted term is below 3e-17
 * relative).  The leading f is exact and only the small correction carries rounding (the
 * arrangement of 4.3BSD / fdlibm's log), then k*ln2 is added in two parts.  Measured against
 * long double logl on 2e7 inputs (random bit patterns over the positive finite range, and
 * uniform on [1, 1000]): max error 0.77 ulp.
 * Special values: log(+-0) = -inf, log(x < 0) = NaN, log(+inf) = +inf, NaN propagates.
 */
static inline double fastbp_log(double x)
{
    const double ln2_hi = 6.93147180369123816490e-01;
    const double ln2_lo = 1.90821492927058770002e-10;
    const double two54 = 18014398509481984.0;
    int tiny = x < 2.2250738585072014e-308;
    double xs = tiny ? x * two54 : x;
    uint64_t bits;
    memcpy(&bits, &xs, sizeof bits);
    /* k = floor(log2(x / sqrt(1/2))): subtracting sqrt(1/2)'s bits moves m into [sqrt(1/2),
       sqrt 2); the bias 1024 keeps every step unsigned (logical shifts, no int64 -> double
       conversion: both vectorise on SSE2/AVX2), and k becomes a double by the 2^52 trick */
    uint64_t kb = (bits - 0x3fe6a09e667f3bcdULL + (1024ULL << 52)) >> 52; /* k + 1024 */
    uint64_t mbits = bits - (kb << 52) + (1024ULL << 52);
    double m;
    memcpy(&m, &mbits, sizeof m);
    uint64_t kbits = kb | 0x4330000000000000ULL; /* 2^52 + k + 1024 */
    double dk;
    memcpy(&dk, &kbits, sizeof dk);
    dk = dk - (4503599627370496.0 + 1024.0) - (tiny ? 54.0 : 0.0);
    double f = m - 1.0;
    double s = f / (2.0 + f);
    double z = s * s;
    double r = 0.0; /* R(z) by Horner; the fixed-count loop is unrolled and folded at -O2+ */
    for (int i = 10; i >= 1; i--)
        r = (r + 2.0 / (2 * i + 1)) * z;
    double hfsq = 0.5 * f * f; /* s*f = hfsq - s*hfsq, so f - s*f + s*r = f - (hfsq - s*(hfsq + r)) */
    double y = dk * ln2_hi - ((hfsq - (s * (hfsq + r) + dk * ln2_lo)) - f);
    y = x == 0.0 ? -(double)INFINITY : y;
    y = x < 0.0 ? (double)NAN : y;
    y = x == (double)INFINITY ? x : y;
    return x != x ? x : y;
}

/*
 * ---- Runtime ISA dispatch for elementwise loops ----------------------------------------------
 *
 * The build targets the baseline x86-64 ISA (SSE2: 4 floats per vector) and must not use
 * -march=native, but NumPy and PyTorch pick AVX2/AVX-512 at run time, which made every
 * exp-based activation here 3-10x slower than theirs.  FASTBP_CLONED_VOID is `void` carrying
 * GCC's target_clones attribute: the compiler emits the function once per listed ISA (the loop
 * vectorised 16-wide for AVX-512, 8-wide for AVX2, 4-wide for the default) plus an ifunc
 * resolver that picks the best one for the CPU when the module is loaded.  Cython writes the
 * token as a return type (`ctypedef void cloned_void "FASTBP_CLONED_VOID"`), so a plain cdef
 * loop function is cloned with no C of its own.
 *
 * All clones compute the same IEEE operations element by element (the build is -std=c99, hence
 * -ffp-contract=off: no FMA contraction), so results are bitwise identical whichever clone runs;
 * measured on float32 sigmoid/tanh/GELU over 2M inputs including inf/NaN.  Elsewhere (clang, MSVC,
 * non-glibc, non-x86-64) it is plain `void`; -DFASTBP_NO_SIMD_CLONES forces that, to test the
 * baseline path on a machine that has AVX-512.
 */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 8 && defined(__x86_64__) \
    && defined(__ELF__) && defined(__GLIBC__) && !defined(FASTBP_NO_SIMD_CLONES)
#define FASTBP_SIMD_CLONES 1
#define FASTBP_CLONED_VOID __attribute__((target_clones("avx512f", "avx2", "default"))) void
#else
#define FASTBP_SIMD_CLONES 0
#define FASTBP_CLONED_VOID void
#endif

#endif /* FASTBP_MATH_H */
