"""Offline analysis of the checkpoints of sharded training:
torch.distributed.checkpoint (DCP) folders as FSDP, Lightning, Accelerate and
torchtitan write them, DeepSpeed tag folders, and the ``.pth.tar`` files of
PyTorch's ImageNet example."""
import json
import pickle
import warnings

import numpy as np
import pytest
import torch

from spectral_edge_fast.offline import CheckpointError, analyze_checkpoints, list_checkpoints, load_checkpoint

from helpers import EPS32

dcp = pytest.importorskip("torch.distributed.checkpoint", reason="torch.distributed is not available")


class TiedNet(torch.nn.Module):
    """An embedding, a layer and a head tied to the embedding, with a float
    buffer: ``state_dict()`` holds the tied weight under both names."""

    def __init__(self, vocab=11, d=6):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, d)
        self.mid = torch.nn.Linear(d, d)
        self.head = torch.nn.Linear(d, vocab, bias=False)
        self.head.weight = self.emb.weight
        self.register_buffer("scale", torch.full((d,), 0.5))

    def forward(self, x):
        return self.head(torch.tanh(self.mid(self.emb(x) * self.scale)))


def _training(steps, lr=5e-2):
    """The model, its optimizer and the steps (0, before the first update,
    then after each)."""
    torch.manual_seed(0)
    model = TiedNet()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(1)

    def run():
        yield 0
        for step in range(1, steps + 1):
            x = torch.randint(0, 11, (8, 5), generator=gen)
            loss = torch.nn.functional.cross_entropy(model(x).reshape(-1, 11), x.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            yield step

    return model, opt, run()


def _flat(model):
    """The parameters (each once) in float64, flattened."""
    return torch.cat([p.detach().double().flatten() for p in model.parameters()])


def _assert_gram(off, flats, window):
    U = torch.stack([b - a for a, b in zip(flats, flats[1:])])[-window:]
    G = (U @ U.T).numpy()
    np.testing.assert_allclose(off.window.gram(), G, rtol=0, atol=4 * EPS32 * np.sqrt(U.shape[1]) * np.abs(G).max())


def _dcp_save(state, folder):
    with warnings.catch_warnings():  # a single process: DCP says it saves without a process group
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=str(folder), no_dist=True)


def test_dcp_folders_are_read_without_a_process_group(tmp_path):
    """dcp.save of the model's and the optimizer's state dicts, a folder a
    step: the model's weights are analysed, named as the model names them,
    the tied head counted once and the optimizer state left alone; the
    window's Gram is that of the parameter updates (float64 reference)."""
    model, opt, steps = _training(6)
    flats = []
    for step in steps:
        _dcp_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}, tmp_path / f"step-{step}")
        flats.append(_flat(model))
    assert sorted(p.name for p in (tmp_path / "step-3").iterdir()) == [".metadata", "__0_0.distcp"]
    found = list_checkpoints(str(tmp_path))
    assert [c.step for c in found] == list(range(7)) and found[2].path == str(tmp_path / "step-2")
    tensors, lr = load_checkpoint(found[-1])
    assert list(tensors) == list(model.state_dict()) and lr == 5e-2
    assert all(torch.equal(tensors[n], t) for n, t in model.state_dict().items())
    said = []
    off = analyze_checkpoints(str(tmp_path), out=str(tmp_path / "o"), window=4, groups=None, progress=False,
                              log=said.append)
    assert off.window.layout.names == ["emb.weight", "mid.weight", "mid.bias"]
    assert off.window.numel == flats[0].numel()
    _assert_gram(off, flats, 4)
    assert [r["step"] for r in off.history] == list(range(1, 7)) and off.history[-1]["lr"] == 5e-2
    log = "\n".join(said)
    assert "tied to another (counted once): head.weight" in log and "scale" in log
    meta = json.loads((tmp_path / "o" / "meta.json").read_text())["info"]["left_out"]
    assert meta["tied"] == {"head.weight": "emb.weight"} and meta["unchanged"] == ["scale"]


def test_tensors_equal_only_at_first_are_not_taken_for_tied(tmp_path):
    """Two zero-initialised biases of one shape are equal in the first DCP
    checkpoint only: both are analysed."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 3))
    with torch.no_grad():
        model[0].bias.zero_()
        model[1].bias.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(4):
        if step:
            opt.zero_grad()
            model(torch.randn(5, 4)).pow(2).sum().backward()
            opt.step()
        _dcp_save(model.state_dict(), tmp_path / f"step-{step}")
    off = analyze_checkpoints(str(tmp_path), out=str(tmp_path / "o"), window=2, progress=False, log=lambda s: None)
    assert off.window.layout.names == ["0.weight", "0.bias", "1.weight", "1.bias"]


def _lightning(root, step, model, opt):
    """Lightning's FSDP strategy, state_dict_type="sharded": a folder named
    as the checkpoint file, the LightningModule's state dict under "model"
    and each optimizer's under "optimizer_<k>", the rest in meta.pt."""
    folder = root / f"epoch=0-step={step}.ckpt"
    _dcp_save({"model": {"model." + k: v for k, v in model.state_dict().items()}, "optimizer_0": opt.state_dict()},
              folder)
    torch.save({"global_step": step, "epoch": 0}, folder / "meta.pt")


