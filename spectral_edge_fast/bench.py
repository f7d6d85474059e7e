"""The engine benchmark: one slide of the rolling-window Gram, timed for the
naive torch code a user writes today, the incremental torch backend and each
compiled backend, against the bytes that must move.

Bytes that must move for one fused step (gather + slide): read the
parameters, read and write the snapshot, read the W ring rows (the leaving
row included) and write the new row:
``P * (param_bytes + 2 * snapshot_bytes + (W + 1) * storage_bytes)``,
i.e. ``(W + 4) * P * 4`` when everything is float32.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import statistics
import subprocess
import time
from typing import Callable, Dict, List, Optional

import torch

from .kernels import backend_status, get_backend
from .kernels.torch_ops import naive_gram_step

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def gpt2_124m_sizes() -> List[int]:
    """Element counts of GPT-2 124M's parameter tensors (n_layer=12,
    d=768, vocab 50257, context 1024), in module order."""
    d, ff, vocab, ctx = 768, 3072, 50257, 1024
    block = [d, d, d * 3 * d, 3 * d, d * d, d, d, d, d * ff, ff, ff * d, d]
    return [vocab * d, ctx * d] + block * 12 + [d, d]


def split_sizes(P: int, n_tensors: int) -> List[int]:
    """``n_tensors`` sizes adding up to P, uneven like a real model's."""
    weights = [1 + (i * 7919) % 13 for i in range(n_tensors)]
    total = sum(weights)
    sizes = [max(1, P * w // total) for w in weights]
    sizes[-1] += P - sum(sizes)
    return sizes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> List[float]:
    """Seconds per call: CUDA events on a GPU, perf_counter on the CPU."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 29, repeats: int = 7) -> float:
    """Measured copy bandwidth in bytes/s (read + write counted)."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    times = time_fn(lambda: dst.copy_(src), device, repeats, warmup=2)
    return 2 * nbytes / statistics.median(times)


def last_level_cache(device: torch.device) -> Optional[int]:
    """Bytes of the device's largest cache (a GPU's L2, a CPU's L3), when the
    system says; None otherwise."""
    if device.type == "cuda":
        return getattr(torch.cuda.get_device_properties(device), "L2_cache_size", None) or None
    sizes = []
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        if text.rstrip("KMG").isdigit():
            sizes.append(int(text.rstrip("KMG")) * scale)
    return max(sizes) if sizes else None


# A rate this far above the copy rate cannot come from memory: the case ran from cache.
ABOVE_COPY = 1.5


def note_cache(rows: List[Dict], cache: Optional[int]) -> None:
    """Mark the rows whose rate is not memory's: the step's bytes fit in the
    last-level cache, or the rate is well above the measured copy rate."""
    for r in rows:
        if "ms" not in r:
            continue
        if cache is not None and r["bytes"] <= cache:
            r["cache_note"] = f"the step's {r['bytes'] / 1e6:.3g} MB fit in the {cache / 2**20:.0f} MB last-level cache"
        elif r["bandwidth_fraction"] > ABOVE_COPY:
            r["cache_note"] = (f"{100 * r['bandwidth_fraction']:.0f}% of the copy rate: the step's "
                               f"{r['bytes'] / 1e6:.3g} MB were served from cache")


def step_bytes(P: int, W: int, param_bytes: int, storage_bytes: int, snapshot_bytes: int = 4) -> int:
    return P * (param_bytes + 2 * snapshot_bytes + (W + 1) * storage_bytes)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cpus)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> Optional[str]:
    """HEAD of the checkout; ``SEF_COMMIT`` overrides it for a tree copied
    to another machine without its history (its ``.git`` would name another commit)."""
    if os.environ.get("SEF_COMMIT"):
        return os.environ["SEF_COMMIT"]
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def bench_case(
    P: int,
    W: int,
    sizes: List[int],
    storage: str,
    device: torch.device,
    backends: List[str],
    repeats: int,
    bandwidth: float,
    naive: bool = True,
) -> List[Dict]:
    """Time one slide per backend at these sizes; one result row each. A
    case that would not fit in the GPU's free memory gets a row with
    ``skipped`` (its reason) instead of a time."""
    # Random data drawn on the device itself: at P = 5e8 a CPU generator
    # would take minutes per ring.
    gen = torch.Generator(device=device).manual_seed(0)
    params = [torch.randn(n, generator=gen, device=device) for n in sizes]
    bounds = (0, P)
    rows = []
    item = DTYPES[storage].itemsize
    moved = step_bytes(P, W, 4, item)
    base = dict(P=P, W=W, tensors=len(sizes), storage=storage, bytes=moved)

    def record(name, times, nbytes):
        med = statistics.median(times)
        rows.append(
            dict(
                base, backend=name, ms=med * 1e3, ms_min=min(times) * 1e3,
                gbps=nbytes / med / 1e9, bandwidth_fraction=nbytes / med / bandwidth,
            )
        )

    def fits(name, extra_bytes):
        """False (and a skipped row) when ``extra_bytes`` more would not fit."""
        if device.type != "cuda":
            return True
        torch.cuda.empty_cache()  # the last case's blocks, held by torch's allocator
        free = torch.cuda.mem_get_info(device)[0]
        if extra_bytes <= 0.9 * free:
            return True
        rows.append(dict(base, backend=name, skipped=f"needs {extra_bytes / 1e9:.0f} GB, {free / 1e9:.0f} GB free"))
        return False

    # naive: the history's W rows, the stacked copy of them, theta and a difference
    if naive and storage == "fp32" and fits("naive_torch", (2 * W + 3) * P * 4):
        history: List[torch.Tensor] = []
        snap = [torch.cat([p.reshape(-1) for p in params])]
        for _ in range(W):  # a full window, as in steady state
            snap[0] = naive_gram_step(history, params, snap[0], W)

        def naive_step():
            snap[0] = naive_gram_step(history, params, snap[0], W)

        record("naive_torch", time_fn(naive_step, device, max(2, repeats // 3)), moved)
        del history, snap
    for name in backends:
        ok, _ = backend_status(name, device)
        if not ok or not fits(name, W * P * item + 2 * P * 4):
            continue
        be = get_backend(name, device)
        ring = torch.empty(W, P, device=device, dtype=DTYPES[storage])
        for i in range(W):  # row by row: no float32 copy of the whole ring (and no row view left holding it)
            ring[i].copy_(torch.randn(P, generator=gen, device=device))
        snapshot = torch.cat(params).float()
        slot = [0]

        def step():
            be.step(params, snapshot, ring, slot[0], bounds)
            slot[0] = (slot[0] + 1) % W

        record("torch_incremental" if name == "torch" else name, time_fn(step, device, repeats), moved)
        del ring, snapshot
    return rows


def format_table(rows: List[Dict], header: bool = True) -> str:
    """The rows as a table; a rate marked ``*`` is not memory's (see
    :func:`cache_notes`)."""
    head = f"{'backend':<18} {'P':>10} {'W':>3} {'tensors':>7} {'storage':>7} {'ms':>9} {'GB/s':>7} {'of copy bw':>10} {'vs naive':>8}"
    lines = [head, "-" * len(head)] if header else []
    naive = {(r["P"], r["W"], r["tensors"]): r["ms"] for r in rows if r["backend"] == "naive_torch" and "ms" in r}
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['backend']:<18} {r['P']:>10.3g} {r['W']:>3} {r['tensors']:>7} {r['storage']:>7}   skipped: {r['skipped']}")
            continue
        base = naive.get((r["P"], r["W"], r["tensors"]))
        speedup = f"{base / r['ms']:.1f}x" if base else "-"
        lines.append(
            f"{r['backend']:<18} {r['P']:>10.3g} {r['W']:>3} {r['tensors']:>7} {r['storage']:>7} {r['ms']:>9.2f} "
            f"{r['gbps']:>7.2f} {100 * r['bandwidth_fraction']:>9.0f}%{'*' if 'cache_note' in r else ' '}{speedup:>8}"
        )
    return "\n".join(lines)


def cache_notes(rows: List[Dict]) -> List[str]:
    """One line per case whose rates are marked ``*``."""
    notes = {}
    for r in rows:
        if "cache_note" in r:
            notes.setdefault((r["P"], r["W"], r["storage"]), r["cache_note"])
    return [f"* P = {P:.3g}, W = {W}, {storage}: {note}; a larger P measures memory" for (P, W, storage), note in
            notes.items()]


def parse_args(argv=None, prog=None):
    from .cli import at_least, device_arg

    ap = argparse.ArgumentParser(prog=prog, description="Time one slide of the rolling-window Gram on every backend.")
    ap.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--P", type=at_least(1), nargs="+", default=None, help="numbers per update (default: 4e7 on CPU; 1e7 1e8 5e8 on GPU)")
    ap.add_argument("--W", type=at_least(2), nargs="+", default=None, help="window sizes (default: 16 on CPU; 8 16 64 on GPU)")
    ap.add_argument("--tensors", type=at_least(1), default=100, help="parameter tensors the P numbers are split into")
    ap.add_argument("--gpt2", action="store_true", help="also time GPT-2 124M's real tensor list")
    ap.add_argument("--storage", nargs="+", default=["fp32"], choices=sorted(DTYPES))
    ap.add_argument("--backends", nargs="+", default=["torch", "cpp", "cuda", "triton"])
    ap.add_argument("--repeats", type=at_least(1), default=9)
    ap.add_argument("--out", default=None, help="JSON file for the results (default: print only)")
    return ap.parse_args(argv)


def run(args) -> Dict:
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    Ps = [int(p) for p in (args.P or ([1e7, 1e8, 5e8] if gpu else [4e7]))]
    Ws = args.W or ([8, 16, 64] if gpu else [16])
    bandwidth = copy_bandwidth(device)
    cache = last_level_cache(device)
    print(f"device: {device_name(device)}; measured copy bandwidth {bandwidth / 1e9:.1f} GB/s", flush=True)
    rows = []
    layouts = [(P, split_sizes(P, args.tensors)) for P in Ps]
    if args.gpt2:
        sizes = gpt2_124m_sizes()
        layouts.append((sum(sizes), sizes))
    for P, sizes in layouts:
        for W in Ws:
            for storage in args.storage:
                case = bench_case(P, W, sizes, storage, device, args.backends, args.repeats, bandwidth)
                note_cache(case, cache)
                print(format_table(case, header=not rows), flush=True)  # rows as they come, one header
                rows += case
    result = dict(
        device=device_name(device), device_type=device.type, commit=git_commit(), torch=torch.__version__,
        cuda=torch.version.cuda, threads=torch.get_num_threads(), copy_bandwidth_gbps=bandwidth / 1e9,
        last_level_cache_bytes=cache, results=rows,
        backends={b: backend_status(b, device)[1] or "available" for b in args.backends},
    )
    try:
        import triton

        result["triton"] = triton.__version__
    except ImportError:
        result["triton"] = None
    return result


def main(argv=None, prog=None) -> int:
    args = parse_args(argv, prog)
    result = run(args)
    for line in cache_notes(result["results"]):
        print(line)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nwrote {args.out}")
    return 0
