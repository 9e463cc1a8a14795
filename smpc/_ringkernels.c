/*
 * Fused CPU kernels for the ring Z_2^64 (bottom layer: pure, local, no parties).
 *
 * Each kernel is one pass over contiguous int64/float64 buffers that torch
 * would otherwise make in several passes (one temporary tensor per step).
 * They take raw addresses and element counts from smpc/ring.py, which checks
 * dtype, contiguity and device before calling, and falls back to torch ops
 * when this module is not built. Arithmetic on uint64_t wraps modulo 2^64,
 * as two's-complement int64 in torch does. The GIL is released while a
 * kernel runs; large inputs are split over two POSIX threads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

typedef uint64_t u64;
typedef int64_t i64;

/* Loops are compiled for AVX-512 and AVX2 as well as the baseline, chosen at
 * load time (GCC function multi-versioning); other compilers get the baseline. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define KERNEL __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define KERNEL
#endif

/* ---- threading: split [0, n) in two halves (the caller decides from the work size) ---- */

typedef void (*range_fn)(void *ctx, Py_ssize_t lo, Py_ssize_t hi);

typedef struct {
    range_fn fn;
    void *ctx;
    Py_ssize_t lo, hi;
} job_t;

static void *job_run(void *arg) {
    job_t *j = (job_t *)arg;
    j->fn(j->ctx, j->lo, j->hi);
    return NULL;
}

static void run_range(range_fn fn, void *ctx, Py_ssize_t n, int threads) {
    if (threads < 2 || n < 2) {
        fn(ctx, 0, n);
        return;
    }
    Py_ssize_t mid = n / 2;
    if (n >= 64) mid &= ~(Py_ssize_t)7;
    job_t j = {fn, ctx, mid, n};
    pthread_t t;
    if (pthread_create(&t, NULL, job_run, &j) != 0) {
        fn(ctx, 0, n);
        return;
    }
    fn(ctx, 0, mid);
    pthread_join(t, NULL);
}

/* ---- argument parsing helpers ---- */

static int get_ptr(PyObject *o, void **out) {
    *out = PyLong_AsVoidPtr(o);
    return (*out == NULL && PyErr_Occurred()) ? -1 : 0;
}

static int get_size(PyObject *o, Py_ssize_t *out) {
    *out = PyLong_AsSsize_t(o);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int check_nargs(Py_ssize_t nargs, Py_ssize_t want, const char *name) {
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", name, want, nargs);
        return -1;
    }
    return 0;
}

/* ---- split3: balanced 22/22/20-bit limbs as float64 planes ----
 * x = l0 + l1 2^22 + l2 2^44 (mod 2^64), |l0|,|l1| <= 2^21, |l2| <= 2^19 + 1.
 * src holds R rows of a K x N matrix. With sum_rows, the rows are summed first
 * and dst is (3, K, N); otherwise `add` (K x N, or NULL) is added to row 0 and
 * dst is (3, K, R, N): the rows side by side, ready to be the right operand of
 * one GEMM per limb. R = 1 is the plain layout.
 */

/* A limb writer: the limbs of s[q] + add[q] (add may be NULL), q < w <= 256, into
 * planes `plane` values apart, from offset `at`. */
typedef void (*limbs_fn)(const u64 *s, const u64 *add, Py_ssize_t w, void *dst, Py_ssize_t at,
                         Py_ssize_t plane);

typedef struct {
    const i64 *src, *add;
    void *dst;
    Py_ssize_t R, K, N;
    int sum_rows;
    limbs_fn limbs;
} split_ctx;

/* Walks the rows of a split (summed, or side by side with `add` on row 0) in
 * chunks of up to 256 values, handing each chunk to the limb writer with the
 * chunk's offset in a destination plane. */
static inline void split_rows(split_ctx *c, Py_ssize_t lo, Py_ssize_t hi) {
    const Py_ssize_t R = c->R, K = c->K, N = c->N;
    const u64 *src = (const u64 *)c->src, *add = (const u64 *)c->add;
    if (c->sum_rows) {
        u64 t[256];
        for (Py_ssize_t i = lo; i < hi; i++) {
            for (Py_ssize_t j0 = 0; j0 < N; j0 += 256) {
                const Py_ssize_t w = N - j0 < 256 ? N - j0 : 256;
                for (Py_ssize_t q = 0; q < w; q++) t[q] = src[i * N + j0 + q];
                for (Py_ssize_t r = 1; r < R; r++) {
                    const u64 *s = src + (r * K + i) * N + j0;
                    for (Py_ssize_t q = 0; q < w; q++) t[q] += s[q];
                }
                c->limbs(t, NULL, w, c->dst, i * N + j0, K * N);
            }
        }
        return;
    }
    if (R == 1) { /* one matrix: rows lo .. hi - 1 are one contiguous run, in and out */
        for (Py_ssize_t j0 = lo * N; j0 < hi * N; j0 += 256) {
            const Py_ssize_t w = hi * N - j0 < 256 ? hi * N - j0 : 256;
            c->limbs(src + j0, add != NULL ? add + j0 : NULL, w, c->dst, j0, K * N);
        }
        return;
    }
    for (Py_ssize_t i = lo; i < hi; i++) {
        for (Py_ssize_t r = 0; r < R; r++) {
            const u64 *s = src + (r * K + i) * N;
            const u64 *ad = (r == 0 && add != NULL) ? add + i * N : NULL;
            for (Py_ssize_t j0 = 0; j0 < N; j0 += 256) {
                const Py_ssize_t w = N - j0 < 256 ? N - j0 : 256;
                c->limbs(s + j0, ad != NULL ? ad + j0 : NULL, w, c->dst, (i * R + r) * N + j0,
                         K * R * N);
            }
        }
    }
}

KERNEL static void limbs3_run(const u64 *s, const u64 *add, Py_ssize_t w, void *dst,
                              Py_ssize_t at, Py_ssize_t plane) {
    const u64 half = (u64)1 << 21, mask = ((u64)1 << 22) - 1;
    double *d0 = (double *)dst + at, *d1 = d0 + plane, *d2 = d1 + plane;
    for (Py_ssize_t q = 0; q < w; q++) {
        u64 x = add != NULL ? s[q] + add[q] : s[q];
        i64 l0 = (i64)((x + half) & mask) - (i64)half;
        i64 r = (i64)(x - (u64)l0) >> 22;
        i64 l1 = (i64)(((u64)r + half) & mask) - (i64)half;
        d0[q] = (double)l0;
        d1[q] = (double)l1;
        d2[q] = (double)((r - l1) >> 22);
    }
}

