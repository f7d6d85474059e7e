"""Sinks: JSONL and CSV files, the optional TensorBoard and W&B, resuming."""
import csv
import json
import math
import os
import re
import signal
import sys
import time
import warnings

import numpy as np
import pytest

from spectral_edge_fast.sinks import CSVSink, JSONLSink, Sink, flatten, make_sinks, read_records, scalars

RECORD = {
    "step": 10,
    "k_star": 2,
    "R": 3.5,
    "A": math.nan,
    "sigmas": [3.0, 1.5, 0.5],
    "groups": {"layers.0": {"R": 2.0, "k_star": 1}},
    "spectrum": {"eigenvalues": [9.0, 2.25, 0.25], "status": "ok"},
    "events": [{"kind": "gap_opening", "step": 10, "value": 3.5}, {"kind": "k_star_shift", "step": 8, "group": "head"}],
}


def test_flatten_numbers_list_entries_from_one():
    flat = flatten({"a": 1, "b": [2.0, 3.0], "c": {"d": np.float64(4.0), "e": "text", "f": None}, "g": True})
    assert flat == {"a": 1, "b/1": 2.0, "b/2": 3.0, "c/d": 4.0, "g": 1.0}


def test_scalars_keep_the_summary_of_an_analysis_record():
    cols = scalars("analysis", RECORD)
    assert cols["sigmas/2"] == 1.5 and cols["groups/layers.0/R"] == 2.0
    assert not any(c.startswith(("spectrum/", "events/")) for c in cols)
    assert scalars("metrics", {"step": 1, "loss": 0.5}) == {"step": 1, "loss": 0.5}


