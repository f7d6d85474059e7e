/* The O(W^2)-per-group sums of one slide's analysis (analysis/batch.py), each
 * a single pass with no [G, W, W] temporaries; batch.py holds the NumPy form
 * they are tested against and used without this module.
 *
 * overlaps: window overlaps from the tracker's rotation Q. The overlap matrix
 *   M[k, j] = (Q[j, k] lam_j + t_k s_j) inv_c_k inv_p_j   (MATH.md section 5)
 * is never stored: only its diagonal and, per near-degenerate cluster (a run
 * of joined neighbours), the mean of its squared entries are needed.
 *
 * flow: the second-order eigenvalue-flow sums
 *   sum_k (va_k va_j - vb_k vb_j)^2 / (lam_j - lam_k)   over |lam_j - lam_k| > tol
 * (MATH.md section 6), tied pairs left out as eigen_flow leaves them out.
 *
 * Both release the GIL.
 */
#include "common.h"

#include <cmath>

/* sum_k ((q_k a + t_k b) c_k)^2 over k in [lo, hi) */
static inline __attribute__((always_inline)) double row_squares(const double *q, const double *t, const double *c, int lo, int hi, double a,
                                                               double b) {
    const v4d va = splat(a), vb = splat(b);
    v4d acc = splat(0.0);
    int k = lo;
    for (; k + 4 <= hi; k += 4) {
        const v4d m = (load4(q + k) * va + load4(t + k) * vb) * load4(c + k);
        acc += m * m;
    }
    double r = hsum(acc);
    for (; k < hi; ++k) {
        const double m = (q[k] * a + t[k] * b) * c[k];
        r += m * m;
    }
    return r;
}

SEF_CLONES static void overlaps_group(int n, const double *Q, const double *lam, const double *t, const double *s, const double *ic,
                                      const double *ip, const unsigned char *joined, double *diag, double *subspace) {
    for (int k = 0; k < n; ++k) diag[k] = std::fabs((Q[(size_t)k * n + k] * lam[k] + t[k] * s[k]) * ic[k] * ip[k]);
    for (int a = 0; a < n;) {
        int b = a + 1;
        while (b < n && joined[b - 1]) ++b;
        if (b - a == 1) {
            subspace[a] = diag[a];
        } else {
            double total = 0.0;
            for (int j = a; j < b; ++j) total += ip[j] * ip[j] * row_squares(Q + (size_t)j * n, t, ic, a, b, lam[j], s[j]);
            const double value = std::sqrt(total / (b - a));
            for (int k = a; k < b; ++k) subspace[k] = value;
        }
        a = b;
    }
}

SEF_CLONES static void flow_group(int n, const double *va, const double *vb, const double *lam, double tol, double *out) {
    const v4d vtol = splat(tol), zero = splat(0.0);
    for (int j = 0; j < n; ++j) {
        const double aj = va[j], bj = vb[j], lj = lam[j];
        const v4d vaj = splat(aj), vbj = splat(bj), vlj = splat(lj);
        v4d acc = zero;
        int k = 0;
        for (; k + 4 <= n; k += 4) {
            const v4d c = load4(va + k) * vaj - load4(vb + k) * vbj, d = vlj - load4(lam + k);
            const v4d term = c * c / d;
            acc += ((d > vtol) | (d < -vtol)) ? term : zero; /* tied pairs (and j itself) add nothing */
        }
        double r = hsum(acc);
        for (; k < n; ++k) {
            const double c = va[k] * aj - vb[k] * bj, d = lj - lam[k];
            if (d > tol || d < -tol) r += c * c / d;
        }
        out[j] = r;
    }
}

static PyObject *py_overlaps(PyObject *, PyObject *args) {
    PyObject *o[9];
    int groups, n;
    if (!PyArg_ParseTuple(args, "iiOOOOOOOOO", &groups, &n, &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &o[8])) return nullptr;
    if (groups < 0 || n < 1) return PyErr_Format(PyExc_ValueError, "need groups >= 0 and n >= 1, got %d, %d", groups, n);
    static const char *names[9] = {"rotation", "values", "t", "s", "inv_c", "inv_p", "joined", "out_diag", "out_subspace"};
    const Py_ssize_t G = groups, N = n;
    const Py_ssize_t sizes[9] = {G * N * N, G * N, G * N, G * N, G * N, G * N, G * (N - 1), G * N, G * N};
    Buffers B;
    for (; B.got < 9; ++B.got)
        if (get_buffer(o[B.got], &B.b[B.got], B.got >= 7, names[B.got], sizes[B.got], B.got == 6 ? "?" : "d") < 0) return nullptr;
    const double *p[9];
    for (int k = 0; k < 9; ++k) p[k] = (const double *)B.b[k].buf;
    const unsigned char *joined = (const unsigned char *)B.b[6].buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t g = 0; g < G; ++g) {
        const size_t v = (size_t)g * N;
        overlaps_group(n, p[0] + v * N, p[1] + v, p[2] + v, p[3] + v, p[4] + v, p[5] + v, joined + (size_t)g * (N - 1),
                       (double *)p[7] + v, (double *)p[8] + v);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_flow(PyObject *, PyObject *args) {
    PyObject *o[5];
    int groups, n;
    if (!PyArg_ParseTuple(args, "iiOOOOO", &groups, &n, &o[0], &o[1], &o[2], &o[3], &o[4])) return nullptr;
    if (groups < 0 || n < 1) return PyErr_Format(PyExc_ValueError, "need groups >= 0 and n >= 1, got %d, %d", groups, n);
    static const char *names[5] = {"va", "vb", "values", "tol", "out"};
    const Py_ssize_t G = groups, N = n;
    const Py_ssize_t sizes[5] = {G * N, G * N, G * N, G, G * N};
    Buffers B;
    for (; B.got < 5; ++B.got)
        if (get_buffer(o[B.got], &B.b[B.got], B.got == 4, names[B.got], sizes[B.got]) < 0) return nullptr;
    const double *p[5];
    for (int k = 0; k < 5; ++k) p[k] = (const double *)B.b[k].buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t g = 0; g < G; ++g) {
        const size_t v = (size_t)g * N;
        flow_group(n, p[0] + v, p[1] + v, p[2] + v, p[3][g], (double *)p[4] + v);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"overlaps", py_overlaps, METH_VARARGS,
     "overlaps(groups, n, rotation, values, t, s, inv_c, inv_p, joined, out_diag, out_subspace)\n\n"
     "Per group, with M[k, j] = (rotation[j, k] values[j] + t[k] s[j]) inv_c[k] inv_p[j]:\n"
     "out_diag[k] = |M[k, k]|; out_subspace[k] = sqrt(mean of M^2 over k's cluster block)\n"
     "for clusters of two or more modes (runs of joined[k]: modes k and k+1 together),\n"
     "else |M[k, k]|. C-contiguous float64 buffers; joined bool [groups, n-1]."},
    {"flow", py_flow, METH_VARARGS,
     "flow(groups, n, va, vb, values, tol, out)\n\n"
     "out[g, j] = sum_k (va_k va_j - vb_k vb_j)^2 / (values_j - values_k) over\n"
     "|values_j - values_k| > tol[g]. C-contiguous float64 buffers."},
    {nullptr, nullptr, 0, nullptr},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_slide_terms", "The O(W^2) sums of one slide's analysis.", -1, methods,
                                    nullptr, nullptr, nullptr, nullptr};

PyMODINIT_FUNC PyInit__slide_terms(void) { return PyModule_Create(&module); }
