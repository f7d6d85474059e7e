"""Time the drop-in ``sef.gram(x)`` against ``x @ x.T`` of the same dtype on
the CPU: milliseconds (median), GB/s of the bytes read (``W * P * itemsize``)
and their fraction of the measured copy bandwidth, the Gram's fused
multiply-adds per second (``W (W + 1) / 2 * P``, the products the symmetric
result needs) and their fraction of the measured fp32 FMA rate, and the
relative error of both against float64 (Frobenius norm). The FMA rate is that
of torch's fp32 matrix product on this machine: ``n**3 / t`` for
``torch.mm`` of two n x n matrices (n = 2048, median of 5). Writes JSON with
the device, commit and load to benchmarks/results/dropin_cpu.json. Times are
medians of --repeats calls (of 3 for calls over 2 s).

    python benchmarks/bench_dropin.py                 # W 2..128, P 1e6 1e7, and W=16 P=4e7
    python benchmarks/bench_dropin.py --W 16 --P 1e6  # one case
"""
import argparse
import json
import os
import statistics
import sys

import torch

import spectral_edge_fast as sef
from spectral_edge_fast.bench import DTYPES, copy_bandwidth, device_name, git_commit, time_fn
from spectral_edge_fast.cli import at_least

CPU = torch.device("cpu")


def fma_rate(n: int = 2048, repeats: int = 5) -> float:
    """fp32 multiply-adds per second of torch.mm on n x n matrices."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    return n**3 / statistics.median(time_fn(lambda: torch.mm(a, b), CPU, repeats, warmup=2))


def reference(x: torch.Tensor, block: int = 1 << 20) -> torch.Tensor:
    """x x^T in float64, a block of columns at a time (bounded memory)."""
    out = torch.zeros(x.shape[0], x.shape[0], dtype=torch.float64)
    for s in range(0, x.shape[1], block):
        b = x[:, s : s + block].double()
        out += b @ b.T
    return out


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float(torch.linalg.norm(got.double() - want) / torch.linalg.norm(want))


def bench(W: int, P: int, dtype: str, repeats: int, bandwidth: float, fmas: float):
    x = torch.randn(W, P, generator=torch.Generator().manual_seed(W * 7 + P)).to(DTYPES[dtype])
    want = reference(x)
    rows = []
    for name, fn in (("sef.gram", lambda: sef.gram(x, backend="cpp")), ("x @ x.T", lambda: x @ x.T)):
        got = fn()  # warm-up, and the result whose error is reported
        slow = time_fn(fn, CPU, 1, warmup=0)[0] > 2.0  # calls over 2 s: median of 3
        t = statistics.median(time_fn(fn, CPU, min(repeats, 3) if slow else repeats, warmup=0))
        read = W * P * x.element_size() / t
        flops = W * (W + 1) / 2 * P / t
        rows.append(dict(
            op=name, W=W, P=P, dtype=dtype, ms=t * 1e3, read_gbps=read / 1e9, copy_fraction=read / bandwidth,
            gfma_per_s=flops / 1e9, fma_fraction=flops / fmas, rel_error=rel_error(got, want),
        ))
    rows[0]["speedup"] = rows[1]["ms"] / rows[0]["ms"]
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="sef.gram(x) against x @ x.T on the CPU.")
    ap.add_argument("--W", type=at_least(1), nargs="+", default=[2, 4, 8, 16, 32, 64, 128])
    ap.add_argument("--P", type=at_least(1), nargs="+", default=[int(1e6), int(1e7)])
    ap.add_argument("--extra", action=argparse.BooleanOptionalAction, default=True, help="also W=16, P=4e7")
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    ap.add_argument("--repeats", type=at_least(1), default=5)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "dropin_cpu.json"))
    args = ap.parse_args(argv)
    bandwidth, fmas = copy_bandwidth(CPU), fma_rate()
    load = os.getloadavg()[0]
    print(f"device: {device_name(CPU)}, {torch.get_num_threads()} threads; copy bandwidth {bandwidth / 1e9:.1f} GB/s; "
          f"fp32 FMA rate (torch.mm 2048^2) {fmas / 1e9:.1f} G/s; 1-minute load {load:.2f}", flush=True)
    cases = [(W, P) for P in args.P for W in args.W] + ([(16, int(4e7))] if args.extra else [])
    print(f"{'op':9} {'dtype':5} {'W':>4} {'P':>9} {'ms':>9} {'GB/s':>6} {'copy':>5} {'GFMA/s':>7} {'fma':>5} {'rel err':>8} speedup")
    rows = []
    for W, P in cases:
        for dtype in args.dtypes:
            for r in bench(W, P, dtype, args.repeats, bandwidth, fmas):
                print(f"{r['op']:9} {dtype:5} {W:>4} {P:>9.0e} {r['ms']:>9.1f} {r['read_gbps']:>6.2f} {r['copy_fraction']:>5.0%} "
                      f"{r['gfma_per_s']:>7.1f} {r['fma_fraction']:>5.0%} {r['rel_error']:>8.1e} "
                      f"{r.get('speedup', float('nan')):.2f}", flush=True)
                rows.append(r)
    result = dict(
        device=device_name(CPU), commit=git_commit(), torch=torch.__version__, threads=torch.get_num_threads(),
        copy_bandwidth_gbps=bandwidth / 1e9, fma_rate_gfma_per_s=fmas / 1e9, fma_rate_how="torch.mm of two 2048 x 2048 fp32 matrices, median of 5",
        load_1min_at_start=load, load_1min_at_end=os.getloadavg()[0], results=rows,
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
