"""Time the per-analysis pipeline of spectral_edge_fast.analysis on the CPU.

One analysis of one group = spectrum of the current window, spectrum of the
previous window, stability, consecutive-window overlaps, eigenvalue flow and
the adiabatic parameter, from the group's (W+1) x (W+1) extended Gram.

    python benchmarks/bench_analysis.py [--groups 64] [--window 64] [--repeats 30]

The headline figure, ``streaming``, is one slide of a monitor that analyses
every slide: ``EigenTracker.step`` (the current windows' eigenpairs updated
from the previous ones by the rank-two secular solver, checked, LAPACK where
a check fails) plus ``analyze_slides`` (every quantity, vectorised over the
groups), timed per slide over a stream of consecutive windows, median over
the slides. Also timed: ``batched_cold`` (``analyze_slides`` with both
windows eigensolved by LAPACK: an analysis that does not follow the last
one), the per-group functions in a Python loop (``per_group``, with and
without the principal angles of near-degenerate clusters), the bare LAPACK
eigensolves, and stages alone.

What the monitor itself pays per record, ``monitor_consecutive`` and
``monitor_strided``: ``SpectralMonitor.analyze`` (``analyze_*`` figures
alone) plus the record's bookkeeping (the streaming event detectors, one
record per series), on
the engine's ``GramState`` of each slide of the same stream (the groups;
the monitor adds the global window). Consecutive: ``analyze_every ==
every``, each record one slide after the last (the monitor then carries the
decompositions with an ``EigenTracker``); strided: ``analyze_every = 10``
(both windows of every group eigensolved by LAPACK).

The secular solver runs on up to 4 threads (it releases the GIL); BLAS is
pinned to one thread before NumPy loads: the matrices are tiny, and BLAS
threads only contend with ours. Results go to
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
import tempfile  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spectral_edge_fast.analysis import (  # noqa: E402
    EigenTracker,
    adiabatic,
    analyze_slides,
    delta_c_fro,
    eigen_batch,
    eigen_flow,
    spectrum,
    stability,
    window_overlaps,
)
from spectral_edge_fast.analysis import tracking  # noqa: E402
from spectral_edge_fast.window import GramState  # noqa: E402

LR = 1e-3


def stream_grams(groups: int, T: int, P: int, seed: int = 0) -> np.ndarray:
    """Per group: the Gram [T, T] of T consecutive updates with three planted
    signal directions over isotropic noise, as a training window looks. Its
    (W+1) x (W+1) diagonal blocks are the extended Grams of successive
    slides, sharing their entries bit for bit as the engine's do."""
    rng = np.random.default_rng(seed)
    out = np.empty((groups, T, T))
    for g in range(groups):
        basis = np.linalg.qr(rng.standard_normal((P, 3)))[0].T
        signal = rng.standard_normal((T, 3)) * np.array([6.0, 3.0, 1.5]) @ basis
        Y = signal + rng.standard_normal((T, P)) / np.sqrt(P)
        out[g] = Y @ Y.T
    return out


def time_stream(full: np.ndarray, W: int, warmup: int = 3) -> dict:
    """Per-slide wall time of tracker + analyze_slides over the stream."""
    tracker = EigenTracker()
    times = []
    for t in range(W, full.shape[1] - 1):
        E = np.ascontiguousarray(full[:, t - W : t + 1, t - W : t + 1])
        t0 = time.perf_counter()
        analyze_slides(E, LR, tracker=tracker)
        times.append(time.perf_counter() - t0)
    times = times[warmup:]
    return {
        "median_ms": 1e3 * float(np.median(times)),
        "min_ms": 1e3 * float(np.min(times)),
        "p10_ms": 1e3 * float(np.percentile(times, 10)),
        "p90_ms": 1e3 * float(np.percentile(times, 90)),
        "slides": len(times),
        "group_slides_updated": tracker.updated,
        "group_slides_eigensolved": tracker.solved,
    }


def gram_state(full: np.ndarray, W: int, count: int, groups) -> GramState:
    """The engine's host state after ``count`` updates of the stream (update
    ``k`` in ring slot ``k % W``; ``count > W``, so a row has left)."""
    slots = np.arange(count - W, count)
    where = slots % W
    ring = np.empty((full.shape[0], W, W))
    ring[:, where[:, None], where[None, :]] = full[:, slots[:, None], slots[None, :]]
    a, b = count - 1, count - 1 - W  # entering and leaving updates
    left = np.empty((full.shape[0], W + 1))
    left[:, where] = full[:, b, slots]  # the leaving row's old Gram row, in slot order...
    left[:, a % W] = full[:, b, b]  # ...whose slot held b itself
    left[:, W] = full[:, a, b]
    return GramState(ring, left, count, W, list(groups))