def _accelerate(root, step, model, opt):
    """A Trainer's checkpoint-N under Accelerate's FSDP (SHARDED_STATE_DICT):
    the model's DCP folder pytorch_model_fsdp_0, the optimizer's optimizer_0,
    the step in trainer_state.json."""
    folder = root / f"checkpoint-{step * 10}"
    _dcp_save({"model": model.state_dict()}, folder / "pytorch_model_fsdp_0")
    _dcp_save({"optimizer": opt.state_dict()}, folder / "optimizer_0")
    torch.save({"last_epoch": step}, folder / "scheduler.pt")
    torch.save({"cpu_rng_state": torch.ones(4, dtype=torch.uint8)}, folder / "rng_state_0.pth")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))


def _flattened(root, step, model, opt):
    """torchtitan's layout: the model's keys at the top level beside the
    optimizer's state, flattened (flatten_optimizer_state_dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    optim = get_optimizer_state_dict(model, opt, options=StateDictOptions(flatten_optimizer_state_dict=True))
    _dcp_save({**model.state_dict(), "optimizer": optim, "train_state": {"step": step}}, root / f"step-{step}")


@pytest.mark.parametrize("layout", [_lightning, _accelerate, _flattened], ids=lambda f: f.__name__.strip("_"))
def test_dcp_layouts_of_lightning_accelerate_and_torchtitan(tmp_path, layout):
    model, opt, steps = _training(4)
    flats = []
    for step in steps:
        layout(tmp_path, step, model, opt)
        flats.append(_flat(model))
    if layout is _lightning:  # ModelCheckpoint(save_last=True): a copy of the newest, its step in meta.pt
        _lightning(tmp_path, 4, model, opt)
        (tmp_path / "epoch=0-step=4.ckpt").rename(tmp_path / "last.ckpt")
        _lightning(tmp_path, 4, model, opt)
    found = list_checkpoints(str(tmp_path))
    assert [c.step for c in found] == list(range(5))
    assert all(c.path.endswith("pytorch_model_fsdp_0") for c in found) == (layout is _accelerate)
    prefix = "model." if layout is _lightning else ""
    tensors, lr = load_checkpoint(found[-1])
    assert list(tensors) == [prefix + n for n in model.state_dict()]
    assert torch.equal(tensors[prefix + "mid.weight"], model.mid.weight)
    assert lr == (None if layout is _accelerate else 5e-2)  # Accelerate's optimizer folder is not read
    off = analyze_checkpoints(str(tmp_path), out=str(tmp_path / "o"), window=3, groups=None, progress=False,
                              log=lambda s: None)
    _assert_gram(off, flats, 3)


def test_dcp_errors_name_the_folder_and_what_to_do(tmp_path):
    model = TiedNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _dcp_save({"optimizer": opt.state_dict()}, tmp_path / "optim-only" / "step-1")
    with pytest.raises(CheckpointError, match=r"step-1: holds no model weights \(no floating-point tensor outside "
                                              r"optimizer state\)"):
        load_checkpoint(list_checkpoints(str(tmp_path / "optim-only"))[0])
    # two dicts of tensors, neither under "model": which is the model's is not guessed; under "model" it is taken
    _dcp_save({"student": model.state_dict(), "teacher": model.state_dict()}, tmp_path / "two" / "step-1")
    with pytest.raises(CheckpointError, match=r"holds tensors under 'student', 'teacher': which are the model's is "
                                              r"not known; save the model's state dict alone, or under 'model'"):
        load_checkpoint(list_checkpoints(str(tmp_path / "two"))[0])
    _dcp_save({"model": model.state_dict(), "ema": model.state_dict()}, tmp_path / "ema" / "step-1")
    assert list(load_checkpoint(list_checkpoints(str(tmp_path / "ema"))[0])[0]) == list(model.state_dict())

    folder = tmp_path / "ema" / "step-1"
    (folder / "__0_0.distcp").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"ema/step-1: cannot be read"):
        load_checkpoint(list_checkpoints(str(tmp_path / "ema"))[0])
    (folder / ".metadata").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"step-1/\.metadata: is empty \(0 bytes\)"):
        load_checkpoint(list_checkpoints(str(tmp_path / "ema"))[0])


class Extra:
    """A class of this test module, pickled into a DCP folder's metadata."""


