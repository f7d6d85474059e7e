"""The options, defined once: every entry point accepts each of them, hands it
to the window, and refuses a bad value with the same message."""
import dataclasses
import types

import numpy as np
import pytest
import torch

from spectral_edge_fast import GramWindow, SpectralMonitor, analyze_checkpoints
from spectral_edge_fast.config import MonitorOptions, WindowOptions
from spectral_edge_fast.monitor import _lr_of
from spectral_edge_fast.offline import _optimizer_lr

WINDOW_FIELDS = [f.name for f in dataclasses.fields(WindowOptions)]
ANALYSIS_FIELDS = ("probes", "gap_open_above", "gap_close_below", "k_star_margin")


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


def _values(tmp_path) -> dict:
    """A value other than the default for every option."""
    values = dict(window=3, every=2, groups="tensor", storage_dtype=torch.bfloat16, backend="torch", sketch=64,
                  analyze_every=3, history=60, sinks=(), log_dir=str(tmp_path / "log"), probes=("0.weight",),
                  gap_open_above=2.0, gap_close_below="null", k_star_margin=1.5)
    defaults = MonitorOptions()
    assert set(values) == {f.name for f in dataclasses.fields(MonitorOptions)}, "give the new option a value here"
    assert all(values[k] != getattr(defaults, k) for k in values)
    return values


def _checkpoints(tmp_path):
    model, ckpts = _model(), tmp_path / "ckpts"
    ckpts.mkdir()
    for step in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        torch.save({k: v.clone() for k, v in model.state_dict().items()}, ckpts / f"ckpt_{step}.pt")
    return str(ckpts)


def _window(entry: str, tmp_path, kw: dict):
    """Build ``entry`` with the options ``kw`` (those it takes); return the
    window it made and the options object it keeps (the monitor's, if any)."""
    window_kw = {k: v for k, v in kw.items() if k in WINDOW_FIELDS}
    if entry == "GramWindow":
        win = GramWindow(_model(), **window_kw)
        return win, win.options
    if entry == "SpectralMonitor":
        mon = SpectralMonitor(_model(), **kw)
        mon.close()
        return mon.window, mon.options
    if entry == "analyze_checkpoints":
        mon = analyze_checkpoints(_checkpoints(tmp_path), out=str(tmp_path / "off"), progress=False, **window_kw)
        return mon.window, mon.window.options
    if entry == "lightning":
        cb = pytest.importorskip("spectral_edge_fast.integrations.lightning").SpectralEdgeCallback(**kw)
        trainer = types.SimpleNamespace(log_dir=str(tmp_path), default_root_dir=str(tmp_path), optimizers=[],
                                        logger=None, loggers=[], global_step=0)
        cb.on_train_start(trainer, _model())
    else:
        cb = pytest.importorskip("spectral_edge_fast.integrations.huggingface").SpectralEdgeCallback(**kw)
        args = types.SimpleNamespace(output_dir=str(tmp_path), run_name=None, report_to=[])
        with pytest.warns(RuntimeWarning, match="no Trainer.train"):
            cb.on_train_begin(args, types.SimpleNamespace(global_step=0), None, model=_model())
    cb.monitor.close()
    return cb.monitor.window, cb.monitor.options


ENTRIES = ["GramWindow", "SpectralMonitor", "analyze_checkpoints", "lightning", "huggingface"]


@pytest.mark.parametrize("entry", ENTRIES)
def test_every_option_is_taken_by_every_entry_point_and_reaches_the_window(entry, tmp_path):
    kw = _values(tmp_path)
    win, options = _window(entry, tmp_path, kw)
    for name in WINDOW_FIELDS:
        assert getattr(win.options, name) == kw[name], name
    assert (win.window, win.every, win.storage_dtype, win.backend.name) == (3, 2, torch.bfloat16, "torch")
    assert len(win.groups) == 4  # groups="tensor": one per tensor
    if isinstance(options, MonitorOptions):
        analysis = {name: getattr(MonitorOptions(), name) for name in ANALYSIS_FIELDS}
        expected = dict(kw, analyze_every=2, sinks=("jsonl", "csv"), log_dir=str(tmp_path / "off"), history=1000,
                        **analysis) if entry == "analyze_checkpoints" else kw
        assert all(getattr(options, f.name) == expected[f.name] for f in dataclasses.fields(MonitorOptions))


@pytest.mark.parametrize("entry", ["SpectralMonitor", "analyze_checkpoints", "lightning", "huggingface"])
@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_backend_reaches_the_window(entry, backend, tmp_path):
    win, _ = _window(entry, tmp_path, dict(window=3, backend=backend, sinks=(), log_dir=str(tmp_path / "log")))
    assert win.backend.name == backend


