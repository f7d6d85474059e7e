"""Training a monitored grokking run, for ``spectral-edge demo`` and the
modular-arithmetic experiments (grokking, multitask, optimizers).

A run's files (``spectral.jsonl``, ``metrics.jsonl``, ``meta.json``) are its
results: :func:`finished_run` reads back a run finished with the same
settings, so an interrupted sweep resumes where it stopped and a changed
analysis reruns without training."""
from __future__ import annotations

import os
import time
from typing import Dict, List, Optional

from ..sinks import clear_records, read_records

#: a quick run's model: small enough for a smoke test of every code path
QUICK_MODEL = dict(d_model=32, n_heads=2, d_ff=64)


def model_settings(settings) -> dict:
    """The workload's model settings for ``settings``'s mode: its defaults,
    or :data:`QUICK_MODEL` for a quick run."""
    return dict(QUICK_MODEL) if settings.mode == "quick" else {}


def finish(settings, results: dict) -> dict:
    """Render the report of ``settings.out``'s runs and add the runs'
    training time to ``results["config"]``."""
    from ..report import render

    render(settings.out)
    results["config"]["train_min"] = round(sum(r["wall_s"] for r in results["runs"]) / 60, 1)
    return results


def train_monitored(config, steps: int, out_dir: str, window: int, every: int, analyze_every: int,
                    eval_every: int, progress: bool = True, *, patience: Optional[int] = None, probes=None,
                    also: Optional[Dict[str, dict]] = None) -> Dict:
    """Train one grokking run with a :class:`SpectralMonitor` attached;
    evaluate every ``eval_every`` steps.

    Args:
        patience: stop this many steps after every task has grokked (None:
            train all ``steps``).
        probes: weight-matrix probes for the monitor of ``out_dir`` (``"attention"``).
        also: further monitors on the same run, ``{log_dir: {"window",
            "every", "analyze_every"}}``.

    Returns the grokking step (None when it did not grok; with several tasks,
    the step at which the last one did), each task's (``grok_steps``), the
    last metrics, the steps trained, the wall time and the monitors
    (``monitor``, and ``monitors`` by log directory)."""
    from tqdm.auto import tqdm

    from ..monitor import SpectralMonitor
    from ..workloads.grokking import GROK_ACCURACY, GrokkingRun

    run = GrokkingRun(config)
    settings = {out_dir: dict(window=window, every=every, analyze_every=analyze_every), **(also or {})}
    keys = {t: "test_acc" if len(run.tasks) == 1 else f"test_acc_{t}" for t in run.tasks}
    name = f"{config.task} mod {config.p}, weight decay {config.weight_decay:g}" + (
        f", {config.optimizer}" if config.optimizer != "adamw" else "")
    monitors = {}
    for log_dir, options in settings.items():
        monitors[log_dir] = SpectralMonitor(run.model, run.optimizer, sinks=("jsonl", "csv"), log_dir=log_dir,
                                            history=None, probes=probes if log_dir == out_dir else None, **options)
        monitors[log_dir].annotate(name=name, task=config.task, p=config.p, weight_decay=config.weight_decay,
                                   parameters=run.n_params, config=config.to_dict(), steps=steps, eval_every=eval_every,
                                   patience=patience)
    monitor = monitors[out_dir]
    grok: Dict[str, Optional[int]] = {t: None for t in run.tasks}
    metrics: Dict[str, float] = {}
    t0 = time.time()
    bar = tqdm(total=steps, desc=f"wd={config.weight_decay:g}", unit="step", disable=not progress, dynamic_ncols=True,
               mininterval=0.5)
    while run.step < steps:
        run.train_step()
        if run.step % eval_every == 0 or run.step == steps:
            metrics = run.evaluate()
            for m in monitors.values():
                m.log(metrics, step=run.step)
            for task, key in keys.items():
                if grok[task] is None and metrics[key] >= GROK_ACCURACY:
                    grok[task] = run.step
            if patience is not None and None not in grok.values() and run.step >= max(grok.values()) + patience:
                bar.update(1)
                break
        if run.step % analyze_every == 0 and metrics:
            latest = monitor.latest or {}
            R = latest.get("R")
            bar.set_postfix(k=latest.get("k_star"), R="-" if R is None else f"{R:.2f}",
                            train=f"{metrics['train_acc']:.2f}", test=f"{metrics['test_acc']:.2f}", refresh=False)
        bar.update(1)
    bar.close()
    last = None if None in grok.values() else max(grok.values())
    finished = {"steps": run.step, "wall_s": round(time.time() - t0, 1), "grok_steps": grok}
    for m in monitors.values():
        m.annotate(milestones={"grokking": last}, finished=finished)
        m.close()
    return {"grok_step": last, "grok_steps": grok, "metrics": metrics, "steps": run.step, "wall_s": finished["wall_s"],
            "monitor": monitor, "monitors": monitors}


