"""The Hugging Face Trainer callback, on a tiny model (needs transformers)."""
import json
import os

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers (pip install transformers) is not installed")

from helpers import TinyRegressor as Tiny  # noqa: E402
from spectral_edge_fast.integrations.huggingface import SpectralEdgeCallback  # noqa: E402


class Data(torch.utils.data.Dataset):
    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 4, generator=gen)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.x[i].sum(0, keepdim=True)}


def _trainer(tmp_path, cb, max_steps):
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=max_steps, per_device_train_batch_size=8,
                                          learning_rate=1e-2, logging_steps=4, save_steps=8, report_to=[],
                                          use_cpu=True, disable_tqdm=True)
    return transformers.Trainer(model=Tiny(), args=args, train_dataset=Data(), callbacks=[cb])


def test_callback_steps_with_the_trainer_and_resumes(tmp_path, capsys):
    cb = SpectralEdgeCallback(window=4, analyze_every=4, log_dir=str(tmp_path / "se"))
    _trainer(tmp_path, cb, 16).train()
    assert [r["step"] for r in cb.monitor.history] == [4, 8, 12, 16]
    assert cb.monitor.history[-1]["lr"] is not None
    assert (tmp_path / "checkpoint-8" / "spectral_monitor_rank0.pt").exists()
    assert cb.report_path == str(tmp_path / "se" / "report.html") and os.path.exists(cb.report_path)
    assert f"report written to {cb.report_path}" in capsys.readouterr().out
    assert any("loss" in m for m in cb.monitor.metrics)

    # the small state by default: the window refills over W + 1 = 5 steps, so step 12 is not analysed
    saved = torch.load(tmp_path / "checkpoint-8" / "spectral_monitor_rank0.pt")
    assert saved["window"] is None and saved["steps"] == 8
    resumed = SpectralEdgeCallback(window=4, analyze_every=4, log_dir=str(tmp_path / "se2"))
    _trainer(tmp_path, resumed, 16).train(resume_from_checkpoint=str(tmp_path / "checkpoint-8"))
    assert [r["step"] for r in resumed.monitor.history] == [4, 8, 16]
    np.testing.assert_allclose(resumed.monitor.history[-1]["sigmas"], cb.monitor.history[-1]["sigmas"], rtol=1e-6)


def test_exact_resume_saves_the_window(tmp_path):
    cb = SpectralEdgeCallback(window=4, analyze_every=4, log_dir=str(tmp_path / "se"), exact_resume=True)
    _trainer(tmp_path, cb, 16).train()
    assert torch.load(tmp_path / "checkpoint-8" / "spectral_monitor_rank0.pt")["window"] is not None
    resumed = SpectralEdgeCallback(window=4, analyze_every=4, log_dir=str(tmp_path / "se2"), exact_resume=True)
    _trainer(tmp_path, resumed, 16).train(resume_from_checkpoint=str(tmp_path / "checkpoint-8"))
    assert [r["step"] for r in resumed.monitor.history] == [4, 8, 12, 16]


def test_records_carry_the_learning_rate_their_step_used(tmp_path):
    """Linear decay to zero over 16 steps: step t used lr0 * (16 - t + 1) / 16
    (the scheduler steps after the optimizer); the last step's is not 0."""
    cb = SpectralEdgeCallback(window=4, analyze_every=4, log_dir=str(tmp_path / "se"))
    _trainer(tmp_path, cb, 16).train()
    steps = [r["step"] for r in cb.monitor.history]
    assert steps == [4, 8, 12, 16]
    assert [r["lr"] for r in cb.monitor.history] == pytest.approx([1e-2 * (17 - t) / 16 for t in steps], rel=1e-6)
    assert cb.monitor.history[-1]["A"] is not None


def test_resume_from_another_output_dir_restores_the_monitor(tmp_path):
    first = SpectralEdgeCallback(window=4, analyze_every=4, log_dir=str(tmp_path / "se"))
    _trainer(tmp_path / "a", first, 16).train()
    resumed = SpectralEdgeCallback(window=4, analyze_every=4, log_dir=str(tmp_path / "se2"))
    _trainer(tmp_path / "b", resumed, 16).train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-8"))
    assert resumed.monitor.steps == 16
    assert [r["step"] for r in resumed.monitor.history] == [4, 8, 16]


