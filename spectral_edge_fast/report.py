"""Plots and a self-contained HTML report of a monitored run.

``render(run_dir)`` reads what the JSONL sink wrote (``meta.json``,
``spectral.jsonl``, ``metrics.jsonl``) and writes next to it:

    sigmas.png     sigma_j over time, one line per mode (log scale)
    gap.png        the gap ratio R, the gap position k* and the adiabatic
                   parameter A over time, with the event thresholds
    groups.png     heat map of each group's gap ratio over time
    training.png   the logged losses, accuracies, learning rate and gradient
                   norm, each kind on its own axis, each series over the
                   steps where it was logged (other metrics are listed, not drawn)
    probes.png     the weight probes (a monitor's ``probes=``): sigma_1/sigma_2
                   and sigma_2/sigma_3 of each probed weight, |lambda_1|/|lambda_2|
                   and |lambda_2|/|lambda_3| of each attention operator and
                   |lambda_1|/|lambda_2| of its heads
    report.html    all of the above, a guide to the quantities, the summary
                   and the events, in one file (images embedded, no other
                   file needed), titled with the run's name (:func:`run_name`)

The whole model's gap collapses (red dotted), openings (green solid) and k*
shifts (purple dash-dot) are drawn on every time plot, and milestones given
through ``SpectralMonitor.annotate`` (e.g. the grokking step) dashed, black
(cyan on the heat map); legends sit right of the plots, off the data.

A directory whose subdirectories are runs gets a report per run plus a
comparison (``compare.png`` and a top-level ``report.html``).

Every file is replaced atomically (:func:`~spectral_edge_fast.files.atomic_write`):
a crash while rendering leaves the previous one. A record line cut by a crash,
or a broken ``meta.json``, is skipped with a warning (:func:`~spectral_edge_fast.sinks.read_records`).
"""
from __future__ import annotations

import base64
import html
import inspect
import math
import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .analysis.events import _gap_rule, events as _gap_events
from .analysis.null import MONITOR_SAMPLES, gap_thresholds
from .files import atomic_write
from .sinks import FILES, read_records

# The event detector's defaults (a run's own rule is in its meta.json; docs/math.md#gap-collapse-and-opening).
_DETECTOR = inspect.signature(_gap_events).parameters
OPEN_ABOVE = _DETECTOR["open_above"].default
PERSIST = _DETECTOR["persist"].default
CLOSE_BELOW = _gap_rule(OPEN_ABOVE, None, PERSIST, 1.0)
K_STAR_MARGIN = _DETECTOR["k_star_margin"].default

# One style per event kind on every plot, the comparison's included.
EVENT_STYLES = {
    "gap_collapse": {"color": "tab:red", "ls": ":", "lw": 1.8, "label": "gap collapse"},
    "gap_opening": {"color": "tab:green", "ls": "-", "lw": 1.2, "label": "gap opening"},
    "k_star_shift": {"color": "tab:purple", "ls": "-.", "lw": 1.0, "label": "k* shift"},
    "nonfinite_rows": {"color": "tab:brown", "ls": (0, (6, 1.5, 1, 1.5, 1, 1.5)), "lw": 2.0, "label": "non-finite updates"},
}
MILESTONE_STYLE = {"color": "black", "ls": "--", "lw": 1.5}
HEATMAP_MILESTONE_COLOR = "tab:cyan"  # black and white each vanish on part of the magma map
_LINE_WORDS = {"-": "solid", ":": "dotted", "-.": "dash-dot", "--": "dashed", (0, (6, 1.5, 1, 1.5, 1, 1.5)): "dash-dot-dot"}
TOP_COLORS = ("tab:blue", "tab:orange", "tab:green")  # sigma_1..sigma_3; the rest grey
WIDTH = 11.0  # inches: the plot and, at its right, the legend
MARKERS_UP_TO = 60  # points in a series: fewer get markers (a lone point would be invisible without)
INTEGRATION_DIR = "spectral-edge"  # the folder the Lightning and Hugging Face callbacks log to


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    """The figure as a PNG at ``path``, replaced atomically; closes it."""
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")  # "tight": the legends right of the plots
    _plt().close(fig)
    return path


def _series(records: List[dict], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else float(r[key]) for r in records], dtype=float)


def _steps(records: List[dict]) -> np.ndarray:
    return np.array([r["step"] for r in records], dtype=float)


