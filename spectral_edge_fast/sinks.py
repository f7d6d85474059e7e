"""Where the monitor's records go: JSONL (default), CSV, TensorBoard, W&B.

A sink receives two kinds of records, each a plain dict with a ``step``:

* ``"analysis"``: one per analysis of the window (spectrum, stability,
  adiabatic parameter, per-group summaries, events); CSV, TensorBoard and
  W&B get its summary (:func:`scalars`), JSONL all of it;
* ``"metrics"``: scalars the training loop logs through
  :meth:`SpectralMonitor.log` (losses, accuracies).

Files in the run directory:

    meta.json         the monitor's configuration and the run's annotations
    spectral.jsonl    analysis records, one JSON object a line   (jsonl sink)
    metrics.jsonl     metric records                             (jsonl sink)
    spectral.csv      analysis records flattened to columns      (csv sink)
    metrics.csv       metric records                             (csv sink)

The files survive a crash (``kill -9``) at any instant: records are
appended, each reaching the operating system whole as it is written, so at
most the record being written is lost (:func:`read_jsonl` skips a line cut
that way, with a warning); whole-file rewrites (``meta.json``, a CSV header
that grows, ``resume``) go through :func:`~spectral_edge_fast.files.atomic_write`.
A record a file sink cannot write (a full disk) stops that sink with one
warning naming the file; the training goes on. CSV files are UTF-8.

TensorBoard and Weights & Biases are optional: when their package is not
installed the sink is left out with one warning naming the package to install.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import warnings
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from .files import atomic_write, claim_dir, release_dir

FILES = {"analysis": "spectral", "metrics": "metrics"}
META_FILE = "meta.json"


def _json_default(value):
    # NumPy scalars and arrays, torch tensors reach the sinks from user metrics and annotations; their
    # NaN and infinities become null too (the encoder does not pass what this returns through _finite).
    for attr in ("tolist", "item"):
        if hasattr(value, attr):
            return _finite(getattr(value, attr)())
    return str(value)


def dumps(record: dict) -> str:
    """One JSON line; NaN and infinities become null so every reader parses it."""
    return json.dumps(_finite(record), default=_json_default, separators=(",", ":"))


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def flatten(record: dict, prefix: str = "") -> Dict[str, float]:
    """Numeric leaves of ``record`` as ``{"a/b/1": x}``; list entries are
    numbered from 1 (``sigmas/1`` is sigma_1). Strings and None are dropped."""
    out: Dict[str, float] = {}
    items: Iterable = record.items() if isinstance(record, dict) else enumerate(record, start=1)
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, (int, float)):
            out[name] = value
        elif isinstance(value, (dict, list, tuple)):
            out.update(flatten(value, name + "/"))
        elif hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # NumPy / torch scalars
            out[name] = value.item()
    return out


# Analysis-record fields too detailed for a table or a dashboard; the JSONL
# sink keeps them.
DETAIL_FIELDS = ("spectrum", "stability", "adiabatic", "flow", "overlaps", "decomposition", "events")


def scalars(kind: str, record: dict) -> Dict[str, float]:
    """The columns of a record for CSV, TensorBoard and W&B: every number of
    a metric record; of an analysis record the summary (``k_star``, ``R``,
    ``sigmas/j``, ``alpha/j``, ``A``, ``groups/<name>/R``...), without the
    detail kept in JSONL."""
    if kind == "analysis":
        record = {k: v for k, v in record.items() if k not in DETAIL_FIELDS}
    return flatten(record)


def event_labels(record: dict) -> str:
    """The record's events as text: ``gap_collapse@1600 k_star_shift@1650[head]``."""
    return " ".join(
        f"{e['kind']}@{e['step']}" + (f"[{e['group']}]" if e.get("group") else "") for e in record.get("events", ())
    )


class Sink:
    """Base class: override what the destination needs.

    ``resume`` is called when a monitor is restored from a checkpoint, with
    the records the checkpoint holds, so file sinks can drop what an
    interrupted run wrote after it. When the monitor kept only its latest
    records, ``start`` gives, per kind, how many came before them: file sinks
    keep those from their files."""

    def write(self, kind: str, record: dict) -> None:
        raise NotImplementedError

    def write_meta(self, meta: dict) -> None:
        pass

    def resume(self, records: Dict[str, List[dict]], start: Optional[Dict[str, int]] = None) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


