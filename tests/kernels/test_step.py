import pytest
import torch
from helpers import BACKENDS, assert_dots_close, backend_or_skip, dot_tolerance, random_bounds, random_params, small_integers

from spectral_edge_fast.kernels import get_backend

LAYOUTS = {
    "odd": [1, 7, 999, 4097, 65553],
    "one_huge": [250007],
    "hundreds_tiny": [int(n) for n in torch.randint(1, 40, (300,), generator=torch.Generator().manual_seed(1))],
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("storage", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("param_dtype", [torch.float32, torch.bfloat16], ids=["p32", "p16"])
@pytest.mark.parametrize("W", [2, 16])
def test_step_matches_reference(backend, layout, storage, param_dtype, W):
    be = backend_or_skip(backend)
    sizes = LAYOUTS[layout]
    P = sum(sizes)
    gen = torch.Generator().manual_seed(P + W)
    bounds = random_bounds(P, 4, gen)
    snapshot = torch.cat(random_params(sizes, gen, param_dtype)).float()
    ring = torch.randn(W, P, generator=gen).to(storage)
    ref = get_backend("reference")
    state = (snapshot.clone(), ring.clone())
    state_ref = (snapshot.clone(), ring.clone())
    for k in range(3):  # consecutive steps: the snapshot carries over
        params = [(t.float() + 0.01 * torch.randn(t.shape, generator=gen)).to(param_dtype) for t in random_params(sizes, gen)]
        slot = k % W
        before = state_ref[1].clone()
        want = ref.step(params, *state_ref, slot, bounds)
        got = be.step(params, *state, slot, bounds)
        a = state_ref[1][slot]
        tol = torch.cat([dot_tolerance(before, a, bounds), dot_tolerance(a[None], a, bounds)], dim=1)
        assert_dots_close(got, want, tol, f"{backend} step {k}")
        assert torch.equal(state[0], state_ref[0]), "snapshot differs"
        assert torch.equal(state[1], state_ref[1]), "ring differs"


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_same_bits_twice(backend):
    be = backend_or_skip(backend)
    gen = torch.Generator().manual_seed(11)
    sizes = [5, 70000, 33, 100001]
    params = random_params(sizes, gen)
    snapshot = torch.randn(sum(sizes), generator=gen)
    ring = torch.randn(8, sum(sizes), generator=gen)
    bounds = (0, 70005, sum(sizes))
    first = be.step(params, snapshot.clone(), ring.clone(), 3, bounds)
    second = be.step(params, snapshot.clone(), ring.clone(), 3, bounds)
    assert torch.equal(first, second)


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_exact_on_small_integers(backend):
    be = backend_or_skip(backend)
    gen = torch.Generator().manual_seed(13)
    sizes = [3, 40000, 1, 25001]
    P = sum(sizes)
    params = [small_integers((n,), gen) for n in sizes]
    snapshot, ring = small_integers((P,), gen), small_integers((5, P), gen)
    bounds = random_bounds(P, 3, gen)
    want = get_backend("reference").step(params, snapshot.clone(), ring.clone(), 1, bounds)
    assert torch.equal(be.step(params, snapshot, ring, 1, bounds), want)


def test_torch_step_converts_a_bf16_ring_once():
    """The torch fallback converts each bf16 ring element and the entering row
    to float32 once per step (converting the row again per chunk and per dot
    product made its bf16 step several times slower than its float32 one)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountConversions(TorchDispatchMode):
        elements = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
                src = args[1] if func is torch.ops.aten.copy_.default else args[0]
                if src.dtype == torch.bfloat16 and out.dtype == torch.float32:
                    self.elements += src.numel()
            return out

    W, sizes = 4, [70000, 3, 200001]
    P = sum(sizes)
    gen = torch.Generator().manual_seed(17)
    params, snapshot = random_params(sizes, gen), torch.randn(P, generator=gen)
    ring = torch.randn(W, P, generator=gen).to(torch.bfloat16)
    with CountConversions() as count:
        get_backend("torch").step_checked_once(params, snapshot, ring, 1, (0, 70002, P))
    assert count.elements == (W + 1) * P, f"{count.elements} bf16 elements converted, {(W + 1) * P} needed"
