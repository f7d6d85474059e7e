"""Hugging Face ``Trainer``: a callback that drives a :class:`SpectralMonitor`.

    from spectral_edge_fast.integrations.huggingface import SpectralEdgeCallback

    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[SpectralEdgeCallback()])

The monitor steps at each optimizer step that was taken
(``on_optimizer_step``: a step a gradient scaler skipped is not an update),
labelled with the Trainer's global step and the learning rate that step used,
and analyses at the global steps that are multiples of ``analyze_every``; it
records the Trainer's logs (loss, learning rate, eval metrics), and each
finished analysis's summary (``spectral/R``, ``spectral/k_star``...) goes
through ``Trainer.log`` to the integrations of ``args.report_to``
(TensorBoard, W&B...) at the global step (not when ``report_to`` is W&B
alone and the monitor has the ``"wandb"`` sink, which writes that run
already; beside other integrations that is warned about, the summaries
being in the run twice). (transformers gives callbacks
neither the Trainer nor the checkpoint being resumed: both are read from
``Trainer.train``'s loop, with a warning where they cannot be.) The monitor's
state is saved as ``spectral_monitor_rank<i>.pt`` in every checkpoint
directory and restored from the checkpoint training resumes from (in whatever
folder), with a warning when that checkpoint has none (the fresh monitor then
counts its steps on from the global step). The saved state is the monitor's
small one by default (counters, recent records, events: the window refills
after a resume); ``exact_resume=True`` adds the window's ring and snapshot,
``W + 1`` times the model's size, for a resume that continues exactly. The
full records go to ``log_dir`` (default: ``<output_dir>/spectral-edge``),
whose ``meta.json`` carries ``args.run_name``; only the main process writes.
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import Optional

import torch

try:
    from transformers import Trainer, TrainerCallback
except ImportError as exc:
    raise ImportError(
        "spectral_edge_fast.integrations.huggingface needs transformers: pip install transformers"
    ) from exc
if not hasattr(TrainerCallback, "on_optimizer_step"):  # the event the monitor steps in (transformers 4.42)
    raise ImportError("spectral_edge_fast.integrations.huggingface needs transformers >= 4.42 "
                      "(TrainerCallback.on_optimizer_step): pip install -U transformers")

from ..config import MonitorOptions, resolve
from ..files import atomic_write
from ..monitor import SpectralMonitor, _lr_of
from ..sinks import WandbSink
from ._common import PREFIX, check_report, reported, write_report

STATE_FILE = "spectral_monitor_rank{}.pt"  # one per process: the window may be split over ranks


def _train_call():
    """The Trainer and the ``resume_from_checkpoint`` of the ``train()`` call
    running this callback: transformers passes neither to callbacks, so they
    are read from its training loop's frame. (None, None) when not found."""
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if frame.f_code.co_name == "_inner_training_loop" and isinstance(owner, Trainer):
            return owner, frame.f_locals.get("resume_from_checkpoint")
        frame = frame.f_back
    return None, None


