"""The reproduce command's shared parts: settings, the claims format, the
files it writes, and docs/reproduction.md generated from the committed runs."""
import json
import math
import os
import pathlib

import numpy as np
import pytest

from spectral_edge_fast import reproduce
from spectral_edge_fast.cli import main
from spectral_edge_fast.reproduce.common import (GENERATED, QUICK_NOTE, Settings, build_docs, claim, render_markdown,
                                                 table, write_results)

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
    assert main(["reproduce", "grokking", "--list"]) == 0  # a name beside --list was ignored without a word
    assert "grokking was not run" in capsys.readouterr().out


def test_docs_page_is_generated_from_the_committed_results():
    page = ROOT / "docs" / "reproduction.md"
    assert GENERATED in page.read_text(encoding="utf-8")
    assert build_docs(str(page), str(ROOT / "docs" / "reproduction")) == page.read_text(encoding="utf-8"), (
        "docs/reproduction.md is out of date: run `make reproduction-docs`")
    for path in sorted((ROOT / "docs" / "reproduction").glob("*.json")):
        data = json.loads(path.read_text())
        assert data["experiment"] == path.stem and data["mode"] == "default", path
        assert render_markdown(data, level=2) in page.read_text(encoding="utf-8")


@pytest.mark.parametrize("seeds, match", [([1, 1], "1 is given twice"), ([-1], "-1"), ([2 ** 32], "4294967296")])
def test_seeds_are_distinct_and_in_range(seeds, match, tmp_path, capsys):
    # a seed given twice trained (or read back) one run and counted it twice; one out of range reached
    # torch.manual_seed mid-run
    with pytest.raises(ValueError, match=match):
        Settings(seeds=seeds)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "grokking", "--quick", "--out", str(out), "--seeds", *map(str, seeds)])
    assert exc.value.code == 2 and "seeds" in capsys.readouterr().err and not out.exists()


def test_an_experiment_of_one_seed_refuses_more(tmp_path, capsys):
    # causal ran the first seed alone and its results named the command with both
    with pytest.raises(ValueError, match="causal runs one seed"):
        reproduce.check("causal", Settings(seeds=[1, 2]))
    reproduce.check("causal", Settings(seeds=[7]))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "causal", "--quick", "--out", str(out), "--seeds", "1", "2"])
    assert exc.value.code == 2 and "seeds: causal runs one seed" in capsys.readouterr().err and not out.exists()


class Interrupted:
    """An experiment stopped in the middle: it finds the earlier run's results withdrawn."""

    SUMMARY = "stopped"

    def __init__(self, out):
        self.out = out

    def run(self, settings):
        assert not (self.out / "results.json").exists()
        assert "not finished" in (self.out / "results.md").read_text()
        raise KeyboardInterrupt


def test_an_interrupted_run_leaves_no_results_that_look_complete(tmp_path, monkeypatch, capsys):
    # the earlier run's results.md stayed beside the new run's half-trained runs, as if this run had written it
    write_results(str(tmp_path), results())
    monkeypatch.setattr(reproduce, "experiment", lambda name: Interrupted(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        reproduce.run("toy", Settings(mode="quick", out=str(tmp_path)))
    assert not (tmp_path / "results.json").exists()
    md = (tmp_path / "results.md").read_text()
    assert "not finished" in md and "spectral-edge reproduce toy --quick" in md and "| claim |" not in md
    # the command: one line, not a traceback, and the exit status of an interrupt
    assert main(["reproduce", "grokking", "--quick", "--quiet", "--out", str(tmp_path)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted" in err[0] and str(tmp_path) in err[0]


def test_quick_verdicts_are_marked_as_a_smoke_run(tmp_path, monkeypatch, capsys):
    # a 200-step run printed "[not reproduced] All runs grok with weight decay" like a default run's verdict
    write_results(str(tmp_path), results(mode="quick", command="spectral-edge reproduce toy --quick"))
    assert QUICK_NOTE in (tmp_path / "results.md").read_text()
    write_results(str(tmp_path), results(mode="default"))
    assert QUICK_NOTE not in (tmp_path / "results.md").read_text()

    class Toy:
        SUMMARY = "toy"

        @staticmethod
        def run(settings):
            return results()

    monkeypatch.setattr(reproduce, "experiment", lambda name: Toy)
    assert main(["reproduce", "grokking", "--quick", "--quiet", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.index(QUICK_NOTE) < out.index("[partly] R rises")
    assert QUICK_NOTE in (tmp_path / "results.md").read_text()
    assert "report:" not in out  # this toy rendered none; a run that renders one names it

    class Rendering(Toy):
        @staticmethod
        def run(settings):
            open(os.path.join(settings.out, "report.html"), "w").close()
            return results()

    monkeypatch.setattr(reproduce, "experiment", lambda name: Rendering)
    assert main(["reproduce", "grokking", "--quick", "--quiet", "--out", str(tmp_path / "r")]) == 0
    assert f"report: {tmp_path / 'r' / 'report.html'}" in capsys.readouterr().out
