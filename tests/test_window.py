import io
import re
import warnings

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


# -- parameters that change under the window ---------------------------------


def _check_gram(win, history, W):
    x = torch.stack(history[-W:])
    err = np.abs(win.gram() - (x @ x.T).numpy())
    assert (err <= _gram_bound(x, torch.float32)).all(), f"worst error {err.max():.3e}"


def _one_warning(record, match):
    mine = [w for w in record if issubclass(w.category, RuntimeWarning) and "GramWindow" in str(w.message)]
    assert len(mine) == 1, [str(w.message) for w in mine]
    assert re.search(match, str(mine[0].message)), str(mine[0].message)


def test_load_state_dict_assign_and_a_new_optimizer_are_followed_by_name():
    model = _model()
    win = GramWindow(model, window=4)
    history = _run(win, model, 3, seed=10)
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # rebuilt on the new Parameter objects
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(5):
            opt.zero_grad()
            model(torch.arange(6).remainder(50)).pow(2).mean().backward()
            before = _flat(model)
            opt.step()
            assert win.step()
            history.append(_flat(model) - before)
    _check_gram(win, history, 4)
    _one_warning(record, r"'0\.weight', '1\.0\.weight'.* and \d+ more")
    assert win.layout.params[0] is model[0].weight


def test_a_replaced_submodule_is_followed_by_name():
    model = _model()
    win = GramWindow(model, window=3)
    history = _run(win, model, 2, seed=11)
    new_head = torch.nn.Linear(16, 7)
    with torch.no_grad():
        new_head.weight.copy_(model[3].weight)
        new_head.bias.copy_(model[3].bias)
    model[3] = new_head
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        history += _run(win, model, 4, seed=12)
    _check_gram(win, history, 3)
    _one_warning(record, r"'3\.weight', '3\.bias'")
    model[3].bias = None
    with pytest.raises(ValueError, match=r"'3\.bias' is no longer in the module"):
        win.step()


def test_a_tensor_given_directly_moved_to_new_memory_is_followed():
    weight, bias = torch.randn(5, 5), torch.randn(5)
    win = GramWindow([("w", weight), ("b", bias)], window=3)
    gen = torch.Generator().manual_seed(0)
    history = []
    for t in range(6):
        if t == 2:
            weight.data = weight.data.clone()
        before = torch.cat([weight.reshape(-1), bias]).double()
        for p in (weight, bias):
            p.add_(torch.randn(p.shape, generator=gen))
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            win.step()
        if t == 2:
            _one_warning(record, "'w' was replaced or moved")
        else:
            assert not record
        history.append(torch.cat([weight.reshape(-1), bias]).double() - before)
    _check_gram(win, history, 3)


@pytest.mark.parametrize("direct", [False, True], ids=["module", "tensors"])
def test_a_transposed_square_weight_is_refused_not_read_in_the_wrong_order(direct):
    model = torch.nn.Linear(4, 4)
    win = GramWindow(list(model.named_parameters()) if direct else model, window=2)
    win.step()
    model.weight.data = model.weight.data.t()  # same memory, other strides
    with pytest.raises(ValueError, match=r"'weight' of shape \(4, 4\) is not contiguous \(strides \(1, 4\)"):
        win.step()


def test_channels_last_after_the_window_was_built_names_the_parameter():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 2, 1))
    win = GramWindow(model, window=2)
    model.to(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match=r"'0\.weight' of shape \(4, 3, 3, 3\) is not contiguous.*contiguous_format"):
        win.step()


def test_meta_device_dtype_and_shape_changes_raise_naming_the_parameter():
    model = _model()
    win = GramWindow(model, window=2)
    model.to("meta")
    with pytest.raises(ValueError, match=r"'0\.weight' moved from cpu to the meta device"):
        win.step()
    with pytest.raises(ValueError, match="meta device"):  # and keeps refusing
        win.step()
    model = _model()
    win = GramWindow(model, window=2)
    model.double()
    with pytest.raises(ValueError, match=r"'0\.weight' changed dtype from torch\.float32 to torch\.float64"):
        win.step()
    model = torch.nn.Linear(4, 4)
    win = GramWindow(model, window=2)
    model.weight.data = model.weight.data[:2]  # same address and strides, fewer rows
    with pytest.raises(ValueError, match=r"'weight' changed shape from \(4, 4\) to \(2, 4\)"):
        win.step()


# -- wrappers ------------------------------------------------------------------


def _blocks_model():
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.embed = torch.nn.Embedding(10, 8)
    model.blocks = torch.nn.ModuleList(
        torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)) for _ in range(2)
    )
    model.head = torch.nn.Linear(8, 3)
    return model


def _ddp_like(model):
    wrapper = torch.nn.Module()
    wrapper.module = model
    return wrapper


@pytest.mark.parametrize("wrap", [torch.compile, _ddp_like], ids=["compile", "module-prefix"])
def test_monitor_state_moves_between_wrapped_and_plain_models(wrap, tmp_path):
    from spectral_edge_fast import SpectralMonitor

    for save_wrapped in (True, False):
        model = _blocks_model()
        saver = SpectralMonitor(wrap(model) if save_wrapped else model, window=3, analyze_every=2, sinks=(),
                                log_dir=str(tmp_path))
        gen = torch.Generator().manual_seed(1)
        for _ in range(4):
            _train_like(model, gen)
            saver.step()
        loader = SpectralMonitor(model if save_wrapped else wrap(model), window=3, analyze_every=2, sinks=(),
                                 log_dir=str(tmp_path))
        assert loader.window.groups == saver.window.groups == ["embed", "blocks.0", "blocks.1", "head"]
        loader.load_state_dict(saver.state_dict())
        for _ in range(3):
            _train_like(model, gen)
            saver.step()
            loader.step()
        assert np.array_equal(loader.window.gram(), saver.window.gram())


