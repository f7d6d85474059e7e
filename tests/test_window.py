import io

import numpy as np
import pytest
import torch
from helpers import BACKENDS, EPS32, backend_or_skip, split_id

import spectral_edge_fast.window as window_mod
from spectral_edge_fast import GramWindow

BF16_U = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits)


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Embedding(50, 16),
        torch.nn.Sequential(torch.nn.Linear(16, 33), torch.nn.Linear(33, 16)),
        torch.nn.Sequential(torch.nn.Linear(16, 33), torch.nn.Linear(33, 16)),
        torch.nn.Linear(16, 7),
    )


def _flat(model):
    return torch.cat([p.detach().reshape(-1).double().cpu() for p in model.parameters()])


def _train_like(model, gen, scale=1e-2):
    """A fake optimizer step: a random, slowly drifting update."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_((scale * (torch.randn(p.shape, generator=gen) + 0.5)).to(p.device))


def _run(win, model, steps, seed):
    """Drive ``win`` for ``steps`` optimizer steps; return the float64
    history of updates formed every ``win.every`` steps."""
    gen = torch.Generator().manual_seed(seed)
    history, last = [], _flat(model)
    for t in range(1, steps + 1):
        _train_like(model, gen)
        slid = win.step()
        assert slid == (t % win.every == 0)
        if slid:
            now = _flat(model)
            history.append(now - last)
            last = now
    return history


def _gram_bound(x: torch.Tensor, storage):
    """Entrywise bound on |G_window - G_exact| for rows x (float64)."""
    a = x.abs()
    absprod = (a @ a.T).numpy()
    accum = 2 * EPS32 * min(x.shape[1], 1 << 16) ** 0.5 * absprod
    rows = 2 * EPS32 * absprod  # the update itself is rounded to float32 once
    if storage == torch.bfloat16:
        rows = (2 * BF16_U + BF16_U**2) * absprod  # each stored row is rounded to bf16
    return accum + rows + 1e-300


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("storage", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("W,every", [(2, 1), (5, 2), (16, 1)])
def test_window_matches_brute_force_over_many_slides(backend, storage, W, every):
    backend_or_skip(backend)
    name, device = split_id(backend)
    model = _model().to(device)
    win = GramWindow(model, window=W, every=every, storage_dtype=storage, backend=name)
    steps = (3 * W + 2) * every
    history = _run(win, model, steps, seed=W)
    x = torch.stack(history[-W:])
    assert win.n == W and win.count == len(history) > 3 * W
    G = win.gram()
    err = np.abs(G - (x @ x.T).numpy())
    bound = _gram_bound(x, storage)
    assert (err <= bound).all(), f"worst error {err.max():.3e}, {(err / bound).max():.2f} of the bound"
    # per-group Grams add up to the global one
    total = sum(win.group_grams().values())
    assert np.allclose(total, G, rtol=1e-12, atol=0)
    # the extended Gram holds the row that just left
    xe = torch.stack(history[-W - 1 :])
    E = win.extended_gram()
    assert E.shape == (W + 1, W + 1)
    assert (np.abs(E - (xe @ xe.T).numpy()) <= _gram_bound(xe, storage)).all()


def test_window_while_filling_and_explicit_delta_c():
    """Small P: form the covariance C explicitly and check ||Delta C||_F."""
    model = torch.nn.Linear(6, 4)
    win = GramWindow(model, window=3, backend="torch")
    history = _run(win, model, 2, seed=1)
    assert win.n == 2 and win.gram().shape == (2, 2)
    assert np.allclose(win.extended_gram()[0], 0.0), "nothing has left yet: row 0 is zero"
    history += _run(win, model, 4, seed=2)
    X_prev, X_now = torch.stack(history[-4:-1]), torch.stack(history[-3:])
    dC = X_now.T @ X_now - X_prev.T @ X_prev
    assert win.delta_c_fro() == pytest.approx(torch.linalg.norm(dC).item(), rel=1e-5)
    for name in win.groups:
        assert win.delta_c_fro(name) >= 0.0


def test_groups_auto_tensor_none_callable():
    model = _model()
    names = [n for n, _ in model.named_parameters()]
    assert GramWindow(model, groups="auto").groups == ["0", "1.0", "1.1", "2.0", "2.1", "3"]
    assert GramWindow(model, groups="tensor").groups == names
    assert GramWindow(model, groups=None).groups == ["all"]
    assert GramWindow(model, groups=lambda n: n.split(".")[0]).groups == ["0", "1", "2", "3"]


def test_project_and_combine_against_explicit_rows():
    model = _model()
    win = GramWindow(model, window=4, backend="torch")
    history = _run(win, model, 6, seed=3)
    x = torch.stack(history[-4:])
    gen = torch.Generator().manual_seed(0)
    y = [torch.randn(p.shape, generator=gen) for p in model.parameters()]
    y_flat = torch.cat([t.reshape(-1).double() for t in y])
    p = win.project(y)
    assert np.allclose(p, (x @ y_flat).numpy(), rtol=1e-5, atol=1e-9)
    per_group = win.project(y, per_group=True)
    assert np.allclose(sum(per_group.values()), p, rtol=1e-12, atol=1e-12)
    c = np.array([0.5, -1.0, 2.0, 0.25])
    out = win.combine(c)
    assert [tuple(t.shape) for t in out] == [tuple(q.shape) for q in model.parameters()]
    want = x.T @ torch.from_numpy(c)
    assert torch.allclose(torch.cat([t.reshape(-1).double() for t in out]), want, rtol=1e-5, atol=1e-7)


def test_nonfinite_update_poisons_its_row_until_it_leaves():
    model = torch.nn.Linear(8, 8)
    win = GramWindow(model, window=3, backend="torch")
    _run(win, model, 2, seed=4)
    bad = [torch.full(p.shape, float("nan")) if i == 0 else torch.randn(p.shape) for i, p in enumerate(model.parameters())]
    win.push(bad)
    state = win.state()
    assert state.finite_rows().tolist() == [True, True, False]
    G = state.gram()
    assert np.isnan(G[2]).all() and np.isnan(G[:, 2]).all() and np.isfinite(G[:2, :2]).all()
    for _ in range(3):
        win.push([torch.randn(p.shape) for p in model.parameters()])
    assert np.isfinite(win.gram()).all()


def test_state_dict_round_trip_continues_bit_identically():
    model_a, model_b = _model(1), _model(1)
    win_a = GramWindow(model_a, window=4, storage_dtype=torch.bfloat16)
    win_b = GramWindow(model_b, window=4, storage_dtype=torch.bfloat16)
    _run(win_a, model_a, 7, seed=5)
    _run(win_b, model_b, 7, seed=5)
    buf = io.BytesIO()
    torch.save(win_b.state_dict(), buf)
    buf.seek(0)
    resumed = GramWindow(model_b, window=4, storage_dtype=torch.bfloat16)
    resumed.load_state_dict(torch.load(buf))
    _run(win_a, model_a, 6, seed=6)
    _run(resumed, model_b, 6, seed=6)
    assert np.array_equal(win_a.gram(), resumed.gram())
    assert np.array_equal(win_a.extended_gram(), resumed.extended_gram())
    with pytest.raises(ValueError, match="window"):
        GramWindow(model_b, window=5).load_state_dict(win_a.state_dict())


def test_reset_and_memory_bytes():
    model = torch.nn.Linear(10, 10)
    win = GramWindow(model, window=4, storage_dtype=torch.bfloat16)
    assert win.memory_bytes() >= 4 * 110 * 2 + 110 * 4
    _run(win, model, 3, seed=0)
    win.reset()
    assert win.count == 0 and win.gram().shape == (0, 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(window=1), "window must be"),
        (dict(every=0), "every must be"),
        (dict(storage_dtype=torch.float16), "storage_dtype"),
        (dict(groups="layers"), "groups must be"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GramWindow(torch.nn.Linear(2, 2), **kwargs)


def test_bad_parameters_name_the_problem():
    with pytest.raises(TypeError, match="dtype torch.int64"):
        GramWindow([torch.zeros(3, dtype=torch.int64)])
    with pytest.raises(ValueError, match="is on meta"):
        GramWindow([("a", torch.zeros(3)), ("b", torch.zeros(3, device="meta"))])
    with pytest.raises(ValueError, match="no parameters"):
        GramWindow([])
    model = torch.nn.Linear(3, 3)
    win = GramWindow(model, window=2)
    model.weight.data = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="changed shape"):
        win.step()


def test_ring_that_does_not_fit_is_refused_before_allocating(monkeypatch):
    monkeypatch.setattr(window_mod, "free_bytes", lambda device: 1000)
    with pytest.raises(MemoryError, match=r"needs .* GB .* of ring in bf16"):
        GramWindow(torch.nn.Linear(100, 100), window=16, storage_dtype=torch.bfloat16)


def test_float64_parameters_keep_a_float64_snapshot():
    model = torch.nn.Linear(40, 30).double()
    win = GramWindow(model, window=3)
    assert win._snapshot.dtype == torch.float64
    history = _run(win, model, 5, seed=8)
    x = torch.stack(history[-3:])
    assert np.allclose(win.gram(), (x @ x.T).numpy(), rtol=1e-5, atol=0)
