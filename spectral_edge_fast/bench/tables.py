"""Tables from the benchmark results: benchmarks/RESULTS.md (every row of
every ``benchmarks/results/*.json``) and the README's benchmark tables (a
selection), so that every figure quoted traces back to a JSON file and the
command that wrote it.

The README's tables sit between marker lines, one block per table::

    <!-- bench: step_cpu (generated from benchmarks/results by `python benchmarks/results_table.py`) -->
    ...
    <!-- /bench: step_cpu -->

and :func:`update_readme` rewrites what lies between them.
"""
from __future__ import annotations

import json
import os
import re
from typing import Callable, Dict, List, Optional

from .step import gpt2_124m_sizes

GENERATOR = "python benchmarks/results_table.py"
BLOCK = re.compile(r"(<!-- bench: (\w+) [^\n]*-->\n)(.*?)(<!-- /bench: \2 -->)", re.S)


def load(results_dir: str, name: str) -> Optional[Dict]:
    path = os.path.join(results_dir, f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _commit(m: Dict) -> str:
    return (m.get("commit") or "?")[:10]


def machine_line(d: Dict) -> str:
    """The command, and what the figures depend on."""
    m = d["machine"]
    parts = [f"`{d['command']}`", f"commit `{_commit(m)}`"]
    if m.get("date"):
        parts.append(m["date"])
    parts.append(m["device"] + (f", {m['threads']} threads" if m.get("threads") else ""))
    if m.get("copy_bandwidth_gbps"):
        parts.append(f"copy bandwidth {m['copy_bandwidth_gbps']:.1f} GB/s")
    if m.get("fma_rate_gflops"):
        parts.append(f"fp32 `torch.mm` {m['fma_rate_gflops']:.0f} GFLOP/s")
    if m.get("load_1min") is not None:
        end = m.get("load_1min_at_end")
        parts.append(f"1-minute load {m['load_1min']:.1f}" + (f" to {end:.1f}" if end is not None else ""))
    versions = [f"{k} {m[k]}" for k in ("torch", "cuda", "triton", "numpy") if m.get(k)]
    if versions:
        parts.append(", ".join(versions))
    if d.get("wall_s") is not None:
        parts.append(f"{d['wall_s'] / 60:.1f} min")
    return "; ".join(parts) + "."


def _md(columns: List[str], rows: List[List[str]], right: Optional[List[bool]] = None) -> List[str]:
    right = right or [i > 0 for i in range(len(columns))]
    return (["| " + " | ".join(columns) + " |", "|" + "|".join("---:" if r else "---" for r in right) + "|"]
            + ["| " + " | ".join(row) + " |" for row in rows])


def _notes(rows: List[Dict], key: Callable[[Dict], str]) -> List[str]:
    """A blank line and one line per case whose rates are marked ``*``; nothing when none is."""
    notes = {}
    for r in rows:
        if "cache_note" in r:
            notes.setdefault(key(r), r["cache_note"])
    return [""] + [f"\\* {k}: {note}; a larger P measures memory." for k, note in notes.items()] if notes else []


def _rate(x: float) -> str:
    """GB/s or GFLOP/s: three digits, no exponent."""
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


# -- step --------------------------------------------------------------------------------------------------------


def _copy(d: Dict, r: Dict) -> str:
    """The copy bandwidth a row's fraction is of: measured beside its case,
    or (results from before that) the run's one measurement."""
    return _rate(r.get("copy_gbps") or d["machine"]["copy_bandwidth_gbps"])


def step_rows(d: Dict, keep: Callable[[Dict], bool] = lambda r: True) -> List[str]:
    rows = [r for r in d["results"] if keep(r)]
    naive = {(r["P"], r["W"], r["tensors"]): r["ms"] for r in d["results"] if r["backend"] == "naive_torch" and "ms" in r}
    out = []
    for r in rows:
        name = r["backend"] + (f" (m = {r['sketch']})" if "sketch" in r else "")
        head = [name, f"{r['P']:.3g}", str(r["W"]), str(r["tensors"]), r["storage"]]
        if "skipped" in r:
            out.append(head + [f"skipped: {r['skipped']}", "", "", "", ""])
            continue
        base = naive.get((r["P"], r["W"], r["tensors"]))
        star = "\\*" if "cache_note" in r else ""
        out.append(head + [f"{r['ms']:.2f}", _rate(r["gbps"]), _copy(d, r), f"{100 * r['bandwidth_fraction']:.0f}%{star}",
                           f"{base / r['ms']:.1f}×" if base else "-"])
    table = _md(["backend", "P", "W", "tensors", "ring", "ms", "GB/s", "copy GB/s", "of copy", "vs naive"], out,
                [False, True, True, True, False, True, True, True, True, True])
    return table + _notes(rows, lambda r: f"P = {r['P']:.3g}, W = {r['W']}, {r['storage']}")


def host_rows(d: Dict) -> List[str]:
    if not d.get("host"):
        return []
    return _md(["host part of a step (GPT-2's tree, tiny tensors)", "tensors", "backend", "µs median", "µs min"],
               [[r["what"], str(r["tensors"]), r["backend"], f"{r['us_median']:.1f}", f"{r['us_min']:.1f}"]
                for r in d["host"]], [False, True, False, True, True])


def step_section(d: Dict, keep: Callable[[Dict], bool] = lambda r: True) -> List[str]:
    out = [machine_line(d), ""] + step_rows(d, keep)
    host = host_rows(d)
    return out + ([""] + host if host else [])


# -- gram --------------------------------------------------------------------------------------------------------


def gram_rows(d: Dict, keep: Callable[[Dict], bool] = lambda r: True) -> List[str]:
    out = []
    rows = [r for r in d["results"] if keep(r)]
    for r in rows:
        head = [r["op"], r["dtype"], str(r["W"]), f"{r['P']:.0e}"]
        if "skipped" in r:
            out.append(head + [f"skipped: {r['skipped']}"] + [""] * 7)
            continue
        star = "\\*" if "cache_note" in r else ""
        out.append(head + [f"{r['ms']:.2f}", _rate(r["gbps"]), _copy(d, r), f"{100 * r['copy_fraction']:.0f}%{star}",
                           _rate(r["gflops"]), f"{100 * r['fma_fraction']:.0f}%", f"{r['rel_error']:.1e}",
                           f"{r['speedup']:.2f}×" if "speedup" in r else ""])
    table = _md(["op", "dtype", "W", "P", "ms", "GB/s", "copy GB/s", "of copy", "GFLOP/s", "of torch.mm's rate",
                 "error vs float64", "speedup"], out, [False, False] + [True] * 10)
    return table + _notes(rows, lambda r: f"W = {r['W']}, P = {r['P']:.0e}, {r['dtype']}")


def gram_summary(d: Dict, P: int) -> List[str]:
    """One line per W at ``P``: both dtypes' times, speedup and rates side by side."""
    by = {(r["W"], r["dtype"], r["op"]): r for r in d["results"] if r["P"] == P and "ms" in r}
    dtypes = [t for t in ("fp32", "bf16") if any(k[1] == t for k in by)]
    columns = ["W"]
    for t in dtypes:
        columns += [f"{t}: sef.gram ms", "x @ x.T ms", "speedup", "sef.gram of torch.mm's rate"]
    rows = []
    for W in sorted({k[0] for k in by}):
        row = [str(W)]
        for t in dtypes:
            s, x = by.get((W, t, "sef.gram")), by.get((W, t, "x @ x.T"))
            row += ([f"{s['ms']:.2f}", f"{x['ms']:.2f}", f"{s['speedup']:.2f}×", f"{100 * s['fma_fraction']:.0f}%"]
                    if s and x else ["-"] * 4)
        rows.append(row)
    return _md(columns, rows)


# -- analysis ----------------------------------------------------------------------------------------------------


ANALYSIS_README = {
    "per_group": "per-group functions in a Python loop",
    "batched_cold": "`analyze_slides`, both windows eigensolved by LAPACK",
    "streaming": "**`analyze_slides` with an `EigenTracker`, over a stream**",
    "slide_eigen": "`slide_eigen` (the update alone)",
    "batched_given_eigen": "`analyze_slides` given both decompositions",
    "lapack_eigh_batched": "LAPACK `eigh` alone (batched)",
    "lapack_eigvalsh_batched": "LAPACK `eigvalsh` alone (batched)",
    "monitor_consecutive": "a monitor's record, `analyze_every == every` (tracker)",
    "monitor_strided": "a monitor's record, `analyze_every = 10` (LAPACK)",
}


def analysis_rows(d: Dict, names: Optional[Dict[str, str]] = None) -> List[str]:
    by = {r["case"]: r for r in d["results"]}
    cases = list(names) if names else list(by)
    rows = []
    for case in cases:
        r = by[case]
        p90 = f"{r['p90_ms']:.2f}" if "p90_ms" in r else ""
        rows.append([names[case] if names else case, f"{r['ms']:.2f}", f"{r['ms_min']:.2f}", p90])
    s = by["streaming"]
    s_cfg = d["settings"]
    title = f"per slide, {s_cfg['groups']} groups, W = {s_cfg['window']}"
    lines = _md([title, "median ms", "min ms", "p90 ms"], rows)
    return lines + ["", f"Streaming over {s['slides']} slides: {s['group_slides_updated']} group-slides updated, "
                        f"{s['group_slides_eigensolved']} eigensolved; a record of the monitor spends "
                        f"{by['monitor_consecutive']['analyze_ms']:.2f} ms (consecutive) and "
                        f"{by['monitor_strided']['analyze_ms']:.2f} ms (strided) in `analyze`, the rest in its event "
                        f"detection. BLAS threads: {d['machine'].get('blas_threads') or 'the library default'}."]


# -- training overhead (benchmarks/train_overhead.py) -------------------------------------------------------------


def train_section(d: Dict, records: bool = True) -> List[str]:
    a = d["args"]
    out = [f"`python benchmarks/train_overhead.py`: GPT-2 ({d['runs'][0]['params'] / 1e6:.1f}M parameters), "
           f"{a['batch']} × {a['accum']} sequences of {a['seq']} tokens per step, bf16 autocast, AdamW; monitor W = "
           f"{a['window']}, every = 1, analyze_every = {a['analyze_every']}, bf16 ring; {d['device']}; "
           f"commit `{(d.get('commit') or '?')[:10]}`.", ""]
    rows = []
    for r in d["runs"]:
        peak = f"{r['peak_memory_bytes'] / 2**30:.2f}" if r["peak_memory_bytes"] is not None else "-"
        name = f"with monitor ({r.get('backend')})" if r["monitored"] else "without monitor"
        rows.append([name, f"{r['median_ms']:.2f}", f"{r['min_ms']:.2f}", peak])
    out += _md(["run", "median ms / step", "min ms", "peak memory GiB"], rows, [False, True, True, True])
    out += ["", f"Overhead: {d['overhead_percent']:+.2f}%."]
    if records and d["runs"][1].get("records"):
        out += [""] + _md(["step", "k*", "R"], [[str(r["step"]), str(r["k_star"]), f"{r['R']:.2f}" if r["R"] is not None
                                                 else "-"] for r in d["runs"][1]["records"]])
    return out


# -- the pages ---------------------------------------------------------------------------------------------------


def render_results(results_dir: str) -> str:
    """benchmarks/RESULTS.md: every row of every result."""
    lines = ["# Benchmark results", "",
             f"Generated by `{GENERATOR}` from benchmarks/results/*.json; `make bench` reruns the default CPU set "
             "(`spectral-edge bench --out benchmarks/results`), `bash benchmarks/gpu_session.sh` the GPU one. `of copy` "
             "is a row's rate over `copy GB/s`, the copy bandwidth (read + written) measured just before its case, "
             "so that load and the machine's state weigh on both alike. A rate "
             "marked \\* is not memory's (the note under its table says why); a step's `vs naive` is the naive float32 "
             "step's time over the row's. The tracked eigen-update's accuracy "
             "over long streams is a test (tests/analysis/test_tracking.py), not a benchmark.", ""]
    for device in ("cpu", "cuda"):
        d = load(results_dir, f"step_{device}")
        if d:
            lines += [f"## Step on {d['machine']['device']}", ""] + step_section(d) + [""]
    for device in ("cpu", "cuda"):
        d = load(results_dir, f"gram_{device}")
        if d:
            lines += [f"## sef.gram against x @ x.T on {d['machine']['device']}", "", machine_line(d), ""]
            lines += gram_rows(d) + [""]
    d = load(results_dir, "analysis_cpu")
    if d:
        lines += [f"## Analysis on {d['machine']['device']}", "", machine_line(d), ""] + analysis_rows(d) + [""]
    d = load(results_dir, "train_overhead")
    if d:
        lines += [f"## Training overhead on {d['device']}", ""] + train_section(d) + [""]
    return "\n".join(lines)


def readme_blocks(results_dir: str) -> Dict[str, List[str]]:
    """The README's tables by block name (those whose JSON exists)."""
    blocks = {}
    d = load(results_dir, "step_cpu")
    if d:
        blocks["step_cpu"] = step_section(d)
    d = load(results_dir, "step_cuda")
    if d:
        gpt2 = len(gpt2_124m_sizes())
        blocks["step_cuda"] = [machine_line(d), ""] + step_rows(
            d, lambda r: r["W"] == 16 and (r["P"] == int(1e8) or r["tensors"] == gpt2))
    d = load(results_dir, "gram_cpu")
    if d:
        sizes = [r["P"] for r in d["results"]]
        P = max(sizes, key=lambda p: (sizes.count(p), p))  # the largest P with every W
        blocks["gram_cpu"] = [machine_line(d), "", f"P = {P:.0e}:", ""] + gram_summary(d, P)
    d = load(results_dir, "analysis_cpu")
    if d:
        blocks["analysis_cpu"] = [machine_line(d), ""] + analysis_rows(d, ANALYSIS_README)
    d = load(results_dir, "train_overhead")
    if d:
        blocks["train_overhead"] = train_section(d, records=False)
    return blocks


def update_readme(text: str, results_dir: str) -> str:
    """``text`` with every marked block rewritten from ``results_dir``.

    Raises:
        ValueError: a block names no result (its JSON is missing).
    """
    blocks = readme_blocks(results_dir)

    def fill(match):
        name = match.group(2)
        if name not in blocks:
            raise ValueError(f"README block {name!r}: no {name}.json in {results_dir}")
        return match.group(1) + "\n" + "\n".join(blocks[name]) + "\n\n" + match.group(4)

    return BLOCK.sub(fill, text)
