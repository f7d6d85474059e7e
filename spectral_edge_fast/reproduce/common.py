"""What every experiment of ``spectral-edge reproduce`` shares: its settings,
the claims format, and the writing of ``results.json`` and ``results.md``.

``results.json``::

    {"experiment": NAME, "mode": "quick" | "default" | "full", "command": "...",
     "config": {...}, "wall_s": seconds,
     "claims": [{"claim", "paper", "ours", "verdict", "why"}, ...],
     "tables": [{"title", "columns": [...], "rows": [[...], ...]}, ...],   # optional
     "runs": [{...}, ...]}

``verdict`` is one of :data:`VERDICTS`. ``results.md`` is the same for
people: the claims table (the paper's figure beside ours), then the tables.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from ..files import atomic_write

#: each mode, for ``--help`` and the line a run starts with
MODES = {"quick": "a smoke run of a minute or two; its verdicts test nothing",
         "default": "about 30 minutes or less on a 2-core CPU",
         "full": "the paper's full sweep, its seeds and sizes (a GPU where the sizes need one)"}
VERDICTS = ("reproduced", "partly", "not reproduced", "not testable here")
#: above a quick run's claims, in results.md and on the terminal
QUICK_NOTE = ("A --quick smoke run: too short and too small for the paper's effects, so its verdicts only show that "
              "the experiment runs end to end; run it without --quick to test the claims.")
#: seeds reach torch.manual_seed with small offsets added
SEED_RANGE = range(2 ** 32)


@dataclass
class Settings:
    """How to run an experiment.

    Attributes:
        mode: ``"quick"`` (a smoke run of a minute or two, what the tests
            use), ``"default"`` (about 30 minutes or less on a 2-core CPU) or
            ``"full"`` (the paper's sweep; a GPU where needed).
        seeds: the seeds to run (distinct, in :data:`SEED_RANGE`); None for
            the mode's own.
        device: where to train (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        out: the output directory (created).
        progress: show progress bars.
    """

    mode: str = "default"
    seeds: Optional[List[int]] = None
    device: str = "cpu"
    out: str = os.path.join("runs", "reproduce")
    progress: bool = True
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.seeds is not None:
            self.seeds = [int(s) for s in self.seeds]
            if not self.seeds:
                raise ValueError("seeds: give at least one seed, or None for the mode's own")
            for i, s in enumerate(self.seeds):
                if s not in SEED_RANGE:
                    raise ValueError(f"seeds: each must be an integer from 0 to {SEED_RANGE.stop - 1}, got {s}")
                if s in self.seeds[:i]:
                    raise ValueError(f"seeds: {s} is given twice; a seed is one run, give it once")

    def pick(self, quick, default, full):
        """The value for this mode."""
        return {"quick": quick, "default": default, "full": full}[self.mode]

    def seeds_or(self, quick: Sequence[int], default: Sequence[int], full: Sequence[int]) -> List[int]:
        """The seeds asked for, else this mode's."""
        return list(self.seeds) if self.seeds is not None else list(self.pick(quick, default, full))

    def command(self, name: str) -> str:
        """The command line that runs this experiment with these settings."""
        words = ["spectral-edge", "reproduce", name]
        if self.mode != "default":
            words.append(f"--{self.mode}")
        if self.seeds is not None:
            words += ["--seeds", *map(str, self.seeds)]
        if self.device != "cpu":
            words += ["--device", self.device]
        return " ".join(words)


def claim(claim: str, paper: str, ours: str, verdict: str, why: str = "") -> Dict[str, str]:
    """One row of the claims table.

    Raises:
        ValueError: ``verdict`` is not one of :data:`VERDICTS`.
    """
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {', '.join(map(repr, VERDICTS))}, got {verdict!r}")
    return {"claim": claim, "paper": paper, "ours": ours, "verdict": verdict, "why": why}


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Dict[str, Any]:
    """A table for ``results.md`` (and the docs).

    Raises:
        ValueError: a row's length differs from the columns'.
    """
    rows = [list(r) for r in rows]
    for r in rows:
        if len(r) != len(columns):
            raise ValueError(f"table {title!r}: a row has {len(r)} cells for {len(columns)} columns: {r}")
    return {"title": title, "columns": list(columns), "rows": rows}


def check_results(results: Dict[str, Any]) -> None:
    """Raise ValueError naming what is missing or malformed in ``results``."""
    for key in ("experiment", "config", "claims", "runs"):
        if key not in results:
            raise ValueError(f"results of {results.get('experiment', '?')!r} lack {key!r}")
    for c in results["claims"]:
        missing = {"claim", "paper", "ours", "verdict", "why"} - set(c)
        if missing:
            raise ValueError(f"claim {c.get('claim', c)!r} lacks {sorted(missing)}")
        if c["verdict"] not in VERDICTS:
            raise ValueError(f"claim {c['claim']!r}: verdict {c['verdict']!r} is not one of {VERDICTS}")
    for t in results.get("tables", []):
        table(t["title"], t["columns"], t["rows"])


def fmt(value: Any) -> str:
    """A cell: numbers to 3 significant figures, None as an em dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> List[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return lines


def render_markdown(results: Dict[str, Any], level: int = 1) -> str:
    """``results.md``: the command, the claims (paper beside ours), the tables."""
    h = "#" * level
    lines = [f"{h} {results['experiment']}", ""]
    if results.get("summary"):
        lines += [results["summary"], ""]
    wall = results.get("wall_s")
    lines += [f"`{results.get('command', 'spectral-edge reproduce ' + results['experiment'])}`"
              + (f" ({wall / 60:.1f} min)" if wall else ""), ""]
    if results.get("mode") == "quick":
        lines += [f"**{QUICK_NOTE}**", ""]
    lines += [f"{h}# Claims", ""]
    lines += markdown_table(["claim", "paper", "ours", "verdict", "why"],
                            [[c["claim"], c["paper"], c["ours"], f"**{c['verdict']}**", c["why"]]
                             for c in results["claims"]])
    for t in results.get("tables", []):
        lines += ["", f"{h}# {t['title']}", ""] + markdown_table(t["columns"], t["rows"])
    return "\n".join(lines) + "\n"


def write_results(out: str, results: Dict[str, Any]) -> None:
    """Check ``results`` and write ``out/results.json`` and ``out/results.md``
    (each replaced whole)."""
    results = _clean(results)
    check_results(results)
    with atomic_write(os.path.join(out, "results.json")) as f:
        json.dump(results, f, indent=1, allow_nan=False)
        f.write("\n")
    with atomic_write(os.path.join(out, "results.md")) as f:
        f.write(render_markdown(results))


def mark_unfinished(out: str, command: str) -> None:
    """Withdraw an earlier run's ``out/results.json`` and put a ``results.md``
    saying that ``command`` has not finished in its place, so that a run
    stopped by any means (Ctrl-C, SIGTERM, a crash) leaves no results that
    look complete; :func:`write_results` replaces it."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(out, "results.json"))
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    with atomic_write(os.path.join(out, "results.md")) as f:
        f.write(f"# not finished\n\n`{command}` started at {started} and has not finished: it is still running or "
                "was stopped. Its results replace this file when it finishes.\n")


def _clean(value):
    """JSON-ready: numpy scalars and arrays to Python, tuples to lists, NaN and
    infinities to None (JSON has neither)."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def build_docs(page: str, json_dir: str) -> str:
    """The text of docs/reproduction.md: its hand-written part up to
    :data:`GENERATED`, then each committed ``<experiment>.json`` of
    ``json_dir`` rendered, in the order of the experiments' registry."""
    from . import EXPERIMENTS

    with open(page, encoding="utf-8") as f:
        head = f.read().split(GENERATED)[0]
    parts = [head.rstrip("\n") + "\n\n" + GENERATED + "\n"]
    for name in EXPERIMENTS:
        path = os.path.join(json_dir, f"{name}.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                parts.append("\n" + render_markdown(json.load(f), level=2))
    return "".join(parts)


#: the line of docs/reproduction.md after which the tables are generated
GENERATED = "<!-- generated from docs/reproduction/*.json by `make reproduction-docs`: edit above this line -->"
