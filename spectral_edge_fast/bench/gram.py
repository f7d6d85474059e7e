"""The drop-in ``sef.gram(x)`` against ``x @ x.T`` of the same dtype: the
median time, the GB/s of the bytes read (``W * P * itemsize``) and their
fraction of the measured copy bandwidth, the GFLOP/s of the products the
symmetric result needs (``2 * W (W + 1) / 2 * P``, the same count for both)
and their fraction of the measured fp32 rate of ``torch.mm``, the speedup of
``sef.gram`` over ``x @ x.T``, and the relative error of both against
float64 (Frobenius norm)."""
from __future__ import annotations

from typing import Dict, List

import torch

from . import DTYPES, cache_note, copy_bandwidth, fits, machine, timed


def reference(x: torch.Tensor, block: int = 1 << 20) -> torch.Tensor:
    """x x^T in float64, a block of columns at a time (bounded memory)."""
    out = torch.zeros(x.shape[0], x.shape[0], dtype=torch.float64, device=x.device)
    for s in range(0, x.shape[1], block):
        b = x[:, s : s + block].double()
        out += b @ b.T
    return out


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float(torch.linalg.norm(got.double() - want) / torch.linalg.norm(want))


def bench_case(W: int, P: int, dtype: str, device: torch.device, repeats: int, info: Dict,
               bandwidth: float) -> List[Dict]:
    """A row per op of :func:`_ops`, ``sef.gram`` first (or one ``skipped``
    row each when x and its float64 blocks do not fit in free memory);
    ``bandwidth``: the copy bandwidth (bytes/s) measured beside the case."""
    base = dict(W=W, P=P, dtype=dtype)
    item = DTYPES[dtype].itemsize
    why = fits(device, W * P * item + W * min(P, 1 << 20) * 8 * 2)
    if why:
        return [dict(base, op=op, skipped=why) for op, _ in _ops(torch.empty(0, dtype=DTYPES[dtype], device=device), device)]
    gen = torch.Generator(device=device).manual_seed(W * 7 + P)
    x = torch.empty(W, P, dtype=DTYPES[dtype], device=device)
    for i in range(W):  # row by row: no float32 copy of a bf16 x
        x[i].copy_(torch.randn(P, generator=gen, device=device))
    want = reference(x)
    nbytes, flops = W * P * item, W * (W + 1) * P
    rows = []
    for op, fn in _ops(x, device):
        try:
            r = dict(base, op=op, **timed(fn, device, repeats))
        except RuntimeError as exc:  # a kernel's limit (the CUDA Gram's rows): the row says so
            rows.append(dict(base, op=op, skipped=str(exc).splitlines()[0]))
            continue
        r.update(gbps=nbytes / r["ms"] / 1e6, copy_gbps=bandwidth / 1e9, copy_fraction=nbytes / r["ms"] * 1e3 / bandwidth,
                 gflops=flops / r["ms"] / 1e6, fma_fraction=flops / r["ms"] / 1e6 / info["fma_rate_gflops"],
                 rel_error=rel_error(fn(), want))
        note = cache_note(nbytes, r["copy_fraction"], info["last_level_cache_bytes"])
        if note:
            r["cache_note"] = note
        rows.append(r)
    torch_ms = next(r["ms"] for r in rows if r["op"] == "x @ x.T")
    for r in rows:
        if r["op"].startswith("sef.gram") and "ms" in r:
            r["speedup"] = torch_ms / r["ms"]
    return rows


def _ops(x: torch.Tensor, device: torch.device):
    """What is timed: ``sef.gram`` then ``x @ x.T``; on a GPU each compiled
    backend of ``sef.gram``, and for float32 also cuBLAS with TF32 on (its
    products rounded to 10-bit mantissas: faster, less accurate)."""
    from .. import gram
    from ..kernels import backend_status

    if device.type != "cuda":
        return [("sef.gram", lambda: gram(x)), ("x @ x.T", lambda: x @ x.T)]
    ops = [(f"sef.gram {b}", lambda b=b: gram(x, b)) for b in ("cuda", "triton") if backend_status(b, device)[0]]
    ops.append(("x @ x.T", lambda: _matmul(x, tf32=False)))
    if x.dtype == torch.float32:
        ops.append(("x @ x.T tf32", lambda: _matmul(x, tf32=True)))
    return ops


def _matmul(x: torch.Tensor, tf32: bool) -> torch.Tensor:
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        return x @ x.T
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def run(device: torch.device, config: Dict) -> Dict:
    info = machine(device, config["rates"])
    print(f"gram: {info['device']}, {info['threads']} threads; copy bandwidth {info['copy_bandwidth_gbps']:.1f} GB/s; "
          f"fp32 rate (torch.mm {config['rates']['fma_n']}^2) {info['fma_rate_gflops']:.1f} GFLOP/s; "
          f"1-minute load {info['load_1min']}; the copy measured again before each case", flush=True)
    print(f"{'op':15} {'dtype':5} {'W':>4} {'P':>9} {'ms':>9} {'GB/s':>6} {'copy':>5} {'GFLOP/s':>8} {'fma':>5} "
          f"{'rel err':>8} speedup")
    rows = []
    for P in config["P"]:
        for W in config["W"]:
            for dtype in config["dtypes"]:
                bandwidth = copy_bandwidth(device, config["rates"]["copy_bytes"])  # beside the case, as the step's
                for r in bench_case(W, P, dtype, device, config["repeats"], info, bandwidth):
                    if "skipped" in r:
                        print(f"{r['op']:15} {dtype:5} {W:>4} {P:>9.0e} skipped: {r['skipped']}")
                    else:
                        print(f"{r['op']:15} {dtype:5} {W:>4} {P:>9.0e} {r['ms']:>9.2f} {r['gbps']:>6.2f} "
                              f"{r['copy_fraction']:>5.0%} {r['gflops']:>8.1f} {r['fma_fraction']:>5.0%} "
                              f"{r['rel_error']:>8.1e} {r.get('speedup', float('nan')):.2f}", flush=True)
                    rows.append(r)
    return dict(machine=info, settings=config, results=rows)
