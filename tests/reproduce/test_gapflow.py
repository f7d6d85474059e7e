"""`spectral-edge reproduce gapflow`: the verdicts from fits, and the quick
run end to end (grokking and the byte-level LM)."""
import json
import math
import os
import warnings

import pytest
import torch

from spectral_edge_fast import reproduce
from spectral_edge_fast.analysis import prediction_fit
from spectral_edge_fast.analysis.gapflow import TERMS
from spectral_edge_fast.reproduce import gapflow, training
from spectral_edge_fast.reproduce.common import VERDICTS


def test_verdicts_need_the_right_sign_and_scale():
    m = [1.0, -2.0, 3.0, -0.5, 2.5, 0.2]
    assert gapflow._verdict(prediction_fit(m, m).to_dict()) == "reproduced"
    # right direction but 10x too large: not a prediction of the gap's motion
    assert gapflow._verdict(prediction_fit([10 * x for x in m], m).to_dict()) == "not reproduced"
    assert gapflow._verdict(prediction_fit([2 * x + 1 for x in m], m).to_dict()) == "partly"
    assert gapflow._verdict(prediction_fit([-x for x in m], m).to_dict()) == "not reproduced"
    assert gapflow._verdict(prediction_fit([1.0], [1.0]).to_dict()) == "not testable here"


def test_quick_run(tmp_path):
    out = str(tmp_path / "gapflow")
    r = reproduce.run("gapflow", reproduce.Settings(mode="quick", out=out, progress=False))
    saved = json.load(open(os.path.join(out, "results.json")))
    assert saved["experiment"] == "gapflow" and {c["verdict"] for c in saved["claims"]} <= set(VERDICTS)
    names = [run["name"] for run in r["runs"]]
    assert names[0] == "grokking-seed0"
    # the LM runs the first seed alone; the config said only "seeds"
    assert [n for n in names if n.startswith("lm-")] == [f"lm-seed{s}" for s in r["config"]["lm_seeds"]] == ["lm-seed0"]
    for run in r["runs"]:
        assert os.path.isfile(os.path.join(out, run["name"], "report.html"))
        rows = run["intervals"]
        assert len(rows) >= 5
        for row in rows:
            assert math.isfinite(row["measured"])
            for prefix in ("", "plain_"):
                terms = sum(row[prefix + t] for t in TERMS)
                assert row[prefix + "predicted"] == pytest.approx(terms, rel=1e-9, abs=1e-15)
        measured = [row["measured"] for row in rows]
        assert run["fits"]["predicted"] == prediction_fit([row["predicted"] for row in rows], measured).to_dict()
    claims = [c["claim"] for c in r["claims"]]
    assert sum("Theorem 14.2" in c for c in claims) == 4 and sum("Corollary 11.5" in c for c in claims) == 2
    assert "grokking" in r["summary"] and "LM" in r["summary"]


def test_a_run_again_in_the_same_directory_replaces_it_quietly(tmp_path):
    # every rerun into the same --out warned four times that the records "of an earlier run" were replaced
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = torch.randn(32, 4), torch.randint(3, (32,))

    def loss(batch):
        return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])

    def step():
        opt.zero_grad()
        loss((x, y)).backward()
        opt.step()

    settings = reproduce.Settings(mode="quick", out=str(tmp_path), progress=False)
    kw = dict(model=model, optimizer=opt, train_step=step, probe_loss=loss, probe_batch=(x, y), weight_decay=0.01,
              grad_clip=None, steps=12, window=4, every=1, analyze_every=4, settings=settings)
    gapflow.track("toy", **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = gapflow.track("toy", **kw)
    steps = [r["step"] for r in training.read_records(str(tmp_path / "toy"))["analysis"]]
    assert steps == sorted(set(steps)) and len(again["intervals"]) >= 1
