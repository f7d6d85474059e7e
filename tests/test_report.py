"""The report: PNG plots and a self-contained report.html."""
import base64
import re

import pytest
import torch

from spectral_edge_fast.monitor import SpectralMonitor
from spectral_edge_fast.report import render, run_summary
from spectral_edge_fast.sinks import read_run

PNG = b"\x89PNG\r\n\x1a\n"


def _write_run(log_dir, seed=0, steps=60):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    mon = SpectralMonitor(model, opt, window=6, analyze_every=3, log_dir=str(log_dir))
    mon.annotate(name=f"toy {seed}", milestones={"grokking": 30, "never": None})
    x, y = torch.randn(64, 8), torch.randint(0, 4, (64,))
    for step in range(1, steps + 1):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0:
            acc = (model(x).argmax(-1) == y).float().mean()
            mon.log({"train_loss": loss, "train_acc": acc, "test_acc": acc / 2}, step=step)
    mon.close()
    return mon


def test_render_writes_the_plots_and_a_self_contained_html(tmp_path):
    _write_run(tmp_path)
    path = render(str(tmp_path))
    assert path == str(tmp_path / "report.html")
    for name in ("gap.png", "sigmas.png", "groups.png", "training.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, name
    html = (tmp_path / "report.html").read_text()
    assert "toy 0" in html and "grokking" in html
    assert not re.search(r'src="(?!data:)', html)  # nothing loaded from elsewhere
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 4 and all(base64.b64decode(i).startswith(PNG) for i in images)


def test_summary_holds_the_expected_series(tmp_path):
    mon = _write_run(tmp_path)
    run = read_run(str(tmp_path))
    assert len(run["analysis"]) == 20 and [m["step"] for m in run["metrics"]] == [10, 20, 30, 40, 50, 60]
    s = run_summary(run)
    assert s["analyses"] == 20 and s["window W"] == 6 and s["grokking"] == 30 and "never" not in s
    assert s["median R"] == pytest.approx(mon.summary()["R_median"])


def test_a_directory_of_runs_gets_a_comparison(tmp_path):
    for seed in (0, 1):
        _write_run(tmp_path / f"run{seed}", seed=seed, steps=30)
    path = render(str(tmp_path))
    assert (tmp_path / "compare.png").read_bytes().startswith(PNG)
    for seed in (0, 1):
        assert (tmp_path / f"run{seed}" / "report.html").exists()
    html = open(path).read()
    assert "Run run0" in html and "Run run1" in html
    assert len(re.findall(r"data:image/png;base64", html)) == 1 + 2 * 4


def test_no_run_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run in"):
        render(str(tmp_path))
