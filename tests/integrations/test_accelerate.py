"""SpectralMonitor under Hugging Face accelerate (needs accelerate)."""
import pytest
import torch

accelerate = pytest.importorskip("accelerate", reason="accelerate (pip install accelerate) is not installed")

from spectral_edge_fast import SpectralMonitor  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_accelerator_state():
    # accelerate keeps its state in process-wide singletons: each test starts from none.
    yield
    accelerate.state.AcceleratorState._reset_state(True)


def _loader(n):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n * 4, 4, generator=gen)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)


def test_monitor_counts_the_real_steps_of_gradient_accumulation(tmp_path):
    accelerator = accelerate.Accelerator(gradient_accumulation_steps=4, cpu=True)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    model, opt, dl = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1), _loader(16))
    monitor = SpectralMonitor(model, opt, window=2, analyze_every=2, sinks=())
    before = [p.detach().clone() for p in model.parameters()]
    updates = []
    for x, y in dl:  # 16 micro-batches
        with accelerator.accumulate(model):
            accelerator.backward(torch.nn.functional.mse_loss(model(x), y))
            opt.step()
            opt.zero_grad()
        if accelerator.sync_gradients:
            after = [p.detach().clone() for p in model.parameters()]
            updates.append(torch.cat([(a - b).double().flatten() for a, b in zip(after, before)]))
            before = after
    assert len(updates) == 4
    assert monitor.steps == 4
    assert [r["step"] for r in monitor.history] == [2, 4]
    # the window holds the real updates: its Gram is theirs, against a float64 reference
    X = torch.stack(updates[-2:])
    ref = torch.linalg.svdvals(X).numpy()
    got = monitor.history[-1]["sigmas"][:2]
    assert got == pytest.approx(ref, rel=1e-5 * X.shape[1] ** 0.5)
    assert monitor.history[-1]["lr"] == pytest.approx(0.1)
    monitor.close()
