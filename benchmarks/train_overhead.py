"""What the spectral monitor costs a real training run.

GPT-2 124M (transformers' default ``GPT2Config``, random init) trained with
AdamW under bf16 autocast on byte-level tokens of the Python standard
library's own source files (offline, no download), twice from the same seed:
without a monitor, then with ``SpectralMonitor(window=16, every=1,
analyze_every=50, storage_dtype=bfloat16)``. Reports the median optimizer-step
time over the timed steps (CUDA events, one host synchronisation at the end),
the overhead in percent, peak GPU memory with and without, and the k* and R
the monitor logged. Writes JSON with the device and the commit.

    python benchmarks/train_overhead.py                                   # GPU: 124M
    python benchmarks/train_overhead.py --tiny --device cpu --steps 4 --warmup 2 --batch 2 --seq 64 --accum 1
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import sysconfig
import tempfile
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spectral_edge_fast import SpectralMonitor  # noqa: E402
from spectral_edge_fast.bench import device_name, git_commit, write_result  # noqa: E402


def stdlib_bytes(limit: int) -> torch.Tensor:
    """Up to ``limit`` bytes of the standard library's .py files, as tokens 0..255."""
    chunks, total = [], 0
    for path in sorted(pathlib.Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        chunks.append(data)
        total += len(data)
        if total >= limit:
            break
    return torch.frombuffer(bytearray(b"".join(chunks)[:limit]), dtype=torch.uint8).long()


def make_model(tiny: bool):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=128) if tiny else GPT2Config()
    return GPT2LMHeadModel(config)


def run(args, monitored: bool, tokens: torch.Tensor) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = make_model(args.tiny).to(device)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, fused=device.type == "cuda")
    monitor = None
    if monitored:  # no sinks: the records stay in monitor.history, the log folder holds only its metadata
        monitor = SpectralMonitor(model, opt, window=args.window, every=1, analyze_every=args.analyze_every,
                                  storage_dtype=torch.bfloat16, sinks=(), log_dir=args.log_dir)
    gen = torch.Generator().manual_seed(1)
    n_windows = tokens.numel() - args.seq - 1

    def batch():
        starts = torch.randint(0, n_windows, (args.batch,), generator=gen)
        x = torch.stack([tokens[s : s + args.seq] for s in starts.tolist()])
        return x.to(device, non_blocking=True)

    def step():
        for _ in range(args.accum):
            x = batch()
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = model(input_ids=x, labels=x).loss
            (loss / args.accum).backward()
        opt.step()  # the monitor steps in the optimizer's post-step hook
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        marks = [torch.cuda.Event(enable_timing=True) for _ in range(args.steps + 1)]
        marks[0].record()
        for i in range(args.steps):
            step()
            marks[i + 1].record()
        torch.cuda.synchronize()
        times = [a.elapsed_time(b) for a, b in zip(marks[:-1], marks[1:])]
        peak = torch.cuda.max_memory_allocated()
    else:
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            step()
            times.append(1e3 * (time.perf_counter() - t0))
        peak = None
    out = dict(monitored=monitored, params=params, median_ms=statistics.median(times), min_ms=min(times),
               steps=len(times), peak_memory_bytes=peak)
    if monitor is not None:
        monitor.close()
        out["backend"] = monitor.window.backend.name
        out["records"] = [{"step": r["step"], "k_star": r["k_star"], "R": r["R"]} for r in monitor.history]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model, to check the script on a CPU")
    ap.add_argument("--batch", type=int, default=32, help="sequences per micro-batch")
    ap.add_argument("--accum", type=int, default=4, help="micro-batches per optimizer step")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=20, help="untimed steps first (the window fills)")
    ap.add_argument("--steps", type=int, default=100, help="timed optimizer steps per run")
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--analyze-every", type=int, default=50)
    ap.add_argument("--data-mb", type=float, default=32.0, help="megabytes of standard-library source to train on")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_overhead.json"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sef-train-") as args.log_dir:
        return _main(args)


def _main(args) -> int:
    tokens = stdlib_bytes(int(args.data_mb * 2**20))
    print(f"{tokens.numel() / 2**20:.1f} MB of tokens; {args.batch} x {args.accum} sequences of {args.seq} per step", flush=True)
    runs = [run(args, monitored, tokens) for monitored in (False, True)]
    base, mon = runs
    overhead = 100.0 * (mon["median_ms"] / base["median_ms"] - 1.0)
    result = dict(
        benchmark="train_overhead", device=device_name(torch.device(args.device)), commit=git_commit(),
        torch=torch.__version__, cuda=torch.version.cuda,
        args={k: v for k, v in vars(args).items() if k != "log_dir"}, tokens_per_step=args.batch * args.accum * args.seq,
        overhead_percent=overhead, runs=runs,
    )
    for r in runs:
        peak = f"{r['peak_memory_bytes'] / 2**30:.2f} GiB" if r["peak_memory_bytes"] is not None else "-"
        print(f"{'with' if r['monitored'] else 'without':>7} monitor: median {r['median_ms']:.2f} ms/step "
              f"(min {r['min_ms']:.2f}), peak memory {peak}")
    print(f"overhead {overhead:+.2f}% ({mon.get('backend')} backend, {base['params'] / 1e6:.1f}M parameters)")
    for rec in mon.get("records", []):
        print(f"  step {rec['step']:>5}: k* = {rec['k_star']}, R = {rec['R']}")
    write_result(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
