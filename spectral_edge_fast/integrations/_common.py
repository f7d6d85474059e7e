"""What the callbacks share: the summary they hand to their framework's
loggers, and the report they write when training ends."""
from __future__ import annotations

import warnings
from typing import Dict, Optional, Tuple

from ..report import render
from ..sinks import JSONLSink, scalars

PREFIX = "spectral/"  # the analysis scalars' names among the framework's metrics


def reported(record: dict) -> Dict[str, float]:
    """An analysis record's summary for a framework's loggers, under
    ``spectral/``: step, count, n, lr, k_star, R, gap, delta_c_fro, A and
    sigma_1 (``spectral/sigmas/1``). Per-group and per-index columns stay in
    the monitor's own files, which keep the whole record."""
    return {PREFIX + k: v for k, v in scalars("analysis", record).items() if "/" not in k or k == "sigmas/1"}


def check_report(report: bool, sinks) -> bool:
    """Whether the report can be written: it reads the jsonl sink's files,
    so ``report=True`` without that sink warns when the callback is made
    (it failed when training ended) and is off."""
    items = list(sinks) if isinstance(sinks, (list, tuple, set, frozenset)) else [sinks]
    if report and not any(item == "jsonl" or isinstance(item, JSONLSink) for item in items):
        warnings.warn(f"SpectralEdgeCallback: report=True needs the 'jsonl' sink, whose files the report reads, but "
                      f"sinks={sinks!r}: no report will be written; add 'jsonl' to sinks, or pass report=False",
                      RuntimeWarning, stacklevel=3)
        return False
    return report


def write_report(monitor) -> Tuple[Optional[str], str]:
    """The HTML report of a closed monitor's run: its path and the line that
    says where it is, or None and the line that says why there is none."""
    if not monitor.history:
        return None, (f"SpectralEdgeCallback: no report: training ended after {monitor.steps} steps, before the "
                      f"monitor's first analysis (analyze_every={monitor.analyze_every})")
    path = render(monitor.log_dir)
    return path, f"SpectralEdgeCallback: report written to {path}"
