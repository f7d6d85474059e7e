"""The spectral-edge command: demo end to end, analyze, bench."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from spectral_edge_fast.cli import describe_events, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_demo_end_to_end_on_a_small_configuration(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--p", "11", "--steps", "120", "--eval-every", "20", "--window", "6", "--every", "2",
                 "--analyze-every", "4", "--out", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "weight decay 1:" in printed and "weight decay 0:" in printed
    assert "report: " + str(out / "report.html") in printed
    assert (out / "report.html").exists() and (out / "compare.png").exists()
    for run in ("wd1", "wd0"):
        for name in ("report.html", "gap.png", "sigmas.png", "groups.png", "training.png", "spectral.csv"):
            assert (out / run / name).exists(), (run, name)
        records = _jsonl(out / run / "spectral.jsonl")
        assert [r["step"] for r in records] == list(range(4, 121, 4))
        full = records[-1]
        assert len(full["sigmas"]) == 6 and full["R"] >= 1.0 and full["k_star"] >= 1 and full["A"] > 0
        assert set(full["groups"]) == {"tok_emb", "pos_emb", "encoder.layers.0", "encoder.layers.1", "ln", "head"}
        metrics = _jsonl(out / run / "metrics.jsonl")
        assert [m["step"] for m in metrics] == [20, 40, 60, 80, 100, 120]
        assert {"train_loss", "test_loss", "train_acc", "test_acc"} <= set(metrics[-1])
        meta = json.loads((out / run / "meta.json").read_text())
        assert "grokking" in meta["info"]["milestones"] and meta["window"] == 6 and meta["every"] == 2


def test_describe_events_against_grokking():
    events = [
        {"kind": "gap_collapse", "step": 1600, "value": 1.2},
        {"kind": "k_star_shift", "step": 2400, "value": 1, "previous": 3},
        {"kind": "gap_opening", "step": 2750, "value": 1.8},
        {"kind": "gap_collapse", "step": 500, "value": 1.1, "group": "head"},
    ]
    lines = describe_events(events, grok=2600)
    assert lines[0].strip() == "gap collapse at step  1600 (R = 1.2): 1000 steps before grokking"
    assert lines[1].strip() == "gap opening at step  2750 (R = 1.8): 150 steps after grokking"
    assert lines[2] == "k* shifts: 1 (the last before grokking: 3->1 at 2400)"
    assert describe_events([], None) == ["no gap collapse or opening"]


def _checkpoints(path, n=6):
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path.mkdir()
    for step in range(n):
        torch.save(model.state_dict(), path / f"model_{step * 100}.pt")
        model(torch.randn(8, 5)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    return path


def test_analyze_writes_records_and_report(tmp_path, capsys):
    ckpts = _checkpoints(tmp_path / "ckpts")
    assert main(["analyze", str(ckpts), "--window", "3", "--out", str(tmp_path / "out"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "5 analyses of 24 parameters" in printed
    assert (tmp_path / "out" / "report.html").exists()
    assert [r["step"] for r in _jsonl(tmp_path / "out" / "spectral.jsonl")] == [100, 200, 300, 400, 500]


def test_analyze_names_a_bad_file_and_can_skip_it(tmp_path, capsys):
    ckpts = _checkpoints(tmp_path / "ckpts")
    (ckpts / "model_300.pt").write_bytes(b"\x00" * 64)
    assert main(["analyze", str(ckpts), "--out", str(tmp_path / "a"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "model_300.pt: cannot be read" in err and "--on-error skip" in err
    assert main(["analyze", str(ckpts), "--out", str(tmp_path / "b"), "--on-error", "skip", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "skipping" in printed and "model_300.pt" in printed and "skipped 1 of 6" in printed
    assert main(["analyze", str(tmp_path / "nowhere"), "--quiet"]) == 1
    assert "not a directory" in capsys.readouterr().err


def test_module_entry_point():
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-m", "spectral_edge_fast.cli", "demo", "--help"], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and "--steps" in out.stdout and "--every" in out.stdout
    with pytest.raises(SystemExit):
        main(["frobnicate"])


# -- user mistakes: one error line, exit code 2 -----------------------------------------------------------------------


def _usage_error(capsys, argv):
    """Runs ``argv``; returns stderr, asserting argparse's exit code 2, an
    ``error:`` line and no traceback."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert "error:" in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("argv, says", [
    (["demo", "--steps", "-5"], "--steps: must be an integer >= 1"),
    (["demo", "--window", "1"], "--window: must be an integer >= 2"),
    (["demo", "--p", "2"], "--p: must be an integer >= 3"),
    (["demo", "--every", "0"], "--every: must be an integer >= 1"),
    (["analyze", "ckpts", "--every", "0"], "--every: must be an integer >= 1"),
    (["analyze", "ckpts", "--window", "1"], "--window: must be an integer >= 2"),
    (["analyze", "ckpts", "--lr", "-1"], "--lr: must be a positive number"),
    (["demo", "--device", "tpu"], "--device: 'tpu' is not a device"),
    (["demo", "--steps", "1.5"], "--steps: must be an integer >= 1"),
    (["bench", "--repeats", "0"], "--repeats: must be an integer >= 1"),
    (["bench", "--P", "-5"], "--P: must be an integer >= 1"),
    (["bench", "--W", "1"], "--W: must be an integer >= 2"),
])
def test_bad_values_are_one_error_line(capsys, argv, says):
    err = _usage_error(capsys, argv)
    assert says in err and "analyze_every" not in err


