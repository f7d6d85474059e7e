"""The monitor's analysis of a record, on the CPU (float64 NumPy).

One analysis of one group = spectrum of the current window, spectrum of the
previous window, stability, consecutive-window overlaps, eigenvalue flow and
the adiabatic parameter, from the group's (W+1) x (W+1) extended Gram.

The headline figure, ``streaming``, is one slide of a monitor that analyses
every slide: ``EigenTracker.step`` (the current windows' eigenpairs updated
from the previous ones by the rank-two secular solver, checked, LAPACK where
a check fails) plus ``analyze_slides`` (every quantity, vectorised over the
groups), timed per slide over a stream of consecutive windows. Also timed:
``batched_cold`` (``analyze_slides`` with both windows eigensolved by
LAPACK: an analysis that does not follow the last one), the per-group
functions in a Python loop (``per_group``, with and without the principal
angles of near-degenerate clusters), the bare LAPACK eigensolves, and stages
alone.

What the monitor itself pays per record, ``monitor_consecutive`` and
``monitor_strided``: ``SpectralMonitor.analyze`` plus the record's
bookkeeping (the streaming event detectors, one per series), on the engine's
``GramState`` of each slide of the same stream. Consecutive:
``analyze_every == every`` (the monitor carries the decompositions with an
``EigenTracker``); strided: ``analyze_every = 10`` (both windows of every
group eigensolved by LAPACK).

The secular solver runs on up to 4 threads (it releases the GIL). NumPy's
BLAS threads are set by ``OPENBLAS_NUM_THREADS`` before the process starts
(``make bench`` sets 1: the matrices are tiny, and BLAS threads only contend
with the solver's); the result records the setting.
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Dict

import numpy as np
import torch

from . import machine, timed
from ..analysis import (
    EigenTracker,
    adiabatic,
    analyze_slides,
    delta_c_fro,
    eigen_batch,
    eigen_flow,
    spectrum,
    stability,
    tracking,
    window_overlaps,
)
from ..window import GramState

LR = 1e-3
CPU = torch.device("cpu")


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


def _summary(times, **extra) -> Dict:
    ms = 1e3 * np.asarray(times)
    return dict(ms=float(np.median(ms)), ms_min=float(ms.min()), p10_ms=float(np.percentile(ms, 10)),
                p90_ms=float(np.percentile(ms, 90)), **extra)


def time_stream(full: np.ndarray, W: int, warmup: int = 3) -> Dict:
    """Per-slide wall time of tracker + analyze_slides over the stream."""
    tracker = EigenTracker()
    times = []
    for t in range(W, full.shape[1] - 1):
        E = np.ascontiguousarray(full[:, t - W : t + 1, t - W : t + 1])
        t0 = time.perf_counter()
        analyze_slides(E, LR, tracker=tracker)
        times.append(time.perf_counter() - t0)
    return _summary(times[warmup:], slides=len(times) - warmup, group_slides_updated=tracker.updated,
                    group_slides_eigensolved=tracker.solved)


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


def time_monitor(full: np.ndarray, W: int, analyze_every: int, warmup: int = 3) -> Dict:
    """Per-record wall time of the monitor's analysis over the stream's states."""
    from ..monitor import SpectralMonitor

    groups = [f"layers.{g}" for g in range(full.shape[0])]
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
    analyze = _summary(analysis[warmup:])
    # analyze() alone; the rest of a record is its bookkeeping (event detection)
    return _summary(times[warmup:], analyze_ms=analyze["ms"], analyze_p90_ms=analyze["p90_ms"],
                    records=len(times) - warmup, tracker=tracker is not None)


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


def run(device: torch.device, config: Dict) -> Dict:
    """``device`` is ignored: the analysis runs on the host."""
    n, repeats = config["window"], config["repeats"]
    full = stream_grams(config["groups"], n + config["slides"] + 4, config["params"])
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
    info = machine(CPU)
    info.update(blas_threads=os.environ.get("OPENBLAS_NUM_THREADS"), secular_solver=tracking.available())
    print(f"analysis: {config['groups']} groups, W = {n}, {info['device']} (load {info['load_1min']})", flush=True)
    results = [dict(case="streaming", **time_stream(full, n)),
               dict(case="monitor_consecutive", **time_monitor(full, n, analyze_every=1)),
               dict(case="monitor_strided", **time_monitor(full, n, analyze_every=10))]
    results += [dict(case=name, **timed(fn, CPU, repeats, warmup=3)) for name, fn in cases.items()]
    for r in results:
        extra = "".join(f", {k[:-3].replace('_', ' ')} {r[k]:.2f}" for k in ("p90_ms", "analyze_ms", "analyze_p90_ms")
                        if k in r)
        print(f"  {r['case']:32s} {r['ms']:8.2f} ms  (min {r['ms_min']:.2f}{extra})")
    return dict(machine=info, settings=config, results=results)