def test_jsonl_writes_one_parsable_line_per_record(tmp_path):
    sink = JSONLSink(str(tmp_path))
    sink.write_meta({"window": 3})
    sink.write("analysis", RECORD)
    sink.write("analysis", {**RECORD, "step": 20})
    sink.write("metrics", {"step": 10, "loss": np.float32(0.25)})
    sink.close()
    lines = (tmp_path / "spectral.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [10, 20]
    assert json.loads(lines[0])["A"] is None  # NaN is written as null: strict JSON
    run = read_records(str(tmp_path))
    assert run["meta"] == {"window": 3} and run["metrics"] == [{"step": 10, "loss": 0.25}]


def test_csv_grows_its_header_and_keeps_rows(tmp_path):
    sink = CSVSink(str(tmp_path))
    sink.write("analysis", {**RECORD, "sigmas": [3.0]})
    sink.write("analysis", {**RECORD, "step": 20})
    sink.close()
    with open(tmp_path / "spectral.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["10", "20"]
    assert rows[0]["sigmas/2"] == "" and rows[1]["sigmas/3"] == "0.5"
    assert rows[1]["events"] == "gap_opening@10 k_star_shift@8[head]"


def test_file_sinks_resume_with_exactly_the_given_records(tmp_path):
    for cls, name in ((JSONLSink, "spectral.jsonl"), (CSVSink, "spectral.csv")):
        sink = cls(str(tmp_path))
        for step in (10, 20, 30):  # 30 came after the checkpoint
            sink.write("analysis", {**RECORD, "step": step})
        sink.close()
        resumed = cls(str(tmp_path))
        resumed.resume({"analysis": [{**RECORD, "step": 10}, {**RECORD, "step": 20}], "metrics": []})
        resumed.write("analysis", {**RECORD, "step": 25})
        resumed.close()
        text = (tmp_path / name).read_text()
        assert text.count("\n") == (3 if name.endswith(".jsonl") else 4), name  # CSV adds its header
        assert "30" not in [line.split(",")[0] for line in text.splitlines()]


def test_missing_optional_packages_warn_once_and_do_not_crash(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.warns(RuntimeWarning) as warned:
        sinks = make_sinks(("jsonl", "tensorboard", "wandb"), str(tmp_path))
    assert [type(s) for s in sinks] == [JSONLSink]
    messages = [str(w.message) for w in warned]
    assert len(messages) == 2
    assert "pip install tensorboard" in messages[0] and "pip install wandb" in messages[1]


GROUPED = {**RECORD, "groups": {"layers.0": {"R": 2.0, "k_star": 1, "share": 0.25},
                                 "head": {"R": 4.0, "k_star": 2, "share": 0.75}}}


def _tensorboard_events(path):
    """Scalars ``{tag: [(step, value)]}`` and texts ``{tag: [(step, text)]}`` of
    the event files under ``path``, read back as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars_ = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    tensors = {t: [(e.step, e.tensor_proto) for e in acc.Tensors(t)] for t in acc.Tags()["tensors"]}
    return scalars_, tensors


def test_tensorboard_puts_each_group_in_its_own_section_and_events_as_text(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installed")
    (sink,) = make_sinks(("tensorboard",), str(tmp_path))
    sink.write("analysis", GROUPED)
    sink.write("analysis", {**GROUPED, "step": 20, "events": []})
    sink.write("metrics", {"step": 20, "eval_loss": 0.5})
    sink.close()
    values, tensors = _tensorboard_events(tmp_path / "tensorboard")
    assert values["spectral/R"] == [(10, 3.5), (20, 3.5)] and values["metrics/eval_loss"] == [(20, 0.5)]
    assert values["spectral_groups/head/R"] == [(10, 4.0), (20, 4.0)]
    assert values["spectral_groups/layers.0/share"][0] == (10, 0.25)
    assert not any(t.startswith(("spectral/groups", "groups/")) for t in values)
    (step, text), = tensors["spectral/events/text_summary"]  # only the record that has events
    assert step == 10 and text.string_val[0].decode() == "gap_opening@10 k_star_shift@8[head]"
    layout = tensors["custom_scalars__config__"][0][1].string_val[0]
    assert b"spectral_groups/.*/R$" in layout


def test_tensorboard_writes_into_a_summary_writer_of_yours_and_leaves_it_open(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installed")
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path / "mine"))
    (sink,) = make_sinks(writer, str(tmp_path / "spectral"))
    sink.write("analysis", RECORD)
    sink.close()
    writer.add_scalar("train/loss", 1.0, 11)  # still open
    writer.close()
    values, _ = _tensorboard_events(tmp_path / "mine")
    assert values["spectral/R"] == [(10, 3.5)] and values["train/loss"] == [(11, 1.0)]
    assert not (tmp_path / "spectral" / "tensorboard").exists()


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb", reason="the wandb package is not installed")
    for name, value in (("WANDB_MODE", "offline"), ("WANDB_DIR", str(tmp_path)), ("WANDB_SILENT", "true")):
        monkeypatch.setenv(name, value)
    yield wandb
    if wandb.run is not None:
        wandb.run.finish()


def _wandb_history(run_dir):
    """The history rows of a finished offline W&B run, read from its
    ``run-<id>.wandb`` file (a LevelDB-style log of ``Record`` protobufs after
    a 7-byte header): what the run kept, after the rows it dropped. The
    service writes the file after ``finish()`` returns: read until its exit
    record is there."""
    import struct

    from wandb.proto import wandb_internal_pb2

    (path,) = [os.path.join(run_dir, n) for n in os.listdir(run_dir) if n.endswith(".wandb")]
    deadline = time.monotonic() + 120
    while True:
        with open(path, "rb") as f:
            data = f.read()
        pos, chunk, records = 7, b"", []
        while pos + 7 <= len(data):
            left = 32768 - pos % 32768  # records never straddle a 32 KiB block's last 6 bytes
            if left < 7:
                pos += left
                continue
            _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            if pos + 7 + length > len(data):  # a piece still being written
                break
            chunk += data[pos + 7:pos + 7 + length]
            pos += 7 + length
            if kind in (1, 4):  # a whole record, or a record's last piece
                records.append(wandb_internal_pb2.Record.FromString(chunk))
                chunk = b""
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        assert time.monotonic() < deadline, f"{path}: no exit record after 120 s"
        time.sleep(0.1)
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]


def test_wandb_joins_the_users_run_and_never_pushes_its_step_back(tmp_path, wandb_offline):
    """The framework's run logs on its own (its step passes the monitor's);
    the records go into that run, none dropped, each with its own step."""
    wandb = wandb_offline
    run = wandb.init(project="mine")
    run.define_metric("*", step_metric="train/global_step", step_sync=True)  # what a Trainer declares
    (sink,) = make_sinks(("wandb",), str(tmp_path / "spectral"))
    sink.write_meta({"window": 3})
    for step in range(1, 61):
        run.log({"train/loss": 1.0 / step, "train/global_step": step})
    sink.write("analysis", {**RECORD, "step": 50})
    sink.write("metrics", {"step": 50, "eval_loss": 0.5})
    run.log({"train/loss": 0.01, "train/global_step": 61})
    sink.close()
    assert wandb.run is run  # left open for its owner
    assert run.config["spectral_edge"] == {"window": 3}
    run_dir = os.path.dirname(run.dir)
    run.finish()
    rows = _wandb_history(run_dir)
    assert [r["_step"] for r in rows] == list(range(len(rows)))  # nothing pushed back, nothing dropped
    assert len(rows) == 63
    (spectral,) = [r for r in rows if "spectral/R" in r]
    assert spectral["spectral/step"] == 50 and spectral["spectral/sigmas/2"] == 1.5
    assert spectral["spectral/groups/layers.0/R"] == 2.0
    (metrics,) = [r for r in rows if "metrics/eval_loss" in r]
    assert metrics["metrics/step"] == 50 and metrics["metrics/eval_loss"] == 0.5
    assert rows[-1]["train/global_step"] == 61


def test_wandb_built_before_the_frameworks_run_joins_it(tmp_path, wandb_offline):
    """A callback's monitor (and its sink) is built before the framework
    starts its run: the sink waits for its first record to choose a run."""
    wandb = wandb_offline
    (sink,) = make_sinks(("wandb",), str(tmp_path / "spectral"))
    sink.write_meta({"window": 3})
    run = wandb.init(project="mine")
    sink.write("analysis", RECORD)
    sink.close()
    assert wandb.run is run and run.config["spectral_edge"] == {"window": 3}
    run_dir = os.path.dirname(run.dir)
    run.finish()
    assert [r["spectral/step"] for r in _wandb_history(run_dir)] == [10]


def test_wandb_run_finished_by_its_owner_warns_once_and_the_training_goes_on(tmp_path, wandb_offline):
    wandb = wandb_offline
    run = wandb.init(project="mine")
    (sink,) = make_sinks(("wandb",), str(tmp_path))
    sink.write("metrics", {"step": 1, "loss": 1.0})
    run.finish()  # a framework's end-of-training, before the monitor's last records
    with pytest.warns(RuntimeWarning, match=r"wandb sink stops at step 2: .*finished") as warned:
        sink.write("analysis", {**RECORD, "step": 2})
        sink.write("metrics", {"step": 3, "loss": 0.5})
        sink.close()
    assert len(warned) == 1 and wandb.run is None


def test_wandb_starts_a_run_with_your_settings_only_when_none_exists(tmp_path, wandb_offline):
    wandb = wandb_offline
    from spectral_edge_fast.sinks import WandbSink

    sink = WandbSink(str(tmp_path), project="edge-test", name="probe")
    sink.write("analysis", RECORD)
    run = wandb.run
    assert run is not None and run.project == "edge-test" and run.name == "probe"
    run_dir = os.path.dirname(run.dir)
    sink.close()
    assert wandb.run is None  # the run it started is finished
    (row,) = _wandb_history(run_dir)
    assert row["spectral/step"] == 10 and row["spectral/R"] == 3.5
    mine = wandb.init(project="given")
    (given,) = make_sinks(mine, str(tmp_path))  # a run object in sinks=
    given.write("metrics", {"step": 3, "loss": 1.0})
    given.close()
    assert wandb.run is mine


def test_sink_objects_and_unknown_names(tmp_path):
    class Collect(Sink):
        def __init__(self):
            self.seen = []

        def write(self, kind, record):
            self.seen.append((kind, record["step"]))

    mine = Collect()
    assert make_sinks(mine, str(tmp_path)) == [mine]
    assert make_sinks(None, str(tmp_path)) == []
    with pytest.raises(ValueError, match="unknown sink 'xml'"):
        make_sinks(("xml",), str(tmp_path))


def test_writing_after_close_appends(tmp_path):
    for cls, name in ((JSONLSink, "spectral.jsonl"), (CSVSink, "spectral.csv")):
        sink = cls(str(tmp_path))
        sink.write("analysis", RECORD)
        sink.close()
        sink.write("analysis", {**RECORD, "step": 20})
        sink.write("analysis", {**RECORD, "step": 30, "sigmas": [1.0, 1.0, 1.0, 1.0]})  # a new column
        sink.close()
        lines = (tmp_path / name).read_text().splitlines()
        assert len(lines) == (3 if name.endswith(".jsonl") else 4), name


def _killed_at_random(target, trials, longest, seed):
    """Run ``target(ack)`` in forked children, each killed with SIGKILL after a
    random delay; yields (trial, the count the child acknowledged through
    ``ack(i)``) once each child is dead. Forked, not spawned: no new
    interpreter to start, so many kills stay short."""
    rng = np.random.default_rng(seed)
    for trial in range(trials):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the writer
            os.close(read_end)
            try:
                target(trial, lambda i: os.write(write_end, b"%d\n" % i))
            finally:
                os._exit(1)  # never reaches pytest's own exit
        os.close(write_end)
        time.sleep(rng.uniform(0.0, longest))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        with os.fdopen(read_end, "rb") as f:
            acked = [int(x) for x in f.read().split()]
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, "the writer ended before the kill"
        yield trial, (acked[-1] if acked else 0)


def _steps_of_lines(lines, parse):
    """Steps of the lines that parse; only the last line may fail to."""
    steps = []
    for i, line in enumerate(lines):
        try:
            steps.append(parse(line))
        except (ValueError, KeyError, TypeError):
            assert i == len(lines) - 1, f"line {i + 1} of {len(lines)} is broken"
    return steps


def test_files_survive_sigkill_at_any_instant_losing_at_most_the_record_in_flight(tmp_path):
    """JSONL, CSV (its header grows every 40 records, so it is rewritten
    often) and meta.json, with the writer killed at random instants."""

    def write(trial, ack):
        sinks = [JSONLSink(str(tmp_path / str(trial))), CSVSink(str(tmp_path / str(trial)))]
        for step in range(1, 10**6):
            record = {"step": step, "loss": step / 7, f"metric_{step // 40}": 1.0}
            for sink in sinks:
                sink.write("metrics", record)
                if step % 10 == 0:
                    sink.write_meta({"step": step, "padding": "x" * 5000})
            ack(step)

    def csv_step(line):
        row = next(csv.reader([line]))
        if len(row) < 2 or float(row[1]) != int(row[0]) / 7:  # a cut row: its loss not written in full
            raise ValueError(line)
        return int(row[0])

    killed_with_records = 0
    for trial, acked in _killed_at_random(write, trials=20, longest=0.5, seed=0):
        run = tmp_path / str(trial)
        jsonl, table, meta = (run / name for name in ("metrics.jsonl", "metrics.csv", "meta.json"))
        if acked == 0 and not jsonl.exists():
            continue
        lines = jsonl.read_text().splitlines()
        steps = _steps_of_lines(lines, lambda line: json.loads(line)["step"])
        assert steps == list(range(1, len(steps) + 1)) and acked <= len(steps) <= acked + 1, (trial, acked)
        if table.exists() or acked:
            lines = table.read_text().splitlines()
            assert lines[0].startswith("step,loss,metric_"), (trial, lines[:1])
            steps = _steps_of_lines(lines[1:], csv_step)
            assert steps == list(range(1, len(steps) + 1)) and acked <= len(steps) <= acked + 1, (trial, acked)
        if meta.exists():
            assert json.loads(meta.read_text())["step"] >= acked - acked % 10
        killed_with_records += acked > 0
    assert killed_with_records >= 5  # kills came after records were written, not only before the first


def test_a_line_cut_by_a_crash_is_skipped_with_a_warning_naming_file_and_line(tmp_path):
    good = [{"step": s, "R": 2.0} for s in (1, 2, 3)]
    text = "".join(json.dumps(r) + "\n" for r in good)
    (tmp_path / "spectral.jsonl").write_text(text + '{"step": 4, "R": 2.')
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n[1, 2]\n{"step": 2, "loss": 0.5}\n')
    with pytest.warns(RuntimeWarning) as warned:
        run = read_records(str(tmp_path))
    assert run["analysis"] == good and [m["step"] for m in run["metrics"]] == [1, 2]
    first, second = (str(w.message) for w in warned)
    assert "spectral.jsonl" in first and "line 4" in first
    assert "metrics.jsonl" in second and "line 2" in second


def test_a_broken_meta_json_warns_and_the_run_goes_on(tmp_path):
    (tmp_path / "spectral.jsonl").write_text('{"step": 1}\n')
    (tmp_path / "meta.json").write_text('{"window": 16, "info": {"na')
    with pytest.warns(RuntimeWarning, match=r"meta\.json is unreadable"):
        run = read_records(str(tmp_path))
    assert run["meta"] == {} and run["analysis"] == [{"step": 1}]


def test_resume_keeps_the_records_before_the_given_tail_from_the_files(tmp_path):
    """A monitor that holds only its last records resumes with those and
    ``start``, the count of earlier records: the files keep their first
    ``start`` records and drop what came after the checkpoint."""
    for cls, name in ((JSONLSink, "spectral.jsonl"), (CSVSink, "spectral.csv")):
        log_dir = tmp_path / cls.__name__
        full = cls(str(log_dir / "full"))
        sink = cls(str(log_dir / "resumed"))
        for step in range(10, 70, 10):  # 60 came after the checkpoint
            record = {**RECORD, "step": step, "sigmas": [1.0] * (step // 10)}  # the CSV header grows
            sink.write("analysis", record)
            if step < 60:
                full.write("analysis", record)
        sink.close()
        resumed = cls(str(log_dir / "resumed"))
        tail = [{**RECORD, "step": s, "sigmas": [1.0] * (s // 10)} for s in (40, 50)]
        resumed.resume({"analysis": tail, "metrics": []}, {"analysis": 3, "metrics": 0})
        for s in (resumed, full):
            s.write("analysis", {**RECORD, "step": 70, "sigmas": [2.0]})
            s.close()
        assert (log_dir / "resumed" / name).read_text() == (log_dir / "full" / name).read_text(), name
        with pytest.warns(RuntimeWarning, match=rf"{name} holds 6 of the 9 records before"):
            cls(str(log_dir / "resumed")).resume({"analysis": tail}, {"analysis": 9})


def test_wandb_beside_a_trainer_reporting_to_wandb_keeps_every_record(tmp_path, wandb_offline):
    """The Hugging Face Trainer with ``report_to="wandb"`` and the callback's
    wandb sink in one run: every analysis and metric record (eval_loss too)
    is in the run's history, beside the Trainer's own."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    pytest.importorskip("accelerate", reason="accelerate (the Trainer needs it) is not installed")
    import torch

    from helpers import TinyRegressor
    from spectral_edge_fast.integrations.huggingface import SpectralEdgeCallback

    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    data = [{"x": row, "labels": row.sum(0, keepdim=True)} for row in x]
    callback = SpectralEdgeCallback(window=4, analyze_every=5, sinks=("jsonl", "wandb"), report=False,
                                    log_dir=str(tmp_path / "spectral"))
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=30, per_device_train_batch_size=8,
                                          learning_rate=1e-2, logging_steps=4, eval_strategy="steps", eval_steps=10,
                                          save_strategy="no", report_to=["wandb"], use_cpu=True, disable_tqdm=True)
    transformers.Trainer(model=TinyRegressor(), args=args, train_dataset=data, eval_dataset=data, callbacks=[callback]).train()
    run = wandb_offline.run
    run_dir = os.path.dirname(run.dir)
    run.finish()
    rows = _wandb_history(run_dir)
    assert [r["_step"] for r in rows] == list(range(len(rows)))
    files = read_records(str(tmp_path / "spectral"))
    assert [r["spectral/step"] for r in rows if "spectral/R" in r] == [r["step"] for r in files["analysis"]]
    assert [r["metrics/step"] for r in rows if "metrics/step" in r] == [m["step"] for m in files["metrics"]]
    assert [r["metrics/step"] for r in rows if "metrics/eval_loss" in r] == [10, 20, 30]
    assert len(files["analysis"]) == 6 and sum("eval/loss" in r for r in rows) == 3  # the Trainer's own
    assert not any("train/spectral/R" in r for r in rows), "the summaries once, from the sink"


def test_wandb_sink_beside_a_trainer_reporting_to_wandb_and_more_warns(tmp_path, wandb_offline, monkeypatch):
    """With report_to also feeding TensorBoard the summaries go through
    Trainer.log, so the W&B run gets them twice: said when training begins."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    import torch

    from helpers import TinyRegressor
    from spectral_edge_fast.integrations.huggingface import SpectralEdgeCallback

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    data = [{"x": row, "labels": row.sum(0, keepdim=True)} for row in x]
    callback = SpectralEdgeCallback(window=4, analyze_every=4, sinks=("jsonl", "wandb"), report=False,
                                    log_dir=str(tmp_path / "spectral"))
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=8, per_device_train_batch_size=8,
                                          save_strategy="no", report_to=["wandb", "tensorboard"], use_cpu=True,
                                          disable_tqdm=True)
    trainer = transformers.Trainer(model=TinyRegressor(), args=args, train_dataset=data, callbacks=[callback])
    with pytest.warns(RuntimeWarning, match=r"summary is in it twice .* also feeds tensorboard"):
        trainer.train()
    assert [h["spectral/step"] for h in trainer.state.log_history if "spectral/R" in h] == [4, 8]


def test_a_second_process_writing_the_same_run_directory_is_refused(tmp_path):
    """Two processes appending to one run's files interleave and truncate
    each other's records: the second writer is refused, naming the first's
    pid; once the first is gone the directory is free again."""
    import subprocess

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom spectral_edge_fast.sinks import JSONLSink\n"
         f"s = JSONLSink({str(tmp_path)!r}); s.write('analysis', {{'step': 1}}); print('ready', flush=True)\n"
         "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        for cls in (JSONLSink, CSVSink):
            with pytest.raises(RuntimeError, match=rf"being written by another process \(pid {holder.pid}\)"):
                cls(str(tmp_path)).write("analysis", {"step": 2})
        # the holder's record is intact
        assert read_records(str(tmp_path))["analysis"] == [{"step": 1}]
    finally:
        holder.kill()
        holder.wait()
    jsonl, csv_sink = JSONLSink(str(tmp_path)), CSVSink(str(tmp_path))  # one process may hold it twice
    with pytest.warns(RuntimeWarning, match=r"spectral\.jsonl held 1 record\(s\) of an earlier run"):
        jsonl.write("analysis", {"step": 3})
    csv_sink.write("analysis", {"step": 3})
    jsonl.close()
    csv_sink.close()


def _strict(text):
    """JSON as every reader parses it: NaN and Infinity are not JSON."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_nan_and_inf_inside_numpy_and_torch_values_are_written_as_null(tmp_path):
    import torch

    odd = {"step": 1, "f32": np.float32("nan"), "array": np.array([1.0, np.inf]), "tensor": torch.tensor([-math.inf]),
           "scalar": torch.tensor(math.nan)}
    sink = JSONLSink(str(tmp_path))
    sink.write_meta({"info": {"config": odd}})
    sink.write("metrics", odd)
    sink.close()
    expected = {"step": 1, "f32": None, "array": [1.0, None], "tensor": [None], "scalar": None}
    assert _strict((tmp_path / "metrics.jsonl").read_text()) == expected
    assert _strict((tmp_path / "meta.json").read_text())["info"]["config"] == expected


def _in_ascii_locale(code, cwd):
    """Run ``code`` in a Python whose default file encoding is ASCII (the C
    locale without UTF-8 mode; Windows' cp1252 lacks σ and CJK alike)."""
    import subprocess

    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0",
           "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          encoding="utf-8", timeout=120)


def test_csv_files_are_utf8_whatever_the_locale(tmp_path):
    """Metric and group names outside ASCII: the CSV sink writes UTF-8 (a
    locale that cannot encode them stopped the training), and grows its
    header by reading the file back as UTF-8."""
    done = _in_ascii_locale(
        "from spectral_edge_fast.sinks import CSVSink\n"
        "s = CSVSink('run')\n"
        "s.write('metrics', {'step': 1, 'Verlust': 0.5})\n"
        f"s.write('metrics', {ascii({'step': 2, 'Verlust': 0.25, 'précision': 0.9, '損失': 1.0})})\n"
        "s.close()\n", tmp_path)
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "run" / "metrics.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows == [{"step": "1", "Verlust": "0.5", "précision": "", "損失": ""},
                    {"step": "2", "Verlust": "0.25", "précision": "0.9", "損失": "1.0"}]


