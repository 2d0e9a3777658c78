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
#include <immintrin.h>
#endif

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
enum { M_COUNT, M_SUM, M_MEAN, M_MEAN_LO, M_M2, M_NAN, M_PINF, M_NINF, M_SUM_LO, M_SUM_ERR, M_M2_LO,
       M_FIELDS };
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

typedef uint32_t bits32 __attribute__((may_alias));

/* Gather `rows` runs of `len` values `stride` elements apart, from element `at` of x, widened
 * to doubles in out (one call per chunk, the dtype's switch outside the loops: a call per run
 * of one value cost ~20 ns a value for (N, C) inputs). For bfloat16 values also their least
 * nonzero magnitude, as the float32 bits shifted left once (0 if all are zero), for
 * grid_exponent (float32 values are gathered as float32 by gather_f32 instead). */
static HOT uint32_t gather(const void *x, int code, Py_ssize_t at, Py_ssize_t stride,
                           Py_ssize_t rows, Py_ssize_t len, double *out) {
    uint32_t least = UINT32_MAX; /* of (bits << 1) - 1: a zero wraps to the largest */
    for (Py_ssize_t r = 0; r < rows; r++, at += stride, out += len) {
        switch (code) {
        case DT_F32: {
            const float *p = (const float *)x + at;
            for (Py_ssize_t i = 0; i < len; i++) out[i] = p[i];
            break;
        }
        case DT_F64: {
            const double *p = (const double *)x + at;
            for (Py_ssize_t i = 0; i < len; i++) out[i] = p[i]; /* a call per run cost more */
            break;
        }
        case DT_F16: {
            const uint16_t *p = (const uint16_t *)x + at;
            for (Py_ssize_t i = 0; i < len; i++) out[i] = half_to_double(p[i]);
            break;
        }
        default: {
            const uint16_t *p = (const uint16_t *)x + at;
            for (Py_ssize_t i = 0; i < len; i++) {
                uint32_t v = ((uint32_t)p[i] << 17) - 1;
                least = v < least ? v : least;
                out[i] = bf16_to_double(p[i]);
            }
            break;
        }
        }
    }
    return least + 1;
}

/* Gather `rows` runs of `len` float32 values `stride` apart from x into out, as they are:
 * their sums then run as a float32 run's do, exactness check included (widened to doubles
 * they needed a pass of their own for it, 10-20% of a short run's time). */
