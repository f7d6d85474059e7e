"""The engine's step: one slide of the rolling-window Gram, timed for the
naive torch code a user writes today, the incremental torch backend and each
compiled backend, against the bytes that must move; the sketched window's
step where ``GramWindow`` takes ``sketch=m``; and the host's part of a whole
``GramWindow.step()``.

Bytes that must move for one fused step (gather + slide): read the
parameters, read and write the snapshot, read the W ring rows (the leaving
row included) and write the new row:
``P * (param_bytes + 2 * snapshot_bytes + (W + 1) * storage_bytes)``,
i.e. ``(W + 4) * P * 4`` when everything is float32. A sketched step must
read the parameters only (its snapshot and ring are m numbers a group).
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Dict, List, Optional

import torch
from torch import nn

from . import DTYPES, cache_note, copy_bandwidth, fits, machine, timed
from ..kernels import backend_status, get_backend
from ..kernels.torch_ops import naive_gram_step


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


def fitting_sizes(candidates: List[int], W: int, free: Optional[int]) -> List[int]:
    """The sizes ``P`` whose benchmark fits in half the free memory: the naive
    baseline keeps ``W`` rows and a concatenated copy, the backends a ring of
    ``W`` rows and a snapshot: about ``(2 W + 6) * P * 4`` bytes at once. When
    none fits, the largest that does."""
    if free is None:
        return candidates
    per_number = (2 * W + 6) * 4
    fit = [P for P in candidates if P * per_number <= free // 2]
    return fit or [int(free // 2 // per_number)]


def step_bytes(P: int, W: int, param_bytes: int, storage_bytes: int, snapshot_bytes: int = 4) -> int:
    return P * (param_bytes + 2 * snapshot_bytes + (W + 1) * storage_bytes)


def sketch_available() -> bool:
    """Whether this version's ``GramWindow`` takes ``sketch=m``."""
    from ..config import WindowOptions

    return "sketch" in {f.name for f in dataclasses.fields(WindowOptions)}