# -- memory and arguments -------------------------------------------------------


def test_memory_bytes_counts_every_buffer_and_is_what_the_check_uses(monkeypatch):
    model = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.Linear(10, 3))
    win = GramWindow(model, window=5, storage_dtype=torch.bfloat16)
    buffers = (win._snapshot, win._gram, win._left, win._take)
    held = win._ring.untyped_storage().nbytes() + sum(t.nbytes for t in buffers)
    assert win.memory_bytes() == held + 4 * win.layout.numel  # and the step's float32 scratch row
    monkeypatch.setattr(window_mod, "free_bytes", lambda device: win.memory_bytes())
    GramWindow(model, window=5, storage_dtype=torch.bfloat16)
    monkeypatch.setattr(window_mod, "free_bytes", lambda device: win.memory_bytes() - 1)
    with pytest.raises(MemoryError):
        GramWindow(model, window=5, storage_dtype=torch.bfloat16)


def test_a_gram_that_does_not_fit_is_refused_with_advice_that_fits(monkeypatch):
    monkeypatch.setattr(window_mod, "free_bytes", lambda device: 100 * 10**6)
    two_groups = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    advice = r"Gram\(s\) of W x W float64 dominate: use a smaller window, or fewer groups \(groups=None\)$"
    with pytest.raises(MemoryError, match=r"0\.18 GB of Gram for 2 groups with its indices.*" + advice) as err:
        GramWindow(two_groups, window=3000)  # 2 x 3000^2 float64 (144 MB) and 3000^2 int32 indices (36 MB)
    assert "bfloat16" not in str(err.value)
    with pytest.raises(MemoryError, match=r"72 GB of Gram.*" + advice):
        GramWindow(two_groups, window=60000)
    with pytest.raises(MemoryError, match=r"use a smaller window$"):  # one group: no advice about groups
        GramWindow(two_groups, window=3000, groups=None)


@pytest.mark.parametrize("storage, bf16_advice", [(torch.float32, True), (torch.bfloat16, False)], ids=["fp32", "bf16"])
def test_ring_advice_fits_the_ring_dtype(monkeypatch, storage, bf16_advice):
    monkeypatch.setattr(window_mod, "free_bytes", lambda device: 1000)
    with pytest.raises(MemoryError, match="the ring dominates") as err:
        GramWindow(torch.nn.Linear(100, 100), window=16, storage_dtype=storage)
    assert ("storage_dtype=torch.bfloat16" in str(err.value)) == bf16_advice
    with pytest.raises(MemoryError, match="the snapshot dominates: monitor fewer parameters"):
        GramWindow(torch.nn.Linear(100, 100), window=2, storage_dtype=torch.bfloat16)  # ring 4P bytes, snapshot 8P


def test_integer_like_window_and_every_are_accepted():
    win = GramWindow(torch.nn.Linear(2, 2), window=np.int64(4), every=np.int32(2))
    assert (win.window, win.every) == (4, 2) and type(win.window) is int and type(win.every) is int
    for bad in (True, 16.0, np.float64(16), "16", None, np.bool_(True)):
        with pytest.raises(ValueError, match="window must be an integer >= 2"):
            GramWindow(torch.nn.Linear(2, 2), window=bad)
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        GramWindow(torch.nn.Linear(2, 2), every=True)


def test_free_gpu_memory_counts_what_the_allocator_holds_unused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (1000, 10**6))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 5000)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 3000)
    assert window_mod.free_bytes(torch.device("cuda", 0)) == 1000 + 2000
    assert window_mod.free_bytes(torch.device("xpu")) is None  # host memory is not this device's
    assert window_mod.free_bytes(torch.device("cpu")) > 0


@pytest.mark.parametrize("groups", ["auto", None])
def test_a_state_of_other_parameters_names_them(groups):
    """A state saved over other parameters (one frozen here, a layer resized)
    is refused naming them, not by the flat bounds that differ."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    win = GramWindow(model, window=3, groups=groups)
    _run(win, model, 2, seed=0)
    state = win.state_dict()
    frozen = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    frozen[0].weight.requires_grad_(False)
    with pytest.raises(ValueError, match=r"parameter '0\.weight' \(8, 4\) is in the state but not monitored here"):
        GramWindow(frozen, window=3, groups=groups).load_state_dict(state)
    resized = torch.nn.Sequential(torch.nn.Linear(4, 9), torch.nn.Tanh(), torch.nn.Linear(9, 3))
    with pytest.raises(ValueError, match=r"'0\.weight' has shape \(8, 4\) in the state, \(9, 4\) here.*"
                                         r"'2\.weight' has shape \(3, 8\) in the state, \(3, 9\) here"):
        GramWindow(resized, window=3, groups=groups).load_state_dict(state)
    wider = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3), torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"parameter '3\.weight' \(2, 3\), '3\.bias' \(2,\) .*monitored here but not "
                                         r"in the state"):
        GramWindow(wider, window=3, groups=groups).load_state_dict(state)
