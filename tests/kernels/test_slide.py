import pytest
import torch
from helpers import BACKENDS, assert_dots_close, backend_or_skip, dot_tolerance, random_bounds, small_integers

from spectral_edge_fast.kernels import get_backend

CASES = [(2, 1, 1), (3, 7, 2), (5, 4097, 3), (16, 70001, 4), (64, 3001, 7), (8, 200003, 5)]


def _case(W, P, G, storage, seed):
    gen = torch.Generator().manual_seed(seed)
    ring = torch.randn(W, P, generator=gen).to(storage)
    row = torch.randn(P, generator=gen) * 3.0
    slot = int(torch.randint(0, W, (1,), generator=gen))
    return ring, row, slot, random_bounds(P, G, gen)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("storage", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("W,P,G", CASES)
def test_slide_matches_reference(backend, storage, W, P, G):
    be = backend_or_skip(backend)
    ring, row, slot, bounds = _case(W, P, G, storage, seed=W * 1000 + P)
    ring_ref, before = ring.clone(), ring.clone()
    want = get_backend("reference").slide(ring_ref, row.clone(), slot, bounds)
    got = be.slide(ring, row.clone(), slot, bounds)
    a = row.to(storage)
    tol = torch.cat([dot_tolerance(before, a, bounds), dot_tolerance(a[None], a, bounds)], dim=1)
    assert_dots_close(got, want, tol, f"{backend} slide")
    assert torch.equal(ring, ring_ref), "ring after the slide differs from the reference"


@pytest.mark.parametrize("backend", BACKENDS)
def test_slide_reads_leaving_row_before_overwrite(backend):
    be = backend_or_skip(backend)
    W, P = 4, 5000
    ring = torch.zeros(W, P)
    ring[2] = 1.0  # the leaving row
    row = torch.full((P,), 2.0)
    out = be.slide(ring, row, 2, (0, P))
    assert out[0, 2].item() == 2.0 * P, "a . b must use the leaving row as it was"
    assert out[0, W].item() == 4.0 * P
    assert torch.equal(ring[2], row)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("storage", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_slide_same_bits_twice(backend, storage):
    be = backend_or_skip(backend)
    ring, row, slot, bounds = _case(16, 150001, 3, storage, seed=7)
    first = be.slide(ring.clone(), row, slot, bounds)
    second = be.slide(ring.clone(), row, slot, bounds)
    assert torch.equal(first, second)


@pytest.mark.parametrize("backend", BACKENDS)
def test_slide_nonfinite_row_poisons_only_its_entries(backend):
    be = backend_or_skip(backend)
    ring, row, slot, bounds = _case(4, 1000, 2, torch.float32, seed=3)
    row[10] = float("nan")
    out = be.slide(ring, row, slot, bounds)
    g = max(i for i in range(2) if bounds[i] <= 10 < bounds[i + 1])
    assert torch.isnan(out[g]).all()
    assert torch.isfinite(out[1 - g]).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("storage", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_slide_exact_on_small_integers(backend, storage):
    be = backend_or_skip(backend)
    gen = torch.Generator().manual_seed(5)
    W, P = 6, 100003
    ring, row = small_integers((W, P), gen, storage), small_integers((P,), gen)
    bounds = random_bounds(P, 4, gen)
    want = get_backend("reference").slide(ring.clone(), row, 4, bounds)
    assert torch.equal(be.slide(ring, row, 4, bounds), want)
