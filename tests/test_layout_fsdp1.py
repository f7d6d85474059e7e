"""FSDP1 (FullyShardedDataParallel) on 2 gloo processes: with
``use_orig_params=False`` each wrapped unit is one padded, sharded
FlatParameter holding many original parameters; with ``True`` the original
parameters are 1-D views of their rank's part of it. Either way the window
must see every original parameter under its own name and group, count no
padding, and give the Gram of a single-process window on the same updates,
in exact and in sketch mode."""
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from spectral_edge_fast import GramWindow, SpectralMonitor
from spectral_edge_fast.analysis import spectrum
from test_distributed import _flat, _init, _spawn

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available in this build")
SKETCH = 64  # embed (56) and head (27) kept exactly, each block (161) sketched


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(8, 9), nn.Linear(9, 8)  # 161 numbers: odd, so the shards are padded

    def forward(self, x):
        return x + self.down(torch.tanh(self.up(x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.blocks, self.head = nn.Linear(6, 8), nn.ModuleList([Block(), Block()]), nn.Linear(8, 3)

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


CONFIGS = ("flat_params", "orig_params", "no_shard")


def _fsdp1_worker(rank, world, store_path, out_dir):
    """For each config (use_orig_params False, True; NO_SHARD): FSDP1 with a
    unit per block (the root unit holds embed and head) and SGD; exact and
    sketched windows and a monitor on it, and the same windows on an
    unsharded copy of the model loaded with the full parameters after each
    step; the last gradient projected on both."""
    _init(rank, store_path, world)
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    group = dist.group.WORLD
    out, models = {}, {}
    for config in CONFIGS:
        torch.manual_seed(0)
        model, plain = Net(), Net()
        plain.load_state_dict(model.state_dict())
        strategy = ShardingStrategy.NO_SHARD if config == "no_shard" else ShardingStrategy.FULL_SHARD
        fsdp = FSDP(model, device_id=torch.device("cpu"), use_orig_params=config == "orig_params",
                    sharding_strategy=strategy, auto_wrap_policy=ModuleWrapPolicy({Block}))
        models[config] = fsdp
        opt = torch.optim.SGD(fsdp.parameters(), lr=0.05)
        try:
            wins = {m: GramWindow(fsdp, window=3, sketch=m, process_group=group) for m in (None, SKETCH)}
            monitor = SpectralMonitor(fsdp, opt, window=3, analyze_every=5, sinks=(), process_group=group)
        except Exception as exc:
            out[config] = f"{type(exc).__name__}: {exc}"
            continue
        refs = {m: GramWindow(plain, window=3, sketch=m) for m in (None, SKETCH)}
        history, last = [], _flat(plain.state_dict().values())
        for step in range(6):
            x = torch.randn(4, 6, generator=torch.Generator().manual_seed(10 * step + rank))
            fsdp(x).pow(2).mean().backward()
            if step == 5:  # the gradient averaged over the ranks, projected on the window
                plain.zero_grad()
                plain(x).pow(2).mean().backward()
                for p in plain.parameters():
                    dist.all_reduce(p.grad, group=group)
                grads = [p.grad / world for p in plain.parameters()]
                projected = (wins[None].project([p.grad for p in wins[None].layout.params]),
                             monitor.observe_gradients("train"), refs[None].project(grads))
                break
            opt.step()  # the monitor's hook steps it
            opt.zero_grad()
            for w in wins.values():
                w.step()
            plain.load_state_dict(fsdp.state_dict())  # the full parameters, on every rank
            for w in refs.values():
                w.step()
            now = _flat(plain.state_dict().values())
            history.append(now - last)
            last = now
        out[config] = dict(_summary(wins, refs, monitor, history), projected=projected)
        try:  # the flat parameters unsharded: the window refuses to read them
            with FSDP.summon_full_params(fsdp):
                wins[None].step()
            out[config]["unsharded"] = None
        except ValueError as exc:
            out[config]["unsharded"] = str(exc)
        with fsdp.no_sync():  # gradients accumulated unsharded: not read as a shard's
            fsdp(torch.randn(4, 6)).pow(2).mean().backward()
        try:
            out[config]["no_sync"] = [p.grad.shape for p in wins[None].layout.params]
        except ValueError as exc:
            out[config]["no_sync"] = str(exc)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dtensor = distribute_tensor(torch.zeros(6, 2), init_device_mesh("cpu", (world,)), [Shard(0)])
    refused = {  # the flat parameters without their module; shards without a process group
        "tensors": lambda: GramWindow(list(models["flat_params"].named_parameters()), window=3, process_group=group),
        "no group": lambda: GramWindow(models["orig_params"], window=3),
        "dtensor no group": lambda: GramWindow([("d.w", dtensor)], window=3),
    }
    for key, build in refused.items():
        try:
            build()
            out[key] = None
        except ValueError as exc:
            out[key] = str(exc)
    torch.save(out, os.path.join(out_dir, f"fsdp1_{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def fsdp1_runs():
    return _spawn(_fsdp1_worker, "fsdp1_", deadline=240.0)


def _close(got, want, rel):
    """Entry-wise within ``rel`` of the entries' Cauchy-Schwarz bound."""
    d = np.sqrt(np.abs(np.diag(want)))
    return np.all(np.abs(got - want) <= rel * np.outer(d, d) + 1e-12)


def _summary(wins, refs, monitor, history) -> dict:
    """What a worker saves of its sharded windows (``wins``, exact and
    sketched), the single-process windows on the full parameters (``refs``)
    and the last three updates (``history``), for :func:`_assert_like_unsharded`."""
    x = torch.stack(history[-3:])
    monitor.flush()
    return {
        "names": wins[None].layout.names, "want names": refs[None].layout.names,
        "groups": wins[None].groups, "want groups": refs[None].groups,
        "P": wins[None].numel, "want P": refs[None].numel, "local": wins[None].layout.numel,
        "exact": wins[None].group_grams(), "exact want": refs[None].group_grams(),
        "brute": (x @ x.T).numpy(), "scale": (x.abs() @ x.abs().T).numpy(),
        "sketch": wins[SKETCH].group_grams(), "sketch want": refs[SKETCH].group_grams(),
        "sigmas": np.array(monitor.history[-1]["sigmas"]),
        "sigmas want": spectrum((x @ x.T).numpy(), eps=float(np.finfo(np.float32).eps)).sigmas,
        "moved": float(x.abs().sum()),
    }


def _assert_like_unsharded(r: dict, rank: int) -> None:
    """Names, groups and sizes of the unsharded model (no padding counted);
    exact Grams equal to the single-process window's per group and, summed,
    to the brute force; sketched Grams equal too (the same S); the monitor's
    spectrum that of the brute force."""
    assert not isinstance(r, str), r
    assert r["moved"] > 0, "the parameters were trained"
    assert sorted(r["names"]) == sorted(r["want names"]), r["names"]
    assert sorted(r["groups"]) == sorted(r["want groups"]) == ["blocks.0", "blocks.1", "embed", "head"], r["groups"]
    assert r["P"] == r["want P"] == 2 * 161 + 56 + 27, "no padding counted"
    for g in r["want groups"]:
        assert _close(r["exact"][g], r["exact want"][g], 1e-5), (rank, g)
        assert _close(r["sketch"][g], r["sketch want"][g], 1e-5), (rank, g)
    total = sum(r["exact"].values())
    assert (np.abs(total - r["brute"]) <= 1e-5 * r["scale"] + 1e-12).all()
    assert np.allclose(r["sigmas"], r["sigmas want"], rtol=1e-5, atol=0)


@pytest.mark.parametrize("config", CONFIGS)
def test_fsdp1_sees_the_original_parameters_and_their_full_gram(fsdp1_runs, config):
    for rank, runs in enumerate(fsdp1_runs):
        r = runs[config]
        _assert_like_unsharded(r, rank)
        # the gradient read from the flat parameters' .grad (the window's and the monitor's)
        got, monitored, want = r["projected"]
        for p in (got, monitored):
            assert np.all(np.abs(p - want) <= 1e-5 * np.abs(want).max() + 1e-12), (p, want)
        if config == "no_shard":  # nothing to unshard: the full parameters are read as ever
            assert r["unsharded"] is None, r["unsharded"]
        else:
            assert "FSDP flat parameter holds" in (r["unsharded"] or ""), r["unsharded"]
            assert "(it is unsharded, as under no_sync())" in str(r["no_sync"]), r["no_sync"]
    assert sum(runs[config]["local"] for runs in fsdp1_runs) == fsdp1_runs[0][config]["P"], "each number held once"
    assert all(np.array_equal(fsdp1_runs[0][config]["exact"][g], runs[config]["exact"][g])
               for runs in fsdp1_runs for g in runs[config]["groups"]), "ranks disagree"


def test_fsdp1_flat_parameters_without_their_module_are_refused(fsdp1_runs):
    for runs in fsdp1_runs:
        assert "is part of an FSDP (FullyShardedDataParallel) flat parameter; pass the FSDP-wrapped module" in (
            runs["tensors"] or ""), runs["tensors"]


def test_shards_without_a_process_group_are_refused(fsdp1_runs):
    """Without an all-reduce a rank's Gram would be that of its own part only."""
    for runs in fsdp1_runs:
        for key in ("no group", "dtensor no group"):
            assert "is sharded: this process holds" in (runs[key] or "") and "pass process_group=" in runs[key], runs[key]


def _hybrid_worker(rank, world, store_path, out_dir):
    """FSDP1 HYBRID_SHARD on a 2 x 2 mesh: each unit sharded over the 2 ranks
    of a "shard" group, replicated over the 2 groups. Over the whole world
    the window refuses (every number held twice); over the shard group it
    is the single-process window of the same updates, in exact and sketch
    mode, and both replica groups agree."""
    _init(rank, store_path, world)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
    model, plain = Net(), Net()
    plain.load_state_dict(model.state_dict())
    fsdp = FSDP(model, device_id=torch.device("cpu"), sharding_strategy=ShardingStrategy.HYBRID_SHARD,
                device_mesh=mesh, auto_wrap_policy=ModuleWrapPolicy({Block}))
    out = {}
    try:
        GramWindow(fsdp, window=3, process_group=dist.group.WORLD)
        out["world"] = None
    except ValueError as exc:
        out["world"] = str(exc)
    group = mesh.get_group("shard")
    opt = torch.optim.SGD(fsdp.parameters(), lr=0.05)
    wins = {m: GramWindow(fsdp, window=3, sketch=m, process_group=group) for m in (None, SKETCH)}
    monitor = SpectralMonitor(fsdp, opt, window=3, analyze_every=5, sinks=(), process_group=group)
    refs = {m: GramWindow(plain, window=3, sketch=m) for m in (None, SKETCH)}
    history, last = [], _flat(plain.state_dict().values())
    for step in range(5):
        x = torch.randn(4, 6, generator=torch.Generator().manual_seed(10 * step + rank))
        fsdp(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        for w in wins.values():
            w.step()
        plain.load_state_dict(fsdp.state_dict())
        for w in refs.values():
            w.step()
        now = _flat(plain.state_dict().values())
        history.append(now - last)
        last = now
    out["hybrid"] = _summary(wins, refs, monitor, history)
    torch.save(out, os.path.join(out_dir, f"hybrid_{rank}.pt"))
    dist.destroy_process_group()


def test_fsdp1_hybrid_shard_is_monitored_over_its_shard_group():
    runs = _spawn(_hybrid_worker, "hybrid_", world=4, deadline=240.0)
    for rank, r in enumerate(runs):
        assert "shards do not add up across ranks" in (r["world"] or ""), r["world"]
        assert "HYBRID_SHARD" in r["world"] and "shard group" in r["world"], r["world"]
        _assert_like_unsharded(r["hybrid"], rank)
    for g in runs[0]["hybrid"]["groups"]:  # the two replica groups computed the same Gram
        assert all(np.array_equal(runs[0]["hybrid"]["exact"][g], r["hybrid"]["exact"][g]) for r in runs), g
