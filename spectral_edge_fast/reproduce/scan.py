"""Section 27 on SCAN: grokking with weight decay and without, the gap
``sigma_1/sigma_2`` of the query projection ``W_Q`` at and after grokking,
and the update Gram's gap events against grokking (docs/reproduction.md#scan).

The paper trains a 6-layer encoder-decoder (~1.5M parameters) on SCAN with
weight decay (3 seeds: 42, 137, 2024) and without, and reports grokking at
steps 2500-4000 in all three decayed runs and none of the others, ``W_Q``'s
``sigma_1/sigma_2`` of 1.02-1.11 at the grokking step and 6.3-12.4 after.
The data are made from SCAN's grammar (:mod:`spectral_edge_fast.workloads.scan`),
split at random 80/20. Modes: ``--quick`` a tiny model on 2,000 commands;
the default a reduced model (``d = 64``, 2 + 2 layers, ~240K parameters, one
seed) that fits a 2-core CPU; ``--full`` the paper's size (``d = 128``,
3 + 3 layers, ~1.4M parameters) and seeds, which wants a GPU.
"""
from __future__ import annotations

import os

from .common import Settings
from .dyck import WEIGHT_DECAYS, records, section27, summarize

SUMMARY = "Section 27, SCAN: grokking with weight decay vs none; W_Q's sigma_1/sigma_2 at and after grokking"

#: the paper's Section 27 rows for SCAN (weight decay on): seed -> (grok step, W_Q ratio at grokking, after)
PAPER = {42: (3000, 1.05, 12.4), 137: (4000, 1.11, 8.7), 2024: (2500, 1.02, 6.3)}
#: model sizes per mode: quick (a smoke run), default (fits the CPU budget), full (the paper's)
SIZES = {
    "quick": dict(d_model=32, n_heads=2, n_encoder=1, n_decoder=1, d_ff=64, limit=2000, eval_size=200),
    "default": dict(d_model=64, n_heads=4, n_encoder=2, n_decoder=2, d_ff=256, eval_size=300),
    "full": dict(d_model=128, n_heads=4, n_encoder=3, n_decoder=3, d_ff=512, eval_size=0),
}


def run(settings: Settings) -> dict:
    from ..report import render
    from ..workloads.scan import ScanConfig, ScanRun

    seeds = settings.seeds_or([42], [42], [42, 137, 2024])
    steps = settings.pick(100, 500, 8000)
    eval_every = settings.pick(25, 50, 100)
    window = 5  # Section 27's window for SCAN
    size = SIZES[settings.mode]
    rows, probe = [], "encoder.layers.0.self_attn"
    for seed in seeds:
        for wd in WEIGHT_DECAYS:
            config = ScanConfig(weight_decay=wd, seed=seed, device=settings.device, **size)
            result = records(ScanRun, config, steps, os.path.join(settings.out, f"scan-seed{seed}-wd{wd:g}"),
                             window=window, every=eval_every, eval_every=eval_every, progress=settings.progress,
                             task="scan", seed=seed, weight_decay=wd)
            rows.append(summarize(result, "SCAN", seed, wd, probe))
    render(settings.out)
    claims, tables = section27("SCAN", rows, PAPER, "6.3-12.4 (about 10x)", 5.0, probe)
    return {
        "config": {"seeds": seeds, "steps": steps, "eval_every": eval_every, "window": window, "every": eval_every,
                   "weight_decays": list(WEIGHT_DECAYS), "probe": probe,
                   "model": ScanConfig(**size).to_dict(), "parameters": rows[0]["parameters"]},
        "claims": claims, "tables": tables, "runs": rows,
        "summary": ("SCAN (simple split: a random 80/20 split of the 20,910 commands) by an encoder-decoder "
                    "transformer" + ("" if settings.mode == "full" else " smaller than the paper's 1.5M parameters")
                    + ", with weight decay 1.0 and without; accuracy is exact match of the greedy decoding. W_Q is "
                    "the query third of the first encoder layer's attention projection, its sigma_1/sigma_2 the "
                    "monitor's attention probe at each analysis; the update Gram is the monitor's window of "
                    f"{window} updates over {eval_every} steps each."),
    }