def test_dcp_metadata_runs_no_pickled_code_unless_allowed(tmp_path):
    model = TiedNet()
    _dcp_save(model.state_dict(), tmp_path / "step-1")
    path = tmp_path / "step-1" / ".metadata"
    metadata = pickle.loads(path.read_bytes())
    metadata.storage_meta.modules = [Extra()]
    path.write_bytes(pickle.dumps(metadata))
    with pytest.raises(CheckpointError, match=r"\.metadata: cannot be read without running pickled code: it holds "
                                              r"Python objects beyond tensors \(test_offline_sharded\.Extra\).*"
                                              r"--allow-pickle"):
        load_checkpoint(str(tmp_path / "step-1"))
    tensors, _ = load_checkpoint(str(tmp_path / "step-1"), allow_pickle=True)
    assert torch.equal(tensors["mid.weight"], model.mid.weight)


# -- DeepSpeed ------------------------------------------------------------------------------------------------------


def _deepspeed(root, step, model, opt, stage=2, mp=1):
    """A DeepSpeed engine's save_checkpoint, by hand: global_step<N>/ holding
    each model-parallel rank's model states (ZeRO 0-2: the whole weights
    under "module"; ZeRO-3: per data-parallel rank, the weights partitioned
    away) and the optimizer partitions, and the ``latest`` file."""
    tag = root / f"global_step{step}"
    tag.mkdir(parents=True)
    sd = model.state_dict()
    for rank in range(mp):
        states = {"module": sd if stage < 3 else {n: torch.empty(0) for n in sd},
                  "optimizer": opt.state_dict() if stage == 0 else None, "lr_scheduler": None,
                  "global_steps": step, "global_samples": 8 * step, "dp_world_size": 1, "mp_world_size": mp,
                  "buffer_names": ["scale"], "ds_version": "0.19.8"}
        prefix = "zero_pp_rank_0_" if stage == 3 else ""
        torch.save(states, tag / f"{prefix}mp_rank_{rank:02d}_model_states.pt")
        if stage:
            torch.save({"optimizer_state_dict": {"zero_stage": stage, "partition_count": 1}},
                       tag / f"bf16_zero_pp_rank_0_mp_rank_{rank:02d}_optim_states.pt")
    (root / "latest").write_text(f"global_step{step}")
    (root / "zero_to_fp32.py").write_text("# DeepSpeed's converter\n")


@pytest.mark.parametrize("stage", [0, 2])
def test_deepspeed_tag_folders_read_the_modules_weights(tmp_path, stage):
    model, opt, steps = _training(5)
    flats = []
    for step in steps:
        _deepspeed(tmp_path, step * 10, model, opt, stage)
        flats.append(_flat(model))
    found = list_checkpoints(str(tmp_path))
    assert [c.step for c in found] == list(range(0, 60, 10))
    assert all(c.path.endswith("mp_rank_00_model_states.pt") for c in found)
    off = analyze_checkpoints(str(tmp_path), out=str(tmp_path / "o"), window=3, groups=None, progress=False,
                              log=lambda s: None)
    _assert_gram(off, flats, 3)
    # ZeRO 0 keeps the optimizer state beside the weights; ZeRO 1-2 partition it into the files left unread
    assert off.history[-1]["lr"] == (5e-2 if stage == 0 else None)


def test_deepspeed_zero3_and_model_parallel_saves_are_refused_saying_what_to_do(tmp_path):
    model, opt, _ = _training(0)
    _deepspeed(tmp_path / "zero3", 10, model, opt, stage=3)
    with pytest.raises(CheckpointError, match=r"global_step10: a DeepSpeed ZeRO-3 checkpoint: its weights are "
                                              r"partitioned .* convert it to one state dict first with the "
                                              r"zero_to_fp32\.py DeepSpeed saves beside the tag folders"):
        list_checkpoints(str(tmp_path / "zero3"))
    _deepspeed(tmp_path / "mp", 10, model, opt, mp=2)
    with pytest.raises(CheckpointError, match=r"global_step10: a DeepSpeed model-parallel checkpoint \(2 "
                                              r"mp_rank_\*_model_states\.pt files, each a slice of the weights\)"):
        list_checkpoints(str(tmp_path / "mp"))
    # a Trainer's checkpoint under ZeRO-3 without gathered weights: the same advice, not "without model weights"
    _deepspeed(tmp_path / "trainer" / "checkpoint-10", 10, model, opt, stage=3)
    (tmp_path / "trainer" / "checkpoint-10" / "trainer_state.json").write_text(json.dumps({"global_step": 10}))
    with pytest.raises(CheckpointError, match=r"checkpoint-10/global_step10: a DeepSpeed ZeRO-3 checkpoint"):
        list_checkpoints(str(tmp_path / "trainer"))
    # the model states never written: the optimizer partitions alone are a save that did not finish
    _deepspeed(tmp_path / "cut", 10, model, opt)
    (tmp_path / "cut" / "global_step10" / "mp_rank_00_model_states.pt").unlink()
    with pytest.raises(CheckpointError, match=r"global_step10: training state \(bf16_zero_pp_rank_0_mp_rank_00_"
                                              r"optim_states\.pt\) without model weights"):
        list_checkpoints(str(tmp_path / "cut"))


