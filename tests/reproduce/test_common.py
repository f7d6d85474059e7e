"""The reproduce command's shared parts: settings, the claims format, the
files it writes, and docs/reproduction.md generated from the committed runs."""
import json
import math
import pathlib

import numpy as np
import pytest

from spectral_edge_fast import reproduce
from spectral_edge_fast.cli import main
from spectral_edge_fast.reproduce.common import (GENERATED, Settings, build_docs, claim, render_markdown, table,
                                                 write_results)

ROOT = pathlib.Path(__file__).resolve().parents[2]


def results(**extra):
    r = {"experiment": "toy", "config": {"seeds": (1, 2)}, "command": "spectral-edge reproduce toy",
         "claims": [claim("R rises", "1.5", "1.4", "partly", "one seed")],
         "tables": [table("runs", ["seed", "R"], [[1, np.float64(1.25)], [2, math.nan]])], "runs": [{"R": np.array([1.0])}]}
    r.update(extra)
    return r


def test_settings_validate_and_pick():
    s = Settings(mode="quick")
    assert s.pick(1, 2, 3) == 1 and s.seeds_or([0], [1, 2], [3]) == [0]
    assert Settings(seeds=[5]).seeds_or([0], [1], [2]) == [5]
    assert Settings(mode="full", seeds=[42, 137]).command("grokking") == "spectral-edge reproduce grokking --full --seeds 42 137"
    with pytest.raises(ValueError, match="mode"):
        Settings(mode="fast")
    with pytest.raises(ValueError, match="seed"):
        Settings(seeds=[])


def test_claim_and_table_refuse_malformed_rows():
    with pytest.raises(ValueError, match="verdict"):
        claim("x", "1", "2", "maybe")
    with pytest.raises(ValueError, match="3 cells for 2 columns"):
        table("t", ["a", "b"], [[1, 2, 3]])


def test_write_results_json_and_markdown(tmp_path):
    write_results(str(tmp_path), results())
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["claims"][0]["verdict"] == "partly"
    assert data["tables"][0]["rows"] == [[1, 1.25], [2, None]]  # NaN is not JSON: None
    assert data["runs"] == [{"R": [1.0]}] and data["config"]["seeds"] == [1, 2]
    md = (tmp_path / "results.md").read_text()
    assert "| R rises | 1.5 | 1.4 | **partly** | one seed |" in md and "| 2 | — |" in md


def test_write_results_names_what_is_missing(tmp_path):
    bad = results()
    del bad["claims"]
    with pytest.raises(ValueError, match="'claims'"):
        write_results(str(tmp_path), bad)
    bad = results(claims=[{"claim": "x", "paper": "1", "ours": "2", "verdict": "yes", "why": ""}])
    with pytest.raises(ValueError, match="verdict 'yes'"):
        write_results(str(tmp_path), bad)


def test_unknown_experiment_is_refused():
    with pytest.raises(ValueError, match="--list"):
        reproduce.experiment("nope")
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "nope"])
    assert exc.value.code == 2


def test_list_names_every_available_experiment(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for name, summary in reproduce.available().items():
        assert f"{name}" in out and summary in out


def test_docs_page_is_generated_from_the_committed_results():
    page = ROOT / "docs" / "reproduction.md"
    assert GENERATED in page.read_text(encoding="utf-8")
    assert build_docs(str(page), str(ROOT / "docs" / "reproduction")) == page.read_text(encoding="utf-8"), (
        "docs/reproduction.md is out of date: run `make reproduction-docs`")
    for path in sorted((ROOT / "docs" / "reproduction").glob("*.json")):
        data = json.loads(path.read_text())
        assert data["experiment"] == path.stem and data["mode"] == "default", path
        assert render_markdown(data, level=2) in page.read_text(encoding="utf-8")
