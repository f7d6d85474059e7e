"""Section 27 on Dyck-1: grokking with weight decay and without, the gap
``sigma_1/sigma_2`` of the query projection ``W_Q`` at and after grokking,
and the update Gram's gap events against grokking (docs/reproduction.md#dyck).

The paper trains a 2-layer transformer (~150K parameters) on Dyck-1 with
weight decay (3 seeds: 42, 137, 2024) and without, and reports grokking at
steps 600-1400 in all three decayed runs and none of the others, ``W_Q``'s
``sigma_1/sigma_2`` of 1.09-1.19 at the grokking step and 1756-3187 after.
The task is recognition of balanced strings against unbalanced ones with
no surface cue, by a model whose weights start 4 times larger than PyTorch's,
on 200 training strings (:mod:`spectral_edge_fast.workloads.dyck` says why:
with the usual start every run generalises as soon as it fits, so nothing
groks). Modes: ``--quick`` a smoke run of one seed; the default one seed
(42), each weight decay, long enough for the decayed run to memorise, then
grok (seed 42: at step 2950); ``--full`` the paper's three seeds and a
longer run, so the gap after grokking has time to open.

:func:`records`, :func:`summarize` and :func:`section27` are shared with the
SCAN experiment (:mod:`spectral_edge_fast.reproduce.scan`).
"""
from __future__ import annotations

import os
import shutil
from typing import Dict, List, Optional

import torch

from .common import Settings, claim, table

SUMMARY = "Section 27, Dyck-1: grokking with weight decay vs none; W_Q's sigma_1/sigma_2 at and after grokking"

#: the paper's Section 27 rows for Dyck-1 (weight decay on): seed -> (grok step, W_Q ratio at grokking, after)
PAPER = {42: (600, 1.13, 3187.0), 137: (1400, 1.19, 2841.0), 2024: (1000, 1.09, 1756.0)}
#: the weight decays compared (the paper's "with" and "without")
WEIGHT_DECAYS = (1.0, 0.0)
#: the largest W_Q ratio at the grokking step that counts as the paper's near-degeneracy (its range: 1.02-1.19)
NEAR_DEGENERATE = 1.25
#: analyses with a gap ratio up to a step for an event to be dated at or before it: the initial level, held
#: for the detector's persistence (3, EventStream's), then the first record of a new level
EVENT_RECORDS = 4
#: whole-model update-Gram events compared with the grokking step
GAP_EVENTS = ("gap_collapse", "gap_opening", "k_star_shift")


def train_workload(run, steps: int, out_dir: str, *, name: str, window: int, every: int, eval_every: int,
                   progress: bool = True, **info) -> None:
    """Train ``run`` (a workload run: ``train_step()``, ``evaluate()``,
    ``model``, ``optimizer``, ``config``, ``n_params``) for ``steps`` steps
    with a :class:`SpectralMonitor` (window ``window`` of updates over
    ``every`` steps, analysed every ``every`` steps, every attention
    module's ``W_Q`` probed) writing to ``out_dir``; log the accuracies
    every ``eval_every`` steps (a multiple of ``every``) and at the end."""
    from tqdm.auto import tqdm

    from ..monitor import SpectralMonitor
    from ..workloads.grokking import grok_step

    monitor = SpectralMonitor(run.model, run.optimizer, window=window, every=every, analyze_every=every,
                              sinks=("jsonl", "csv"), log_dir=out_dir, history=None, probes="attention")
    monitor.annotate(name=name, parameters=run.n_params, config=run.config.to_dict(), steps=steps,
                     eval_every=eval_every, **info)
    curve: List[dict] = []
    for _ in tqdm(range(steps), desc=name, unit="step", disable=not progress, dynamic_ncols=True, mininterval=1.0):
        run.train_step()
        if run.step % eval_every == 0 or run.step == steps:
            metrics = run.evaluate()
            monitor.log(metrics, step=run.step)
            curve.append({"step": run.step, **metrics})
    monitor.annotate(milestones={"grokking": grok_step(curve)})
    monitor.close()


