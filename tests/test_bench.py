"""The benchmark harness: spectral-edge bench --quick end to end, its
measurements' arithmetic, and the tables generated from the committed results."""
import itertools
import json
import pathlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import spectral_edge_fast.bench as harness
from spectral_edge_fast.bench import analysis, gram, step, tables
from spectral_edge_fast.cli import main
from spectral_edge_fast.kernels import backend_status

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CPU = torch.device("cpu")
EPS32 = float(np.finfo(np.float32).eps)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """``spectral-edge bench --quick --device cpu --out DIR``: its JSON files by benchmark."""
    out = tmp_path_factory.mktemp("bench")
    assert main(["bench", "--quick", "--device", "cpu", "--out", str(out)]) == 0
    return {name: json.loads((out / f"{name}_cpu.json").read_text()) for name in harness.BENCHMARKS}


def test_quick_run_writes_every_benchmark_with_its_machine(quick):
    for name, d in quick.items():
        assert d["benchmark"] == name and d["command"] == "spectral-edge bench --quick"
        m = d["machine"]
        assert m["device_type"] == "cpu" and m["date"].endswith("UTC") and m["threads"] >= 1
        assert m["commit"] is None or len(m["commit"]) == 40
        assert d["wall_s"] > 0 and d["results"]
    for name in ("step", "gram"):
        m = quick[name]["machine"]
        assert m["copy_bandwidth_gbps"] > 0 and m["fma_rate_gflops"] > 0
        assert quick[name]["settings"]["rates"] == harness.DEFAULTS["quick"]["rates"]


def test_quick_step_rows(quick):
    d = quick["step"]
    cfg = harness.settings("step", "quick", CPU)
    (P,), (W,) = cfg["P"], cfg["W"]
    names = {(r["backend"], r["storage"]) for r in d["results"]}
    assert {("naive_torch", "fp32"), ("torch_incremental", "fp32"), ("torch_incremental", "bf16")} <= names
    if backend_status("cpp", CPU)[0]:
        assert {("cpp", "fp32"), ("cpp", "bf16")} <= names
    for r in d["results"]:
        if r["backend"].endswith("sketch"):
            assert r["bytes"] == P * 4 and r["sketch"] == cfg["sketch"]
            continue
        item = 4 if r["storage"] == "fp32" else 2
        assert r["bytes"] == P * (4 + 2 * 4 + (W + 1) * item)
        assert r["gbps"] == pytest.approx(r["bytes"] / r["ms"] / 1e6)
        assert r["copy_gbps"] > 0 and r["bandwidth_fraction"] == pytest.approx(r["gbps"] / r["copy_gbps"])
        assert r["ms_min"] <= r["ms"]
        # the quick step's bytes fit in a last-level cache: its rate is not memory's, and the row says so
        assert "cache_note" in r or harness.last_level_cache(CPU) is None
    assert [r["what"] for r in d["host"]] == ["views", "step"]
    assert all(r["tensors"] == 148 and r["us_median"] > 0 for r in d["host"])


def test_quick_gram_rows_against_float64(quick):
    d = quick["gram"]
    cfg = harness.settings("gram", "quick", CPU)
    assert len(d["results"]) == 2 * len(cfg["P"]) * len(cfg["W"]) * len(cfg["dtypes"])
    for ours, torch_row in zip(d["results"][::2], d["results"][1::2]):
        assert (ours["op"], torch_row["op"]) == ("sef.gram", "x @ x.T")
        W, P = ours["W"], ours["P"]
        item = 4 if ours["dtype"] == "fp32" else 2
        assert ours["speedup"] == pytest.approx(torch_row["ms"] / ours["ms"])
        for r in (ours, torch_row):
            assert r["gbps"] == pytest.approx(W * P * item / r["ms"] / 1e6)
            assert r["gflops"] == pytest.approx(W * (W + 1) * P / r["ms"] / 1e6)
            assert r["fma_fraction"] == pytest.approx(r["gflops"] / d["machine"]["fma_rate_gflops"])
            assert r["copy_gbps"] > 0 and r["copy_fraction"] == pytest.approx(r["gbps"] / r["copy_gbps"])
        # float32 sums over P products (bf16 products are exact in float32)
        assert 0 <= ours["rel_error"] <= P * EPS32
        # x @ x.T rounds its result to x's dtype: bf16 keeps 8 bits
        assert torch_row["rel_error"] <= (P * EPS32 if ours["dtype"] == "fp32" else 2.0**-7)


