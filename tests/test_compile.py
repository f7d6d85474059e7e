"""torch.compile: the engine's ops traced into a graph, and a compiled
optimizer step (or train step) with the monitor on the optimizer's post-step
hook, against eager mode. The monitor's host bookkeeping is never traced: it
runs eagerly between the compiled parts."""
import numpy as np
import pytest
import torch
from helpers import EPS32, backend_or_skip, random_bounds, small_integers

import spectral_edge_fast as sef

STEPS, WINDOW = 6, 4


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Tanh(), torch.nn.Linear(16, 4))


def _batches():
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(32, 8, generator=gen), torch.randn(32, 4, generator=gen)) for _ in range(STEPS)]


def _train(tmp_path, mode):
    """Trains a few steps with a monitor on the optimizer hook and a window
    stepped by the train step. ``mode``: "eager", "step"
    (``torch.compile(opt.step)``) or "train" (a compiled function that runs
    forward, backward, the optimizer step and the window's step). Returns the
    monitor's window Gram, the float64 Gram of the updates the run made, and
    that of their absolute values."""
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    monitor = sef.SpectralMonitor(model, opt, window=WINDOW, analyze_every=2, log_dir=str(tmp_path / mode))
    window = sef.GramWindow(model, window=WINDOW)  # stepped inside the (compiled) train step
    params = list(model.parameters())

    def train_step(x, y):
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        step()
        opt.zero_grad()
        window.step()

    step = torch.compile(opt.step) if mode == "step" else opt.step
    run = torch.compile(train_step) if mode == "train" else train_step
    thetas = [torch.cat([p.detach().reshape(-1).double() for p in params])]
    for x, y in _batches():
        run(x, y)
        thetas.append(torch.cat([p.detach().reshape(-1).double() for p in params]))
    monitor.flush()
    assert monitor.steps == STEPS and len(monitor.history) == STEPS // 2, "the hook did not run once per step"
    monitor.close()
    assert np.array_equal(window.gram(), monitor.window.gram()), "same updates, same kernels: the same bits"
    x = torch.diff(torch.stack(thetas), dim=0)[-WINDOW:]
    return monitor.window.gram(), (x @ x.T).numpy(), (x.abs() @ x.abs().T).numpy()


def _tolerance(abs_gram, length):
    """Each update rounded once to float32 (2u), then float32 products summed
    over chunks of at most 65536 terms (2u sqrt(n)), relative to sum |x y|."""
    return (2 + 2 * min(length, 65536) ** 0.5) * EPS32 * abs_gram


@pytest.mark.parametrize("mode", ["step", "train"])
def test_compiled_step_with_the_monitor_gives_the_eager_gram(tmp_path, mode):
    got, got_ref, got_abs = _train(tmp_path, mode)
    want, want_ref, want_abs = _train(tmp_path, "eager")
    P = sum(p.numel() for p in _model().parameters())
    # Each window against the float64 Gram of its own run's updates...
    assert (abs(got - got_ref) <= _tolerance(got_abs, P)).all()
    assert (abs(want - want_ref) <= _tolerance(want_abs, P)).all()
    # ...and the compiled run against the eager twin: apart from those errors,
    # only as far as the two runs' updates differ (a compiled AdamW may round
    # differently), which the float64 Grams measure.
    assert (abs(got - want) <= abs(got_ref - want_ref) + _tolerance(got_abs + want_abs, P)).all()
    # The runs took the same path: the twin check above is not vacuous.
    assert abs(got_ref - want_ref).max() <= 1e-3 * abs(want_ref).max()


def test_compiled_calls_give_the_eager_bits():
    """The ops traced into one graph by torch.compile (fullgraph: no break)
    run the backend's kernels on the same inputs as eager mode, and keep
    their in-place updates of the snapshot and the ring."""
    be = backend_or_skip("cpp")
    gen = torch.Generator().manual_seed(3)
    sizes = [7, 300, 1]
    bounds = random_bounds(sum(sizes), 3, gen)
    params = [small_integers((n,), gen) + 0.5 * torch.randn(n, generator=gen) for n in sizes]
    snapshot, ring = torch.randn(sum(sizes), generator=gen), torch.randn(5, sum(sizes), generator=gen)
    vec, coeffs = torch.randn(sum(sizes), generator=gen), torch.randn(5, generator=gen, dtype=torch.float64)

    def run(snapshot, ring, slot):
        dots = be.step(params, snapshot, ring, slot, bounds)
        return dots, be.project(ring, vec, bounds), be.combine(ring, coeffs), be.gram(ring)

    compiled = torch.compile(run, fullgraph=True)
    for slot in (2, 4):
        state, eager_state = (snapshot.clone(), ring.clone()), (snapshot.clone(), ring.clone())
        for got, want in zip(compiled(*state, slot), run(*eager_state, slot)):
            assert torch.equal(got, want)
        assert torch.equal(state[0], eager_state[0]) and torch.equal(state[1], eager_state[1])