# (directory, suffix) -> the sink of this process that writes those files
_writing: Dict[Tuple[str, str], "_FileSink"] = {}


def clear_records(log_dir: str) -> None:
    """Remove the records and meta an earlier run left in ``log_dir``, which
    a run about to start there replaces on purpose (an ``--overwrite``, a
    rerun of an experiment): the sinks would warn of each file they replace."""
    if os.path.isdir(log_dir):
        for entry in os.scandir(log_dir):
            if entry.is_file() and (entry.name.split(".")[0] in FILES.values() or entry.name == META_FILE):
                os.remove(entry.path)


def _replacing(path: str, header: int = 0) -> None:
    """A run's first record truncates its file: one warning when the file
    holds records (lines past ``header``) of an earlier run."""
    if not os.path.exists(path):
        return
    with open(path, "rb") as f:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    if lines > header:
        warnings.warn(f"{path} held {lines - header} record(s) of an earlier run, which this run's replace: give each "
                      "run its own log_dir to keep both; to continue a run, load its monitor's state "
                      "(monitor.load_state_dict)", RuntimeWarning, stacklevel=6)


def _check_kept(path: str, kept: int, wanted: int) -> None:
    if kept < wanted:
        warnings.warn(f"{path} holds {kept} of the {wanted} records before the checkpoint's last ones: the file was "
                      f"cut or replaced since; the resumed file lacks {wanted - kept} of them", RuntimeWarning,
                      stacklevel=4)


class _FileSink(Sink):
    """Files under ``log_dir``, one per kind, created (truncated) at the first
    write and appended to afterwards, also after ``close()``; a monitor
    restored from a checkpoint rewrites them through ``resume``.

    A write that fails (a full disk, a file-size quota) does not stop the
    training: the sink warns once, naming the file and the step, and writes
    no more; its files keep the records before that one. A directory that
    cannot be made or claimed raises at the first write. A second sink of
    the same files in this process (another monitor with the same log_dir)
    takes them over: this one warns once and stops."""

    suffix = ""

    def __init__(self, log_dir: str):
        self.log_dir = log_dir
        self._files: Dict[str, object] = {}
        self._claimed = False
        self._stopped = False  # a write failed: the files end there
        # meta.json waits for the run's first record (or resume): until then the directory stays the earlier
        # run's, whole, also when this one is killed before writing anything
        self._begun = False
        self._meta: Optional[dict] = None

    def _claim(self) -> None:
        """One writing process per run directory (files.claim_dir), taken at
        the first write and freed at close(); in this process, the files go
        to the sink that claimed them last."""
        if not self._claimed:
            claim_dir(self.log_dir)
            self._claimed = True
            _writing[self._key()] = self

    def _key(self) -> Tuple[str, str]:
        return os.path.realpath(self.log_dir), self.suffix

    def _superseded(self) -> bool:
        """Another sink of this process took the files over: stop, once, with a warning."""
        if not self._stopped and self._claimed and _writing.get(self._key()) is not self:
            self._stop(f"{os.path.join(self.log_dir, '*' + self.suffix)} is written by a newer sink of this process "
                       "(another monitor with the same log_dir): this one stops, its later records are not written; "
                       "close a monitor before making another on its log_dir, or give each its own")
        return self._stopped

    def _stop(self, why: str) -> None:
        """No more writes from this sink, said once (stacklevel: the user's call that wrote)."""
        self._stopped = True
        self._close_files()
        warnings.warn(why, RuntimeWarning, stacklevel=5)

    def path(self, kind: str) -> str:
        self._claim()
        return os.path.join(self.log_dir, FILES[kind] + self.suffix)

    def write_meta(self, meta: dict) -> None:
        self._meta = meta
        if self._begun and not self._superseded():
            path = os.path.join(self.log_dir, META_FILE)
            self._claim()
            self._guarded(path, "it", self._write_meta, path, meta)

    def _begin(self) -> None:
        """The run's first record or resume: its meta.json now, before its records."""
        if not self._begun:
            self._begun = True
            if self._meta is not None:
                self.write_meta(self._meta)

    @staticmethod
    def _write_meta(path: str, meta: dict) -> None:
        with atomic_write(path) as f:
            json.dump(_finite(meta), f, indent=2, default=_json_default)

    def write(self, kind: str, record: dict) -> None:
        self._begin()
        if not self._superseded():
            path = self.path(kind)
            self._guarded(path, f"the {kind} record of step {record.get('step')}", self._write, kind, record)

    def _write(self, kind: str, record: dict) -> None:
        raise NotImplementedError

    def _guarded(self, path: str, what: str, write, *args) -> None:
        """``write(*args)``; when it fails, stop the sink with one warning."""
        try:
            write(*args)
        except OSError as exc:
            self._stop(f"{path}: cannot write {what} ({exc.strerror or exc}): this sink stops, the training goes on. "
                       "Its files keep the records before (a line the failed write cut is skipped when read); the "
                       "monitor keeps its last records in memory (monitor.history, .metrics)")

    def _close_files(self) -> None:
        for f in self._files.values():
            with contextlib.suppress(OSError):  # what a failed write left in the buffer cannot be written either
                f.close()
        self._files.clear()

    def flush(self) -> None:
        for f in self._files.values():
            f.flush()

    def close(self) -> None:
        self._close_files()
        if _writing.get(self._key()) is self:
            del _writing[self._key()]
        if self._claimed:
            release_dir(self.log_dir)
            self._claimed = False


