import pytest
import torch
from helpers import BACKENDS, assert_dots_close, backend_or_skip, dot_tolerance, random_bounds, small_integers

from spectral_edge_fast.kernels import get_backend


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("storage", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("W,P,G", [(2, 3, 1), (7, 12345, 3), (64, 4099, 5), (16, 131075, 2)])
def test_project_matches_reference(backend, storage, W, P, G):
    be = backend_or_skip(backend)
    gen = torch.Generator().manual_seed(W + P)
    ring = torch.randn(W, P, generator=gen).to(storage)
    vec = torch.randn(P, generator=gen)
    bounds = random_bounds(P, G, gen)
    ring_before = ring.clone()
    want = get_backend("reference").project(ring, vec, bounds)
    got = be.project(ring, vec, bounds)
    assert_dots_close(got, want, dot_tolerance(ring, vec, bounds), f"{backend} project")
    assert torch.equal(ring, ring_before), "project must not write the ring"
    assert torch.equal(got, be.project(ring, vec, bounds)), "same bits twice"


@pytest.mark.parametrize("backend", BACKENDS)
def test_project_exact_on_small_integers(backend):
    be = backend_or_skip(backend)
    gen = torch.Generator().manual_seed(9)
    ring, vec = small_integers((9, 77777), gen), small_integers((77777,), gen)
    bounds = random_bounds(77777, 3, gen)
    assert torch.equal(be.project(ring, vec, bounds), get_backend("reference").project(ring, vec, bounds))