def _marker(n: int) -> Optional[str]:
    """Markers on a series of few points: a lone point is no line."""
    return "o" if n <= MARKERS_UP_TO else None


def _span(ax, steps: np.ndarray) -> None:
    """The x-axis over every record: records without a finite value (the
    updates turned NaN) would end the autoscaled axis at the last finite one."""
    pad = 0.05 * (steps[-1] - steps[0]) or 0.5
    ax.set_xlim(steps[0] - pad, steps[-1] + pad)


def metric_series(metrics: List[dict], key: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of one metric over the records that hold a finite
    value of it, in step order; a step logged twice keeps its last value."""
    by_step: Dict[float, float] = {}
    for m in metrics:
        v = m.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            by_step[float(m["step"])] = float(v)
    steps = sorted(by_step)
    return np.array(steps, dtype=float), np.array([by_step[s] for s in steps], dtype=float)


def metric_panels(metrics: List[dict]) -> Tuple[List[Tuple[str, List[str], bool]], List[str]]:
    """The training figure's panels ``(ylabel, keys, log scale)`` (losses,
    accuracies, learning rate, gradient norm) and the metrics left out
    (epoch counters, runtimes, throughput, FLOPs...)."""
    keys = sorted({k for m in metrics for k in m if k != "step"})
    kinds = (
        ("loss", lambda k: "loss" in k.lower()),
        ("accuracy", lambda k: "acc" in k.lower()),
        ("learning rate", lambda k: "learning_rate" in k or k == "lr" or k.startswith("lr-") or k.startswith("lr_")),
        ("gradient norm", lambda k: "grad_norm" in k),
    )
    panels, taken = [], set()
    for label, match in kinds:
        names = [k for k in keys if k not in taken and match(k) and metric_series(metrics, k)[0].size]
        taken.update(names)
        if names:
            positive = all((metric_series(metrics, k)[1] > 0).all() for k in names)
            panels.append((label, names, label in ("loss", "learning rate") and positive))
    return panels, [k for k in keys if k not in taken]


def model_events(records: List[dict]) -> List[dict]:
    """The whole model's events (not the per-group ones), oldest first."""
    return [e for r in records for e in r.get("events", ()) if not e.get("group")]


def _milestones(meta: dict) -> Dict[str, int]:
    return {k: v for k, v in ((meta.get("info") or {}).get("milestones") or {}).items() if v is not None}


def _mark(ax, events: List[dict], milestones: Dict[str, int], label: bool = True,
          milestone_color: str = "black") -> None:
    """Vertical lines: gap collapses, openings, k* shifts and the milestones;
    with ``label``, each kind labelled once for the legend."""
    seen = set() if label else set(EVENT_STYLES)
    for e in events:
        style = EVENT_STYLES.get(e["kind"])
        if style is None:
            continue
        kw = {k: v for k, v in style.items() if k != "label"}
        ax.axvline(e["step"], alpha=0.85, label=None if e["kind"] in seen else style["label"], **kw)
        seen.add(e["kind"])
    for name, step in milestones.items():
        ax.axvline(step, label=f"{name} ({step})" if label else None, **{**MILESTONE_STYLE, "color": milestone_color})


# Tick sets for a log axis, coarsest first; the first to label at least four values in the data's range wins.
_LOG_SUBS = (
    (1.0,),
    (1.0, 2.0, 5.0),
    (1.0, 1.5, 2.0, 3.0, 5.0, 7.0),
    (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0),
)


def _log_axis(ax, values, min_labels: int = 4) -> None:
    """Log scale labelled with plain numbers (1, 1.5, 2, 3...; decades only
    when ``values`` span several), with at least ``min_labels`` labels within
    the values' range when the range allows."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    subs = _LOG_SUBS[1]
    if v.size:
        lo, hi = float(v.min()), float(v.max())
        decades = range(math.floor(math.log10(lo)), math.floor(math.log10(hi)) + 1)
        for subs in _LOG_SUBS:
            if sum(lo <= m * 10.0**d <= hi for d in decades for m in subs) >= min_labels:
                break
    ax.yaxis.set_major_locator(LogLocator(subs=subs, numticks=100))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _split_color(key: str, used: set, fallback: Sequence[str]) -> str:
    """Train (and a bare ``loss``, the training loss of Hugging Face's
    logs) in blue, test/validation in orange; a second series of the same
    split, or another series, takes the next unused colour."""
    low = key.lower()
    first = "tab:blue" if ("train" in low or low == "loss") else "tab:orange" if ("test" in low or "val" in low or "eval" in low) else None
    for color in ((first,) if first else ()) + tuple(fallback):
        if color not in used:
            used.add(color)
            return color
    return "0.4"


def _legend(ax, **kw) -> None:
    """The legend outside the plot, at its right: it never covers the data."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kw)


