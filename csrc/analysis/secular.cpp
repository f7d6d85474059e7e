/* Eigen-decomposition update across one slide of the window (MATH.md section 2).
 *
 * The slide replaces one row and column of the W x W Gram: a symmetric
 * rank-two change u+ u+^T - u- u-^T. Given the old window's eigenpairs
 * (d, V), each rank-one piece is diag(d) + rho z z^T in the eigenbasis, solved
 * by the secular equation (Bunch-Nielsen-Sorensen) with deflation
 * (Dongarra-Sorensen) and eigenvectors from the Loewner formula
 * (Gu-Eisenstat), so they are orthogonal to working precision whatever the
 * eigenvalue spacing. Cost O(W^2) per piece; the O(W^3) basis change V Q1 Q2
 * is left to BLAS on the Python side.
 *
 * Standard C++ and the CPython buffer API only: the analysis layer stays free
 * of torch, and this module is optional (analysis/tracking.py falls back to
 * LAPACK without it).
 */
#include "common.h"

#include <cfloat>
#include <cmath>
#include <cstdlib>

#define MAX_ITER 200

/* *s = sum_j Z_j r_j and *ds = sum_j r_j^2, r_j = Z_j / ((D_j - base) - tau), j in [0, len) */
static inline __attribute__((always_inline)) void secular_sums(const double *D, const double *Z, int len, double base, double tau,
                                                             double *s, double *ds) {
    const v4d vb = splat(base), vt = splat(tau);
    v4d vs = splat(0.0), vds = splat(0.0);
    int j = 0;
    for (; j + 4 <= len; j += 4) {
        const v4d z = load4(Z + j), r = z / ((load4(D + j) - vb) - vt);
        vs += z * r;
        vds += r * r;
    }
    double a = hsum(vs), b = hsum(vds);
    for (; j < len; ++j) {
        const double r = Z[j] / ((D[j] - base) - tau);
        a += Z[j] * r;
        b += r * r;
    }
    *s = a;
    *ds = b;
}

/* prod_{k in [lo, hi)} ((M_k - x) + T_k) / (D_k - x): the Loewner factors, with
 * each root mu_k = M_k + T_k kept as pole plus offset. */
static inline __attribute__((always_inline)) double loewner_product(const double *M, const double *T, const double *D, int lo, int hi,
                                                                   double x) {
    const v4d vx = splat(x);
    v4d p = splat(1.0);
    int k = lo;
    for (; k + 4 <= hi; k += 4) p *= ((load4(M + k) - vx) + load4(T + k)) / (load4(D + k) - vx);
    double r = (p[0] * p[1]) * (p[2] * p[3]);
    for (; k < hi; ++k) r *= ((M[k] - x) + T[k]) / (D[k] - x);
    return r;
}

typedef struct {
    double *d, *z, *D, *Z, *M, *tau, *zhat, *q, *c, *s, *da, *za, *ya, *mu1, *mu2, *t, *Qa;
    int *nd, *df, *org, *rp, *ri;
    void *slots;
} Work;

typedef struct {
    double value;
    int col; /* >= 0: deflated index; < 0: root -(col + 1) */
} Slot;

static int cmp_slot(const void *a, const void *b) {
    double x = ((const Slot *)a)->value, y = ((const Slot *)b)->value;
    return (x > y) - (x < y);
}

/* One root of 1/rho + sum Z_j^2 / (D_j - mu) = 0 in (D_i, D_{i+1}) (or
 * (D_{K-1}, D_{K-1} + rho |Z|^2) for the last), as mu = D[org] + tau with org
 * the nearer pole, so every D_j - mu is formed as (D_j - D_org) - tau without
 * cancellation. Rational two-pole model steps, safeguarded by bisection. */
