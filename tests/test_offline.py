"""Offline analysis of checkpoint directories, against the live monitor."""
import gc
import json
import os
import re
import warnings

import numpy as np
import pytest
import torch

import spectral_edge_fast.offline as offline
from spectral_edge_fast.monitor import SpectralMonitor
from spectral_edge_fast.offline import CheckpointError, analyze_checkpoints, list_checkpoints, load_checkpoint
from spectral_edge_fast.sinks import read_records

from helpers import CHUNK_MAX, EPS32


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
    assert [r["step"] for r in off.history] == [2, 4, 6, 8, 10, 12, 14]
    # safetensors list tensors by name, so the flat order (and the float32 sums) differ from the model's
    _assert_records_close(off.history, live.history, live.window.numel)
    for a in off.history:
        assert a["lr"] is None and a["A"] is None  # safetensors carry no learning rate


def _assert_records_close(offline_records, live_records, P):
    """Sigmas, k* and R of the same run, within the float32 accumulation
    error of a reduction of length P."""
    assert len(offline_records) == len(live_records)
    for a, b in zip(offline_records, live_records):
        assert a["step"] == b["step"]
        tol = 4 * EPS32 * np.sqrt(min(P, CHUNK_MAX)) * max(b["sigmas"])
        np.testing.assert_allclose(a["sigmas"], b["sigmas"], rtol=0, atol=tol)
        assert a["k_star"] == b["k_star"]
        if b["R"] is not None:
            assert a["R"] == pytest.approx(b["R"], rel=2 * tol / b["sigmas"][-1])