def records(make_run, config, steps: int, out_dir: str, *, window: int, every: int, eval_every: int,
            progress: bool = True, **info) -> dict:
    """A run's files (``{"meta", "analysis", "metrics"}``, as
    :func:`~spectral_edge_fast.sinks.read_records` reads them): those in
    ``out_dir`` when a run with this ``config``, these steps and this window
    finished there, else those of a run of ``make_run(config)`` trained now
    by :func:`train_workload` (so a rerun only redoes the summaries)."""
    import json

    from ..sinks import read_records

    if os.path.exists(os.path.join(out_dir, "meta.json")):
        done = read_records(out_dir)
        meta, metrics = done["meta"], done["metrics"]
        schedule = sorted(set(range(eval_every, steps + 1, eval_every)) | {steps})  # every evaluation, the last one too
        if (meta.get("info", {}).get("config") == json.loads(json.dumps(config.to_dict()))
                and (meta.get("window"), meta.get("every"), meta.get("probes")) == (window, every, ["attention"])
                and [m["step"] for m in metrics] == schedule):
            return done
        shutil.rmtree(out_dir)
    train_workload(make_run(config), steps, out_dir, name=os.path.basename(out_dir), window=window, every=every,
                   eval_every=eval_every, progress=progress, **info)
    return read_records(out_dir)


def summarize(run: dict, task: str, seed: int, weight_decay: float, probe: str) -> dict:
    """One run's row from its files: grokking, the ``probe`` ratio at
    grokking and at the end, and the whole model's update-Gram gap events."""
    from ..workloads.grokking import grok_step

    curve, analysis = run["metrics"], run["analysis"]
    grok = grok_step(curve)
    # sigma_1/sigma_2 of each probed W_Q, by step, from the monitor's records
    wq = {r["step"]: {k[: -len(".in_proj_weight:q")]: v["sigma_12"] for k, v in (r.get("probes") or {}).items()
                      if k.endswith(".in_proj_weight:q")} for r in analysis}
    ratio = {step: layers.get(probe) for step, layers in wq.items()}
    last = curve[-1]
    fit = next((m["step"] for m in curve if m["train_acc"] >= 0.99), None)
    events = [e for r in analysis for e in r.get("events", []) if not e.get("group") and e["kind"] in GAP_EVENTS]
    # analyses with a gap ratio up to grokking: an event needs a level held for several of them
    gap_records = sum(1 for r in analysis if r.get("R") is not None and grok is not None and r["step"] <= grok)
    return {
        "task": task, "seed": seed, "weight_decay": weight_decay, "steps": last["step"],
        "parameters": run["meta"]["info"]["parameters"], "grok_step": grok, "fit_step": fit,
        "train_acc": last["train_acc"], "test_acc": last["test_acc"],
        "ratio_start": ratio.get(curve[0]["step"]), "ratio_at_grok": ratio.get(grok),
        "ratio_end": ratio.get(last["step"]), "ratio_end_layers": wq.get(last["step"], {}),
        "gap_records_before_grok": gap_records, "analyses": len(analysis),
        "events_before_grok": [f"{e['kind']}@{e['step']}" for e in events if grok is not None and e["step"] <= grok],
        "events": [f"{e['kind']}@{e['step']}" for e in events], "probe": probe,
        "curve": [{"step": m["step"], "train_acc": m["train_acc"], "test_acc": m["test_acc"], "wq_ratio": ratio.get(m["step"])}
                  for m in curve],
    }


def _fmt_steps(rows: List[dict]) -> str:
    return ", ".join(f"seed {r['seed']}: {r['grok_step'] if r['grok_step'] is not None else 'none'}" for r in rows)