static inline __attribute__((always_inline)) int secular_root(int K, int i, const double *D, const double *Z, double rho,
                                                            int *org_out, double *tau_out) {
    const double inv_rho = 1.0 / rho;
    /* start at the middle of the interval (the last: at its upper end, where f >= 0) */
    int org = i;
    double lo = 0.0, hi, tau;
    if (i < K - 1) {
        hi = tau = 0.5 * (D[i + 1] - D[i]);
    } else {
        double zz = 0.0;
        for (int j = 0; j < K; ++j) zz += Z[j] * Z[j];
        hi = tau = rho * zz;
    }
    double base = D[i];
    int it;
    for (it = 0; it < MAX_ITER; ++it) {
        double psi, dpsi, phi, dphi;
        secular_sums(D, Z, i + 1, base, tau, &psi, &dpsi);
        secular_sums(D + i + 1, Z + i + 1, K - i - 1, base, tau, &phi, &dphi);
        const double f = inv_rho + psi + phi;
        if (std::fabs(f) <= DBL_EPSILON * (8.0 * (phi - psi) + inv_rho)) break;
        if (it == 0 && i < K - 1 && f < 0.0) { /* root in the upper half: measure from D[i+1] */
            org = i + 1, base = D[i + 1], tau = -hi, lo = tau, hi = 0.0;
        } else if (f < 0.0) {
            lo = tau;
        } else {
            hi = tau;
        }
        if (hi - lo <= 2.0 * DBL_EPSILON * std::fmax(std::fabs(lo), std::fabs(hi))) break;
        const double di = (D[i] - base) - tau; /* < 0 */
        double eta = NAN;
        if (i < K - 1) {
            const double di1 = (D[i + 1] - base) - tau; /* > 0 */
            const double s = di * di * dpsi, S = di1 * di1 * dphi;
            const double c = f - di * dpsi - di1 * dphi;
            const double A = c * (di + di1) + s + S, B = c * di * di1 + s * di1 + S * di;
            if (c == 0.0) {
                eta = B / A;
            } else {
                const double sq = std::sqrt(std::fmax(A * A - 4.0 * c * B, 0.0));
                const double r1 = A > 0.0 ? 2.0 * B / (A + sq) : (A - sq) / (2.0 * c);
                const double r2 = A > 0.0 ? (A + sq) / (2.0 * c) : 2.0 * B / (A - sq);
                eta = (r1 > di && r1 < di1) ? r1 : r2;
            }
        } else {
            const double s = di * di * dpsi, c = f - di * dpsi;
            if (c > 0.0) eta = di + s / c;
        }
        const double next = tau + eta;
        if (!(next > lo && next < hi)) {
            tau = 0.5 * (lo + hi);
            continue;
        }
        /* The model converges quadratically with a constant of about 1/|tau|
         * (tau is measured from the nearest pole), so after a step below
         * 1e-10 |tau| the next would be below 1e-20 |tau|: stop here. */
        const bool last = std::fabs(eta) <= 1e-10 * std::fabs(next);
        tau = next;
        if (last) break;
    }
    *org_out = org;
    *tau_out = tau;
    return it < MAX_ITER ? 0 : -1;
}

/* Eigenpairs of diag(d) + rho z z^T, d ascending, rho > 0: mu ascending and
 * Q (n x n, row-major, column c the eigenvector of mu[c]). Returns 0, or -1
 * when a root did not converge or landed on a pole (the caller falls back). */