def test_a_full_disk_stops_the_file_sinks_with_a_warning_naming_the_file_and_the_training_goes_on(tmp_path):
    """A write that fails (the disk full; here a file-size limit, which fails
    it alike) stopped the training from the optimizer's hook with an error
    naming no file. Now each file sink warns once, naming its file and the
    step, and stops; the training, the other sink and the records in memory
    go on, and the files read back up to the failed record."""
    import subprocess

    code = """if True:
        import resource, signal, warnings, torch
        from spectral_edge_fast import SpectralMonitor
        from spectral_edge_fast.sinks import JSONLSink, Sink
        class Count(Sink):
            n = 0
            def write(self, kind, record):
                Count.n += 1
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails (EFBIG) instead of killing
        torch.manual_seed(0)
        model = torch.nn.Linear(8, 8)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        mon = SpectralMonitor(model, opt, window=4, analyze_every=1, log_dir='run', sinks=('jsonl', 'csv', Count()))
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
        x = torch.randn(16, 8)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            for step in range(1, 101):
                loss = model(x).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                mon.log({'loss': loss}, step=step)
            mon.close()
        print(mon.steps, Count.n, len(mon.history))
        for w in caught:
            print(w.message)
    """
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr
    counts, *messages = done.stdout.splitlines()
    assert counts == "100 200 100"  # every step, every record to the other sink and in memory
    for name in ("spectral.jsonl", "spectral.csv"):
        (message,) = [m for m in messages if f"run/{name}" in m]
        assert re.search(r"cannot write the analysis record of step \d+ \(.*\): this sink stops", message), message
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the line the failed write cut, if any
        steps = [r["step"] for r in read_records(str(tmp_path / "run"))["analysis"]]
    assert 5 < len(steps) < 100 and steps == list(range(1, len(steps) + 1))


