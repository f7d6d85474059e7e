"""The monitor's records as pandas DataFrames (needs ``pandas``).

:func:`read_run` reads a run directory written by the JSONL sink,
:meth:`SpectralMonitor.to_pandas` takes the records in memory; both give a
:class:`RunFrames`:

* ``records``: one row per analysis, the summary columns of the CSV sink
  (``step``, ``k_star``, ``R``, ``sigmas/1``, ``alpha/1``, ``A``...) and
  ``events`` as text, without the per-group columns;
* ``groups``: the per-group summaries in long format, one row per analysis
  and group (``step``, ``group``, ``k_star``, ``R``, ``gap``, ``sigma_1``,
  ``share``, ``delta_c_fro``);
* ``metrics``: one row per :meth:`SpectralMonitor.log` call (``step`` and
  the metrics logged);
* ``events``: one row per event (``step``, ``kind``, ``group``,
  ``value``..., and ``reported_at``: the step of the record reporting it);
* ``meta``: the monitor's configuration and annotations (a dict).

Missing values are NaN (None in the files).
"""
from __future__ import annotations

from typing import Any, Dict, List, NamedTuple

from .sinks import DETAIL_FIELDS, event_labels, read_records, scalars


class RunFrames(NamedTuple):
    """A run's records as DataFrames (see the module's docstring)."""

    records: Any
    groups: Any
    metrics: Any
    events: Any
    meta: Dict[str, Any]


def _pandas():
    try:
        import pandas
    except ImportError as exc:
        raise ImportError("the records as DataFrames need pandas: pip install pandas "
                          "(or pip install 'spectral-edge-fast[pandas]'); without it, "
                          "spectral_edge_fast.sinks.read_records gives them as dicts") from exc
    return pandas


def frames(analysis: List[dict], metrics: List[dict], meta: Dict[str, Any]) -> RunFrames:
    """:class:`RunFrames` of analysis and metric records (the dicts the sinks receive)."""
    pd = _pandas()
    rows, groups, events = [], [], []
    for record in analysis:
        # a summary field that is None (A without a learning rate) stays a column, of NaN; the detail is in no frame
        row = {k: None for k, v in record.items() if v is None and k not in DETAIL_FIELDS}
        row.update((k, v) for k, v in scalars("analysis", record).items() if not k.startswith("groups/"))
        rows.append({**row, "events": event_labels(record)})
        step = record["step"]
        groups += [{"step": step, "group": name, **summary} for name, summary in (record.get("groups") or {}).items()]
        events += [{"reported_at": step, "group": None, **event} for event in record.get("events", ())]
    return RunFrames(
        records=pd.DataFrame(rows, columns=None if rows else ["step"]),
        groups=pd.DataFrame(groups, columns=None if groups else ["step", "group"]),
        metrics=pd.DataFrame(metrics, columns=None if metrics else ["step"]),
        events=pd.DataFrame(events, columns=None if events else ["step", "kind", "group", "reported_at"]),
        meta=dict(meta),
    )


def read_run(run_dir: str) -> RunFrames:
    """The records of a run directory (written by the ``jsonl`` sink) as
    :class:`RunFrames` DataFrames. Raises ImportError naming pandas when it
    is not installed; :func:`spectral_edge_fast.sinks.read_records` gives the
    same records as dicts without it."""
    _pandas()
    run = read_records(run_dir, detail=False)
    return frames(run["analysis"], run["metrics"], run["meta"])


__all__ = ["RunFrames", "frames", "read_run"]