static inline __attribute__((always_inline)) int rank_one_pos(int n, const double *d_in, const double *z_in, double rho, double *mu, double *Q, Work *w) {
    double zn2 = 0.0, dmax = 0.0;
    for (int i = 0; i < n; ++i) {
        zn2 += z_in[i] * z_in[i];
        dmax = std::fmax(dmax, std::fabs(d_in[i]));
    }
    memset(Q, 0, sizeof(double) * (size_t)n * n);
    const double rho_s = rho * zn2;
    if (!(rho_s > 0.0)) { /* nothing moves */
        for (int i = 0; i < n; ++i) mu[i] = d_in[i], Q[(size_t)i * n + i] = 1.0;
        return 0;
    }
    const double zn = std::sqrt(zn2);
    double *d = w->d, *z = w->z;
    for (int i = 0; i < n; ++i) d[i] = d_in[i], z[i] = z_in[i] / zn;

    /* Deflation: a negligible z_i leaves (d_i, e_i) an eigenpair; two close
     * poles are rotated so one of them carries all of z (error |c s gap|). */
    const double tol = 8.0 * DBL_EPSILON * std::fmax(dmax, rho_s);
    int K = 0, nd_def = 0, nrot = 0, prev = -1;
    for (int i = 0; i < n; ++i) {
        if (rho_s * std::fabs(z[i]) <= tol) {
            w->df[nd_def++] = i;
            continue;
        }
        if (prev < 0) {
            prev = i;
            continue;
        }
        const double t = std::hypot(z[prev], z[i]);
        const double c = z[i] / t, s = z[prev] / t;
        if (std::fabs((d[i] - d[prev]) * c * s) <= tol) {
            const double dp = d[prev], di = d[i];
            d[prev] = dp * c * c + di * s * s;
            d[i] = dp * s * s + di * c * c;
            z[prev] = 0.0;
            z[i] = t;
            w->rp[nrot] = prev, w->ri[nrot] = i, w->c[nrot] = c, w->s[nrot] = s, ++nrot;
            w->df[nd_def++] = prev;
        } else {
            w->nd[K++] = prev;
        }
        prev = i;
    }
    if (prev >= 0) w->nd[K++] = prev;

    double *D = w->D, *Z = w->Z, *tau = w->tau, *zhat = w->zhat;
    int *org = w->org;
    for (int k = 0; k < K; ++k) D[k] = d[w->nd[k]], Z[k] = z[w->nd[k]];
    int status = 0;
    for (int k = 0; k < K; ++k)
        if (secular_root(K, k, D, Z, rho_s, &org[k], &tau[k])) status = -1;

    /* Loewner: the z for which the computed roots are exact; with it the
     * eigenvectors come out orthogonal (Gu-Eisenstat). */
    double *M = w->M;
    for (int k = 0; k < K; ++k) M[k] = D[org[k]];
    for (int j = 0; j < K; ++j) {
        const double p = ((M[j] - D[j]) + tau[j]) / rho_s * loewner_product(M, tau, D, 0, j, D[j]) *
                         loewner_product(M, tau, D, j + 1, K, D[j]);
        zhat[j] = std::copysign(std::sqrt(std::fabs(p)), Z[j]);
    }

    Slot *slots = (Slot *)w->slots;
    int m = 0;
    for (int k = 0; k < nd_def; ++k) slots[m].value = d[w->df[k]], slots[m].col = w->df[k], ++m;
    for (int k = 0; k < K; ++k) slots[m].value = D[org[k]] + tau[k], slots[m].col = -(k + 1), ++m;
    qsort(slots, (size_t)n, sizeof(Slot), cmp_slot);

    double *q = w->q;
    for (int c = 0; c < n; ++c) {
        mu[c] = slots[c].value;
        if (slots[c].col >= 0) {
            Q[(size_t)slots[c].col * n + c] = 1.0;
            continue;
        }
        const int k = -slots[c].col - 1;
        const double base = M[k], t = tau[k];
        for (int j = 0; j < K; ++j) q[j] = zhat[j] / ((D[j] - base) - t);
        double norm = 0.0;
        for (int j = 0; j < K; ++j) {
            if (!std::isfinite(q[j])) status = -1; /* a root on a pole */
            norm += q[j] * q[j];
        }
        norm = 1.0 / std::sqrt(norm);
        for (int j = 0; j < K; ++j) Q[(size_t)w->nd[j] * n + c] = q[j] * norm;
    }
    /* undo the deflating rotations, last first: x_p = c y_p + s y_i, x_i = c y_i - s y_p */
    for (int r = nrot - 1; r >= 0; --r) {
        double *xp = Q + (size_t)w->rp[r] * n, *xi = Q + (size_t)w->ri[r] * n;
        const double c = w->c[r], s = w->s[r];
        for (int col = 0; col < n; ++col) {
            const double yp = xp[col], yi = xi[col];
            xp[col] = c * yp + s * yi;
            xi[col] = c * yi - s * yp;
        }
    }
    return std::isfinite(mu[n - 1]) && std::isfinite(mu[0]) ? status : -1;
}

/* out = J Q J, J the order reversal: Q between ascending bases as between descending ones. */
static inline __attribute__((always_inline)) void reversed(int n, const double *Q, double *out) {
    const size_t nn = (size_t)n * n;
    for (size_t k = 0; k < nn; ++k) out[k] = Q[nn - 1 - k];
}

/* rho = +1 or -1; diag(d) - z z^T = -(diag(-d) + z z^T), solved reversed. */
static inline __attribute__((always_inline)) int rank_one(int n, const double *d, const double *z, double rho, double *mu, double *Q, Work *w) {
    if (rho > 0.0) return rank_one_pos(n, d, z, rho, mu, Q, w);
    double *dr = w->t, *zr = w->t + n, *mr = w->t + 2 * n, *Qr = w->t + 3 * n;
    for (int i = 0; i < n; ++i) dr[i] = -d[n - 1 - i], zr[i] = z[n - 1 - i];
    const int status = rank_one_pos(n, dr, zr, -rho, mr, Qr, w);
    for (int c = 0; c < n; ++c) mu[c] = -mr[n - 1 - c];
    reversed(n, Qr, Q);
    return status;
}

static int work_alloc(Work *w, int n) {
    const size_t nn = (size_t)n;
    double *buf = (double *)malloc(sizeof(double) * (nn * 19 + 2 * nn * nn));
    int *ibuf = (int *)malloc(sizeof(int) * nn * 5);
    void *slots = malloc(sizeof(Slot) * nn);
    if (!buf || !ibuf || !slots) {
        free(buf);
        free(ibuf);
        free(slots);
        return -1;
    }
    double **dv[15] = {&w->d, &w->z, &w->D, &w->Z, &w->M, &w->tau, &w->zhat, &w->q, &w->c, &w->s, &w->da, &w->za, &w->ya, &w->mu1, &w->mu2};
    for (int k = 0; k < 15; ++k) *dv[k] = buf + k * nn;
    w->t = buf + 15 * nn;             /* 3n + n*n: the reversed problem of rank_one */
    w->Qa = buf + 18 * nn + nn * nn; /* n*n */
    int **iv[5] = {&w->nd, &w->df, &w->org, &w->rp, &w->ri};
    for (int k = 0; k < 5; ++k) *iv[k] = ibuf + k * nn;
    w->slots = slots;
    return 0;
}