def test_cuda_without_cuda_is_a_usage_error(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = _usage_error(capsys, ["demo", "--device", "cuda"])
    assert "--device: CUDA is not available" in err


def test_misspelt_flags_are_reported_against_their_subcommand(capsys):
    err = _usage_error(capsys, ["demo", "--stpes", "10"])
    assert "usage: spectral-edge demo" in err and "unrecognized arguments: --stpes 10" in err
    err = _usage_error(capsys, ["bench", "--bogus"])
    assert "usage: spectral-edge bench" in err and "--bogus" in err


def test_version_and_help(capsys):
    import spectral_edge_fast

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"spectral-edge {spectral_edge_fast.__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "``" not in out and "Spectral-edge diagnostics" in out and "analyze" in out


def test_analyze_every_zero_names_the_flag(tmp_path, capsys):
    err = _usage_error(capsys, ["analyze", str(_checkpoints(tmp_path / "ckpts")), "--every", "0"])
    assert "--every" in err and "analyze_every" not in err


def test_analyze_output_errors_are_one_line(tmp_path, capsys):
    ckpts = _checkpoints(tmp_path / "ckpts")
    (tmp_path / "afile").write_text("")
    assert main(["analyze", str(ckpts), "--out", str(tmp_path / "afile" / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: cannot write the results to") and "afile" in err
    assert main(["analyze", str(ckpts), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert main(["analyze", str(ckpts), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["analyze", str(ckpts), "--out", str(tmp_path / "o"), "--overwrite", "--quiet"]) == 0


def test_demo_output_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    assert main(["demo", "--steps", "1", "--out", str(tmp_path / "afile" / "demo"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: cannot write the results to")


def test_analyze_patterns_from_the_command_line(tmp_path, capsys):
    ckpts = _checkpoints(tmp_path / "ckpts")
    assert main(["analyze", str(ckpts), "--window", "3", "--exclude", "bias", "--out", str(tmp_path / "o"),
                 "--quiet"]) == 0
    assert "5 analyses of 20 parameters" in capsys.readouterr().out


def test_analyze_takes_the_backend_and_the_storage_dtype(tmp_path, capsys):
    """--backend and --storage-dtype reach the window: the bf16 ring's Gram
    differs from the float32 one by bf16 rounding only, and the torch backend
    agrees with the default."""
    ckpts = _checkpoints(tmp_path / "ckpts")
    runs = {}
    for name, flags in (("auto", []), ("torch", ["--backend", "torch"]), ("bf16", ["--storage-dtype", "bfloat16"])):
        assert main(["analyze", str(ckpts), "--window", "3", "--out", str(tmp_path / name), "--quiet", *flags]) == 0
        runs[name] = [r["sigmas"] for r in _jsonl(tmp_path / name / "spectral.jsonl")]
    for a, b in zip(runs["auto"], runs["torch"]):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    for a, b in zip(runs["auto"], runs["bf16"]):
        np.testing.assert_allclose(a, b, rtol=2e-2)
    assert runs["auto"] != runs["bf16"]  # the ring really was bf16
    err = _usage_error(capsys, ["analyze", "ckpts", "--storage-dtype", "float16"])
    assert "--storage-dtype: invalid choice: 'float16'" in err
