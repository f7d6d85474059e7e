"""pytest-benchmark cases (`pytest benchmarks/ --benchmark-only`); never part
of `make test`. Sizes are small so a laptop runs them in seconds."""
import pytest
import torch

from spectral_edge_fast.bench import split_sizes
from spectral_edge_fast.kernels import backend_status, get_backend
from spectral_edge_fast.kernels.torch_ops import naive_gram_step

P, W, TENSORS = 2_000_000, 16, 100


@pytest.fixture(scope="module")
def params():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(n, generator=gen) for n in split_sizes(P, TENSORS)]


def test_naive_torch(benchmark, params):
    history, snap = [], [torch.cat(params)]
    for _ in range(W):
        snap[0] = naive_gram_step(history, params, snap[0], W)
    benchmark(lambda: naive_gram_step(history, params, snap[0], W))


@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize("storage", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_step(benchmark, params, backend, storage):
    ok, reason = backend_status(backend, "cpu")
    if not ok:
        pytest.skip(reason)
    be = get_backend(backend)
    ring = torch.randn(W, P).to(storage)
    snapshot = torch.cat(params)
    benchmark(lambda: be.step(params, snapshot, ring, 3, (0, P)))
