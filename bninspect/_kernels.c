/* Fast per-channel loops for bninspect's float64 reference, compiled as bninspect._kernels.
 *
 * numpy needs ten passes and float64 temporaries to do what one fused loop does here, which is
 * the difference between ~1 GB/s and memory speed on a 1 GB activation dump. All arithmetic is
 * IEEE double, built with -ffp-contract=off and without fast-math, so the reference output
 * rounds exactly as the matching numpy expression (reference.normalize) does: the tests compare
 * the two bit for bit. The GIL is released, so Python threads run these in parallel.
 *
 * Layout: the input is a contiguous (N, C, S) array, S the product of the spatial sizes; a
 * "region" is rows [n0, n1) x channels [c0, c1) x positions [s0, s1) of it. float32 and
 * float64 values are read where they lie; float16 and bfloat16 values, and short runs of any
 * dtype, are first widened to double in an L1-sized buffer.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define HOT __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define HOT
#endif

/* 4 lanes: one AVX2 register, half an AVX-512 one, two SSE2 ones. 8 lanes would fill an
 * AVX-512 register, but GCC splits such vectors badly for AVX2 (spills and lane inserts), which
 * made the moments loop 2.3x slower on the AVX2 machines this project runs on. */
#define W 4
typedef double vd __attribute__((vector_size(8 * W)));
typedef long long vi __attribute__((vector_size(8 * W)));
typedef float vf __attribute__((vector_size(4 * W)));

enum { DT_F32 = 0, DT_F64 = 1, DT_F16 = 2, DT_BF16 = 3 };
static const Py_ssize_t ITEMSIZE[] = {4, 8, 2, 2};

/* Values per accuracy chunk: a chunk that needs a second pass (see chunk_moments) still has
 * its values, and its double buffer for other dtypes (24 KB in all), in a 32 KB L1 cache. */
#define CHUNK 2048
/* Vectors per step: 8 lanes of (sum, compensation) pairs for d and d * d hide the add latency
 * and fit AVX2's 16 registers with the loads; 3 spilled and ran 1.4x slower. */
#define NV 2
#define STEP (W * NV)
/* Unrolled, so the NV lanes' sums stay in registers: the AVX-512 build kept them on the stack
 * and waited on its own stores (4.5 GB/s a core here instead of memory speed). */
#define UNROLLED _Pragma("GCC unroll 2")

/* Outputs of moments(), per channel, in this order. */
enum { M_COUNT, M_SUM, M_MEAN, M_MEAN_LO, M_M2, M_NAN, M_PINF, M_NINF, M_FIELDS };
/* Outputs of output_errors(), per channel. */
enum { E_MAX_ABS, E_MAX_ULP, E_MAX_REF, E_ARGMAX, E_FIELDS };

/* ---- widening to double ------------------------------------------------------------------ */

static inline double half_to_double(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15), exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
    double magnitude;
    if (exponent == 0x1f)
        magnitude = mantissa ? NAN : INFINITY;
    else if (exponent)
        magnitude = ldexp((double)(1024 + mantissa), (int)exponent - 25);
    else
        magnitude = ldexp((double)mantissa, -24);
    return sign ? -magnitude : magnitude;
}