static void work_free(Work *w) {
    free(w->d);
    free(w->nd);
    free(w->slots);
}

/* One group, everything in descending order as the analysis keeps it:
 * z1 = V^T u+, (mu1, Q1) = eig(diag(d) + z1 z1^T); z2 = Q1^T V^T u-,
 * (mu, Q2) = eig(diag(mu1) - z2 z2^T); the new vectors are V Q1 Q2. */
SEF_CLONES static int slide_group(int n, const double *d_desc, const double *V, const double *up, const double *um, double *mu_desc,
                                  double *Q1, double *Q2, Work *w) {
    double *d = w->da, *z = w->za, *y = w->ya, *mu1 = w->mu1, *mu = w->mu2, *Qa = w->Qa;
    double *zd = w->q, *yd = w->zhat; /* free until rank_one runs */
    for (int j = 0; j < n; ++j) zd[j] = yd[j] = 0.0;
    for (int i = 0; i < n; ++i) {
        const double *row = V + (size_t)i * n;
        for (int j = 0; j < n; ++j) zd[j] += row[j] * up[i], yd[j] += row[j] * um[i];
    }
    for (int k = 0; k < n; ++k) d[k] = d_desc[n - 1 - k], z[k] = zd[n - 1 - k], y[k] = yd[n - 1 - k];
    int status = rank_one(n, d, z, 1.0, mu1, Qa, w);
    for (int j = 0; j < n; ++j) z[j] = 0.0;
    for (int i = 0; i < n; ++i) {
        const double *row = Qa + (size_t)i * n;
        for (int j = 0; j < n; ++j) z[j] += row[j] * y[i];
    }
    reversed(n, Qa, Q1);
    status |= rank_one(n, mu1, z, -1.0, mu, Qa, w);
    reversed(n, Qa, Q2);
    for (int c = 0; c < n; ++c) mu_desc[c] = mu[n - 1 - c];
    return status;
}

static PyObject *py_slide(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o[7];
    int groups, n;
    if (!PyArg_ParseTuple(args, "iiOOOOOOO", &groups, &n, &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6])) return nullptr;
    if (groups < 0 || n < 1) return PyErr_Format(PyExc_ValueError, "need groups >= 0 and n >= 1, got %d, %d", groups, n);
    static const char *names[7] = {"values", "vectors", "u_plus", "u_minus", "out_values", "q1", "q2"};
    const Py_ssize_t G = groups, N = n;
    const Py_ssize_t sizes[7] = {G * N, G * N * N, G * N, G * N, G * N, G * N * N, G * N * N};
    Buffers B;
    for (; B.got < 7; ++B.got)
        if (get_buffer(o[B.got], &B.b[B.got], B.got >= 4, names[B.got], sizes[B.got]) < 0) return nullptr;
    const Py_buffer *b = B.b;
    unsigned char *failed = (unsigned char *)calloc((size_t)G + 1, 1);
    Work w;
    if (!failed || work_alloc(&w, n) < 0) {
        free(failed);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t g = 0; g < G; ++g) {
        const size_t v = (size_t)g * N, m = (size_t)g * N * N;
        failed[g] = slide_group(n, (double *)b[0].buf + v, (double *)b[1].buf + m, (double *)b[2].buf + v, (double *)b[3].buf + v,
                                (double *)b[4].buf + v, (double *)b[5].buf + m, (double *)b[6].buf + m, &w) != 0;
    }
    Py_END_ALLOW_THREADS
    work_free(&w);
    PyObject *result = PyBytes_FromStringAndSize((const char *)failed, G);
    free(failed);
    return result;
}

static PyMethodDef methods[] = {
    {"slide", py_slide, METH_VARARGS,
     "slide(groups, n, values, vectors, u_plus, u_minus, out_values, q1, q2) -> bytes\n\n"
     "Per group: the eigenpairs of V diag(values) V^T + u+ u+^T - u- u-^T are\n"
     "out_values and V q1 q2, values descending in and out. C-contiguous float64\n"
     "buffers. Returns one byte per group, nonzero where the update failed."},
    {nullptr, nullptr, 0, nullptr},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_secular", "Rank-two eigen-update of a sliding window's Gram.", -1, methods,
                                    nullptr, nullptr, nullptr, nullptr};

PyMODINIT_FUNC PyInit__secular(void) { return PyModule_Create(&module); }
