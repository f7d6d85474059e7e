"""Sharded Grams with a real gloo process group of 2 to 4 processes on the
CPU: every rank must see the Gram of the whole model, equal to the brute-force
float64 Gram of the same updates, and ranks whose windows were built
differently must all get the same error at construction."""
import datetime
import os
import tempfile
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from spectral_edge_fast import GramWindow, SpectralMonitor
from spectral_edge_fast.analysis import spectrum

WORLD = 2
pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available in this build")


def _init(rank, store_path, world):
    # a short timeout: a rank left waiting in a collective fails the test instead of hanging it
    dist.init_process_group(
        "gloo", init_method=f"file://{store_path}", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=30)
    )
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
    result = {"got": got, "want": want, "scale": scale, "local": win.layout.numel, "P": win.numel}
    torch.save(result, out)
    return result


def _ddp_worker(rank, world, store_path, out_dir):
    """DDP training, each rank storing half of the ring."""
    _init(rank, store_path, world)
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
    results_gram = _check(win, history, os.path.join(out_dir, f"ddp{rank}.pt"))["got"]
    monitor.flush()
    x = torch.stack(history[-4:])
    want = spectrum((x @ x.T).numpy(), eps=float(np.finfo(np.float32).eps)).sigmas
    torch.save({"got": np.array(monitor.history[-1]["sigmas"]), "want": want}, os.path.join(out_dir, f"monitor{rank}.pt"))
    g = [torch.ones_like(p) for p in model.parameters()]
    p = win.project(g)
    # each rank's window state holds its slice of the ring: another rank's is refused
    own = os.path.join(out_dir, f"state{rank}.pt")
    torch.save(win.state_dict(), own)
    dist.barrier()
    refusals = []
    other = torch.load(os.path.join(out_dir, f"state{1 - rank}.pt"), weights_only=False)
    legacy = {k: v for k, v in torch.load(own, weights_only=False).items() if k not in ("rank", "world", "pieces")}
    for state in (other, legacy):
        try:
            win.load_state_dict(state)
            refusals.append(None)
        except ValueError as exc:
            refusals.append(str(exc))
    win.load_state_dict(torch.load(own, weights_only=False))
    reloaded = win.gram()
    torch.save({"project": p, "want": torch.stack(history[-4:]).sum(1).numpy(), "refusals": refusals,
                "reloaded": reloaded, "gram": results_gram}, os.path.join(out_dir, f"proj{rank}.pt"))
    dist.destroy_process_group()


def _dtensor_worker(rank, world, store_path, out_dir):
    """Parameters sharded as DTensors: each rank holds disjoint rows."""
    _init(rank, store_path, world)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    full = [torch.randn(10, 7), torch.randn(6)]
    params = [distribute_tensor(t.clone(), mesh, [Shard(0)]) for t in full]
    win = GramWindow(params, window=3, process_group=dist.group.WORLD)
    gen = torch.Generator().manual_seed(123)  # the same full updates on every rank
    history = []
    for _ in range(7):
        updates = [torch.randn(t.shape, generator=gen) for t in full]
        for p, u in zip(params, updates):
            rows = u.shape[0] // world
            p.to_local().add_(u[rank * rows : (rank + 1) * rows])
        win.step()
        history.append(_flat(updates))
    _check(win, history, os.path.join(out_dir, f"dtensor{rank}.pt"))
    dist.destroy_process_group()


