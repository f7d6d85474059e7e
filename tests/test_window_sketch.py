"""GramWindow(sketch=m): the Gram of the sketched updates against a float64
brute force with the explicit S, exact groups, project, combine's refusal,
memory independent of P, and sharded = unsharded over gloo."""
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
from helpers import backend_or_skip

import spectral_edge_fast.window as window_module
from spectral_edge_fast import GramWindow, SpectralMonitor
from spectral_edge_fast.config import SKETCH_M, WindowOptions
from spectral_edge_fast.kernels.reference import sketch_matrix


def _model(width=31):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(13, width), torch.nn.Tanh(), torch.nn.Linear(width, 5))


def _flat(tensors):
    return torch.cat([t.detach().reshape(-1).double() for t in tensors])


def _train(model, win, steps, seed=1, scale=1e-2):
    gen = torch.Generator().manual_seed(seed)
    history, last = [], _flat(model.parameters())
    for _ in range(steps):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * scale)
        win.step()
        now = _flat(model.parameters())
        history.append(now - last)
        last = now
    return history


def _explicit_S(win):
    plan = win._plan
    return sketch_matrix(plan.flat_segs, plan.groups, [win.layout.numel], plan.size)


@pytest.mark.parametrize("backend", ["cpp", "torch", "reference"])
def test_sketched_gram_is_the_gram_of_S_delta(backend):
    backend_or_skip(backend)  # cpp needs the built extension (make test requires it)
    model = _model()
    win = GramWindow(model, window=4, sketch=16, groups="auto", backend=backend)
    history = _train(model, win, 7)
    S = _explicit_S(win)
    rows = torch.stack([(S @ d).float().double() for d in history[-4:]])  # the ring holds float32 rows
    want = (rows @ rows.T).numpy()
    scale = (rows.abs() @ rows.abs().T).numpy()
    got = win.gram()
    assert (np.abs(got - want) <= 1e-5 * scale + 1e-15).all(), np.abs(got - want).max()
    # the per-group Grams too, and the leaving row of the extended Gram
    for g, name in enumerate(win.groups):
        lo, hi = win._plan.bounds[g], win._plan.bounds[g + 1]
        r = rows[:, lo:hi]
        assert np.allclose(win.group_grams()[name], (r @ r.T).numpy(), rtol=1e-5, atol=1e-15)
    left = (S @ history[-5]).float().double()
    ext = win.extended_gram()
    assert np.isclose(ext[0, 0], float(left @ left), rtol=1e-5) and np.isclose(ext[0, -1], float(left @ rows[-1]), rtol=1e-5)


