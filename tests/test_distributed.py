"""Sharded Grams with a real gloo process group of 2 processes on the CPU:
every rank must see the Gram of the whole model, equal to the brute-force
float64 Gram of the same updates."""
import os
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from spectral_edge_fast import GramWindow, SpectralMonitor
from spectral_edge_fast.analysis import spectrum

WORLD = 2
pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available in this build")


def _init(rank, store_path):
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=WORLD)
    torch.manual_seed(0)


def _model():
    return torch.nn.Sequential(torch.nn.Linear(13, 31), torch.nn.Tanh(), torch.nn.Linear(31, 5))


def _flat(tensors):
    return torch.cat([t.detach().reshape(-1).double() for t in tensors])


def _check(win, history, out):
    x = torch.stack(history[-win.window :])
    want = (x @ x.T).numpy()
    got = win.gram()
    scale = (x.abs() @ x.abs().T).numpy()
    torch.save({"got": got, "want": want, "scale": scale, "local": win.layout.numel, "P": win.numel}, out)


def _ddp_worker(rank, store_path, out_dir):
    """DDP training, each rank storing half of the ring."""
    _init(rank, store_path)
    model = _model()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-2)
    win = GramWindow(model, window=4, process_group=dist.group.WORLD)
    monitor = SpectralMonitor(model, opt, window=4, analyze_every=9, sinks=(), process_group=dist.group.WORLD)
    gen = torch.Generator().manual_seed(rank)
    history, last = [], _flat(model.parameters())
    for _ in range(9):
        x = torch.randn(16, 13, generator=gen)
        loss = ddp(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        win.step()
        now = _flat(model.parameters())
        history.append(now - last)
        last = now
    _check(win, history, os.path.join(out_dir, f"ddp{rank}.pt"))
    monitor.flush()
    x = torch.stack(history[-4:])
    want = spectrum((x @ x.T).numpy(), eps=float(np.finfo(np.float32).eps)).sigmas
    torch.save({"got": np.array(monitor.history[-1]["sigmas"]), "want": want}, os.path.join(out_dir, f"monitor{rank}.pt"))
    g = [torch.ones_like(p) for p in model.parameters()]
    p = win.project(g)
    torch.save({"project": p, "want": torch.stack(history[-4:]).sum(1).numpy()}, os.path.join(out_dir, f"proj{rank}.pt"))
    dist.destroy_process_group()


def _dtensor_worker(rank, store_path, out_dir):
    """Parameters sharded as DTensors: each rank holds disjoint rows."""
    _init(rank, store_path)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (WORLD,))
    full = [torch.randn(10, 7), torch.randn(6)]
    params = [distribute_tensor(t.clone(), mesh, [Shard(0)]) for t in full]
    win = GramWindow(params, window=3, process_group=dist.group.WORLD)
    gen = torch.Generator().manual_seed(123)  # the same full updates on every rank
    history = []
    for _ in range(7):
        updates = [torch.randn(t.shape, generator=gen) for t in full]
        for p, u in zip(params, updates):
            rows = u.shape[0] // WORLD
            p.to_local().add_(u[rank * rows : (rank + 1) * rows])
        win.step()
        history.append(_flat(updates))
    _check(win, history, os.path.join(out_dir, f"dtensor{rank}.pt"))
    dist.destroy_process_group()


def _fsdp_worker(rank, store_path, out_dir):
    _init(rank, store_path)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = _model()
    full_before = _flat(model.parameters())
    try:
        # a CPU mesh: with a GPU visible, the default mesh would put rank r on cuda:r
        fully_shard(model, mesh=init_device_mesh("cpu", (WORLD,)))
    except Exception as exc:  # reported to the parent, which skips with the reason
        torch.save({"error": f"{type(exc).__name__}: {exc}"}, os.path.join(out_dir, f"fsdp{rank}.pt"))
        return
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    win = GramWindow(model, window=3, process_group=dist.group.WORLD)
    history, last = [], full_before
    for step in range(6):
        x = torch.randn(8, 13, generator=torch.Generator().manual_seed(step * 10 + rank))
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        win.step()
        now = _flat([p.full_tensor() for p in model.parameters()])
        history.append(now - last)
        last = now
    _check(win, history, os.path.join(out_dir, f"fsdp{rank}.pt"))
    dist.destroy_process_group()


def _spawn(worker, *prefixes):
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(os.path.join(tmp, "store"), tmp), nprocs=WORLD, join=True)
        out = [[torch.load(os.path.join(tmp, f"{p}{r}.pt"), weights_only=False) for r in range(WORLD)] for p in prefixes]
        return out[0] if len(out) == 1 else out


def _assert_same_gram_everywhere(results):
    for r in results:
        err = np.abs(r["got"] - r["want"])
        assert (err <= 1e-5 * r["scale"] + 1e-12).all(), f"max error {err.max():.3e}"
    assert np.array_equal(results[0]["got"], results[1]["got"]), "ranks disagree"


def test_ddp_replicated_parameters_shard_the_ring():
    results, monitors, projections = _spawn(_ddp_worker, "ddp", "monitor", "proj")
    _assert_same_gram_everywhere(results)
    P = results[0]["P"]
    assert [r["local"] for r in results] == [P // 2, P - P // 2], "each rank stores half of the ring"
    for m in monitors:  # the monitor's spectrum is that of a single-process run of the same updates
        assert np.allclose(m["got"], m["want"], rtol=1e-5, atol=0)
    for p in projections:
        assert np.allclose(p["project"], p["want"], rtol=1e-5, atol=1e-9)


def test_dtensor_shards_sum_to_the_full_gram():
    _assert_same_gram_everywhere(_spawn(_dtensor_worker, "dtensor"))


def test_fsdp2_fully_shard():
    results = _spawn(_fsdp_worker, "fsdp")
    if "error" in results[0]:
        pytest.skip(f"FSDP2 fully_shard unsupported on this CPU build: {results[0]['error']}")
    _assert_same_gram_everywhere(results)
