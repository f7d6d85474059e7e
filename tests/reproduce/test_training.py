"""reproduce.training: a run that is not finished with the asked settings is
trained again in its directory, replacing the earlier records quietly."""
import warnings

from spectral_edge_fast.reproduce import training
from spectral_edge_fast.reproduce.common import Settings
from spectral_edge_fast.workloads.grokking import GrokkingConfig


def test_a_run_trained_again_replaces_the_earlier_records_without_a_warning(tmp_path):
    # an interrupted sweep, run again, warned four times per run that the records "of an earlier run" were
    # replaced and advised a log_dir per run, though replacing them is what resuming means
    config = GrokkingConfig(task="add", p=11, weight_decay=1.0, seed=0, **training.QUICK_MODEL)
    run_dir, settings = str(tmp_path / "run"), Settings(mode="quick", out=str(tmp_path), progress=False)
    kw = dict(window=4, every=2, analyze_every=4, eval_every=10)
    training.train_monitored(config, 20, run_dir, progress=False, **kw)  # finished, but for 20 steps
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        records = training.run_or_reuse(config, 30, run_dir, settings, **kw)[run_dir]
    assert records["meta"]["info"]["steps"] == 30 and records["metrics"][-1]["step"] == 30
    steps = [r["step"] for r in records["analysis"]]
    assert steps == sorted(set(steps)) and steps[-1] == 28  # analyses every 4 steps