def sigmas_figure(records: List[dict], meta: dict):
    """sigma_j over time, one line per mode, on a log axis (None: no sigmas)."""
    width = max((len(r["sigmas"]) for r in records), default=0)
    if not width:
        return None
    plt = _plt()
    steps = _steps(records)
    sig = np.full((len(records), width), np.nan)
    for i, r in enumerate(records):
        sig[i, : len(r["sigmas"])] = [np.nan if x is None else x for x in r["sigmas"]]
    sig[~(sig > 0)] = np.nan  # zero modes have no place on a log axis
    fig, ax = plt.subplots(figsize=(WIDTH, 4.5))
    for j in range(width - 1, -1, -1):  # sigma_1 drawn last, on top
        top = j < len(TOP_COLORS)
        ax.plot(steps, sig[:, j], color=TOP_COLORS[j] if top else "0.6", lw=1.8 if top else 0.7,
                label=f"σ{j + 1}" if top else ("σ4 … σW" if j == len(TOP_COLORS) else None),
                marker=_marker(len(steps)), ms=3)
    _mark(ax, model_events(records), _milestones(meta))
    _span(ax, steps)
    _log_axis(ax, sig)
    ax.set_xlabel("step")
    ax.set_ylabel("singular value σ_j of the window")
    ax.set_title(f"Singular values of the update window (W={meta.get('window')}, updates over {meta.get('every')} step(s))")
    ax.grid(alpha=0.3, which="both")
    handles, labels = ax.get_legend_handles_labels()
    modes = [i for i, label in enumerate(labels) if label.startswith("σ")][::-1]  # sigma_1 first
    order = modes + [i for i in range(len(labels)) if i not in modes]
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return fig


def event_thresholds(meta: dict) -> Tuple[float, float]:
    """The run's gap thresholds ``(open_above, close_below)``: its options as
    meta.json records them, "null" taken at its W and the dimension the
    monitor took it at (``null_P``); the defaults for a run without them."""
    rule = meta.get("events") or {}
    open_above, close_below = rule.get("gap_open_above", OPEN_ABOVE), rule.get("gap_close_below")
    if "null" in (open_above, close_below):
        open_above, close_below = gap_thresholds(open_above, close_below, meta["window"],
                                                 rule.get("null_P", meta["numel"]), MONITOR_SAMPLES)
    return open_above, _gap_rule(open_above, close_below, PERSIST, 1.0)


