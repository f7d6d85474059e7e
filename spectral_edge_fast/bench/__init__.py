"""The benchmark harness behind ``spectral-edge bench`` and ``make bench``.

Three benchmarks, one module each, sharing what is here (the machine's
name, the commit, timing, the copy-bandwidth and fp32 FMA-rate measurements,
the results JSON) and one set of defaults, :data:`DEFAULTS`:

* ``step`` (:mod:`.step`): one step of the rolling-window Gram, for the
  naive torch code, the incremental torch backend and each compiled backend
  (exact, and sketched where ``GramWindow(..., sketch=m)`` exists), against
  the bytes that must move; and the host's part of ``GramWindow.step`` for
  GPT-2's 148 tensors;
* ``gram`` (:mod:`.gram`): ``sef.gram(x)`` against ``x @ x.T``, fp32 and
  bf16, in GB/s and GFLOP/s against the machine's own rates, with both
  results' error against float64;
* ``analysis`` (:mod:`.analysis`): the monitor's float64 analysis of a
  record.

Each writes ``<benchmark>_<device type>.json`` (``--out``), which
:mod:`.tables` renders as benchmarks/RESULTS.md and the README's tables::

    {"benchmark": NAME, "command": "spectral-edge bench ...", "machine": {device, commit, date,
     versions, threads, load, copy_bandwidth_gbps, fma_rate_gflops, ...}, "settings": {...},
     "wall_s": seconds, "results": [{...}, ...], ...}
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

from ..config import SKETCH_M
from ..files import atomic_write

BENCHMARKS = ("step", "gram", "analysis")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

#: Sizes and repeats of each benchmark: "default" is ``make bench`` (about
#: 10 minutes on a quiet 2-core CPU), "quick" what the tests run. A pair
#: ``(cpu, cuda)`` is the value on each device type.
DEFAULTS = {
    "default": {
        "step": dict(P=([4e7], [1e7, 1e8, 5e8]), W=([16], [8, 16, 64]), dtypes=["fp32", "bf16"], tensors=100,
                     gpt2=(False, True), sketch=SKETCH_M, repeats=9, host_calls=3000,
                     backends=["torch", "cpp", "cuda", "triton"]),
        "gram": dict(P=[1e6, 1e7], W=[2, 4, 8, 16, 32, 64, 128], dtypes=["fp32", "bf16"], repeats=5),
        "analysis": dict(groups=64, window=64, params=4096, slides=200, repeats=30),
        # the copy (bytes read) and the torch.mm (n x n) that measure the machine's rates
        "rates": dict(copy_bytes=1 << 29, fma_n=2048),
    },
    "quick": {
        "step": dict(P=([2e4], [2e4]), W=([4], [4]), dtypes=["fp32", "bf16"], tensors=10, gpt2=(False, False),
                     sketch=64, repeats=2, host_calls=20, backends=["torch", "cpp", "cuda", "triton"]),
        "gram": dict(P=[2e4], W=[2, 8], dtypes=["fp32", "bf16"], repeats=2),
        "analysis": dict(groups=4, window=8, params=64, slides=12, repeats=2),
        "rates": dict(copy_bytes=1 << 24, fma_n=256),
    },
}

# A call this long is timed 3 times at most: the median of 3 is enough where
# the system's noise is a small fraction of the call.
LONG_CALL_S = 2.0


def settings(name: str, mode: str, device: torch.device) -> Dict:
    """:data:`DEFAULTS` of benchmark ``name`` in ``mode``, for ``device``'s type."""
    gpu = device.type == "cuda"
    return {k: (v[gpu] if isinstance(v, tuple) else v) for k, v in DEFAULTS[mode][name].items()}


# -- the machine ---------------------------------------------------------------------------------


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
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def load() -> Optional[float]:
    """The 1-minute load average, None where the system has none."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


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


def machine(device: torch.device, rates: Optional[Dict] = None) -> Dict:
    """What a result depends on: the device, the commit, the date, the
    versions, the threads and load, and the copy bandwidth and fp32 FMA rate
    measured as ``rates`` (:data:`DEFAULTS`' ``rates``) says, if given."""
    import numpy

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    info = dict(
        device=device_name(device), device_type=device.type, commit=git_commit(),
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda, triton=triton_version,
        numpy=numpy.__version__, threads=torch.get_num_threads(), cpus=os.cpu_count(), load_1min=load(),
        last_level_cache_bytes=last_level_cache(device),
    )
    if rates:
        info["copy_bandwidth_gbps"] = copy_bandwidth(device, rates["copy_bytes"]) / 1e9
        info["fma_rate_gflops"] = fma_rate(device, rates["fma_n"]) / 1e9
        n = rates["fma_n"]
        info["fma_rate_how"] = f"torch.mm of two {n} x {n} fp32 matrices: 2 n^3 / t, median of 5"
    return info


# -- timing --------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> List[float]:
    """Seconds per call after ``warmup`` calls: CUDA events on a GPU,
    perf_counter on the CPU. A warm-up call over :data:`LONG_CALL_S` cuts
    the repeats to 3."""
    for i in range(warmup):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        if i == warmup - 1 and time.perf_counter() - t0 > LONG_CALL_S:
            repeats = min(repeats, 3)
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


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> Dict[str, float]:
    """``ms`` (median) and ``ms_min`` of :func:`time_fn`."""
    times = time_fn(fn, device, repeats, warmup)
    return dict(ms=statistics.median(times) * 1e3, ms_min=min(times) * 1e3, repeats=len(times))


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 29, repeats: int = 7) -> float:
    """Measured copy bandwidth in bytes/s (read + write counted)."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    times = time_fn(lambda: dst.copy_(src), device, repeats, warmup=2)
    return 2 * nbytes / statistics.median(times)


def fma_rate(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """fp32 floating-point operations per second of torch.mm on n x n
    matrices (``2 n^3`` a product): the machine's practical peak."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, generator=gen, device=device)
    b = torch.randn(n, n, generator=gen, device=device)
    return 2 * n**3 / statistics.median(time_fn(lambda: torch.mm(a, b), device, repeats, warmup=2))


