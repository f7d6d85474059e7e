import pytest
import torch
from helpers import BACKENDS, backend_or_skip, random_params

from spectral_edge_fast.kernels import get_backend

LAYOUTS = {
    "odd": [1, 7, 999, 4097],
    "one_huge": [300003],
    "hundreds_tiny": [int(n) for n in torch.randint(1, 40, (300,), generator=torch.Generator().manual_seed(0))],
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("param_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16], ids=["out32", "out16"])
def test_gather_matches_reference(backend, layout, param_dtype, out_dtype):
    be = backend_or_skip(backend)
    gen = torch.Generator().manual_seed(len(LAYOUTS[layout]))
    params = random_params(LAYOUTS[layout], gen, param_dtype)
    P = sum(LAYOUTS[layout])
    snapshot = torch.cat(random_params(LAYOUTS[layout], gen, param_dtype)).float()
    snap_ref = snapshot.clone()
    out = torch.full((P,), float("nan"), dtype=out_dtype)
    out_ref = out.clone()
    get_backend("reference").gather(params, snap_ref, out_ref)
    be.gather(params, snapshot, out)
    assert torch.equal(snapshot, snap_ref), "snapshot must become the parameters, exactly"
    if out_dtype == torch.float32:
        assert torch.equal(out, out_ref), "fp32 difference of fp32 values is correctly rounded: exact"
    else:  # fp32 difference, then bf16: at most one bf16 ulp from the directly rounded value
        ulp = out_ref.float().abs() * 2.0**-7 + 1e-38
        assert ((out.float() - out_ref.float()).abs() <= ulp).all()
