/* Shared by the analysis layer's compiled modules: 4-lane vectors for the
 * hot sums, the AVX2 clone attribute, and float64 buffer access through the
 * CPython buffer API (no NumPy headers, no torch). */
#pragma once
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cstring>

/* Divisions dominate the hot loops; an AVX2 clone runs four per instruction,
 * chosen at load time. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SEF_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SEF_CLONES
#endif

/* Explicit 4-lane sums: without -ffast-math (which would reassociate
 * carefully ordered differences) the compiler keeps scalar reductions. */
typedef double v4d __attribute__((vector_size(32)));

static inline __attribute__((always_inline)) v4d load4(const double *p) {
    v4d v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline __attribute__((always_inline)) v4d splat(double x) {
    const v4d v = {x, x, x, x};
    return v;
}

static inline __attribute__((always_inline)) double hsum(v4d v) { return (v[0] + v[1]) + (v[2] + v[3]); }

/* A C-contiguous buffer of ``expect`` items of ``format`` ("d": float64,
 * "?": bool), writable when asked; raises ValueError naming ``name``. */
static int get_buffer(PyObject *obj, Py_buffer *view, int writable, const char *name, Py_ssize_t expect, const char *format = "d") {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0) return -1;
    const Py_ssize_t item = format[0] == 'd' ? (Py_ssize_t)sizeof(double) : 1;
    if (strcmp(view->format, format) != 0 || view->len != expect * item) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd contiguous values of format '%s'", name, expect, format);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* The buffers of one call, released on every way out. */
struct Buffers {
    Py_buffer b[10];
    int got = 0;
    ~Buffers() {
        for (int k = 0; k < got; ++k) PyBuffer_Release(&b[k]);
    }
};