def _fsdp_worker(rank, world, store_path, out_dir):
    """FSDP2 over the world; with 4 ranks HSDP: sharded within each half of a
    2 x 2 mesh, replicated across the halves, monitored over the shard group
    (over the world, every number held twice, the window refuses)."""
    _init(rank, store_path, world)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = _model()
    full_before = _flat(model.parameters())
    hsdp = world == 4
    # a CPU mesh: with a GPU visible, the default mesh would put rank r on cuda:r
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard")) if hsdp else init_device_mesh("cpu", (world,))
    try:
        fully_shard(model, mesh=mesh)
    except Exception as exc:  # reported to the parent, which skips with the reason
        torch.save({"error": f"{type(exc).__name__}: {exc}"}, os.path.join(out_dir, f"fsdp{rank}.pt"))
        return
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    refused = None
    if hsdp:
        try:
            GramWindow(model, window=3, process_group=dist.group.WORLD)
        except ValueError as exc:
            refused = str(exc)
    win = GramWindow(model, window=3, process_group=mesh.get_group("shard") if hsdp else dist.group.WORLD)
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
    result = _check(win, history, os.path.join(out_dir, f"fsdp{rank}.pt"))
    if hsdp:
        torch.save(dict(result, refused=refused), os.path.join(out_dir, f"fsdp{rank}.pt"))
    dist.destroy_process_group()


def _spawn(worker, *prefixes, world=WORLD, deadline=120.0):
    """``worker(rank, world, store_path, out_dir)`` on ``world`` processes;
    for each prefix, the per-rank results it saved as ``{prefix}{rank}.pt``.
    A process that dies (gloo aborts) raises here; one still running at the
    deadline is killed and fails the test, so no worker can hang it."""
    with tempfile.TemporaryDirectory() as tmp:
        ctx = mp.start_processes(worker, args=(world, os.path.join(tmp, "store"), tmp), nprocs=world, join=False)
        end = time.monotonic() + deadline
        try:
            while not ctx.join(timeout=max(end - time.monotonic(), 0.0)):
                if time.monotonic() >= end:
                    pytest.fail(f"workers still running after {deadline:.0f} s")
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
        out = [[torch.load(os.path.join(tmp, f"{p}{r}.pt"), weights_only=False) for r in range(world)] for p in prefixes]
        return out[0] if len(out) == 1 else out


def _assert_same_gram_everywhere(results):
    for r in results:
        err = np.abs(r["got"] - r["want"])
        assert (err <= 1e-5 * r["scale"] + 1e-12).all(), f"max error {err.max():.3e}"
    assert all(np.array_equal(results[0]["got"], r["got"]) for r in results), "ranks disagree"


