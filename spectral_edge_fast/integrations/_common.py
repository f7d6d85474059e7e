"""What the callbacks hand to their framework's loggers."""
from __future__ import annotations

from typing import Dict

from ..sinks import scalars

PREFIX = "spectral/"  # the analysis scalars' names among the framework's metrics


def reported(record: dict) -> Dict[str, float]:
    """An analysis record's summary for a framework's loggers, under
    ``spectral/``: step, count, n, lr, k_star, R, gap, delta_c_fro, A and
    sigma_1 (``spectral/sigmas/1``). Per-group and per-index columns stay in
    the monitor's own files, which keep the whole record."""
    return {PREFIX + k: v for k, v in scalars("analysis", record).items() if "/" not in k or k == "sigmas/1"}