def test_quick_analysis_cases(quick):
    d = quick["analysis"]
    cases = [r["case"] for r in d["results"]]
    assert cases[:3] == ["streaming", "monitor_consecutive", "monitor_strided"] and "batched_cold" in cases
    stream = d["results"][0]
    cfg = harness.settings("analysis", "quick", CPU)
    assert stream["slides"] == cfg["slides"]  # the stream's slides after 3 warm-up ones
    assert d["results"][1]["tracker"] and not d["results"][2]["tracker"]
    assert all(r["ms_min"] <= r["ms"] for r in d["results"])


def test_gram_state_is_the_streams():
    full = analysis.stream_grams(3, 20, 16)
    W = 6
    for count in (W + 1, 13, 20):
        state = analysis.gram_state(full, W, count, ["a", "b", "c"])
        np.testing.assert_array_equal(state.extended_gram("c"), full[2, count - W - 1 : count, count - W - 1 : count])


def test_reference_and_error():
    x = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
    want = x.double() @ x.double().T
    got = gram.reference(x, block=4)  # three blocks of columns, the last short
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    assert gram.rel_error(want, want) == 0.0
    assert gram.rel_error(2 * want, want) == pytest.approx(1.0)


def test_timing_warms_up_and_takes_the_median(monkeypatch):
    calls = []
    times = iter([0.0, 0.5] + [0.0, 0.3, 0.0, 0.1, 0.0, 0.2])  # a warm-up call, then three timed ones
    monkeypatch.setattr(harness, "time", SimpleNamespace(perf_counter=lambda: next(times)))
    r = harness.timed(lambda: calls.append(1), CPU, repeats=3, warmup=1)
    assert len(calls) == 4 and r == dict(ms=pytest.approx(200.0), ms_min=pytest.approx(100.0), repeats=3)
    clock = SimpleNamespace(perf_counter=itertools.count().__next__)  # every call takes 1 s
    monkeypatch.setattr(harness, "time", clock)
    monkeypatch.setattr(harness, "LONG_CALL_S", 0.5)  # a long warm-up call: the median of 3 at most
    assert harness.time_fn(lambda: None, CPU, repeats=9) == [1, 1, 1]
    monkeypatch.setattr(harness, "LONG_CALL_S", 2.0)
    assert len(harness.time_fn(lambda: None, CPU, repeats=9)) == 9


def test_cache_notes_and_memory(monkeypatch):
    assert "fit in the 32 MB last-level cache" in harness.cache_note(10**6, 0.5, 32 << 20)
    assert "served from cache" in harness.cache_note(10**9, 2.0, 32 << 20)
    assert harness.cache_note(10**9, 0.9, 32 << 20) is None and harness.cache_note(10**9, 0.9, None) is None
    monkeypatch.setattr("spectral_edge_fast.window.free_bytes", lambda device: 10**9)
    assert harness.fits(CPU, 8 * 10**8) is None
    assert harness.fits(CPU, 10**9) == "needs 1 GB, 1 GB free"


def test_a_case_that_does_not_fit_is_a_skipped_row_under_its_own_name(monkeypatch):
    monkeypatch.setattr("spectral_edge_fast.window.free_bytes", lambda device: 1000)
    rows = step.bench_case(10**4, 4, [10**4], "fp32", CPU, ["torch"], 1, 1e10)
    assert [(r["backend"], "skipped" in r) for r in rows] == [("naive_torch", True), ("torch_incremental", True)]
    rows = gram.bench_case(4, 10**4, "bf16", CPU, 1, {}, 1e10)
    assert [(r["op"], "skipped" in r) for r in rows] == [("sef.gram", True), ("x @ x.T", True)]


def test_step_sizes_fit_the_memory():
    assert step.fitting_sizes([10**7, 10**8], W=16, free=None) == [10**7, 10**8]
    assert step.fitting_sizes([10**7, 10**8], W=16, free=2 * 38 * 4 * 10**7) == [10**7]
    assert step.fitting_sizes([10**8], W=16, free=2 * 38 * 4 * 10**6) == [10**6]
    assert sum(step.split_sizes(10**6, 7)) == 10**6 and len(step.gpt2_124m_sizes()) == 148
    assert sum(step.gpt2_124m_sizes()) == 124_439_808


