"""The Lightning callback, on a tiny LightningModule (needs lightning)."""
import json

import numpy as np
import pytest
import torch

pl = pytest.importorskip("lightning.pytorch", reason="PyTorch Lightning (pip install lightning) is not installed")

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


def test_callback_monitors_training_and_writes_the_report(tmp_path):
    cb = SpectralEdgeCallback(window=4, analyze_every=4, log_dir=str(tmp_path / "se"))
    trainer = pl.Trainer(max_epochs=2, callbacks=[cb], default_root_dir=str(tmp_path), logger=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(Tiny(), _data(), _data())
    assert cb.monitor.steps == trainer.global_step == 16
    assert [r["step"] for r in cb.monitor.history] == [4, 8, 12, 16]
    assert (tmp_path / "se" / "report.html").exists()
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