class JSONLSink(_FileSink):
    """``spectral.jsonl`` and ``metrics.jsonl``: one JSON object a line."""

    suffix = ".jsonl"

    def __init__(self, log_dir: str):
        super().__init__(log_dir)
        self._started: set = set()

    def _file(self, kind: str):
        if kind not in self._files:
            os.makedirs(self.log_dir, exist_ok=True)
            if kind not in self._started:
                _replacing(self.path(kind))
            self._files[kind] = open(self.path(kind), "a" if kind in self._started else "w")
            self._started.add(kind)
        return self._files[kind]

    def _write(self, kind: str, record: dict) -> None:
        f = self._file(kind)
        f.write(dumps(record) + "\n")
        f.flush()  # the whole line to the OS now: a crash loses at most the record being written

    def resume(self, records: Dict[str, List[dict]], start: Optional[Dict[str, int]] = None) -> None:
        self.close()
        self._begin()
        self._started.clear()
        for kind, recs in records.items():
            path, wanted = self.path(kind), (start or {}).get(kind, 0)
            kept: List[str] = []
            if wanted and os.path.exists(path):
                with open(path) as f:
                    for line in f:
                        if len(kept) == wanted:
                            break
                        try:
                            whole = line.endswith("\n") and isinstance(json.loads(line), dict)
                        except ValueError:
                            whole = False
                        if whole:
                            kept.append(line)
            _check_kept(path, len(kept), wanted)
            with atomic_write(path) as f:
                f.writelines(kept)
                f.writelines(dumps(record) + "\n" for record in recs)
            self._started.add(kind)  # later records are appended