static void split_range(void *vctx, Py_ssize_t lo, Py_ssize_t hi) {
    split_rows((split_ctx *)vctx, lo, hi);
}

/* split3 and split8 share their arguments: (src, add, dst, R, K, N, sum_rows, threads). */
static PyObject *split_call(PyObject *const *args, Py_ssize_t nargs, const char *name,
                            limbs_fn limbs) {
    split_ctx c;
    void *src, *add, *dst;
    Py_ssize_t sum_rows, threads;
    if (check_nargs(nargs, 8, name) || get_ptr(args[0], &src) || get_ptr(args[1], &add) ||
        get_ptr(args[2], &dst) || get_size(args[3], &c.R) || get_size(args[4], &c.K) ||
        get_size(args[5], &c.N) || get_size(args[6], &sum_rows) || get_size(args[7], &threads))
        return NULL;
    c.src = (const i64 *)src;
    c.add = (const i64 *)add;
    c.dst = dst;
    c.sum_rows = sum_rows != 0;
    c.limbs = limbs;
    Py_BEGIN_ALLOW_THREADS run_range(split_range, &c, c.K, (int)threads);
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

static PyObject *py_split3(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    return split_call(args, nargs, "split3", limbs3_run);
}

/* ---- combine3: ring result from the three float64 limb-product groups ----
 * g0 = l0 m0, g1 = l1 m0 + l0 m1, g2 = l2 m0 + l1 m1 + l0 m2, each M x R x N (a
 * GEMM's M x (R N) output), exact integers in float64 (the caller bounds the
 * reduction length):
 *   out[r, i, j] = base[r, i, j] + g0 + g1 2^22 + g2 2^44  (mod 2^64),
 * with out and base R x M x N (base may be NULL or equal to out).
 */

typedef struct {
    const double *g[3];
    const i64 *base;
    i64 *out;
    Py_ssize_t R, M, N;
} comb_ctx;

KERNEL static void combine3_range(void *vctx, Py_ssize_t lo, Py_ssize_t hi) {
    comb_ctx *c = (comb_ctx *)vctx;
    const Py_ssize_t R = c->R, M = c->M, N = c->N;
    for (Py_ssize_t i = lo; i < hi; i++) {
        for (Py_ssize_t r = 0; r < R; r++) {
            const Py_ssize_t g = (i * R + r) * N, o = (r * M + i) * N;
            const double *g0 = c->g[0] + g, *g1 = c->g[1] + g, *g2 = c->g[2] + g;
            const u64 *base = c->base != NULL ? (const u64 *)c->base + o : NULL;
            u64 *out = (u64 *)c->out + o;
            for (Py_ssize_t j = 0; j < N; j++) {
                u64 v = (u64)(i64)g0[j] + ((u64)(i64)g1[j] << 22) + ((u64)(i64)g2[j] << 44);
                out[j] = base != NULL ? base[j] + v : v;
            }
        }
    }
}

static PyObject *py_combine3(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    comb_ctx c;
    void *p[5];
    Py_ssize_t threads;
    if (check_nargs(nargs, 9, "combine3")) return NULL;
    for (int i = 0; i < 5; i++)
        if (get_ptr(args[i], &p[i])) return NULL;
    if (get_size(args[5], &c.R) || get_size(args[6], &c.M) || get_size(args[7], &c.N) ||
        get_size(args[8], &threads))
        return NULL;
    for (int i = 0; i < 3; i++) c.g[i] = (const double *)p[i];
    c.base = (const i64 *)p[3];
    c.out = (i64 *)p[4];
    Py_BEGIN_ALLOW_THREADS run_range(combine3_range, &c, c.M, (int)threads);
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

/* ---- split8: balanced 8-bit limbs as int8 planes (for int8 GEMMs) ----
 * x = sum_i l_i 2^(8 i) (mod 2^64), -128 <= l_i <= 127, i < 8. Same layouts and
 * options as split3: dst is (8, K, R N), or (8, K, N) with sum_rows.
 */

/* Limbs of w values (w <= 256) into 8 planes. With C = 0x80...80, the bytes b_i
 * of y = x + C give x = sum (b_i - 128) 2^(8 i): the balanced digits are the bytes
 * of (x + C) ^ C read as int8 (no carry chain); then one narrowing pass per plane. */
KERNEL static void limbs8_run(const u64 *s, const u64 *add, Py_ssize_t w, void *dst,
                              Py_ssize_t at, Py_ssize_t plane) {
    const u64 C = 0x8080808080808080ULL;
    u64 t[256];
    if (add != NULL)
        for (Py_ssize_t q = 0; q < w; q++) t[q] = ((s[q] + add[q]) + C) ^ C;
    else
        for (Py_ssize_t q = 0; q < w; q++) t[q] = (s[q] + C) ^ C;
    for (int i = 0; i < 8; i++) {
        int8_t *di = (int8_t *)dst + at + i * plane;
        const int sh = 8 * i;
        for (Py_ssize_t q = 0; q < w; q++) di[q] = (int8_t)(uint8_t)(t[q] >> sh);
    }
}

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define HAVE_LIMBS8_VBMI 1
/* The same limbs as limbs8_run, 64 values at a time as an 8 x 8 byte transpose:
 * one byte permutation (AVX-512 VBMI) groups each element's byte i into qword i,
 * then an 8 x 8 qword transpose leaves plane i's 64 bytes in one register. About
 * 6x faster than narrowing each plane separately (shuffle-port bound there). */
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) static void limbs8_vbmi(
    const u64 *s, const u64 *add, Py_ssize_t w, void *dst, Py_ssize_t at, Py_ssize_t plane) {
    const __m512i C = _mm512_set1_epi64((long long)0x8080808080808080ULL);
    /* byte 8 i + e of the result <- byte 8 e + i of the source */
    const __m512i perm = _mm512_set_epi8(
        63, 55, 47, 39, 31, 23, 15, 7, 62, 54, 46, 38, 30, 22, 14, 6,
        61, 53, 45, 37, 29, 21, 13, 5, 60, 52, 44, 36, 28, 20, 12, 4,
        59, 51, 43, 35, 27, 19, 11, 3, 58, 50, 42, 34, 26, 18, 10, 2,
        57, 49, 41, 33, 25, 17, 9, 1, 56, 48, 40, 32, 24, 16, 8, 0);
    int8_t *d = (int8_t *)dst + at;
    for (Py_ssize_t q = 0; q < w; q += 64) {
        const Py_ssize_t r = w - q; /* a last block of r < 64 values: masked loads and stores */
        const __mmask64 keep = r >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << r) - 1);
        __m512i u[8], v[8];
        for (int k = 0; k < 8; k++) {
            const Py_ssize_t n = r - 8 * k;
            const __mmask8 mk = n >= 8 ? 0xFF : n <= 0 ? 0 : (__mmask8)((1u << n) - 1);
            __m512i x = _mm512_maskz_loadu_epi64(mk, (const void *)(s + q + 8 * k));
            if (add != NULL)
                x = _mm512_add_epi64(x, _mm512_maskz_loadu_epi64(mk, (const void *)(add + q + 8 * k)));
            x = _mm512_xor_si512(_mm512_add_epi64(x, C), C);
            u[k] = _mm512_permutexvar_epi8(perm, x); /* qword i: byte i of 8 elements */
        }
        /* 8 x 8 qword transpose: v[i] qword k = u[k] qword i */
        for (int k = 0; k < 8; k += 2) {
            v[k] = _mm512_unpacklo_epi64(u[k], u[k + 1]);
            v[k + 1] = _mm512_unpackhi_epi64(u[k], u[k + 1]);
        }
        for (int k = 0; k < 8; k += 4)
            for (int h = 0; h < 2; h++) {
                __m512i a = v[k + h], b = v[k + 2 + h];
                u[k + h] = _mm512_shuffle_i64x2(a, b, 0x88);     /* lanes 0, 2 of a, b */
                u[k + 2 + h] = _mm512_shuffle_i64x2(a, b, 0xDD); /* lanes 1, 3 */
            }
        for (int h = 0; h < 4; h++) {
            /* u[h], u[h + 4] hold planes h and h + 4 */
            __m512i lo = _mm512_shuffle_i64x2(u[h], u[h + 4], 0x88);
            __m512i hi = _mm512_shuffle_i64x2(u[h], u[h + 4], 0xDD);
            _mm512_mask_storeu_epi8((void *)(d + (Py_ssize_t)h * plane + q), keep, lo);
            _mm512_mask_storeu_epi8((void *)(d + (Py_ssize_t)(h + 4) * plane + q), keep, hi);
        }
    }
}
#endif

