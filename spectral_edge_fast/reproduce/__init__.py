"""``spectral-edge reproduce NAME``: the paper's experiments, one command each.

Each experiment is a module of this package with ``SUMMARY`` (one line for
``--list``), optionally ``MAX_SEEDS`` (the most seeds it runs; more are
refused), and ``run(settings: Settings) -> dict``, which trains what it
needs under ``settings.out`` and returns the results in the shape
:func:`~spectral_edge_fast.reproduce.common.write_results` checks and writes
(``results.json`` and ``results.md``; docs/reproduction.md describes them)."""
from __future__ import annotations

import importlib
import time
from typing import Dict

from .common import MODES, QUICK_NOTE, Settings, mark_unfinished, write_results

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


def check(name: str, settings: Settings) -> None:
    """Raise ValueError when experiment ``name`` cannot run ``settings`` as
    given (more seeds than it runs)."""
    most = getattr(experiment(name), "MAX_SEEDS", None)
    if most is not None and settings.seeds is not None and len(settings.seeds) > most:
        raise ValueError(f"seeds: {name} runs {'one seed' if most == 1 else f'at most {most} seeds'}, got "
                         f"{' '.join(map(str, settings.seeds))}; run it once per seed, each with its own --out")


def run(name: str, settings: Settings) -> dict:
    """Run experiment ``name`` and write its ``results.json`` and
    ``results.md`` under ``settings.out``; returns the results. Until then
    ``results.md`` says the run has not finished and ``results.json`` of an
    earlier run is removed."""
    module = experiment(name)
    check(name, settings)
    mark_unfinished(settings.out, settings.command(name))
    t0 = time.time()
    results = module.run(settings)
    results.setdefault("experiment", name)
    results.setdefault("mode", settings.mode)
    results.setdefault("command", settings.command(name))
    results["wall_s"] = round(time.time() - t0, 1)
    write_results(settings.out, results)
    return results


__all__ = ["EXPERIMENTS", "MODES", "QUICK_NOTE", "Settings", "available", "check", "experiment", "run", "write_results"]