def bench_case(P: int, W: int, sizes: List[int], storage: str, device: torch.device, backends: List[str],
               repeats: int, bandwidth: float, sketch: Optional[int] = None, naive: bool = True) -> List[Dict]:
    """Time one slide per backend at these sizes; one result row each. A
    case that would not fit in free memory gets a row with ``skipped`` (its
    reason) instead of a time."""
    # Random data drawn on the device itself: at P = 5e8 a CPU generator
    # would take minutes per ring.
    gen = torch.Generator(device=device).manual_seed(0)
    params = [torch.randn(n, generator=gen, device=device) for n in sizes]
    bounds = (0, P)
    rows = []
    item = DTYPES[storage].itemsize
    base = dict(P=P, W=W, tensors=len(sizes), storage=storage)

    def record(name, fn, nbytes, reps, **extra):
        r = dict(base, backend=name, bytes=nbytes, **extra, **timed(fn, device, reps))
        r["gbps"] = nbytes / r["ms"] / 1e6
        r["copy_gbps"] = bandwidth / 1e9
        r["bandwidth_fraction"] = nbytes / r["ms"] * 1e3 / bandwidth
        rows.append(r)

    def room(name, nbytes):
        why = fits(device, nbytes)
        if why:
            rows.append(dict(base, backend=name, skipped=why))
        return why is None

    moved = step_bytes(P, W, 4, item)
    # naive: the history's W rows, the stacked copy of them, theta and a difference
    if naive and storage == "fp32" and room("naive_torch", (2 * W + 3) * P * 4):
        history: List[torch.Tensor] = []
        snap = [torch.cat([p.reshape(-1) for p in params])]
        for _ in range(W):  # a full window, as in steady state
            snap[0] = naive_gram_step(history, params, snap[0], W)

        def naive_step():
            snap[0] = naive_gram_step(history, params, snap[0], W)

        record("naive_torch", naive_step, moved, max(2, repeats // 3))
        del history, snap
    for name in backends:
        label = "torch_incremental" if name == "torch" else name
        ok, _ = backend_status(name, device)
        if not ok or not room(label, W * P * item + 2 * P * 4):
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

        record(label, step, moved, repeats)
        del ring, snapshot
        if sketch is not None:
            from ..window import GramWindow

            win = GramWindow(params, window=W, groups=None, storage_dtype=DTYPES[storage], backend=name,
                             sketch=sketch)
            for _ in range(W):  # a full window
                win.step()
            record(f"{name} sketch", win.step, P * 4, repeats, sketch=sketch)
            del win
    return rows


class _Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = nn.Module()
        self.attn.c_attn, self.attn.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.Module()
        self.mlp.c_fc, self.mlp.c_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)


def tiny_gpt2(d: int = 4) -> nn.Module:
    """GPT-2 124M's module tree and 148 parameter names (wte, wpe, 12 blocks,
    ln_f) with tensors of width ``d``."""
    model = nn.Module()
    model.wte, model.wpe = nn.Embedding(64, d), nn.Embedding(16, d)
    model.h = nn.ModuleList(_Block(d) for _ in range(12))
    model.ln_f = nn.LayerNorm(d)
    return model


def host_rows(calls: int) -> List[Dict]:
    """The host's part of a step: GPT-2's tree with tiny tensors on the CPU,
    so that Python and dispatch are what is timed. ``views``: the per-step
    check that the parameters are still those the layout describes, and
    their views; ``step``: a whole ``GramWindow.step()`` (``views`` plus the
    kernel call on 148 tiny tensors), ``cpp`` where built. Microseconds,
    median of ``calls`` single calls after 50 untimed ones."""
    from .. import GramWindow, backends

    model = tiny_gpt2()
    backend = "cpp" if backends()["cpp"][0] else "torch"
    win = GramWindow(model, window=16, backend=backend)
    rows = []
    for what, fn in (("views", win.layout.views), ("step", win.step)):
        for _ in range(50):
            fn()
        times = []
        for _ in range(calls):
            t0 = time.perf_counter_ns()
            fn()
            times.append((time.perf_counter_ns() - t0) / 1e3)
        rows.append(dict(what=what, tensors=sum(1 for _ in model.parameters()), backend=backend, calls=calls,
                         us_median=statistics.median(times), us_min=min(times)))
    return rows


def format_table(rows: List[Dict], header: bool = True) -> str:
    """The rows as a table; a rate marked ``*`` is not memory's (its note says why)."""
    head = (f"{'backend':<18} {'P':>10} {'W':>3} {'tensors':>7} {'storage':>7} {'ms':>9} {'GB/s':>7} "
            f"{'of copy bw':>10} {'vs naive':>8}")
    lines = [head, "-" * len(head)] if header else []
    naive = {(r["P"], r["W"], r["tensors"]): r["ms"] for r in rows if r["backend"] == "naive_torch" and "ms" in r}
    for r in rows:
        start = f"{r['backend']:<18} {r['P']:>10.3g} {r['W']:>3} {r['tensors']:>7} {r['storage']:>7}"
        if "skipped" in r:
            lines.append(f"{start}   skipped: {r['skipped']}")
            continue
        base = naive.get((r["P"], r["W"], r["tensors"]))
        speedup = f"{base / r['ms']:.1f}x" if base else "-"
        lines.append(f"{start} {r['ms']:>9.2f} {r['gbps']:>7.2f} {100 * r['bandwidth_fraction']:>9.0f}%"
                     f"{'*' if 'cache_note' in r else ' '}{speedup:>8}")
    return "\n".join(lines)


def run(device: torch.device, config: Dict) -> Dict:
    from ..window import free_bytes

    info = machine(device, config["rates"])
    print(f"step: {info['device']}; copy bandwidth {info['copy_bandwidth_gbps']:.1f} GB/s (and again before each "
          "case: its fraction is of that)", flush=True)
    Ps = fitting_sizes(config["P"], max(config["W"]), free_bytes(device))
    layouts = [(P, split_sizes(P, config["tensors"])) for P in Ps]
    if config["gpt2"]:
        sizes = gpt2_124m_sizes()
        layouts.append((sum(sizes), sizes))
    sketch = config["sketch"] if sketch_available() else None
    status = {b: backend_status(b, device) for b in config["backends"]}
    for name, (ok, why) in status.items():
        if not ok:
            print(f"step: backend {name} not timed: {why}", flush=True)
    rows: List[Dict] = []
    for P, sizes in layouts:
        for W in config["W"]:
            for storage in config["dtypes"]:
                # the copy measured beside the case: other load and the machine's state move both alike
                bandwidth = copy_bandwidth(device, config["rates"]["copy_bytes"])
                case = bench_case(P, W, sizes, storage, device, config["backends"], config["repeats"], bandwidth,
                                  sketch)
                for r in case:
                    note = "ms" in r and cache_note(r["bytes"], r["bandwidth_fraction"], info["last_level_cache_bytes"])
                    if note:
                        r["cache_note"] = note
                print(format_table(case, header=not rows), flush=True)  # rows as they come, one header
                rows += case
    for note in sorted({r["cache_note"] for r in rows if "cache_note" in r}):
        print(f"* {note}: the rate is not memory's; a larger P measures memory")
    host = host_rows(config["host_calls"])
    for r in host:
        print(f"host: {r['what']:5s} {r['tensors']} tensors ({r['backend']}): {r['us_median']:.1f} us/call median")
    config = dict(config, P=Ps, sketch=sketch)
    return dict(machine=info, settings=config, results=rows, host=host,
                backends={name: why or "available" for name, (ok, why) in status.items()})
