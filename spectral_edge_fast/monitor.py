"""SpectralMonitor: the spectral-edge diagnostics of a training run, live.

Attach it to a model and its optimizer; it keeps a :class:`GramWindow` of the
last ``window`` parameter updates on the parameters' device and, every
``analyze_every`` steps, analyses the window's Gram matrices on the host
(spectrum, stability, eigenvalue flow, adiabatic parameter, per-group
summaries, events) and writes one record to its sinks::

    monitor = SpectralMonitor(model, optimizer, log_dir="runs/exp1")
    for batch in data:
        loss = model(batch).loss
        loss.backward()
        optimizer.step()            # the monitor steps in the optimizer's post-hook
        optimizer.zero_grad()
        if step % 100 == 0:
            monitor.log({"loss": loss.item()}, step=step)
    monitor.close()
    print(monitor.summary())

The per-step path never waits for the device: the window's update and Gram
stay there. At an analysis step the monitor only *starts* a non-blocking copy
of the small Gram state into pinned host memory; it reads the copy at a later
step, once the copy has landed (or at the next analysis step, at the latest).
"""
from __future__ import annotations

import math
import warnings
import weakref
from collections import Counter
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from .analysis import (
    EigenTracker,
    adiabatic,
    analyze_slides,
    eigen_flow,
    loss_decomposition,
    spectrum,
    spectrum_batch,
    stability,
    window_overlaps,
)
from .analysis.events import EventStream
from .analysis.null import MONITOR_SAMPLES, gap_thresholds, null_max_ratio
from .analysis.spectrum import k_margin
from .analysis.weights import probe_plan, probe_results
from .analysis._common import ENGINE_EPS  # the records' zero tolerance unit (the analysis default), for callers
from .analysis._common import slide_norm
from . import config
from .config import MonitorOptions, resolve
from .distributed import is_writer
from .layout import FlatPart, _local, strip_wrappers
from .sinks import Sink, default_log_dir, make_sinks
from .window import GramState, GramWindow

STATE_VERSION = 4
# The run-long median of R in summary() is that of R rounded to this many
# significant digits: counts of the rounded values stay bounded where a list
# of every value would grow with the run.
R_MEDIAN_DIGITS = 4


def _lr_of(param_groups) -> Any:
    """The first parameter group's learning rate (None if it has none), of an
    optimizer's ``param_groups`` or of a saved state's, without a host sync (a
    tensor learning rate is copied on its device and read at analysis time)."""
    lr = param_groups[0].get("lr")
    return lr.detach().clone() if isinstance(lr, torch.Tensor) else lr


def _as_float(x) -> Optional[float]:
    if x is None:
        return None
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


