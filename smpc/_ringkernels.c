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

/* ---- threading: split [0, n) in two halves above a size threshold ---- */

#define PAR_MIN (1 << 16)

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
    if (threads < 2 || n < PAR_MIN) {
        fn(ctx, 0, n);
        return;
    }
    Py_ssize_t mid = (n / 2) & ~(Py_ssize_t)7;
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
 * dst holds three planes of n doubles: l0 | l1 | l2.
 */

typedef struct {
    const i64 *src;
    double *dst;
    Py_ssize_t n;
} split_ctx;

KERNEL static void split3_range(void *vctx, Py_ssize_t lo, Py_ssize_t hi) {
    split_ctx *c = (split_ctx *)vctx;
    const i64 *src = c->src;
    double *d0 = c->dst, *d1 = c->dst + c->n, *d2 = c->dst + 2 * c->n;
    const u64 half = (u64)1 << 21, mask = ((u64)1 << 22) - 1;
    for (Py_ssize_t i = lo; i < hi; i++) {
        u64 x = (u64)src[i];
        i64 l0 = (i64)((x + half) & mask) - (i64)half;
        i64 r = (i64)(x - (u64)l0) >> 22;
        i64 l1 = (i64)(((u64)r + half) & mask) - (i64)half;
        i64 l2 = (r - l1) >> 22;
        d0[i] = (double)l0;
        d1[i] = (double)l1;
        d2[i] = (double)l2;
    }
}

static PyObject *py_split3(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    split_ctx c;
    void *src, *dst;
    Py_ssize_t threads;
    if (check_nargs(nargs, 4, "split3") || get_ptr(args[0], &src) || get_ptr(args[1], &dst) ||
        get_size(args[2], &c.n) || get_size(args[3], &threads))
        return NULL;
    c.src = (const i64 *)src;
    c.dst = (double *)dst;
    Py_BEGIN_ALLOW_THREADS run_range(split3_range, &c, c.n, (int)threads);
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

/* ---- combine3: out = g0 + g1 2^22 + g2 2^44 (mod 2^64) from exact float64 sums ---- */

typedef struct {
    const double *g0, *g1, *g2;
    i64 *out;
    int accumulate;
} comb_ctx;

KERNEL static void combine3_range(void *vctx, Py_ssize_t lo, Py_ssize_t hi) {
    comb_ctx *c = (comb_ctx *)vctx;
    for (Py_ssize_t i = lo; i < hi; i++) {
        u64 v = (u64)(i64)c->g0[i] + ((u64)(i64)c->g1[i] << 22) + ((u64)(i64)c->g2[i] << 44);
        c->out[i] = c->accumulate ? (i64)((u64)c->out[i] + v) : (i64)v;
    }
}

static PyObject *py_combine3(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    comb_ctx c;
    void *g0, *g1, *g2, *out;
    Py_ssize_t n, threads, acc;
    if (check_nargs(nargs, 7, "combine3") || get_ptr(args[0], &g0) || get_ptr(args[1], &g1) ||
        get_ptr(args[2], &g2) || get_ptr(args[3], &out) || get_size(args[4], &n) ||
        get_size(args[5], &acc) || get_size(args[6], &threads))
        return NULL;
    c.g0 = (const double *)g0;
    c.g1 = (const double *)g1;
    c.g2 = (const double *)g2;
    c.out = (i64 *)out;
    c.accumulate = acc != 0;
    Py_BEGIN_ALLOW_THREADS run_range(combine3_range, &c, n, (int)threads);
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"split3", (PyCFunction)(void (*)(void))py_split3, METH_FASTCALL,
     "split3(src, dst, n, threads): balanced 22/22/20-bit float64 limb planes of int64 src."},
    {"combine3", (PyCFunction)(void (*)(void))py_combine3, METH_FASTCALL,
     "combine3(g0, g1, g2, out, n, accumulate, threads): out (+)= g0 + g1 2^22 + g2 2^44."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_ringkernels", "Fused CPU kernels for the ring Z_2^64.", -1, methods,
};

PyMODINIT_FUNC PyInit__ringkernels(void) { return PyModule_Create(&module); }
