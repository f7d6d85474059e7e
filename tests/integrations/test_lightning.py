"""The Lightning callback, on a tiny LightningModule (needs lightning)."""
import csv
import json
import logging
import os
import warnings

import numpy as np
import pytest
import torch

pl = pytest.importorskip("lightning.pytorch", reason="PyTorch Lightning (pip install lightning) is not installed")

from helpers import EPS32  # noqa: E402
from spectral_edge_fast.integrations.lightning import SpectralEdgeCallback  # noqa: E402


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def _data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=gen)
    ds = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
    return torch.utils.data.DataLoader(ds, batch_size=8)


def test_callback_monitors_training_and_writes_the_report(tmp_path, caplog):
    cb = SpectralEdgeCallback(window=4, analyze_every=4, log_dir=str(tmp_path / "se"))
    trainer = pl.Trainer(max_epochs=2, callbacks=[cb], default_root_dir=str(tmp_path), logger=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    lightning_log = logging.getLogger(pl.__name__)  # Lightning's info lines do not reach the root logger
    lightning_log.addHandler(caplog.handler)
    try:
        trainer.fit(Tiny(), _data(), _data())
    finally:
        lightning_log.removeHandler(caplog.handler)
    assert cb.monitor.steps == trainer.global_step == 16
    assert [r["step"] for r in cb.monitor.history] == [4, 8, 12, 16]
    assert cb.report_path == str(tmp_path / "se" / "report.html") and (tmp_path / "se" / "report.html").exists()
    assert f"report written to {cb.report_path}" in caplog.text
    metrics = [json.loads(line) for line in (tmp_path / "se" / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in m for m in metrics)
    assert cb.state_dict()["steps"] == 16
    assert cb.state_dict()["window"] is None  # the small state by default
    exact = SpectralEdgeCallback(window=4, analyze_every=4, log_dir=str(tmp_path / "se2"), exact_resume=True)
    exact.monitor = cb.monitor
    assert exact.state_dict()["window"]["count"] == 16


def test_callback_resumes_from_a_lightning_checkpoint(tmp_path):
    """The small state travels in the checkpoint: the resumed run keeps the
    records before it, refills its window over W + 1 steps, then matches."""
    kw = dict(default_root_dir=str(tmp_path), logger=False, enable_progress_bar=False, enable_model_summary=False,
              accelerator="cpu", max_epochs=2)
    cb = SpectralEdgeCallback(window=4, analyze_every=4, log_dir=str(tmp_path / "se"))
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_epochs=1, save_top_k=-1)
    pl.Trainer(callbacks=[cb, ckpt], **kw).fit(Tiny(), _data(), _data())
    resumed = SpectralEdgeCallback(window=4, analyze_every=4, log_dir=str(tmp_path / "se2"))
    pl.Trainer(callbacks=[resumed], **kw).fit(Tiny(), _data(), _data(), ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=8.ckpt"))
    assert resumed.monitor.steps == 16
    assert [r["step"] for r in resumed.monitor.history] == [4, 8, 16]
    np.testing.assert_allclose(resumed.monitor.history[-1]["sigmas"], cb.monitor.history[-1]["sigmas"], rtol=1e-6)


def test_metrics_are_recorded_as_lightning_logs_them(tmp_path):
    """train_loss logged every 2 steps: 8 points over 16 steps; val_loss once
    per validation; no metric twice at a step."""
    cb = SpectralEdgeCallback(window=4, analyze_every=4, log_dir=str(tmp_path / "se"))
    trainer = pl.Trainer(max_epochs=2, callbacks=[cb], default_root_dir=str(tmp_path), logger=False, log_every_n_steps=2,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(Tiny(), _data(), _data())
    steps = {key: [m["step"] for m in cb.monitor.metrics if key in m] for key in ("train_loss", "val_loss")}
    assert steps == {"train_loss": [2, 4, 6, 8, 10, 12, 14, 16], "val_loss": [8, 16]}


def test_summaries_go_to_the_trainers_loggers_and_name_the_run(tmp_path):
    cb = SpectralEdgeCallback(window=4, analyze_every=4, log_dir=str(tmp_path / "se"))
    logger = pl.loggers.CSVLogger(str(tmp_path), name="tiny")
    trainer = pl.Trainer(max_epochs=2, callbacks=[cb], default_root_dir=str(tmp_path), logger=logger,
                         log_every_n_steps=2, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(Tiny(), _data(), _data())
    rows = list(csv.DictReader(open(tmp_path / "tiny" / "version_0" / "metrics.csv")))
    spectral = [r for r in rows if r.get("spectral/R")]
    assert [float(r["spectral/step"]) for r in spectral] == [4, 8, 12, 16]
    assert [float(r["spectral/k_star"]) for r in spectral] == [r["k_star"] for r in cb.monitor.history]
    assert [int(r["step"]) for r in spectral] == [5, 9, 13, 16]  # the global step at which each finished
    assert json.loads((tmp_path / "se" / "meta.json").read_text())["info"]["run_name"] == "tiny/version_0"


def test_two_callbacks_keep_their_own_state(tmp_path):
    kw = dict(default_root_dir=str(tmp_path), logger=False, enable_progress_bar=False, enable_model_summary=False,
              accelerator="cpu", max_epochs=2)
    first = [SpectralEdgeCallback(window=4, analyze_every=4, log_dir=str(tmp_path / "a")),
             SpectralEdgeCallback(window=2, analyze_every=8, log_dir=str(tmp_path / "b"))]
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_epochs=1, save_top_k=-1)
    pl.Trainer(callbacks=[*first, ckpt], **kw).fit(Tiny(), _data(), _data())
    saved = torch.load(tmp_path / "ckpt" / "epoch=0-step=8.ckpt", weights_only=False)["callbacks"]
    assert {first[0].state_key, first[1].state_key} <= set(saved)
    resumed = [SpectralEdgeCallback(window=4, analyze_every=4, log_dir=str(tmp_path / "a2")),
               SpectralEdgeCallback(window=2, analyze_every=8, log_dir=str(tmp_path / "b2"))]
    pl.Trainer(callbacks=resumed, **kw).fit(Tiny(), _data(), _data(), 
                                             ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=8.ckpt"))
    assert [r["step"] for r in resumed[0].monitor.history] == [4, 8, 16]
    assert [r["step"] for r in resumed[1].monitor.history] == [8, 16]


def test_callbacks_that_differ_in_any_recorded_setting_have_their_own_state_key():
    base = SpectralEdgeCallback(window=4).state_key
    for change in (dict(window=8), dict(every=2), dict(analyze_every=5), dict(groups="tensor"),
                   dict(storage_dtype=torch.bfloat16)):
        assert SpectralEdgeCallback(**{"window": 4, **change}).state_key != base, change
    assert SpectralEdgeCallback(window=4, log_dir="elsewhere").state_key == base  # a resumed run may write elsewhere


def test_metrics_under_gradient_accumulation_are_those_lightning_logs(tmp_path):
    """accumulate_grad_batches=2: Lightning logs a step's metrics at the batch
    that steps the optimizer, never at the accumulating one; the monitor
    records the same values, once each, at the global step."""
    cb = SpectralEdgeCallback(window=2, analyze_every=2, log_dir=str(tmp_path / "se"), report=False)
    logger = pl.loggers.CSVLogger(str(tmp_path), name="tiny")
    trainer = pl.Trainer(max_epochs=2, callbacks=[cb], default_root_dir=str(tmp_path), logger=logger,
                         log_every_n_steps=2, accumulate_grad_batches=2, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(Tiny(), _data(), _data())
    assert cb.monitor.steps == trainer.global_step == 8
    assert [r["step"] for r in cb.monitor.history] == [2, 4, 6, 8]
    rows = list(csv.DictReader(open(tmp_path / "tiny" / "version_0" / "metrics.csv")))
    logged = [float(r["train_loss"]) for r in rows if r.get("train_loss")]
    recorded = [m for m in cb.monitor.metrics if "train_loss" in m]
    assert [m["step"] for m in recorded] == [2, 4, 6, 8]
    assert [m["train_loss"] for m in recorded] == pytest.approx(logged, rel=1e-6)


def test_resuming_from_a_checkpoint_without_the_monitor_warns_and_keeps_the_global_step(tmp_path):
    """A checkpoint saved without this callback (or with other settings):
    the monitor starts afresh, says so, and labels its records with the
    trainer's global step, as the metrics beside them are (it labelled them
    4 and 8 while the trainer was at 12 and 16)."""
    kw = dict(default_root_dir=str(tmp_path), logger=False, enable_progress_bar=False, enable_model_summary=False,
              accelerator="cpu", log_every_n_steps=4)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    pl.Trainer(max_steps=8, callbacks=[ckpt], **kw).fit(Tiny(), _data(), _data())
    cb = SpectralEdgeCallback(window=2, analyze_every=4, log_dir=str(tmp_path / "se"), report=False)
    with pytest.warns(RuntimeWarning, match=r"resuming at step 8 from a checkpoint without this callback's state"):
        pl.Trainer(max_steps=16, callbacks=[cb], **kw).fit(Tiny(), _data(), _data(),
                                                           ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert cb.monitor.steps == 16
    assert [r["step"] for r in cb.monitor.history] == [12, 16]
    assert [m["step"] for m in cb.monitor.metrics if "train_loss" in m] == [12, 16]


def test_a_sink_that_writes_the_loggers_run_gets_each_summary_once(tmp_path, monkeypatch):
    """The monitor's wandb sink joins WandbLogger's run, and a TensorBoard
    sink given TensorBoardLogger's writer writes into its run (as the README
    shows): the summaries are not logged there a second time at the global
    step (each analysis came twice, at its step and one step later)."""
    wandb = pytest.importorskip("wandb", reason="the wandb package is not installed")
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from test_sinks import _wandb_history

    for name, value in (("WANDB_MODE", "offline"), ("WANDB_DIR", str(tmp_path)), ("WANDB_SILENT", "true")):
        monkeypatch.setenv(name, value)
    tb = pl.loggers.TensorBoardLogger(str(tmp_path), name="tb")
    wb = pl.loggers.WandbLogger(project="tiny", save_dir=str(tmp_path), offline=True)
    cb = SpectralEdgeCallback(window=4, analyze_every=4, log_dir=str(tmp_path / "se"), report=False,
                              sinks=("jsonl", "wandb", tb.experiment))
    trainer = pl.Trainer(max_epochs=2, callbacks=[cb], default_root_dir=str(tmp_path), logger=[tb, wb],
                         log_every_n_steps=2, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    try:
        trainer.fit(Tiny(), _data(), _data())
        run_dir = os.path.dirname(wandb.run.dir)
    finally:
        wandb.finish()
    rows = [r for r in _wandb_history(run_dir) if "spectral/R" in r]
    assert [r["spectral/step"] for r in rows] == [4, 8, 12, 16]
    events = EventAccumulator(tb.log_dir).Reload()
    assert [e.step for e in events.Scalars("spectral/R")] == [4, 8, 12, 16]


def test_a_report_without_the_jsonl_sink_warns_when_the_callback_is_made():
    with pytest.warns(RuntimeWarning, match=r"report=True needs the 'jsonl' sink.*sinks=None: no report"):
        assert not SpectralEdgeCallback(window=4, sinks=None).report
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SpectralEdgeCallback(window=4, sinks=None, report=False)
        assert SpectralEdgeCallback(window=4, sinks={"csv", "jsonl"}).report


def test_a_value_logged_again_unchanged_is_recorded_again(tmp_path):
    """An accuracy that stays at 1.0 is logged at every logging step and
    every validation: the monitor records each of those points (it kept the
    first only, taking a repeated value for one Lightning keeps showing), as
    Lightning names them."""

    class Constant(Tiny):
        def training_step(self, batch, batch_idx):
            self.log("acc", 1.0)
            self.log("seen", float(batch_idx), on_step=True, on_epoch=True)
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            self.log("val_acc", 1.0)
            super().validation_step(batch, batch_idx)

    cb = SpectralEdgeCallback(window=4, analyze_every=4, log_dir=str(tmp_path / "se"), report=False)
    logger = pl.loggers.CSVLogger(str(tmp_path), name="tiny")
    trainer = pl.Trainer(max_epochs=2, callbacks=[cb], default_root_dir=str(tmp_path), logger=logger, log_every_n_steps=2,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(Constant(), _data(), _data())
    rows = list(csv.DictReader(open(tmp_path / "tiny" / "version_0" / "metrics.csv")))
    steps = {key: [m["step"] for m in cb.monitor.metrics if key in m] for key in ("acc", "val_acc", "val_loss")}
    assert steps == {"acc": [2, 4, 6, 8, 10, 12, 14, 16], "val_acc": [8, 16], "val_loss": [8, 16]}
    assert len(steps["acc"]) == sum(bool(r.get("acc")) for r in rows)  # as many as Lightning logged
    # logged on_step and on_epoch: under the two names Lightning logs, never under the plain one
    assert [m["seen_step"] for m in cb.monitor.metrics if "seen_step" in m] == [1.0, 3.0, 5.0, 7.0] * 2
    assert [m["seen_epoch"] for m in cb.monitor.metrics if "seen_epoch" in m] == [3.5, 3.5]
    assert not any("seen" in m for m in cb.monitor.metrics)


def test_records_keep_the_global_step_when_a_step_is_skipped(tmp_path):
    """A step whose optimizer.step is not called (a gradient scaler's
    overflow) still counts in Lightning's global step: the records after it
    are labelled with the global step they analyse (they were labelled with
    the monitor's count, one behind the metrics beside them)."""

    class Skipping(Tiny):
        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
            if epoch == 0 and batch_idx == 2:
                optimizer_closure()  # what a scaler does at an overflow: the closure runs, the step does not
            else:
                optimizer.step(closure=optimizer_closure)

    cb = SpectralEdgeCallback(window=2, analyze_every=4, log_dir=str(tmp_path / "se"), report=False)
    trainer = pl.Trainer(max_epochs=2, callbacks=[cb], default_root_dir=str(tmp_path), logger=False,
                         log_every_n_steps=4, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(Skipping(), _data(), _data())
    assert trainer.global_step == 16
    assert [r["step"] for r in cb.monitor.history] == [4, 8, 12, 16]
    assert [m["step"] for m in cb.monitor.metrics if "train_loss" in m] == [4, 8, 12, 16]


def test_two_optimizers_make_one_update_per_batch_labelled_with_the_global_step(tmp_path):
    """Manual optimization with two optimizers over two parts of the module:
    an update is everything the batch changed, after both stepped, and the
    records carry the global step, which counts both (the first optimizer's
    hook saw the second's change a batch late, and labelled its records with
    half the global step)."""

    class TwoOptimizers(Tiny):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.other = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            first, second = self.optimizers()
            for optimizer, net in ((first, self.net), (second, self.other)):
                loss = torch.nn.functional.mse_loss(net(x), y)
                optimizer.zero_grad()
                self.manual_backward(loss)
                optimizer.step()
            self.log("train_loss", loss)

        def configure_optimizers(self):
            return (torch.optim.SGD(self.net.parameters(), lr=0.05),
                    torch.optim.SGD(self.other.parameters(), lr=0.05))

    class Snapshots(pl.Callback):
        def __init__(self):
            self.seen = []

        def on_train_batch_end(self, trainer, pl_module, *args):
            self.seen.append(torch.cat([p.detach().double().flatten() for p in pl_module.parameters()]))

    cb = SpectralEdgeCallback(window=2, analyze_every=4, groups=None, log_dir=str(tmp_path / "se"), report=False)
    snapshots = Snapshots()
    trainer = pl.Trainer(max_epochs=2, callbacks=[cb, snapshots], default_root_dir=str(tmp_path), logger=False,
                         log_every_n_steps=4, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(TwoOptimizers(), _data(), _data())
    assert trainer.global_step == 32 and cb.monitor.steps == 16
    assert [r["step"] for r in cb.monitor.history] == [8, 16, 24, 32]
    X = torch.stack([snapshots.seen[-2] - snapshots.seen[-3], snapshots.seen[-1] - snapshots.seen[-2]])
    ref = torch.linalg.svdvals(X).numpy()
    np.testing.assert_allclose(cb.monitor.history[-1]["sigmas"][:2], ref, rtol=0,
                               atol=8 * EPS32 * X.shape[1] ** 0.5 * ref[0])