@pytest.mark.skipif(not step.sketch_available(), reason="this GramWindow has no sketch= option yet")
def test_sketch_step_is_timed_where_the_window_has_it():
    rows = step.bench_case(10**4, 4, [6000, 4000], "fp32", CPU, ["torch"], 1, 1e10, sketch=64, naive=False)
    assert [r["backend"] for r in rows] == ["torch_incremental", "torch sketch"]
    assert rows[1]["bytes"] == 4 * 10**4 and rows[1]["ms"] > 0


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_sketch_scale_script_runs_small(tmp_path, dtype):
    """benchmarks/sketch_scale.py (the P = 1e9 CPU and 7B one-card runs) at a
    size the tests can afford: its JSON says what it measured."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sketch_scale", ROOT / "benchmarks" / "sketch_scale.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "scale.json"
    assert script.main(["--P", "2e5", "--tensors", "20", "--window", "4", "--sketch", "256", "--repeats", "1",
                        "--dtype", dtype, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["P"] == 200_000 and result["param_bytes"] == 200_000 * (2 if dtype == "bf16" else 4)
    assert [r["groups"] for r in result["results"]] == ["one group", "ten groups"]
    for r in result["results"]:
        assert r["ms"] > 0 and 0 < r["bytes_held"] < result["exact_bytes"] and "cpu_ms" in r


def test_overrides_and_the_command_line(monkeypatch):
    seen = {}
    monkeypatch.setattr(step, "run", lambda device, config: seen.setdefault("step", config) and dict(machine={}))
    monkeypatch.setattr(gram, "run", lambda device, config: seen.setdefault("gram", config) and dict(machine={}))
    args = harness.parse_args(["--only", "step", "gram", "--P", "3e4", "--W", "5", "--repeats", "1", "--backends", "torch"])
    assert harness.command_line(args) == ("spectral-edge bench --only step gram --P 30000 --W 5 --backends torch "
                                          "--repeats 1")
    for name in args.only:
        assert harness.run(name, args)["command"] == harness.command_line(args)
    assert seen["step"]["P"] == [30000] and seen["step"]["W"] == [5] and seen["step"]["repeats"] == 1
    assert seen["step"]["dtypes"] == ["fp32", "bf16"] and seen["step"]["backends"] == ["torch"]
    assert seen["gram"]["P"] == [30000] and "backends" not in seen["gram"]


def test_an_unknown_backend_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--backends", "cppp"])
    assert exit_.value.code == 2 and "--backends: invalid choice: 'cppp'" in capsys.readouterr().err


def test_a_result_is_named_by_where_it_ran(monkeypatch, tmp_path):
    """The analysis runs on the host: with --device cuda its file is still analysis_cpu.json."""
    where = {"step": "cuda", "analysis": "cpu"}
    monkeypatch.setattr(harness, "run", lambda name, args: dict(machine=dict(device_type=where[name]), wall_s=1.0))
    assert harness.main(["--only", "step", "analysis", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["analysis_cpu.json", "step_cuda.json"]


# -- the committed results and the pages generated from them ---------------------------------------------------


def test_results_md_is_generated_from_the_committed_results():
    assert tables.render_results(str(RESULTS)) == (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8"), (
        "benchmarks/RESULTS.md is out of date: run `python benchmarks/results_table.py`")


def test_readme_tables_are_generated_from_the_committed_results():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = [m.group(2) for m in tables.BLOCK.finditer(readme)]
    assert {"step_cpu", "gram_cpu", "analysis_cpu"} <= set(blocks)
    assert tables.update_readme(readme, str(RESULTS)) == readme, (
        "README.md's benchmark tables are out of date: run `python benchmarks/results_table.py`")


def test_every_committed_result_of_the_harness_is_rendered():
    page = (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    names = [f"{b}_*.json" for b in harness.BENCHMARKS] + ["train_overhead.json"]
    for path in sorted(p for name in names for p in RESULTS.glob(name)):
        d = json.loads(path.read_text())
        machine = d.get("machine", d)
        assert machine["device"] in page and (machine.get("commit") or "?")[:10] in page, path.name


def test_a_readme_block_without_its_result_is_an_error(tmp_path):
    text = "<!-- bench: step_cpu (generated) -->\nold\n<!-- /bench: step_cpu -->\n"
    with pytest.raises(ValueError, match="step_cpu.json"):
        tables.update_readme(text, str(tmp_path))