def test_checkpoints_are_ordered_by_the_step_in_their_names(tmp_path):
    for name in ("ckpt_10.pt", "ckpt_2.pt", "run3/ckpt_1.pth", "checkpoint-300/model.safetensors", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = list_checkpoints(str(tmp_path))
    assert [c.step for c in found] == [1, 2, 10, 300]
    assert found[-1].path.endswith("checkpoint-300/model.safetensors")
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
    with pytest.raises(CheckpointError, match=r"SpectralMonitor.*if you trust the file, pass --allow-pickle"):
        load_checkpoint(str(tmp_path / "c_1.pt"))
    tensors, _ = load_checkpoint(str(tmp_path / "c_1.pt"), allow_pickle=True)
    assert list(tensors) == ["w"]


def test_streams_one_checkpoint_at_a_time(tmp_path, monkeypatch):
    """At any step, tensors of at most one checkpoint are alive: the one
    being read (the window keeps its own parameters, snapshot and ring, not
    the files' tensors)."""
    _, ckpts = _live_run(tmp_path, steps=10)
    origin = {}  # storage pointer -> checkpoint path
    real_read = offline.read_weights

    def tracked_read(ckpt, *args, **kwargs):
        weights = real_read(ckpt, *args, **kwargs)
        for t in weights.tensors.values():
            origin[t.untyped_storage().data_ptr()] = ckpt.path
        return weights

    def alive():
        gc.collect()
        # plain tensors and parameters only: fake tensors that torch.compile
        # left in the process (another test's) have no data pointer
        ptrs = {o.untyped_storage().data_ptr() for o in gc.get_objects()
                if type(o) in (torch.Tensor, torch.nn.Parameter)}
        return {origin[p] for p in ptrs if p in origin}

    peak = []
    real_step = SpectralMonitor.step

    def step(self, *args, **kwargs):
        peak.append(len(alive()))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(offline, "read_weights", tracked_read)
    monkeypatch.setattr(SpectralMonitor, "step", step)
    analyze_checkpoints(str(ckpts), out=str(tmp_path / "o"), window=3, progress=False)
    assert len(peak) == 10 and max(peak) <= 1


# -- the checkpoint folders people have ----------------------------------------------------------------------------


class TiedLM(torch.nn.Module):
    """A tiny language model whose head is tied to its embedding, with a
    frozen parameter (a positional table) and a float buffer (a causal mask):
    ``model.state_dict()`` holds the tied weight twice and both frozen
    tensors, the live monitor neither."""

    def __init__(self, vocab=13, d=8, ctx=6):
        super().__init__()
        self.pos = torch.nn.Parameter(torch.randn(ctx, d), requires_grad=False)
        self.register_buffer("mask", torch.triu(torch.full((ctx, ctx), float("-inf")), 1))
        self.emb = torch.nn.Embedding(vocab, d)
        self.layers = torch.nn.ModuleList(
            [torch.nn.TransformerEncoderLayer(d, 2, 16, dropout=0.0, batch_first=True) for _ in range(2)])
        self.ln = torch.nn.LayerNorm(d)
        self.head = torch.nn.Linear(d, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x):
        h = self.emb(x) + self.pos[: x.shape[1]]
        for layer in self.layers:
            h = layer(h, src_mask=self.mask[: x.shape[1], : x.shape[1]])
        return self.head(self.ln(h))


def _save_layouts(root, model, opt, step):
    """One checkpoint of ``step`` in each layout: plain ``torch.save`` of the
    state dict, a Lightning ``.ckpt``, a Hugging Face Trainer folder and a
    sharded one."""
    from safetensors.torch import save_file, save_model

    sd = model.state_dict()
    torch.save(sd, root / "plain" / f"step_{step}.pt")
    torch.save({"state_dict": {"model." + k: v for k, v in sd.items()}, "global_step": step, "epoch": step // 10,
                "optimizer_states": [opt.state_dict()], "lr_schedulers": [], "hyper_parameters": {"lr": 1e-2},
                "pytorch-lightning_version": "2.4.0"},
               root / "lightning" / f"epoch={step // 10}-step={step}.ckpt")
    hf = root / "hf" / f"checkpoint-{step}"
    hf.mkdir()
    save_model(model, str(hf / "model.safetensors"))  # drops the tied copy, as save_pretrained does
    torch.save(opt.state_dict(), hf / "optimizer.pt")
    torch.save({"last_epoch": step}, hf / "scheduler.pt")
    torch.save({"python": __import__("random").getstate(), "numpy": np.random.get_state()}, hf / "rng_state.pth")
    torch.save(object.__new__(SpectralMonitor), hf / "training_args.bin")  # a pickle, never to be loaded
    (hf / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    shards = root / "sharded" / f"checkpoint-{step}"
    shards.mkdir()
    names = [n for n in sd if n != "head.weight"]
    weight_map = {}
    for k, part in enumerate((names[: len(names) // 2], names[len(names) // 2:]), 1):
        file = f"model-{k:05d}-of-00002.safetensors"
        save_file({n: sd[n].contiguous() for n in part}, str(shards / file))
        weight_map.update({n: file for n in part})
    (shards / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (shards / "trainer_state.json").write_text(json.dumps({"global_step": step}))


@pytest.fixture(scope="module")
def tied_run(tmp_path_factory):
    """A live monitor over 24 steps of the tied model, and the same run's
    checkpoints (one before the first step, one after each) in every layout."""
    pytest.importorskip("safetensors", reason="the safetensors package is not installed")
    root = tmp_path_factory.mktemp("tied")
    for layout in ("plain", "lightning", "hf", "sharded"):
        (root / layout).mkdir()
    torch.manual_seed(0)
    model = TiedLM()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    live = SpectralMonitor(model, opt, window=4, every=1, analyze_every=1, sinks=(), log_dir=str(root / "live"))
    gen = torch.Generator().manual_seed(1)
    _save_layouts(root, model, opt, 0)
    for step in range(1, 25):
        x = torch.randint(0, 13, (16, 6), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x)[:, :-1].reshape(-1, 13), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        _save_layouts(root, model, opt, step)
    live.close()
    return live, root


@pytest.mark.parametrize("layout", ["plain", "lightning", "hf", "sharded"])
def test_offline_records_equal_the_live_monitors_in_every_layout(tied_run, tmp_path, layout):
    live, root = tied_run
    said = []
    off = analyze_checkpoints(str(root / layout), out=str(tmp_path / "off"), window=4, progress=False, log=said.append)
    # the tied weight counted once, the frozen table and the mask left out
    assert off.window.numel == live.window.numel
    prefix = "model." if layout == "lightning" else ""
    names = [prefix + n for n in live.window.layout.names]
    if layout in ("plain", "lightning"):
        assert off.window.layout.names == names
    else:  # safetensors list tensors by name
        assert sorted(off.window.layout.names) == sorted(names)
    assert [r["step"] for r in off.history] == list(range(1, 25))
    _assert_records_close(off.history, live.history, live.window.numel)
    for a, b in zip(off.history, live.history):
        if layout in ("lightning", "hf"):  # the learning rate from the optimizer state in or beside the weights
            assert a["lr"] == pytest.approx(b["lr"])
    left_out = " ".join(said)
    if layout != "hf" and layout != "sharded":
        assert "head.weight" in left_out  # tied: named in the log
    assert "pos" in left_out and "mask" in left_out  # unchanged: named in the log


def test_hugging_face_folders_read_the_weights_only(tied_run):
    _, root = tied_run
    found = list_checkpoints(str(root / "hf"))
    assert [c.step for c in found] == list(range(25))
    assert all(c.path.endswith("model.safetensors") for c in found)
    sharded = list_checkpoints(str(root / "sharded"))
    assert [c.step for c in sharded] == list(range(25)) and len(sharded[3].files) == 2
    a, _ = load_checkpoint(found[3].path)
    b, _ = load_checkpoint(sharded[3])
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_a_trainers_final_save_yields_to_its_checkpoint(tmp_path):
    pytest.importorskip("safetensors", reason="the safetensors package is not installed")
    from safetensors.torch import save_file

    for step in (10, 20):
        (tmp_path / f"checkpoint-{step}").mkdir()
        save_file({"w": torch.full((2,), float(step))}, str(tmp_path / f"checkpoint-{step}" / "model.safetensors"))
    save_file({"w": torch.full((2,), 20.0)}, str(tmp_path / "model.safetensors"))
    assert [c.path for c in list_checkpoints(str(tmp_path))] == [
        str(tmp_path / "checkpoint-10" / "model.safetensors"), str(tmp_path / "checkpoint-20" / "model.safetensors")]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": 20}))
    assert [c.step for c in list_checkpoints(str(tmp_path))] == [10, 20]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": 25}))
    found = list_checkpoints(str(tmp_path))
    assert [c.step for c in found] == [10, 20, 25] and found[-1].path == str(tmp_path / "model.safetensors")


def test_trainer_folders_never_read_their_training_state(tmp_path):
    """A PEFT adapter's weights are the checkpoint; a Trainer folder without
    weights is named, never read through its optimizer or RNG files."""
    for step in (5, 10):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        torch.save({"lora_A": torch.full((2, 2), float(step))}, folder / "adapter_model.bin")
        for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"):
            torch.save({"x": torch.ones(1)}, folder / name)
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    assert [(c.step, os.path.basename(c.path)) for c in list_checkpoints(str(tmp_path))] == [
        (5, "adapter_model.bin"), (10, "adapter_model.bin")]
    (tmp_path / "checkpoint-10" / "adapter_model.bin").unlink()
    with pytest.raises(CheckpointError, match=r"checkpoint-10: a Trainer checkpoint folder without model weights"):
        list_checkpoints(str(tmp_path))


def test_sharded_torch_bin_files(tmp_path):
    sd = {f"layers.{i}.weight": torch.randn(3, 3) for i in range(4)}
    for step in (10, 20):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        weight_map = {}
        for k, names in enumerate((["layers.0.weight", "layers.1.weight"], ["layers.2.weight", "layers.3.weight"]), 1):
            file = f"pytorch_model-{k:05d}-of-00002.bin"
            torch.save({n: sd[n] * step for n in names}, folder / file)
            weight_map.update({n: file for n in names})
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
        torch.save({"state": {}, "param_groups": [{"lr": 0.5}]}, folder / "optimizer.pt")
    found = list_checkpoints(str(tmp_path))
    assert [c.step for c in found] == [10, 20]
    tensors, lr = load_checkpoint(found[1])
    assert list(tensors) == list(sd) and torch.equal(tensors["layers.3.weight"], sd["layers.3.weight"] * 20)
    assert lr == 0.5
    (tmp_path / "checkpoint-20" / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(CheckpointError, match=r"checkpoint-20.*pytorch_model-00002-of-00002\.bin"):
        list_checkpoints(str(tmp_path))


def test_shards_without_an_index(tmp_path):
    for step in (7, 8):
        folder = tmp_path / f"step-{step}"
        folder.mkdir()
        for k in (1, 2):
            torch.save({f"w{k}": torch.full((2,), float(step))}, folder / f"weights-{k:05d}-of-00002.pt")
    found = list_checkpoints(str(tmp_path))
    assert [(c.step, len(c.files)) for c in found] == [(7, 2), (8, 2)]
    assert sorted(load_checkpoint(found[1])[0]) == ["w1", "w2"]
    (tmp_path / "step-8" / "weights-00001-of-00002.pt").unlink()
    with pytest.raises(CheckpointError, match=r"step-8/weights-00002-of-00002\.pt: shard 1 of 2 is missing"):
        list_checkpoints(str(tmp_path))


def test_lightning_steps_come_from_step_not_epoch(tmp_path):
    sd = {"model.w": torch.ones(2)}
    for epoch, step in ((0, 50), (1, 100)):
        torch.save({"state_dict": sd, "global_step": step, "epoch": epoch}, tmp_path / f"epoch={epoch}-step={step}.ckpt")
    torch.save({"state_dict": sd, "global_step": 150, "epoch": 2}, tmp_path / "epoch=2.ckpt")  # the step inside
    torch.save({"state_dict": sd, "global_step": 150, "epoch": 2}, tmp_path / "last.ckpt")  # Lightning's copy
    assert [(c.step, os.path.basename(c.path)) for c in list_checkpoints(str(tmp_path))] == [
        (50, "epoch=0-step=50.ckpt"), (100, "epoch=1-step=100.ckpt"), (150, "epoch=2.ckpt")]
    tensors, _ = load_checkpoint(str(tmp_path / "epoch=2.ckpt"))
    assert list(tensors) == ["model.w"]


def test_lightning_hyperparameters_need_explicit_trust(tmp_path):
    torch.save({"state_dict": {"model.w": torch.ones(2)}, "global_step": 5,
                "hyper_parameters": object.__new__(SpectralMonitor)}, tmp_path / "epoch=0-step=5.ckpt")
    with pytest.raises(CheckpointError, match=r"spectral_edge_fast\.monitor\.SpectralMonitor.*--allow-pickle"):
        load_checkpoint(str(tmp_path / "epoch=0-step=5.ckpt"))
    assert list(load_checkpoint(str(tmp_path / "epoch=0-step=5.ckpt"), allow_pickle=True)[0]) == ["model.w"]


def test_a_tensor_that_starts_changing_later_is_kept(tmp_path):
    """Left out are only the tensors equal in every checkpoint, not those
    equal in the first two (a layer unfrozen later in the run)."""
    w, late = torch.randn(4, 4), torch.randn(3)
    gen = torch.Generator().manual_seed(0)
    for step in range(8):
        w = w + torch.randn(4, 4, generator=gen)
        if step >= 5:
            late = late + torch.randn(3, generator=gen)
        torch.save({"w": w, "late": late, "frozen": torch.ones(2)}, tmp_path / f"c_{step}.pt")
    said = []
    off = analyze_checkpoints(str(tmp_path), out=str(tmp_path / "o"), window=3, progress=False, log=said.append)
    assert off.window.layout.names == ["w", "late"] and off.window.numel == 19
    left_out = [s for s in said if s.startswith("left out")]
    assert any("frozen" in s for s in left_out) and not any("late" in s for s in left_out)


def test_include_and_exclude_patterns(tmp_path):
    gen = torch.Generator().manual_seed(0)
    for step in range(5):
        torch.save({n: torch.randn(3, generator=gen) for n in ("enc.0.w", "enc.1.w", "dec.w", "dec.b")},
                   tmp_path / f"c_{step}.pt")
    off = analyze_checkpoints(str(tmp_path), out=str(tmp_path / "a"), window=3, progress=False,
                              include=["enc.*", "dec.w"], exclude=["enc.1.*"])
    assert off.window.layout.names == ["enc.0.w", "dec.w"]
    off = analyze_checkpoints(str(tmp_path), out=str(tmp_path / "c"), window=3, progress=False, exclude="enc.*")
    assert off.window.layout.names == ["dec.w", "dec.b"]  # one pattern as a string, not its characters
    with pytest.raises(ValueError, match=r"no tensor.*--include"):
        analyze_checkpoints(str(tmp_path), out=str(tmp_path / "b"), window=3, progress=False, include=["nothing*"])


# -- bad input: a clear error, and skip that skips ----------------------------------------------------------------


def test_an_empty_file_is_named_and_can_be_skipped(tmp_path):
    _, ckpts = _live_run(tmp_path, steps=6)
    (ckpts / "ckpt_3.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"ckpt_3\.pt: is empty"):
        analyze_checkpoints(str(ckpts), out=str(tmp_path / "a"), window=4, progress=False)
    mon = analyze_checkpoints(str(ckpts), out=str(tmp_path / "b"), window=4, on_error="skip", progress=False,
                              log=lambda s: None)
    assert [r["step"] for r in mon.history] == [1, 2, 4, 5, 6]


def test_unnamed_and_duplicate_steps_are_skipped_with_skip(tmp_path):
    _, ckpts = _live_run(tmp_path, steps=6)
    (ckpts / "final.pt").write_bytes((ckpts / "ckpt_6.pt").read_bytes())
    with pytest.raises(CheckpointError, match="final.pt: no step number"):
        analyze_checkpoints(str(ckpts), out=str(tmp_path / "a"), window=4, progress=False)
    (ckpts / "final.pt").unlink()
    (ckpts / "other_4.pt").write_bytes((ckpts / "ckpt_4.pt").read_bytes())
    with pytest.raises(CheckpointError, match="step 4 again"):
        analyze_checkpoints(str(ckpts), out=str(tmp_path / "a"), window=4, progress=False)
    (ckpts / "final.pt").write_bytes((ckpts / "ckpt_6.pt").read_bytes())
    said = []
    mon = analyze_checkpoints(str(ckpts), out=str(tmp_path / "b"), window=4, on_error="skip", progress=False,
                              log=said.append)
    assert [r["step"] for r in mon.history] == [1, 2, 3, 5, 6]  # step 4 is ambiguous: both files left out
    assert any("final.pt" in s for s in said) and any("other_4.pt" in s and "ckpt_4.pt" in s for s in said)


def test_only_regular_files_are_read(tmp_path):
    import signal

    def timeout(*_):
        raise TimeoutError("reading the FIFO blocked")

    _, ckpts = _live_run(tmp_path, steps=5)
    os.mkfifo(ckpts / "ckpt_30.pt")
    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(60)
    try:
        with pytest.raises(CheckpointError, match=r"ckpt_30\.pt: is not a regular file"):
            analyze_checkpoints(str(ckpts), out=str(tmp_path / "a"), window=4, progress=False)
        mon = analyze_checkpoints(str(ckpts), out=str(tmp_path / "b"), window=4, on_error="skip", progress=False,
                                  log=lambda s: None)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert [r["step"] for r in mon.history] == [1, 2, 3, 4, 5]


def test_unreadable_folders_are_named(tmp_path, monkeypatch):
    _, ckpts = _live_run(tmp_path, steps=4)
    (ckpts / "more").mkdir()
    (ckpts / "ckpt_4.pt").rename(ckpts / "more" / "ckpt_4.pt")
    real = os.scandir
    blocked = set()

    def scandir(path="."):
        if os.path.abspath(path) in blocked:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    blocked.add(str(ckpts))
    with pytest.raises(CheckpointError, match=r"ckpts: cannot be read \(PermissionError"):
        list_checkpoints(str(ckpts))
    blocked.clear()
    blocked.add(str(ckpts / "more"))
    with pytest.raises(CheckpointError, match=r"more: cannot be read"):
        list_checkpoints(str(ckpts))
    said = []
    mon = analyze_checkpoints(str(ckpts), out=str(tmp_path / "b"), window=4, on_error="skip", progress=False,
                              log=said.append)
    assert [r["step"] for r in mon.history] == [1, 2, 3] and "more" in said[0]


def test_settings_are_checked_by_their_own_names(tmp_path):
    _, ckpts = _live_run(tmp_path, steps=3)
    with pytest.raises(ValueError, match=r"^every must be"):
        analyze_checkpoints(str(ckpts), out=str(tmp_path / "a"), every=0, progress=False)


def test_results_are_never_overwritten_unasked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for exp in ("exp1", "exp2"):
        (tmp_path / exp).mkdir()
        _, ckpts = _live_run(tmp_path / exp, steps=3)
    first = analyze_checkpoints("exp1/ckpts", window=3, progress=False)
    second = analyze_checkpoints("exp2/ckpts", window=3, progress=False)
    again = analyze_checkpoints("exp1/ckpts", window=3, progress=False)
    dirs = {os.path.abspath(m.log_dir) for m in (first, second, again)}
    assert len(dirs) == 3 and all(os.path.exists(os.path.join(d, "spectral.jsonl")) for d in dirs)
    with pytest.raises(FileExistsError, match=r"holds results.*overwrite"):
        analyze_checkpoints("exp1/ckpts", out=first.log_dir, window=3, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # asked to overwrite: no warning that the records are replaced
        again = analyze_checkpoints("exp1/ckpts", out=first.log_dir, window=3, progress=False, overwrite=True)
    assert len(read_records(again.log_dir)["analysis"]) == len(again.history), "the old records are gone"
    (tmp_path / "afile").write_text("")
    with pytest.raises(OSError, match=r"afile"):
        analyze_checkpoints("exp1/ckpts", out="afile/out", window=3, progress=False)


def _attention_checkpoints(tmp_path):
    """Six checkpoints of an attention layer and a linear head; their tensors by step."""
    torch.manual_seed(0)
    attn, head = torch.nn.MultiheadAttention(6, 2), torch.nn.Linear(6, 4)
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    saved = {}
    for step in range(6):
        with torch.no_grad():
            for p in [*attn.parameters(), *head.parameters()]:
                p.add_(0.3 * torch.randn_like(p))
        state = {f"attn.{n}": p.detach().clone() for n, p in attn.named_parameters()}
        state.update({f"head.{n}": p.detach().clone() for n, p in head.named_parameters()})
        torch.save(state, ckpts / f"ckpt_{step}.pt")
        saved[step] = {n: t.double().numpy() for n, t in state.items()}
    return ckpts, saved


def test_probes_from_each_checkpoint(tmp_path):
    """probes= (and the event rule) reach the offline monitor; each record's
    probes are numpy.linalg.svd / eig of that checkpoint's tensors; without
    the model there is no head count, so no per-head entries."""
    ckpts, saved = _attention_checkpoints(tmp_path)
    off = analyze_checkpoints(str(ckpts), out=str(tmp_path / "off"), window=3, progress=False,
                              probes=["attention", "head.weight"], k_star_margin=1.0)
    assert off.options.k_star_margin == 1.0 and [r["step"] for r in off.history] == [1, 2, 3, 4, 5]
    for record in off.history:
        w = saved[record["step"]]
        q, k = w["attn.in_proj_weight"][:6], w["attn.in_proj_weight"][6:12]
        for key, mat in (("attn.in_proj_weight:q", q), ("head.weight", w["head.weight"])):
            s = np.linalg.svd(mat, compute_uv=False)
            np.testing.assert_allclose(record["probes"][key]["sigma"], s[:8], rtol=1e-12)
        lam = np.linalg.eig(q.T @ k)[0]
        moduli = np.sort(np.abs(lam[lam.imag >= 0]))[::-1]
        np.testing.assert_allclose(record["attention"]["attn"]["lambda_abs"], moduli[:8], rtol=1e-9)
        assert record["attention"]["attn"]["heads"] == []
    with pytest.raises(TypeError, match="analyze_checkpoints sets analyze_every itself"):
        analyze_checkpoints(str(ckpts), out=str(tmp_path / "off2"), analyze_every=2, progress=False)
    with pytest.raises(ValueError, match="probes pattern 'nothing' matches no 2-D monitored parameter"):
        analyze_checkpoints(str(ckpts), out=str(tmp_path / "off3"), probes="nothing", progress=False)


def test_probes_from_the_command_line(tmp_path, capsys):
    from spectral_edge_fast.cli import main

    ckpts, _ = _attention_checkpoints(tmp_path)
    assert main(["analyze", str(ckpts), "--window", "3", "--probes", "attention", "--probes", "head.weight",
                 "--out", str(tmp_path / "o"), "--quiet"]) == 0
    with open(tmp_path / "o" / "spectral.jsonl") as f:
        record = json.loads(f.readlines()[-1])
    assert set(record["probes"]) == {"attn.in_proj_weight:q", "head.weight"} and set(record["attention"]) == {"attn"}
    capsys.readouterr()
    assert main(["analyze", str(ckpts), "--probes", "nothing*", "--out", str(tmp_path / "p"), "--quiet"]) == 1
    assert "error: probes pattern 'nothing*' matches no 2-D monitored parameter" in capsys.readouterr().err


# -- what training loops leave behind ------------------------------------------------------------------------------


def _steps_of(model, opt, steps):
    """``model`` after each of ``steps`` AdamW-style updates (and before the first)."""
    gen = torch.Generator().manual_seed(2)
    yield 0
    for step in range(1, steps + 1):
        loss = model(torch.randn(8, 6, generator=gen)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        yield step


@pytest.mark.parametrize("loss", ["tensor", "float"])
def test_the_tutorials_checkpoint_dict(tmp_path, loss):
    """PyTorch's tutorial saves ``{"epoch", "model_state_dict",
    "optimizer_state_dict", "loss"}``: the weights are the model's, not a
    scalar loss tensor beside them, and the learning rate is the optimizer's."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in _steps_of(model, opt, 5):
        value = model(torch.ones(1, 6)).sum().detach()
        torch.save({"epoch": step, "model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(),
                    "loss": value if loss == "tensor" else value.item()}, tmp_path / f"ckpt_{step}.pt")
    tensors, lr = load_checkpoint(str(tmp_path / "ckpt_3.pt"))
    assert list(tensors) == list(model.state_dict()) and lr == 0.05
    off = analyze_checkpoints(str(tmp_path), out=str(tmp_path / "o"), window=3, progress=False)
    assert off.window.numel == sum(p.numel() for p in model.parameters()) and off.history[-1]["lr"] == 0.05


def test_tensors_beside_dicts_of_tensors_are_not_taken_for_the_weights(tmp_path):
    """A dict holding tensors under a key this reader does not know, beside a
    loose tensor, is refused with the keys named, not read as the loose tensor."""
    torch.save({"weights": {"w": torch.ones(3)}, "ema": {"w": torch.ones(3)}, "loss": torch.tensor(0.5)},
               tmp_path / "c_1.pt")
    with pytest.raises(CheckpointError, match=r"c_1\.pt: holds dicts of tensors under 'weights', 'ema'"):
        load_checkpoint(str(tmp_path / "c_1.pt"))


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
@pytest.mark.parametrize("first", ["float32", "bfloat16"])
def test_a_change_of_dtype_between_checkpoints_is_refused(tmp_path, fmt, first):
    """Checkpoints saved in float32 and then in bfloat16 (or the other way):
    the update across the change would be mostly the cast's rounding, and the
    window, holding the first checkpoint's dtype, would round every later one
    into it. Refused, naming the file, tensor and dtypes; skip keeps the
    checkpoints of the first one's dtype."""
    pytest.importorskip("safetensors", reason="the safetensors package is not installed")
    from safetensors.torch import save_file

    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    other = "bfloat16" if first == "float32" else "float32"
    for step in _steps_of(model, opt, 6):
        dtype = getattr(torch, first if step < 4 else other)
        sd = {n: p.detach().to(dtype).contiguous() for n, p in model.named_parameters()}
        if fmt == "pt":
            torch.save(sd, tmp_path / f"ckpt_{step}.pt")
        else:
            save_file(sd, str(tmp_path / f"ckpt_{step}.safetensors"))
    with pytest.raises(CheckpointError, match=rf"ckpt_4\.{fmt}: tensor '[\w.]+' is {other}, not {first} as in "
                                              rf".*ckpt_0\.{fmt}"):
        analyze_checkpoints(str(tmp_path), out=str(tmp_path / "a"), window=3, progress=False)
    said = []
    off = analyze_checkpoints(str(tmp_path), out=str(tmp_path / "b"), window=3, progress=False, on_error="skip",
                              log=said.append)
    assert [r["step"] for r in off.history] == [1, 2, 3] and "skipped 3 of 7" in said[-1]


def test_one_dtype_throughout_is_read_as_saved(tmp_path):
    """A folder of float16 checkpoints: the window's Gram is that of the
    saved values' differences (float64 reference), within float32 rounding."""
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    flat = []
    for step in _steps_of(model, opt, 6):
        sd = {n: p.detach().half() for n, p in model.named_parameters()}
        torch.save(sd, tmp_path / f"ckpt_{step}.pt")
        flat.append(torch.cat([t.double().flatten() for t in sd.values()]))
    off = analyze_checkpoints(str(tmp_path), out=str(tmp_path / "o"), window=3, groups=None, progress=False)
    U = torch.stack([b - a for a, b in zip(flat, flat[1:])])[-3:]
    G = (U @ U.T).numpy()
    np.testing.assert_allclose(off.window.gram(), G, rtol=0, atol=4 * EPS32 * np.sqrt(U.shape[1]) * np.abs(G).max())


def _trainer_folder(folder, step, weights=True, state=True):
    """A Hugging Face Trainer's ``checkpoint-N``: the weights, the training
    state beside them and ``trainer_state.json``; a save interrupted before
    the weights or the state file was written lacks them."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    if weights:
        save_file({"w": torch.randn(8, generator=torch.Generator().manual_seed(step))}, str(folder / "model.safetensors"))
    torch.save({"state": {}, "param_groups": [{"lr": 0.1}]}, folder / "optimizer.pt")
    torch.save({"last_epoch": step}, folder / "scheduler.pt")
    torch.save({"cpu_rng_state": torch.ones(4, dtype=torch.uint8)}, folder / "rng_state.pth")
    if state:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))


def test_an_interrupted_trainer_save_is_named_not_read_through_its_training_state(tmp_path):
    """``checkpoint-5`` holds the optimizer, scheduler and RNG state but no
    weights and no ``trainer_state.json`` (a save that did not finish): it is
    named as such, never read as three checkpoints of step 5."""
    pytest.importorskip("safetensors", reason="the safetensors package is not installed")
    for step in range(5):
        _trainer_folder(tmp_path / f"checkpoint-{step}", step)
    _trainer_folder(tmp_path / "checkpoint-5", 5, weights=False, state=False)
    with pytest.raises(CheckpointError, match=r"checkpoint-5: training state \(optimizer\.pt, rng_state\.pth, "
                                              r"scheduler\.pt\) without model weights"):
        list_checkpoints(str(tmp_path))
    said = []
    off = analyze_checkpoints(str(tmp_path), out=str(tmp_path / "o"), window=3, progress=False, on_error="skip",
                              log=said.append)
    assert [r["step"] for r in off.history] == [1, 2, 3, 4] and "skipped 1 of 6" in said[-1]


def test_training_state_beside_a_plain_checkpoint_is_left_alone(tmp_path):
    """A loop's own folders (``step_10/model.pt`` beside ``optimizer.pt``
    and ``scheduler.pt``): one checkpoint a folder, the weights."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in _steps_of(model, opt, 3):
        folder = tmp_path / f"step_{step * 10}"
        folder.mkdir()
        torch.save(model.state_dict(), folder / "model.pt")
        torch.save(opt.state_dict(), folder / "optimizer.pt")
        torch.save({"last_epoch": step}, folder / "scheduler.pt")
    found = list_checkpoints(str(tmp_path))
    assert [(c.step, os.path.basename(c.path)) for c in found] == [(0, "model.pt"), (10, "model.pt"), (20, "model.pt"),
                                                                   (30, "model.pt")]


def test_numbers_joined_to_letters_are_not_steps(tmp_path):
    """``bf16``, ``v2``, ``gpt2``: a number joined to the letters before it
    names a format, a version or a model, not the step; the step is a number
    standing alone, or the only number there is."""
    names = {"model_100_bf16.pt": 100, "model_200_bf16.pt": 200, "ckpt_300_v2.pt": 300, "gpt2-400.pt": 400,
             "run3/ckpt_500.pth": 500, "iter600.pt": 600}
    for name in names:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = list_checkpoints(str(tmp_path))
    assert [(os.path.relpath(c.path, tmp_path), c.step) for c in found] == list(names.items())
    (tmp_path / "iter700_bf16.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"iter700_bf16\.pt: no step number in its name: its numbers \(700, 16\) "
                                              r"are each joined to letters"):
        list_checkpoints(str(tmp_path))


def test_the_command_says_why_R_is_undefined_and_names_its_files(tmp_path, capsys):
    """Two checkpoints make one update: the summary says why k* and R are
    undefined, that the window is not full, and names the files written."""
    from spectral_edge_fast.cli import main

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in _steps_of(model, opt, 1):
        torch.save(model.state_dict(), tmp_path / f"ckpt_{step}.pt")
    assert main(["analyze", str(tmp_path), "--window", "4", "--out", str(tmp_path / "o"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "last: step 1, k* and R undefined (one row: the gap quantities need two positive eigenvalues" in out
    assert "the window holds 1 of its 4 updates (5 checkpoints fill it)" in out
    assert f"records: {tmp_path / 'o' / 'spectral.jsonl'} (one line per analysis), spectral.csv, meta.json" in out
    assert f"report: {tmp_path / 'o' / 'report.html'}" in out


def test_progress_labels_each_R_with_its_step(tmp_path, capsys):
    """The progress bar shows the step it reads (every Trainer folder's file
    is model.safetensors) and each k* and R with the step of their analysis,
    which lags the checkpoint being read."""
    pytest.importorskip("safetensors", reason="the safetensors package is not installed")
    for step in range(6):
        _trainer_folder(tmp_path / "ckpts" / f"checkpoint-{step}", step)
    off = analyze_checkpoints(str(tmp_path / "ckpts"), out=str(tmp_path / "o"), window=3, progress=True)
    err = capsys.readouterr().err
    shown = re.findall(r"analysis of step (\d+): k\*=(\d+), R=([\d.e+-]+)", err)
    assert shown and all(f"reading step {s}" in err for s in range(6))
    R = {r["step"]: r for r in off.history}
    for step, k, value in shown:
        assert int(k) == R[int(step)]["k_star"] and value == f"{R[int(step)]['R']:.3g}"


def test_a_model_saved_whole_is_read_through_its_state_dict(tmp_path, monkeypatch):
    """``torch.save(model)``, alone or under "model": with --allow-pickle,
    the module's state dict; a class this process cannot import is named
    with what to do."""
    import sys

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in _steps_of(model, opt, 4):
        torch.save(model, tmp_path / f"ckpt_{step}.pt")
        torch.save({"model": model, "step": step}, tmp_path / f"nested_{step}.pth")
    tensors, _ = load_checkpoint(str(tmp_path / "ckpt_2.pt"), allow_pickle=True)
    assert all(torch.equal(tensors[n], t) for n, t in torch.load(tmp_path / "ckpt_2.pt", weights_only=False)
               .state_dict().items())
    nested, _ = load_checkpoint(str(tmp_path / "nested_2.pth"), allow_pickle=True)
    assert list(nested) == list(tensors)
    for name in os.listdir(tmp_path):
        if name.startswith("nested"):
            os.remove(tmp_path / name)
    off = analyze_checkpoints(str(tmp_path), out=str(tmp_path / "o"), window=3, progress=False, allow_pickle=True)
    assert off.window.numel == sum(p.numel() for p in model.parameters())

    class Net(torch.nn.Linear):
        pass

    Net.__module__, Net.__qualname__ = "__main__", "Net"  # a class defined in a training script
    monkeypatch.setattr(sys.modules["__main__"], "Net", Net, raising=False)
    torch.save(Net(2, 2), tmp_path / "script_1.pt")
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match=r"script_1\.pt: cannot be unpickled here \(AttributeError: .*Net.*\): "
                                              r".*torch\.save\(model\).*state_dict\(\)"):
        load_checkpoint(str(tmp_path / "script_1.pt"), allow_pickle=True)


def test_a_file_or_a_missing_path_is_named_as_such(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "ckpt_1.pt")
    with pytest.raises(NotADirectoryError, match=r"ckpt_1\.pt is not a directory of checkpoints but a file"):
        list_checkpoints(str(tmp_path / "ckpt_1.pt"))
    with pytest.raises(FileNotFoundError, match=r"nowhere is not a directory of checkpoints: it does not exist"):
        list_checkpoints(str(tmp_path / "nowhere"))


def test_unevenly_spaced_checkpoints_are_named(tmp_path):
    """An update spans one interval between checkpoints: a Trainer's last
    save off the save_steps grid (or a gap) makes one update shorter or
    longer than the others, which the log says."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = [0, 10, 20, 30, 40, 45]
    for k in _steps_of(model, opt, 5):
        torch.save(model.state_dict(), tmp_path / f"ckpt_{steps[k]}.pt")
    said = []
    analyze_checkpoints(str(tmp_path), out=str(tmp_path / "o"), window=3, progress=False, log=said.append)
    assert any("unevenly spaced (most 10 steps apart): 40 -> 45 (5 steps)" in s for s in said)
    os.remove(tmp_path / "ckpt_45.pt")
    said = []
    analyze_checkpoints(str(tmp_path), out=str(tmp_path / "p"), window=3, progress=False, log=said.append)
    assert not any("unevenly" in s for s in said)


@pytest.mark.parametrize("prefix", ["_orig_mod.", "module."])
def test_a_wrapper_prefix_that_appears_midway_is_named(tmp_path, prefix):
    """The first checkpoint saved before torch.compile (or DDP) wrapped the
    model, the later ones after: the error names the prefix, not only a
    missing tensor."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in _steps_of(model, opt, 3):
        torch.save({(prefix if step else "") + n: t for n, t in model.state_dict().items()}, tmp_path / f"c_{step}.pt")
    with pytest.raises(CheckpointError, match=rf"c_1\.pt: lacks 4 tensor\(s\) of .*c_0\.pt, e\.g\. '0\.weight', which "
                                              rf"it holds as '{re.escape(prefix)}0\.weight'"):
        analyze_checkpoints(str(tmp_path), out=str(tmp_path / "o"), window=3, progress=False)


def test_the_first_checkpoint_with_non_finite_values_is_named(tmp_path):
    """A run that diverged: from the checkpoint where a tensor first holds
    NaN, every update through it is non-finite and left out of the spectrum;
    the log names that checkpoint and tensor once."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, 5, generator=gen)
    for step in range(8):
        w = w + 0.1 * torch.randn(6, 5, generator=gen)
        saved = w.clone()
        if step >= 5:
            saved[1, 2] = float("nan")
        torch.save({"b": torch.randn(3, generator=gen), "w": saved}, tmp_path / f"c_{step}.pt")
    said = []
    off = analyze_checkpoints(str(tmp_path), out=str(tmp_path / "o"), window=3, progress=False, log=said.append)
    named = [s for s in said if "non-finite" in s]
    assert len(named) == 1 and "c_5.pt" in named[0] and "'w'" in named[0] and "step 5" in named[0]
    assert json.loads((tmp_path / "o" / "meta.json").read_text())["info"]["nonfinite"]["step"] == 5
    assert off.history[-1]["status"] == "undefined"


def test_the_command_says_when_A_has_no_learning_rate(tmp_path, capsys):
    """State dicts alone carry no learning rate: the summary says the
    adiabatic parameter A is not computed and how to get it; with --lr it
    prints A."""
    from spectral_edge_fast.cli import main

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in _steps_of(model, opt, 5):
        torch.save(model.state_dict(), tmp_path / f"ckpt_{step}.pt")
    assert main(["analyze", str(tmp_path), "--window", "3", "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert "A not computed: no learning rate in the checkpoints (pass --lr)" in capsys.readouterr().out
    assert main(["analyze", str(tmp_path), "--window", "3", "--out", str(tmp_path / "p"), "--lr", "0.1", "--quiet"]) == 0
    out = capsys.readouterr().out
    last = _jsonl_last(tmp_path / "p" / "spectral.jsonl")
    assert "A not computed" not in out and f"A = {last['A']:.3g}" in out


def _jsonl_last(path):
    with open(path) as f:
        return json.loads(f.readlines()[-1])


def test_an_interrupted_sharded_save_is_named_as_such(tmp_path):
    """A Trainer's sharded save cut short: a shard the index names is
    missing, or a shard (or a torch.save file) is truncated; each is named as
    a save that did not finish, not by the reader's internals."""
    pytest.importorskip("safetensors", reason="the safetensors package is not installed")
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)
    for step in range(4):
        folder = tmp_path / "ckpts" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        weight_map = {}
        for k, name in ((1, "a"), (2, "b")):
            file = f"model-{k:05d}-of-00002.safetensors"
            save_file({name: torch.randn(64, generator=gen)}, str(folder / file))
            weight_map[name] = file
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    shard = tmp_path / "ckpts" / "checkpoint-3" / "model-00002-of-00002.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:-40])
    with pytest.raises(CheckpointError, match=rf"checkpoint-3/model-00002-of-00002\.safetensors: is truncated: "
                                              rf"{len(data) - 40} of {len(data)} bytes \(a save that did not finish\?\)"):
        analyze_checkpoints(str(tmp_path / "ckpts"), out=str(tmp_path / "o"), window=3, progress=False)
    shard.unlink()
    with pytest.raises(CheckpointError, match=r"checkpoint-3/model-00002-of-00002\.safetensors: is missing, though "
                                              r"model\.safetensors\.index\.json names it \(a save that did not finish\?\)"):
        list_checkpoints(str(tmp_path / "ckpts"))
    torch.save({"w": torch.randn(64)}, tmp_path / "ckpt_1.pt")
    data = (tmp_path / "ckpt_1.pt").read_bytes()
    (tmp_path / "ckpt_1.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"ckpt_1\.pt: is truncated or corrupt \(its zip archive has no central "
                                              r"directory\): a save that did not finish\?"):
        load_checkpoint(str(tmp_path / "ckpt_1.pt"))


def test_the_log_says_what_is_analysed_by_module(tmp_path):
    """A LightningModule holding an EMA copy beside its model saves both in
    its state dict, and both change: the log names each top-level module and
    its share of the parameters, so a copy analysed with the model shows."""
    gen = torch.Generator().manual_seed(0)
    for step in range(4):
        sd = {"model.w": torch.randn(4, 5, generator=gen), "model.b": torch.randn(5, generator=gen),
              "ema.model.w": torch.randn(4, 5, generator=gen), "ema.model.b": torch.randn(5, generator=gen)}
        torch.save({"state_dict": sd, "global_step": step}, tmp_path / f"epoch=0-step={step}.ckpt")
    said = []
    analyze_checkpoints(str(tmp_path), out=str(tmp_path / "o"), window=3, progress=False, log=said.append)
    assert "analysing 50 numbers in 4 tensors: model.* 25 (2 tensors), ema.* 25 (2 tensors)" in said


def test_a_scheduled_learning_rate_is_said_to_be_the_next_steps(tmp_path, capsys):
    """A loop (or the Trainer) that steps its scheduler before saving stores
    the rate of the step after the checkpoint: the log says the rate changes
    and which one each record takes; at a schedule's end the last rate is 0,
    and the command says why A is missing there."""
    from spectral_edge_fast.cli import main

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: max(0.0, 1 - k / 5))
    for step in _steps_of(model, opt, 5):
        if step:
            sched.step()
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / f"ckpt_{step}.pt")
    said = []
    off = analyze_checkpoints(str(tmp_path), out=str(tmp_path / "o"), window=3, progress=False, log=said.append)
    assert [r["lr"] for r in off.history] == pytest.approx([0.08, 0.06, 0.04, 0.02, 0.0])
    assert any("learning rate changes between checkpoints (0.1 at step 0, 0 at step 5)" in s and "--lr" in s
               for s in said)
    assert main(["analyze", str(tmp_path), "--window", "3", "--out", str(tmp_path / "p"), "--quiet"]) == 0
    assert "A not computed at step 5: its checkpoint's learning rate is 0" in capsys.readouterr().out


@pytest.mark.parametrize("shard", [None, "8KB"])
def test_save_pretrained_folders_of_a_tied_gpt2(tmp_path, shard):
    """transformers' own save_pretrained (the head tied to the embedding,
    stored once; sharded with its index), one checkpoint-N folder a step:
    the window's Gram is that of the model's parameter updates (float64
    reference), each parameter counted once."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    pytest.importorskip("safetensors", reason="the safetensors package is not installed")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    assert model.lm_head.weight is model.transformer.wte.weight
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    gen = torch.Generator().manual_seed(1)
    flat = []
    for step in range(6):
        if step:
            x = torch.randint(0, 50, (4, 8), generator=gen)
            opt.zero_grad()
            model(input_ids=x, labels=x).loss.backward()
            opt.step()
        folder = tmp_path / "ckpts" / f"checkpoint-{step}"
        model.save_pretrained(str(folder), **({} if shard is None else {"max_shard_size": shard}))
        flat.append(torch.cat([p.detach().double().flatten() for p in model.parameters()]))
    assert (shard is None) == (not list((tmp_path / "ckpts" / "checkpoint-5").glob("*.index.json")))
    off = analyze_checkpoints(str(tmp_path / "ckpts"), out=str(tmp_path / "o"), window=4, groups=None,
                              progress=False, log=lambda s: None)
    assert off.window.numel == flat[0].numel() == sum(p.numel() for p in model.parameters())
    U = torch.stack([b - a for a, b in zip(flat, flat[1:])])[-4:]
    G = (U @ U.T).numpy()
    np.testing.assert_allclose(off.window.gram(), G, rtol=0, atol=4 * EPS32 * np.sqrt(U.shape[1]) * np.abs(G).max())