def gap_figure(records: List[dict], meta: dict, open_above: Optional[float] = None,
               close_below: Optional[float] = None):
    """R with the event thresholds (default: the run's, :func:`event_thresholds`),
    k* and (when the learning rate is known) A over time, with the events and
    milestones."""
    if open_above is None or close_below is None:
        rule = event_thresholds(meta)
        open_above = rule[0] if open_above is None else open_above
        close_below = rule[1] if close_below is None else close_below
    plt = _plt()
    steps = _steps(records)
    R, k, A = _series(records, "R"), _series(records, "k_star"), _series(records, "A")
    has_A = bool(np.isfinite(A).any())
    rows = 3 if has_A else 2
    fig, axes = plt.subplots(rows, 1, figsize=(WIDTH, 2.6 * rows + 0.6), sharex=True)
    events, milestones = model_events(records), _milestones(meta)
    ax = axes[0]
    ax.plot(steps, R, color="tab:blue", lw=1.5, label="R = σ_k* / σ_k*+1", marker=_marker(len(steps)), ms=3)
    ax.axhline(open_above, color="tab:green", ls=(0, (6, 3)), lw=0.9, label=f"open: R ≥ {open_above:g}")
    ax.axhline(close_below, color="tab:red", ls=(0, (6, 3)), lw=0.9, label=f"collapsed: R < {close_below:g}")
    _log_axis(ax, np.append(R, (open_above, close_below)))
    ax.set_ylabel("gap ratio R")
    _mark(ax, events, milestones)
    ax = axes[1]
    ax.step(steps, k, where="post", color="tab:purple", lw=1.3, marker=_marker(len(steps)), ms=3)
    ax.set_ylabel("gap position k*")
    top = int(np.nanmax(k)) if np.isfinite(k).any() else 1
    ax.set_yticks(range(1, top + 1, max(1, top // 8)))
    ax.set_ylim(0.5, top + 0.5)
    _mark(ax, events, milestones, label=False)
    if has_A:
        ax = axes[2]
        ax.plot(steps, A, color="tab:orange", lw=1.2, marker=_marker(len(steps)), ms=3)
        ax.axhline(1.0, color="grey", ls=(0, (6, 3)), lw=0.9, label="A = 1")
        _log_axis(ax, np.append(A, 1.0))
        ax.set_ylabel("adiabatic A")
        _mark(ax, events, milestones, label=False)
    for ax in axes:
        ax.grid(alpha=0.3)
        _legend(ax)
    _span(axes[-1], steps)
    axes[-1].set_xlabel("step")
    axes[0].set_title("Spectral gap of the update window: ratio R, position k*" + (", adiabatic parameter A" if has_A else ""))
    fig.tight_layout()
    return fig


def groups_figure(records: List[dict], meta: dict):
    """Heat map of each group's log10 R over time (None: a single group)."""
    with_groups = [r for r in records if r.get("groups")]
    if not with_groups:
        return None
    plt = _plt()
    names = list(with_groups[-1]["groups"])
    steps = _steps(with_groups)
    logR = np.array([[np.nan if (r["groups"].get(g) or {}).get("R") is None else math.log10(r["groups"][g]["R"])
                      for r in with_groups] for g in names])
    fig, ax = plt.subplots(figsize=(WIDTH, 2.2 + 0.42 * len(names)), layout="constrained")  # room for the colour bar
    finite = logR[np.isfinite(logR)]
    vmax = float(np.percentile(finite, 99)) if finite.size else 1.0
    half = (steps[1] - steps[0]) / 2 if len(steps) > 1 else 0.5
    im = ax.imshow(logR, aspect="auto", interpolation="nearest", cmap="magma", vmin=0.0, vmax=max(vmax, 0.1),
                   extent=(steps[0] - half, steps[-1] + half, len(names) - 0.5, -0.5))
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel("step")
    ax.set_title("Gap ratio of each parameter group, log10 R (dark: collapsed, bright: open)")
    _mark(ax, model_events(records), _milestones(meta), milestone_color=HEATMAP_MILESTONE_COLOR)
    _legend(ax, title="whole model")
    fig.colorbar(im, ax=ax, label="log10 R", location="bottom", aspect=60)
    return fig


def probes_figure(records: List[dict], meta: dict):
    """The weight probes over time (None: no record has any): sigma_1/sigma_2
    and sigma_2/sigma_3 of each probed weight, and, with attention probes,
    |lambda_1|/|lambda_2| (solid) and |lambda_2|/|lambda_3| (dashed) of each
    attention operator with its heads' |lambda_1|/|lambda_2| (thin)."""
    probed = [r for r in records if r.get("probes")]
    if not probed:
        return None
    plt = _plt()
    steps = _steps(probed)
    weights = list(dict.fromkeys(k for r in probed for k in r["probes"]))
    modules = list(dict.fromkeys(k for r in probed for k in r.get("attention") or {}))

    def values(section: str, name: str, key: str, head: Optional[int] = None) -> np.ndarray:
        out = []
        for r in probed:
            entry = (r.get(section) or {}).get(name) or {}
            if head is not None:
                heads = entry.get("heads") or []
                entry = heads[head] if head < len(heads) else {}
            out.append(np.nan if entry.get(key) is None else float(entry[key]))
        return np.array(out)

    rows = 3 if modules else 2
    fig, axes = plt.subplots(rows, 1, figsize=(WIDTH, 2.6 * rows + 0.6), sharex=True)
    events, milestones = model_events(records), _milestones(meta)
    from matplotlib.colors import to_hex

    events_colors = {to_hex(style["color"]) for style in EVENT_STYLES.values()}  # a series never looks like an event
    colors = [c for c in plt.rcParams["axes.prop_cycle"].by_key()["color"] if to_hex(c) not in events_colors]
    for ax, key, label in ((axes[0], "sigma_12", "σ1 / σ2"), (axes[1], "sigma_23", "σ2 / σ3")):
        series = [values("probes", w, key) for w in weights]
        for i, (w, v) in enumerate(zip(weights, series)):
            ax.plot(steps, v, color=colors[i % len(colors)], lw=1.3, label=w, marker=_marker(len(steps)), ms=3)
        _log_axis(ax, np.concatenate(series + [np.ones(1)]))
        ax.set_ylabel(f"{label} of the weight")
    if modules:
        ax = axes[2]
        drawn = []
        for i, m in enumerate(modules):
            color = colors[i % len(colors)]
            drawn += [values("attention", m, "ratio_12"), values("attention", m, "ratio_23")]
            ax.plot(steps, drawn[-2], color=color, lw=1.5, label=f"{m}: |λ1|/|λ2|", marker=_marker(len(steps)), ms=3)
            ax.plot(steps, drawn[-1], color=color, lw=1.0, ls="--", label=f"{m}: |λ2|/|λ3|",
                    marker=_marker(len(steps)), ms=3)
            heads = max(len(((r.get("attention") or {}).get(m) or {}).get("heads") or ()) for r in probed)
            for h in range(heads):
                drawn.append(values("attention", m, "ratio_12", h))
                ax.plot(steps, drawn[-1], color=color, lw=0.6, alpha=0.5,
                        label=f"{m}: heads' |λ1|/|λ2|" if h == 0 else None)
        _log_axis(ax, np.concatenate(drawn + [np.ones(1)]))
        ax.set_ylabel("attention W_Qᵀ W_K")
    for i, ax in enumerate(axes):
        _mark(ax, events, milestones, label=i == 0)
        ax.grid(alpha=0.3, which="both")
        _legend(ax)
    axes[-1].set_xlabel("step")
    axes[0].set_title("Weight probes: singular-value ratios of the probed weights"
                      + (", eigenvalue ratios of the attention operators" if modules else ""))
    fig.tight_layout()
    return fig


def training_figure(metrics: List[dict], records: List[dict], meta: dict):
    """The logged losses, accuracies, learning rate and gradient norm, each
    kind on its own axis, each series over the steps where it was logged
    (None: nothing of these kinds was logged)."""
    panels, _ = metric_panels(metrics)
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(panels), 1, figsize=(WIDTH, 2.6 * len(panels) + 0.6), sharex=True, squeeze=False)
    events, milestones = model_events(records), _milestones(meta)
    for i, (ax, (ylabel, names, log)) in enumerate(zip(axes[:, 0], panels)):
        used: set = set()
        for name in names:
            x, y = metric_series(metrics, name)
            ax.plot(x, y, lw=1.5, label=name, color=_split_color(name, used, [f"C{i}" for i in range(2, 10)]),
                    marker="o" if x.size <= MARKERS_UP_TO else None, ms=3.5)
        if log:
            _log_axis(ax, np.concatenate([metric_series(metrics, n)[1] for n in names]))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        _mark(ax, events, milestones, label=i == 0)
        _legend(ax)
    axes[0, 0].set_title("Training metrics, with the spectral events")
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    return fig


def comparison_figure(runs: Dict[str, dict]):
    """R(t) of every run (colour: the run; line style: the event kind, as on
    every plot) and each run's accuracies (test/val solid, train dotted)."""
    from matplotlib.lines import Line2D

    plt = _plt()
    with_acc = any("acc" in k.lower() for run in runs.values() for m in run["metrics"] for k in m)
    fig, axes = plt.subplots(2 if with_acc else 1, 1, figsize=(WIDTH, 6.5 if with_acc else 3.8), sharex=True,
                             squeeze=False)
    axes = axes[:, 0]
    colors = plt.get_cmap("tab10")
    kinds = set()
    for i, (name, run) in enumerate(runs.items()):
        color = colors(i % 10)
        label = (run["meta"].get("info") or {}).get("name") or name
        recs = run["analysis"]
        axes[0].plot(_steps(recs), _series(recs, "R"), color=color, lw=1.3, label=label, marker=_marker(len(recs)), ms=3)
        metrics = run["metrics"]
        acc = [k for k in sorted({k for m in metrics for k in m}) if "acc" in k.lower()]
        for key in sorted(acc, key=lambda k: ("test" not in k and "val" not in k, k)):
            x, y = metric_series(metrics, key)
            axes[-1].plot(x, y, color=color, ls="-" if ("test" in key or "val" in key) else ":", lw=1.4,
                          marker="o" if x.size <= MARKERS_UP_TO else None, ms=3, label=f"{label}: {key}")
        for ax in axes:
            for e in (e for e in model_events(recs) if e["kind"] in EVENT_STYLES):
                style = EVENT_STYLES[e["kind"]]
                ax.axvline(e["step"], color=color, ls=style["ls"], lw=style["lw"], alpha=0.7)
                kinds.add(e["kind"])
            for step in _milestones(run["meta"]).values():
                ax.axvline(step, **{**MILESTONE_STYLE, "color": color})
    _log_axis(axes[0], np.concatenate([_series(run["analysis"], "R") for run in runs.values()]))
    axes[0].set_ylabel("gap ratio R")
    axes[0].set_title("Runs compared (colour: the run)")
    # the line styles, in black: the runs' colours are in the legend above them
    handles, labels = axes[0].get_legend_handles_labels()
    for kind in (k for k in EVENT_STYLES if k in kinds):
        style = EVENT_STYLES[kind]
        handles.append(Line2D([], [], color="black", ls=style["ls"], lw=style["lw"]))
        labels.append(style["label"])
    if any(_milestones(run["meta"]) for run in runs.values()):
        handles.append(Line2D([], [], **MILESTONE_STYLE))
        labels.append("milestone (" + ", ".join(sorted({m for run in runs.values() for m in _milestones(run["meta"])})) + ")")
    axes[0].legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    if with_acc:
        axes[1].set_ylabel("accuracy")
        _legend(axes[1])
    axes[-1].set_xlabel("step")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# -- HTML -----------------------------------------------------------------

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}img{max-width:100%;display:block;margin:0.5em 0 1.5em}code{background:#f3f3f3}
.guide{background:#f8f8f8;border:1px solid #ddd;padding:0.3em 1.2em;margin:1em 0 2em}.guide li{margin:0.3em 0}
.note{color:#555;font-size:90%;margin-top:-1em}"""


def _line_words(style: dict) -> str:
    return f"{style['color'].replace('tab:', '')} {_LINE_WORDS[style['ls']]}"


def guide_html() -> str:
    """What the report shows, a sentence per quantity, and where the
    definitions live."""
    lines = ", ".join(f"{s['label']} {_line_words(s)}" for s in EVENT_STYLES.values())
    items = [
        "<b>σ<sub>j</sub></b> (singular values): the sizes of the directions in the window of the last W parameter "
        "updates δ<sub>t</sub> = θ<sub>t</sub> − θ<sub>t−s</sub> (s: the stride), largest first; "
        "σ<sub>j</sub>² are the eigenvalues of the updates' W×W Gram matrix (docs/math.md#singular-values).",
        "<b>k*</b> (gap position): the j where σ<sub>j</sub> / σ<sub>j+1</sub> is largest: how many directions "
        "of the recent updates stand out from the rest (docs/math.md#gap-position-k).",
        "<b>R</b> (gap ratio) = σ<sub>k*</sub> / σ<sub>k*+1</sub>: near 1 there is no edge; well above 1, "
        "k* directions carry the updates (docs/math.md#gap-ratio-r).",
        "<b>A</b> (adiabatic parameter) = ‖ΔC‖<sub>F</sub> / (η g²): how fast the updates' covariance C changes "
        "from one step to the next against the gap g = σ<sub>k*</sub> − σ<sub>k*+1</sub>, with η the learning "
        "rate; A ≪ 1 plateau, A ≈ 1 transition, A ≫ 1 forgetting (no panel when the learning rate is unknown; "
        "docs/math.md#adiabatic-parameter).",
        f"<b>Events</b>: a gap <i>opening</i> when R stays at or above {OPEN_ABOVE:g} for {PERSIST} analyses in a "
        f"row, a gap <i>collapse</i> when it stays below {CLOSE_BELOW:g} for {PERSIST} analyses (in between, the "
        f"state holds), a <i>k* shift</i> when a decisive k* (its ratio at least {K_STAR_MARGIN:g} times the "
        f"runner-up's) changes and keeps its new value for {PERSIST} analyses, so the wandering k* of a flat "
        f"spectrum makes none; each is dated at the first analysis of its run; <i>non-finite updates</i> where a "
        f"NaN or infinity enters the window (no spectrum until it leaves). These are the defaults: the gap "
        f"plot draws the run's own thresholds. On the plots: {lines}; milestones (e.g. grokking) "
        f"{_line_words(MILESTONE_STYLE)} (docs/math.md#events).",
        "<b>Groups</b>: the same gap ratio for each group of parameters (a repeated block, the embeddings, the "
        "head); the heat map shows log<sub>10</sub> R of each (docs/engine.md#groups).",
        "<b>Weight probes</b> (when the monitor has <code>probes=</code>): σ<sub>1</sub>/σ<sub>2</sub> and "
        "σ<sub>2</sub>/σ<sub>3</sub> of each probed weight matrix itself (an attention W<sub>Q</sub>, not the "
        "updates), and the ratios of the largest |λ| of each attention layer's W<sub>Q</sub>ᵀW<sub>K</sub>, "
        "whole and per head (docs/math.md#weight-probes).",
        "<b>Sketch</b> (when the monitor has <code>sketch=m</code>): the window holds each update sketched to m "
        "numbers, so every quantity above is an estimate; <i>rel_err</i> in the summary is the estimated standard "
        "error of the Gram's entries relative to the Gram (docs/numerics.md#sketch-mode).",
    ]
    return ('<div class="guide"><h3>How to read this report</h3><ul>' + "".join(f"<li>{i}</li>" for i in items)
            + "</ul><p>Definitions: the project's docs/ folder (docs/README.md; each item above names its page and "
            "section), its README.md, section “Reading the report”, and the docstrings of "
            "<code>spectral_edge_fast.analysis.spectrum</code>, <code>.stability</code> (<code>adiabatic</code>) "
            "and <code>.events</code>.</p></div>")


def _img(path: Optional[str]) -> str:
    if not path:
        return ""
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    return f'<img alt="{html.escape(os.path.basename(path))}" src="data:image/png;base64,{data}">'


def _table(rows, header=None) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return "" if x is None else str(x)


def run_name(run_dir: str, meta: dict) -> str:
    """The run's name: ``name`` or ``run_name`` from meta's ``info`` (see
    ``SpectralMonitor.annotate``), else its directory's name; for the
    callbacks' ``spectral-edge`` folder, the two folders above it
    (``lightning_logs/version_0``, ``outputs/my-finetune``)."""
    info = meta.get("info") or {}
    for key in ("name", "run_name"):
        if info.get(key):
            return str(info[key])
    parts = [p for p in os.path.abspath(run_dir).split(os.sep) if p]
    if parts and parts[-1] == INTEGRATION_DIR and len(parts) > 1:
        return "/".join(parts[-3:-1])
    return parts[-1] if parts else run_dir


def run_summary(run: dict) -> Dict[str, object]:
    """Headline numbers of one run, from its records."""
    recs, meta = run["analysis"], run["meta"]
    R = _series(recs, "R")
    ks = [r["k_star"] for r in recs if r.get("k_star") is not None]
    out: Dict[str, object] = {
        "parameters": meta.get("numel"),
        "window W": meta.get("window"),
        "stride (every)": meta.get("every"),
        "analyses": len(recs),
        "last step": recs[-1]["step"] if recs else None,
    }
    if ks:
        out["most common k*"] = max(set(ks), key=ks.count)
    if np.isfinite(R).any():
        out["median R"] = float(np.nanmedian(R))
        out["max R (step)"] = f"{np.nanmax(R):.3g} ({recs[int(np.nanargmax(R))]['step']})"
    sketched = [r["sketch"] for r in recs if r.get("sketch")]
    if sketched:  # the spectra are estimates: how far off their Gram may be
        out["sketch m (groups kept exactly)"] = f"{sketched[-1]['m']} ({sketched[-1]['exact_groups']})"
        err = [(r["sketch"]["rel_err"], r["step"]) for r in recs if (r.get("sketch") or {}).get("rel_err") is not None]
        if err:
            worst = max(err)
            out["sketch rel_err of G: median, max (step)"] = (f"{np.median([e for e, _ in err]):.3g}, "
                                                               f"{worst[0]:.3g} ({worst[1]})")
    for name, step in _milestones(meta).items():
        out[name] = step
    for k, v in (meta.get("info") or {}).items():
        if k != "milestones" and isinstance(v, (int, float, str)):
            out[k] = v
    return out


_IMAGES = ("gap.png", "sigmas.png", "groups.png", "probes.png", "training.png")


def _run_section(run: dict, images: Dict[str, Optional[str]]) -> str:
    recs = run["analysis"]
    events = [e for r in recs for e in r.get("events", ())]
    parts = [_table(run_summary(run).items())]
    parts += [_img(images.get(name)) for name in _IMAGES]
    _, left_out = metric_panels(run["metrics"])
    if left_out:
        parts.append(f'<p class="note">Not plotted (in {FILES["metrics"]}.jsonl): {html.escape(", ".join(left_out))}.</p>')
    main = [e for e in events if not e.get("group")]
    parts.append(f"<h3>Events of the whole model ({len(main)})</h3>")
    parts.append(_table([(e["step"], e["kind"], e.get("value"), e.get("previous")) for e in main],
                        ("step", "event", "value (R, or the new k*)", "previous k*")) if main else "<p>none</p>")
    grouped = [e for e in events if e.get("group") and e["kind"] != "k_star_shift"]
    parts.append(f"<h3>Per-group gap collapses and openings ({len(grouped)})</h3>")
    parts.append(_table([(e["step"], e["group"], e["kind"], e.get("value")) for e in grouped],
                        ("step", "group", "event", "R")) if grouped else "<p>none</p>")
    return "\n".join(parts)


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def _write_page(path: str, title: str, body: str) -> str:
    with atomic_write(path, encoding="utf-8") as f:  # as the page declares, whatever the locale
        f.write(_page(title, body))
    return path


def _is_run(path: str) -> bool:
    return os.path.exists(os.path.join(path, FILES["analysis"] + ".jsonl"))


def _plot_run(run_dir: str, run: dict) -> Dict[str, Optional[str]]:
    recs, meta = run["analysis"], run["meta"]
    figures = {
        "gap.png": gap_figure(recs, meta),
        "sigmas.png": sigmas_figure(recs, meta),
        "groups.png": groups_figure(recs, meta),
        "probes.png": probes_figure(recs, meta),
        "training.png": training_figure(run["metrics"], recs, meta) if run["metrics"] else None,
    }
    return {name: _save(fig, os.path.join(run_dir, name)) if fig is not None else None for name, fig in figures.items()}


def _read(run_dir: str) -> dict:
    run = read_records(run_dir, detail=False)
    if not run["analysis"]:
        raise ValueError(f"{run_dir} holds no analysis records ({FILES['analysis']}.jsonl is missing or empty)")
    return run


def render_run(run_dir: str) -> str:
    """The plots and report.html of one run directory; returns the report's
    path. Every file is replaced atomically: a crash leaves the previous one."""
    run = _read(run_dir)
    images = _plot_run(run_dir, run)
    title = f"Spectral-edge report: {run_name(run_dir, run['meta'])}"
    return _write_page(os.path.join(run_dir, "report.html"), title, guide_html() + _run_section(run, images))


def render(run_dir: str) -> str:
    """Write the report of ``run_dir`` (a run, or a directory of runs) and
    return the path of its report.html. In a directory of runs, a run without
    analysis records is left out with a warning."""
    if _is_run(run_dir):
        return render_run(run_dir)
    subdirs = sorted(d for d in os.listdir(run_dir) if _is_run(os.path.join(run_dir, d))) if os.path.isdir(run_dir) else []
    if not subdirs:
        raise FileNotFoundError(f"no run in {run_dir}: expected {FILES['analysis']}.jsonl there or in its subdirectories")
    runs = {}
    sections = []
    for d in subdirs:
        path = os.path.join(run_dir, d)
        run = read_records(path, detail=False)
        if not run["analysis"]:  # e.g. killed before its first analysis: the other runs still get their report
            warnings.warn(f"{path}: left out of the report, it holds no analysis records "
                          f"({FILES['analysis']}.jsonl is empty)", RuntimeWarning, stacklevel=2)
            continue
        runs[d] = run
        images = _plot_run(path, run)
        title = f"Spectral-edge report: {run_name(path, run['meta'])}"
        _write_page(os.path.join(path, "report.html"), title, guide_html() + _run_section(run, images))
        name = (run["meta"].get("info") or {}).get("name")
        heading = f"Run {d}" + (f": {name}" if name else "")
        sections.append(f"<h2>{html.escape(heading)}</h2>\n" + _run_section(run, images))
    if not runs:
        raise ValueError(f"no run in {run_dir} holds analysis records ({FILES['analysis']}.jsonl empty in each)")
    compare = _save(comparison_figure(runs), os.path.join(run_dir, "compare.png"))
    body = guide_html() + "<h2>Comparison</h2>" + _img(compare) + "\n".join(sections)
    title = f"Spectral-edge report: {os.path.basename(os.path.abspath(run_dir))}"
    return _write_page(os.path.join(run_dir, "report.html"), title, body)


__all__ = ["guide_html", "metric_series", "render", "render_run", "run_name", "run_summary"]
