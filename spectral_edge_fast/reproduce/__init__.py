"""``spectral-edge reproduce NAME``: the paper's experiments, one command each.

Each experiment is a module of this package with ``SUMMARY`` (one line for
``--list``) and ``run(settings: Settings) -> dict``, which trains what it
needs under ``settings.out`` and returns the results in the shape
:func:`~spectral_edge_fast.reproduce.common.write_results` checks and writes
(``results.json`` and ``results.md``; docs/reproduction.md describes them)."""
from __future__ import annotations

import importlib
import time
from typing import Dict

from .common import Settings, write_results

#: experiment name -> module of this package (imported only when asked for)
EXPERIMENTS: Dict[str, str] = {
    "grokking": "grokking",
    "multitask": "multitask",
    "optimizers": "optimizers",
    "dyck": "dyck",
    "scan": "scan",
    "lm": "lm",
    "causal": "causal",
    "gapflow": "gapflow",
}


def experiment(name: str):
    """The module of experiment ``name``.

    Raises:
        ValueError: no experiment has that name.
    """
    if name not in EXPERIMENTS:
        raise ValueError(f"no experiment {name!r}; `spectral-edge reproduce --list` names them: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(f"{__name__}.{EXPERIMENTS[name]}")


def available() -> Dict[str, str]:
    """Experiment name -> its one-line summary, for those this install has."""
    out = {}
    for name in EXPERIMENTS:
        try:
            out[name] = experiment(name).SUMMARY
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{EXPERIMENTS[name]}":
                raise
    return out


def run(name: str, settings: Settings) -> dict:
    """Run experiment ``name`` and write its ``results.json`` and
    ``results.md`` under ``settings.out``; returns the results."""
    module = experiment(name)
    t0 = time.time()
    results = module.run(settings)
    results.setdefault("experiment", name)
    results.setdefault("mode", settings.mode)
    results.setdefault("command", settings.command(name))
    results["wall_s"] = round(time.time() - t0, 1)
    write_results(settings.out, results)
    return results


__all__ = ["EXPERIMENTS", "Settings", "available", "experiment", "run", "write_results"]