static inline double bf16_to_double(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Widen `len` values starting at element `at` of x (dtype `code`) into out. */
static HOT void widen(const void *x, int code, Py_ssize_t at, Py_ssize_t len, double *out) {
    switch (code) {
    case DT_F32: {
        const float *p = (const float *)x + at;
        for (Py_ssize_t i = 0; i < len; i++) out[i] = p[i];
        break;
    }
    case DT_F64: memcpy(out, (const double *)x + at, (size_t)len * sizeof(double)); break;
    case DT_F16: {
        const uint16_t *p = (const uint16_t *)x + at;
        for (Py_ssize_t i = 0; i < len; i++) out[i] = half_to_double(p[i]);
        break;
    }
    default: {
        const uint16_t *p = (const uint16_t *)x + at;
        for (Py_ssize_t i = 0; i < len; i++) out[i] = bf16_to_double(p[i]);
        break;
    }
    }
}

/* ---- vector helpers ---------------------------------------------------------------------- */

static inline vd load_d(const double *p) {
    vd v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline vd splat(double d) { return d - (vd){0}; }

static inline vi splat_i(long long k) { return k - (vi){0}; }

static inline vd select_d(vi mask, vd yes, vd no) {
    return (vd)(((vi)yes & mask) | ((vi)no & ~mask));
}

static inline vi select_i(vi mask, vi yes, vi no) { return (yes & mask) | (no & ~mask); }

static inline double hsum(vd v) {
    double total = 0.0;
    for (int k = 0; k < W; k++) total += v[k];
    return total;
}

/* ---- moments ----------------------------------------------------------------------------- */

typedef struct {
    double count, mean, mean_lo, m2; /* Chan's running (n, mean, M2) of the finite values; the
                                        mean as mean + mean_lo, so that merging keeps it exact */
    double sum, sum_c;               /* their Neumaier-compensated sum */
    double nan, pinf, ninf;
} Moments;

static void moments_init(Moments *m) { memset(m, 0, sizeof *m); }

static void neumaier_add(Moments *m, double x) {
    double t = m->sum + x; /* keep what the addition rounded away */
    if (isfinite(t))       /* past float64's range the sum is inf, not inf - inf = NaN */
        m->sum_c += fabs(m->sum) >= fabs(x) ? (m->sum - t) + x : (x - t) + m->sum;
    m->sum = t;
}

/* a + b = *hi + *lo exactly, *hi the rounded sum (Knuth's two-sum). */
static void two_sum(double a, double b, double *hi, double *lo) {
    double s = a + b, back = s - a;
    *lo = (a - (s - back)) + (b - back);
    *hi = s;
}

/* Merge a chunk of `count` values with mean shift + rel_mean and sum of squared deviations m2
 * (Chan et al.). The difference of the means is taken part by part, so that the rounding of a
 * large mean (an offset channel) does not enter the delta^2 term, which cost ~100 float64 ULPs
 * at offset 1e4: shift is mostly the running mean rounded to float32, or 0, and then
 * shift - m->mean is exact; after a second pass it is the chunk's mean, and the difference is
 * rounded relative to delta itself. */
static void moments_merge(Moments *m, double count, double shift, double rel_mean, double m2) {
    double total = m->count + count;
    if (m->count == 0) { /* the first chunk: its mean as it is, both parts */
        two_sum(shift, rel_mean, &m->mean, &m->mean_lo);
        m->m2 = m2;
        m->count = total;
        return;
    }
    double delta = (shift - m->mean) + (rel_mean - m->mean_lo);
    m->m2 += m2 + delta * delta * (m->count * count / total);
    double hi, lo;
    two_sum(m->mean, delta * (count / total), &hi, &lo);
    two_sum(hi, lo + m->mean_lo, &m->mean, &m->mean_lo);
    m->count = total;
}

/* Kahan's compensated addition of x into the lane sums s with compensations c. */
static inline void kahan_add(vd *s, vd *c, vd x) {
    vd y = x - *c, t = *s + y;
    *c = (t - *s) - y;
    *s = t;
}

/* W values at p widened to double. Written as a lane loop, which GCC turns into one
 * vcvtps2pd; __builtin_convertvector is split into halves and spilled to the stack for AVX2. */
static inline vd load_f32(const float *p) {
    vd v;
    for (int k = 0; k < W; k++) v[k] = p[k];
    return v;
}

/* Compensated sums of d = x - shift and of d * d over one chunk. */
typedef struct {
    double d, dd;
} Shifted;

/* shifted sums over n values of type T, in W * NV lanes: each lane adds eight values pairwise,
 * then Kahan-adds their sum, which keeps the error within a few ULPs at an eighth of Kahan's
 * cost per value (four measured 10% slower here). */
#define DEFINE_SHIFTED_SUMS(NAME, T, LOAD)                                                      \
    static HOT Shifted NAME(const T *x, Py_ssize_t n, double shift) {                          \
        vd s[NV], sc[NV], q[NV], qc[NV], k = splat(shift);                                      \
        for (int j = 0; j < NV; j++) s[j] = sc[j] = q[j] = qc[j] = splat(0.0);                  \
        Py_ssize_t i = 0;                                                                       \
        for (; i + 8 * STEP <= n; i += 8 * STEP)                                                \
            UNROLLED for (int j = 0; j < NV; j++) {                                             \
                const T *p = x + i + W * j;                                                     \
                vd a = LOAD(p) - k, b = LOAD(p + STEP) - k;                                     \
                vd e = LOAD(p + 2 * STEP) - k, f = LOAD(p + 3 * STEP) - k;                      \
                vd g = LOAD(p + 4 * STEP) - k, h = LOAD(p + 5 * STEP) - k;                      \
                vd u = LOAD(p + 6 * STEP) - k, v = LOAD(p + 7 * STEP) - k;                      \
                kahan_add(&s[j], &sc[j], ((a + b) + (e + f)) + ((g + h) + (u + v)));            \
                kahan_add(&q[j], &qc[j], ((a * a + b * b) + (e * e + f * f)) +                  \
                                             ((g * g + h * h) + (u * u + v * v)));              \
            }                                                                                   \
        for (; i + STEP <= n; i += STEP)                                                        \
            UNROLLED for (int j = 0; j < NV; j++) {                                             \
                vd a = LOAD(x + i + W * j) - k;                                                 \
                kahan_add(&s[j], &sc[j], a);                                                    \
                kahan_add(&q[j], &qc[j], a * a);                                                \
            }                                                                                   \
        double ts = 0.0, tsc = 0.0, tq = 0.0, tqc = 0.0;                                        \
        for (; i < n; i++) {                                                                    \
            double a = (double)x[i] - shift, y = a - tsc, t = ts + y;                           \
            tsc = (t - ts) - y;                                                                 \
            ts = t;                                                                             \
            y = a * a - tqc;                                                                    \
            t = tq + y;                                                                         \
            tqc = (t - tq) - y;                                                                 \
            tq = t;                                                                             \
        }                                                                                       \
        vd ds = splat(0.0), dq = splat(0.0);                                                    \
        for (int j = 0; j < NV; j++) {                                                          \
            ds += s[j] - sc[j];                                                                 \
            dq += q[j] - qc[j];                                                                 \
        }                                                                                       \
        return (Shifted){hsum(ds) + (ts - tsc), hsum(dq) + (tq - tqc)};                         \
    }

DEFINE_SHIFTED_SUMS(shifted_f32, float, load_f32)
DEFINE_SHIFTED_SUMS(shifted_f64, double, load_d)

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
/* The same sums with AVX-512's 8 lanes in one register instead of two registers of 4: lane l
 * holds what lane l % 4 of vector l / 4 holds above, and the lanes are added in the same order
 * at the end, so the results are the same bits on every CPU (tests/test_kernels.py checks).
 * 1.2x faster here (13.1 against 10.7 GB/s on two cores); 8 lanes on AVX2 were slower. */
#define HAVE_WIDE 1
#define WIDE __attribute__((target("avx512f")))
typedef double vd8 __attribute__((vector_size(64)));

WIDE static inline vd8 load8_f32(const float *p) {
    vd8 v;
    for (int k = 0; k < 8; k++) v[k] = p[k];
    return v;
}

WIDE static inline vd8 load8_d(const double *p) {
    vd8 v;
    memcpy(&v, p, sizeof v);
    return v;
}

WIDE static inline void kahan8(vd8 *s, vd8 *c, vd8 x) {
    vd8 y = x - *c, t = *s + y;
    *c = (t - *s) - y;
    *s = t;
}

#define DEFINE_WIDE_SHIFTED_SUMS(NAME, T, LOAD)                                                 \
    WIDE static Shifted NAME(const T *x, Py_ssize_t n, double shift) {                         \
        vd8 zero = {0}, s = zero, sc = zero, q = zero, qc = zero, k = shift - zero;             \
        Py_ssize_t i = 0;                                                                       \
        for (; i + 64 <= n; i += 64) {                                                          \
            const T *p = x + i;                                                                 \
            vd8 a = LOAD(p) - k, b = LOAD(p + 8) - k, e = LOAD(p + 16) - k;                     \
            vd8 f = LOAD(p + 24) - k, g = LOAD(p + 32) - k, h = LOAD(p + 40) - k;               \
            vd8 u = LOAD(p + 48) - k, v = LOAD(p + 56) - k;                                     \
            kahan8(&s, &sc, ((a + b) + (e + f)) + ((g + h) + (u + v)));                         \
            kahan8(&q, &qc, ((a * a + b * b) + (e * e + f * f)) +                               \
                                ((g * g + h * h) + (u * u + v * v)));                           \
        }                                                                                       \
        for (; i + 8 <= n; i += 8) {                                                            \
            vd8 a = LOAD(x + i) - k;                                                            \
            kahan8(&s, &sc, a);                                                                 \
            kahan8(&q, &qc, a * a);                                                             \
        }                                                                                       \
        double ts = 0.0, tsc = 0.0, tq = 0.0, tqc = 0.0;                                        \
        for (; i < n; i++) {                                                                    \
            double a = (double)x[i] - shift, y = a - tsc, t = ts + y;                           \
            tsc = (t - ts) - y;                                                                 \
            ts = t;                                                                             \
            y = a * a - tqc;                                                                    \
            t = tq + y;                                                                         \
            tqc = (t - tq) - y;                                                                 \
            tq = t;                                                                             \
        }                                                                                       \
        double ds = 0.0, dq = 0.0;                                                              \
        for (int l = 0; l < 4; l++) { /* as ds += s[j] - sc[j] over j, then hsum(ds) */         \
            ds += (0.0 + (s[l] - sc[l])) + (s[l + 4] - sc[l + 4]);                              \
            dq += (0.0 + (q[l] - qc[l])) + (q[l + 4] - qc[l + 4]);                              \
        }                                                                                       \
        return (Shifted){ds + (ts - tsc), dq + (tq - tqc)};                                     \
    }

DEFINE_WIDE_SHIFTED_SUMS(wide_f32, float, load8_f32)
DEFINE_WIDE_SHIFTED_SUMS(wide_f64, double, load8_d)
#endif

/* Use the 8-lane sums: set at import where the CPU has AVX-512; use_wide() switches. */
static int wide = 0;

/* The shifted sums of the float32 values at `from`, or of the doubles in buf. */
static Shifted shifted_sums(const double *buf, const float *from, Py_ssize_t n, double shift) {
#ifdef HAVE_WIDE
    if (wide) return from ? wide_f32(from, n, shift) : wide_f64(buf, n, shift);
#endif
    return from ? shifted_f32(from, n, shift) : shifted_f64(buf, n, shift);
}

/* A shift for the next chunk: the mean so far where it stands out from the spread, else 0
 * (then d = x exactly). Rounded to float32 for float32 values, so that x - shift is mostly
 * exact. */
static double shift_for(const Moments *m, int float32) {
    if (!(m->count > 0 && 4 * m->mean * m->mean > m->m2 / m->count)) return 0.0;
    return float32 ? (double)(float)m->mean : m->mean;
}

/* Does the chunk's mean lie within one standard deviation of `shift` (then the shifted
 * formula loses at most a factor 2 to cancellation: its rounding error grows with 1 + n (mean -
 * shift)^2 / m2), and is the shift 0 or at most twice the mean (then n |shift| <= 2 sum |x|, so
 * the sum keeps its few ULPs of sum |x|)? */
static int shift_is_good(Shifted t, Py_ssize_t n, double shift) {
    double offset = t.d * t.d / (double)n, mean = shift + t.d / (double)n;
    return isfinite(t.dd) && 2 * offset <= t.dd && (shift == 0 || fabs(shift) <= 2 * fabs(mean));
}

/* The mean of n finite values as a sum of x / n, which cannot overflow: a shift for values
 * whose plain sum does. */
static double scaled_mean(const double *buf, const float *from, Py_ssize_t n) {
    double total = 0.0, scale = 1.0 / (double)n;
    for (Py_ssize_t i = 0; i < n; i++) total += (from ? from[i] : buf[i]) * scale;
    return total;
}

/* Fold one chunk into m: the n float32 values at `from`, or (from == NULL) the doubles in buf.
 * One pass of shifted sums gives m2 = sum d^2 - (sum d)^2 / n, exact in real arithmetic for
 * any shift; a chunk whose mean the shift misses (the first of an offset channel, a trend)
 * gets a second pass around its own mean, from L1. */
static void chunk_moments(double *buf, Py_ssize_t n, const float *from, Moments *m) {
    double shift = shift_for(m, from != NULL);
    Shifted t = shifted_sums(buf, from, n, shift);
    if (!isfinite(t.dd)) { /* rare: non-finite values (counted and dropped), or huge ones */
        Py_ssize_t kept = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            double v = from ? from[i] : buf[i];
            if (isnan(v)) m->nan += 1;
            else if (v == INFINITY) m->pinf += 1;
            else if (v == -INFINITY) m->ninf += 1;
            else buf[kept++] = v;
        }
        if (kept == 0) return;
        if (kept < n) {
            n = kept, from = NULL;
            shift = shift_for(m, 0);
            t = shifted_sums(buf, NULL, n, shift);
        }
    }
    if (!shift_is_good(t, n, shift)) {
        /* Around the chunk's own mean; where the sum overflows too (values near float64's
         * limit), a mean of the values scaled by 1/n first. */
        shift = isfinite(t.d) ? shift + t.d / (double)n : scaled_mean(buf, from, n);
        if (from) shift = (double)(float)shift;
        t = shifted_sums(buf, from, n, shift);
    }
    double count = (double)n, m2 = t.dd - t.d * t.d / count;
    if (!isfinite(t.dd)) m2 = INFINITY; /* the squared deviations themselves overflow */
    /* sum = count * shift + sum d, with the product's rounding error kept (fma is exact) */
    double product = count * shift; /* inf where the sum overflows: then no error term */
    neumaier_add(m, product);
    neumaier_add(m, (isfinite(product) ? fma(count, shift, -product) : 0.0) + t.d);
    moments_merge(m, count, shift, t.d / count, m2 > 0 ? m2 : 0.0);
}


static void moments_region(const void *x, int code, Py_ssize_t C, Py_ssize_t S, Py_ssize_t n0,
                           Py_ssize_t n1, Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t s0,
                           Py_ssize_t s1, double *out) {
    double buf[CHUNK];
    Py_ssize_t len = s1 - s0;
    for (Py_ssize_t c = c0; c < c1; c++) {
        Moments m;
        moments_init(&m);
        if (len >= CHUNK / 4) { /* long runs: chunks within each run */
            for (Py_ssize_t n = n0; n < n1; n++)
                for (Py_ssize_t s = s0; s < s1; s += CHUNK) {
                    Py_ssize_t piece = s1 - s < CHUNK ? s1 - s : CHUNK, at = (n * C + c) * S + s;
                    if (code == DT_F32) {
                        chunk_moments(buf, piece, (const float *)x + at, &m);
                    } else {
                        widen(x, code, at, piece, buf);
                        chunk_moments(buf, piece, NULL, &m);
                    }
                }
        } else if (len > 0) { /* short runs: gather whole runs of consecutive rows */
            Py_ssize_t per = CHUNK / len;
            for (Py_ssize_t n = n0; n < n1; n += per) {
                Py_ssize_t rows = n1 - n < per ? n1 - n : per;
                for (Py_ssize_t r = 0; r < rows; r++)
                    widen(x, code, ((n + r) * C + c) * S + s0, len, buf + r * len);
                chunk_moments(buf, rows * len, NULL, &m);
            }
        }
        double *o = out + (c - c0) * M_FIELDS;
        o[M_COUNT] = m.count;
        o[M_SUM] = m.sum + m.sum_c;
        o[M_MEAN] = m.mean;
        o[M_MEAN_LO] = m.mean_lo;
        o[M_M2] = m.m2;
        o[M_NAN] = m.nan;
        o[M_PINF] = m.pinf;
        o[M_NINF] = m.ninf;
    }
}

/* ---- output errors ----------------------------------------------------------------------- */

/* The errors of y against ref = (x - mean) / std * weight + bias, exactly as
 * reference.normalize and agreement.elementwise_errors compute them: |y - ref|, that in ULPs
 * of the dtype at ref, and |ref| (0 where not finite). Every result is >= 0 and never NaN, so
 * its bits order as its value does: the loops below take their maxima as int64, which
 * vectorizes (a double max with NaN rules does not). */
static inline __attribute__((always_inline)) void element_errors(double x, double actual,
                                                                const double *pr, int mant,
                                                                int minexp, int64_t *e_bits,
                                                                int64_t *ulp_bits,
                                                                int64_t *ref_bits) {
    const double mean = pr[0], std = pr[1], weight = pr[2], bias = pr[3];
    double dev = x - mean, x_hat = dev / std;
    x_hat = ((std == 0) & (dev == 0)) ? 0.0 : x_hat; /* the limit eps -> 0+ */
    double ref = x_hat * weight + bias, e = fabs(actual - ref);
    /* bitwise & and |, not && and ||: no branches, so the loop vectorizes */
    int agree = ((actual != actual) & (ref != ref)) | ((actual == ref) & (fabs(actual) == INFINITY));
    e = e != e ? INFINITY : e;
    e = agree ? 0.0 : e;
    uint64_t bits;
    memcpy(&bits, &ref, 8);
    int64_t lead = (int64_t)((bits >> 52) & 0x7ff) - 1023;
    lead = lead < minexp ? minexp : (lead > 1023 ? 1023 : lead);
    int64_t k = mant - lead, big = k > 1000;
    /* e * 2**k exactly, in two steps where 2**k alone would overflow (float64's 2**1074) */
    uint64_t first = (uint64_t)((big ? k - 1000 : k) + 1023) << 52;
    uint64_t second = (uint64_t)((big ? 1000 : 0) + 1023) << 52;
    double f1, f2, ulp;
    memcpy(&f1, &first, 8);
    memcpy(&f2, &second, 8);
    ulp = (e * f1) * f2;
    memcpy(e_bits, &e, 8);
    memcpy(ulp_bits, &ulp, 8);
    int64_t magnitude = (int64_t)(bits & 0x7fffffffffffffffULL);
    *ref_bits = ((bits >> 52) & 0x7ff) == 0x7ff ? 0 : magnitude;
}

static inline int64_t bits_of(double d) {
    int64_t b;
    memcpy(&b, &d, 8);
    return b;
}

static inline double double_of(int64_t b) {
    double d;
    memcpy(&d, &b, 8);
    return d;
}

/* Fold n values of x and y (of type T) into o, the channel's maxima so far; `base` is the flat
 * index of x[0]. The largest ULP error's index is looked for only when the maximum grows:
 * rare after the first chunks. */
#define DEFINE_ERRORS_CHUNK(NAME, T)                                                            \
    static HOT void NAME(const T *x, const T *y, Py_ssize_t n, const double *pr, int mant,     \
                         int minexp, double *o, Py_ssize_t base) {                             \
        int64_t best_abs = bits_of(o[E_MAX_ABS]), best_ref = bits_of(o[E_MAX_REF]);           \
        int64_t old_ulp = bits_of(o[E_MAX_ULP]), best_ulp = old_ulp;                          \
        for (Py_ssize_t i = 0; i < n; i++) {                                                   \
            int64_t e, u, r;                                                                   \
            element_errors((double)x[i], (double)y[i], pr, mant, minexp, &e, &u, &r);         \
            best_abs = e > best_abs ? e : best_abs;                                            \
            best_ulp = u > best_ulp ? u : best_ulp;                                            \
            best_ref = r > best_ref ? r : best_ref;                                            \
        }                                                                                      \
        if (best_ulp > old_ulp)                                                                \
            for (Py_ssize_t i = 0; i < n; i++) {                                               \
                int64_t e, u, r;                                                               \
                element_errors((double)x[i], (double)y[i], pr, mant, minexp, &e, &u, &r);     \
                if (u == best_ulp) {                                                           \
                    o[E_ARGMAX] = (double)(base + i);                                          \
                    break;                                                                     \
                }                                                                              \
            }                                                                                  \
        o[E_MAX_ABS] = double_of(best_abs);                                                    \
        o[E_MAX_ULP] = double_of(best_ulp);                                                    \
        o[E_MAX_REF] = double_of(best_ref);                                                    \
    }

DEFINE_ERRORS_CHUNK(errors_f32, float)
DEFINE_ERRORS_CHUNK(errors_f64, double)

static void errors_region(const void *x, const void *y, int code, Py_ssize_t C, Py_ssize_t S,
                          Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t c0, Py_ssize_t c1,
                          Py_ssize_t s0, Py_ssize_t s1, const double *params, int mant,
                          int minexp, double *out) {
    double xb[CHUNK / 2], yb[CHUNK / 2];
    for (Py_ssize_t c = c0; c < c1; c++) {
        double *o = out + (c - c0) * E_FIELDS;
        const double *pr = params + 4 * c;
        o[E_MAX_ABS] = o[E_MAX_ULP] = o[E_MAX_REF] = 0.0;
        o[E_ARGMAX] = -1.0;
        for (Py_ssize_t n = n0; n < n1; n++)
            for (Py_ssize_t s = s0; s < s1; s += CHUNK / 2) {
                Py_ssize_t piece = s1 - s < CHUNK / 2 ? s1 - s : CHUNK / 2;
                Py_ssize_t at = (n * C + c) * S + s;
                if (code == DT_F32) {
                    errors_f32((const float *)x + at, (const float *)y + at, piece, pr, mant,
                               minexp, o, at);
                } else if (code == DT_F64) {
                    errors_f64((const double *)x + at, (const double *)y + at, piece, pr, mant,
                               minexp, o, at);
                } else { /* float16, bfloat16: widened first */
                    widen(x, code, at, piece, xb);
                    widen(y, code, at, piece, yb);
                    errors_f64(xb, yb, piece, pr, mant, minexp, o, at);
                }
            }
    }
}

/* ---- Welford --------------------------------------------------------------------------- */

/* Welford's running mean and variance in working precision WORK, in memory order: the classic
 * one-pass algorithm as hand-written code runs it, for --var-method. */
#define DEFINE_WELFORD(NAME, WORK)                                                              \
    static void NAME(const void *x, int code, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,        \
                     double *out) {                                                             \
        double buf[CHUNK];                                                                      \
        for (Py_ssize_t c = 0; c < C; c++) {                                                    \
            WORK mean = 0, m2 = 0, k = 0;                                                       \
            for (Py_ssize_t n = 0; n < N; n++)                                                  \
                for (Py_ssize_t s = 0; s < S; s += CHUNK) {                                     \
                    Py_ssize_t piece = S - s < CHUNK ? S - s : CHUNK;                           \
                    widen(x, code, (n * C + c) * S + s, piece, buf);                            \
                    for (Py_ssize_t i = 0; i < piece; i++) {                                    \
                        WORK v = (WORK)buf[i], delta = v - mean;                                \
                        k += 1;                                                                 \
                        mean += delta / k;                                                      \
                        m2 += delta * (v - mean);                                               \
                    }                                                                           \
                }                                                                               \
            out[2 * c] = mean;                                                                  \
            out[2 * c + 1] = m2 / k;                                                            \
        }                                                                                       \
    }

DEFINE_WELFORD(welford_float, float)
DEFINE_WELFORD(welford_double, double)

/* ---- Python bindings --------------------------------------------------------------------- */

/* Check that `buffer` holds a contiguous (N, C, S) array of dtype `code`. */
static int check_layout(Py_buffer *buffer, int code, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S) {
    if (code < 0 || code > 3) {
        PyErr_SetString(PyExc_ValueError, "unknown dtype code");
        return 0;
    }
    if (N < 0 || C < 0 || S < 0 || buffer->len != N * C * S * ITEMSIZE[code]) {
        PyErr_SetString(PyExc_ValueError, "buffer size does not match N * C * S * itemsize");
        return 0;
    }
    return 1;
}

static int check_doubles(Py_buffer *buffer, Py_ssize_t doubles) {
    if (buffer->len != doubles * (Py_ssize_t)sizeof(double)) {
        PyErr_SetString(PyExc_ValueError, "float64 buffer has the wrong size");
        return 0;
    }
    return 1;
}

static int check_region(Py_ssize_t N, Py_ssize_t C, Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t c0,
                        Py_ssize_t c1) {
    if (0 <= n0 && n0 <= n1 && n1 <= N && 0 <= c0 && c0 <= c1 && c1 <= C) return 1;
    PyErr_SetString(PyExc_ValueError, "region outside the array");
    return 0;
}

static int check_positions(Py_ssize_t S, Py_ssize_t s0, Py_ssize_t s1) {
    if (0 <= s0 && s0 <= s1 && s1 <= S) return 1;
    PyErr_SetString(PyExc_ValueError, "positions outside the array");
    return 0;
}

static PyObject *py_moments(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer x, out;
    int code;
    Py_ssize_t N, C, S, n0, n1, c0, c1, s0, s1;
    if (!PyArg_ParseTuple(args, "y*innnnnnnnnw*", &x, &code, &N, &C, &S, &n0, &n1, &c0, &c1, &s0,
                          &s1, &out))
        return NULL;
    PyObject *result = NULL;
    if (check_layout(&x, code, N, C, S) && check_doubles(&out, (c1 - c0) * M_FIELDS) &&
        check_region(N, C, n0, n1, c0, c1) && check_positions(S, s0, s1)) {
        Py_BEGIN_ALLOW_THREADS
        moments_region(x.buf, code, C, S, n0, n1, c0, c1, s0, s1, out.buf);
        Py_END_ALLOW_THREADS
        result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *py_output_errors(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer x, y, params, out;
    int code, mant, minexp;
    Py_ssize_t N, C, S, n0, n1, c0, c1, s0, s1;
    if (!PyArg_ParseTuple(args, "y*y*innnnnnnnny*iiw*", &x, &y, &code, &N, &C, &S, &n0, &n1,
                          &c0, &c1, &s0, &s1, &params, &mant, &minexp, &out))
        return NULL;
    PyObject *result = NULL;
    if (check_layout(&x, code, N, C, S) && check_layout(&y, code, N, C, S) &&
        check_doubles(&params, 4 * C) && check_doubles(&out, (c1 - c0) * E_FIELDS) &&
        check_region(N, C, n0, n1, c0, c1) && check_positions(S, s0, s1)) {
        Py_BEGIN_ALLOW_THREADS
        errors_region(x.buf, y.buf, code, C, S, n0, n1, c0, c1, s0, s1, params.buf, mant,
                      minexp, out.buf);
        Py_END_ALLOW_THREADS
        result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&y);
    PyBuffer_Release(&params);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *py_welford(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer x, out;
    int code;
    Py_ssize_t N, C, S;
    if (!PyArg_ParseTuple(args, "y*innnw*", &x, &code, &N, &C, &S, &out)) return NULL;
    PyObject *result = NULL;
    if (check_layout(&x, code, N, C, S) && check_doubles(&out, C * 2)) {
        Py_BEGIN_ALLOW_THREADS
        if (code == DT_F64) welford_double(x.buf, code, N, C, S, out.buf);
        else welford_float(x.buf, code, N, C, S, out.buf);
        Py_END_ALLOW_THREADS
        result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *py_use_wide(PyObject *self, PyObject *args) {
    (void)self;
    int want;
    if (!PyArg_ParseTuple(args, "p", &want)) return NULL;
#ifdef HAVE_WIDE
    wide = want && __builtin_cpu_supports("avx512f");
#else
    (void)want;
#endif
    return PyBool_FromLong(wide);
}

static PyMethodDef methods[] = {
    {"use_wide", py_use_wide, METH_VARARGS,
     "use_wide(flag): sum in AVX-512's 8 lanes where the CPU has them (the same results, "
     "faster); returns whether it now does."},
    {"moments", py_moments, METH_VARARGS,
     "moments(x, dtype_code, N, C, S, n0, n1, c0, c1, s0, s1, out): per channel of the region, "
     "write (count, sum, mean, m2) of its finite values and its NaN, +inf, -inf counts into out."},
    {"output_errors", py_output_errors, METH_VARARGS,
     "output_errors(x, y, dtype_code, N, C, S, n0, n1, c0, c1, s0, s1, params, mant, minexp, out): per "
     "channel, (max abs error, max ULP error, max |reference|, flat index of the max ULP error) "
     "of y against (x - mean) / std * weight + bias; params holds (mean, std, weight, bias)."},
    {"welford", py_welford, METH_VARARGS,
     "welford(x, dtype_code, N, C, S, out): per channel, (mean, biased var) by Welford's update "
     "in working precision (float32, or float64 for float64 input), in memory order."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kernels(void) {
#ifdef HAVE_WIDE
    wide = __builtin_cpu_supports("avx512f");
#endif
    return PyModule_Create(&module);
}