def _nan_to_none(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def _counted_median(counts: Counter) -> float:
    """The median of values given as ``{value: count}``."""
    values, n = sorted(counts), sum(counts.values())

    def nth(i: int) -> float:
        for v in values:
            i -= counts[v]
            if i < 0:
                return v
        raise IndexError(i)

    return (nth((n - 1) // 2) + nth(n // 2)) / 2


def _step_traces(optimizer, params) -> tuple:
    """What an optimizer step leaves behind on the host: the optimizer's
    per-parameter state entries, the version counters of their tensors and of
    the parameters (bumped by every in-place update), and the mark an LR
    scheduler's wrapper of ``optimizer.step`` sets. Reads no tensor data."""
    versions = 0
    for entry in optimizer.state.values():
        versions += sum(v._version for v in entry.values() if isinstance(v, torch.Tensor))
    return (len(optimizer.state), versions, sum(p._version for p in params),
            bool(getattr(optimizer, "_opt_called", False)))


def _stepping(optimizer):
    """The optimizer whose step hooks fire on real steps. A wrapper without
    ``Optimizer``'s hooks (accelerate's ``AcceleratedOptimizer``) gives the
    optimizer it wraps, which it steps only on real steps: not on gradient
    accumulation's micro-steps, nor on steps a gradient scaler skips."""
    while not hasattr(optimizer, "_optimizer_step_post_hooks") and isinstance(
            getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    if not hasattr(optimizer, "register_step_post_hook") or not hasattr(optimizer, "_optimizer_step_post_hooks"):
        raise TypeError(f"SpectralMonitor cannot hook {type(optimizer).__name__}.step (no step post-hooks): pass the "
                        "torch.optim.Optimizer it wraps, or no optimizer and call monitor.step() after each step")
    return optimizer


def _check_steps_the_model(optimizer, model) -> None:
    """Refuse an optimizer whose step hook would fire before the model's
    parameters change: one that steps none of them (it holds copies, as
    DeepSpeed's ZeRO optimizers and fp32 master weights do, and writes them
    back after its step). Only for a module: given tensors are trusted."""
    if not isinstance(model, torch.nn.Module):
        return
    mine = {id(p) for p in model.parameters()}
    stepped = [p for group in optimizer.param_groups for p in group["params"]]
    if mine and stepped and not any(id(p) in mine for p in stepped):
        raise ValueError(f"SpectralMonitor: the optimizer ({type(optimizer).__module__}.{type(optimizer).__name__}) "
                         "steps none of the model's parameters but copies of them (DeepSpeed ZeRO, fp32 master "
                         "weights), so its step hook would read the parameters before they are updated: pass no "
                         "optimizer and call monitor.step() after the step that writes them (engine.step())")


def _qualname(obj) -> str:
    return f"{type(obj).__module__}.{type(obj).__name__}"


def _holds(owner, obj) -> bool:
    """Whether ``obj`` is one of ``owner``'s attributes, or in a list, tuple
    or dict that is one (an optimizer that steps through others holds them:
    ZeroRedundancyOptimizer, Lookahead, combined optimizers)."""
    for v in vars(owner).values():
        items = v.values() if isinstance(v, dict) else v if isinstance(v, (list, tuple)) else (v,)
        if any(x is obj for x in items):
            return True
    return False


def _watch_other_optimizers(monitor: "SpectralMonitor"):
    """A process-wide post-step hook that passes every other optimizer's step
    to ``monitor._on_other_step``. It holds the monitor weakly (the registry
    outlives monitors) and goes when the monitor does."""
    ref = weakref.ref(monitor)

    @torch.compiler.disable  # host bookkeeping, as _on_optimizer_step
    def hook(optimizer, args, kwargs) -> None:
        mon = ref()
        if mon is not None and optimizer is not mon._stepping:
            mon._on_other_step(optimizer)

    handle = register_optimizer_step_post_hook(hook)
    weakref.finalize(monitor, handle.remove)
    return handle


def _head_counts(model: torch.nn.Module) -> Dict[str, int]:
    """Module name (without wrapper prefixes) -> its number of attention heads:
    ``num_heads`` (``nn.MultiheadAttention``) or ``config.num_attention_heads``
    (Hugging Face)."""
    out = {}
    for name, module in model.named_modules():
        heads = getattr(module, "num_heads", getattr(getattr(module, "config", None), "num_attention_heads", None))
        if isinstance(heads, int):
            out[name] = out[strip_wrappers(name)] = heads
    return out


class _ProbeReader:
    """The weights that the probes read (docs/math.md#weight-probes): copied
    to the host at each analysis step, on a GPU without waiting (into pinned
    memory, before the Gram's readback, whose event then covers them), and
    analysed with the record. The buffers and their NumPy views are made
    once, here: the step only starts copies."""

    def __init__(self, layout, probes, model):
        heads = _head_counts(model) if isinstance(model, torch.nn.Module) else None
        self.plan = probe_plan(probes, dict(zip(layout.names, layout.full_shapes)), heads)
        self._layout = layout
        self._index = [layout.names.index(name) for name in self.plan.params]
        for i in self._index:
            if _local(layout.params[i])[1]:
                kind = ("an FSDP1 or DeepSpeed ZeRO-3 shard" if isinstance(layout.params[i], FlatPart) else
                        "a DTensor with a Shard placement")
                raise ValueError(f"probes: parameter {layout.names[i]!r} is sharded across ranks ({kind}); its spectrum needs the whole matrix, which the monitor does not "
                                 "gather: leave it out of probes, or gather it yourself and call weight_spectrum")
        pin = layout.device.type == "cuda"
        # float32 (float64 for float64 weights): NumPy has no bfloat16
        self._buffers = [torch.empty(layout.full_shapes[i], pin_memory=pin, dtype=torch.float64
                                     if layout.dtypes[i] == torch.float64 else torch.float32) for i in self._index]
        self._arrays = dict(zip(self.plan.params, (b.numpy() for b in self._buffers)))

    def start(self) -> None:
        for buffer, i in zip(self._buffers, self._index):
            buffer.copy_(_local(self._layout.params[i])[0].detach(), non_blocking=True)

    def results(self) -> tuple:
        """``(probes, attention)`` of the weights copied last."""
        return probe_results(self.plan, self._arrays)


class SpectralMonitor:
    """Live spectral-edge diagnostics of a training run.

    Args:
        model_or_params: an ``nn.Module`` (its parameters trainable now: one
            unfrozen later is named in a warning at the next analysis),
            tensors, or ``(name, tensor)`` pairs: what :class:`GramWindow`
            accepts.
        optimizer: when given, the monitor steps in its post-step hook and
            reads its learning rate (the first parameter group's); otherwise
            call :meth:`step` after each optimizer step. accelerate's
            ``AcceleratedOptimizer`` is followed through the optimizer it
            wraps, so only real steps count. Another optimizer that steps the
            monitored parameters is warned about at its first step (see
            :meth:`attach`). The window's snapshot is taken again just before
            the optimizer's first step: weights loaded after the monitor was
            made are where training starts, not an update.
        options: a :class:`~spectral_edge_fast.config.MonitorOptions` (or a
            ``WindowOptions``: its fields are taken); its fields may also be
            given, or overridden, as keywords:
        window: ``W``, updates in the window.
        every: stride ``s``: an update is ``theta_t - theta_{t-s}``.
        analyze_every: optimizer steps between analyses.
        groups: per-group Grams: "auto" (one per block), "tensor", None (one
            group) or a callable name -> group.
        storage_dtype: the window's ring dtype (float32 or bfloat16).
        sketch: None (exact), or ``m``: the window keeps each group's update
            sketched to ``m`` numbers (docs/engine.md#sketch-mode); each
            record then carries ``"sketch"``: ``m``, the groups kept exactly
            and ``rel_err``, the estimated relative error of the Gram.
        backend: the window's backend, "auto" or a name from
            :func:`spectral_edge_fast.backends`.
        sinks: sink names ("jsonl", "csv", "tensorboard", "wandb") or
            :class:`~spectral_edge_fast.sinks.Sink` objects; only rank 0
            writes in distributed runs.
        log_dir: directory of the run's files; default: a new directory
            ``runs/spectral-edge/<date-time>`` (``-1``, ``-2``... appended when
            another run took that name), made by the writing rank when it
            has sinks (otherwise None).
        history: analysis records, metric records and events kept in memory
            (the last ones of each; at least ``A_MEDIAN_SPAN``, the records
            that the adiabatic median reads), or None to keep all of them
            (memory then grows with the run). The sinks receive every record, and
            :meth:`summary` describes the whole run either way.
        probes: weight-matrix probes logged in each record (``"probes"``,
            ``"attention"``; docs/math.md#weight-probes): None, "attention"
            (every attention module: ``nn.MultiheadAttention``'s fused
            ``in_proj_weight``, or ``q_proj``/``k_proj`` weights), or fnmatch
            patterns of 2-D parameter names; a pattern that matches nothing,
            or a sharded parameter, raises here.
        gap_open_above, gap_close_below, k_star_margin: the event rule
            (docs/math.md#events): the gap thresholds on ``R`` (numbers, or
            "null" for quantiles of the null at the run's ``W`` and ``P``)
            and the margin a ``k*`` needs to count in a shift.
        process_group: the group over which parameters are sharded or
            replicated, passed to :class:`GramWindow`.

    Attributes:
        options: the resolved :class:`~spectral_edge_fast.config.MonitorOptions`.
        window: the :class:`GramWindow`.
        history: the last ``history`` analysis records (a list of dicts, as
            written to the sinks).
        metrics: the last ``history`` metric records given to :meth:`log`.
        steps: optimizer steps seen (the step() calls).
    """

    def __init__(
        self,
        model_or_params,
        optimizer: Optional[torch.optim.Optimizer] = None,
        options: Optional[MonitorOptions] = None,
        *,
        process_group=None,
        **overrides,
    ):
        self.options = options = resolve(MonitorOptions, options, overrides, "SpectralMonitor")
        self.history_limit = options.history
        self.window = GramWindow(model_or_params, options, process_group=process_group)
        self._probes = _ProbeReader(self.window.layout, options.probes, model_or_params) if options.probes else None
        self.analyze_every = options.analyze_every
        sinks, log_dir = options.sinks, options.log_dir
        self.is_writer = is_writer()
        self.log_dir = log_dir or (default_log_dir() if self.is_writer and sinks else None)
        self.sinks: List[Sink] = make_sinks(sinks, self.log_dir) if self.is_writer else []
        self.steps = 0
        self._history: List[dict] = []
        self.metrics: List[dict] = []
        self._events: List[dict] = []
        # Run-long counts and aggregates: summary() describes the whole run
        # while only the last `history` records stay in memory.
        self._totals = {"analysis": 0, "metrics": 0, "events": 0}
        self._k_counts: Counter = Counter()
        self._R_counts: Counter = Counter()
        self._R_max: Optional[tuple] = None  # (R, step)
        self._min_count = 1  # updates an analysis needs: W + 1 while refilling after a small-state resume
        self._info: Dict[str, Any] = {}
        # Event detection, one streaming detector per series (None: the
        # model, else a group): events span the whole run at O(groups) a record.
        self._event_streams: Dict[Optional[str], EventStream] = {}
        self._pending: Optional[tuple] = None  # (readback, step, lr) of a started analysis
        self._observed: Dict[str, tuple] = {}  # split -> (window count, projection)
        self._decomposition: Optional[dict] = None
        self._module = model_or_params if isinstance(model_or_params, torch.nn.Module) else None
        # The names of the module's parameters that the window holds: one unfrozen later is not (_check_unfrozen).
        self._trainable = None if self._module is None else frozenset(
            strip_wrappers(n) for n, p in self._module.named_parameters() if p.requires_grad)
        self.optimizer = self._stepping = self._hook = self._first = self._others = self._traces = None
        if optimizer is not None:
            self.attach(optimizer)
        self._write_meta()

    # -- configuration -------------------------------------------------------
    @property
    def meta(self) -> dict:
        """The monitor's configuration plus the run's annotations (meta.json)."""
        w = self.window
        return {
            "window": w.window,
            "every": w.every,
            "analyze_every": self.analyze_every,
            "groups": w.groups,
            "numel": w.numel,
            "storage_dtype": str(w.storage_dtype).replace("torch.", ""),
            "sketch": w.sketch,
            "backend": w.backend.name,
            "probes": None if self.options.probes is None else list(self.options.probes),
            # the rule, and the dimension its "null" thresholds are taken at (the report redraws them)
            "events": {**{k: getattr(self.options, k) for k in ("gap_open_above", "gap_close_below", "k_star_margin")},
                       "null_P": sum(w.dims)},
            "info": self._info,
        }

    def annotate(self, **info) -> None:
        """Add facts about the run to ``meta.json`` (a config, a name, or
        ``milestones={"grokking": 2600}``, which the report marks on its plots)."""
        self._info.update(info)
        self._write_meta()

    def _write_meta(self) -> None:
        for sink in self.sinks:
            sink.write_meta(self.meta)

    # -- the per-step path ------------------------------------------------------
    # Never traced: under a compiled optimizer step the monitor's host
    # bookkeeping (counters, readbacks, analysis) runs eagerly.
    @torch.compiler.disable
    def _on_optimizer_step(self, optimizer, args, kwargs) -> None:
        if self._first is not None:  # removed here: not while the pre-hooks are being called
            self._first.remove()
            self._first = None
        self._step(None, None)

    @torch.compiler.disable
    def _on_first_step(self, optimizer, args, kwargs) -> None:
        """Before the optimizer's first step: the window's snapshot becomes
        the parameters that step starts from, so weights loaded or set since
        the monitor was made are no update."""
        if self.steps == 0:  # not resumed from a state meanwhile
            self.window.reset()

    def _on_other_step(self, optimizer) -> None:
        """Another optimizer stepped (the process-wide hook, which skips the
        hooked one): warn once when it moved monitored parameters outside the
        hooked step, whose updates the window then sees late or never. Each
        optimizer is judged once."""
        if self._others_seen is None:  # warned
            return
        if optimizer not in self._others_seen:
            self._others_seen[optimizer] = self._other_verdict(optimizer)
        verdict = self._others_seen[optimizer]
        if verdict is not None:
            self._others_seen = None  # the hook stays: it cannot be removed while the hooks are being called
            warnings.warn(verdict, RuntimeWarning, stacklevel=5)  # the caller of the optimizer's step

    def _other_verdict(self, optimizer) -> Optional[str]:
        monitored = self._module.parameters() if self._module is not None else self.window.layout.params
        mine = {id(p) for p in monitored}
        if not any(id(p) in mine for group in optimizer.param_groups for p in group["params"]):
            return None  # other parameters
        if _holds(self._stepping, optimizer):
            return None  # the hooked optimizer steps through it: part of the hooked step
        if _holds(optimizer, self._stepping):
            return (f"SpectralMonitor: {_qualname(optimizer)} holds the optimizer the monitor was given "
                    f"({_qualname(self._stepping)}) and steps through it: what it changes in the parameters after "
                    "that optimizer's step reaches the window a step late; attach the monitor to the optimizer "
                    "whose step is called: monitor.attach(that optimizer)")
        return (f"SpectralMonitor: another optimizer ({_qualname(optimizer)}) stepped the monitored parameters, but "
                f"the monitor steps in the post-step hook of the one it was given ({_qualname(self._stepping)}), so "
                "it saw none of that step (an optimizer made again) or saw it a step late (several optimizers): "
                "after making the optimizer again, call monitor.attach(optimizer); with several optimizers over "
                "parts of the model, pass no optimizer and call monitor.step() once after all of them have stepped")

    def step(self, lr: Optional[float] = None, step: Optional[int] = None) -> None:
        """Record one optimizer step, for a monitor without an optimizer (with
        one, its post-step hook records each step, and a call here raises).
        ``lr`` overrides the learning rate used for the adiabatic parameter;
        ``step`` labels the records (default: steps counted by the monitor).
        Never waits for the device."""
        if self._hook is not None:
            raise ValueError(f"monitor.step() called on a monitor that steps in the post-step hook of "
                             f"{_qualname(self._stepping)}: each optimizer step would count twice, once as a zero "
                             "update; leave the stepping to the hook, or call monitor.detach() first")
        self._step(lr, step)

    def _step(self, lr: Optional[float], step: Optional[int]) -> None:
        self.steps += 1
        label = self.steps if step is None else int(step)
        self.window.step(at=label)
        if self._pending is not None and self._pending[0].ready():
            self._finish()
        if self.steps % self.analyze_every == 0 and self.window.count >= self._min_count:
            if self._pending is not None:  # the previous copy has not landed yet: take it now
                self._finish()
            if lr is None and self.optimizer is not None:
                lr = _lr_of(self.optimizer.param_groups)
            if self._probes is not None:
                self._probes.start()
            self._pending = (self.window.readback(), label, lr)

    def flush(self) -> None:
        """Finish a started analysis and flush the sinks (waits for the device)."""
        self._check_hooked()
        if self._pending is not None:
            self._finish()
        for sink in self.sinks:
            sink.flush()

    def _finish(self) -> None:
        readback, step, lr = self._pending
        self._pending = None
        self._check_unfrozen()
        record = self.analyze(readback.wait(), step=step, lr=_as_float(lr))
        if self._probes is not None:
            record["probes"], attention = self._probes.results()
            if attention:
                record["attention"] = attention
        self._record(record)

    def _check_unfrozen(self) -> None:
        """Warn once when a parameter of the module that was frozen when the
        monitor was made (or added since) requires a gradient: it is trained,
        but the window does not hold it. Host metadata, at analysis time."""
        if self._trainable is None:
            return
        new = [strip_wrappers(n) for n, p in self._module.named_parameters() if p.requires_grad]
        new = [n for n in new if n not in self._trainable]
        if new:
            self._trainable = None  # once
            shown = ", ".join(map(repr, new[:5]))
            shown += f" and {len(new) - 5} more" if len(new) > 5 else ""
            warnings.warn(
                f"SpectralMonitor: parameter {shown} requires a gradient but was frozen when the monitor was made "
                "(or was added since), so its updates are not in the window: make the monitor once the model "
                "trains every parameter it should watch, or over all of them from the start "
                "(SpectralMonitor(list(model.named_parameters()), ...))",
                RuntimeWarning,
                stacklevel=4,
            )

    # -- analysis -----------------------------------------------------------
    def analyze(self, state: GramState, step: int, lr: Optional[float] = None) -> dict:
        """The analysis record of one window state (host side, float64 NumPy).

        One decomposition per window, all with the engine's float32 zero
        tolerance. When consecutive records are consecutive slides
        (``analyze_every == every``), the global window and every group go
        through ``analyze_slides`` as one stack with an ``EigenTracker``, which
        updates the last record's decompositions instead of eigensolving;
        otherwise ``analyze_slides`` eigensolves the global window's two and
        ``spectrum_batch`` gives the groups' spectra from eigenvalues alone.
        The global window's full results come from the per-group functions
        given those decompositions."""
        ext = state.extended_grams()
        if len(state.groups) > 1:
            ext = np.concatenate((ext.sum(axis=0, keepdims=True), ext))
        if self.analyze_every == self.window.every:  # each record is one slide after the last
            tracker = self.__dict__.get("_tracker") or EigenTracker()
            self._tracker = tracker
            batch = groups = analyze_slides(ext, tracker=tracker)
        else:
            batch = analyze_slides(ext[:1])
            groups = spectrum_batch(ext[1:, 1:, 1:]) if len(ext) > 1 else None
        n, E = state.n, ext[0]
        if batch.fallback[0]:  # a non-finite row: the spectrum of the finite rows, no flow or overlaps
            spec, previous = spectrum(E[1:, 1:]), None
        else:
            spec = spectrum(E[1:, 1:], eigen=(batch.current.values[0], batch.current.vectors[0]))
            previous = spectrum(E[:n, :n], eigen=(batch.previous.values[0], batch.previous.vectors[0]))
        dcf = float(batch.delta_c_fro[0])
        stab = stability(spec, dcf)
        record: Dict[str, Any] = {
            "step": int(step),
            "count": state.count,
            "n": state.n,
            "lr": lr,
            "k_star": spec.k_star,
            "R": _nan_to_none(spec.gap_ratio),
            "k_margin": _nan_to_none(spec.k_margin),
            "R_pvalue": self._R_pvalue(spec),
            "gap": _nan_to_none(spec.gap),
            "sigmas": spec.sigmas.tolist(),
            "alpha": np.asarray(stab.alpha).tolist(),
            "delta_c_fro": dcf,
            "A": None,
            "status": spec.status,
            "spectrum": spec.to_dict(),
            "stability": stab.to_dict(),
        }
        if lr is not None:
            past = [r["A"] for r in self._history[-config.A_MEDIAN_SPAN:] if r["A"] is not None]
            adi = adiabatic(spec, dcf, lr, history=past)
            record["A"] = _nan_to_none(adi.A)
            record["adiabatic"] = adi.to_dict()
        if n >= 2:
            record["flow"] = eigen_flow(E, previous, spec).to_dict()
            record["overlaps"] = window_overlaps(E, previous, spec).to_dict()
        if len(state.groups) > 1:
            record["groups"] = self._group_summaries(state.groups, groups, ext)
        if self._decomposition is not None:
            record["decomposition"], self._decomposition = self._decomposition, None
        if state.sketch is not None:
            record["sketch"] = state.sketch_error()
        return record

    def _R_pvalue(self, spec) -> Optional[float]:
        """The p-value of R under the null at the run's W and P (the
        sketched row's length in sketch mode), for a full window of full rank
        (the null's shape); None otherwise (a filling or rank-deficient
        window, an undefined R)."""
        W, P = self.window.window, sum(self.window.dims)
        if spec.n != W or spec.n_positive != min(W, P) or math.isnan(spec.gap_ratio):
            return None
        return null_max_ratio(W, P, MONITOR_SAMPLES).p_value(spec.gap_ratio)

    @staticmethod
    def _group_summaries(names: List[str], spectra, ext: np.ndarray) -> Dict[str, dict]:
        """Per-group summaries: ``ext`` = [global, groups...], ``spectra`` (a
        ``SlideBatch`` or ``SpectrumBatch``) holds the groups' spectra in its
        last rows."""
        first = len(spectra.k_star) - len(names)
        traces = np.trace(ext[:, 1:, 1:], axis1=1, axis2=2)
        dcf = slide_norm(ext[:, -1, -1], ext[:, 0, 0], ext[:, 0, -1])
        total = float(traces[0])
        out = {}
        for i, name in enumerate(names):
            g = first + i
            out[name] = {
                "k_star": int(spectra.k_star[g]) or None,
                "R": _nan_to_none(float(spectra.gap_ratio[g])),
                "k_margin": _nan_to_none(k_margin(spectra.sigmas[g], int(spectra.k_star[g]) or None)),
                "gap": _nan_to_none(float(spectra.gap[g])),
                "sigma_1": _nan_to_none(float(spectra.sigmas[g, 0])),  # NaN: no finite row
                "share": float(traces[i + 1]) / total if total > 0 else None,
                "delta_c_fro": float(dcf[i + 1]),
            }
        return out

    def _record(self, record: dict) -> None:
        self._history.append(record)
        record["events"] = self._new_events()
        self._account(record)
        for sink in self.sinks:
            sink.write("analysis", record)

    def _account(self, record: dict) -> None:
        """Fold a finished record into the run-long aggregates, then drop what
        the memory bound leaves out."""
        self._totals["analysis"] += 1
        self._totals["events"] += len(record["events"])
        self._events += record["events"]
        if record["k_star"] is not None:
            self._k_counts[record["k_star"]] += 1
        R = record["R"]
        if R is not None:
            self._R_counts[float(f"{R:.{R_MEDIAN_DIGITS}g}")] += 1
            if self._R_max is None or (R, record["step"]) > self._R_max:
                self._R_max = (R, record["step"])
        self._trim(self._history, self._events)

    def _trim(self, *lists: List[dict]) -> None:
        if self.history_limit is not None:
            for items in lists:
                if len(items) > self.history_limit:
                    del items[: len(items) - self.history_limit]

    def _new_events(self) -> List[dict]:
        """Events of the whole model and of each group that the newest record
        confirms: those ``events`` finds in the run's records up to it and not
        before it (each is reported once, in the record of the analysis that
        confirmed it; ``step`` dates its start), the model's first."""
        record = self._history[-1]
        series = [(None, {"step": record["step"], **record["spectrum"]})]
        series += [(name, {"step": record["step"], "gap_ratio": g["R"], "k_star": g["k_star"],
                           "k_margin": g.get("k_margin")}) for name, g in record.get("groups", {}).items()]
        new = []
        for group, values in series:
            stream = self._event_streams.get(group) or self._event_streams.setdefault(group, self._event_stream(group))
            for event in stream.push(values):
                e = {k: v for k, v in event.to_dict().items() if k != "index"}
                new.append(e if group is None else {**e, "group": group})
        return new

    def _event_stream(self, group: Optional[str]) -> EventStream:
        """A detector with the options' rule, "null" thresholds taken at the
        window's W and the row length (``GramWindow.dims``) of the model
        (group None) or the group."""
        o, P = self.options, sum(self.window.dims)
        if group is not None and "null" in (o.gap_open_above, o.gap_close_below):
            P = self.window.dims[self.window.groups.index(group)]
            P = max(P, 2)  # a one-number group has rank one and no defined R: any threshold will do
        open_above, close_below = gap_thresholds(o.gap_open_above, o.gap_close_below, self.window.window, P,
                                                 MONITOR_SAMPLES)
        return EventStream(open_above, close_below, k_star_margin=o.k_star_margin)

    # -- gradients and metrics -----------------------------------------------
    def observe_gradients(self, split: str = "train", grads=None) -> np.ndarray:
        """Project a gradient onto the window, ``p = X g``, for the loss
        decomposition (docs/math.md#loss-decomposition). Call it after a backward pass (the
        gradients are read from the parameters' ``.grad``, or pass ``grads``
        shaped like the parameters). Once both a "train" and a "val" gradient
        are projected on the same window, the next analysis record carries the
        decomposition. An occasional call: it reads W numbers from the device.

        Returns the projection (length n, oldest update first)."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if grads is None:
            params = self.window.layout.params
            if params and all(p.grad is None for p in params):
                # a parameter without a gradient had no part in the loss (zero), but none at all means they are
                # elsewhere: not computed yet, set to None by zero_grad, or kept by the optimizer (DeepSpeed ZeRO)
                raise ValueError("observe_gradients: no monitored parameter has a .grad: call it after backward() "
                                 "and before zero_grad(), or pass grads= (under DeepSpeed ZeRO the gradients are the "
                                 "optimizer's, not the parameters')")
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        p = self.window.project(grads)
        self._observed[split] = (self.window.count, p)
        counts = {c for c, _ in self._observed.values()}
        if len(self._observed) == 2 and len(counts) == 1:
            self._decomposition = self._decompose()
            self._observed.clear()
        return p

    def _decompose(self) -> dict:
        state = self.window.state()
        G = state.gram()
        spec = spectrum(G)
        stab = stability(spec, state.delta_c_fro())
        lr = _as_float(_lr_of(self.optimizer.param_groups)) if self.optimizer is not None else math.nan
        train, val = self._observed["train"][1], self._observed["val"][1]
        dec = loss_decomposition(G, train, val, stab, lr, spectrum=spec)
        return {"step": self.steps, **dec.to_dict()}

    def log(self, metrics: Dict[str, Any], step: Optional[int] = None) -> None:
        """Record training metrics (loss, accuracy...) beside the spectral
        records, for the sinks and the report. Values must be numbers."""
        self._check_hooked()
        record = {"step": self.steps if step is None else int(step)}
        record.update({k: _as_float(v) for k, v in metrics.items()})
        self.metrics.append(record)
        self._totals["metrics"] += 1
        self._trim(self.metrics)
        for sink in self.sinks:
            sink.write("metrics", record)

    # -- results ------------------------------------------------------------
    @property
    def history(self) -> List[dict]:
        """The last ``history`` analysis records, oldest first (finishes a
        started analysis)."""
        self._check_hooked()
        if self._pending is not None:
            self._finish()
        return self._history

    @property
    def latest(self) -> Optional[dict]:
        """The newest finished analysis record, without waiting for the device."""
        return self._history[-1] if self._history else None

    def events(self) -> List[dict]:
        """The events reported so far, oldest first: all of them, or the last
        ``history`` ones (``summary()["events_total"]`` counts all)."""
        self.history  # finishes a started analysis
        return list(self._events)

    def summary(self) -> dict:
        """A short account of the whole run so far, records no longer in
        memory included: the last analysis, the most frequent gap position,
        the median (of R rounded to ``R_MEDIAN_DIGITS`` significant digits)
        and the maximum of the gap ratio, the events (see :meth:`events`) and
        their count."""
        hist = self.history
        out: Dict[str, Any] = {"steps": self.steps, "analyses": self._totals["analysis"], "window": self.window.window,
                               "every": self.window.every, "numel": self.window.numel}
        if hist:
            last = hist[-1]
            out["last"] = {k: last[k] for k in ("step", "k_star", "R", "gap", "A")}
        if self._k_counts:
            out["k_star_mode"] = self._k_counts.most_common(1)[0][0]
        if self._R_counts:
            out["R_median"] = _counted_median(self._R_counts)
            out["R_max"], out["R_max_step"] = self._R_max
        out["events"] = self.events()
        out["events_total"] = self._totals["events"]
        return out

    def to_pandas(self):
        """The records in memory (the last ``history``) as pandas DataFrames,
        like :func:`spectral_edge_fast.read_run` gives them from the files
        (needs ``pandas``; finishes a started analysis)."""
        from .frames import frames

        return frames(self.history, self.metrics, self.meta)

    # -- lifecycle ---------------------------------------------------------------
    def attach(self, optimizer) -> None:
        """Step in ``optimizer``'s post-step hook from now on, in place of the
        optimizer given before, if any: one made again mid-run, whose steps
        the old hook never sees (the monitor warns at the first of them, as it
        does when another optimizer moves the monitored parameters), or the
        wrapper that steps the given one. The window goes on."""
        stepping = _stepping(optimizer)
        _check_steps_the_model(stepping, self._module)
        self.detach()
        self.optimizer, self._stepping = optimizer, stepping
        self._hook = stepping.register_step_post_hook(self._on_optimizer_step)
        self._first = stepping.register_step_pre_hook(self._on_first_step) if self.steps == 0 else None
        self._others, self._others_seen = _watch_other_optimizers(self), weakref.WeakKeyDictionary()
        self._traces, self._traced_state = _step_traces(optimizer, self.window.layout.params), optimizer.state

    def detach(self) -> None:
        """Stop listening to the optimizer (records and files stay)."""
        for handle in (self._hook, self._first, self._others):
            if handle is not None:
                handle.remove()
        self._hook = self._first = self._others = None

    def close(self) -> None:
        """Detach, finish a started analysis and close the sinks."""
        self._check_hooked()
        self.detach()
        self.flush()
        for sink in self.sinks:
            sink.close()

    def _check_hooked(self) -> None:
        """Warn once when the optimizer has stepped but its post-step hook never
        called the monitor (``optimizer.step`` replaced on the instance by a
        function that bypasses ``Optimizer.step``). Called at host-side
        moments (log, flush, history, close), never on the per-step path."""
        if self.steps or self._hook is None or self._traces is None:
            return
        traces = _step_traces(self.optimizer, self.window.layout.params)
        if self.optimizer.state is not self._traced_state:  # optimizer.load_state_dict: a new baseline, not a step
            self._traces, self._traced_state = traces, self.optimizer.state
        elif traces != self._traces:
            self._traces = None  # once
            warnings.warn(
                "SpectralMonitor has seen no optimizer step, but the optimizer's state or the parameters changed "
                "since it was attached. If optimizer.step was replaced on the instance by a function that bypasses "
                "Optimizer.step, its post-step hooks do not run: call monitor.detach(), then monitor.step() after "
                "each optimizer step, or keep optimizer.step the optimizer's own. (Weights loaded after the monitor "
                "was made change the parameters too: if that is all, nothing is wrong, and the first step's hook "
                "takes the window's snapshot again.)",
                RuntimeWarning,
                stacklevel=3,
            )

    def __enter__(self) -> "SpectralMonitor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- checkpointing -------------------------------------------------------
    def state_dict(self, exact: bool = True) -> dict:
        """The monitor's state for a checkpoint (finishes a started analysis
        first). Neither form grows with the length of the run.

        ``exact=True``: everything a resumed run needs to continue exactly,
        the window's ring and snapshot included, which are ``W + 1`` times the
        size of the monitored parameters. (When ``analyze_every == every``,
        the analysis's eigen-update restarts from an eigensolve, so records
        agree with an uninterrupted run's within rounding.)

        ``exact=False``: the small state: counters, the kept records, metrics
        and events, and the run-long aggregates of :meth:`summary`, without
        the window. A monitor that loads it starts its window afresh, with a
        snapshot of the parameters at load time, and analyses again once the
        window has refilled and slid once (``(W + 1) * every`` steps later);
        records keep their step labels, and from then on their window
        diagnostics equal those of an uninterrupted run. Gradient projections
        observed before saving are not kept."""
        history = list(self.history)
        return {
            "version": STATE_VERSION,
            "analyze_every": self.analyze_every,
            "steps": self.steps,
            "window": self.window.state_dict() if exact else None,
            "min_count": self._min_count,
            "history": history,
            "metrics": list(self.metrics),
            "events": list(self._events),
            "totals": dict(self._totals),
            "k_star_counts": dict(self._k_counts),
            "R_counts": dict(self._R_counts),
            "R_max": self._R_max,
            "event_streams": [[group, stream.state_dict()] for group, stream in self._event_streams.items()],
            "info": dict(self._info),
            "observed": {split: (count, p.tolist()) for split, (count, p) in self._observed.items()} if exact else {},
            "decomposition": self._decomposition,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a monitor saved by :meth:`state_dict`, exact or small. The
        file sinks keep the records written up to the checkpoint and drop
        what an interrupted run wrote after it."""
        if not isinstance(state, dict) or "analyze_every" not in state:
            if isinstance(state, dict) and "ring" in state:
                raise ValueError("this is a GramWindow state, not a SpectralMonitor state: "
                                 "load it with monitor.window.load_state_dict(state)")
            raise ValueError("not a SpectralMonitor state (SpectralMonitor.state_dict() makes one)")
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"monitor state version {state.get('version')!r} is not {STATE_VERSION}: it comes from "
                             "another version of spectral-edge-fast; start this monitor afresh, or restore the "
                             "window alone with monitor.window.load_state_dict(state['window'])")
        if state["analyze_every"] != self.analyze_every:
            raise ValueError(
                f"the checkpoint analysed every {state['analyze_every']} steps, this monitor every {self.analyze_every}"
            )
        if state["window"] is not None:
            self.window.load_state_dict(state["window"])
            self._min_count = int(state["min_count"])
            self._observed = {split: (count, np.asarray(p)) for split, (count, p) in state["observed"].items()}
        else:  # the small state: the window refills from here
            self.window.reset()
            self._min_count = self.window.window + 1
            self._observed = {}
        self.steps = int(state["steps"])
        self._history = list(state["history"])
        self.metrics = list(state["metrics"])
        self._events = list(state["events"])
        self._totals = dict(state["totals"])
        self._k_counts = Counter(state["k_star_counts"])
        self._R_counts = Counter(state["R_counts"])
        self._R_max = None if state["R_max"] is None else tuple(state["R_max"])
        self._event_streams = {}
        for group, stream_state in state["event_streams"]:
            self._event_streams[group] = stream = self._event_stream(group)
            try:
                stream.load_state_dict(stream_state)
            except ValueError as exc:
                raise ValueError(f"the checkpoint's events were found under another rule: make the monitor with the "
                                 f"checkpoint's gap_open_above, gap_close_below and k_star_margin ({exc})") from None
        self._trim(self._history, self.metrics, self._events)
        self._info = dict(state["info"])
        self._pending = None
        self._tracker = None  # the analysis's eigen-update must not continue from the replaced window
        self._decomposition = state["decomposition"]
        self._write_meta()
        records = {"analysis": self._history, "metrics": self.metrics}
        start = {kind: self._totals[kind] - len(recs) for kind, recs in records.items()}
        for sink in self.sinks:
            # Records before `start` are no longer in memory: the sink keeps them from its files.
            sink.resume(records, start) if any(start.values()) else sink.resume(records)

    def __repr__(self) -> str:
        w = self.window
        return (
            f"SpectralMonitor(P={w.numel}, window={w.window}, every={w.every}, analyze_every={self.analyze_every}, "
            f"groups={len(w.groups)}, steps={self.steps}, analyses={self._totals['analysis']}, log_dir={self.log_dir!r})"
        )


__all__ = ["SpectralMonitor"]