static HOT void gather_f32(const float *x, Py_ssize_t stride, Py_ssize_t rows, Py_ssize_t len,
                           float *out) {
    for (Py_ssize_t r = 0; r < rows; r++, x += stride, out += len) {
        if (len >= 16) memcpy(out, x, (size_t)len * sizeof *x);
        else for (Py_ssize_t i = 0; i < len; i++) out[i] = x[i];
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

/* The sums' accuracy (docs/precision.md). Each chunk is summed around a shift, and the
 * kernel returns with the channel's sum a bound on its error, from how each chunk was summed:
 *  - shift 0 (the mean within half a standard deviation of 0: the values cancel, and a ULP of
 *    the sum can be far below one of sum |x|): float16 chunks are exact (every value is a
 *    multiple of 2**-24 and every partial sum of 2048 of them below 2**29). float32 and bfloat16
 *    chunks are summed as any other, and are exact when every value is a multiple of 2**g with
 *    sum |x| < 2**(53 + g), checked from the least nonzero magnitude (found alongside the sums;
 *    it fails on ~0.5% of standard normal float32 chunks). float64 chunks, and those that fail
 *    the check, are summed error-free (a two-sum in every addition) with the errors summed
 *    plainly: within (n / 64 + 27)**2 u**2 sum |x|.
 *  - any other shift: the plain sums are within 6.2 u sum |x - shift|: the subtraction (u), the
 *    tree of eight (3u) and Kahan's sum of the trees (2u), the lanes joined error-free; with the
 *    mean beyond half a standard deviation that is at most ~17.5 u of the sum itself.
 *  - chunks of fewer than 64 values, whatever the shift: error-free (small_sums).
 * sum |d| <= sqrt(n sum d^2) bounds the unknown sum of magnitudes. The chunks' sums are joined
 * by Neumaier's method, whose own rounding is bounded from the sizes of its terms. */
#define U 0x1p-53 /* float64's unit roundoff */

typedef struct {
    double count, mean, mean_lo, m2; /* Chan's running (n, mean, M2) of the finite values; the
                                        mean as mean + mean_lo, so that merging keeps it exact */
    double m2_c;                     /* what m2's additions rounded away */
    double sum, sum_c;               /* their Neumaier-compensated sum */
    double plain_n, plain_dd;        /* values and sum d^2 of the chunks summed plainly */
    double two_n, two_dd;            /* the same of the chunks summed error-free */
    double sizes, adds;              /* what sum_c took in: its terms are at most U * sizes */
    double unbounded;                /* a chunk's sums overflowed: no bound */
    double shift;                    /* the last chunk's shift, the next one's first guess */
    double nan, pinf, ninf;
} Moments;

static void moments_init(Moments *m) { memset(m, 0, sizeof *m); }

static void neumaier_add(Moments *m, double x) {
    double t = m->sum + x; /* keep what the addition rounded away: at most U |t| */
    if (isfinite(t))       /* past float64's range the sum is inf, not inf - inf = NaN */
        m->sum_c += fabs(m->sum) >= fabs(x) ? (m->sum - t) + x : (x - t) + m->sum;
    m->sum = t;
    m->sizes += fabs(t);
    m->adds += 1;
}

/* Add x, at most U * size in magnitude, straight into the compensation. */
static void add_small(Moments *m, double x, double size) {
    m->sum_c += x;
    m->sizes += size;
    m->adds += 1;
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
    double delta = (shift - m->mean) + (rel_mean - m->mean_lo), sum, rest;
    two_sum(m->m2, m2, &sum, &rest); /* error-free: m2 over many chunks stays within ~2 ULPs */
    m->m2_c += rest;
    two_sum(sum, delta * delta * (m->count * count / total), &m->m2, &rest);
    m->m2_c += rest;
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

/* Two-sum in every lane: a + b = *s + *e exactly. */
static inline void two_sum_v(vd a, vd b, vd *s, vd *e) {
    vd t = a + b, back = t - a;
    *e = (a - (t - back)) + (b - back);
    *s = t;
}

/* W values at p widened to double. Written as a lane loop, which GCC turns into one
 * vcvtps2pd; __builtin_convertvector is split into halves and spilled to the stack for AVX2. */
static inline vd load_f32(const float *p) {
    vd v;
    for (int k = 0; k < W; k++) v[k] = p[k];
    return v;
}

/* Whether a chunk's sums are exact is decided from its least nonzero magnitude (see
 * grid_exponent): its float32 values' bits, shifted left once to drop the sign, are compared
 * as unsigned integers, alongside the sums (a separate pass cost 20% here: the sums wait on
 * their Kahan chains, and these comparisons fill the gaps). A zero makes the least 0; then a
 * second pass looks past zeros. */
typedef uint32_t vu8 __attribute__((vector_size(32)));

static inline vu8 least_of(vu8 fewest, const char *p) {
    vu8 v;
    memcpy(&v, p, sizeof v);
    v <<= 1;
    vu8 below = (vu8)(v < fewest);
    return (v & below) | (fewest & ~below);
}

/* The least of `fewest`'s lanes and of the n float32 values at p, their bits shifted left. */
static inline uint32_t least_after(vu8 fewest, const float *p, Py_ssize_t n) {
    uint32_t least = UINT32_MAX;
    for (int l = 0; l < 8; l++) least = fewest[l] < least ? fewest[l] : least;
    const bits32 *b = (const bits32 *)p;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t v = b[i] << 1;
        least = v < least ? v : least;
    }
    return least;
}

/* Sums over one chunk: of d = x - shift, as d + d_lo (d rounded, d_lo what it left out), and
 * of d * d, as dd + dd_lo. */
typedef struct {
    double d, d_lo, dd, dd_lo;
} Shifted;

typedef double vd2 __attribute__((vector_size(16)));

/* The eight lane sums s0 + c0, s1 + c1 (c the lanes' small corrections) and the scalar tail's
 * ts + tc joined into one sum *hi + *lo: lane l with lane l + 4, then l with l + 2, then the
 * last two and the tail, each addition error-free (two-sum), the corrections added plainly.
 * A tree of vector two-sums: 8 scalar ones in a row cost 3% here. */
static inline void join_lanes(vd s0, vd c0, vd s1, vd c1, double ts, double tc, double *hi,
                              double *lo) {
    vd h, e;
    two_sum_v(s0, s1, &h, &e);
    vd c = (c0 + c1) + e;
    vd2 ha = {h[0], h[1]}, hb = {h[2], h[3]}, ca = {c[0], c[1]}, cb = {c[2], c[3]};
    vd2 h2 = ha + hb, back = h2 - ha;
    vd2 c2 = (ca + cb) + ((ha - (h2 - back)) + (hb - back));
    double sum, rest, sum2, rest2;
    two_sum(h2[0], h2[1], &sum, &rest);
    rest += c2[0] + c2[1];
    two_sum(sum, ts, &sum2, &rest2);
    rest += rest2 + tc;
    two_sum(sum2, rest, hi, lo);
    if (!isfinite(*hi)) *lo = 0.0;
}

/* Four lane sums h + c and a tail's th + tc joined into *hi + *lo, error-free. */
static inline void join4(vd h, vd c, double th, double tc, double *hi, double *lo) {
    vd2 ha = {h[0], h[1]}, hb = {h[2], h[3]}, ca = {c[0], c[1]}, cb = {c[2], c[3]};
    vd2 h2 = ha + hb, back = h2 - ha;
    vd2 c2 = (ca + cb) + ((ha - (h2 - back)) + (hb - back));
    double sum, rest, sum2, rest2;
    two_sum(h2[0], h2[1], &sum, &rest);
    rest += c2[0] + c2[1];
    two_sum(sum, th, &sum2, &rest2);
    rest += rest2 + tc;
    two_sum(sum2, rest, hi, lo);
    if (!isfinite(*hi)) *lo = 0.0;
}

/* The chunk's sums from the lanes of d (s, c) and of d * d (q, qc). */
static inline Shifted joined(vd s0, vd c0, vd s1, vd c1, double ts, double tc, vd q0, vd qc0,
                             vd q1, vd qc1, double tq, double tqc) {
    Shifted t;
    join_lanes(s0, c0, s1, c1, ts, tc, &t.d, &t.d_lo);
    join_lanes(q0, qc0, q1, qc1, tq, tqc, &t.dd, &t.dd_lo);
    return t;
}

/* shifted sums over n values of type T, in W * NV lanes: each lane adds eight values pairwise,
 * then Kahan-adds their sum, which keeps the error within a few ULPs at an eighth of Kahan's
 * cost per value (four measured 10% slower here). SUB is "- k", or empty where the shift is 0
 * (the same results: x - 0 is x). The lanes are joined in lane order, error-free. */
#define DEFINE_SHIFTED_SUMS(NAME, T, LOAD, SUB, CERTIFY)                                        \
    static HOT Shifted NAME(const T *x, Py_ssize_t n, double shift, uint32_t *least) {         \
        vd s[NV], sc[NV], q[NV], qc[NV], k = splat(shift);                                      \
        vu8 fewest = ~(vu8){0};                                                                 \
        (void)k, (void)least;                                                                   \
        for (int j = 0; j < NV; j++) s[j] = sc[j] = q[j] = qc[j] = splat(0.0);                  \
        Py_ssize_t i = 0;                                                                       \
        for (; i + 8 * STEP <= n; i += 8 * STEP) {                                              \
            if (CERTIFY)                                                                        \
                for (int b = 0; b < 8 * STEP * (int)sizeof(T); b += (int)sizeof(vu8))          \
                    fewest = least_of(fewest, (const char *)(x + i) + b);                       \
            UNROLLED for (int j = 0; j < NV; j++) {                                             \
                const T *p = x + i + W * j;                                                     \
                vd a = LOAD(p) SUB, b = LOAD(p + STEP) SUB;                                     \
                vd e = LOAD(p + 2 * STEP) SUB, f = LOAD(p + 3 * STEP) SUB;                      \
                vd g = LOAD(p + 4 * STEP) SUB, h = LOAD(p + 5 * STEP) SUB;                      \
                vd u = LOAD(p + 6 * STEP) SUB, v = LOAD(p + 7 * STEP) SUB;                      \
                kahan_add(&s[j], &sc[j], ((a + b) + (e + f)) + ((g + h) + (u + v)));            \
                kahan_add(&q[j], &qc[j], ((a * a + b * b) + (e * e + f * f)) +                  \
                                             ((g * g + h * h) + (u * u + v * v)));              \
            }                                                                                   \
        }                                                                                       \
        if (CERTIFY) *least = least_after(fewest, (const float *)(const void *)(x + i), n - i);  \
        for (; i + STEP <= n; i += STEP)                                                        \
            UNROLLED for (int j = 0; j < NV; j++) {                                             \
                vd a = LOAD(x + i + W * j) SUB;                                                 \
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
        return joined(s[0], -sc[0], s[1], -sc[1], ts, -tsc, q[0], -qc[0], q[1], -qc[1], tq,      \
                      -tqc);                                                                    \
    }

DEFINE_SHIFTED_SUMS(shifted_f32, float, load_f32, -k, 0)
DEFINE_SHIFTED_SUMS(plain_f32, float, load_f32, , 1)
DEFINE_SHIFTED_SUMS(shifted_f64, double, load_d, -k, 0)
DEFINE_SHIFTED_SUMS(plain_f64, double, load_d, , 0)

/* The sums of n doubles (no shift) with every addition of the values error-free (two-sum):
 * the same tree of eight and the same squares as above, the additions' errors summed plainly
 * beside each lane's sum. About twice the arithmetic: only where the shift is 0, for float64
 * values and for chunks of others whose sums were not exact. */
static HOT Shifted compensated_f64(const double *x, Py_ssize_t n) {
    vd s[NV], sc[NV], q[NV], qc[NV];
    for (int j = 0; j < NV; j++) s[j] = sc[j] = q[j] = qc[j] = splat(0.0);
    Py_ssize_t i = 0;
    for (; i + 8 * STEP <= n; i += 8 * STEP)
        UNROLLED for (int j = 0; j < NV; j++) {
            const double *p = x + i + W * j;
            vd a = load_d(p), b = load_d(p + STEP), e = load_d(p + 2 * STEP);
            vd f = load_d(p + 3 * STEP), g = load_d(p + 4 * STEP), h = load_d(p + 5 * STEP);
            vd u = load_d(p + 6 * STEP), v = load_d(p + 7 * STEP);
            vd s1, s2, s3, s4, t1, t2, r, r1, r2, r3, r4, r5, r6, r7, r8;
            two_sum_v(a, b, &s1, &r1);
            two_sum_v(e, f, &s2, &r2);
            two_sum_v(g, h, &s3, &r3);
            two_sum_v(u, v, &s4, &r4);
            two_sum_v(s1, s2, &t1, &r5);
            two_sum_v(s3, s4, &t2, &r6);
            two_sum_v(t1, t2, &r, &r7);
            two_sum_v(s[j], r, &s[j], &r8);
            sc[j] += ((r1 + r2) + (r3 + r4)) + ((r5 + r6) + (r7 + r8));
            kahan_add(&q[j], &qc[j], ((a * a + b * b) + (e * e + f * f)) +
                                         ((g * g + h * h) + (u * u + v * v)));
        }
    for (; i + STEP <= n; i += STEP)
        UNROLLED for (int j = 0; j < NV; j++) {
            vd a = load_d(x + i + W * j), r1;
            two_sum_v(s[j], a, &s[j], &r1);
            sc[j] += r1;
            kahan_add(&q[j], &qc[j], a * a);
        }
    double ts = 0.0, tsc = 0.0, tq = 0.0, tqc = 0.0;
    for (; i < n; i++) {
        double a = x[i], lo;
        two_sum(ts, a, &ts, &lo);
        tsc += lo;
        double y = a * a - tqc, t = tq + y;
        tqc = (t - tq) - y;
        tq = t;
    }
    return joined(s[0], sc[0], s[1], sc[1], ts, tsc, q[0], -qc[0], q[1], -qc[1], tq, -tqc);
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
/* The same sums with AVX-512's 8 lanes in one register instead of two registers of 4: lane l
 * holds what lane l % 4 of vector l / 4 holds above, and the lanes are joined in the same order
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

/* The low and high four lanes, by subscripts: taking the vector's address (memcpy) made GCC
 * keep the loops' sums on the stack, each step waiting on its own store. */
WIDE static inline void halves(vd8 v, vd *low, vd *high) {
    *low = (vd){v[0], v[1], v[2], v[3]};
    *high = (vd){v[4], v[5], v[6], v[7]};
}

WIDE static inline void two_sum8(vd8 a, vd8 b, vd8 *s, vd8 *e) {
    vd8 t = a + b, back = t - a;
    *e = (a - (t - back)) + (b - back);
    *s = t;
}

#define DEFINE_WIDE_SHIFTED_SUMS(NAME, T, LOAD, SUB, CERTIFY)                                   \
    WIDE static Shifted NAME(const T *x, Py_ssize_t n, double shift, uint32_t *least) {        \
        vd8 zero = {0}, s = zero, sc = zero, q = zero, qc = zero, k = shift - zero;             \
        __m512i fewest = _mm512_set1_epi32(-1);                                                 \
        (void)k, (void)least;                                                                   \
        Py_ssize_t i = 0;                                                                       \
        for (; i + 64 <= n; i += 64) {                                                          \
            const T *p = x + i;                                                                 \
            if (CERTIFY)                                                                        \
                for (int b = 0; b < 64 * (int)sizeof(T); b += 64)                               \
                    fewest = _mm512_min_epu32(                                                  \
                        fewest,                                                                 \
                        _mm512_slli_epi32(_mm512_loadu_si512((const char *)p + b), 1));         \
            vd8 a = LOAD(p) SUB, b = LOAD(p + 8) SUB, e = LOAD(p + 16) SUB;                     \
            vd8 f = LOAD(p + 24) SUB, g = LOAD(p + 32) SUB, h = LOAD(p + 40) SUB;               \
            vd8 u = LOAD(p + 48) SUB, v = LOAD(p + 56) SUB;                                     \
            kahan8(&s, &sc, ((a + b) + (e + f)) + ((g + h) + (u + v)));                         \
            kahan8(&q, &qc, ((a * a + b * b) + (e * e + f * f)) +                               \
                                ((g * g + h * h) + (u * u + v * v)));                           \
        }                                                                                       \
        if (CERTIFY) {                                                                          \
            uint32_t head = (uint32_t)_mm512_reduce_min_epu32(fewest);                          \
            uint32_t rest = least_after(~(vu8){0}, (const float *)(const void *)(x + i), n - i); \
            *least = head < rest ? head : rest;                                                 \
        }                                                                                       \
        for (; i + 8 <= n; i += 8) {                                                            \
            vd8 a = LOAD(x + i) SUB;                                                            \
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
        vd s0, s1, c0, c1, q0, q1, qc0, qc1;                                                    \
        halves(s, &s0, &s1), halves(-sc, &c0, &c1);                                             \
        halves(q, &q0, &q1), halves(-qc, &qc0, &qc1);                                           \
        return joined(s0, c0, s1, c1, ts, -tsc, q0, qc0, q1, qc1, tq, -tqc);                    \
    }

DEFINE_WIDE_SHIFTED_SUMS(wide_f32, float, load8_f32, -k, 0)
DEFINE_WIDE_SHIFTED_SUMS(wide_plain_f32, float, load8_f32, , 1)
DEFINE_WIDE_SHIFTED_SUMS(wide_f64, double, load8_d, -k, 0)
DEFINE_WIDE_SHIFTED_SUMS(wide_plain_f64, double, load8_d, , 0)

WIDE static Shifted wide_compensated_f64(const double *x, Py_ssize_t n) {
    vd8 zero = {0}, s = zero, sc = zero, q = zero, qc = zero;
    Py_ssize_t i = 0;
    for (; i + 64 <= n; i += 64) {
        const double *p = x + i;
        vd8 a = load8_d(p), b = load8_d(p + 8), e = load8_d(p + 16), f = load8_d(p + 24);
        vd8 g = load8_d(p + 32), h = load8_d(p + 40), u = load8_d(p + 48), v = load8_d(p + 56);
        vd8 s1, s2, s3, s4, t1, t2, r, r1, r2, r3, r4, r5, r6, r7, r8;
        two_sum8(a, b, &s1, &r1);
        two_sum8(e, f, &s2, &r2);
        two_sum8(g, h, &s3, &r3);
        two_sum8(u, v, &s4, &r4);
        two_sum8(s1, s2, &t1, &r5);
        two_sum8(s3, s4, &t2, &r6);
        two_sum8(t1, t2, &r, &r7);
        two_sum8(s, r, &s, &r8);
        sc += ((r1 + r2) + (r3 + r4)) + ((r5 + r6) + (r7 + r8));
        kahan8(&q, &qc, ((a * a + b * b) + (e * e + f * f)) + ((g * g + h * h) + (u * u + v * v)));
    }
    for (; i + 8 <= n; i += 8) {
        vd8 a = load8_d(x + i), r1;
        two_sum8(s, a, &s, &r1);
        sc += r1;
        kahan8(&q, &qc, a * a);
    }
    double ts = 0.0, tsc = 0.0, tq = 0.0, tqc = 0.0;
    for (; i < n; i++) {
        double a = x[i], lo;
        two_sum(ts, a, &ts, &lo);
        tsc += lo;
        double y = a * a - tqc, t = tq + y;
        tqc = (t - tq) - y;
        tq = t;
    }
    vd s0, s1, c0, c1, q0, q1, qc0, qc1;
    halves(s, &s0, &s1), halves(sc, &c0, &c1);
    halves(q, &q0, &q1), halves(-qc, &qc0, &qc1);
    return joined(s0, c0, s1, c1, ts, tsc, q0, qc0, q1, qc1, tq, -tqc);
}
#endif

/* Use the 8-lane sums: set at import where the CPU has AVX-512; use_wide() switches. */
static int wide = 0;

/* The shifted sums of the float32 values at `from`, or of the doubles at src; with shift 0,
 * for float32 values, *least is set as least_bits32 would set it. */
static Shifted shifted_sums(const double *src, const float *from, Py_ssize_t n, double shift,
                            uint32_t *least) {
#ifdef HAVE_WIDE
    if (wide) {
        if (from)
            return shift == 0 ? wide_plain_f32(from, n, 0.0, least)
                              : wide_f32(from, n, shift, least);
        return shift == 0 ? wide_plain_f64(src, n, 0.0, least) : wide_f64(src, n, shift, least);
    }
#endif
    if (from)
        return shift == 0 ? plain_f32(from, n, 0.0, least) : shifted_f32(from, n, shift, least);
    return shift == 0 ? plain_f64(src, n, 0.0, least) : shifted_f64(src, n, shift, least);
}

/* The sums of fewer than 64 values (no vector loop runs), every step error-free: x - shift
 * and the additions as two-sums, d * d as Dekker's product, the parts gathered plainly. A
 * handful of values cannot average their roundings away (a float64 channel of a few, or a
 * few repeated, values lost 2 ULPs of m2 to the plain sums), and a chunk this small then
 * needs no exactness check, no lanes of Kahan sums and no first shift. */
static inline void exact_square_v(vd d, vd *square, vd *rest) {
    vd split = 134217729.0 * d; /* 2**27 + 1: Veltkamp's halves, then Dekker's product */
    vd high = split - (split - d), low = d - high;
    *square = d * d;
    *rest = ((high * high - *square) + 2 * high * low) + low * low;
}

/* One value's step of small_sums: d = x - shift, its sum and square, all error-free. */
#define SMALL_STEP(TYPE, X, S, S_LO, Q, Q_LO, K)                                                \
    do {                                                                                        \
        TYPE d, d_lo, rest, square, exact;                                                      \
        two_sum##TYPE(X, -(K), &d, &d_lo);                                                      \
        two_sum##TYPE(S, d, &S, &rest);                                                         \
        S_LO += rest + d_lo;                                                                    \
        exact_square##TYPE(d, &square, &exact);                                                 \
        two_sum##TYPE(Q, square, &Q, &rest);                                                    \
        Q_LO += rest + (exact + d_lo * (2 * d + d_lo));                                         \
    } while (0)

static inline void two_sumvd(vd a, vd b, vd *s, vd *e) { two_sum_v(a, b, s, e); }
static inline void two_sumdouble(double a, double b, double *s, double *e) { two_sum(a, b, s, e); }
static inline void exact_squarevd(vd d, vd *square, vd *rest) { exact_square_v(d, square, rest); }
static inline void exact_squaredouble(double d, double *square, double *rest) {
    double split = 134217729.0 * d, high = split - (split - d), low = d - high;
    *square = d * d;
    *rest = ((high * high - *square) + 2 * high * low) + low * low;
}

/* The sums of the n float32 values at `from`, or the doubles at src: W lanes, then a tail. */
static HOT Shifted small_sums(const double *src, const float *from, Py_ssize_t n, double shift) {
    vd s = splat(0.0), s_lo = s, q = s, q_lo = s, k = splat(shift);
    Py_ssize_t i = 0;
    for (; i + W <= n; i += W) {
        vd x = from ? load_f32(from + i) : load_d(src + i);
        SMALL_STEP(vd, x, s, s_lo, q, q_lo, k);
    }
    double ts = 0.0, ts_lo = 0.0, tq = 0.0, tq_lo = 0.0;
    for (; i < n; i++) {
        double x = from ? (double)from[i] : src[i];
        SMALL_STEP(double, x, ts, ts_lo, tq, tq_lo, shift);
    }
    Shifted t; /* four lanes: joined as join_lanes' second and third steps do */
    join4(s, s_lo, ts, ts_lo, &t.d, &t.d_lo);
    join4(q, q_lo, tq, tq_lo, &t.dd, &t.dd_lo);
    return t;
}

static Shifted compensated_sums(const double *src, Py_ssize_t n) {
#ifdef HAVE_WIDE
    if (wide) return wide_compensated_f64(src, n);
#endif
    return compensated_f64(src, n);
}

/* ---- are a chunk's sums exact? ----------------------------------------------------------- */

/* The least nonzero magnitude's bits of n float32 values, shifted left once (the sign
 * dropped), as unsigned integers (0 if all are zero): for a chunk with a zero, whose least
 * the sums found to be 0. */
static HOT uint32_t least_nonzero_bits32(const float *x, Py_ssize_t n) {
    const bits32 *b = (const bits32 *)x;
    uint32_t least = UINT32_MAX;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t v = (b[i] << 1) - 1; /* a zero wraps to the largest */
        least = v < least ? v : least;
    }
    return least + 1;
}

/* The same of n doubles holding float32 (or bfloat16) values, each exactly a float. */
static uint32_t least_nonzero_held(const double *x, Py_ssize_t n) {
    uint32_t least = UINT32_MAX;
    for (Py_ssize_t i = 0; i < n; i++) {
        float f = (float)x[i];
        uint32_t v;
        memcpy(&v, &f, sizeof v);
        v = (v << 1) - 1;
        least = v < least ? v : least;
    }
    return least + 1;
}

#define ALL_ZERO 4096 /* a grid exponent for a chunk of zeros: any sum of them is exact */

/* g such that every one of a chunk's values is a multiple of 2**g, from the float32 bits of
 * their least nonzero magnitude 2**e (shifted left once; 0: all zero): g = e - (bits - 1) for
 * values of `bits` significant bits, or the format's least subnormal below its normal range
 * (float32 and bfloat16 share the exponent range). */
static int grid_exponent(uint32_t least, int bits) {
    if (least == 0) return ALL_ZERO;
    int e = (int)(least >> 24);
    return e == 0 ? -126 - (bits - 1) : e - 127 - (bits - 1);
}

/* sum |d| <= sqrt(n sum d^2) (Cauchy-Schwarz), dd being sum d^2 within a few ULPs. */
static double magnitude_bound(double n, double dd) {
    return sqrt(n * dd) * (1 + 0x1p-40);
}

/* 2**e for -1022 <= e <= 1023, built from its bits (ldexp is a library call). */
static inline double power_of_two(int e) {
    uint64_t bits = (uint64_t)(e + 1023) << 52;
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

/* With shift 0, are all partial sums of the n values exact? They are multiples of 2**g, so
 * they are while below 2**(53 + g), and none exceeds sum |x| <= magnitude_bound: compared
 * squared, n dd (1 + 2**-39) < 2**(106 + 2 g). */
static int sums_are_exact(Py_ssize_t n, double dd, int g) {
    if (g == ALL_ZERO) return 1;
    int e = 106 + 2 * g;
    if (e < -1022) return 0;
    return e > 1023 ? isfinite(dd) : (double)n * dd * (1 + 0x1p-39) < power_of_two(e);
}

static const int SIGNIFICANT_BITS[] = {24, 53, 11, 8};

enum { SUM_EXACT, SUM_ERROR_FREE, SUM_PLAIN, SUM_UNBOUNDED };

/* The sums of one chunk of n values (float32 at `from`, else doubles at src; buf is scratch
 * space) around `shift`, and in *kind how far t.d + t.d_lo can be from the exact sum (see the
 * comment on U above: exact, error-free or plain). */
static inline Shifted chunk_sums(double *buf, const double *src, const float *from,
                                 Py_ssize_t n, double shift, int code, uint32_t least_of_src,
                                 int *kind) {
    if (n < 64) {
        Shifted t = small_sums(src, from, n, shift);
        *kind = isfinite(t.dd) ? SUM_ERROR_FREE : SUM_UNBOUNDED;
        return t;
    }
    if (code == DT_F64 && shift == 0) {
        Shifted t = compensated_sums(src, n);
        *kind = isfinite(t.dd) ? SUM_ERROR_FREE : SUM_UNBOUNDED;
        return t;
    }
    uint32_t least = least_of_src;
    Shifted t = shifted_sums(src, from, n, shift, &least);
    if (from && least == 0) least = least_nonzero_bits32(from, n); /* a zero: look past it */
    if (!isfinite(t.dd)) *kind = SUM_UNBOUNDED;
    else if (code == DT_F16) *kind = SUM_EXACT;
    else if (shift != 0) *kind = SUM_PLAIN;
    else if (sums_are_exact(n, t.dd, grid_exponent(least, SIGNIFICANT_BITS[code])))
        *kind = SUM_EXACT;
    else {
        if (from) widen(from, DT_F32, 0, n, buf), src = buf;
        t = compensated_sums(src, n);
        *kind = SUM_ERROR_FREE;
    }
    return t;
}

/* Add a chunk's share to the channel's error bound: plain sums are within 6.2 U sum |d| and
 * error-free ones within (n / 64 + 27)**2 U**2 sum |d| <= 3500 U**2 sum |d| for n <= 2048; with
 * sum |d| <= sqrt(n sum d^2) per chunk and, over the chunks, sum sqrt(n_i dd_i) <=
 * sqrt(sum n_i sum dd_i) (Cauchy-Schwarz twice), a square root per channel is enough. */
static void count_error(Moments *m, int kind, Py_ssize_t n, double dd) {
    if (kind == SUM_PLAIN) m->plain_n += (double)n, m->plain_dd += dd;
    else if (kind == SUM_ERROR_FREE) m->two_n += (double)n, m->two_dd += dd;
    else if (kind == SUM_UNBOUNDED) m->unbounded = 1;
}

static double error_bound(const Moments *m) {
    if (m->unbounded) return INFINITY;
    double plain = m->plain_n > 0 ? 6.2 * U * magnitude_bound(m->plain_n, m->plain_dd) : 0.0;
    double two = /* 59**2 */
        m->two_n > 0 ? 1.02 * 3481.0 * U * U * magnitude_bound(m->two_n, m->two_dd) : 0.0;
    return plain + two + 1.01 * m->adds * U * U * m->sizes; /* and sum_c's own rounding */
}

/* The shift rounded so that x - shift is mostly exact: to float32 for float32 values, and for
 * float16 ones to a multiple of 2**-24, float16's least subnormal, which makes it exact. */
static double round_shift(double shift, int code) {
    if (code == DT_F32) return (double)(float)shift;
    if (code == DT_F16) return nearbyint(shift * 0x1p24) * 0x1p-24;
    return shift;
}

/* The shift shift_for would choose for values of mean `mean` and sum of squared deviations m2
 * (that shift_is_good then accepts): the mean, or 0 where it is within half a std of 0. */
static double shift_near(double mean, double m2, Py_ssize_t n, int code) {
    if (!isfinite(mean) || 4 * mean * mean <= m2 / (double)n) return 0.0;
    return round_shift(mean, code); /* also where m2 is unknown (NaN: squares overflow) */
}

/* A shift for a channel's first chunk, from the mean and mean square of its first 16 values
 * (a guess: shift_is_good checks it, and a wrong one costs a second pass from L1). Without it
 * every offset channel's first chunk took a wasted pass around 0. */
static double first_shift(const double *src, const float *from, Py_ssize_t n, int code) {
    double total = 0.0, squares = 0.0, k = (double)(n < 16 ? n : 16);
    for (Py_ssize_t i = 0; i < (Py_ssize_t)k; i++) {
        double v = from ? (double)from[i] : src[i];
        total += v;
        squares += v * v;
    }
    /* shift_near's 4 mean^2 > m2 / k with m2 = squares - total^2 / k: 5 total^2 > k squares */
    if (!(isfinite(squares) && 5 * total * total > k * squares)) return 0.0;
    return round_shift(total / k, code);
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
static double scaled_mean(const double *src, const float *from, Py_ssize_t n) {
    double total = 0.0, scale = 1.0 / (double)n;
    for (Py_ssize_t i = 0; i < n; i++) total += (from ? from[i] : src[i]) * scale;
    return total;
}

/* m2 = sum d^2 - (sum d)^2 / n from the chunk's sums, with the square's and the quotient's
 * rounding kept (fma is exact): rounded about once, by the subtraction. */
static inline double product_error(double a, double b, double p) { /* a * b - p, exactly */
    double sa = 134217729.0 * a, sb = 134217729.0 * b; /* Veltkamp's halves; Dekker */
    double ah = sa - (sa - a), al = a - ah, bh = sb - (sb - b), bl = b - bh;
    return ((ah * bh - p) + ah * bl + al * bh) + al * bl;
}

static double chunk_m2(Shifted t, double count) {
    double square = t.d * t.d;
    if (!(fabs(t.d) < 0x1p490)) return t.dd - (t.d / count) * t.d; /* or the halves overflow */
    double inverse = 1 / count, q = square * inverse, qc = q * count; /* one division */
    if (q < 0x1p-30 * t.dd) return (t.dd - q) + t.dd_lo; /* its rounding is below u**2 dd */
    double rest = ((square - qc) - product_error(q, count, qc) +
                   (product_error(t.d, t.d, square) + 2 * t.d * t.d_lo)) * inverse;
    return (t.dd - q) + (t.dd_lo - rest);
}

/* Fold one chunk into m: the n float32 values at `from`, or (from == NULL) the doubles at src
 * (the array itself, or buf), of dtype `code`. One pass of shifted sums gives
 * m2 = sum d^2 - (sum d)^2 / n, exact in real arithmetic for any shift; a chunk whose mean the
 * shift misses (the first of an offset channel, a trend) gets a second pass around its own
 * mean, from L1. */
static void chunk_moments(double *buf, Py_ssize_t n, const double *src, const float *from,
                          int code, uint32_t least, Moments *m) {
    /* The last chunk's shift, which shift_is_good then checks: the next chunk need not wait
     * for this one's merge (from the mean so far it did, and chunks in L1 ran ~15% slower). */
    double shift = m->count > 0 ? m->shift : n < 64 ? 0.0 : first_shift(src, from, n, code);
    int kind;
    Shifted t = chunk_sums(buf, src, from, n, shift, code, least, &kind);
    if (!isfinite(t.dd)) { /* rare: non-finite values (counted and dropped), or huge ones */
        Py_ssize_t kept = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            double v = from ? from[i] : src[i];
            if (isnan(v)) m->nan += 1;
            else if (v == INFINITY) m->pinf += 1;
            else if (v == -INFINITY) m->ninf += 1;
            else buf[kept++] = v;
        }
        if (kept == 0) return;
        if (kept < n) {
            n = kept, from = NULL, src = buf;
            shift = m->count > 0 ? m->shift : n < 64 ? 0.0 : first_shift(src, NULL, n, code);
            if (code == DT_F32 || code == DT_BF16) least = least_nonzero_held(buf, n);
            t = chunk_sums(buf, src, NULL, n, shift, code, least, &kind);
        }
    }
    if (!shift_is_good(t, n, shift)) {
        /* Around the chunk's own mean; where the sum overflows too (values near float64's
         * limit), a mean of the values scaled by 1/n first. */
        if (isfinite(t.d)) /* 0 where the chunk's values cancel, so that they sum exactly */
            shift = shift_near(shift + t.d / (double)n, t.dd - t.d * t.d / (double)n, n, code);
        else
            shift = round_shift(scaled_mean(src, from, n), code);
        t = chunk_sums(buf, src, from, n, shift, code, least, &kind);
    }
    double count = (double)n, m2 = chunk_m2(t, count);
    if (!isfinite(t.dd)) m2 = INFINITY; /* the squared deviations themselves overflow */
    /* sum = count * shift + sum d, with the product's rounding error kept (fma is exact) */
    if (shift != 0) {
        double product = count * shift; /* inf where the sum overflows: then no error term */
        neumaier_add(m, product);
        if (isfinite(product)) add_small(m, fma(count, shift, -product), fabs(product));
    }
    neumaier_add(m, t.d);
    add_small(m, t.d_lo, fabs(t.d));
    count_error(m, kind, n, t.dd);
    m->shift = shift;
    moments_merge(m, count, shift, t.d / count, m2 > 0 ? m2 : 0.0);
}

static void moments_region(const void *x, int code, Py_ssize_t C, Py_ssize_t S, Py_ssize_t n0,
                           Py_ssize_t n1, Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t s0,
                           Py_ssize_t s1, double *out) {
    double buf[CHUNK];
    float narrow[CHUNK]; /* float32 runs gathered */
    Py_ssize_t len = s1 - s0;
    for (Py_ssize_t c = c0; c < c1; c++) {
        Moments m;
        moments_init(&m);
        if (len >= CHUNK / 4) { /* long runs: chunks within each run */
            for (Py_ssize_t n = n0; n < n1; n++)
                for (Py_ssize_t s = s0; s < s1; s += CHUNK) {
                    Py_ssize_t piece = s1 - s < CHUNK ? s1 - s : CHUNK, at = (n * C + c) * S + s;
                    if (code == DT_F32) {
                        chunk_moments(buf, piece, NULL, (const float *)x + at, code,
                                      UINT32_MAX, &m);
                    } else if (code == DT_F64) {
                        chunk_moments(buf, piece, (const double *)x + at, NULL, code, 0, &m);
                    } else {
                        uint32_t least = gather(x, code, at, 0, 1, piece, buf);
                        chunk_moments(buf, piece, buf, NULL, code, least, &m);
                    }
                }
        } else if (len > 0) { /* short runs: gather whole runs of consecutive rows */
            Py_ssize_t per = CHUNK / len;
            for (Py_ssize_t n = n0; n < n1; n += per) {
                Py_ssize_t rows = n1 - n < per ? n1 - n : per, at = (n * C + c) * S + s0;
                if (code == DT_F32) {
                    gather_f32((const float *)x + at, C * S, rows, len, narrow);
                    chunk_moments(buf, rows * len, NULL, narrow, code, UINT32_MAX, &m);
                } else {
                    uint32_t least = gather(x, code, at, C * S, rows, len, buf);
                    chunk_moments(buf, rows * len, buf, NULL, code, least, &m);
                }
            }
        }
        double *o = out + (c - c0) * M_FIELDS, hi, lo;
        two_sum(m.sum, m.sum_c, &hi, &lo);
        int finite = isfinite(hi);
        o[M_COUNT] = m.count;
        o[M_SUM] = finite ? hi : m.sum + m.sum_c;
        o[M_SUM_LO] = finite ? lo : 0.0;
        /* sum_c's own rounding: `adds` terms of at most U * sizes, summed plainly */
        o[M_SUM_ERR] = finite ? error_bound(&m) : INFINITY;
        o[M_MEAN] = m.mean;
        o[M_MEAN_LO] = m.mean_lo;
        two_sum(m.m2, m.m2_c, &hi, &lo);
        o[M_M2] = isfinite(hi) ? hi : m.m2;
        o[M_M2_LO] = isfinite(hi) ? lo : 0.0;
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
     "write (count, sum, mean, mean_lo, m2) of its finite values, its NaN, +inf, -inf counts, "
     "the rest of the sum and a bound on its error (sum + sum_lo within it), and the rest of m2 "
     "into out."},
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
