"""Time the per-analysis pipeline of spectral_edge_fast.analysis on the CPU.

One analysis of one group = spectrum of the current window, spectrum of the
previous window, stability, consecutive-window overlaps, eigenvalue flow and
the adiabatic parameter, from the group's (W+1) x (W+1) extended Gram. The
figure is the wall time for all groups, median over repeats.

    python benchmarks/bench_analysis.py [--groups 64] [--window 64] [--repeats 30]

Also timed: the pipeline without the principal angles of near-degenerate
clusters (in a noisy window the whole bulk is one cluster, and its cosines
cost an eigen-solve; ``subspace_overlaps`` stays exact), the same reusing the
previous window's Spectrum (what a monitor that analyses every slide has from
its last call: one eigensolve per group), the bare LAPACK eigensolves (the
floor), and each stage alone. BLAS
threads are pinned to 1 before NumPy loads: the matrices are tiny, and on a
shared machine threads only add contention. Results go to
benchmarks/results/bench_analysis.json with the CPU name and git commit.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spectral_edge_fast.analysis import (  # noqa: E402
    adiabatic,
    delta_c_fro,
    eigen_flow,
    spectrum,
    stability,
    window_overlaps,
)

LR = 1e-3


def extended_grams(groups: int, W: int, P: int, seed: int = 0):
    """Per group: W+1 consecutive updates with three planted signal directions
    over isotropic noise, as a training window looks; returns their Grams."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(groups):
        basis = np.linalg.qr(rng.standard_normal((P, 3)))[0].T
        signal = rng.standard_normal((W + 1, 3)) * np.array([6.0, 3.0, 1.5]) @ basis
        Y = signal + rng.standard_normal((W + 1, P)) / np.sqrt(P)
        out.append(Y @ Y.T)
    return out


def pipeline(E: np.ndarray, previous=None, principal_angles=True):
    n = E.shape[0] - 1
    current = spectrum(E[1:, 1:])
    previous = spectrum(E[:n, :n]) if previous is None else previous
    dc = delta_c_fro(E)
    return (
        current,
        stability(current, dc),
        window_overlaps(E, previous, current, principal_angles=principal_angles),
        eigen_flow(E, previous, current),
        adiabatic(current, dc, LR),
    )


def timed(fn, repeats: int, warmup: int = 3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_ms": 1e3 * float(np.median(times)), "min_ms": 1e3 * float(np.min(times))}


def cpu_name() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=64)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--params", type=int, default=4096, help="coordinates per group used to build the test Grams")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results" / "bench_analysis.json")
    args = parser.parse_args(argv)

    grams = extended_grams(args.groups, args.window, args.params)
    n = args.window
    previous = [spectrum(E[:n, :n]) for E in grams]
    current = [spectrum(E[1:, 1:]) for E in grams]
    dcs = [delta_c_fro(E) for E in grams]
    blocks = [np.ascontiguousarray(E[1:, 1:]) for E in grams]

    cases = {
        "pipeline": lambda: [pipeline(E) for E in grams],
        "pipeline_no_principal_angles": lambda: [pipeline(E, principal_angles=False) for E in grams],
        "pipeline_no_principal_angles_reusing_previous": lambda: [
            pipeline(E, p, principal_angles=False) for E, p in zip(grams, previous)
        ],
        "floor_eigh_x2": lambda: [(np.linalg.eigh(G), np.linalg.eigh(G)) for G in blocks],
        "floor_eigh_x1": lambda: [np.linalg.eigh(G) for G in blocks],
        "stage_spectrum": lambda: [spectrum(G) for G in blocks],
        "stage_stability": lambda: [stability(c, d) for c, d in zip(current, dcs)],
        "stage_window_overlaps": lambda: [window_overlaps(E, p, c) for E, p, c in zip(grams, previous, current)],
        "stage_eigen_flow": lambda: [eigen_flow(E, p, c) for E, p, c in zip(grams, previous, current)],
        "stage_adiabatic": lambda: [adiabatic(c, d, LR) for c, d in zip(current, dcs)],
    }
    figures = {name: timed(fn, args.repeats) for name, fn in cases.items()}

    result = {
        "benchmark": "bench_analysis",
        "groups": args.groups,
        "window": args.window,
        "cpu": cpu_name(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas_threads": os.environ["OPENBLAS_NUM_THREADS"],
        "commit": git_commit(),
        "target_ms": 10.0,
        "figures_ms": figures,
    }
    print(f"{args.groups} groups, W={args.window}, {result['cpu']} (load {result['load_average_1min']})")
    for name, f in figures.items():
        print(f"  {name:46s} {f['median_ms']:8.2f} ms  (min {f['min_ms']:.2f})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