static PyObject *py_split8(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
#ifdef HAVE_LIMBS8_VBMI
    if (__builtin_cpu_supports("avx512vbmi"))
        return split_call(args, nargs, "split8", limbs8_vbmi);
#endif
    return split_call(args, nargs, "split8", limbs8_run);
}

/* The portable limb writer on any CPU, for tests that compare the two. */
static PyObject *py_split8_portable(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    return split_call(args, nargs, "split8_portable", limbs8_run);
}

/* ---- combine8: ring result from the int32 products of int8 limb planes ----
 * p[j] is the ((8 - j) M) x (R N) product of the left limbs 0 .. 7-j stacked
 * (rows i' M .. i' M + M - 1 hold limb i') with the right limb j:
 *   out[r, i, c] = base[r, i, c] + sum_{j, i' <= 7 - j} p[j][i' M + i, r N + c] 2^(8 (i' + j)).
 */

typedef struct {
    const int32_t *p[8];
    const i64 *base;
    i64 *out;
    Py_ssize_t R, M, N;
} comb8_ctx;

KERNEL static void combine8_range(void *vctx, Py_ssize_t lo, Py_ssize_t hi) {
    comb8_ctx *c = (comb8_ctx *)vctx;
    const Py_ssize_t R = c->R, M = c->M, N = c->N, W = R * N;
    u64 acc[256];
    uint32_t sum[256];
    for (Py_ssize_t i = lo; i < hi; i++) {
        for (Py_ssize_t r = 0; r < R; r++) {
            const Py_ssize_t o = (r * M + i) * N;
            const u64 *base = c->base != NULL ? (const u64 *)c->base + o : NULL;
            u64 *out = (u64 *)c->out + o;
            for (Py_ssize_t c0 = 0; c0 < N; c0 += 256) {
                const Py_ssize_t w = N - c0 < 256 ? N - c0 : 256;
                for (Py_ssize_t q = 0; q < w; q++) acc[q] = 0;
                for (int s = 7; s >= 0; s--) { /* Horner over the shift s = i' + j */
                    /* The s + 1 products of one shift summed in 32 bits: exact for s < 4
                     * (each is below 2^24 in size for K <= 1024), and for s >= 4 only
                     * the low 64 - 8 s <= 32 bits of the sum reach the result. */
                    const int32_t *p0 = c->p[0] + ((Py_ssize_t)s * M + i) * W + r * N + c0;
                    for (Py_ssize_t q = 0; q < w; q++) sum[q] = (uint32_t)p0[q];
                    for (int j = 1; j <= s; j++) {
                        const int32_t *pj = c->p[j] + ((Py_ssize_t)(s - j) * M + i) * W + r * N + c0;
                        for (Py_ssize_t q = 0; q < w; q++) sum[q] += (uint32_t)pj[q];
                    }
                    for (Py_ssize_t q = 0; q < w; q++)
                        acc[q] = (acc[q] << 8) + (u64)(i64)(int32_t)sum[q];
                }
                for (Py_ssize_t q = 0; q < w; q++)
                    out[c0 + q] = base != NULL ? base[c0 + q] + acc[q] : acc[q];
            }
        }
    }
}

