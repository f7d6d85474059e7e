import pytest
import torch
from helpers import BACKENDS, EPS32, backend_or_skip

from spectral_edge_fast.kernels import get_backend


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("storage", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("W,P", [(2, 1), (5, 4097), (64, 3001), (16, 100003)])
def test_combine_matches_reference(backend, storage, W, P):
    be = backend_or_skip(backend)
    gen = torch.Generator().manual_seed(W * P)
    ring = torch.randn(W, P, generator=gen).to(storage)
    coeffs = torch.randn(W, generator=gen, dtype=torch.float64)
    want = get_backend("reference").combine(ring, coeffs).double()
    got = be.combine(ring, coeffs)
    assert got.dtype == torch.float32 and got.shape == (P,)
    terms = ring.double() * coeffs[:, None]
    tol = 4 * EPS32 * (W**0.5) * terms.pow(2).sum(0).sqrt() + EPS32 * want.abs() + 1e-30
    err = (got.double() - want).abs()
    assert (err <= tol).all(), f"max error {err.max():.3e}"