def test_a_trainers_deepspeed_folder_yields_to_its_weights(tmp_path):
    """The Trainer under DeepSpeed saves the weights and, below them, the
    engine's tag folder: one checkpoint a step, the Trainer's."""
    pytest.importorskip("safetensors", reason="the safetensors package is not installed")
    from safetensors.torch import save_file

    model, opt, _ = _training(0)
    for step in (5, 10):
        folder = tmp_path / f"checkpoint-{step}"
        _deepspeed(folder, step, model, opt)
        save_file({"w": torch.full((3,), float(step))}, str(folder / "model.safetensors"))
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    assert [(c.step, c.path) for c in list_checkpoints(str(tmp_path))] == [
        (s, str(tmp_path / f"checkpoint-{s}" / "model.safetensors")) for s in (5, 10)]


# -- .pth.tar -------------------------------------------------------------------------------------------------------


def test_pth_tar_files_of_the_imagenet_example(tmp_path):
    """torch.save({"epoch", "arch", "state_dict", "best_acc1", "optimizer"},
    "checkpoint_<epoch>.pth.tar"), the weights under DataParallel's prefix."""
    model, opt, steps = _training(4)
    flats = []
    for step in steps:
        sd = {"module." + k: v for k, v in model.state_dict().items()}
        torch.save({"epoch": step, "arch": "tiednet", "state_dict": sd, "best_acc1": torch.tensor(12.5),
                    "optimizer": opt.state_dict()}, tmp_path / f"checkpoint_{step}.pth.tar")
        flats.append(_flat(model))
    found = list_checkpoints(str(tmp_path))
    assert [c.step for c in found] == list(range(5))
    assert list(load_checkpoint(found[0])[0]) == ["module." + n for n in model.state_dict() if n != "head.weight"]
    off = analyze_checkpoints(str(tmp_path), out=str(tmp_path / "o"), window=3, groups=None, progress=False,
                              log=lambda s: None)
    assert off.window.layout.names == ["emb.weight", "mid.weight", "mid.bias"]  # the monitor drops DDP's prefix
    _assert_gram(off, flats, 3)
    assert off.history[-1]["lr"] == 5e-2


def _save_sharded(rank, world, store, folder, states):
    """One rank of a gloo group: each tensor sharded along dim 0 as FSDP2
    shards it (DTensor, Shard(0), uneven where the size does not divide),
    saved with dcp.save, a folder a step."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        for step, sd in enumerate(states):
            dcp.save({"model": {n: distribute_tensor(t, mesh, [Shard(0)]) for n, t in sd.items()}},
                     checkpoint_id=f"{folder}/step-{step}")
    finally:
        dist.destroy_process_group()


def test_dcp_shards_of_two_ranks_are_assembled(tmp_path):
    """A checkpoint saved by two ranks, each holding half of every tensor
    (a file each): read on one process, every tensor is whole, and the
    window's Gram is that of the updates (float64 reference)."""
    import torch.multiprocessing as mp

    gen = torch.Generator().manual_seed(3)
    states, sd = [], {"a.weight": torch.randn(5, 4, generator=gen), "b.weight": torch.randn(3, 2, generator=gen)}
    for _ in range(4):
        states.append(sd)
        sd = {n: t + 0.1 * torch.randn(t.shape, generator=gen) for n, t in sd.items()}
    mp.spawn(_save_sharded, args=(2, str(tmp_path / "store"), str(tmp_path / "ckpts"), states), nprocs=2)
    assert sorted(p.name for p in (tmp_path / "ckpts" / "step-0").iterdir()) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp"]
    found = list_checkpoints(str(tmp_path / "ckpts"))
    tensors, _ = load_checkpoint(found[2])
    assert all(torch.equal(tensors[n], t) for n, t in states[2].items())
    off = analyze_checkpoints(str(tmp_path / "ckpts"), out=str(tmp_path / "o"), window=3, groups=None,
                              progress=False, log=lambda s: None)
    _assert_gram(off, [torch.cat([t.double().flatten() for t in sd.values()]) for sd in states], 3)
