"""The records as pandas DataFrames: read_run from the files, monitor.to_pandas from memory."""
import math
import sys

import numpy as np
import pytest
import torch

import spectral_edge_fast
from spectral_edge_fast import SpectralMonitor
from spectral_edge_fast.sinks import JSONLSink

pd = pytest.importorskip("pandas", reason="pandas is not installed")

RECORD = {
    "step": 10,
    "k_star": 2,
    "R": 3.5,
    "A": math.nan,
    "sigmas": [3.0, 1.5, 0.5],
    "groups": {"layers.0": {"R": 2.0, "k_star": 1, "share": 0.25}, "head": {"R": None, "k_star": None, "share": 0.75}},
    "spectrum": {"eigenvalues": [9.0, 2.25, 0.25], "status": "ok"},
    "events": [{"kind": "gap_opening", "step": 8, "value": 3.5}, {"kind": "k_star_shift", "step": 9, "group": "head"}],
}


def test_read_run_gives_one_row_per_analysis_and_groups_in_long_format(tmp_path):
    sink = JSONLSink(str(tmp_path))
    sink.write_meta({"window": 3})
    sink.write("analysis", RECORD)
    sink.write("analysis", {**RECORD, "step": 20, "R": 1.2, "events": []})
    sink.write("metrics", {"step": 20, "loss": 0.5})
    sink.write("metrics", {"step": 30, "loss": 0.25, "acc": 0.9})
    sink.close()
    run = spectral_edge_fast.read_run(str(tmp_path))
    assert run.records["step"].tolist() == [10, 20] and run.records["R"].tolist() == [3.5, 1.2]
    assert run.records["sigmas/2"].tolist() == [1.5, 1.5] and run.records["A"].isna().all()
    assert run.records["events"].tolist() == ["gap_opening@8 k_star_shift@9[head]", ""]
    assert not any(c.startswith("groups/") for c in run.records.columns)
    assert run.groups[["step", "group"]].values.tolist() == [[10, "layers.0"], [10, "head"], [20, "layers.0"],
                                                             [20, "head"]]
    head = run.groups[run.groups["group"] == "head"]
    assert head["R"].isna().all() and head["share"].tolist() == [0.75, 0.75]
    assert run.metrics["step"].tolist() == [20, 30] and math.isnan(run.metrics["acc"][0])
    assert run.events[["reported_at", "step", "kind"]].values.tolist() == [[10, 8, "gap_opening"],
                                                                         [10, 9, "k_star_shift"]]
    assert run.events["group"].isna().tolist() == [True, False] and run.events["group"][1] == "head"
    assert run.meta == {"window": 3}


def test_an_empty_run_gives_empty_frames_with_their_key_columns(tmp_path):
    run = spectral_edge_fast.read_run(str(tmp_path))
    assert run.records.empty and "step" in run.records.columns
    assert list(run.groups.columns) == ["step", "group"] and run.metrics.empty and run.events.empty


def test_monitor_to_pandas_matches_the_files(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = SpectralMonitor(model, opt, window=4, every=1, analyze_every=2, log_dir=str(tmp_path))
    x = torch.randn(16, 4)
    for step in range(12):
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        monitor.log({"loss": loss.item()}, step=step)
    memory = monitor.to_pandas()
    monitor.close()
    files = spectral_edge_fast.read_run(str(tmp_path))
    assert len(memory.records) > 0 and len(memory.groups) == 2 * len(memory.records)
    for name in ("records", "groups", "metrics", "events"):
        pd.testing.assert_frame_equal(getattr(memory, name), getattr(files, name), check_dtype=False)
    np.testing.assert_allclose(memory.metrics["loss"], [m["loss"] for m in monitor.metrics])


def test_without_pandas_the_error_names_it_and_the_dict_reader(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas -> ImportError
    with pytest.raises(ImportError, match=r"need pandas: pip install pandas.*sinks\.read_records"):
        spectral_edge_fast.read_run(str(tmp_path))


def test_read_run_and_frames_of_records_with_their_detail_agree(tmp_path):
    """read_run reads the records without their detail (spectrum, flow...,
    which no frame holds): a detail field that is None makes no column
    either way."""
    record = {**RECORD, "A": None, "flow": None, "overlaps": {"x": 1.0}}  # A None, as a monitor records NaN
    sink = JSONLSink(str(tmp_path))
    sink.write("analysis", record)
    sink.close()
    memory = spectral_edge_fast.frames.frames([record], [], {})
    files = spectral_edge_fast.read_run(str(tmp_path))
    assert "flow" not in memory.records.columns
    pd.testing.assert_frame_equal(memory.records, files.records, check_dtype=False)