class CSVSink(_FileSink):
    """``spectral.csv`` and ``metrics.csv``: records flattened to columns
    (``sigmas/3``, ``groups/encoder.layers.0/R``...). A record with new
    columns (the window still filling, a new metric) rewrites the file with
    the grown header, atomically."""

    suffix = ".csv"

    def __init__(self, log_dir: str):
        super().__init__(log_dir)
        self._columns: Dict[str, List[str]] = {}

    def _write(self, kind: str, record: dict) -> None:
        row = self._row(kind, record)
        columns = self._columns.get(kind)
        known = set(columns or ())  # a set: a wide record (thousands of metrics) is no quadratic scan
        new = [c for c in row if c not in known]
        if columns is None or new:
            self._rewrite(kind, (columns or []) + new)
        elif kind not in self._files:  # closed earlier: carry on
            self._files[kind] = open(self.path(kind), "a", newline="", encoding="utf-8")
        f = self._files[kind]
        csv.DictWriter(f, self._columns[kind]).writerow(row)
        f.flush()  # the whole row to the OS now: a crash loses at most the record being written

    @staticmethod
    def _row(kind: str, record: dict) -> Dict[str, object]:
        row: Dict[str, object] = dict(scalars(kind, record))
        if kind == "analysis":
            row["events"] = event_labels(record)
        return row

    def _rewrite(self, kind: str, columns: List[str], rows: Optional[List[dict]] = None) -> None:
        """Replace the file, atomically, by one with ``columns`` as its header
        and ``rows`` (default: the rows written so far, none at the first
        write), then keep it open for appending."""
        path = self.path(kind)
        if kind in self._files:
            self._files.pop(kind).close()
        if rows is None:
            rows = []
            if kind not in self._columns:  # this sink's first record
                _replacing(path, header=1)
            else:
                with open(path, newline="", encoding="utf-8") as f:
                    rows = list(csv.DictReader(f))
        with atomic_write(path, newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(rows)
        self._files[kind], self._columns[kind] = open(path, "a", newline="", encoding="utf-8"), columns

    def resume(self, records: Dict[str, List[dict]], start: Optional[Dict[str, int]] = None) -> None:
        self.close()
        self._begin()
        self._columns.clear()
        for kind, recs in records.items():
            path, wanted = self.path(kind), (start or {}).get(kind, 0)
            header: List[str] = []
            kept: List[dict] = []
            if wanted and os.path.exists(path):
                with open(path, newline="", encoding="utf-8") as f:
                    reader = csv.DictReader(f)
                    header = list(reader.fieldnames or [])
                    kept = [row for _, row in zip(range(wanted), reader)]
            _check_kept(path, len(kept), wanted)
            rows = [self._row(kind, r) for r in recs]
            # the columns the kept and given records use, in the file's order (a dropped record's new
            # column goes), then the given records' new ones
            used = {c for row in kept for c, v in row.items() if v not in ("", None)} | {c for row in rows for c in row}
            columns = [c for c in header if c in used]
            known = set(columns)
            for row in rows:
                columns += [c for c in row if c not in known and not known.add(c)]
            self._rewrite(kind, columns, [{c: row.get(c, "") for c in columns} for row in kept] + rows)


class TensorBoardSink(Sink):
    """Scalars for TensorBoard (needs ``tensorboard``): the whole model's
    summary under ``spectral/...``, each group in section
    ``spectral_groups/<group>/...``, metrics under ``metrics/...``; a
    record's events as text (``spectral/events``, in the Text tab), and a
    Custom Scalars layout that draws each group quantity of every group on
    one chart.

    ``writer``: a ``SummaryWriter`` of your own (Lightning's
    ``TensorBoardLogger.experiment``, say) to write into, left open at
    ``close``; by default the sink opens one in ``<log_dir>/tensorboard``."""

    def __init__(self, log_dir: Optional[str] = None, writer=None):
        if writer is None:
            if log_dir is None:
                raise ValueError("TensorBoardSink needs a log_dir or a writer (a SummaryWriter)")
            from torch.utils.tensorboard import SummaryWriter  # ImportError without the tensorboard package

            writer = SummaryWriter(log_dir=os.path.join(log_dir, "tensorboard"))
            self._owns_writer = True
        else:
            self._owns_writer = False
        self._writer = writer
        self._layout_written = False

    def write(self, kind: str, record: dict) -> None:
        step = int(record["step"])
        for name, value in scalars(kind, record).items():
            if name == "step":
                continue
            if kind == "analysis" and name.startswith("groups/"):
                tag = "spectral_" + name
            else:
                tag = f"{FILES[kind]}/{name}"
            self._writer.add_scalar(tag, value, step)
        if kind == "analysis":
            if record.get("events"):
                self._writer.add_text("spectral/events", event_labels(record), step)
            if not self._layout_written:
                self._write_layout(record)

    def _write_layout(self, record: dict) -> None:
        layout = {"spectral edge": {name: ["Multiline", [f"spectral/{name}"]] for name in ("R", "k_star", "A")}}
        quantities = sorted({q for summary in (record.get("groups") or {}).values() for q in summary})
        if quantities:
            layout["spectral groups"] = {q: ["Multiline", [rf"spectral_groups/.*/{q}$"]] for q in quantities}
        self._writer.add_custom_scalars(layout)
        self._layout_written = True

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        if self._owns_writer:
            self._writer.close()
        else:
            self._writer.flush()


class WandbSink(Sink):
    """Logs to a Weights & Biases run (needs ``wandb``): ``run`` if given,
    else the run that exists when the first record comes (``wandb.run``: the
    one a Trainer's ``report_to="wandb"`` or Lightning's ``WandbLogger``
    started), else a run it starts with ``wandb.init(**init_kwargs)``
    (default project ``spectral-edge``, under ``log_dir``) and finishes at
    ``close``.

    It never sends ``step=``: the run's own step belongs to whoever logs
    beside it, and a step below it would be dropped. Each record carries its
    step as ``spectral/step`` (analyses) or ``metrics/step`` (metrics), which
    ``define_metric`` makes the x-axis of that record's keys. A run its owner
    finished takes no more records: one warning, and the other sinks go on."""

    def __init__(self, log_dir: Optional[str] = None, run=None, **init_kwargs):
        import wandb  # ImportError without the wandb package

        self._wandb = wandb
        self._run = run
        self._owns_run = False
        self._init_kwargs = {"project": "spectral-edge", **({"dir": log_dir} if log_dir else {}), **init_kwargs}
        self._meta: Optional[dict] = None
        self._defined: set = set()
        self._finished = False  # the run was finished by its owner: W&B gets no more records

    def _attach(self):
        # At the first record, not at construction: a framework starts its run when training begins,
        # after the monitor is built.
        if self._run is None:
            self._run = self._wandb.run
            if self._run is None:
                self._run = self._wandb.init(**self._init_kwargs)
                self._owns_run = True
        if self._meta is not None:
            self._run.config.update({"spectral_edge": self._meta}, allow_val_change=True)
            self._meta = None
        return self._run

    def write_meta(self, meta: dict) -> None:
        self._meta = meta
        if self._run is not None and not self._finished:
            self._attach()

    def write(self, kind: str, record: dict) -> None:
        if self._finished:
            return
        run = self._attach()
        prefix = FILES[kind]
        values = {f"{prefix}/{k}": v for k, v in scalars(kind, record).items()}
        step_key = f"{prefix}/step"
        try:
            for key in values.keys() - self._defined:
                # Each key by name: an exact definition wins over a framework's "*" glob on its own step.
                if key != step_key:
                    run.define_metric(key, step_metric=step_key, step_sync=True)
                self._defined.add(key)
            run.log(values)
        except self._wandb.errors.UsageError as exc:  # its owner finished the run (before monitor.close())
            self._finished = True
            warnings.warn(f"the wandb sink stops at step {record['step']}: {exc} The records still go to the "
                          "other sinks; close the monitor before finishing the run to keep them in W&B.",
                          RuntimeWarning, stacklevel=3)

    def close(self) -> None:
        if self._owns_run:
            self._run.finish()
            self._run, self._owns_run = None, False


SINKS = {"jsonl": JSONLSink, "csv": CSVSink, "tensorboard": TensorBoardSink, "wandb": WandbSink}
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def _sink_of(item) -> Optional[Sink]:
    """A ready sink, or one for a ``SummaryWriter`` or a W&B run; None for a name."""
    if isinstance(item, Sink):
        return item
    if callable(getattr(item, "add_scalar", None)) and callable(getattr(item, "add_text", None)):
        return TensorBoardSink(writer=item)
    if type(item).__module__.startswith("wandb"):
        return WandbSink(run=item)
    return None


def make_sinks(spec, log_dir: Optional[str]) -> List[Sink]:
    """Sinks from names (``"jsonl"``, ``"csv"``, ``"tensorboard"``, ``"wandb"``),
    ready :class:`Sink` objects, a TensorBoard ``SummaryWriter`` or a W&B run
    (written into, not closed), one or a sequence of them. An optional sink
    whose package is missing is left out with one warning, never an error."""
    if spec is None:
        return []
    if isinstance(spec, str) or _sink_of(spec) is not None:
        spec = [spec]
    out: List[Sink] = []
    for item in spec:
        sink = _sink_of(item)
        if sink is not None:
            out.append(sink)
            continue
        if item not in SINKS:
            raise ValueError(f"unknown sink {item!r}; choose from {', '.join(SINKS)} or pass a Sink object, "
                             "a SummaryWriter or a wandb run")
        try:
            out.append(SINKS[item](log_dir))
        except ImportError as exc:
            if item not in _PACKAGES:
                raise
            warnings.warn(
                f"the {item} sink is off: the '{_PACKAGES[item]}' package is not installed "
                f"(pip install {_PACKAGES[item]}); records still go to the other sinks ({exc})",
                RuntimeWarning,
                stacklevel=3,
            )
    return out


def read_jsonl(path: str, drop: Sequence[str] = ()) -> List[dict]:
    """Every record of a JSONL file (an absent file gives no records), without
    its fields named in ``drop``. A line that is not a JSON object (the last
    one, cut by a crash while it was written) is skipped with one warning
    naming the file and the line."""
    if not os.path.exists(path):
        return []
    records, broken = [], []
    with open(path, "rb") as f:  # bytes: a line cut inside a UTF-8 character is one bad line, not a bad file
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                broken.append(f"line {number} ({exc})")
                continue
            if isinstance(record, dict):
                for key in drop:
                    record.pop(key, None)
                records.append(record)
            else:
                broken.append(f"line {number} (a JSON {type(record).__name__}, not an object)")
    if broken:
        shown = "; ".join(broken[:3]) + (f"; and {len(broken) - 3} more" if len(broken) > 3 else "")
        warnings.warn(f"{path}: skipped {len(broken)} unreadable line(s), kept {len(records)} record(s): {shown}. "
                      "A crash while a record was written leaves its line cut.", RuntimeWarning, stacklevel=2)
    return records


def read_records(run_dir: str, detail: bool = True) -> Dict[str, object]:
    """``{"meta": dict, "analysis": [records], "metrics": [records]}`` of a run
    directory written by the JSONL sink. A broken ``meta.json`` is left out
    (``meta`` is empty) with a warning naming it.

    ``detail=False`` leaves out of each analysis record the detail that the
    report and the DataFrames do not use (``spectrum``, ``stability``,
    ``adiabatic``, ``flow``, ``overlaps``, ``decomposition``): most of a
    record, so a long run's records take several times less memory."""
    meta_path = os.path.join(run_dir, META_FILE)
    meta = {}
    if os.path.exists(meta_path):
        try:
            with open(meta_path, "rb") as f:
                meta = json.load(f)
            if not isinstance(meta, dict):
                raise ValueError(f"a JSON {type(meta).__name__}, not an object")
        except ValueError as exc:
            meta = {}
            warnings.warn(f"{meta_path} is unreadable ({exc}); going on without it (no run name, window or "
                          "milestones in the report)", RuntimeWarning, stacklevel=2)
    drop = {"analysis": () if detail else tuple(f for f in DETAIL_FIELDS if f != "events"), "metrics": ()}
    run: Dict[str, object] = {kind: read_jsonl(os.path.join(run_dir, FILES[kind] + ".jsonl"), drop[kind])
                              for kind in FILES}
    run["meta"] = meta
    return run


def default_log_dir() -> str:
    """A new directory ``runs/spectral-edge/<date-time>`` under the working
    directory, created here. It is created exclusively: a run that starts in
    the same second (another monitor, another process) gets
    ``<date-time>-1``, ``-2``... so no two runs share their files."""
    import time

    base = os.path.join("runs", "spectral-edge", time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(os.path.dirname(base), exist_ok=True)
    path, n = base, 0
    while True:
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            n += 1
            path = f"{base}-{n}"


__all__ = [
    "CSVSink",
    "JSONLSink",
    "Sink",
    "TensorBoardSink",
    "WandbSink",
    "flatten",
    "make_sinks",
    "scalars",
    "read_jsonl",
    "read_records",
]