def section27(task: str, rows: List[dict], paper: Dict[int, tuple], paper_after: str, rise_factor: float,
              probe: str) -> tuple:
    """The claims and tables of Section 27 for one task from its runs' rows
    (:func:`summarize`): grokking with weight decay and not without, the
    ``W_Q`` ratio near 1 at grokking, its rise after (by ``rise_factor`` or
    more, the paper's for this task), no gap without weight decay, and the
    update Gram's gap events before grokking."""
    wd = [r for r in rows if r["weight_decay"] > 0]
    ctrl = [r for r in rows if r["weight_decay"] == 0]
    grokked = [r for r in wd if r["grok_step"] is not None]
    ctrl_grokked = [r for r in ctrl if r["grok_step"] is not None]
    claims = []

    ours = f"with: {len(grokked)}/{len(wd)} ({_fmt_steps(wd)}); without: {len(ctrl_grokked)}/{len(ctrl)}"
    if len(grokked) == len(wd) and not ctrl_grokked:
        verdict, why = "reproduced", "every decayed run reached test accuracy 0.95 and no control did"
    elif len(grokked) > len(ctrl_grokked):
        verdict, why = "partly", "more decayed runs than controls reached 0.95, not all and none"
    elif not any(r["fit_step"] for r in rows):
        verdict = "not testable here"
        why = "no run fitted its training set (train accuracy 0.99) in its steps: too short for grokking"
    else:
        verdict = "not reproduced"
        why = ("the controls generalised too" if ctrl_grokked else "no run reached test accuracy 0.95 in its steps")
    delayed = [r for r in grokked if r["fit_step"] is not None and r["grok_step"] > r["fit_step"]]
    if grokked:
        why += (f"; generalisation came after fitting the training set (train accuracy 0.99) in {len(delayed)} of "
                f"{len(grokked)} grokked runs")
    paper_steps = ", ".join(f"seed {s}: {v[0]}" for s, v in paper.items())
    claims.append(claim(f"{task}: grokking with weight decay, never without",
                        f"3/3 with ({paper_steps}), 0/3 without", ours, verdict, why))

    # grokking at the first evaluation reads the ratio of a barely trained matrix (a random matrix's top two
    # singular values are close too): only later grokking tests the claim
    late = [r for r in grokked if r["grok_step"] > r["curve"][0]["step"]]
    at = [r["ratio_at_grok"] for r in late]
    paper_at = f"{min(v[1] for v in paper.values()):.2f}-{max(v[1] for v in paper.values()):.2f}"
    name = f"{task}: W_Q's sigma_1/sigma_2 near 1 at the grokking step"
    if not late:
        ours = ", ".join(f"{r['ratio_at_grok']:.3g} at step {r['grok_step']}" for r in grokked) or "no run grokked"
        why = ("there is no grokking step to read it at" if not grokked else
               "every run reached 0.95 at its first evaluation, where W_Q is still close to its random start")
        claims.append(claim(name, paper_at, ours, "not testable here", why))
    else:
        near = [a for a in at if a is not None and a <= NEAR_DEGENERATE]
        verdict = "reproduced" if len(near) == len(at) else "partly" if near else "not reproduced"
        starts = ", ".join(f"{r['ratio_start']:.3g}" for r in late)
        claims.append(claim(name, paper_at, ", ".join(f"{a:.3g}" for a in at), verdict,
                            f"{len(near)} of {len(at)} at or below {NEAR_DEGENERATE} (the top two singular values "
                            f"of W_Q nearly equal) at the first evaluation with test accuracy 0.95; at the first "
                            f"evaluation: {starts}"))

    if grokked:
        rises = [r["ratio_end"] / r["ratio_at_grok"] for r in grokked]
        after = [r["steps"] - r["grok_step"] for r in grokked]
        ok = [x for x in rises if x >= rise_factor]
        verdict = "reproduced" if len(ok) == len(rises) else "partly" if ok else "not reproduced"
        why = (f"the ratio at the last step over the one at grokking, {', '.join(map(str, after))} steps after "
               f"it; the paper's rise is {rise_factor:g}x or more")
        claims.append(claim(f"{task}: W_Q's sigma_1/sigma_2 rises after grokking", paper_after,
                            ", ".join(f"{r['ratio_end']:.3g} ({x:.3g}x)" for r, x in zip(grokked, rises)),
                            verdict, why))
    else:
        claims.append(claim(f"{task}: W_Q's sigma_1/sigma_2 rises after grokking", paper_after, "no run grokked",
                            "not testable here", "there is no grokking step to measure the rise from"))

    ends = [r["ratio_end"] for r in ctrl]
    wd_ends = [r["ratio_end"] for r in wd]
    if not ctrl or not wd:
        verdict, why = "not testable here", "needs runs with weight decay and without"
    elif not any(r["fit_step"] for r in rows):
        verdict, why = "not testable here", "no run fitted its training set: too short for the weights to settle"
    elif min(wd_ends) > 2 * max(ends):
        verdict, why = "reproduced", "every control ends below half the smallest decayed run's ratio"
    else:
        verdict = "not reproduced"
        why = ("the ratio did not open with weight decay either: no contrast" if max(wd_ends) < NEAR_DEGENERATE else
               "some control ends at least half as open as a decayed run")
    claims.append(claim(f"{task}: no gap opens without weight decay", "no gap, no grokking (0/3)",
                        f"end ratio without: {', '.join(f'{e:.3g}' for e in ends)}; with: "
                        f"{', '.join(f'{e:.3g}' for e in wd_ends)}", verdict, why))

    seen = [r for r in grokked if r["gap_records_before_grok"] >= EVENT_RECORDS]
    with_events = [r for r in seen if r["events_before_grok"]]
    false_pos = [r for r in ctrl if r["events"]]
    if not seen:
        verdict = "not testable here"
        why = ("no run grokked" if not grokked else
               f"every run grokked before the update Gram had {EVENT_RECORDS} analyses with a gap ratio, the fewest "
               "in which an event can show")
    else:
        verdict = ("reproduced" if len(with_events) == len(grokked) and not false_pos else
                   "partly" if with_events else "not reproduced")
        why = (f"{len(with_events)} of {len(grokked)} grokked runs show a whole-model gap collapse, opening or k* "
               f"shift of the update Gram at or before grokking; {len(false_pos)} of {len(ctrl)} controls show one")
    claims.append(claim(f"{task}: update-Gram gap events precede grokking", "every grokking event (24/24)",
                        "; ".join(f"seed {r['seed']}: {', '.join(r['events_before_grok']) or 'none'}" for r in grokked)
                        or "—", verdict, why))

    runs_table = table(f"{task} runs", ["seed", "weight decay", "steps", "fit step", "grok step", "train acc",
                                        "test acc", "W_Q ratio start", "at grok", "end", "end, every layer",
                                        "gap events (update Gram)"],
                       [[r["seed"], r["weight_decay"], r["steps"], r["fit_step"], r["grok_step"], r["train_acc"],
                         r["test_acc"], r["ratio_start"], r["ratio_at_grok"], r["ratio_end"],
                         ", ".join(f"{k}: {v:.3g}" for k, v in r["ratio_end_layers"].items()),
                         ", ".join(r["events"]) or "none"] for r in rows])
    paper_table = table(f"{task}: the paper's weight-decay rows", ["seed", "grok step", "W_Q ratio at grok", "after"],
                        [[s, *v] for s, v in paper.items()])
    return claims, [runs_table, paper_table]


