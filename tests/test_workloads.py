"""The grokking workload: data, model and training loop as in docs/math.md#the-reference-experiment."""
import pytest
import torch

from spectral_edge_fast.workloads.grokking import (
    TASKS,
    GrokkingConfig,
    GrokkingRun,
    ModularTransformer,
    MuonAdamW,
    grok_step,
    make_dataset,
    make_multitask_dataset,
    newton_schulz,
)
from spectral_edge_fast.workloads.dyck import DyckConfig
from spectral_edge_fast.workloads.lm import LMConfig
from spectral_edge_fast.workloads.scan import ScanConfig


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


def test_grok_step_reads_the_key_asked_for():
    metrics = [{"step": 100, "test_acc_mul": 0.97, "test_acc_add": 0.1}, {"step": 200, "test_acc_add": 0.95}]
    assert grok_step(metrics, key="test_acc_mul") == 100 and grok_step(metrics, key="test_acc_add") == 200
    assert grok_step(metrics) is None


def test_config_refuses_unknown_optimizers_and_repeated_tasks():
    with pytest.raises(ValueError, match="optimizer must be one of adamw, muon"):
        GrokkingConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="twice"):
        GrokkingConfig(task="add,add")
    with pytest.raises(ValueError, match="unknown task 'div'"):
        GrokkingConfig(task="add,div")


def test_multitask_model_prefixes_a_task_token_and_reports_each_task():
    p = 11
    tx, ty, vx, vy = make_multitask_dataset(("add", "mul"), p, 0.5, seed=3)
    add, mul = make_dataset("add", p, 0.5, 3), make_dataset("mul", p, 0.5, 3)
    assert torch.equal(tx[:, 1:], torch.cat([add[0], mul[0]])) and torch.equal(ty, torch.cat([add[1], mul[1]]))
    assert tx[:, 0].tolist() == [p] * len(add[0]) + [p + 1] * len(mul[0])
    assert torch.equal(vx[:, 1:], torch.cat([add[2], mul[2]]))
    run = GrokkingRun(_small(task="add,mul"))
    m = run.evaluate()
    for split in ("train", "test"):
        for task in ("add", "mul"):
            assert 0.0 <= m[f"{split}_acc_{task}"] <= 1.0 and m[f"{split}_loss_{task}"] > 0
        n_add = len(add[0]) if split == "train" else len(add[2])
        n_mul = len(mul[0]) if split == "train" else len(mul[2])
        whole = (n_add * m[f"{split}_loss_add"] + n_mul * m[f"{split}_loss_mul"]) / (n_add + n_mul)
        assert m[f"{split}_loss"] == pytest.approx(whole, rel=1e-9)
    # each example is read by its own task's head
    x = tx[:4].clone()
    out = run.model(x)
    z = run.model.ln(run.model.encoder(run.model.tok_emb(x) + run.model.pos_emb)[:, 0])
    torch.testing.assert_close(out, run.model.heads[0](z))
    n = sum(q.numel() for q in ModularTransformer(97, n_tasks=3).parameters())
    assert 310_000 < n < 320_000  # the paper's 3-task model: 315K


def test_muon_trains_the_hidden_matrices_and_adamw_the_rest():
    run = GrokkingRun(_small(optimizer="muon"))
    muon, rest = run.optimizer.param_groups
    names = {id(q): n for n, q in run.model.named_parameters()}
    hidden = sorted(names[id(q)] for q in muon["params"])
    assert muon["muon"] and not rest["muon"] and hidden and all(n.startswith("encoder.layers.") for n in hidden)
    assert {n.rsplit(".", 1)[-1] for n in hidden} == {"in_proj_weight", "weight"}
    assert all(q.ndim == 2 for q in muon["params"])
    assert {names[id(q)] for q in rest["params"]} == set(names.values()) - set(hidden)
    # the AdamW part's decay per step, lr * weight decay, by default
    assert muon["lr"] * muon["weight_decay"] == pytest.approx(rest["lr"] * rest["weight_decay"])
    losses = [run.train_step().item() for _ in range(3)]
    b = GrokkingRun(_small(optimizer="muon"))
    b.train_step()
    c = GrokkingRun(_small(optimizer="muon"))
    c.load_state_dict(b.state_dict())
    assert [c.train_step().item() for _ in range(2)] == losses[1:]


def _twin_steps(make_ours, make_torch, shape, steps=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(shape, generator=g, dtype=torch.float64).float()
    grads = [torch.randn(shape, generator=g) for _ in range(steps)]
    out = []
    for make in (make_ours, make_torch):
        w = torch.nn.Parameter(w0.clone())
        opt = make([w])
        for grad in grads:
            w.grad = grad.clone()
            opt.step()
        out.append(w.detach())
    return w0, out


@pytest.mark.parametrize("shape", [(12, 5), (5, 12)])
def test_muon_steps_as_torch_muon(shape):
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.95)
    # with torch's bfloat16 iteration the two are the same algorithm
    w0, (ours, theirs) = _twin_steps(lambda ps: MuonAdamW([{"params": ps, "muon": True}], ns_dtype=torch.bfloat16, **kw),
                                     lambda ps: torch.optim.Muon(ps, **kw), shape)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    # in float32 it departs from torch's by bfloat16 rounding only: 3 steps of lr * sqrt(rows/cols) * O(2^-8)
    _, (ours32, _) = _twin_steps(lambda ps: MuonAdamW([{"params": ps, "muon": True}], **kw),
                                 lambda ps: torch.optim.Muon(ps, **kw), shape)
    scale = 3 * kw["lr"] * max(1.0, shape[0] / shape[1]) ** 0.5
    assert (ours32 - theirs).abs().max() < scale * 2 ** -6
    assert (ours32 - ours).abs().max() > 0  # the float32 path is a different computation


def test_newton_schulz_in_float32_follows_float64():
    g = torch.randn(24, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    want = newton_schulz(g, dtype=torch.float64)
    got = newton_schulz(g.float())
    # five steps of a polynomial of degree 5 in a matrix of norm <= 1.5: float32 rounding grows by < 100x
    assert (got.double() - want).abs().max() < 100 * 24 * 2 ** -24
    s = torch.linalg.svdvals(want)
    assert 0.6 < s.min() and s.max() < 1.3  # "US'V^T, S' ~ Uniform(0.5, 1.5)"


def test_adamw_groups_step_as_torch_adamw():
    kw = dict(lr=1e-3, betas=(0.9, 0.98), weight_decay=1.0)
    _, (ours, theirs) = _twin_steps(lambda ps: MuonAdamW(ps, **kw), lambda ps: torch.optim.AdamW(ps, **kw), (7, 3),
                                    steps=5)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("make", [GrokkingConfig, DyckConfig, ScanConfig, LMConfig], ids=lambda c: c.__name__)
def test_every_workload_config_checks_the_shared_training_knobs(make):
    """lr, betas, weight_decay, grad_clip and batch_size are defined and
    checked once (TrainingConfig) for every workload."""
    assert make(betas=[0.9, 0.9]).betas == (0.9, 0.9)
    for bad in (dict(lr=0.0), dict(betas=(0.9, 1.0)), dict(betas=(0.9,)), dict(weight_decay=-1.0),
                dict(grad_clip=0.0), dict(batch_size=0)):
        with pytest.raises(ValueError, match="must be"):
            make(**bad)
