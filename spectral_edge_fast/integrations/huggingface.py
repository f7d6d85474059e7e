"""Hugging Face ``Trainer``: a callback that drives a :class:`SpectralMonitor`.

    from spectral_edge_fast.integrations.huggingface import SpectralEdgeCallback

    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[SpectralEdgeCallback()])

The monitor steps at each optimizer step (``on_step_end``, labelled with
``state.global_step``; the learning rate is read from the optimizer), records
the Trainer's logs (loss, learning rate, eval metrics), saves its state as
``spectral_monitor_rank<i>.pt`` in every checkpoint directory and restores it when
training resumes from one, and writes the report at the end. The saved state
is the monitor's small one by default (counters, recent records, events: the
window refills after a resume); ``exact_resume=True`` adds the window's ring
and snapshot, ``W + 1`` times the model's size, for a resume that continues
exactly. Records go to
``log_dir`` (default: ``<output_dir>/spectral-edge``); only the main process
writes.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

try:
    from transformers import TrainerCallback
except ImportError as exc:
    raise ImportError(
        "spectral_edge_fast.integrations.huggingface needs transformers: pip install transformers"
    ) from exc

from ..monitor import SpectralMonitor
from ..report import render

STATE_FILE = "spectral_monitor_rank{}.pt"  # one per process: the window may be split over ranks


def _lr(optimizer) -> Optional[float]:
    """The first parameter group's learning rate, through accelerate's wrapper."""
    optimizer = getattr(optimizer, "optimizer", optimizer)
    if optimizer is None:
        return None
    lr = optimizer.param_groups[0]["lr"]
    return float(lr)


class SpectralEdgeCallback(TrainerCallback):
    """Live spectral-edge diagnostics of a ``Trainer`` run.

    Args: those of :class:`SpectralMonitor` (``window``, ``every``,
    ``analyze_every``, ``groups``, ``storage_dtype``, ``sinks``, ``log_dir``,
    ``process_group``, ``history``), ``report``: write the HTML report when
    training ends, and ``exact_resume``: save the window too (see the
    module's docstring).

    Attributes:
        monitor: the :class:`SpectralMonitor` (None before training begins).
    """

    def __init__(self, window: int = 16, every: int = 1, analyze_every: int = 10, groups="auto",
                 storage_dtype: torch.dtype = torch.float32, sinks=("jsonl",), log_dir: Optional[str] = None,
                 process_group=None, report: bool = True, history: Optional[int] = 1000,
                 exact_resume: bool = False):
        self.options = dict(window=window, every=every, analyze_every=analyze_every, groups=groups,
                            storage_dtype=storage_dtype, sinks=sinks, process_group=process_group, history=history)
        self.log_dir = log_dir
        self.report = report
        self.exact_resume = exact_resume
        self.monitor: Optional[SpectralMonitor] = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        log_dir = self.log_dir or os.path.join(args.output_dir, "spectral-edge")
        self.monitor = SpectralMonitor(model, log_dir=log_dir, **self.options)
        # Resuming: the Trainer has loaded the checkpoint of state.global_step.
        saved = os.path.join(args.output_dir, f"checkpoint-{state.global_step}", STATE_FILE.format(args.process_index))
        if state.global_step > 0 and os.path.exists(saved):
            self.monitor.load_state_dict(torch.load(saved, map_location="cpu"))

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        if self.monitor is not None:
            self.monitor.step(lr=_lr(optimizer), step=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.monitor is not None and logs:
            numbers = {k: v for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if numbers:
                self.monitor.log(numbers, step=state.global_step)

    def on_save(self, args, state, control, **kwargs):
        if self.monitor is None:
            return
        ckpt = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        os.makedirs(ckpt, exist_ok=True)
        torch.save(self.monitor.state_dict(exact=self.exact_resume), os.path.join(ckpt, STATE_FILE.format(args.process_index)))

    def on_train_end(self, args, state, control, **kwargs):
        if self.monitor is None:
            return
        self.monitor.close()
        if self.report and state.is_world_process_zero and self.monitor.history:
            render(self.monitor.log_dir)


__all__ = ["SpectralEdgeCallback"]