def finished_run(log_dir: str, config, steps: int, window: int, every: int, analyze_every: int, probes=None,
                 **annotations) -> Optional[dict]:
    """The records of a run that :func:`train_monitored` finished in
    ``log_dir`` with these settings (``annotations``: further ones it
    annotated, each equal), or None: ``{"meta", "analysis", "metrics"}`` as
    :func:`~spectral_edge_fast.sinks.read_records` gives them."""
    if not os.path.exists(os.path.join(log_dir, "meta.json")):
        return None
    run = read_records(log_dir)
    meta = run["meta"]
    info = meta.get("info", {})
    want = dict(config=_json(config.to_dict()), steps=steps, **annotations)
    if ("finished" not in info or any(info.get(k) != _json(v) for k, v in want.items())
            or (meta.get("window"), meta.get("every"), meta.get("analyze_every")) != (window, every, analyze_every)
            or meta.get("probes") != _json([probes] if isinstance(probes, str) else probes)):
        return None
    return run


def _json(value):
    """``value`` as it reads back from JSON (tuples as lists)."""
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    return value


def run_or_reuse(config, steps: int, log_dir: str, settings, window: int = 16, every: int = 10,
                 analyze_every: int = 10, eval_every: int = 50, patience: Optional[int] = None, probes=None,
                 also: Optional[Dict[str, dict]] = None) -> Dict[str, dict]:
    """The records of one run, ``{log_dir: {"meta", "analysis", "metrics"}}``
    for its monitor and each of ``also``'s: read back when
    :func:`finished_run` finds it finished with these settings, else trained
    by :func:`train_monitored` (``settings``: the experiment's, for the
    progress bars)."""
    dirs = {log_dir: (window, every, analyze_every, probes),
            **{d: (o["window"], o["every"], o["analyze_every"], None) for d, o in (also or {}).items()}}
    done = {d: finished_run(d, config, steps, *w, patience=patience, eval_every=eval_every) for d, w in dirs.items()}
    if all(done.values()):
        return done
    for d in dirs:
        clear_records(d)
    train_monitored(config, steps, log_dir, window, every, analyze_every, eval_every, progress=settings.progress,
                    patience=patience, probes=probes, also=also)
    return {d: read_records(d) for d in dirs}


def events_of(records: List[dict]) -> List[dict]:
    """The whole model's events that the analysis records carry, oldest first."""
    return [e for r in records for e in r.get("events", []) if not e.get("group")]


def event_timing(records: List[dict], grok: Optional[int]) -> dict:
    """From a run's analysis records: the whole model's first gap collapse,
    the first opening after it (or the first at all) and its k*, the number
    of k* shifts, and the events' steps against ``grok`` (``*_lead``:
    positive before grokking)."""
    events = events_of(records)
    collapse = next((e["step"] for e in events if e["kind"] == "gap_collapse"), None)
    opening = next((e["step"] for e in events if e["kind"] == "gap_opening" and (collapse is None or e["step"] > collapse)),
                   None)
    k_at = {r["step"]: r.get("k_star") for r in records}
    lead = (lambda step: None if step is None or grok is None else grok - step)
    return {"collapse": collapse, "collapse_lead": lead(collapse), "opening": opening, "opening_lead": lead(opening),
            "opening_k": k_at.get(opening), "k_shifts": sum(e["kind"] == "k_star_shift" for e in events)}
