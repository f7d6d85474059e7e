"""The grokking workload: data, model and training loop as in docs/math.md#the-reference-experiment."""
import pytest
import torch

from spectral_edge_fast.workloads.grokking import (
    TASKS,
    GrokkingConfig,
    GrokkingRun,
    ModularTransformer,
    grok_step,
    make_dataset,
)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_dataset_is_the_full_table_split_in_half(task):
    p = 13
    tx, ty, vx, vy = make_dataset(task, p, 0.5, seed=3)
    nonzero = TASKS[task][2]
    n = (p - 1) ** 2 if nonzero else p * p
    assert len(tx) == n // 2 and len(tx) + len(vx) == n
    pairs = {tuple(x) for x in torch.cat([tx, vx]).tolist()}
    assert len(pairs) == n  # every pair once: train and test are disjoint
    if nonzero:
        assert (torch.cat([tx, vx]) > 0).all()
    op = TASKS[task][0]
    for x, y in ((tx, ty), (vx, vy)):
        a, b = x[:, 0].tolist(), x[:, 1].tolist()
        want = [int(op(torch.tensor(u), torch.tensor(v), p)) for u, v in zip(a, b)]
        assert y.tolist() == want
    again = make_dataset(task, p, 0.5, seed=3)
    assert torch.equal(again[0], tx)
    assert not torch.equal(make_dataset(task, p, 0.5, seed=4)[0], tx)


def test_expected_values_of_each_operation():
    x, y = torch.tensor([5]), torch.tensor([9])
    assert [int(TASKS[t][0](x, y, 11)) for t in ("add", "sub", "mul", "x2+y2")] == [3, 7, 1, 7]


def test_model_matches_the_papers_size():
    model = ModularTransformer(97)
    n = sum(p.numel() for p in model.parameters())
    assert 285_000 < n < 295_000  # "~290k parameters"
    assert model(torch.tensor([[1, 2], [3, 4]])).shape == (2, 97)
    layer = model.encoder.layers[0]
    assert layer.norm_first and layer.self_attn.num_heads == 4 and layer.linear1.out_features == 256


def test_config_checks_its_inputs():
    with pytest.raises(ValueError, match="unknown task"):
        GrokkingConfig(task="div")
    with pytest.raises(ValueError, match="train_fraction"):
        GrokkingConfig(train_fraction=1.0)


def test_optimizer_is_the_authors_adamw():
    run = GrokkingRun(GrokkingConfig(p=11, d_model=16, d_ff=32, weight_decay=1.0))
    group = run.optimizer.param_groups[0]
    assert isinstance(run.optimizer, torch.optim.AdamW)
    assert (group["lr"], group["betas"], group["weight_decay"]) == (1e-3, (0.9, 0.98), 1.0)


def _small(**kw):
    return GrokkingConfig(p=11, d_model=16, n_heads=2, d_ff=32, batch_size=32, **kw)


def test_runs_are_reproducible_and_resume_exactly():
    a = GrokkingRun(_small(seed=1))
    losses = [a.train_step().item() for _ in range(6)]
    b = GrokkingRun(_small(seed=1))
    for _ in range(3):
        b.train_step()
    state = b.state_dict()
    c = GrokkingRun(_small(seed=1))
    c.load_state_dict(state)
    assert c.step == 3
    assert [c.train_step().item() for _ in range(3)] == losses[3:]
    for pa, pc in zip(a.model.parameters(), c.model.parameters()):
        assert torch.equal(pa, pc)


def test_probing_gradients_does_not_change_training():
    a, b = GrokkingRun(_small()), GrokkingRun(_small())
    a.train_step()
    b.gradients("train")
    b.gradients("val")
    b.train_step()
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)


def test_evaluate_reports_loss_and_accuracy_of_both_splits():
    m = GrokkingRun(_small()).evaluate()
    assert set(m) == {"train_loss", "train_acc", "test_loss", "test_acc"}
    assert all(0.0 <= m[k] <= 1.0 for k in ("train_acc", "test_acc"))


def test_grok_step_is_the_first_evaluation_at_the_threshold():
    metrics = [{"step": 100, "test_acc": 0.2}, {"step": 200, "test_acc": 0.96}, {"step": 300, "test_acc": 1.0}]
    assert grok_step(metrics) == 200
    assert grok_step(metrics[:1]) is None