def test_resume_from_a_checkpoint_without_monitor_state_warns(tmp_path):
    _trainer(tmp_path, SpectralEdgeCallback(window=4, analyze_every=4, log_dir=str(tmp_path / "se")), 8).train()
    (tmp_path / "checkpoint-8" / "spectral_monitor_rank0.pt").unlink()
    resumed = SpectralEdgeCallback(window=4, analyze_every=4, log_dir=str(tmp_path / "se2"))
    with pytest.warns(RuntimeWarning, match="checkpoint-8.*spectral_monitor_rank0.pt does not exist"):
        _trainer(tmp_path, resumed, 16).train(resume_from_checkpoint=str(tmp_path / "checkpoint-8"))


def test_a_monitor_started_afresh_on_resume_analyses_on_the_global_steps(tmp_path):
    """Resumed at step 10 without monitor state: its count goes on from the
    global step, so analyses stay at multiples of analyze_every (they came at
    14 and 18, four and eight steps after the resume)."""
    args = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, learning_rate=1e-2, save_steps=10,
                report_to=[], use_cpu=True, disable_tqdm=True)
    transformers.Trainer(model=Tiny(), args=transformers.TrainingArguments(max_steps=10, **args),
                         train_dataset=Data()).train()
    resumed = SpectralEdgeCallback(window=2, analyze_every=4, log_dir=str(tmp_path / "se"), report=False)
    trainer = transformers.Trainer(model=Tiny(), args=transformers.TrainingArguments(max_steps=20, **args),
                                   train_dataset=Data(), callbacks=[resumed])
    with pytest.warns(RuntimeWarning, match="resuming at step 10.*steps count on from the global step"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-10"))
    assert resumed.monitor.steps == trainer.state.global_step == 20
    assert [r["step"] for r in resumed.monitor.history] == [12, 16, 20]


def test_spectral_scalars_reach_the_trainers_loggers(tmp_path, monkeypatch):
    """Each finished analysis goes through Trainer.log: into the Trainer's log
    history and the Trainer's TensorBoard run (report_to), at the global
    step; the monitor's metrics keep only the Trainer's own logs."""
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    cb = SpectralEdgeCallback(window=4, analyze_every=4, log_dir=str(tmp_path / "se"))
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=16, per_device_train_batch_size=8,
                                          learning_rate=1e-2, logging_steps=4, save_strategy="no", use_cpu=True,
                                          report_to=["tensorboard"], run_name="tiny-run", disable_tqdm=True)
    trainer = transformers.Trainer(model=Tiny(), args=args, train_dataset=Data(), callbacks=[cb])
    trainer.train()
    logged = [h for h in trainer.state.log_history if "spectral/R" in h]
    assert [h["spectral/step"] for h in logged] == [4, 8, 12, 16]
    assert [h["spectral/k_star"] for h in logged] == [r["k_star"] for r in cb.monitor.history]
    assert not any(k.startswith("spectral/") for m in cb.monitor.metrics for k in m)
    assert json.loads((tmp_path / "se" / "meta.json").read_text())["info"]["run_name"] == "tiny-run"
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    tags = events.Tags()["scalars"]
    assert "train/spectral/R" in tags and "train/loss" in tags  # the Trainer prefixes training logs
    assert [e.step for e in events.Scalars("train/spectral/step")] == [5, 9, 13, 16]  # reported once finished