def test_groups_of_at_most_m_numbers_are_exact():
    model = _model()
    exact = GramWindow(model, window=3, groups="tensor")
    sketched = GramWindow(model, window=3, groups="tensor", sketch=403)  # the largest tensor has 403 numbers
    assert all(sketched._plan.identity)
    _train(model, _Both(exact, sketched), 5)
    assert np.allclose(sketched.gram(), exact.gram(), rtol=1e-5, atol=0)
    assert sketched.state().sketch_error() == {"m": 403, "exact_groups": 4, "rel_err": 0.0}
    y = [torch.randn_like(p) for p in model.parameters()]
    assert np.allclose(sketched.project(y), exact.project(y), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("sketch", [8, 403])  # "a" hashed, or every group kept exactly
def test_a_group_of_empty_tensors_is_sketched_as_zeros(backend, sketch):
    """A group holding only empty tensors (groups="tensor") has no numbers to
    sketch; it must not stop the others (the kernels refused a group of none)."""
    backend_or_skip(backend)
    empty = torch.nn.Module()
    empty.weight = torch.nn.Parameter(torch.empty(0, 4))
    model = torch.nn.ModuleDict({"a": torch.nn.Linear(20, 20), "e": empty})
    exact = GramWindow(model, window=3, groups="tensor", backend=backend)
    sketched = GramWindow(model, window=3, groups="tensor", sketch=sketch, backend=backend)
    _train(model, _Both(exact, sketched), 5)
    assert not np.any(sketched.group_grams()["e.weight"]) and not np.any(exact.group_grams()["e.weight"])
    if sketch == 403:
        assert np.allclose(sketched.gram(), exact.gram(), rtol=1e-5, atol=0)


class _Both:
    def __init__(self, *wins):
        self.wins = wins

    def step(self):
        for w in self.wins:
            w.step()


def test_project_is_the_product_of_the_sketches_and_combine_raises():
    model = _model()
    win = GramWindow(model, window=4, sketch=16, groups=None)
    history = _train(model, win, 6)
    y = [torch.randn_like(p) for p in model.parameters()]
    S = _explicit_S(win)
    rows = torch.stack([(S @ d).float().double() for d in history[-4:]])
    want = (rows @ (S @ _flat(y))).numpy()
    got = win.project(y)
    assert np.allclose(got, want, rtol=1e-5, atol=1e-9 * np.abs(want).max())
    with pytest.raises(ValueError, match=r"combine\(\) needs the window's rows in full.*sketch=16.*sketch=None"):
        win.combine(np.ones(4))
    # the entries' standard errors: sqrt((G_ii G_jj + G_ij^2) / m) for one hashed group
    G, se = win.gram(), win.state().gram_std_error()
    assert np.allclose(se, np.sqrt((np.outer(np.diag(G), np.diag(G)) + G**2) / 16))
    assert GramWindow(model, window=4).state().gram_std_error() is None


def test_push_sketches_the_update():
    model = _model()
    win = GramWindow(model, window=3, sketch=16, groups=None)
    updates = [[torch.randn_like(p) for p in model.parameters()] for _ in range(3)]
    for u in updates:
        win.push(u)
    S = _explicit_S(win)
    rows = torch.stack([(S @ _flat(u)).float().double() for u in updates])
    assert np.allclose(win.gram(), (rows @ rows.T).numpy(), rtol=1e-5)


def test_memory_does_not_depend_on_P():
    small, large = _model(70), _model(3000)  # 1 335 and 57 005 parameters, groups above m but the last bias
    a = GramWindow(small, window=8, sketch=64, groups="tensor")
    b = GramWindow(large, window=8, sketch=64, groups="tensor")
    assert a._plan.group_m == b._plan.group_m == [64, 64, 64, 5]
    assert a.memory_bytes() == b.memory_bytes()
    assert b.memory_bytes() < GramWindow(large, window=8, groups="tensor").memory_bytes() / 20


def test_exact_window_that_does_not_fit_suggests_sketch_mode(monkeypatch):
    model = _model()
    monkeypatch.setattr(window_module, "free_bytes", lambda device: 10_000)
    with pytest.raises(MemoryError, match=rf"or sketch mode, sketch={SKETCH_M}, which needs [0-9.e+-]+ GB at any P"):
        GramWindow(model, window=16)
    with pytest.raises(MemoryError, match="sketch mode at W=16 with sketch=4096 .* use a smaller sketch"):
        GramWindow(model, window=16, sketch=4096)


@pytest.mark.parametrize("value", [1, 0, True, 2.0, "64", 2**30 + 1])
def test_sketch_option_is_checked(value):
    with pytest.raises(ValueError, match="sketch must be an integer"):
        WindowOptions(sketch=value)


def test_state_dict_round_trip_and_mode_mismatch():
    model = _model()
    win = GramWindow(model, window=3, sketch=32)
    _train(model, win, 4)
    state = win.state_dict()
    again = GramWindow(model, window=3, sketch=32)
    again.load_state_dict(state)
    _train(model, _Both(win, again), 2, seed=7)
    assert np.array_equal(win.gram(), again.gram())
    with pytest.raises(ValueError, match="sketch is 32, expected None"):
        GramWindow(model, window=3).load_state_dict(state)


def test_non_finite_parameters_show_as_non_finite_rows():
    model = _model()
    win = GramWindow(model, window=4, sketch=16, groups=None)
    _train(model, win, 2)
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    win.step()
    assert win.state().finite_rows().tolist() == [True, True, False]


def test_monitor_record_carries_the_sketch_error(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = SpectralMonitor(model, opt, window=4, sketch=16, groups="tensor", analyze_every=1, sinks=(), log_dir=str(tmp_path))
    for step in range(6):
        x = torch.randn(8, 13, generator=torch.Generator().manual_seed(step))
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    rec = mon.history[-1]["sketch"]
    assert rec["m"] == 16 and rec["exact_groups"] == 1  # the last bias, 5 numbers
    # groups of 403, 31 and 155 numbers in 16 buckets: entries off by about sqrt(2 / 16) of the diagonal
    assert 0.01 < rec["rel_err"] < 0.5
    assert mon.meta["sketch"] == 16


# -- sharded = unsharded -----------------------------------------------------------------

needs_dist = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available in this build")


def _sharded_worker(rank, world, store_path, out_dir):
    from test_distributed import _init
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    _init(rank, store_path, world)
    mesh = init_device_mesh("cpu", (world,))
    full = [torch.randn(10, 7), torch.randn(6), torch.randn(4, 9, 5), torch.randn(300)]
    placements = [[Shard(0)], [Shard(0)], [Shard(1)], None]  # the last one replicated (DDP style)
    params = [(f"layers.{i}.w", distribute_tensor(t.clone(), mesh, pl) if pl else t.clone())
              for i, (t, pl) in enumerate(zip(full, placements))]
    win = GramWindow(params, window=3, sketch=32, groups="tensor", process_group=dist.group.WORLD)
    gen = torch.Generator().manual_seed(123)  # the same full updates on every rank
    for _ in range(5):
        for (_, p), t in zip(params, full):
            u = torch.randn(t.shape, generator=gen)
            t.add_(u)
            if hasattr(p, "to_local"):
                p.to_local().copy_(distribute_tensor(t, mesh, p.placements).to_local())
            else:
                p.copy_(t)
        win.step()
    try:  # ranks that disagree on sketch= all raise, naming it
        GramWindow(params, window=3, sketch=32 if rank == 0 else 64, groups="tensor", process_group=dist.group.WORLD)
        mismatch = None
    except ValueError as exc:
        mismatch = str(exc)
    y = [torch.randn(t.shape, generator=gen) for t in full]
    y_local = [distribute_tensor(v, mesh, p.placements) if hasattr(p, "to_local") else v for v, (_, p) in zip(y, params)]
    # the same updates through one process's window over the full tensors
    torch.manual_seed(0)
    ref_full = [torch.randn(10, 7), torch.randn(6), torch.randn(4, 9, 5), torch.randn(300)]
    ref = GramWindow([(f"layers.{i}.w", t) for i, t in enumerate(ref_full)], window=3, sketch=32, groups="tensor")
    gen = torch.Generator().manual_seed(123)
    for _ in range(5):
        for t in ref_full:
            t.add_(torch.randn(t.shape, generator=gen))
        ref.step()
    torch.save({"got": win.gram(), "want": ref.gram(), "proj": win.project(y_local), "proj_want": ref.project(y),
                "identity": win._plan.identity, "mismatch": mismatch}, os.path.join(out_dir, f"sketch{rank}.pt"))
    dist.destroy_process_group()


@needs_dist
def test_sharded_sketch_equals_the_unsharded_one():
    from test_distributed import _spawn

    results = _spawn(_sharded_worker, "sketch")
    for r in results:
        assert r["identity"] == [False, True, False, False]
        assert np.allclose(r["got"], r["want"], rtol=1e-5, atol=0), np.abs(r["got"] - r["want"]).max()
        assert np.allclose(r["proj"], r["proj_want"], rtol=1e-5, atol=1e-6)
        assert r["mismatch"] is not None and "sketch is 32 on rank 0 but 64 on rank 1" in r["mismatch"], r["mismatch"]
    assert np.array_equal(results[0]["got"], results[1]["got"]), "ranks disagree"


def test_analyze_command_takes_sketch(tmp_path, capsys):
    import json

    from spectral_edge_fast.cli import main
    from test_cli import _checkpoints

    ckpts = _checkpoints(tmp_path / "ckpts")
    assert main(["analyze", str(ckpts), "--window", "3", "--groups", "none", "--sketch", "8",
                 "--out", str(tmp_path / "out"), "--quiet"]) == 0
    records = [json.loads(line) for line in (tmp_path / "out" / "spectral.jsonl").read_text().splitlines()]
    assert records and all(r["sketch"]["m"] == 8 and r["sketch"]["exact_groups"] == 0 for r in records)
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["sketch"] == 8
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["analyze", str(ckpts), "--sketch", "1", "--quiet"])
    assert exit_.value.code == 2 and "--sketch: must be an integer >= 2" in capsys.readouterr().err


def test_the_null_of_R_is_taken_at_the_sketched_row_length(monkeypatch, tmp_path):
    """Sketched rows of isotropic noise are isotropic noise in sum(dims)
    numbers, not in P: the p-value of R and the "null" thresholds use that."""
    import spectral_edge_fast.monitor as monitor_module

    seen = []
    real_null, real_thresholds = monitor_module.null_max_ratio, monitor_module.gap_thresholds
    monkeypatch.setattr(monitor_module, "null_max_ratio", lambda W, P, n: seen.append(("p", P)) or real_null(W, P, 200))
    monkeypatch.setattr(monitor_module, "gap_thresholds",
                        lambda a, b, W, P, n: seen.append(("t", P)) or real_thresholds(a, b, W, P, 200))
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = SpectralMonitor(model, opt, window=3, sketch=16, groups="tensor", analyze_every=1, sinks=(),
                          log_dir=str(tmp_path), gap_open_above="null")
    assert mon.window.dims == [16, 16, 16, 5] and mon.window.numel == 594
    for step in range(5):
        model(torch.randn(8, 13, generator=torch.Generator().manual_seed(step))).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    mon.history
    assert ("p", 53) in seen and ("t", 53) in seen and ("t", 16) in seen and ("t", 5) in seen
    assert not [P for _, P in seen if P > 53], seen
    assert GramWindow(model, groups="tensor").dims == [403, 31, 155, 5]
