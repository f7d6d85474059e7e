"""Accuracy of the tracked eigen-decomposition over long streams of slides.

For each kind of stream, every slide's current-window eigenpairs from
``EigenTracker`` (rank-two secular update, no refresh) are compared with
LAPACK: the largest eigenvalue error, and the residual ``|G V - V diag(lambda)|_F``
and orthogonality ``max |V^T V - I|``, in units of ``n * eps * lambda_1``
(``n * eps`` for orthogonality), with the count of group-slides that took the
update and of those recomputed by LAPACK (first slide, failed checks).

    python benchmarks/check_tracking.py [--groups 8] [--window 32] [--slides 360]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from spectral_edge_fast.analysis import EigenTracker  # noqa: E402

EPS = np.finfo(np.float64).eps


def rows(kind: str, rng, G: int, T: int) -> np.ndarray:
    if kind == "dense":
        return rng.standard_normal((G, T, 500))
    if kind == "rank-deficient (P = 8)":
        return rng.standard_normal((G, T, 8))
    if kind == "filling window":
        Y = rng.standard_normal((G, T, 300))
        Y[:, :52] = 0.0
        return Y
    if kind == "tied (orthonormal rows)":
        Y = np.zeros((G, T, T))
        Y[:, np.arange(T), np.arange(T)] = 1.0
        return Y
    if kind == "duplicate rows":
        Y = rng.standard_normal((G, T, 200))
        Y[:, 1::2] = Y[:, 0:-1:2]
        return Y
    if kind == "rank one":
        return np.repeat(rng.standard_normal((G, 1, 200)), T, axis=1)
    if kind == "dynamic range e^16":
        return rng.standard_normal((G, T, 200)) * np.exp(rng.uniform(-8, 8, (G, T, 1)))
    raise ValueError(kind)


KINDS = ("dense", "rank-deficient (P = 8)", "filling window", "tied (orthonormal rows)", "duplicate rows", "rank one", "dynamic range e^16")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--slides", type=int, default=360)
    args = parser.parse_args(argv)
    G, n = args.groups, args.window
    print(f"{'stream':26s} {'updated':>8s} {'LAPACK':>7s} {'eig err':>8s} {'residual/orth':>14s}  (units of n eps lambda_1)")
    for kind in KINDS:
        Y = rows(kind, np.random.default_rng(1), G, n + args.slides + 1)
        full = Y @ Y.transpose(0, 2, 1)
        tracker = EigenTracker(refresh_every=10**9)
        err = res = 0.0
        for t in range(n, full.shape[1] - 1):
            E = np.ascontiguousarray(full[:, t - n : t + 1, t - n : t + 1])
            current = tracker.step(E)[1]
            G1 = E[:, 1:, 1:]
            ref = np.linalg.eigvalsh(G1)[:, ::-1]
            unit = n * EPS * np.maximum(np.abs(ref).max(axis=1), np.finfo(float).tiny)
            V, lam = current.vectors, current.values
            err = max(err, float((np.abs(lam - ref).max(axis=1) / unit).max()))
            resid = np.linalg.norm(G1 @ V - V * lam[:, None, :], axis=(1, 2)) / unit
            orth = np.abs(V.transpose(0, 2, 1) @ V - np.eye(n)).max(axis=(1, 2)) / (n * EPS)
            res = max(res, float(resid.max()), float(orth.max()))
        print(f"{kind:26s} {tracker.updated:8d} {tracker.solved:7d} {err:8.2f} {res:14.2f}")


if __name__ == "__main__":
    main()
