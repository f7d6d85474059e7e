"""PyTorch Lightning: a callback that attaches a :class:`SpectralMonitor`.

    from spectral_edge_fast.integrations.lightning import SpectralEdgeCallback

    trainer = lightning.Trainer(callbacks=[SpectralEdgeCallback(window=16, analyze_every=10)])

The monitor attaches to the optimizer's post-step hook when training starts
(so skipped steps, e.g. under a gradient scaler's overflow, are not updates);
with several optimizers it steps once per batch in which they stepped, after
all of them, so that an update is everything the batch changed. Its records
are labelled with the trainer's global step, which counts skipped steps and
the steps of every optimizer. It records the module's logged metrics as
Lightning logs them: at each logging step (every ``log_every_n_steps``
optimizer steps, at the batch that steps, not at one that accumulates), after
each validation and at each training epoch's end: each value logged, once (an
unchanged value logged again, again), under the names Lightning logs. Each
finished analysis's summary (``spectral/R``, ``spectral/k_star``...) goes to
``trainer.loggers`` at the trainer's global step, but for a logger whose run a
sink of the monitor writes already (``sinks="wandb"`` beside a
``WandbLogger``, a TensorBoard sink given ``TensorBoardLogger.experiment``),
which would get it twice. The logger's name and version become the report's
``run_name``. The monitor travels in Lightning checkpoints (under a
``state_key`` made of ``window``, ``every``, ``analyze_every``, ``groups`` and
``storage_dtype``, and ``sketch`` when set, so callbacks that differ in one of
them coexist; a resume from a checkpoint without it warns, and the fresh
monitor counts its steps on from the trainer's global step), and writes the
report at the end of training. The checkpoint holds the monitor's small state
by default (counters, recent records, events: the window refills after a
resume); ``exact_resume=True`` adds the window's ring and snapshot, ``W + 1``
times the model's size, for a resume that continues exactly. Lightning writes
rank 0's state, so with a ``process_group`` the window refills on resume
either way. Records go to ``log_dir`` (default:
``<trainer.log_dir>/spectral-edge``); only global rank 0 writes.
"""
from __future__ import annotations

import os
import warnings
from typing import Optional

import torch

try:
    import lightning.pytorch as pl
except ImportError:
    try:
        import pytorch_lightning as pl
    except ImportError as exc:
        raise ImportError(
            "spectral_edge_fast.integrations.lightning needs PyTorch Lightning: pip install lightning"
        ) from exc

from ..config import MonitorOptions, resolve
from ..monitor import SpectralMonitor, _lr_of
from ..sinks import TensorBoardSink, WandbSink
from ._common import check_report, reported, write_report