def test_ddp_replicated_parameters_shard_the_ring():
    results, monitors, projections = _spawn(_ddp_worker, "ddp", "monitor", "proj")
    _assert_same_gram_everywhere(results)
    P = results[0]["P"]
    assert [r["local"] for r in results] == [P // 2, P - P // 2], "each rank stores half of the ring"
    for m in monitors:  # the monitor's spectrum is that of a single-process run of the same updates
        assert np.allclose(m["got"], m["want"], rtol=1e-5, atol=0)
    for rank, p in enumerate(projections):
        assert np.allclose(p["project"], p["want"], rtol=1e-5, atol=1e-9)
        other, legacy = p["refusals"]
        assert other is not None and f"rank {1 - rank}'s slice" in other and f"not rank {rank}'s" in other, other
        assert legacy is not None and "does not say which rank saved it" in legacy, legacy
        assert np.array_equal(p["reloaded"], p["gram"]), "a rank's own state restores its window"


def test_dtensor_shards_sum_to_the_full_gram():
    _assert_same_gram_everywhere(_spawn(_dtensor_worker, "dtensor"))


def test_fsdp2_fully_shard():
    results = _spawn(_fsdp_worker, "fsdp")
    if "error" in results[0]:
        pytest.skip(f"FSDP2 fully_shard unsupported on this CPU build: {results[0]['error']}")
    _assert_same_gram_everywhere(results)


def test_fsdp2_hsdp_is_monitored_over_its_shard_group():
    results = _spawn(_fsdp_worker, "fsdp", world=4)
    assert "error" not in results[0], results[0]
    _assert_same_gram_everywhere(results)
    for r in results:
        assert "shards do not add up across ranks" in (r["refused"] or "") and "HYBRID_SHARD" in r["refused"], r


# -- ranks built differently ---------------------------------------------------

ODD = 2  # the rank that is out of step
MISMATCHES = ("parameters", "window", "every", "storage_dtype", "extra group", "sharding")


def _mismatched_window(case, rank, world, mesh):
    """A window built like every other rank's, except on rank ODD as ``case`` says."""
    from torch.distributed.tensor import Shard, distribute_tensor

    odd = rank == ODD
    kwargs = dict(window=4, every=1, storage_dtype=torch.float32, groups="auto")
    params = [("a.w", torch.zeros(5, 4)), ("b.w", torch.zeros(6))]
    if case == "parameters":  # one group everywhere, a different second tensor on rank ODD
        kwargs["groups"] = None
        if odd:
            params[1] = ("b.v", torch.zeros(7))
    elif case == "extra group" and odd:
        params.append(("c.w", torch.zeros(3)))
    elif case == "sharding":  # a DTensor everywhere but a plain tensor on rank ODD
        full = torch.zeros(8, 3)
        shard = distribute_tensor(full, mesh, [Shard(0)])  # a collective: every rank takes part
        params.append(("s.w", full if odd else shard))
    elif odd and case in ("window", "every", "storage_dtype"):
        kwargs[case] = {"window": 8, "every": 2, "storage_dtype": torch.bfloat16}[case]
    return GramWindow(params, process_group=dist.group.WORLD, **kwargs)


def _setup_worker(rank, world, store_path, out_dir):
    _init(rank, store_path, world)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    out = {}
    for case in MISMATCHES:
        try:
            _mismatched_window(case, rank, world, mesh)
            out[case] = None
        except Exception as exc:
            out[case] = f"{type(exc).__name__}: {exc}"
    if world == 4:  # a DTensor sharded over half of the process group: every row held twice
        half = init_device_mesh("cpu", (2, 2))
        try:
            GramWindow([("h.w", distribute_tensor(torch.zeros(8, 3), half, [Shard(0), Replicate()]))], process_group=dist.group.WORLD)
            out["double"] = None
        except Exception as exc:
            out["double"] = f"{type(exc).__name__}: {exc}"
    # Matching settings after the errors: the group still works, and uneven and
    # empty DTensor shards (10, 2 and 1 rows over 3 or 4 ranks) next to a
    # replicated tensor give the Gram of the whole model.
    full = [torch.randn(10, 3), torch.randn(2), torch.randn(1), torch.randn(7, 5)]
    shards = [distribute_tensor(t.clone(), mesh, [Shard(0)]) for t in full[:3]]
    names = ("s.w", "s.b", "e.w")
    win = GramWindow([*zip(names, shards), ("r.w", full[3])], window=3, process_group=dist.group.WORLD)
    gen = torch.Generator().manual_seed(7)  # the same full updates on every rank
    history = []
    for _ in range(5):
        updates = [torch.randn(t.shape, generator=gen) for t in full]
        for p, u in zip(shards, updates):
            p.to_local().add_(distribute_tensor(u, mesh, [Shard(0)]).to_local())
        full[3].add_(updates[3])
        win.step()
        history.append(_flat(updates))
    out["gram"] = _check(win, history, os.path.join(out_dir, f"gram{rank}.pt"))
    out["local"] = [b - a for a, b in zip(win.layout.bounds, win.layout.bounds[1:])]
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module", params=(3, 4), ids=lambda w: f"world{w}")
def setup_runs(request):
    return request.param, _spawn(_setup_worker, "rank", world=request.param)


def _others(world):
    return "ranks " + ", ".join(str(r) for r in range(world) if r != ODD)


EXPECTED = {  # what the message must say, given the list of in-step ranks
    "parameters": lambda others: f"parameter 1 is 'b.w' (6,) replicated on {others} but 'b.v' (7,) replicated on rank 2",
    "window": lambda others: f"window is 4 on {others} but 8 on rank 2",
    "every": lambda others: f"every is 1 on {others} but 2 on rank 2",
    "storage_dtype": lambda others: f"storage_dtype is torch.float32 on {others} but torch.bfloat16 on rank 2",
    "extra group": lambda others: f"group 2 is absent on {others} but 'c' on rank 2",
    "sharding": lambda others: f"parameter 2 is 's.w' (8, 3) sharded on {others} but 's.w' (8, 3) replicated on rank 2",
}


@pytest.mark.parametrize("case", MISMATCHES)
def test_setup_mismatch_raises_the_same_error_on_every_rank(setup_runs, case):
    world, results = setup_runs
    errors = [r[case] for r in results]
    assert all(e is not None for e in errors), f"ranks {[r for r, e in enumerate(errors) if e is None]} raised nothing"
    assert len(set(errors)) == 1, f"ranks report differently: {errors}"
    assert errors[0].startswith("ValueError: GramWindow setup differs across ranks: "), errors[0]
    assert EXPECTED[case](_others(world)) in errors[0], errors[0]


def test_setup_mismatch_leaves_the_group_usable_and_matching_shards_exact(setup_runs):
    world, results = setup_runs
    _assert_same_gram_everywhere([r["gram"] for r in results])
    locals_ = np.array([r["local"] for r in results])  # [rank, group]
    assert locals_.sum(0).tolist() == [10 * 3 + 2, 1, 7 * 5]
    assert (locals_[:, 1] == 0).sum() == world - 1, "group e is one row: empty on all ranks but one"


@pytest.mark.parametrize("setup_runs", [4], indirect=True, ids=["world4"])  # a mesh over half the group: 4 ranks
def test_shards_that_do_not_add_up_raise_on_every_rank(setup_runs):
    world, results = setup_runs
    errors = [r["double"] for r in results]
    assert len(set(errors)) == 1 and errors[0] is not None, errors
    assert "parameter 'h.w' (8, 3) has 24 numbers but the ranks hold 48 (12 on ranks 0-3)" in errors[0], errors[0]


def _calls_worker(rank, world, store_path, out_dir):
    """project() and combine() on uneven DTensor shards next to a replicated
    tensor; then with input out of step on rank ODD."""
    _init(rank, store_path, world)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    full = [torch.randn(10, 3), torch.randn(7, 5)]
    shard = distribute_tensor(full[0].clone(), mesh, [Shard(0)])
    win = GramWindow([("s.w", shard), ("r.w", full[1])], window=3, process_group=dist.group.WORLD)
    gen = torch.Generator().manual_seed(7)  # the same full updates on every rank
    history = []
    for _ in range(4):
        updates = [torch.randn(t.shape, generator=gen) for t in full]
        shard.to_local().add_(distribute_tensor(updates[0], mesh, [Shard(0)]).to_local())
        full[1].add_(updates[1])
        win.step()
        history.append(updates)
    out = {}

    def attempt(key, fn):
        try:
            out[key] = fn()
        except Exception as exc:
            out[key] = f"{type(exc).__name__}: {exc}"

    c = [1.0, -2.0, 0.5]
    rows = history[-3:]
    want = [sum(ci * u[i] for ci, u in zip(c, rows)) for i in range(2)]
    out["combine want"] = [distribute_tensor(want[0], mesh, [Shard(0)]).to_local(), want[1]]
    attempt("combine", lambda: win.combine(c))
    y = [torch.randn(t.shape, generator=gen) for t in full]
    out["project want"] = np.array([sum(float((u[i].double() * y[i].double()).sum()) for i in range(2)) for u in rows])
    y_local = [distribute_tensor(y[0], mesh, [Shard(0)]).to_local(), y[1]]
    odd = rank == ODD
    attempt("combine other values", lambda: win.combine([1.0, -2.0, 0.25] if odd else c))
    attempt("combine other length", lambda: win.combine(c[:2] if odd else c))
    attempt("project bad input", lambda: win.project([y_local[0], y_local[1][:3]] if odd else y_local))
    attempt("project", lambda: win.project(y_local))  # the group is still usable
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def calls_runs():
    return _spawn(_calls_worker, "rank", world=3)


def test_combine_and_project_on_uneven_shards(calls_runs):
    for r in calls_runs:
        got, want = r["combine"], r["combine want"]
        assert not isinstance(got, str), got
        for g, w in zip(got, want):  # a shard stays this rank's, replicated tensors are summed
            assert g.shape == w.shape
            assert torch.allclose(g, w.float(), rtol=1e-5, atol=1e-6 * float(w.abs().max()))
        scale = 1e-5 * np.abs(r["project want"]).max()
        assert np.allclose(r["project"], r["project want"], rtol=1e-5, atol=scale), r["project"]


@pytest.mark.parametrize(
    "case, says",
    [
        ("combine other values", "combine() coefficients differ across ranks: coefficient 2 is 0.5 on ranks 0, 1 but 0.25 on rank 2"),
        ("combine other length", "combine() coefficients differ across ranks: the number of coefficients is 3 on ranks 0, 1 but 2 on rank 2"),
    ],
)
def test_combine_with_coefficients_out_of_step_raises_on_every_rank(calls_runs, case, says):
    errors = [r[case] for r in calls_runs]
    assert len(set(errors)) == 1 and isinstance(errors[0], str) and says in errors[0], errors


def test_project_with_bad_input_on_one_rank_raises_on_every_rank(calls_runs):
    errors = [r["project bad input"] for r in calls_runs]
    assert all(isinstance(e, str) for e in errors), errors
    assert errors[ODD].startswith("ValueError: tensor for 'r.w' has 15 elements, expected 35"), errors[ODD]
    others = [e for r, e in enumerate(errors) if r != ODD]
    assert others == ["RuntimeError: project() failed on rank 2 (its error says why); the other ranks stopped with it"] * 2, others


def _drift_worker(rank, world, store_path, out_dir):
    """Replicated parameters, windows stepped with the training step as
    ``at``: first in agreement, then with rank 1 one step ahead (a rank
    resumed from a later checkpoint), in exact and sketch mode."""
    _init(rank, store_path, world)
    group = dist.group.WORLD
    out = {}
    for sketch in (None, 16):
        torch.manual_seed(0)
        model = torch.nn.Linear(6, 5)
        win = GramWindow(model, window=3, every=1, process_group=group, sketch=sketch)
        for t in range(1, 5):
            with torch.no_grad():
                model.weight.add_(0.01 * t)
            win.step(at=t)
        out[f"agree{sketch}"] = win.gram().shape
        for t in range(5, 8):
            with torch.no_grad():
                model.weight.add_(0.01 * t)
            win.step(at=t + (rank == 1))
        try:
            win.gram()
            out[f"drift{sketch}"] = None
        except RuntimeError as exc:
            out[f"drift{sketch}"] = str(exc)
    torch.save(out, os.path.join(out_dir, f"drift{rank}.pt"))
    dist.destroy_process_group()


def test_ranks_that_slide_at_different_steps_raise_on_every_rank():
    for out in _spawn(_drift_worker, "drift"):
        for sketch in (None, 16):
            assert out[f"agree{sketch}"] == (3, 3)
            assert "slid at different step counts" in (out[f"drift{sketch}"] or ""), out


@pytest.mark.parametrize("rank,writes", [(None, True), ("0", True), ("1", False)])
def test_before_the_process_group_the_launchers_rank_0_writes(monkeypatch, rank, writes):
    """A monitor built before init_process_group under torchrun: only the
    process numbered 0 writes (every rank wrote, and the second died on the
    first's lock of the run directory)."""
    from spectral_edge_fast.distributed import is_writer

    assert not dist.is_initialized()
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    assert is_writer() is writes