def run(settings: Settings) -> dict:
    from ..report import render
    from ..workloads.dyck import DyckConfig, DyckRun

    seeds = settings.seeds_or([42], [42], [42, 137, 2024])
    steps = settings.pick(150, 6000, 10000)
    eval_every = settings.pick(25, 50, 100)
    every = settings.pick(25, 25, 50)  # the update stride: W = 3 updates span 3 * every steps
    window = 3  # Section 27's window for Dyck
    rows, probe = [], "encoder.layers.0.self_attn"
    base = DyckConfig()
    for seed in seeds:
        for wd in WEIGHT_DECAYS:
            config = DyckConfig(weight_decay=wd, seed=seed, device=settings.device)
            result = records(DyckRun, config, steps, os.path.join(settings.out, f"dyck-seed{seed}-wd{wd:g}"),
                             window=window, every=every, eval_every=eval_every, progress=settings.progress,
                             task="dyck", seed=seed, weight_decay=wd)
            rows.append(summarize(result, "Dyck-1", seed, wd, probe))
    render(settings.out)
    claims, tables = section27("Dyck-1", rows, PAPER, "1756-3187 (2-3 orders of magnitude)", 100.0, probe)
    return {
        "config": {"seeds": seeds, "steps": steps, "eval_every": eval_every, "window": window, "every": every,
                   "weight_decays": list(WEIGHT_DECAYS), "probe": probe, "model": base.to_dict(),
                   "parameters": rows[0]["parameters"]},
        "claims": claims, "tables": tables, "runs": rows,
        "summary": ("Dyck-1 recognition (is a bracket string balanced? the paper does not say which Dyck-1 task it "
                    "trained; the unbalanced strings open with ( and close with ) as the balanced do, so only the "
                    "prefix rule decides) by a 2-layer, ~150K-parameter transformer whose weights start "
                    f"{base.init_scale:g} times PyTorch's initialisation (with the usual start it generalises as soon "
                    "as it fits its training set, with weight decay or without: nothing groks), trained on "
                    f"{base.n_train} strings of {base.length} brackets with weight decay 1.0 and without. W_Q is "
                    "the query third of the first layer's attention projection, its sigma_1/sigma_2 the monitor's "
                    "attention probe at each analysis (the runs table has every layer's at the end); the update "
                    f"Gram is the monitor's window of {window} updates over {every} steps each."),
    }