def test_a_second_sink_of_the_same_files_in_one_process_takes_them_over(tmp_path):
    """Two monitors of one process with the same log_dir (a notebook cell
    that makes the monitor run again while the first stays hooked, or two
    monitors over two parts of a model): their sinks wrote the same files
    at two offsets, overwriting each other into cut lines. The newer one
    takes the files over; the older warns once, naming them, and stops."""
    for cls, name in ((JSONLSink, "spectral.jsonl"), (CSVSink, "spectral.csv")):
        log_dir = tmp_path / cls.__name__
        old, new = cls(str(log_dir)), cls(str(log_dir))
        old.write("analysis", {"step": 1, "who": 1.0, "pad": [1.0] * 5})
        with pytest.warns(RuntimeWarning, match="held 1 record"):  # the older's, replaced
            new.write("analysis", {"step": 1, "who": 2.0})
        newer = rf"{cls.__name__}/\*{cls.suffix} is written by a newer sink of this process"
        with pytest.warns(RuntimeWarning, match=newer) as warned:
            for step in range(2, 6):
                old.write("analysis", {"step": step, "who": 1.0, "pad": [1.0] * 5})
                new.write("analysis", {"step": step, "who": 2.0})
        assert len(warned) == 1
        old.close()
        new.write("analysis", {"step": 6, "who": 2.0})  # the older one's close leaves the newer one's files alone
        new.close()
        if cls is JSONLSink:
            records = read_records(str(log_dir))["analysis"]
            assert [(r["step"], r["who"]) for r in records] == [(s, 2.0) for s in range(1, 7)]
        else:
            with open(log_dir / name, newline="") as f:
                rows = list(csv.DictReader(f))
            assert [(r["step"], r["who"]) for r in rows] == [(str(s), "2.0") for s in range(1, 7)]