class SpectralEdgeCallback(pl.Callback):
    """Live spectral-edge diagnostics of a Lightning run.

    Args: those of :class:`SpectralMonitor` (``options``, a
    :class:`~spectral_edge_fast.config.MonitorOptions`, and/or its fields as
    keywords: ``window``, ``every``, ``analyze_every``, ``groups``,
    ``storage_dtype``, ``backend``, ``sketch``, ``sinks``, ``log_dir``,
    ``history``; and ``process_group``), ``report``: write the HTML report when
    training ends, and ``exact_resume``: checkpoint the window too (see the
    module's docstring). With several optimizers the monitor steps once per
    batch, after all of them.

    Attributes:
        monitor: the :class:`SpectralMonitor` (None before training starts).
        report_path: the HTML report written when training ended (also
            logged, on global rank 0), or None.
    """

    def __init__(self, options: Optional[MonitorOptions] = None, *, process_group=None, report: bool = True,
                 exact_resume: bool = False, **overrides):
        super().__init__()
        self.options = resolve(MonitorOptions, options, overrides, "SpectralEdgeCallback")
        self.process_group = process_group
        self.report = check_report(report, self.options.sinks)
        self.exact_resume = exact_resume
        self.monitor: Optional[SpectralMonitor] = None
        self._restored: Optional[dict] = None
        self._recorded: dict = {}  # metric -> the value last recorded (its tensor): each logged value is recorded once
        self._reported = None  # the last record whose summary went to the loggers
        self._global_step = 0  # the trainer's at the last batch end: unchanged after an accumulating batch
        self._loggers: list = []  # the trainer's loggers that the summaries go to
        self._counting = None  # the optimizer pre-step hook that sets the monitor's count to the global step
        self.report_path: Optional[str] = None

    @property
    def state_key(self) -> str:
        # The settings that change the records, not log_dir: a resumed run may write elsewhere.
        o = self.options
        groups = getattr(o.groups, "__qualname__", o.groups) if callable(o.groups) else o.groups
        sketch = {} if o.sketch is None else {"sketch": o.sketch}  # exact mode keeps the keys saved before sketch mode
        return self._generate_state_key(window=o.window, every=o.every, analyze_every=o.analyze_every, groups=groups,
                                        storage_dtype=str(o.storage_dtype).replace("torch.", ""), **sketch)

    def on_train_start(self, trainer, pl_module) -> None:
        log_dir = self.options.log_dir or os.path.join(trainer.log_dir or trainer.default_root_dir, "spectral-edge")
        # One optimizer: the monitor steps in its hook. Several: once per batch in which they stepped, after
        # all of them (on_train_batch_end), so that an update is everything the batch changed.
        optimizer = trainer.optimizers[0] if len(trainer.optimizers) == 1 else None
        self.monitor = SpectralMonitor(pl_module, optimizer, self.options, log_dir=log_dir,
                                       process_group=self.process_group)
        if optimizer is not None:
            # Lightning's global step counts a step a gradient scaler skipped, the monitor's hook does not: the
            # count restarts from the global step before each step, so records carry the step they analyse.
            self._counting = optimizer.register_step_pre_hook(
                lambda *_: setattr(self.monitor, "steps", trainer.global_step))
        if self._restored is not None:
            if self.process_group is not None:  # rank 0's window shard: every rank refills instead
                self._restored = {**self._restored, "window": None}
            self.monitor.load_state_dict(self._restored)
        elif trainer.global_step > 0:
            warnings.warn(f"SpectralEdgeCallback: resuming at step {trainer.global_step} from a checkpoint without "
                          "this callback's state (saved without it, or with another window, every, analyze_every, "
                          "groups, storage_dtype or sketch): the monitor starts afresh, its records before this step "
                          "are not in memory, and its steps count on from the trainer's global step", RuntimeWarning,
                          stacklevel=2)
        self._restored = None
        if trainer.logger is not None:
            version = trainer.logger.version
            version = version if isinstance(version, str) else f"version_{version}"
            self.monitor.annotate(run_name=f"{trainer.logger.name}/{version}")
        self._recorded = {}
        self._reported = self.monitor.latest
        self._global_step = trainer.global_step
        self.report_path = None
        self._loggers = [logger for logger in trainer.loggers if not self._sink_writes(logger)]

    def _sink_writes(self, logger) -> bool:
        """Whether a sink of the monitor writes into this logger's run, which
        would then get each summary twice: the wandb sink joins the run that
        WandbLogger started, and a TensorBoard sink may hold
        TensorBoardLogger's writer."""
        for sink in self.monitor.sinks:
            if isinstance(sink, WandbSink) and isinstance(logger, pl.loggers.WandbLogger):
                return True
            if (isinstance(sink, TensorBoardSink) and isinstance(logger, pl.loggers.TensorBoardLogger)
                    and sink._writer is logger.experiment):
                return True
        return False

    def _log(self, trainer) -> None:
        """Record the scalar metrics logged since the last record. Each
        ``self.log`` call makes a new tensor, so a value logged again is new
        even when equal, while one Lightning keeps showing since it was
        logged (val_loss through the training steps) is the tensor already
        recorded, which ``_recorded`` keeps alive so that its memory is not
        another's. A metric logged both on_step and on_epoch goes to the
        loggers as ``<name>_step`` and ``<name>_epoch`` only: so here."""
        if self.monitor is None or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        new = {}
        for key, value in metrics.items():
            if f"{key}_step" in metrics or f"{key}_epoch" in metrics:
                continue
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                old = self._recorded.get(key)
                if old is None or old.data_ptr() != value.data_ptr():
                    new[key] = value
        if new:
            self._recorded.update(new)
            self.monitor.log({k: float(v) for k, v in new.items()}, step=trainer.global_step)

    def _report(self, trainer) -> None:
        """Hand a newly finished analysis's summary to the trainer's loggers
        (those no sink writes into)."""
        latest = self.monitor.latest
        if latest is not None and latest is not self._reported:
            self._reported = latest
            for logger in self._loggers:
                logger.log_metrics(reported(latest), step=trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.monitor is None:
            return
        # Lightning logs step metrics at a batch that stepped the optimizer (not at one that accumulates),
        # every log_every_n_steps steps: values are read from the device only there.
        stepped, self._global_step = trainer.global_step != self._global_step, trainer.global_step
        if stepped and len(trainer.optimizers) > 1:
            self.monitor.step(lr=_lr_of(trainer.optimizers[0].param_groups), step=trainer.global_step)
        n = trainer.log_every_n_steps
        if stepped and n and (trainer.global_step % n == 0 or trainer.should_stop):
            self._log(trainer)
        self._report(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._log(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._log(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.monitor is None:
            return
        self.monitor.flush()
        self._report(trainer)  # the last analysis, finished by the flush
        self._close()
        if self.report and self.monitor.is_writer:
            self.report_path, line = write_report(self.monitor)
            pl.utilities.rank_zero_info(line)

    def on_exception(self, trainer, pl_module, exception) -> None:
        if self.monitor is not None:
            self._close()

    def _close(self) -> None:
        if self._counting is not None:
            self._counting.remove()
            self._counting = None
        self.monitor.close()

    def state_dict(self) -> dict:
        return self.monitor.state_dict(exact=self.exact_resume) if self.monitor is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        # Lightning restores callbacks before training starts: apply once the monitor exists.
        if state_dict:
            self._restored = state_dict


__all__ = ["SpectralEdgeCallback"]
