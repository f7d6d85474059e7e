"""The Dyck-1 workload: its strings, labels and split, the model's size and the run."""
import collections
import math

import pytest
import torch

from spectral_edge_fast.workloads.dyck import (BOS, CLOSE, OPEN, DyckConfig, DyckRun, DyckTransformer, _balanced,
                                               _unbalanced, is_balanced, make_dataset)


def test_is_balanced_is_the_prefix_rule():
    assert is_balanced("()") and is_balanced("(()())") and is_balanced("")
    assert not is_balanced(")(") and not is_balanced("())(()") and not is_balanced("((")
    assert is_balanced([OPEN, OPEN, CLOSE, CLOSE]) and not is_balanced([CLOSE, OPEN])


def _strings(rows):
    return ["".join("(" if v > 0 else ")" for v in r) for r in rows.tolist()]


def test_balanced_draws_are_uniform_over_all_balanced_strings():
    n, length = 50_000, 8
    counts = collections.Counter(_strings(_balanced(n, length, torch.Generator().manual_seed(0))))
    assert len(counts) == math.comb(8, 4) // 5 == 14  # the Catalan number: every balanced string appears
    assert all(is_balanced(s) for s in counts)
    # each expected n/14 = 3571 times (standard deviation ~58): 10% is over 6 deviations
    assert max(abs(c - n / 14) for c in counts.values()) < 0.1 * n / 14


def test_unbalanced_draws_are_uniform_over_unbalanced_strings_without_a_surface_cue():
    """Equal counts, ``(`` first and ``)`` last as in every balanced string:
    only the prefix rule tells them apart."""
    n, length = 30_000, 8
    counts = collections.Counter(_strings(_unbalanced(n, length, torch.Generator().manual_seed(1))))
    assert len(counts) == math.comb(6, 3) - 14 == 6  # the middle six brackets, less the balanced strings
    assert all(not is_balanced(s) and s.count("(") == 4 and s[0] == "(" and s[-1] == ")" for s in counts)
    # each expected n/6 = 5000 times (standard deviation ~65): 5% is over 3.8 deviations
    assert max(abs(c - n / 6) for c in counts.values()) < 0.05 * n / 6


def test_dataset_labels_split_and_seed():
    tx, ty, vx, vy = make_dataset(16, 300, 500, seed=3)
    assert tx.shape == (300, 17) and vx.shape == (500, 17)
    assert (tx[:, 0] == BOS).all() and (vx[:, 0] == BOS).all()
    for x, y in ((tx, ty), (vx, vy)):
        assert y.tolist() == [int(is_balanced(r[1:])) for r in x.tolist()]
        assert ((x[:, 1:] == OPEN).sum(1) == 8).all()  # as many opens as closes: counting does not decide
        assert (x[:, 1] == OPEN).all() and (x[:, -1] == CLOSE).all()  # nor do the ends
        assert y.sum() == len(y) // 2
    train, test = set(map(tuple, tx.tolist())), set(map(tuple, vx.tolist()))
    assert len(train) == 300 and len(test) == 500 and not train & test
    again = make_dataset(16, 300, 500, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(again, (tx, ty, vx, vy)))
    assert not torch.equal(make_dataset(16, 300, 500, seed=4)[0], tx)


def test_dataset_refuses_more_strings_than_exist():
    with pytest.raises(ValueError, match="length 8 has 14 balanced strings and 6 unbalanced"):
        make_dataset(8, 20, 20, seed=0)
    # one unbalanced string of length 6 opens with ( and closes with ): drawing two would never end
    with pytest.raises(ValueError, match="length 6 has 5 balanced strings and 1 unbalanced"):
        make_dataset(6, 2, 2, seed=0)
    with pytest.raises(ValueError, match="length"):
        DyckConfig(length=7)


def test_dataset_refuses_too_few_distinct_draws(monkeypatch):
    from spectral_edge_fast.workloads import dyck

    monkeypatch.setattr(dyck, "_balanced", lambda n, length, g: torch.ones(n, length, dtype=torch.long))
    with pytest.raises(ValueError, match="1 distinct balanced strings"):
        make_dataset(16, 300, 500, seed=0)


def test_model_matches_the_papers_size():
    model = DyckTransformer(24)
    n = sum(p.numel() for p in model.parameters())
    assert 140_000 < n < 160_000  # "150K parameters"
    assert len(model.encoder.layers) == 2
    assert model(torch.zeros(3, 25, dtype=torch.long)).shape == (3, 2)


def test_model_is_causal():
    """Each position sees only its prefix, as a depth count needs: changing
    the last bracket leaves the earlier positions' states unchanged."""
    model = DyckTransformer(8, d_model=16, n_heads=2, d_ff=32).eval()
    x = torch.tensor([[BOS, OPEN, CLOSE, OPEN, OPEN, CLOSE, CLOSE, OPEN, CLOSE]])
    y = x.clone()
    y[0, -1] = OPEN
    h = [model.encoder(model.tok_emb(t) + model.pos_emb, mask=model.mask, is_causal=True) for t in (x, y)]
    torch.testing.assert_close(h[0][:, :-1], h[1][:, :-1])
    assert not torch.allclose(h[0][:, -1], h[1][:, -1])


def test_forward_is_the_whole_encoder_read_at_the_last_position():
    """The last layer computed at the last position only gives the logits
    and gradients of the whole encoder's last state."""
    model = DyckTransformer(10, d_model=16, n_heads=2, d_ff=32, init_scale=4.0).double()
    x = make_dataset(10, 8, 8, seed=0)[0]

    def whole(m):
        return m.head(m.ln(m.encoder(m.tok_emb(x) + m.pos_emb, mask=m.mask, is_causal=True)[:, -1]))

    for train in (True, False):
        model.train(train)
        torch.testing.assert_close(model(x), whole(model), rtol=1e-12, atol=1e-12)
    grads = []
    for logits in (lambda: model(x), lambda: whole(model)):
        model.zero_grad()
        logits().square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_init_scale_multiplies_every_initial_parameter():
    torch.manual_seed(0)
    base = DyckTransformer(8, d_model=16, n_heads=2, d_ff=32)
    torch.manual_seed(0)
    scaled = DyckTransformer(8, d_model=16, n_heads=2, d_ff=32, init_scale=4.0)
    for (name, a), b in zip(base.named_parameters(), scaled.parameters()):
        assert torch.equal(4.0 * a, b), name
    run = DyckRun(_small(seed=0, init_scale=3.0))
    assert run.model.head.weight.abs().max() > 0.25  # PyTorch's own start is within 1 / sqrt(d_model = 16)
    with pytest.raises(ValueError, match="init_scale"):
        DyckConfig(init_scale=0.0)


def _small(**kw):
    return DyckConfig(length=14, n_train=64, n_test=64, d_model=16, n_heads=2, d_ff=32, batch_size=16, **kw)


def test_runs_are_reproducible_and_evaluate_both_splits():
    a, b = DyckRun(_small(seed=1)), DyckRun(_small(seed=1))
    assert [a.train_step().item() for _ in range(3)] == [b.train_step().item() for _ in range(3)]
    m = a.evaluate()
    assert set(m) == {"train_loss", "train_acc", "test_loss", "test_acc"}
    assert all(0.0 <= m[k] <= 1.0 for k in ("train_acc", "test_acc"))
    group = a.optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (1e-3, (0.9, 0.98), 1.0)
    assert a.n_params == sum(p.numel() for p in a.model.parameters())  # what the reproduce runs record