class SpectralEdgeCallback(TrainerCallback):
    """Live spectral-edge diagnostics of a ``Trainer`` run.

    Args: those of :class:`SpectralMonitor` (``options``, a
    :class:`~spectral_edge_fast.config.MonitorOptions`, and/or its fields as
    keywords: ``window``, ``every``, ``analyze_every``, ``groups``,
    ``storage_dtype``, ``backend``, ``sketch``, ``sinks``, ``log_dir``,
    ``history``; and ``process_group``), ``report``: write the HTML report when
    training ends, and ``exact_resume``: save the window too (see the
    module's docstring).

    Attributes:
        monitor: the :class:`SpectralMonitor` (None before training begins).
        report_path: the HTML report written when training ended (also
            printed, by the main process), or None.
    """

    def __init__(self, options: Optional[MonitorOptions] = None, *, process_group=None, report: bool = True,
                 exact_resume: bool = False, **overrides):
        self.options = resolve(MonitorOptions, options, overrides, "SpectralEdgeCallback")
        self.process_group = process_group
        self.report = check_report(report, self.options.sinks)
        self.exact_resume = exact_resume
        self.monitor: Optional[SpectralMonitor] = None
        self._trainer = None
        self._log_summaries = False  # whether summaries go through Trainer.log (set when training begins)
        self._reported = None  # the last record whose scalars went to Trainer.log
        self.report_path: Optional[str] = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        log_dir = self.options.log_dir or os.path.join(args.output_dir, "spectral-edge")
        self.monitor = SpectralMonitor(model, None, self.options, log_dir=log_dir, process_group=self.process_group)
        if args.run_name is not None:
            self.monitor.annotate(run_name=args.run_name)
        self._trainer, resumed = _train_call()
        if self._trainer is None:
            warnings.warn("SpectralEdgeCallback: no Trainer.train() call found above this callback: the analyses' "
                          "summaries go to the monitor's own files only (not to report_to), and a resume looks for "
                          "the monitor state in <output_dir>/checkpoint-<global_step>", RuntimeWarning, stacklevel=2)
        if state.global_step > 0:  # resuming: the Trainer has loaded the checkpoint of state.global_step
            if not isinstance(resumed, str):
                resumed = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            saved = os.path.join(resumed, STATE_FILE.format(args.process_index))
            if os.path.exists(saved):
                try:
                    self.monitor.load_state_dict(torch.load(saved, map_location="cpu"))
                except ValueError as exc:
                    raise ValueError(f"SpectralEdgeCallback: {saved}: {str(exc).rstrip('.')}. Make the callback "
                                     f"with the settings of the run that saved it, or delete {saved} to start the "
                                     "monitor afresh") from exc
            else:
                warnings.warn(f"SpectralEdgeCallback: resuming at step {state.global_step}, but {saved} does not "
                              "exist: the monitor starts afresh (its records before this step are not in memory, and "
                              "its steps count on from the global step); save checkpoints with the callback attached "
                              "to keep them", RuntimeWarning, stacklevel=2)
        self._reported = self.monitor.latest
        self.report_path = None
        self._log_summaries = self._trainer is not None
        reporting = {r for r in args.report_to or () if r not in (None, "none")}
        if "wandb" in reporting and any(isinstance(s, WandbSink) for s in self.monitor.sinks):
            if reporting == {"wandb"}:  # the sink writes the run Trainer.log would: the summaries once, as spectral/*
                self._log_summaries = False
            else:
                warnings.warn("SpectralEdgeCallback: the monitor's 'wandb' sink and report_to's wandb both write the "
                              "W&B run, so each analysis's summary is in it twice (spectral/* from the sink, "
                              "train/spectral/* through Trainer.log, which also feeds "
                              f"{', '.join(sorted(reporting - {'wandb'}))}); leave 'wandb' out of the callback's sinks "
                              "to have it once", RuntimeWarning, stacklevel=2)

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        # Before the scheduler steps: the learning rate is the one this step used.
        if self.monitor is not None and not getattr(optimizer, "step_was_skipped", False):
            # The count goes on from the global step, which counts skipped steps and those before a resume
            # without monitor state: analyses stay at multiples of analyze_every.
            self.monitor.steps = state.global_step
            self.monitor.step(lr=_lr_of(optimizer.param_groups), step=state.global_step + 1)

    def on_step_end(self, args, state, control, **kwargs):
        self._report(control)

    def on_epoch_end(self, args, state, control, **kwargs):
        # After the last step of an epoch, and after a stop decided later in the step (EarlyStoppingCallback
        # decides at the evaluation, after on_step_end): the loggers are still open until on_train_end.
        self._report(control)

    def _report(self, control) -> None:
        """Hand a newly finished analysis's summary to Trainer.log; at the
        last step, the started one is finished first."""
        if self.monitor is None:
            return
        if control.should_training_stop:
            self.monitor.flush()
        latest = self.monitor.latest
        if latest is not None and latest is not self._reported and self._log_summaries:
            self._reported = latest
            self._trainer.log(reported(latest))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.monitor is not None and logs:
            if any(k.startswith(PREFIX) for k in logs):  # the callback's own scalars, from on_step_end
                return
            numbers = {k: v for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if numbers:
                self.monitor.log(numbers, step=state.global_step)

    def on_save(self, args, state, control, **kwargs):
        if self.monitor is None:
            return
        path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}", STATE_FILE.format(args.process_index))
        with atomic_write(path, "wb") as f:
            torch.save(self.monitor.state_dict(exact=self.exact_resume), f)

    def on_train_end(self, args, state, control, **kwargs):
        if self.monitor is None:
            return
        self.monitor.close()
        if self.report and state.is_world_process_zero:
            self.report_path, line = write_report(self.monitor)
            print(line)


__all__ = ["SpectralEdgeCallback"]