# A rate this far above the copy rate cannot come from memory: the case ran from cache.
ABOVE_COPY = 1.5


def cache_note(nbytes: int, fraction: float, cache: Optional[int]) -> Optional[str]:
    """Why a rate of ``fraction`` of the copy rate for ``nbytes`` is not
    memory's (they fit in the last-level cache, or the rate is well above
    the copy rate); None when it is."""
    if cache is not None and nbytes <= cache:
        return f"its {nbytes / 1e6:.3g} MB fit in the {cache / 2**20:.0f} MB last-level cache"
    if fraction > ABOVE_COPY:
        return f"{100 * fraction:.0f}% of the copy rate: its {nbytes / 1e6:.3g} MB were served from cache"
    return None


def fits(device: torch.device, nbytes: int) -> Optional[str]:
    """None when ``nbytes`` more fit in 90% of the device's free memory; the
    reason to skip the case otherwise."""
    from ..window import free_bytes

    if device.type == "cuda":
        torch.cuda.empty_cache()  # the last case's blocks, held by torch's allocator
    free = free_bytes(device)
    if free is None or nbytes <= 0.9 * free:
        return None
    return f"needs {nbytes / 1e9:.3g} GB, {free / 1e9:.3g} GB free"


def write_result(path: str, result: Dict) -> None:
    with atomic_write(path) as f:
        json.dump(result, f, indent=1)
        f.write("\n")


# -- the command ---------------------------------------------------------------------------------


def parse_args(argv=None, prog=None):
    from ..cli import at_least, device_arg
    from ..kernels import _MODULES

    ap = argparse.ArgumentParser(
        prog=prog, description="Time the engine's step, sef.gram against x @ x.T, and the analysis; write one "
                               "JSON file per benchmark (--out) with the device, commit and date.")
    ap.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS), metavar="NAME",
                    help=f"benchmarks to run, of {', '.join(BENCHMARKS)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of seconds")
    ap.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None, metavar="DIR",
                    help="write DIR/<benchmark>_<device type>.json (make bench: benchmarks/results)")
    ap.add_argument("--P", type=at_least(1), nargs="+", default=None,
                    help="numbers per update of step and gram (default: DEFAULTS in spectral_edge_fast.bench)")
    ap.add_argument("--W", type=at_least(2), nargs="+", default=None, help="window sizes of step and gram")
    ap.add_argument("--dtypes", nargs="+", default=None, choices=sorted(DTYPES),
                    help="the step's ring and gram's x (default: fp32 bf16)")
    ap.add_argument("--backends", nargs="+", default=None, choices=sorted(_MODULES), metavar="NAME",
                    help="the step's backends (default: torch cpp cuda triton, those available)")
    ap.add_argument("--repeats", type=at_least(1), default=None, help="timed calls per case (default: per benchmark)")
    return ap.parse_args(argv)


# the options that override DEFAULTS, in the benchmarks that have them
OVERRIDES = ("P", "W", "dtypes", "backends", "repeats")


def command_line(args) -> str:
    """The command that reruns ``args``."""
    parts = ["spectral-edge bench"]
    if set(args.only) != set(BENCHMARKS):  # the order they ran in does not change a result
        parts += ["--only", *args.only]
    parts += ["--quick"] if args.quick else []
    parts += ["--device", args.device] if torch.device(args.device).type != "cpu" else []
    for flag in OVERRIDES:
        value = getattr(args, flag)
        if value is not None:
            parts += [f"--{flag}", *map(str, value if isinstance(value, list) else [value])]
    return " ".join(parts)


def run(name: str, args) -> Dict:
    """One benchmark with ``args``' overrides of its defaults; its result."""
    from importlib import import_module

    device = torch.device(args.device)
    mode = "quick" if args.quick else "default"
    config = settings(name, mode, device)
    for key in OVERRIDES:
        if getattr(args, key) is not None and key in config:
            config[key] = getattr(args, key)
    if "P" in config:
        config["P"] = [int(p) for p in config["P"]]
    if name != "analysis":
        config["rates"] = DEFAULTS[mode]["rates"]
    t0 = time.perf_counter()
    result = dict(benchmark=name, command=command_line(args))
    result.update(import_module(f".{name}", __name__).run(device, config))
    result["wall_s"] = time.perf_counter() - t0
    result["machine"]["load_1min_at_end"] = load()
    return result


def main(argv=None, prog=None) -> int:
    args = parse_args(argv, prog)
    for name in args.only:
        result = run(name, args)
        if args.out:  # named by where it ran: the analysis runs on the host whatever --device says
            path = os.path.join(args.out, f"{name}_{result['machine']['device_type']}.json")
            write_result(path, result)
            print(f"wrote {path} ({result['wall_s']:.0f} s)\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