BAD = [
    ("window", 1, "window must be an integer >= 2, got 1"),
    ("window", 4.0, "window must be an integer >= 2, got 4.0"),
    ("every", np.float64(2), "every must be an integer >= 1, got "),
    ("every", True, "every must be an integer >= 1, got True"),
    ("groups", "blocks", "groups must be 'auto', 'tensor', None or a callable name -> group, got 'blocks'"),
    ("storage_dtype", torch.float16, "storage_dtype must be torch.float32 or torch.bfloat16, got torch.float16"),
    ("backend", "fastest", "backend must be 'auto' or one of ["),
    ("sketch", 1, "sketch must be an integer >= 2, got 1"),
    ("analyze_every", 0, "analyze_every must be an integer >= 1, got 0"),
    ("history", 10, "history must be an integer >= 50, got 10"),
    ("probes", [3], "probes must be None, 'attention' or fnmatch patterns of 2-D parameter names, got [3]"),
    ("gap_open_above", 1.0, "gap_open_above must be a number > 1 or 'null', got 1.0"),
    ("gap_close_below", "nul", "gap_close_below must be a number > 1 or 'null' or None, got 'nul'"),
    ("k_star_margin", 0.5, "k_star_margin must be a number >= 1, got 0.5"),
]


@pytest.mark.parametrize("name, value, message", BAD, ids=[f"{n}={v!r}" for n, v, _ in BAD])
def test_a_bad_value_gets_the_same_message_from_every_entry_point(name, value, message, tmp_path):
    """Refused when the entry point is built (a callback's, not when training
    starts), before any checkpoint is read."""
    pytest.importorskip("lightning")
    pytest.importorskip("transformers")
    from spectral_edge_fast.integrations import huggingface, lightning

    ckpts = _checkpoints(tmp_path)
    builders = [lambda **kw: SpectralMonitor(_model(), sinks=(), **kw),
                lambda **kw: lightning.SpectralEdgeCallback(**kw),
                lambda **kw: huggingface.SpectralEdgeCallback(**kw)]
    if name in WINDOW_FIELDS:
        builders += [lambda **kw: GramWindow(_model(), **kw),
                     lambda **kw: analyze_checkpoints(ckpts, out=str(tmp_path / "off"), progress=False, **kw)]
    messages = set()
    for build in builders:
        with pytest.raises(ValueError) as err:
            build(**{name: value})
        messages.add(str(err.value))
    assert len(messages) == 1 and messages.pop().startswith(message)
    assert not (tmp_path / "off").exists()


def test_an_unknown_option_is_named():
    with pytest.raises(TypeError, match=r"GramWindow got unknown option\(s\) windows; its options are window, every"):
        GramWindow(_model(), windows=4)
    with pytest.raises(TypeError, match=r"SpectralMonitor got unknown option\(s\) windw; its options are window"):
        SpectralMonitor(_model(), sinks=(), windw=4)
    with pytest.raises(TypeError, match="GramWindow got unknown option.* analyze_every"):
        GramWindow(_model(), analyze_every=4)  # a monitor's option


def test_an_options_object_with_keyword_overrides(tmp_path):
    base = MonitorOptions(window=5, analyze_every=7, backend="torch", sinks=(), log_dir=str(tmp_path))
    mon = SpectralMonitor(_model(), None, base, window=4)
    mon.close()
    assert (mon.window.window, mon.analyze_every, mon.window.backend.name) == (4, 7, "torch")
    assert mon.options == dataclasses.replace(base, window=4) and base.window == 5
    win = GramWindow(_model(), base)  # a monitor's options: the window's fields are taken
    assert win.options == WindowOptions(window=5, backend="torch")
    with pytest.raises(TypeError, match="options must be a WindowOptions or MonitorOptions, got dict"):
        GramWindow(_model(), {"window": 4})
    assert MonitorOptions(window=np.int64(4), history=None).window.__class__ is int


@pytest.mark.parametrize("tensor", [False, True])
def test_one_learning_rate_reader_for_optimizers_and_their_saved_states(tensor):
    lr = torch.tensor(0.25) if tensor else 0.25
    opt = torch.optim.SGD(_model().parameters(), lr=lr)
    live = _lr_of(opt.param_groups)
    assert float(live) == 0.25
    if tensor:  # a copy: the scheduler's in-place update of the optimizer's does not reach it
        assert live is not opt.param_groups[0]["lr"]
        opt.param_groups[0]["lr"].fill_(0.5)
        assert float(live) == 0.25
    state = opt.state_dict()
    for saved in ({"optimizer": state}, {"optimizer_states": [state]}, state):
        assert _optimizer_lr(saved) == float(opt.param_groups[0]["lr"])
    assert _optimizer_lr({"model": {}}) is None and _optimizer_lr({"param_groups": [0.25]}) is None
    assert _lr_of([{"params": []}]) is None