static PyObject *py_combine8(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    comb8_ctx c;
    void *p[10];
    Py_ssize_t threads;
    if (check_nargs(nargs, 14, "combine8")) return NULL;
    for (int i = 0; i < 10; i++)
        if (get_ptr(args[i], &p[i])) return NULL;
    if (get_size(args[10], &c.R) || get_size(args[11], &c.M) || get_size(args[12], &c.N) ||
        get_size(args[13], &threads))
        return NULL;
    for (int i = 0; i < 8; i++) c.p[i] = (const int32_t *)p[i];
    c.base = (const i64 *)p[8];
    c.out = (i64 *)p[9];
    Py_BEGIN_ALLOW_THREADS run_range(combine8_range, &c, c.M, (int)threads);
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

/* ---- beaver_mul: out[k] = c[k] + e b[k] + f a[k] (+ e f on row 0 if first), k < rows ----
 * The local step of a Beaver product for `rows` stacked shares (the simulation's
 * party axis, or one row for a real party). out may alias c.
 */

typedef struct {
    const i64 *c, *e, *b, *f, *a;
    i64 *out;
    Py_ssize_t rows, n;
    int first;
} beaver_ctx;

KERNEL static void beaver_range(void *vctx, Py_ssize_t lo, Py_ssize_t hi) {
    beaver_ctx *x = (beaver_ctx *)vctx;
    const u64 *e = (const u64 *)x->e, *f = (const u64 *)x->f;
    for (Py_ssize_t k = 0; k < x->rows; k++) {
        const u64 *c = (const u64 *)x->c + k * x->n, *b = (const u64 *)x->b + k * x->n;
        const u64 *a = (const u64 *)x->a + k * x->n;
        u64 *out = (u64 *)x->out + k * x->n;
        if (k == 0 && x->first) {
            for (Py_ssize_t i = lo; i < hi; i++) out[i] = c[i] + e[i] * (b[i] + f[i]) + f[i] * a[i];
        } else {
            for (Py_ssize_t i = lo; i < hi; i++) out[i] = c[i] + e[i] * b[i] + f[i] * a[i];
        }
    }
}

static PyObject *py_beaver_mul(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    beaver_ctx x;
    void *p[6];
    Py_ssize_t first, threads;
    if (check_nargs(nargs, 10, "beaver_mul")) return NULL;
    for (int i = 0; i < 6; i++)
        if (get_ptr(args[i], &p[i])) return NULL;
    if (get_size(args[6], &x.rows) || get_size(args[7], &x.n) || get_size(args[8], &first) ||
        get_size(args[9], &threads))
        return NULL;
    x.c = p[0]; x.e = p[1]; x.b = p[2]; x.f = p[3]; x.a = p[4]; x.out = p[5];
    x.first = first != 0;
    Py_BEGIN_ALLOW_THREADS run_range(beaver_range, &x, x.n, (int)threads);
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

/* ---- open_diff: the simulation's opening of masked values ----
 * out[i] = sum_k (x[k, i] - m[k, i]) over `rows` stacked shares: the sum of what
 * every party sends, in one pass instead of a subtraction and a sum.
 */

typedef struct {
    const i64 *x, *m;
    i64 *out;
    Py_ssize_t rows, n;
} diff_ctx;

KERNEL static void open_diff_range(void *vctx, Py_ssize_t lo, Py_ssize_t hi) {
    diff_ctx *d = (diff_ctx *)vctx;
    const u64 *x = (const u64 *)d->x, *m = (const u64 *)d->m;
    u64 *out = (u64 *)d->out;
    for (Py_ssize_t i = lo; i < hi; i++) out[i] = x[i] - m[i];
    for (Py_ssize_t k = 1; k < d->rows; k++) {
        const u64 *xk = x + k * d->n, *mk = m + k * d->n;
        for (Py_ssize_t i = lo; i < hi; i++) out[i] += xk[i] - mk[i];
    }
}

static PyObject *py_open_diff(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    diff_ctx d;
    void *p[3];
    Py_ssize_t threads;
    if (check_nargs(nargs, 6, "open_diff")) return NULL;
    for (int i = 0; i < 3; i++)
        if (get_ptr(args[i], &p[i])) return NULL;
    if (get_size(args[3], &d.rows) || get_size(args[4], &d.n) || get_size(args[5], &threads))
        return NULL;
    d.x = p[0]; d.m = p[1]; d.out = p[2];
    Py_BEGIN_ALLOW_THREADS run_range(open_diff_range, &d, d.n, (int)threads);
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

/* ---- trunc_finish: the local end of the [EGKRS20] truncation from the opened w ----
 * out[k] = nrh[k] + (w < 0 ? -s[k] : s[k]) (+ (w >>> f) - 2^(62-f) on row 0 if first).
 */

typedef struct {
    const i64 *w, *nrh, *s;
    i64 *out;
    Py_ssize_t rows, n;
    int f, first;
} finish_ctx;

KERNEL static void finish_range(void *vctx, Py_ssize_t lo, Py_ssize_t hi) {
    finish_ctx *x = (finish_ctx *)vctx;
    const u64 *w = (const u64 *)x->w;
    const int f = x->f;
    const u64 off = (u64)1 << (62 - f);
    for (Py_ssize_t k = 0; k < x->rows; k++) {
        const u64 *nrh = (const u64 *)x->nrh + k * x->n, *s = (const u64 *)x->s + k * x->n;
        u64 *out = (u64 *)x->out + k * x->n;
        if (k == 0 && x->first) {
            for (Py_ssize_t i = lo; i < hi; i++) {
                u64 neg = (u64)((i64)w[i] >> 63); /* all ones where w < 0 */
                out[i] = nrh[i] + ((s[i] ^ neg) - neg) + (w[i] >> f) - off;
            }
        } else {
            for (Py_ssize_t i = lo; i < hi; i++) {
                u64 neg = (u64)((i64)w[i] >> 63);
                out[i] = nrh[i] + ((s[i] ^ neg) - neg);
            }
        }
    }
}

static PyObject *py_trunc_finish(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    finish_ctx x;
    void *p[4];
    Py_ssize_t f, first, threads;
    if (check_nargs(nargs, 9, "trunc_finish")) return NULL;
    for (int i = 0; i < 4; i++)
        if (get_ptr(args[i], &p[i])) return NULL;
    if (get_size(args[4], &x.rows) || get_size(args[5], &x.n) || get_size(args[6], &f) ||
        get_size(args[7], &first) || get_size(args[8], &threads))
        return NULL;
    if (f < 1 || f > 61) {
        PyErr_Format(PyExc_ValueError, "trunc_finish: frac_bits must be in [1, 61]; got %zd", f);
        return NULL;
    }
    x.w = p[0]; x.nrh = p[1]; x.s = p[2]; x.out = p[3];
    x.f = (int)f;
    x.first = first != 0;
    Py_BEGIN_ALLOW_THREADS run_range(finish_range, &x, x.n, (int)threads);
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

/* ---- trunc_correct: the correction shares of a (product-)truncation triple ----
 * With A = sum_k a[k], B = sum_k b[k] over rab rows (rab = 0: no product),
 *   C = A B + r + 2^62, NRH = -((r mod 2^63) >> f), S = msb(r) 2^(63-f),
 * writes oc = C - sum_k pc[k], on = NRH - sum_k pn[k], os = S - sum_k ps[k] over rp rows.
 * With b = NULL, a holds rab rows of a precomputed product: C = sum_k a[k] + r + 2^62.
 * Rows are n elements apart. oc/pc are ignored when rab = 0.
 */

typedef struct {
    const i64 *a, *b, *r, *pc, *pn, *ps;
    i64 *oc, *on, *os;
    Py_ssize_t rab, rp, n;
    int f;
} correct_ctx;

KERNEL static void correct_range(void *vctx, Py_ssize_t lo, Py_ssize_t hi) {
    correct_ctx *x = (correct_ctx *)vctx;
    const Py_ssize_t n = x->n;
    const int f = x->f;
    const u64 low63 = ((u64)1 << 63) - 1, sbit = (u64)1 << (63 - f), bias = (u64)1 << 62;
    const u64 *r = (const u64 *)x->r;
    const u64 *pn = (const u64 *)x->pn, *ps = (const u64 *)x->ps;
    u64 *on = (u64 *)x->on, *os = (u64 *)x->os;
    const u64 *a = (const u64 *)x->a, *b = (const u64 *)x->b, *pc = (const u64 *)x->pc;
    u64 *oc = (u64 *)x->oc;
    if (x->rab == 0) {
        for (Py_ssize_t i = lo; i < hi; i++) {
            u64 nrh = (u64)0 - ((r[i] & low63) >> f);
            u64 sv = ((u64)((i64)r[i] >> 63)) & sbit;
            for (Py_ssize_t k = 0; k < x->rp; k++) {
                nrh -= pn[k * n + i];
                sv -= ps[k * n + i];
            }
            on[i] = nrh;
            os[i] = sv;
        }
        return;
    }
    if (b == NULL) { /* the product is given (rab rows of it): C = sum_k a[k] + r + 2^62 */
        for (Py_ssize_t i = lo; i < hi; i++) {
            u64 ri = r[i];
            u64 nrh = (u64)0 - ((ri & low63) >> f);
            u64 sv = ((u64)((i64)ri >> 63)) & sbit;
            u64 cv = a[i] + ri + bias;
            for (Py_ssize_t k = 1; k < x->rab; k++) cv += a[k * n + i];
            for (Py_ssize_t k = 0; k < x->rp; k++) {
                nrh -= pn[k * n + i];
                sv -= ps[k * n + i];
                cv -= pc[k * n + i];
            }
            on[i] = nrh;
            os[i] = sv;
            oc[i] = cv;
        }
        return;
    }
    if (x->rab == 2 && x->rp == 1) { /* two parties: the common case, unrolled */
        for (Py_ssize_t i = lo; i < hi; i++) {
            u64 ri = r[i];
            on[i] = (u64)0 - ((ri & low63) >> f) - pn[i];
            os[i] = (((u64)((i64)ri >> 63)) & sbit) - ps[i];
            oc[i] = (a[i] + a[n + i]) * (b[i] + b[n + i]) + ri + bias - pc[i];
        }
        return;
    }
    for (Py_ssize_t i = lo; i < hi; i++) {
        u64 ri = r[i];
        u64 nrh = (u64)0 - ((ri & low63) >> f);
        u64 sv = ((u64)((i64)ri >> 63)) & sbit;
        u64 av = a[i], bv = b[i];
        for (Py_ssize_t k = 1; k < x->rab; k++) {
            av += a[k * n + i];
            bv += b[k * n + i];
        }
        u64 cv = av * bv + ri + bias;
        for (Py_ssize_t k = 0; k < x->rp; k++) {
            nrh -= pn[k * n + i];
            sv -= ps[k * n + i];
            cv -= pc[k * n + i];
        }
        on[i] = nrh;
        os[i] = sv;
        oc[i] = cv;
    }
}

static PyObject *py_trunc_correct(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    correct_ctx x;
    void *p[9];
    Py_ssize_t f, threads;
    if (check_nargs(nargs, 14, "trunc_correct")) return NULL;
    for (int i = 0; i < 9; i++)
        if (get_ptr(args[i], &p[i])) return NULL;
    if (get_size(args[9], &x.rab) || get_size(args[10], &x.rp) || get_size(args[11], &x.n) ||
        get_size(args[12], &f) || get_size(args[13], &threads))
        return NULL;
    if (f < 1 || f > 61) {
        PyErr_Format(PyExc_ValueError, "trunc_correct: frac_bits must be in [1, 61]; got %zd", f);
        return NULL;
    }
    x.a = p[0]; x.b = p[1]; x.r = p[2]; x.pc = p[3]; x.pn = p[4]; x.ps = p[5];
    x.oc = p[6]; x.on = p[7]; x.os = p[8];
    x.f = (int)f;
    Py_BEGIN_ALLOW_THREADS run_range(correct_range, &x, x.n, (int)threads);
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

/* ==== comparison (smpc.protocols.compare): the local steps between openings ====
 * XOR shares come in R rows of N int64 words; row 0 takes the public terms when
 * `first`. Each function computes, bit for bit, what the torch code in compare.py
 * computes (see there for the protocol and the layouts): every group's (G, P) is
 * the parity of (coefficient mask from a table, indexed by public bits) AND (the
 * party's share bits of that group). `wf` is bit_length(world_size) (2 to 4).
 * They are small and latency-bound, so they run on one thread.
 */

#define LOW63 ((u64)0x7FFFFFFFFFFFFFFFULL)
#define POS4 ((u64)0x1111111111111111ULL)
#define POS16 ((u64)0x0001000100010001ULL)

static inline u64 sar(u64 x, int k) { return (u64)((i64)x >> k); }

static inline int par(u64 x) { return __builtin_parityll(x); }

/* bits 16j + 4i of g to 16j + i, those of p to 16j + 4 + i (compare._gather_lane_index) */
static inline u64 lane_index(u64 g, u64 p) {
    return (g & POS16) | ((g >> 3) & (POS16 << 1)) | ((g >> 6) & (POS16 << 2)) |
           ((g >> 9) & (POS16 << 3)) | ((p << 4) & (POS16 << 4)) | ((p << 1) & (POS16 << 5)) |
           ((p >> 2) & (POS16 << 6)) | ((p >> 5) & (POS16 << 7));
}

/* The product types of compare.LtzMaterial (_PROD1 and _PROD2 as bit masks, _Q3_POS):
 * constants here so that the compiler unrolls the loops over them; every kernel that
 * uses them gets Python's list too and refuses a different one. Each subset minus its
 * lowest element is a single element or comes earlier in its list. */
static const int T1[11] = {3, 5, 9, 6, 10, 12, 7, 11, 13, 14, 15};
static const int T2[22] = {132, 192, 130, 66,  194, 160, 129, 96,  65,  33,  224,
                           193, 161, 97,  225, 144, 80,  48,  208, 176, 112, 240};
static const int POS3[15] = {6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 22, 23, 24, 25, 26};

static int check_types(const u64 *types, const char *name) {
    for (int t = 0; t < 48; t++) {
        u64 want = t < 11 ? (u64)T1[t] : t < 33 ? (u64)T2[t - 11] : (u64)POS3[t - 33];
        if (types[t] != want) {
            PyErr_Format(PyExc_ValueError, "%s: product types differ from the kernel's", name);
            return -1;
        }
    }
    return 0;
}

/* level1(c, rx, rp0, rp1, rp2, types, out_w, R, N, first): the local level (16 groups).
 * Bit-sliced over the nibbles: with n = ~c and N_A = AND of n_j over j in A (at bit 4k),
 * the coefficient of r_T is N_{{h} + ({h+1..3} - T)} in G (h = min T) and N_{~T} in P
 * (as compare._level1); P's constant N_{0123} goes to row 0 of party 0. */
static PyObject *py_ltz4_level1(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    void *p[7];
    Py_ssize_t R, N, first;
    if (check_nargs(nargs, 10, "ltz4_level1")) return NULL;
    for (int i = 0; i < 7; i++)
        if (get_ptr(args[i], &p[i])) return NULL;
    if (get_size(args[7], &R) || get_size(args[8], &N) || get_size(args[9], &first)) return NULL;
    const u64 *c = p[0], *rx = p[1], *rp0 = p[2], *rp1 = p[3], *rp2 = p[4];
    u64 *w = p[6];
    if (check_types(p[5], "ltz4_level1")) return NULL;
    int src_word[16], src_shift[16]; /* source T: word 0 = r, 1-3 = rp0-rp2, and shift */
    for (int j = 0; j < 4; j++) {
        src_word[1 << j] = 0;
        src_shift[1 << j] = j;
    }
    for (int t = 0; t < 11; t++) {
        src_word[T1[t]] = 1 + t / 4;
        src_shift[T1[t]] = t % 4;
    }
    for (Py_ssize_t i = 0; i < N; i++) {
        u64 n = ~(c[i] & LOW63), np[16], cg[16], cp[16];
        np[0] = POS4;
        for (int j = 0; j < 4; j++) np[1 << j] = (n >> j) & POS4;
        for (int m = 3; m < 16; m++)
            if (m & (m - 1)) np[m] = np[m & (m - 1)] & np[m & -m];
        for (int T = 1; T < 16; T++) {
            int h = __builtin_ctz((unsigned)T);
            cg[T] = np[(1 << h) | (15 & ~((2 << h) - 1) & ~T)];
            cp[T] = np[15 & ~T];
        }
        for (Py_ssize_t k = 0; k < R; k++) {
            Py_ssize_t j = k * N + i;
            u64 words[4] = {rx[j] & LOW63, rp0[j], rp1[j], rp2[j]};
            u64 g = 0, pp = (k == 0 && first) ? np[15] : 0;
            for (int T = 1; T < 16; T++) {
                u64 v = words[src_word[T]] >> src_shift[T];
                g ^= cg[T] & v;
                pp ^= cp[T] & v;
            }
            w[j] = g | (pp << 1);
        }
    }
    Py_RETURN_NONE;
}

/* pack2(w, m, out, R, N, wf): the masked (G, P) of level 2 as open_fields packs them. */
static PyObject *py_ltz4_pack2(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    void *p[3];
    Py_ssize_t R, N, wf;
    if (check_nargs(nargs, 6, "ltz4_pack2")) return NULL;
    for (int i = 0; i < 3; i++)
        if (get_ptr(args[i], &p[i])) return NULL;
    if (get_size(args[3], &R) || get_size(args[4], &N) || get_size(args[5], &wf)) return NULL;
    const u64 *w = p[0], *m = p[1];
    u64 *out = p[2];
    const Py_ssize_t RN = R * N;
    const int one_word = 4 / wf >= 2;
    for (Py_ssize_t j = 0; j < RN; j++) {
        u64 mk = w[j] ^ m[j], g = mk & POS4, pp = (mk >> 1) & POS4;
        if (one_word) {
            out[j] = g | (pp << wf);
        } else {
            out[j] = g;
            out[RN + j] = pp;
        }
    }
    Py_RETURN_NONE;
}

/* level2(pub, m, q2a, q2b, tab2, out_w, R, N, wf, first): 16 groups -> 4 (lanes of 16 bits). */
static PyObject *py_ltz4_level2(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    void *p[6];
    Py_ssize_t R, N, wf, first;
    if (check_nargs(nargs, 10, "ltz4_level2")) return NULL;
    for (int i = 0; i < 6; i++)
        if (get_ptr(args[i], &p[i])) return NULL;
    if (get_size(args[6], &R) || get_size(args[7], &N) || get_size(args[8], &wf) ||
        get_size(args[9], &first))
        return NULL;
    const u64 *pub = p[0], *m = p[1], *qa = p[2], *qb = p[3], *tab = p[4];
    u64 *w = p[5];
    const int one_word = 4 / wf >= 2;
    for (Py_ssize_t i = 0; i < N; i++) {
        u64 dg, dp;
        if (one_word) {
            dg = pub[i] & POS4;
            dp = sar(pub[i], (int)wf) & POS4;
        } else {
            dg = pub[i] & POS4;
            dp = pub[N + i] & POS4;
        }
        u64 gi = lane_index(dg, dp), co[4];
        for (int q = 0; q < 4; q++) co[q] = tab[(gi >> (16 * q)) & 255];
        for (Py_ssize_t k = 0; k < R; k++) {
            Py_ssize_t j = k * N + i;
            u64 mm = m[j], vi = lane_index(mm & POS4, (mm >> 1) & POS4), a = qa[j], b = qb[j];
            u64 one = (k == 0 && first) ? (u64)1 << 30 : 0, v = 0;
            for (int q = 0; q < 4; q++) {
                int sh = 16 * q;
                u64 vec = ((vi >> sh) & 255) | (((a >> sh) & 0xFFFF) << 8) |
                          (((b >> sh) & 63) << 24) | one;
                u64 x = co[q];
                v |= (u64)(par(x & vec) | (par((x >> 32) & vec) << 1)) << sh;
            }
            w[j] = v;
        }
    }
    Py_RETURN_NONE;
}

/* level-3 fields: d of G0, G1, G2, P1, P2, P3 at these bits of the level-2 word, and the
 * variable bits they take in the table index (compare._L3_BITS, compare._L3_VARS) */
static const int L3_BITS[6] = {0, 16, 32, 17, 33, 49};
static const int L3_VARS[6] = {0, 1, 2, 5, 6, 7};

/* pack3(w2, m, out, R, N, wf, nb, L): per row, N fields of nb bytes then zeros to L int64. */
static PyObject *py_ltz4_pack3(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    void *p[3];
    Py_ssize_t R, N, wf, nb, L;
    if (check_nargs(nargs, 8, "ltz4_pack3")) return NULL;
    for (int i = 0; i < 3; i++)
        if (get_ptr(args[i], &p[i])) return NULL;
    if (get_size(args[3], &R) || get_size(args[4], &N) || get_size(args[5], &wf) ||
        get_size(args[6], &nb) || get_size(args[7], &L))
        return NULL;
    const u64 *w = p[0], *m = p[1];
    uint8_t *out = p[2];
    for (Py_ssize_t r = 0; r < R; r++) {
        uint8_t *o = out + r * L * 8;
        for (Py_ssize_t i = 0; i < N; i++) {
            Py_ssize_t j = r * N + i;
            u64 mk = w[j] ^ ((m[j] >> 2) & (POS16 | (POS16 << 1))), v = 0;
            for (int f = 0; f < 6; f++) v |= ((mk >> L3_BITS[f]) & 1) << (f * wf);
            for (Py_ssize_t b = 0; b < nb; b++) o[i * nb + b] = (uint8_t)(v >> (8 * b));
        }
        memset(o + N * nb, 0, (size_t)(L * 8 - N * nb));
    }
    Py_RETURN_NONE;
}

/* level3(pub, w2, m, q2b, rx, s_xor, c, tab2, out, R, N, wf, nb, first): the last level,
 * then msb(x) ^ s = G ^ msb(r) ^ s ^ msb(c) as one byte per row and element. */
static PyObject *py_ltz4_level3(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    void *p[9];
    Py_ssize_t R, N, wf, nb, first;
    if (check_nargs(nargs, 14, "ltz4_level3")) return NULL;
    for (int i = 0; i < 9; i++)
        if (get_ptr(args[i], &p[i])) return NULL;
    if (get_size(args[9], &R) || get_size(args[10], &N) || get_size(args[11], &wf) ||
        get_size(args[12], &nb) || get_size(args[13], &first))
        return NULL;
    const uint8_t *pub = p[0];
    const u64 *w = p[1], *m = p[2], *qb = p[3], *rx = p[4], *sx = p[5], *c = p[6], *tab = p[7];
    uint8_t *out = p[8];
    for (Py_ssize_t i = 0; i < N; i++) {
        u64 value = 0, idx = 0;
        for (Py_ssize_t b = 0; b < nb; b++) value |= (u64)pub[i * nb + b] << (8 * b);
        for (int f = 0; f < 6; f++) idx |= ((value >> (f * wf)) & 1) << L3_VARS[f];
        u64 co = tab[idx];
        for (Py_ssize_t k = 0; k < R; k++) {
            Py_ssize_t j = k * N + i;
            u64 mm = m[j], b = qb[j];
            u64 vec = ((w[j] >> 48) & 1) << 3;
            for (int q = 0; q < 3; q++) {
                vec |= ((mm >> (16 * q + 2)) & 1) << q;
                vec |= ((mm >> (16 * q + 19)) & 1) << (5 + q);
            }
            vec |= (((b >> 6) & 1023) | (((b >> 22) & 31) << 10)) << 8;
            int g = par(co & vec) ^ (int)(rx[j] >> 63) ^ (int)(sx[j] & 1);
            if (k == 0 && first) g ^= par(co & ((u64)1 << 30)) ^ (int)(c[i] >> 63);
            out[j] = (uint8_t)g;
        }
    }
    Py_RETURN_NONE;
}

/* ltz4_correct: the provider's correction shares of comparison material (LtzMaterial).
 * Random components come as R rows to reduce (additive: r, a; XOR: m, s_xor), n apart;
 * derived ones as P partial rows (the shares parties expand) and one output row each:
 * XOR-derived rx, rp0, rp1, rp2, q2a, q2b; additive s, as (a and as may be NULL).
 * `types` holds the product types of LtzMaterial.derive: 11 subsets of the 4 bits of a
 * nibble, 22 subsets of the 8 level-2 variables (bit masks), 15 bit positions in q2b. Each
 * subset's set minus its lowest element is a single element or comes earlier in its list. */
static PyObject *py_ltz4_correct(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    void *p[21];
    Py_ssize_t R, P, N;
    if (check_nargs(nargs, 24, "ltz4_correct")) return NULL;
    for (int i = 0; i < 21; i++)
        if (get_ptr(args[i], &p[i])) return NULL;
    if (get_size(args[21], &R) || get_size(args[22], &P) || get_size(args[23], &N)) return NULL;
    const u64 *r = p[0], *a = p[1], *m = p[2], *sx = p[3];
    const u64 *part[8], *types = p[20];
    u64 *outs[8];
    for (int q = 0; q < 8; q++) {
        part[q] = p[4 + q];
        outs[q] = p[12 + q];
    }
    if (check_types(types, "ltz4_correct")) return NULL;
    Py_BEGIN_ALLOW_THREADS for (Py_ssize_t i = 0; i < N; i++) {
        u64 rv = r[i], av = a != NULL ? a[i] : 0, mv = m[i], sxv = sx[i];
        for (Py_ssize_t k = 1; k < R; k++) {
            Py_ssize_t j = k * N + i;
            rv += r[j];
            if (a != NULL) av += a[j];
            mv ^= m[j];
            sxv ^= sx[j];
        }
        u64 low = rv & LOW63, val[8] = {rv, 0, 0, 0, 0, 0, 0, 0}, d1[16], d2[256], d3[256];
        /* products by subset mask, smallest first: each is its set minus the lowest
         * element (a product listed before it, or a single variable) AND that element */
        for (int j = 0; j < 4; j++) {
            d1[1 << j] = (low >> j) & POS4;
            d2[1 << j] = (mv >> (4 * j)) & POS16;
            d2[1 << (4 + j)] = (mv >> (4 * j + 1)) & POS16;
            d3[1 << j] = (mv >> (16 * j + 2)) & 1;
            d3[1 << (4 + j)] = (mv >> (16 * j + 3)) & 1;
        }
#pragma GCC unroll 11
        for (int t = 0; t < 11; t++) {
            int s = T1[t], lo = s & -s;
            d1[s] = d1[s ^ lo] & d1[lo];
            val[1 + t / 4] |= d1[s] << (t % 4);
        }
#pragma GCC unroll 22
        for (int t = 0; t < 22; t++) {
            int s = T2[t], lo = s & -s;
            d2[s] = d2[s ^ lo] & d2[lo];
            if (t < 16)
                val[4] |= d2[s] << t;
            else
                val[5] |= d2[s] << (t - 16);
            if (t < 15) {
                d3[s] = d3[s ^ lo] & d3[lo];
                val[5] |= d3[s] << POS3[t];
            }
        }
        val[6] = sxv & 1;
        val[7] = av * val[6];
        for (Py_ssize_t k = 0; k < P; k++) {
            Py_ssize_t j = k * N + i;
            for (int q = 0; q < 6; q++) val[q] ^= part[q][j];
            val[6] -= part[6][j];
            if (a != NULL) val[7] -= part[7][j];
        }
        for (int q = 0; q < 7; q++) outs[q][i] = val[q];
        if (a != NULL) outs[7][i] = val[7];
    }
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"split3", (PyCFunction)(void (*)(void))py_split3, METH_FASTCALL,
     "split3(src, add, dst, R, K, N, sum_rows, threads): float64 limb planes of int64 rows."},
    {"combine3", (PyCFunction)(void (*)(void))py_combine3, METH_FASTCALL,
     "combine3(g0, g1, g2, base, out, R, M, N, threads): ring result from limb groups."},
    {"split8", (PyCFunction)(void (*)(void))py_split8, METH_FASTCALL,
     "split8(src, add, dst, R, K, N, sum_rows, threads): int8 limb planes of int64 rows."},
    {"split8_portable", (PyCFunction)(void (*)(void))py_split8_portable, METH_FASTCALL,
     "split8 without the AVX-512 VBMI path (same arguments, same result)."},
    {"open_diff", (PyCFunction)(void (*)(void))py_open_diff, METH_FASTCALL,
     "open_diff(x, m, out, rows, n, threads): out = sum over rows of x - m."},
    {"combine8", (PyCFunction)(void (*)(void))py_combine8, METH_FASTCALL,
     "combine8(p0, ..., p7, base, out, R, M, N, threads): ring result from int8 products."},
    {"beaver_mul", (PyCFunction)(void (*)(void))py_beaver_mul, METH_FASTCALL,
     "beaver_mul(c, e, b, f, a, out, rows, n, first, threads): local Beaver product step."},
    {"trunc_finish", (PyCFunction)(void (*)(void))py_trunc_finish, METH_FASTCALL,
     "trunc_finish(w, nrh, s, out, rows, n, frac_bits, first, threads): end of truncation."},
    {"trunc_correct", (PyCFunction)(void (*)(void))py_trunc_correct, METH_FASTCALL,
     "trunc_correct(a, b, r, pc, pn, ps, oc, on, os, rab, rp, n, frac_bits, threads)."},
    {"ltz4_level1", (PyCFunction)(void (*)(void))py_ltz4_level1, METH_FASTCALL, "comparison"},
    {"ltz4_pack2", (PyCFunction)(void (*)(void))py_ltz4_pack2, METH_FASTCALL, "comparison"},
    {"ltz4_level2", (PyCFunction)(void (*)(void))py_ltz4_level2, METH_FASTCALL, "comparison"},
    {"ltz4_pack3", (PyCFunction)(void (*)(void))py_ltz4_pack3, METH_FASTCALL, "comparison"},
    {"ltz4_level3", (PyCFunction)(void (*)(void))py_ltz4_level3, METH_FASTCALL, "comparison"},
    {"ltz4_correct", (PyCFunction)(void (*)(void))py_ltz4_correct, METH_FASTCALL, "comparison"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_ringkernels", "Fused CPU kernels for the ring Z_2^64.", -1, methods,
};

PyMODINIT_FUNC PyInit__ringkernels(void) { return PyModule_Create(&module); }