@pytest.mark.parametrize("cls", [JSONLSink, CSVSink])
def test_a_new_runs_meta_waits_for_its_first_record(tmp_path, cls):
    """meta.json was replaced when the new run's monitor was made, its records
    only at its first: killed in between, the directory held the earlier
    run's records under the new run's meta (the report showed the new model's
    size over the old run). The meta now comes with the first record."""
    first = cls(str(tmp_path))
    first.write_meta({"numel": 20})
    first.write("analysis", {"step": 1, "R": 2.0})
    first.close()
    again = cls(str(tmp_path))
    again.write_meta({"numel": 99})  # a new monitor's meta, then annotations
    again.write_meta({"numel": 99, "run_name": "b"})
    assert json.loads((tmp_path / "meta.json").read_text()) == {"numel": 20}, "the earlier run, whole"
    with pytest.warns(RuntimeWarning, match="of an earlier run"):
        again.write("analysis", {"step": 1, "R": 3.0})
    assert json.loads((tmp_path / "meta.json").read_text()) == {"numel": 99, "run_name": "b"}
    again.write_meta({"numel": 99, "run_name": "c"})  # once begun, at once
    assert json.loads((tmp_path / "meta.json").read_text())["run_name"] == "c"
    again.close()


def test_a_new_run_in_the_directory_of_an_earlier_one_says_it_replaces_its_records(tmp_path):
    """A script run again with the same log_dir (not resumed from the
    monitor's state) truncated the earlier run's files at its first record
    without a word. It still replaces them, one warning per file naming it
    and the count; resuming, or writing again after close(), appends
    without one."""
    for cls, name in ((JSONLSink, "spectral.jsonl"), (CSVSink, "spectral.csv")):
        first = cls(str(tmp_path))
        for step in (1, 2, 3):
            first.write("analysis", {"step": step, "R": 2.0})
        first.close()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            first.write("analysis", {"step": 4, "R": 2.0})  # the same run, carrying on
            first.close()
            resumed = cls(str(tmp_path))
            resumed.resume({"analysis": [{"step": 1, "R": 2.0}], "metrics": []})
            resumed.write("analysis", {"step": 2, "R": 2.0})
            resumed.close()
        again = cls(str(tmp_path))
        with pytest.warns(RuntimeWarning, match=rf"{name} held 2 record\(s\) of an earlier run, which this run's replace"):
            again.write("analysis", {"step": 1, "R": 3.0})
        again.close()
        assert (tmp_path / name).read_text().count("\n") == (1 if cls is JSONLSink else 2)
