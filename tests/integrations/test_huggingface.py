"""The Hugging Face Trainer callback, on a tiny model (needs transformers)."""
import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers (pip install transformers) is not installed")

from spectral_edge_fast.integrations.huggingface import SpectralEdgeCallback  # noqa: E402


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def forward(self, x, labels=None):
        out = self.net(x)
        return {"loss": torch.nn.functional.mse_loss(out, labels), "logits": out}


class Data(torch.utils.data.Dataset):
    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 4, generator=gen)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.x[i].sum(0, keepdim=True)}


def _trainer(tmp_path, cb, max_steps):
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=max_steps, per_device_train_batch_size=8,
                                          learning_rate=1e-2, logging_steps=4, save_steps=8, report_to=[],
                                          use_cpu=True, disable_tqdm=True)
    return transformers.Trainer(model=Tiny(), args=args, train_dataset=Data(), callbacks=[cb])


def test_callback_steps_with_the_trainer_and_resumes(tmp_path):
    cb = SpectralEdgeCallback(window=4, analyze_every=4, log_dir=str(tmp_path / "se"))
    _trainer(tmp_path, cb, 16).train()
    assert [r["step"] for r in cb.monitor.history] == [4, 8, 12, 16]
    assert cb.monitor.history[-1]["lr"] is not None
    assert (tmp_path / "checkpoint-8" / "spectral_monitor_rank0.pt").exists()
    assert (tmp_path / "se" / "report.html").exists()
    assert any("loss" in m for m in cb.monitor.metrics)

    # the small state by default: the window refills over W + 1 = 5 steps, so step 12 is not analysed
    saved = torch.load(tmp_path / "checkpoint-8" / "spectral_monitor_rank0.pt")
    assert saved["window"] is None and saved["steps"] == 8
    resumed = SpectralEdgeCallback(window=4, analyze_every=4, log_dir=str(tmp_path / "se2"))
    _trainer(tmp_path, resumed, 16).train(resume_from_checkpoint=str(tmp_path / "checkpoint-8"))
    assert [r["step"] for r in resumed.monitor.history] == [4, 8, 16]
    np.testing.assert_allclose(resumed.monitor.history[-1]["sigmas"], cb.monitor.history[-1]["sigmas"], rtol=1e-6)


def test_exact_resume_saves_the_window(tmp_path):
    cb = SpectralEdgeCallback(window=4, analyze_every=4, log_dir=str(tmp_path / "se"), exact_resume=True)
    _trainer(tmp_path, cb, 16).train()
    assert torch.load(tmp_path / "checkpoint-8" / "spectral_monitor_rank0.pt")["window"] is not None
    resumed = SpectralEdgeCallback(window=4, analyze_every=4, log_dir=str(tmp_path / "se2"), exact_resume=True)
    _trainer(tmp_path, resumed, 16).train(resume_from_checkpoint=str(tmp_path / "checkpoint-8"))
    assert [r["step"] for r in resumed.monitor.history] == [4, 8, 12, 16]
