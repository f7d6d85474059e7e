"""Sketch mode at scale: P = 1e9 float32 parameters (4 GB, a list of 100
tensors) tracked at W = 64, whose exact ring would need 256 GB; on a GPU,
a 7B-parameter list on one card (``--device cuda --P 7e9``).

For one group and for ten (blocks of ten tensors): ms per step, bytes the
window holds, the parameters' read rate (P * 4 bytes a step) in GB/s and as
a fraction of the machine's copy bandwidth (spectral_edge_fast.bench). On a
shared machine wall time measures the other processes too, so the CPU time
of this process (all its threads) is reported beside it, for the step and
for the copy: ``cpu_fraction_of_copy`` compares the two per CPU-second.

    nice -n 10 python benchmarks/sketch_scale.py [--threads N] [--P 1e9]
    python benchmarks/sketch_scale.py --device cuda --P 7e9 [--dtype bf16] \
        --out benchmarks/results/sketch_scale_cuda.json

writes benchmarks/results/sketch_scale.json. On a GPU the CPU-time
columns are left out: the work is the device's.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from spectral_edge_fast import GramWindow
from spectral_edge_fast.bench import copy_bandwidth, machine, timed
from spectral_edge_fast.config import SKETCH_M
from spectral_edge_fast.window import window_bytes

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--P", type=float, default=1e9)
    ap.add_argument("--tensors", type=int, default=100)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--sketch", type=int, default=SKETCH_M)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="the parameters' type")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "sketch_scale.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    on_cpu = device.type == "cpu"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    n = int(args.P) // args.tensors
    t0 = time.perf_counter()
    params = []
    for i in range(args.tensors):
        t = torch.empty(n, device=device, dtype=dtype)
        t.uniform_(-1, 1)
        params.append((f"blocks.{i // 10}.t{i % 10}", t))
    P = n * args.tensors
    bandwidth = copy_bandwidth(device)
    copy_cpu = None
    if on_cpu:
        src = torch.ones(1 << 27)
        dst = torch.empty_like(src)
        dst.copy_(src)  # its pages mapped: the first write's page faults are not the copy's
        c0 = time.process_time()
        for _ in range(5):
            dst.copy_(src)
        copy_cpu = 2 * src.numel() * 4 * 5 / (time.process_time() - c0)  # bytes read + written per CPU-second
        del src, dst
    param_bytes = P * dtype.itemsize
    result = {"benchmark": "sketch_scale", "command": " ".join(["python", *sys.argv]),
              "machine": {**machine(device), "copy_bandwidth_gbps": bandwidth / 1e9,
                          **({"copy_cpu_gbps": copy_cpu / 1e9} if on_cpu else {})},
              "P": P, "tensors": args.tensors, "dtype": args.dtype,
              "window": args.window, "sketch": args.sketch, "param_bytes": param_bytes,
              "exact_bytes": sum(window_bytes(P, 1, args.window, torch.float32, torch.float32).values()),
              "results": []}
    for groups, label in ((None, "one group"), ("auto", "ten groups")):
        win = GramWindow(params, window=args.window, sketch=args.sketch, groups=groups)

        def step():
            params[0][1][:1].add_(1e-3)  # a changing parameter: the updates are not all zero
            win.step()

        c0 = time.process_time()
        t = timed(step, device, args.repeats)
        cpu_s = (time.process_time() - c0) / (t["repeats"] + 1)  # the warm-up call included
        rate = param_bytes / (t["ms"] / 1e3)
        row = {"groups": label, "G": len(win.groups), "ms": t["ms"], "ms_min": t["ms_min"],
               "repeats": t["repeats"], "bytes_held": win.memory_bytes(),
               "read_gbps": rate / 1e9, "fraction_of_copy": rate / bandwidth}
        if on_cpu:
            row.update(cpu_ms=cpu_s * 1e3, cpu_fraction_of_copy=param_bytes / cpu_s / copy_cpu)
        result["results"].append(row)
        print(json.dumps(result["results"][-1]))
        del win
    result["wall_s"] = time.perf_counter() - t0
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(f"copy bandwidth {bandwidth / 1e9:.3g} GB/s; exact window would need {result['exact_bytes'] / 1e9:.3g} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
