"""The README's integration examples, run as they are on tiny models with
made-up data: each snippet is read from README.md between its
``<!-- example: NAME -->`` marker and the end of its code block."""
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[2] / "README.md"


def example(name: str) -> str:
    found = re.findall(rf"<!-- example: {name} -->\n```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(found) == 1, f"README.md has {len(found)} examples named {name!r}"
    return found[0]


def _records(path) -> list:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def compute_loss(model, batch):
    x, y = batch
    return torch.nn.functional.mse_loss(model(x), y)


def _loader(batches: int):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batches * 4, 4, generator=gen)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)


def _net():
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def test_lightning_example(tmp_path, monkeypatch):
    pl = pytest.importorskip("lightning.pytorch", reason="PyTorch Lightning (pip install lightning) is not installed")

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def training_step(self, batch, batch_idx):
            loss = compute_loss(self.net, batch)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-2)

    monkeypatch.chdir(tmp_path)
    scope = {"model": Module(), "loader": _loader(10)}
    exec(example("lightning"), scope)
    trainer = scope["trainer"]
    records = _records(Path(trainer.log_dir) / "spectral-edge" / "spectral.jsonl")
    assert [r["step"] for r in records] == [5, 10, 15, 20]


def test_huggingface_example(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers", reason="transformers (pip install transformers) is not installed")
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32)
    tokens = torch.randint(0, 64, (64, 16), generator=torch.Generator().manual_seed(0))
    scope = {"model": transformers.GPT2LMHeadModel(config),
             "dataset": [{"input_ids": t, "labels": t} for t in tokens]}
    exec(example("huggingface"), scope)
    records = _records(tmp_path / "out" / "spectral-edge" / "spectral.jsonl")
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    assert (tmp_path / "out" / "checkpoint-10" / "spectral_monitor_rank0.pt").exists()
    assert json.loads((tmp_path / "out" / "spectral-edge" / "meta.json").read_text())["info"]["run_name"] == "tiny-gpt2"
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_accelerate_example(tmp_path, monkeypatch):
    accelerate = pytest.importorskip("accelerate", reason="accelerate (pip install accelerate) is not installed")
    monkeypatch.chdir(tmp_path)
    model = _net()
    scope = {"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.1), "loader": _loader(32),
             "compute_loss": compute_loss}
    try:
        exec(example("accelerate"), scope)
    finally:
        accelerate.state.AcceleratorState._reset_state(True)
    assert scope["monitor"].steps == 8  # 32 batches, 4 per step
    assert [r["step"] for r in _records(tmp_path / "runs" / "accelerate" / "spectral.jsonl")] == [5]


def test_torchrun_example(tmp_path):
    """Two ranks under torchrun: rank 0 writes the records of the shared window."""
    preamble = textwrap.dedent('''
        import torch
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        gen = torch.Generator().manual_seed(int(__import__("os").environ["RANK"]))
        x = torch.randn(40, 4, generator=gen)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)

        def compute_loss(model, batch):
            x, y = batch
            return torch.nn.functional.mse_loss(model(x), y)
    ''')
    script = tmp_path / "train.py"
    script.write_text(preamble + example("torchrun"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    assert [r["step"] for r in _records(tmp_path / "runs" / "ddp" / "spectral.jsonl")] == [5, 10]