def test_saving_the_monitor_state_is_crash_safe(tmp_path, monkeypatch):
    """A save that fails half-way leaves the checkpoint's previous state file whole."""
    cb = SpectralEdgeCallback(window=4, analyze_every=4, log_dir=str(tmp_path / "se"), report=False)
    trainer = _trainer(tmp_path, cb, 16)
    trainer.train()
    path = tmp_path / "checkpoint-16" / "spectral_monitor_rank0.pt"
    assert torch.load(path)["steps"] == 16

    def broken_save(obj, f):
        f = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
        f.write(b"partial")
        f.flush()
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        cb.on_save(trainer.args, trainer.state, trainer.control)
    monkeypatch.undo()
    assert torch.load(path)["steps"] == 16
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_outside_a_trainer_the_callback_says_what_it_cannot_do(tmp_path):
    cb = SpectralEdgeCallback(window=4, analyze_every=4, log_dir=str(tmp_path / "se"), report=False)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    with pytest.warns(RuntimeWarning, match="no Trainer.train.. call found.*not to report_to"):
        cb.on_train_begin(args, transformers.TrainerState(), transformers.TrainerControl(), model=Tiny())
    cb.on_train_end(args, transformers.TrainerState(), transformers.TrainerControl())


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    cb = SpectralEdgeCallback(window=2, analyze_every=4, log_dir=str(tmp_path / "se"), report=False)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=8, per_device_train_batch_size=4,
                                          gradient_accumulation_steps=2, learning_rate=1e-2, save_strategy="no",
                                          report_to=[], use_cpu=True, disable_tqdm=True)
    trainer = transformers.Trainer(model=Tiny(), args=args, train_dataset=Data(), callbacks=[cb])
    trainer.train()
    assert cb.monitor.steps == trainer.state.global_step == 8
    assert [r["step"] for r in cb.monitor.history] == [4, 8]


