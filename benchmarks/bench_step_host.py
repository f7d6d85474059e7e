"""Host-side bookkeeping of one window step for GPT-2's 148 parameter tensors.

A module with GPT-2 124M's names and tree (wte, wpe, 12 blocks of ln_1,
attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj, then ln_f) but tiny
tensors, so that the device work is negligible and what is timed is Python
and dispatch on the host. Two timings, each the median of many single calls:

* ``views``: ``window.layout.views()``, the per-step check that the tracked
  parameters are still the ones the flat layout describes, and their views;
* ``step``: a whole ``GramWindow.step()`` on the CPU with the ``cpp`` backend
  (``torch`` when the extension is not built), i.e. ``views`` plus the
  kernel call on 148 tiny tensors.

    python benchmarks/bench_step_host.py [--calls 3000] [--out PATH]

Prints microseconds per call and writes JSON with the device and commit to
benchmarks/results/step_host_cpu.json.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
from torch import nn

from spectral_edge_fast import GramWindow, backends
from spectral_edge_fast.bench import device_name, git_commit

D = 4  # width of the tiny model


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(D)
        self.attn = nn.Module()
        self.attn.c_attn, self.attn.c_proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.ln_2 = nn.LayerNorm(D)
        self.mlp = nn.Module()
        self.mlp.c_fc, self.mlp.c_proj = nn.Linear(D, 4 * D), nn.Linear(4 * D, D)


def tiny_gpt2() -> nn.Module:
    model = nn.Module()
    model.wte, model.wpe = nn.Embedding(64, D), nn.Embedding(16, D)
    model.h = nn.ModuleList(Block() for _ in range(12))
    model.ln_f = nn.LayerNorm(D)
    return model


def per_call_us(fn, calls: int) -> list:
    for _ in range(50):
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t0) / 1e3)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument(
        "--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "step_host_cpu.json")
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = tiny_gpt2()
    n_tensors = sum(1 for _ in model.parameters())
    backend = "cpp" if backends()["cpp"][0] else "torch"
    win = GramWindow(model, window=16, backend=backend)
    rows = []
    for what, fn in (("views", win.layout.views), ("step", win.step)):
        times = per_call_us(fn, args.calls)
        row = dict(what=what, tensors=n_tensors, backend=backend, calls=args.calls,
                   us_median=statistics.median(times), us_min=min(times))
        rows.append(row)
        print(f"{what:6s} {n_tensors} tensors ({backend}): {row['us_median']:.1f} us/call median, {row['us_min']:.1f} min")
    result = dict(device=device_name(torch.device("cpu")), device_type="cpu", commit=git_commit(),
                  torch=torch.__version__, python=sys.version.split()[0], rows=rows)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
