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
from collections import Counter
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from .analysis import (
    EigenTracker,
    SlideBatch,
    adiabatic,
    analyze_slides,
    collapse_order,
    eigen_flow,
    events,
    loss_decomposition,
    spectrum,
    stability,
    window_overlaps,
)
from .analysis._common import ENGINE_EPS  # the records' zero tolerance unit (the analysis default), for callers
from .distributed import is_writer
from .sinks import Sink, default_log_dir, make_sinks
from .window import GramState, GramWindow

STATE_VERSION = 1
# Analyses over which the adiabatic parameter's running median is taken.
A_MEDIAN_SPAN = 50
# Trailing analyses scanned for events at each analysis: bounds the cost of a
# long run; an event needs only a few records to be confirmed.
EVENT_SPAN = 500


def _lr_of(optimizer) -> Any:
    """The first parameter group's learning rate, without a host sync (a
    tensor learning rate is copied on its device and read at analysis time)."""
    lr = optimizer.param_groups[0].get("lr")
    return lr.detach().clone() if isinstance(lr, torch.Tensor) else lr


def _as_float(x) -> Optional[float]:
    if x is None:
        return None
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


def _nan_to_none(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


class SpectralMonitor:
    """Live spectral-edge diagnostics of a training run.

    Args:
        model_or_params: an ``nn.Module`` (its trainable parameters), tensors,
            or ``(name, tensor)`` pairs: what :class:`GramWindow` accepts.
        optimizer: when given, the monitor steps in its post-step hook and
            reads its learning rate; otherwise call :meth:`step` after each
            optimizer step.
        window: ``W``, updates in the window.
        every: stride ``s``: an update is ``theta_t - theta_{t-s}``.
        analyze_every: optimizer steps between analyses.
        groups: per-group Grams: "auto" (one per block), "tensor", None (one
            group) or a callable name -> group.
        storage_dtype: the window's ring dtype (float32 or bfloat16).
        sinks: sink names ("jsonl", "csv", "tensorboard", "wandb") or
            :class:`~spectral_edge_fast.sinks.Sink` objects; only rank 0
            writes in distributed runs.
        log_dir: directory of the run's files; default
            ``runs/spectral-edge/<date-time>``.
        process_group: the group over which parameters are sharded or
            replicated, passed to :class:`GramWindow`.

    Attributes:
        window: the :class:`GramWindow`.
        history: the analysis records (a list of dicts, as written to the sinks).
        metrics: the metric records given to :meth:`log`.
        steps: optimizer steps seen (the step() calls).
    """

    def __init__(
        self,
        model_or_params,
        optimizer: Optional[torch.optim.Optimizer] = None,
        window: int = 16,
        every: int = 1,
        analyze_every: int = 10,
        groups="auto",
        storage_dtype: torch.dtype = torch.float32,
        sinks=("jsonl",),
        log_dir: Optional[str] = None,
        process_group=None,
    ):
        if not isinstance(analyze_every, int) or analyze_every < 1:
            raise ValueError(f"analyze_every must be an integer >= 1, got {analyze_every!r}")
        self.window = GramWindow(
            model_or_params,
            window=window,
            every=every,
            groups=groups,
            storage_dtype=storage_dtype,
            process_group=process_group,
        )
        self.analyze_every = analyze_every
        self.optimizer = optimizer
        self.log_dir = log_dir or default_log_dir()
        self.is_writer = is_writer()
        self.sinks: List[Sink] = make_sinks(sinks, self.log_dir) if self.is_writer else []
        self.steps = 0
        self._history: List[dict] = []
        self.metrics: List[dict] = []
        self._info: Dict[str, Any] = {}
        self._seen_events: set = set()
        self._pending: Optional[tuple] = None  # (readback, step, lr) of a started analysis
        self._observed: Dict[str, tuple] = {}  # split -> (window count, projection)
        self._decomposition: Optional[dict] = None
        self._hook = optimizer.register_step_post_hook(self._on_optimizer_step) if optimizer is not None else None
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
            "backend": w.backend.name,
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
    def _on_optimizer_step(self, optimizer, args, kwargs) -> None:
        self.step()

    def step(self, lr: Optional[float] = None, step: Optional[int] = None) -> None:
        """Record one optimizer step (called by the optimizer hook when the
        monitor has an optimizer). ``lr`` overrides the learning rate used for
        the adiabatic parameter; ``step`` labels the records (default: steps
        counted by the monitor). Never waits for the device."""
        self.steps += 1
        label = self.steps if step is None else int(step)
        self.window.step()
        if self._pending is not None and self._pending[0].ready():
            self._finish()
        if self.steps % self.analyze_every == 0 and self.window.count > 0:
            if self._pending is not None:  # the previous copy has not landed yet: take it now
                self._finish()
            if lr is None and self.optimizer is not None:
                lr = _lr_of(self.optimizer)
            self._pending = (self.window.readback(), label, lr)

    def flush(self) -> None:
        """Finish a started analysis and flush the sinks (waits for the device)."""
        if self._pending is not None:
            self._finish()
        for sink in self.sinks:
            sink.flush()

    def _finish(self) -> None:
        readback, step, lr = self._pending
        self._pending = None
        self._record(self.analyze(readback.wait(), step=step, lr=_as_float(lr)))

    # -- analysis -----------------------------------------------------------
    def analyze(self, state: GramState, step: int, lr: Optional[float] = None) -> dict:
        """The analysis record of one window state (host side, float64 NumPy).

        The global window and every group go through ``analyze_slides`` as one
        stack, each window eigensolved once (or, when consecutive records are
        consecutive slides, ``analyze_every == every``, updated from the last
        record's by an ``EigenTracker``), all with the engine's float32 zero
        tolerance. The global window's full results come from the per-group
        functions given those spectra."""
        ext = state.extended_grams()
        if len(state.groups) > 1:
            ext = np.concatenate((ext.sum(axis=0, keepdims=True), ext))
        tracker = None
        if self.analyze_every == self.window.every:  # each record is one slide after the last
            tracker = self.__dict__.get("_tracker") or EigenTracker()
            self._tracker = tracker
        batch = analyze_slides(ext, tracker=tracker)
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
            past = [r["A"] for r in self._history[-A_MEDIAN_SPAN:] if r["A"] is not None]
            adi = adiabatic(spec, dcf, lr, history=past)
            record["A"] = _nan_to_none(adi.A)
            record["adiabatic"] = adi.to_dict()
        if n >= 2:
            record["flow"] = eigen_flow(E, previous, spec).to_dict()
            record["overlaps"] = window_overlaps(E, previous, spec).to_dict()
        if len(state.groups) > 1:
            record["groups"] = self._group_summaries(state.groups, batch, ext)
        if self._decomposition is not None:
            record["decomposition"], self._decomposition = self._decomposition, None
        return record

    @staticmethod
    def _group_summaries(groups: List[str], batch: SlideBatch, ext: np.ndarray) -> Dict[str, dict]:
        """Per-group summaries from the batch of ``ext`` = [global, groups...]."""
        traces = np.trace(ext[:, 1:, 1:], axis1=1, axis2=2)
        total = float(traces[0])
        out = {}
        for g, name in enumerate(groups, start=1):
            out[name] = {
                "k_star": int(batch.k_star[g]) or None,
                "R": _nan_to_none(float(batch.gap_ratio[g])),
                "gap": _nan_to_none(float(batch.gap[g])),
                "sigma_1": _nan_to_none(float(batch.sigmas[g, 0])),  # NaN: no finite row
                "share": float(traces[g]) / total if total > 0 else None,
                "delta_c_fro": float(batch.delta_c_fro[g]),
            }
        return out

    def _record(self, record: dict) -> None:
        self._history.append(record)
        record["events"] = self._new_events()
        for sink in self.sinks:
            sink.write("analysis", record)

    def _new_events(self) -> List[dict]:
        """Events of the whole model and of each group that the history shows
        and no earlier record reported (each is reported once, in the record
        of the analysis that confirmed it; ``step`` dates its start)."""
        recent = self._history[-EVENT_SPAN:]
        found = [(None, e) for e in events([{"step": r["step"], **r["spectrum"]} for r in recent])]
        if "groups" in recent[-1]:
            per_group = {
                name: [{"step": r["step"], "gap_ratio": r["groups"][name]["R"], "k_star": r["groups"][name]["k_star"]}
                       for r in recent]
                for name in recent[-1]["groups"]
            }
            found += [(g, e) for g, evs in collapse_order(per_group).events.items() for e in evs]
        new = []
        for group, event in found:
            key = (event.kind, event.step, group)
            if key not in self._seen_events:
                self._seen_events.add(key)
                e = {k: v for k, v in event.to_dict().items() if k != "index"}
                new.append(e if group is None else {**e, "group": group})
        return new

    # -- gradients and metrics -----------------------------------------------
    def observe_gradients(self, split: str = "train", grads=None) -> np.ndarray:
        """Project a gradient onto the window, ``p = X g``, for the loss
        decomposition (MATH.md §6). Call it after a backward pass (the
        gradients are read from the parameters' ``.grad``, or pass ``grads``
        shaped like the parameters). Once both a "train" and a "val" gradient
        are projected on the same window, the next analysis record carries the
        decomposition. An occasional call: it reads W numbers from the device.

        Returns the projection (length n, oldest update first)."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if grads is None:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.window.layout.params]
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
        lr = _as_float(_lr_of(self.optimizer)) if self.optimizer is not None else math.nan
        train, val = self._observed["train"][1], self._observed["val"][1]
        dec = loss_decomposition(G, train, val, stab, lr, spectrum=spec)
        return {"step": self.steps, **dec.to_dict()}

    def log(self, metrics: Dict[str, Any], step: Optional[int] = None) -> None:
        """Record training metrics (loss, accuracy...) beside the spectral
        records, for the sinks and the report. Values must be numbers."""
        record = {"step": self.steps if step is None else int(step)}
        record.update({k: _as_float(v) for k, v in metrics.items()})
        self.metrics.append(record)
        for sink in self.sinks:
            sink.write("metrics", record)

    # -- results ------------------------------------------------------------
    @property
    def history(self) -> List[dict]:
        """The analysis records, oldest first (finishes a started analysis)."""
        if self._pending is not None:
            self._finish()
        return self._history

    @property
    def latest(self) -> Optional[dict]:
        """The newest finished analysis record, without waiting for the device."""
        return self._history[-1] if self._history else None

    def events(self) -> List[dict]:
        """Every event reported so far, oldest first."""
        return [e for r in self.history for e in r["events"]]

    def summary(self) -> dict:
        """A short account of the run so far: the last analysis, the usual
        gap position, the range of the gap ratio, and the events."""
        hist = self.history
        out: Dict[str, Any] = {"steps": self.steps, "analyses": len(hist), "window": self.window.window,
                               "every": self.window.every, "numel": self.window.numel}
        ks = [r["k_star"] for r in hist if r["k_star"] is not None]
        Rs = [(r["R"], r["step"]) for r in hist if r["R"] is not None]
        if hist:
            last = hist[-1]
            out["last"] = {k: last[k] for k in ("step", "k_star", "R", "gap", "A")}
        if ks:
            out["k_star_mode"] = Counter(ks).most_common(1)[0][0]
        if Rs:
            values = np.array([r for r, _ in Rs])
            out["R_median"] = float(np.median(values))
            out["R_max"], out["R_max_step"] = max(Rs)
        out["events"] = self.events()
        return out

    # -- lifecycle ---------------------------------------------------------------
    def detach(self) -> None:
        """Stop listening to the optimizer (records and files stay)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def close(self) -> None:
        """Detach, finish a started analysis and close the sinks."""
        self.detach()
        self.flush()
        for sink in self.sinks:
            sink.close()

    def __enter__(self) -> "SpectralMonitor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- checkpointing -------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue exactly: the window,
        the step counter, the records. Finishes a started analysis first."""
        return {
            "version": STATE_VERSION,
            "window": self.window.state_dict(),
            "analyze_every": self.analyze_every,
            "steps": self.steps,
            "history": list(self.history),
            "metrics": list(self.metrics),
            "info": dict(self._info),
            "observed": {split: (count, p.tolist()) for split, (count, p) in self._observed.items()},
            "decomposition": self._decomposition,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a monitor saved by :meth:`state_dict`; its files are
        rewritten to hold exactly the restored records."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"monitor state version {state.get('version')!r} is not {STATE_VERSION}")
        if state["analyze_every"] != self.analyze_every:
            raise ValueError(
                f"the checkpoint analysed every {state['analyze_every']} steps, this monitor every {self.analyze_every}"
            )
        self.window.load_state_dict(state["window"])
        self.steps = int(state["steps"])
        self._history = list(state["history"])
        self.metrics = list(state["metrics"])
        self._info = dict(state["info"])
        self._pending = None
        self._observed = {split: (count, np.asarray(p)) for split, (count, p) in state["observed"].items()}
        self._decomposition = state["decomposition"]
        self._seen_events = {(e.get("kind"), e.get("step"), e.get("group")) for r in self._history for e in r["events"]}
        self._write_meta()
        for sink in self.sinks:
            sink.resume({"analysis": self._history, "metrics": self.metrics})

    def __repr__(self) -> str:
        w = self.window
        return (
            f"SpectralMonitor(P={w.numel}, window={w.window}, every={w.every}, analyze_every={self.analyze_every}, "
            f"groups={len(w.groups)}, steps={self.steps}, analyses={len(self._history)}, log_dir={self.log_dir!r})"
        )


__all__ = ["SpectralMonitor"]