def test_probes_read_gpt2s_transposed_c_attn(tmp_path):
    """probes='attention' on a GPT-2 (Conv1D c_attn, y = x W): W_Q and W_K are
    the transposes of c_attn's first two column blocks, per head from the
    attention module's num_heads."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from spectral_edge_fast import SpectralMonitor

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=2, n_head=4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = SpectralMonitor(model, opt, window=3, analyze_every=4, probes="attention", log_dir=str(tmp_path))
    ids = torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(0))
    for _ in range(4):
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    mon.close()
    record = mon.history[-1]
    assert set(record["attention"]) == {"transformer.h.0.attn", "transformer.h.1.attn"}
    w = model.transformer.h[1].attn.c_attn.weight.detach().double().numpy()
    q, k = w[:, :16].T, w[:, 16:32].T
    lam = np.linalg.eig(q.T @ k)[0]
    moduli = np.sort(np.abs(lam[lam.imag >= 0]))[::-1]
    att = record["attention"]["transformer.h.1.attn"]
    np.testing.assert_allclose(att["lambda_abs"], moduli[:8], rtol=1e-8)
    assert len(att["heads"]) == 4
    s = np.linalg.svd(q, compute_uv=False)
    np.testing.assert_allclose(record["probes"]["transformer.h.1.attn.c_attn.weight:q"]["sigma"], s[:8], rtol=1e-10)


def test_an_early_stop_still_reports_its_last_analysis(tmp_path):
    """EarlyStoppingCallback stops the run at an evaluation, after the step's
    on_step_end: the analysis of that last step still goes through
    Trainer.log, like every other one."""
    cb = SpectralEdgeCallback(window=2, analyze_every=5, log_dir=str(tmp_path / "se"), report=False)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=40, per_device_train_batch_size=8,
                                          learning_rate=1e-2, eval_strategy="steps", eval_steps=5, logging_steps=5,
                                          save_strategy="no", metric_for_best_model="loss", report_to=[],
                                          use_cpu=True, disable_tqdm=True)
    # a threshold no improvement reaches: the run stops at its second evaluation
    stop = transformers.EarlyStoppingCallback(early_stopping_patience=1, early_stopping_threshold=1e9)
    trainer = transformers.Trainer(model=Tiny(), args=args, train_dataset=Data(), eval_dataset=Data(),
                                   callbacks=[cb, stop])
    trainer.train()
    assert trainer.state.global_step == 10
    assert [r["step"] for r in cb.monitor.history] == [5, 10]
    assert [h["spectral/step"] for h in trainer.state.log_history if "spectral/step" in h] == [5, 10]


def test_a_monitor_state_saved_under_other_settings_is_refused_naming_its_file(tmp_path):
    _trainer(tmp_path, SpectralEdgeCallback(window=4, analyze_every=4, log_dir=str(tmp_path / "se")), 8).train()
    resumed = SpectralEdgeCallback(window=4, analyze_every=5, log_dir=str(tmp_path / "se2"))
    with pytest.raises(ValueError, match=r"checkpoint-8.spectral_monitor_rank0.pt: the checkpoint analysed every 4 "
                                         r"steps, this monitor every 5.*or delete .*checkpoint-8.spectral_monitor"):
        _trainer(tmp_path, resumed, 16).train(resume_from_checkpoint=True)


def test_a_report_without_the_jsonl_sink_warns_when_the_callback_is_made(tmp_path):
    """The report reads spectral.jsonl: report=True without that sink crashed
    at the end of training (FileNotFoundError from the report)."""
    with pytest.warns(RuntimeWarning, match=r"report=True needs the 'jsonl' sink.*sinks=\('csv',\): no report"):
        cb = SpectralEdgeCallback(window=4, analyze_every=4, log_dir=str(tmp_path / "se"), sinks=("csv",))
    _trainer(tmp_path, cb, 8).train()
    assert (tmp_path / "se" / "spectral.csv").exists() and cb.report_path is None


def test_a_run_shorter_than_its_first_analysis_says_why_it_has_no_report(tmp_path, capsys):
    cb = SpectralEdgeCallback(window=4, analyze_every=10, log_dir=str(tmp_path / "se"))
    _trainer(tmp_path, cb, 8).train()
    assert cb.report_path is None and not (tmp_path / "se" / "report.html").exists()
    assert ("no report: training ended after 8 steps, before the monitor's first analysis (analyze_every=10)"
            in capsys.readouterr().out)


def test_bf16_accumulated_steps_of_a_llama_match_its_saved_weights(tmp_path):
    """A tiny Llama under bf16 autocast, two micro-batches a step, saved each
    step as safetensors (fp32 weights): the window at step 6 holds the
    updates of steps 5 and 6, whose singular values a float64 computation
    from the saved weights gives."""
    from safetensors.torch import load_file

    from helpers import EPS32

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    tokens = torch.randint(0, 64, (64, 16), generator=torch.Generator().manual_seed(0))
    cb = SpectralEdgeCallback(window=2, analyze_every=2, groups=None, log_dir=str(tmp_path / "se"), report=False)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4,
                                          gradient_accumulation_steps=2, bf16=True, learning_rate=1e-3, save_steps=1,
                                          report_to=[], use_cpu=True, disable_tqdm=True)
    trainer = transformers.Trainer(model=transformers.LlamaForCausalLM(config), args=args,
                                   train_dataset=[{"input_ids": t, "labels": t} for t in tokens], callbacks=[cb])
    trainer.train()
    assert cb.monitor.steps == trainer.state.global_step == 6
    weights = [load_file(str(tmp_path / f"checkpoint-{s}" / "model.safetensors")) for s in (4, 5, 6)]
    assert all(w.dtype == torch.float32 for w in weights[0].values())
    names = sorted(weights[0])
    X = torch.stack([torch.cat([(b[n].double() - a[n].double()).flatten() for n in names])
                     for a, b in zip(weights, weights[1:])])
    ref = torch.linalg.svdvals(X).numpy()
    record = cb.monitor.history[-1]
    assert record["step"] == 6 and record["n"] == 2
    np.testing.assert_allclose(record["sigmas"][:2], ref, rtol=0, atol=8 * EPS32 * X.shape[1] ** 0.5 * ref[0])


def test_a_skipped_step_keeps_the_analyses_on_the_global_steps(tmp_path):
    """A step the gradient scaler skipped (step_was_skipped) is not an update,
    but the global step counts it: the analyses stay at multiples of
    analyze_every (one came at step 5, labelled so, after a skip at step 3)."""
    import types

    model = Tiny()
    cb = SpectralEdgeCallback(window=2, analyze_every=4, groups=None, log_dir=str(tmp_path / "se"), report=False)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    state, control = transformers.TrainerState(), transformers.TrainerControl()
    with pytest.warns(RuntimeWarning, match="no Trainer.train"):  # driven by hand here
        cb.on_train_begin(args, state, control, model=model)
    gen = torch.Generator().manual_seed(0)
    for step in range(1, 9):
        skipped = step == 3
        if not skipped:
            with torch.no_grad():
                model.net.weight.add_(torch.randn(model.net.weight.shape, generator=gen))
        optimizer = types.SimpleNamespace(param_groups=[{"lr": 0.1}], step_was_skipped=skipped)
        cb.on_optimizer_step(args, state, control, optimizer=optimizer)
        state.global_step = step
    cb.on_train_end(args, state, control)
    assert cb.monitor.steps == 8
    assert [r["step"] for r in cb.monitor.history] == [4, 8]
