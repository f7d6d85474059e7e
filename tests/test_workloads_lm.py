"""The language-model workload: the stdlib corpus and its fixed split, the
causal GPT, and the seeded training loop."""
import math

import pytest
import torch

from spectral_edge_fast import GramWindow
from spectral_edge_fast.workloads.lm import GPT, VAL_EVERY, VOCAB, LMConfig, LMRun, stdlib_corpus


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: a second thread only waits for a busy core."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SMALL = dict(context=16, d_model=32, n_layers=2, n_heads=2, batch_size=8, eval_batches=2, warmup=5)


def toy_corpus(n=4000):
    text = (b"def f(x):\n    return x + 1\n" * (n // 27 + 1))[:n]
    t = torch.frombuffer(bytearray(text), dtype=torch.uint8)
    return t, t.clone()


def test_corpus_is_the_sorted_py_files_every_tenth_held_out(tmp_path):
    names = [f"m{i:02d}.py" for i in range(12)]
    for i, name in enumerate(reversed(names)):  # written out of order: the split follows the sorted names
        (tmp_path / name).write_bytes(f"# {name}\n".encode())
    (tmp_path / "notes.txt").write_bytes(b"not python\n")
    (tmp_path / "site-packages").mkdir()
    (tmp_path / "site-packages" / "a.py").write_bytes(b"# installed, not stdlib\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "b.py").write_bytes(b"# pkg/b.py\n")
    train, val = stdlib_corpus(str(tmp_path))
    order = sorted(names + ["pkg/b.py"])
    held = [n for i, n in enumerate(order) if i % VAL_EVERY == VAL_EVERY - 1]
    assert bytes(val.tolist()) == b"".join(f"# {n}\n\n".encode() for n in held)
    assert bytes(train.tolist()) == b"".join(f"# {n}\n\n".encode() for n in order if n not in held)
    assert train.dtype == torch.uint8


def test_corpus_without_sources_is_refused(tmp_path):
    with pytest.raises(RuntimeError, match="no .py files under"):
        stdlib_corpus(str(tmp_path))


def test_config_refuses_bad_sizes():
    with pytest.raises(ValueError, match="multiple of n_heads"):
        LMConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="context"):
        LMConfig(context=0)
    with pytest.raises(ValueError, match="warmup"):
        LMConfig(warmup=-1)
    with pytest.raises(ValueError, match="fewer than context"):
        LMRun(LMConfig(**SMALL), corpus=(torch.zeros(10, dtype=torch.uint8),) * 2)


def test_attention_is_causal():
    torch.manual_seed(0)
    model = GPT(context=12, d_model=32, n_layers=2, n_heads=4).double()
    x = torch.randint(VOCAB, (2, 12))
    y = x.clone()
    y[:, 7] = (y[:, 7] + 1) % VOCAB
    a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=1e-12)  # a later byte never reaches earlier positions
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_gpt2_config_has_gpt2_blocks():
    c = LMConfig.gpt2_124m()
    assert (c.context, c.d_model, c.n_layers, c.n_heads) == (1024, 768, 12, 12)
    with torch.device("meta"):
        model = GPT(c.context, c.d_model, c.n_layers, c.n_heads)
    d = c.d_model
    block = 12 * d * d + 13 * d  # qkv, proj, two MLP layers with biases, two LayerNorms
    want = c.n_layers * block + 2 * VOCAB * d + c.context * d + 2 * d + VOCAB
    assert sum(p.numel() for p in model.parameters()) == want
    assert 85e6 < want < 87e6


def test_monitor_groups_are_the_blocks():
    run = LMRun(LMConfig(**SMALL), corpus=toy_corpus())
    assert set(GramWindow(run.model).groups) == {"tok_emb", "pos_emb", "h.0", "h.1", "ln", "head"}


def test_initial_loss_is_uniform_and_training_learns():
    run = LMRun(LMConfig(**SMALL, lr=3e-3), corpus=toy_corpus())
    first = run.evaluate()
    assert abs(first["val_loss"] - math.log(VOCAB)) < 0.1  # near-uniform predictions at init
    for _ in range(60):
        run.train_step()
    assert run.evaluate()["val_loss"] < 0.5 * first["val_loss"]
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(3e-3)  # warm-up over


def test_warmup_is_linear():
    run = LMRun(LMConfig(**{**SMALL, "warmup": 4}), corpus=toy_corpus())
    assert [run.lr_at(s) for s in range(6)] == pytest.approx([c * 1e-3 for c in (0.25, 0.5, 0.75, 1, 1, 1)])


def test_evaluation_windows_are_fixed():
    run = LMRun(LMConfig(**SMALL), corpus=toy_corpus())
    assert run.evaluate() == run.evaluate()
    run.gradients("val")  # probing draws from its own stream
    assert all(p.grad is not None for p in run.model.parameters())


def test_resume_draws_the_same_batches():
    config = LMConfig(**SMALL, seed=3)
    straight = LMRun(config, corpus=toy_corpus())
    losses = [straight.train_step() for _ in range(6)]
    first = LMRun(config, corpus=toy_corpus())
    for _ in range(3):
        first.train_step()
    resumed = LMRun(config, corpus=toy_corpus())
    resumed.load_state_dict(first.state_dict())
    again = [resumed.train_step() for _ in range(3)]
    assert resumed.step == 6
    torch.testing.assert_close(torch.stack(again), torch.stack(losses[3:]), rtol=1e-5, atol=1e-6)