def time_monitor(full: np.ndarray, W: int, analyze_every: int, warmup: int = 3) -> dict:
    """Per-record wall time of the monitor's analysis over the stream's states."""
    import torch

    from spectral_edge_fast.monitor import SpectralMonitor

    groups = [f"layers.{g}" for g in range(full.shape[0])]
    last = gram_state(full, W, full.shape[1], groups)
    assert np.array_equal(last.extended_gram(groups[-1]), full[-1, -W - 1 :, -W - 1 :]), "gram_state is not the stream's"
    with tempfile.TemporaryDirectory() as log_dir:
        mon = SpectralMonitor([torch.zeros(1)], window=W, every=1, analyze_every=analyze_every, sinks=(),
                              log_dir=log_dir)
        times, analysis = [], []
        for step, count in enumerate(range(W + 1, full.shape[1] + 1)):
            state = gram_state(full, W, count, groups)
            t0 = time.perf_counter()
            record = mon.analyze(state, step=step, lr=LR)
            t1 = time.perf_counter()
            mon._record(record)
            times.append(time.perf_counter() - t0)
            analysis.append(t1 - t0)
        tracker = mon.__dict__.get("_tracker")
    times, analysis = times[warmup:], analysis[warmup:]
    return {
        "median_ms": 1e3 * float(np.median(times)),
        "min_ms": 1e3 * float(np.min(times)),
        "p90_ms": 1e3 * float(np.percentile(times, 90)),
        # analyze() alone; the rest of a record is its bookkeeping (event detection)
        "analyze_median_ms": 1e3 * float(np.median(analysis)),
        "analyze_p90_ms": 1e3 * float(np.percentile(analysis, 90)),
        "records": len(times),
        "tracker": tracker is not None,
    }


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
    parser.add_argument("--repeats", type=int, default=30, help="repeats of each case")
    parser.add_argument("--slides", type=int, default=100, help="slides of the streaming case")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results" / "bench_analysis.json")
    args = parser.parse_args(argv)

    n = args.window
    full = stream_grams(args.groups, n + args.slides + 4, args.params)
    grams = [np.ascontiguousarray(F[: n + 1, : n + 1]) for F in full]
    stack = np.stack(grams)
    previous = [spectrum(E[:n, :n]) for E in grams]
    current = [spectrum(E[1:, 1:]) for E in grams]
    dcs = [delta_c_fro(E) for E in grams]
    blocks = [np.ascontiguousarray(E[1:, 1:]) for E in grams]

    prev_eig = eigen_batch(stack[:, :n, :n])
    cur_eig = eigen_batch(stack[:, 1:, 1:])
    cases = {
        "batched_cold": lambda: analyze_slides(stack, LR),
        "batched_given_eigen": lambda: analyze_slides(stack, LR, prev_eig, cur_eig),
        "slide_eigen": lambda: tracking.slide_eigen(prev_eig, stack),
        "per_group": lambda: [pipeline(E) for E in grams],
        "per_group_no_principal_angles": lambda: [pipeline(E, principal_angles=False) for E in grams],
        "lapack_eigh_batched": lambda: np.linalg.eigh(stack[:, 1:, 1:]),
        "lapack_eigvalsh_batched": lambda: np.linalg.eigvalsh(stack[:, 1:, 1:]),
        "stage_spectrum": lambda: [spectrum(G) for G in blocks],
        "stage_stability": lambda: [stability(c, d) for c, d in zip(current, dcs)],
        "stage_window_overlaps": lambda: [window_overlaps(E, p, c) for E, p, c in zip(grams, previous, current)],
        "stage_eigen_flow": lambda: [eigen_flow(E, p, c) for E, p, c in zip(grams, previous, current)],
        "stage_adiabatic": lambda: [adiabatic(c, d, LR) for c, d in zip(current, dcs)],
    }
    figures = {
        "streaming": time_stream(full, n),
        "monitor_consecutive": time_monitor(full, n, analyze_every=1),
        "monitor_strided": time_monitor(full, n, analyze_every=10),
    }
    figures.update({name: timed(fn, args.repeats) for name, fn in cases.items()})

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
        "secular_solver": tracking.available(),
        "commit": git_commit(),
        "target_ms": 10.0,
        "figures_ms": figures,
    }
    print(f"{args.groups} groups, W={args.window}, {result['cpu']} (load {result['load_average_1min']})")
    for name, f in figures.items():
        extra = "".join(f", {k[:-3].replace('_', ' ')} {f[k]:.2f}" for k in ("p90_ms", "analyze_median_ms", "analyze_p90_ms") if k in f)
        print(f"  {name:46s} {f['median_ms']:8.2f} ms  (min {f['min_ms']:.2f}{extra})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
