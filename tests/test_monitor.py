"""SpectralMonitor: hooks, cadence, the sync-free per-step path, learning
rate, gradient projections, checkpointing and rank-0 writing."""
import contextlib
import copy
import csv
import importlib
import io
import json
import os
import tempfile
import warnings

import numpy as np
import pytest
import torch

import spectral_edge_fast.config as config_module
import spectral_edge_fast.monitor as monitor_module
from spectral_edge_fast.analysis import collapse_order, events
from spectral_edge_fast.analysis._common import zero_tolerance
from spectral_edge_fast.analysis.null import MONITOR_SAMPLES
from spectral_edge_fast import GramWindow
from spectral_edge_fast.monitor import ENGINE_EPS, SpectralMonitor
from spectral_edge_fast.window import GramReadback
from spectral_edge_fast.workloads.grokking import GrokkingConfig, GrokkingRun


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(12, 24), torch.nn.Tanh(), torch.nn.Linear(24, 3))


def _train(model, opt, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(32, 12, generator=gen)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_attaches_to_the_optimizer_and_detaches(tmp_path):
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    mon = SpectralMonitor(model, opt, window=4, analyze_every=5, log_dir=str(tmp_path))
    _train(model, opt, 20)
    assert mon.steps == 20 and mon.window.count == 20
    assert [r["step"] for r in mon.history] == [5, 10, 15, 20]
    mon.detach()
    _train(model, opt, 5)
    assert mon.steps == 20
    mon.close()
    lines = (tmp_path / "spectral.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [5, 10, 15, 20]


def test_without_an_optimizer_the_caller_steps(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = SpectralMonitor(model, window=3, every=2, analyze_every=4, sinks=(), log_dir=str(tmp_path))
    for i in range(12):
        _train(model, opt, 1, seed=i)
        mon.step(lr=0.1)
    assert mon.steps == 12 and mon.window.count == 6
    rec = mon.history[-1]
    assert rec["step"] == 12 and rec["n"] == 3 and rec["lr"] == 0.1 and rec["A"] is not None
    assert os.listdir(tmp_path) == []  # sinks=() writes nothing


def test_records_carry_the_diagnostics(tmp_path):
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    mon = SpectralMonitor(model, opt, window=6, analyze_every=3, log_dir=str(tmp_path))
    _train(model, opt, 12)
    rec = mon.history[-1]
    spec = rec["spectrum"]
    assert rec["k_star"] == spec["k_star"] and rec["R"] == pytest.approx(spec["gap_ratio"])
    assert len(rec["sigmas"]) == len(rec["alpha"]) == 6
    assert rec["lr"] == 1e-2
    assert rec["A"] == pytest.approx(rec["delta_c_fro"] / (1e-2 * rec["gap"] ** 2))
    assert rec["delta_c_fro"] == pytest.approx(mon.window.delta_c_fro())
    assert set(rec["groups"]) == set(mon.window.groups) == {"0", "2"}
    assert sum(g["share"] for g in rec["groups"].values()) == pytest.approx(1.0)
    for key in ("stability", "adiabatic", "flow", "overlaps", "events"):
        assert key in rec
    # the record's spectrum is that of the engine's Gram at the analysed step,
    # up to the analysis's zero tolerance (n * eps32 * lambda_1): sigmas to its root
    lam = np.linalg.eigvalsh(mon.window.gram())[::-1]
    sig = np.sqrt(np.clip(lam, 0, None))
    np.testing.assert_allclose(rec["sigmas"], sig, rtol=0, atol=np.sqrt(zero_tolerance(len(lam), lam[0])))


def test_reads_the_learning_rate_of_the_analysed_step(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    mon = SpectralMonitor(model, opt, window=3, analyze_every=2, sinks=(), log_dir=str(tmp_path))
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        _train(model, opt, 1)
        sched.step()
    assert [r["lr"] for r in mon.history] == pytest.approx([lrs[1], lrs[3], lrs[5]])


@contextlib.contextmanager
def _host_reads_recorded():
    """Make every tensor-to-host read outside ``GramReadback.wait`` recorded:
    ``.item()``, ``.cpu()``, ``.tolist()``, ``.numpy()``, ``float()``,
    ``int()`` and ``bool()`` of a tensor, all of which wait for the device."""
    names = ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__")
    calls, inside_wait = [], [False]
    originals = {n: getattr(torch.Tensor, n) for n in names}
    wait = GramReadback.wait

    def spy(name):
        def call(self, *args, **kwargs):
            if not inside_wait[0]:
                calls.append(name)
            return originals[name](self, *args, **kwargs)

        return call

    def recorded_wait(self):
        inside_wait[0] = True
        try:
            return wait(self)
        finally:
            inside_wait[0] = False

    try:
        for n in names:
            setattr(torch.Tensor, n, spy(n))
        GramReadback.wait = recorded_wait
        yield calls
    finally:
        for n, f in originals.items():
            setattr(torch.Tensor, n, f)
        GramReadback.wait = wait


def test_per_step_path_never_reads_the_device_on_cpu(tmp_path):
    """On the CPU: no step, analysis steps included, calls .item(), .cpu(),
    .tolist() (or float(), bool()...) on a tensor; the Gram comes back only
    through GramReadback.wait(), once per analysis."""
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    mon = SpectralMonitor(model, opt, window=4, every=2, analyze_every=3, log_dir=str(tmp_path), probes="*.weight")
    step, waits = mon._step, []
    wait = GramReadback.wait

    def guarded_step(*args, **kwargs):
        with _host_reads_recorded() as calls:
            step(*args, **kwargs)
        assert calls == [], f"step {mon.steps} read the device through {calls}"

    def counted_wait(self):
        waits.append(mon.steps)
        return wait(self)

    mon._step = guarded_step  # the optimizer hook calls it
    GramReadback.wait = counted_wait
    try:
        _train(model, opt, 30)
    finally:
        GramReadback.wait = wait
    assert mon.steps == 30
    assert waits == [4, 7, 10, 13, 16, 19, 22, 25, 28]  # each analysis read back at the next step
    assert len(mon.history) == 10 and set(mon.history[-1]["probes"]) == {"0.weight", "2.weight"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_per_step_path_never_synchronizes_on_gpu(tmp_path):
    model = _model().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    mon = SpectralMonitor(model, opt, window=8, analyze_every=5, log_dir=str(tmp_path), probes="*.weight")
    step = mon._step  # what the optimizer hook calls

    def guarded_step(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            step(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    mon._step = guarded_step
    gen = torch.Generator(device="cuda").manual_seed(0)
    for _ in range(40):
        x = torch.randn(32, 12, device="cuda", generator=gen)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert len(mon.history) == 8
    # eigenvalues below n * eps32 * lambda_1 count as zero in the monitor: sigmas agree to sqrt of that
    want = np.sqrt(np.clip(np.linalg.eigvalsh(mon.window.gram())[::-1], 0, None))
    np.testing.assert_allclose(mon.history[-1]["sigmas"], want, rtol=1e-9, atol=np.sqrt(8 * ENGINE_EPS) * want[0])
    s = np.linalg.svd(model[2].weight.detach().double().cpu().numpy(), compute_uv=False)  # the last step analysed
    np.testing.assert_allclose(mon.history[-1]["probes"]["2.weight"]["sigma"], s, rtol=1e-12)


def test_gradient_projections_give_the_loss_decomposition(tmp_path):
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    mon = SpectralMonitor(model, opt, window=5, analyze_every=4, sinks=(), log_dir=str(tmp_path))
    _train(model, opt, 9)
    x = torch.randn(16, 12)
    model(x).pow(2).mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    p_train = mon.observe_gradients("train")
    np.testing.assert_allclose(p_train, mon.window.project(grads))
    opt.zero_grad()
    model(-x).sum().backward()
    mon.observe_gradients("val")
    opt.zero_grad()
    _train(model, opt, 3)
    dec = mon.history[-1]["decomposition"]
    assert dec["step"] == 9 and dec["status"] == "ok"
    assert len(dec["importance"]) == dec["n_modes"] > 0
    assert dec["predicted_delta_loss"] == pytest.approx(-1e-2 * sum(dec["importance"]))
    with pytest.raises(ValueError, match="split"):
        mon.observe_gradients("test")


def test_summary_and_events(tmp_path):
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    mon = SpectralMonitor(model, opt, window=4, analyze_every=2, sinks=(), log_dir=str(tmp_path))
    _train(model, opt, 40)
    s = mon.summary()
    assert s["steps"] == 40 and s["analyses"] == 20 and s["last"]["step"] == 40
    assert s["R_median"] >= 1.0 and s["k_star_mode"] >= 1
    keys = [(e["kind"], e["step"], e.get("group")) for e in s["events"]]
    assert len(keys) == len(set(keys))  # each event reported once
    assert all(e in r["events"] for r in mon.history for e in r["events"])


def _assert_same_records(got, want, where="record"):
    """Equal keys, structure, integers, strings and None; floats within a
    relative 1e-7 (or 1e-12 absolute): the analysis repeated on the same Gram
    may differ in its last bits (LAPACK's results depend on the machine and
    its threads), not by more."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), f"{where}: keys {list(got)} != {list(want)}"
        for key in want:
            _assert_same_records(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(want), f"{where}: {got!r} != {want!r}"
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same_records(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert isinstance(got, float) and got == pytest.approx(want, rel=1e-7, abs=1e-12, nan_ok=True), \
            f"{where}: {got!r} != {want!r}"
    else:
        assert type(got) is type(want) and got == want, f"{where}: {got!r} != {want!r}"


def _parsed(path):
    """A run file's records: JSON lines parsed, CSV cells as int, float or text."""
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines()]

    def cell(value):
        for kind in (int, float):
            with contextlib.suppress(ValueError):
                return kind(value)
        return value

    return [[cell(v) for v in row] for row in csv.reader(io.StringIO(text))]


def _grokking_run():
    return GrokkingRun(GrokkingConfig(p=11, d_model=16, n_heads=2, d_ff=32, batch_size=64, seed=5))


def _monitored(log_dir):
    run = _grokking_run()
    mon = SpectralMonitor(run.model, run.optimizer, window=5, every=2, analyze_every=3, sinks=("jsonl", "csv"),
                          log_dir=log_dir)
    return run, mon


def _advance(run, mon, steps):
    for _ in range(steps):
        run.train_step()
        if run.step % 4 == 0:
            mon.log(run.evaluate(), step=run.step)
        if run.step == 8:  # a projection pair pending across the checkpoint
            run.gradients("train")
            mon.observe_gradients("train")
            run.gradients("val")
            mon.observe_gradients("val")


def test_resume_continues_exactly(tmp_path):
    """Train, save (model, optimizer, sampler, monitor), load into fresh
    objects, continue: the history equals that of an uninterrupted run, and
    so do the files (the interrupted run's extra records are dropped)."""
    full_run, full = _monitored(str(tmp_path / "full"))
    _advance(full_run, full, 25)
    full.close()

    run, mon = _monitored(str(tmp_path / "resumed"))
    _advance(run, mon, 10)  # step 9 is an analysis started but not yet read back
    buf = io.BytesIO()
    torch.save({"run": run.state_dict(), "monitor": mon.state_dict()}, buf)
    _advance(run, mon, 6)  # work lost when the job dies
    mon.close()

    buf.seek(0)
    ckpt = torch.load(buf)  # weights_only: the monitor's state is plain data and tensors
    run2, mon2 = _monitored(str(tmp_path / "resumed"))
    run2.load_state_dict(ckpt["run"])
    mon2.load_state_dict(ckpt["monitor"])
    _advance(run2, mon2, 15)
    mon2.close()

    assert mon2.steps == full.steps == 25
    _assert_same_records(mon2.history, full.history)
    assert mon2.metrics == full.metrics
    assert any("decomposition" in r for r in full.history)
    for name in ("spectral.jsonl", "metrics.jsonl", "spectral.csv", "metrics.csv"):
        _assert_same_records(_parsed(tmp_path / "resumed" / name), _parsed(tmp_path / "full" / name), name)


def test_load_state_dict_refuses_another_configuration(tmp_path):
    model = _model()
    mon = SpectralMonitor(model, window=4, analyze_every=2, sinks=(), log_dir=str(tmp_path))
    state = mon.state_dict()
    with pytest.raises(ValueError, match="analysed every"):
        SpectralMonitor(model, window=4, analyze_every=3, sinks=(), log_dir=str(tmp_path)).load_state_dict(state)
    with pytest.raises(ValueError, match="window"):
        SpectralMonitor(model, window=5, analyze_every=2, sinks=(), log_dir=str(tmp_path)).load_state_dict(state)


def test_only_the_writer_rank_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(monitor_module, "is_writer", lambda: False)
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    mon = SpectralMonitor(model, opt, window=4, analyze_every=2, sinks=("jsonl", "csv"), log_dir=str(tmp_path / "r1"))
    _train(model, opt, 6)
    mon.log({"loss": 1.0})
    mon.close()
    assert len(mon.history) == 3 and not (tmp_path / "r1").exists()


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="analyze_every"):
        SpectralMonitor(_model(), analyze_every=0, log_dir=str(tmp_path))
    with pytest.raises(ValueError, match="unknown sink"):
        SpectralMonitor(_model(), sinks=("parquet",), log_dir=str(tmp_path))


def _rank_worker(rank, store, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = SpectralMonitor(model, opt, window=3, analyze_every=2, log_dir=os.path.join(out_dir, "run"),
                          process_group=dist.group.WORLD)
    assert mon.window.process_group is dist.group.WORLD
    _train(model, opt, 6)  # the same data on both ranks: replicated parameters
    mon.close()
    torch.save({"sigmas": [r["sigmas"] for r in mon.history], "local": mon.window.layout.numel},
               os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_process_group_reaches_the_window_and_only_rank0_writes(tmp_path):
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    import torch.multiprocessing as mp

    store = tempfile.mktemp(dir=tmp_path)
    mp.spawn(_rank_worker, args=(store, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert len(r0["sigmas"]) == 3
    _assert_same_records(r1["sigmas"], r0["sigmas"], "sigmas")
    assert r0["local"] + r1["local"] == sum(p.numel() for p in _model().parameters())  # ring split over ranks
    lines = (tmp_path / "run" / "spectral.jsonl").read_text().splitlines()
    assert len(lines) == 3  # rank 0 alone wrote (two writers would interleave or duplicate)


def test_gram_window_is_the_engine(tmp_path):
    mon = SpectralMonitor(_model(), window=7, every=3, groups="tensor", storage_dtype=torch.bfloat16, sinks=(),
                          log_dir=str(tmp_path))
    assert isinstance(mon.window, GramWindow)
    assert (mon.window.window, mon.window.every, mon.window.storage_dtype) == (7, 3, torch.bfloat16)
    assert len(mon.window.groups) == 4


def test_analyze_every_accepts_integer_like_values_only(tmp_path):
    mon = SpectralMonitor(_model(), analyze_every=np.int64(3), sinks=(), log_dir=str(tmp_path))
    assert mon.analyze_every == 3 and type(mon.analyze_every) is int
    for bad in (True, 2.0, "3", None):
        with pytest.raises(ValueError, match="analyze_every must be an integer"):
            SpectralMonitor(_model(), analyze_every=bad, sinks=(), log_dir=str(tmp_path))


def test_default_log_dirs_are_unique_under_concurrent_creation(tmp_path, monkeypatch):
    """Monitors created at the same instant (same second) each get their own
    directory, so their files do not interleave."""
    import threading

    monkeypatch.chdir(tmp_path)
    n, steps = 8, 6
    barrier, monitors, errors = threading.Barrier(n), [None] * n, []

    def worker(i):
        try:
            model = _model(seed=i)
            barrier.wait()
            mon = SpectralMonitor(model, window=3, analyze_every=1, sinks=("jsonl",))
            gen = torch.Generator().manual_seed(i)
            for _ in range(steps):
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(torch.randn(p.shape, generator=gen), alpha=1e-2)
                mon.step(lr=0.1)
            mon.close()
            monitors[i] = mon
        except Exception as exc:  # surfaced below: a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    dirs = [m.log_dir for m in monitors]
    assert len(set(dirs)) == n
    for mon in monitors:
        lines = (tmp_path / mon.log_dir / "spectral.jsonl").read_text().splitlines()
        assert [json.loads(line)["step"] for line in lines] == [r["step"] for r in mon.history] == list(range(1, steps + 1))


def test_loading_the_wrong_kind_of_state_says_which(tmp_path):
    mon = SpectralMonitor(_model(), window=4, analyze_every=2, sinks=(), log_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"GramWindow state.*monitor\.window\.load_state_dict") as info:
        mon.load_state_dict(mon.window.state_dict())
    assert len(str(info.value)) < 300
    with pytest.raises(ValueError, match=r"SpectralMonitor state.*monitor\.load_state_dict") as info:
        mon.window.load_state_dict(mon.state_dict())
    assert len(str(info.value)) < 300 and "tensor" not in str(info.value)
    old = monitor_module.STATE_VERSION - 1
    with pytest.raises(ValueError, match=rf"version {old} is not {old + 1}: it comes from another version"):
        mon.load_state_dict({**mon.state_dict(), "version": old})


def _state_bytes(mon, **kwargs) -> int:
    buf = io.BytesIO()
    torch.save(mon.state_dict(**kwargs), buf)
    return len(buf.getvalue())


def test_memory_and_state_stay_bounded_and_summary_covers_the_whole_run(tmp_path, monkeypatch):
    """Hundreds of cheap records (a shorter median span, so the bound is
    reached quickly): the bounded monitor's records, metrics, events and
    state stop growing, while its summary equals an unbounded twin's."""
    monkeypatch.setattr(config_module, "A_MEDIAN_SPAN", 10)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))  # noisy: many events
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    kw = dict(window=3, analyze_every=1, sinks=(), log_dir=str(tmp_path))
    bounded, full = SpectralMonitor(model, opt, history=20, **kw), SpectralMonitor(model, opt, history=None, **kw)
    gen, sizes = torch.Generator().manual_seed(0), []
    for chunk in range(3):
        for _ in range(50):
            loss = model(torch.randn(8, 4, generator=gen)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        for mon in (bounded, full):
            mon.log({"loss": float(chunk)})
        sizes.append((_state_bytes(bounded, exact=False), _state_bytes(full, exact=False)))
    assert len(bounded.history) == 20
    _assert_same_records(bounded.history, full.history[-20:])
    assert len(bounded.metrics) == 3
    assert len(full.events()) > 20  # the events' bound is reached too
    _assert_same_records(bounded.events(), full.events()[-20:])
    assert sizes[2][0] < 1.1 * sizes[1][0] and sizes[2][1] > 1.3 * sizes[1][1]
    s = bounded.summary()
    _assert_same_records(s, {**full.summary(), "events": full.events()[-20:]})
    assert s["analyses"] == 150 and s["events_total"] == len(full.events())
    Rs = [r["R"] for r in full.history if r["R"] is not None]
    assert s["R_median"] == pytest.approx(np.median(Rs), rel=10 ** -(monitor_module.R_MEDIAN_DIGITS - 1))
    assert (s["R_max"], s["R_max_step"]) == max((r["R"], r["step"]) for r in full.history if r["R"] is not None)
    with pytest.raises(ValueError, match="history must be an integer >= 10"):
        SpectralMonitor(model, history=9, **kw)


def test_small_state_resumes_with_a_refilled_window(tmp_path):
    """A small state holds no window: the resumed monitor takes a fresh
    snapshot, waits until its window has refilled and slid once, then gives
    the uninterrupted run's spectra under the same step labels."""
    W, every, analyze_every = 4, 2, 3

    def monitored(path):
        model = _model()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        return model, opt, SpectralMonitor(model, opt, window=W, every=every, analyze_every=analyze_every,
                                           sinks=("jsonl",), log_dir=str(tmp_path / path))

    model, opt, full = monitored("full")
    _train(model, opt, 10, seed=0)
    _train(model, opt, 20, seed=1)

    model, opt, mon = monitored("resumed")
    _train(model, opt, 10, seed=0)
    small, exact = _state_bytes(mon, exact=False), _state_bytes(mon)
    assert small + W * mon.window.numel * 4 < exact
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "monitor": mon.state_dict(exact=False)}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)
    assert ckpt["monitor"]["window"] is None

    model2, opt2, mon2 = monitored("resumed")
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    mon2.load_state_dict(ckpt["monitor"])
    assert mon2.steps == 10 and mon2.window.count == 0
    np.testing.assert_array_equal(mon2.window._snapshot.numpy(), torch.cat([p.detach().reshape(-1) for p in model2.parameters()]).numpy())
    _train(model2, opt2, 20, seed=1)
    mon2.close()
    full.close()

    refilled = 10 + (W + 1) * every
    want = [r for r in full.history if r["step"] <= 10 or r["step"] >= refilled]
    assert [r["step"] for r in mon2.history] == [r["step"] for r in want] == [3, 6, 9, 21, 24, 27, 30]
    for got, ref in zip(mon2.history, want):
        assert got["k_star"] == ref["k_star"]
        sig1 = ref["sigmas"][0]  # small sigmas: within the root of the analysis's zero tolerance
        np.testing.assert_allclose(got["sigmas"], ref["sigmas"], rtol=1e-9,
                                   atol=np.sqrt(zero_tolerance(len(ref["sigmas"]), sig1 * sig1)))
        np.testing.assert_allclose(got["delta_c_fro"], ref["delta_c_fro"], rtol=1e-9)
    lines = (tmp_path / "resumed" / "spectral.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [3, 6, 9, 21, 24, 27, 30]


def _bypass_hooks(opt):
    """Replace opt.step on the instance by the optimizer's step without
    Optimizer.step's hooks, as some training frameworks do."""
    unhooked = type(opt).step.__wrapped__
    opt.step = lambda closure=None: unhooked(opt, closure)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
@pytest.mark.parametrize("rebound", ["before", "after"])
def test_warns_once_when_the_optimizer_steps_without_its_hooks(tmp_path, optimizer, rebound):
    model = _model()
    opt = (torch.optim.AdamW(model.parameters(), lr=1e-2) if optimizer == "adamw"
           else torch.optim.SGD(model.parameters(), lr=0.1))
    if rebound == "before":
        _bypass_hooks(opt)
    mon = SpectralMonitor(model, opt, window=4, analyze_every=2, sinks=(), log_dir=str(tmp_path))
    if rebound == "after":
        _bypass_hooks(opt)
    _train(model, opt, 3)
    assert mon.steps == 0
    with pytest.warns(RuntimeWarning, match=r"seen no optimizer step.*monitor\.detach\(\), then monitor\.step\(\)"):
        mon.log({"loss": 1.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mon.log({"loss": 1.0})
        mon.close()


def test_no_warning_when_the_hooks_run(tmp_path):
    """An LR scheduler rebinds opt.step to a wrapper that goes through
    Optimizer.step, and loading the optimizer's state is not a step."""
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _train(model, opt, 2)
    saved = opt.state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mon = SpectralMonitor(model, opt, window=4, analyze_every=2, sinks=(), log_dir=str(tmp_path))
        opt.load_state_dict(saved)
        mon.log({"loss": 1.0})
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
        _train(model, opt, 3)
        sched.step()
        mon.log({"loss": 1.0})
        mon.close()
    assert mon.steps == 3


def test_resume_beyond_the_kept_records_keeps_the_files_whole(tmp_path, monkeypatch):
    """The checkpoint holds the last `history` records only: the files keep
    the earlier ones and drop what the interrupted run wrote after it.
    (analyze_every=2: records are not consecutive slides, so both runs
    eigensolve every window and the files agree within rounding.)"""
    monkeypatch.setattr(config_module, "A_MEDIAN_SPAN", 10)

    def monitored(path):
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return model, opt, SpectralMonitor(model, opt, window=3, analyze_every=2, history=20, sinks=("jsonl", "csv"),
                                           log_dir=str(tmp_path / path))

    model, opt, full = monitored("full")
    _train(model, opt, 50, seed=0)
    _train(model, opt, 10, seed=1)
    full.close()
    model, opt, mon = monitored("resumed")
    _train(model, opt, 50, seed=0)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "monitor": mon.state_dict()}, buf)
    assert len(mon.history) == 20 and mon.summary()["analyses"] == 25
    _train(model, opt, 5, seed=7)  # work lost when the job dies
    mon.close()
    buf.seek(0)
    ckpt = torch.load(buf)
    model2, opt2, mon2 = monitored("resumed")
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    mon2.load_state_dict(ckpt["monitor"])
    _train(model2, opt2, 10, seed=1)
    mon2.close()
    for name in ("spectral.jsonl", "spectral.csv"):
        _assert_same_records(_parsed(tmp_path / "resumed" / name), _parsed(tmp_path / "full" / name), name)


def _series_records(seed, n, groups=("a", "b")):
    """Analysis records as the monitor makes them, reduced to what event
    detection and the run-long aggregates read: R near the thresholds, k*
    noise, undefined values, runs of non-finite rows, per-group R and k*."""
    rng = np.random.default_rng(seed)

    def walk():
        R = 1.375 + np.cumsum(rng.normal(0, 0.1, n))
        return [None if u < 0.05 else float(r) for r, u in zip(R, rng.random(n))]

    def ks():
        return [None if u < 0.05 else int(k) for k, u in zip(np.repeat(rng.integers(1, 4, n // 5 + 1), 5)[:n], rng.random(n))]

    R, k, bad = walk(), ks(), np.repeat(rng.random(n // 6 + 1) < 0.2, 6)[:n]
    per_group = {g: (walk(), ks()) for g in groups}
    return [{"step": 2 * i, "k_star": k[i], "R": R[i], "gap": None, "A": None,
             "spectrum": {"gap_ratio": R[i], "k_star": k[i], "nonfinite_rows": [0] if bad[i] else []},
             "groups": {g: {"R": gR[i], "k_star": gk[i]} for g, (gR, gk) in per_group.items()}}
            for i in range(n)]


def _batch_events(records, upto):
    """The events the batch functions find in records[:upto] (the reference)."""
    recs = records[:upto]
    found = {(e.kind, e.step, None): e for e in events([{"step": r["step"], **r["spectrum"]} for r in recs])}
    per_group = {g: [{"step": r["step"], "gap_ratio": r["groups"][g]["R"], "k_star": r["groups"][g]["k_star"],
                      "k_margin": r["groups"][g].get("k_margin")} for r in recs]
                 for g in (recs[-1]["groups"] if recs else ())}
    for g, evs in collapse_order(per_group).events.items():
        found.update({(e.kind, e.step, g): e for e in evs})
    return found


def _assert_events_match_the_batch_reference(records):
    """Each record carries the events that the batch functions find in the
    records up to it and not in those before it: the global model's first,
    then each group's, each by start."""
    before = {}
    for i, rec in enumerate(records):
        now = _batch_events(records, i + 1)
        new = sorted((k for k in now if k not in before), key=lambda k: (k[2] is not None, k[2] or "", now[k].index))
        want = [{**{f: v for f, v in now[k].to_dict().items() if f != "index"}, **({} if k[2] is None else {"group": k[2]})}
                for k in new]
        assert rec["events"] == want, rec["step"]
        before = now


def _feed(mon, records):
    for rec in records:
        mon._record(copy.deepcopy(rec))


def test_events_are_found_over_the_whole_run(tmp_path):
    """A state confirmed more than 500 records before a change still dates
    the change (R in the hysteresis band for 600 records, then collapsed), and
    a run of non-finite rows longer than that is reported once."""
    n = 700
    R = [3.0] * 5 + [1.3, 1.4] * 300 + [1.0] * (n - 605)
    recs = [{"step": i, "k_star": 2, "R": R[i],
             "spectrum": {"gap_ratio": R[i], "k_star": 2, "nonfinite_rows": [1] if 10 <= i < 660 else []}}
            for i in range(n)]
    mon = SpectralMonitor(_model(), window=3, sinks=(), log_dir=str(tmp_path))
    _feed(mon, recs)
    assert [(e["kind"], e["step"]) for e in mon.events()] == [("nonfinite_rows", 10), ("gap_collapse", 605)]
    assert [(e["kind"], e["step"]) for e in mon.history[607]["events"]] == [("gap_collapse", 605)]


def test_event_detection_reads_each_record_once(tmp_path, monkeypatch):
    """The detection's cost per record does not grow with the run: each new
    record's values are read once per series (the model and each group)."""
    reads = []
    events_module = importlib.import_module("spectral_edge_fast.analysis.events")
    original = events_module._ratio
    monkeypatch.setattr(events_module, "_ratio", lambda r: reads.append(1) or original(r))
    mon = SpectralMonitor(_model(), window=3, sinks=(), log_dir=str(tmp_path))
    recs = _series_records(0, 120)
    _feed(mon, recs[:100])
    reads.clear()
    _feed(mon, recs[100:])
    assert len(reads) == 20 * 3


def test_events_of_synthetic_records_match_the_batch_reference(tmp_path):
    mon = SpectralMonitor(_model(), window=3, history=None, sinks=(), log_dir=str(tmp_path))
    recs = _series_records(1, 300)
    _feed(mon, recs)
    assert len(mon.events()) > 30
    _assert_events_match_the_batch_reference(mon.history)


def test_events_of_a_real_run_match_the_batch_reference(tmp_path):
    """A noisy run with groups, analysed at every step: the records' events
    are those the batch functions find (what the monitor reported when it
    rescanned its trailing records, which here hold the whole run)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    mon = SpectralMonitor(model, opt, window=3, analyze_every=1, history=None, sinks=(), log_dir=str(tmp_path))
    gen = torch.Generator().manual_seed(0)
    for _ in range(320):
        loss = model(torch.randn(8, 4, generator=gen)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    history = mon.history
    assert len(history) == 320 and set(history[-1]["groups"]) == {"0", "2"}
    assert len({e.get("group") for e in mon.events()}) == 3  # events in the model and both groups
    _assert_events_match_the_batch_reference(history)


@pytest.mark.parametrize("exact", [True, False])
def test_resumed_events_are_those_of_an_uninterrupted_run(tmp_path, exact):
    """The event detectors' state is in the monitor's state (exact or small,
    through torch.save): a resumed monitor reports exactly the events of an
    uninterrupted one, including changes pending at the checkpoint."""
    recs = _series_records(2, 400)
    full = SpectralMonitor(_model(), window=3, history=None, sinks=(), log_dir=str(tmp_path))
    _feed(full, recs)
    for cut in (37, 150, 263):
        first = SpectralMonitor(_model(), window=3, history=50, sinks=(), log_dir=str(tmp_path))
        _feed(first, recs[:cut])
        buf = io.BytesIO()
        torch.save(first.state_dict(exact=exact), buf)
        buf.seek(0)
        resumed = SpectralMonitor(_model(), window=3, history=50, sinks=(), log_dir=str(tmp_path))
        resumed.load_state_dict(torch.load(buf))
        _feed(resumed, recs[cut:])
        assert [r["events"] for r in resumed.history] == [r["events"] for r in full.history[-50:]]
        assert resumed.summary()["events_total"] == len(full.events())


class _Attention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.attn(x, x, x)[0].mean(1))


def test_probes_are_the_weights_of_the_analysed_step(tmp_path):
    """Each record's probes are the singular values (numpy.linalg.svd) and the
    attention operator's eigenvalues (numpy.linalg.eig) of the weights at the
    record's step, not at the later step where the analysis finishes; they
    reach the sinks."""
    torch.manual_seed(0)
    model = _Attention()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    mon = SpectralMonitor(model, opt, window=3, analyze_every=4, probes=["attention", "head.*"],
                          sinks=("jsonl", "csv"), log_dir=str(tmp_path))
    weights = {}
    gen = torch.Generator().manual_seed(0)
    for step in range(1, 17):
        loss = model(torch.randn(4, 5, 8, generator=gen)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        weights[step] = {n: p.detach().double().numpy().copy() for n, p in model.named_parameters()}
    mon.close()
    assert [r["step"] for r in mon.history] == [4, 8, 12, 16]
    for record in mon.history:
        w = weights[record["step"]]
        q, k = w["attn.in_proj_weight"][:8], w["attn.in_proj_weight"][8:16]
        assert set(record["probes"]) == {"attn.in_proj_weight:q", "head.weight"}
        for key, mat in (("attn.in_proj_weight:q", q), ("head.weight", w["head.weight"])):
            s = np.linalg.svd(mat, compute_uv=False)
            got = record["probes"][key]
            np.testing.assert_allclose(got["sigma"], s[:8], rtol=1e-12)
            assert got["sigma_12"] == pytest.approx(s[0] / s[1], rel=1e-12)
            assert got["sigma_23"] == pytest.approx(s[1] / s[2], rel=1e-12)
            assert got["g23"] == pytest.approx(s[1] ** 2 - s[2] ** 2, rel=1e-12)
        lam = np.linalg.eig(q.T @ k)[0]
        moduli = np.sort(np.abs(lam[lam.imag >= 0]))[::-1]  # a conjugate pair is one mode
        att = record["attention"]["attn"]
        np.testing.assert_allclose(att["lambda_abs"], moduli[:8], rtol=1e-9)
        assert att["ratio_12"] == pytest.approx(moduli[0] / moduli[1], rel=1e-9)
        assert att["ratio_23"] == pytest.approx(moduli[1] / moduli[2], rel=1e-9)
        for h, head in enumerate(att["heads"]):
            rows = slice(4 * h, 4 * h + 4)
            lam = np.linalg.eig(q[rows].T @ k[rows])[0]
            m = np.sort(np.abs(lam[lam.imag >= 0]))[::-1]
            m = m[m > 1e-9 * m[0]]  # rank <= 4: the zero eigenvalues left out
            assert head["ratio_12"] == (pytest.approx(m[0] / m[1], rel=1e-8) if m.size > 1 else None)
        assert len(att["heads"]) == 2
    written = [json.loads(line) for line in (tmp_path / "spectral.jsonl").read_text().splitlines()]
    assert [r["probes"] for r in written] == [r["probes"] for r in mon.history]
    with open(tmp_path / "spectral.csv") as f:
        assert {"probes/head.weight/sigma_12", "attention/attn/ratio_12"} <= set(next(csv.reader(f)))


def test_probes_that_match_nothing_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"probes pattern 'blocks\.\*' matches no 2-D monitored parameter"):
        SpectralMonitor(_model(), sinks=(), probes="blocks.*")
    with pytest.raises(ValueError, match="probes='attention' found no attention weights"):
        SpectralMonitor(_model(), sinks=(), probes="attention")
    with pytest.raises(ValueError, match="probes must be None, 'attention' or fnmatch patterns"):
        SpectralMonitor(_model(), sinks=(), probes=[3])


def test_records_carry_k_margin_and_the_null_p_value_of_R(tmp_path):
    """R_pvalue is the null's p-value at the run's W and P for a full window
    of full rank, None while the window fills; k_margin is the spectrum's,
    for the model and each group."""
    from spectral_edge_fast.analysis import ratio_p_value, spectrum
    from spectral_edge_fast.analysis.spectrum import k_margin

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = SpectralMonitor(model, opt, window=4, analyze_every=1, sinks=(), log_dir=str(tmp_path))
    _train(model, opt, 8)
    assert len(mon.history[-1]["groups"]) == 2
    hist = mon.history
    assert [r["R_pvalue"] for r in hist[:3]] == [None] * 3  # n = 1, 2, 3 < W
    P = sum(p.numel() for p in model.parameters())
    for r in hist[3:]:
        assert r["spectrum"]["n_positive"] == 4
        assert r["R_pvalue"] == ratio_p_value(r["R"], 4, P, n_samples=MONITOR_SAMPLES)
        assert r["k_margin"] == r["spectrum"]["k_margin"] == k_margin(r["sigmas"], r["k_star"]) >= 1.0
    for name, G in mon.window.group_grams().items():  # the last record's window
        s, got = spectrum(G), hist[-1]["groups"][name]
        assert got["k_star"] == s.k_star
        # two eigensolvers' sigma ratios: within a few float32 roundings of the Gram (its eps)
        assert got["k_margin"] == pytest.approx(s.k_margin, rel=1e-5)


@pytest.mark.parametrize("options", [dict(gap_open_above=2.0, gap_close_below=1.1, k_star_margin=1.0),
                                     dict(gap_open_above="null", gap_close_below="null", k_star_margin=1.3)])
def test_the_event_rule_options_reach_every_detector(tmp_path, options):
    """The model's and each group's events follow gap_open_above,
    gap_close_below and k_star_margin; "null" takes the null's quantiles at the
    window's W and the numel of the model or the group."""
    from spectral_edge_fast.analysis import null_max_ratio

    mon = SpectralMonitor(_model(), window=3, history=None, sinks=(), log_dir=str(tmp_path), **options)
    recs = _series_records(2, 300, groups=("0", "2"))
    for i, r in enumerate(recs):  # blocks of decisive and of indecisive k*
        r["spectrum"]["k_margin"] = r["k_margin"] = 1.4 if i // 20 % 2 else 1.05
        for g in r["groups"].values():
            g["k_margin"] = 1.4 if i // 30 % 2 else 1.02
    _feed(mon, recs)
    streams = mon._event_streams
    sizes = {"0": 12 * 24 + 24, "2": 24 * 3 + 3}
    for group, P in [(None, 387)] + list(sizes.items()):
        rule = streams[group]
        if options["gap_open_above"] == "null":
            null = null_max_ratio(3, P, MONITOR_SAMPLES)
            assert (rule.open_above, rule.close_below) == (null.quantile(0.99), null.quantile(0.5))
        else:
            assert (rule.open_above, rule.close_below) == (2.0, 1.1)
        assert rule.k_star_margin == options["k_star_margin"]
    kw = {"open_above": streams[None].open_above, "close_below": streams[None].close_below,
          "k_star_margin": options["k_star_margin"]}
    want = [e.to_dict() for e in events([{"step": r["step"], **r["spectrum"]} for r in recs], **kw)]
    order = lambda evs: sorted(evs, key=lambda e: (e["step"], e["kind"]))  # noqa: E731 (confirmation vs start order)
    assert order([e for e in mon.events() if "group" not in e]) == \
        order([{k: v for k, v in e.items() if k != "index"} for e in want])
    assert any(e["kind"] == "k_star_shift" for e in want)
    assert mon.meta["events"] == {**{k: options[k] for k in ("gap_open_above", "gap_close_below", "k_star_margin")},
                                  "null_P": 387}


def test_a_checkpoint_under_another_event_rule_is_refused_by_name(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = SpectralMonitor(model, opt, window=3, analyze_every=2, sinks=(), log_dir=str(tmp_path))
    _train(model, opt, 8)
    state = mon.state_dict()
    other = SpectralMonitor(_model(), window=3, analyze_every=2, sinks=(), log_dir=str(tmp_path / "b"),
                            k_star_margin=1.3)
    with pytest.raises(ValueError, match="make the monitor with the checkpoint's gap_open_above, gap_close_below and "
                                         r"k_star_margin \(event stream state saved with"):
        other.load_state_dict(state)
    SpectralMonitor(_model(), window=3, analyze_every=2, sinks=(), log_dir=str(tmp_path / "c")).load_state_dict(state)


def test_an_optimizer_over_copies_of_the_parameters_is_refused(tmp_path):
    """An optimizer that steps copies (fp32 master weights, DeepSpeed ZeRO)
    fires its step hook before the model's parameters change: every update
    would be one step late. Refused, saying what to do."""
    model = torch.nn.Linear(4, 3)
    masters = [p.detach().clone().requires_grad_() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"steps none of the model's parameters.*call monitor.step\(\) after"):
        SpectralMonitor(model, torch.optim.AdamW(masters), window=3, log_dir=str(tmp_path))
    # one optimizer over part of the model is fine
    SpectralMonitor(model, torch.optim.SGD([model.weight], lr=0.1), window=3, sinks=()).close()


def test_observe_gradients_without_any_gradient_raises(tmp_path):
    """No .grad anywhere is not a zero gradient: it is read at the wrong time
    or lives elsewhere. A parameter without one (unused) still counts as 0."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = SpectralMonitor(model, opt, window=3, sinks=())
    for _ in range(3):
        model(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    with pytest.raises(ValueError, match="no monitored parameter has a .grad"):
        mon.observe_gradients("train")
    model[0](torch.randn(5, 4)).pow(2).sum().backward()  # the second layer has no gradient: zeros
    p = mon.observe_gradients("train")
    assert np.isfinite(p).all() and p.shape == (3,)
    mon.close()


def _thetas(model):
    return torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])


def _assert_gram_of(mon, thetas):
    """The window's Gram against the float64 Gram of the updates between
    ``thetas`` (the parameters after each step), within float32 rounding of
    each update and of a sum over ``P`` products."""
    x = torch.diff(torch.stack(thetas), dim=0)[-mon.window.window:]
    a = x.abs()
    bound = (2 + 2 * min(x.shape[1], 1 << 16) ** 0.5) * torch.finfo(torch.float32).eps * (a @ a.T).numpy()
    assert (abs(mon.window.gram() - (x @ x.T).numpy()) <= bound + 1e-300).all()


def test_a_recreated_optimizer_is_warned_and_attach_follows_it(tmp_path):
    """The hook sits on the optimizer the monitor was given: the steps of one
    made again mid-run (a new learning rate, a restarted schedule) never
    reach it. The first such step warns; attach() moves the hook, and the
    window goes on with every update."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = SpectralMonitor(model, opt, window=4, analyze_every=2, sinks=())
    thetas = [_thetas(model)]
    opt.register_step_post_hook(lambda *_: thetas.append(_thetas(model)))
    _train(model, opt, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with pytest.warns(RuntimeWarning, match=r"another optimizer \(torch\.optim\.sgd\.SGD\) stepped the monitored "
                                            r"parameters.*monitor\.attach\(optimizer\)"):
        _train(model, opt, 1, seed=1)
    assert mon.steps == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once
        _train(model, opt, 1, seed=2)
    mon.attach(opt)
    thetas = [_thetas(model)]  # a new optimizer: the updates from here on
    opt.register_step_post_hook(lambda *_: thetas.append(_thetas(model)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train(model, opt, 5, seed=3)
    assert mon.steps == 8 and mon.history[-1]["step"] == 8 and mon.history[-1]["lr"] == 0.05
    _assert_gram_of(mon, thetas)
    mon.close()


class _Inner(torch.optim.Optimizer):
    """An optimizer that steps through one it holds (as
    ZeroRedundancyOptimizer steps its local partition's optimizer), or
    through a list of them (a combined optimizer)."""

    def __init__(self, params, optimizer_class, listed=False, **kwargs):
        params = list(params)
        super().__init__(params, kwargs)
        inner = optimizer_class(params, **kwargs)
        if listed:
            self.optims = [inner]
        else:
            self.optim = inner

    def step(self, closure=None):
        for optim in self.optims if hasattr(self, "optims") else [self.optim]:
            optim.step(closure)


@pytest.mark.parametrize("listed", [False, True], ids=["attribute", "list"])
def test_only_optimizers_outside_the_hooked_step_are_warned(tmp_path, listed):
    """An optimizer the hooked one steps through is part of its step; one
    over other parameters is none of the monitor's business. But a second
    optimizer over part of the model, or a wrapper that changes the
    parameters after the hooked optimizer's step, moves parameters the hook
    has already read: their updates would land a step late."""
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = _Inner(model.parameters(), torch.optim.SGD, lr=0.1, listed=listed)
        mon = SpectralMonitor(model, opt, window=3, sinks=())
        other = torch.nn.Linear(12, 3)
        other_opt = torch.optim.SGD(other.parameters(), lr=0.1)
        for _ in range(3):
            _train(model, opt, 1)
            _train(other, other_opt, 1)
        assert mon.steps == 3
        mon.close()
    first = torch.optim.SGD(model[0].parameters(), lr=0.1)
    mon = SpectralMonitor(model, first, window=3, sinks=())
    second = torch.optim.SGD(model[2].parameters(), lr=0.1)
    model(torch.randn(4, 12)).pow(2).mean().backward()
    first.step()
    with pytest.warns(RuntimeWarning, match=r"several optimizers.*pass no optimizer and call monitor\.step\(\)"):
        second.step()
    mon.close()
    outer = _Inner(model.parameters(), torch.optim.SGD, lr=0.1)
    mon = SpectralMonitor(model, outer.optim, window=3, sinks=())
    with pytest.warns(RuntimeWarning, match=r"_Inner holds the optimizer the monitor was given.*monitor\.attach\("):
        _train(model, outer, 1)
    mon.close()


def test_a_parameter_unfrozen_after_the_monitor_was_made_is_warned(tmp_path):
    """The monitor holds the parameters trainable when it was made. One
    unfrozen later (gradual unfreezing) is trained but not in the window:
    the first analysis after it warns, naming it, and the Gram stays that
    of the monitored parameters."""
    model = _model()
    model[0].weight.requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = SpectralMonitor(model, opt, window=3, analyze_every=2, sinks=())
    assert mon.window.numel == sum(p.numel() for p in model.parameters()) - model[0].weight.numel()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train(model, opt, 2)
        mon.flush()
    model[0].weight.requires_grad_(True)
    _train(model, opt, 1, seed=1)
    with pytest.warns(RuntimeWarning, match=r"parameter '0\.weight' requires a gradient but was frozen when the "
                                            r"monitor was made"):
        _train(model, opt, 1, seed=2)
        mon.flush()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once
        _train(model, opt, 2, seed=3)
        mon.flush()
    mon.close()


def test_stepping_by_hand_a_monitor_on_an_optimizer_is_refused(tmp_path):
    """With an optimizer the hook steps the monitor: a monitor.step() after
    optimizer.step() as well would count each step twice, every other
    update of the window a zero. Refused, saying why; after detach() the
    caller steps."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = SpectralMonitor(model, opt, window=3, analyze_every=1, sinks=())
    _train(model, opt, 2)
    with pytest.raises(ValueError, match=r"monitor\.step\(\) .*post-step hook of torch\.optim\.sgd\.SGD.*twice"):
        mon.step()
    assert mon.steps == 2 and mon.window.count == 2
    mon.detach()
    _train(model, opt, 1)
    mon.step(lr=0.1)
    assert mon.steps == 3 and mon.window.count == 3 and np.diagonal(mon.window.gram()).min() > 0
    mon.close()


def test_weights_loaded_after_the_monitor_was_made_are_no_update(tmp_path):
    """Weights loaded (or re-initialised) between making the monitor and the
    first optimizer step are where training starts, not a step of it: the
    window's first update is the first step's, as if the monitor had been
    made after loading."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = SpectralMonitor(model, opt, window=4, analyze_every=1, sinks=())
    model.load_state_dict(_model(seed=1).state_dict())
    thetas = [_thetas(model)]
    opt.register_step_post_hook(lambda *_: thetas.append(_thetas(model)))
    _train(model, opt, 3)
    _assert_gram_of(mon, thetas)
    mon.close()
