"""Offline analysis of checkpoint directories, against the live monitor."""
import gc
import json

import numpy as np
import pytest
import torch

import spectral_edge_fast.offline as offline
from spectral_edge_fast.monitor import SpectralMonitor
from spectral_edge_fast.offline import CheckpointError, analyze_checkpoints, list_checkpoints, load_checkpoint


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.Tanh(), torch.nn.Linear(10, 3))


def _live_run(tmp_path, steps=14, every=1, fmt="pt"):
    """Train with a live monitor and save a checkpoint after every step
    (and before the first), as a full training checkpoint or safetensors."""
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2)
    live = SpectralMonitor(model, opt, window=5, every=every, analyze_every=every, sinks=(),
                           log_dir=str(tmp_path / "live"))
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()

    def save(step):
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        if fmt == "pt":
            torch.save({"model": params, "optimizer": opt.state_dict(), "step": step}, ckpts / f"ckpt_{step}.pt")
        else:
            from safetensors.torch import save_file

            save_file(params, str(ckpts / f"step-{step:05d}.safetensors"))

    save(0)
    gen = torch.Generator().manual_seed(1)
    for step in range(1, steps + 1):
        loss = model(torch.randn(32, 6, generator=gen)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        save(step)
    live.close()
    return live, ckpts


def test_offline_matches_the_live_monitor(tmp_path):
    live, ckpts = _live_run(tmp_path)
    off = analyze_checkpoints(str(ckpts), out=str(tmp_path / "off"), window=5, progress=False)
    # the same Gram matrices, bit for bit, and the same records (lr from the checkpoints' optimizer state)
    assert np.array_equal(off.window.gram(), live.window.gram())
    for name, G in live.window.group_grams().items():
        assert np.array_equal(off.window.group_grams()[name], G)
    assert json.dumps(off.history) == json.dumps(live.history)
    assert [r["step"] for r in off.history] == list(range(1, 15))
    assert (tmp_path / "off" / "spectral.jsonl").read_text().count("\n") == 14


def test_offline_with_a_stride_and_safetensors(tmp_path):
    pytest.importorskip("safetensors", reason="the safetensors package is not installed")
    live, ckpts = _live_run(tmp_path, every=2, fmt="safetensors")
    off = analyze_checkpoints(str(ckpts), out=str(tmp_path / "off"), window=5, every=2, progress=False)
    assert np.array_equal(off.window.gram(), live.window.gram())
    assert [r["step"] for r in off.history] == [2, 4, 6, 8, 10, 12, 14]
    for a, b in zip(off.history, live.history):
        assert a["sigmas"] == b["sigmas"] and a["k_star"] == b["k_star"]
        assert a["lr"] is None and a["A"] is None  # safetensors carry no learning rate


def test_checkpoints_are_ordered_by_the_step_in_their_names(tmp_path):
    for name in ("ckpt_10.pt", "ckpt_2.pt", "run3/ckpt_1.pth", "checkpoint-300/model.safetensors", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = list_checkpoints(str(tmp_path))
    assert [s for s, _ in found] == [1, 2, 10, 300]
    assert found[-1][1].endswith("checkpoint-300/model.safetensors")
    (tmp_path / "final.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="final.pt: no step number"):
        list_checkpoints(str(tmp_path))


def test_list_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        list_checkpoints(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not a directory"):
        list_checkpoints(str(tmp_path / "missing"))
    (tmp_path / "a_1.pt").write_bytes(b"")
    (tmp_path / "b_1.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="step 1 again"):
        list_checkpoints(str(tmp_path))


@pytest.mark.parametrize("nest", [None, "model", "state_dict"])
def test_state_dicts_plain_or_nested(tmp_path, nest):
    sd = {"w": torch.randn(3, 2), "b": torch.zeros(2), "count": torch.tensor(5)}
    torch.save(sd if nest is None else {nest: sd, "epoch": 3}, tmp_path / "c_1.pt")
    tensors, lr = load_checkpoint(str(tmp_path / "c_1.pt"))
    assert list(tensors) == ["w", "b"] and lr is None  # integer tensors are not parameters


def test_unreadable_and_mismatched_files_are_named(tmp_path):
    _, ckpts = _live_run(tmp_path, steps=8)
    (ckpts / "ckpt_3.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"ckpt_3\.pt: cannot be read"):
        analyze_checkpoints(str(ckpts), out=str(tmp_path / "a"), window=4, progress=False)
    said = []
    mon = analyze_checkpoints(str(ckpts), out=str(tmp_path / "b"), window=4, on_error="skip", progress=False,
                              log=said.append)
    assert [r["step"] for r in mon.history] == [1, 2, 4, 5, 6, 7, 8]  # step 4's update spans 2..4
    assert "skipping" in said[0] and "ckpt_3.pt" in said[0] and "skipped 1 of 9" in said[-1]
    assert json.loads((tmp_path / "b" / "meta.json").read_text())["info"]["skipped"][0].endswith("ckpt_3.pt")

    torch.save({"model": {"0.weight": torch.zeros(2, 2)}}, ckpts / "ckpt_3.pt")
    with pytest.raises(CheckpointError, match=r"ckpt_3\.pt: lacks 3 tensor"):
        analyze_checkpoints(str(ckpts), out=str(tmp_path / "c"), window=4, progress=False)
    sd = torch.load(ckpts / "ckpt_2.pt")["model"]
    sd["0.weight"] = torch.zeros(5, 5)
    torch.save(sd, ckpts / "ckpt_3.pt")
    with pytest.raises(CheckpointError, match=r"ckpt_3\.pt: tensor '0\.weight' has shape \(5, 5\), expected \(10, 6\)"):
        analyze_checkpoints(str(ckpts), out=str(tmp_path / "d"), window=4, progress=False)


def test_python_objects_need_explicit_trust(tmp_path):
    torch.save({"model": {"w": torch.ones(2)}, "config": object.__new__(SpectralMonitor)}, tmp_path / "c_1.pt")
    with pytest.raises(CheckpointError, match="if you trust the file, allow pickles"):
        load_checkpoint(str(tmp_path / "c_1.pt"))
    tensors, _ = load_checkpoint(str(tmp_path / "c_1.pt"), allow_pickle=True)
    assert list(tensors) == ["w"]


def test_streams_one_checkpoint_at_a_time(tmp_path, monkeypatch):
    """At any step, tensors of at most two checkpoints are alive: the one in
    the window's views and the one being checked (the window keeps its own
    snapshot and ring, not the files' tensors)."""
    _, ckpts = _live_run(tmp_path, steps=10)
    origin = {}  # storage pointer -> checkpoint path
    real_load = offline.load_checkpoint

    def tracked_load(path, allow_pickle=False):
        tensors, lr = real_load(path, allow_pickle)
        for t in tensors.values():
            origin[t.untyped_storage().data_ptr()] = path
        return tensors, lr

    def alive():
        gc.collect()
        ptrs = {o.untyped_storage().data_ptr() for o in gc.get_objects() if issubclass(type(o), torch.Tensor)}
        return {origin[p] for p in ptrs if p in origin}

    peak = []
    real_step = SpectralMonitor.step

    def step(self, *args, **kwargs):
        peak.append(len(alive()))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(offline, "load_checkpoint", tracked_load)
    monkeypatch.setattr(SpectralMonitor, "step", step)
    analyze_checkpoints(str(ckpts), out=str(tmp_path / "o"), window=3, progress=False)
    assert len(peak) == 10 and max(peak) <= 2
