import pytest
import torch
from helpers import BACKENDS, assert_dots_close, backend_or_skip, dot_tolerance, small_integers, split_id

import spectral_edge_fast as sef


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("W,P", [(2, 1), (3, 65537), (16, 10007), (64, 2053)])
def test_gram_matches_float64(backend, dtype, W, P):
    backend_or_skip(backend)
    name, device = split_id(backend)
    x = torch.randn(W, P, generator=torch.Generator().manual_seed(W + P)).to(dtype)
    want = x.double() @ x.double().T
    got = sef.gram(x.to(device), backend=name)
    tol = torch.stack([dot_tolerance(x, x[i], (0, P))[0] for i in range(W)])
    assert_dots_close(got, want, tol, f"{backend} gram")
    assert torch.equal(got, sef.gram(x.to(device), backend=name)), "same bits twice"


def test_gram_accepts_a_list_of_tensors():
    rows = [torch.randn(3, 5, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    x = torch.stack([r.reshape(-1) for r in rows]).double()
    assert torch.allclose(sef.gram(rows), x @ x.T, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [torch.zeros(3, dtype=torch.int64).reshape(1, 3), torch.zeros(2, 3, 4)])
def test_gram_rejects_bad_input(bad):
    with pytest.raises((TypeError, ValueError)):
        sef.gram(bad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gram_exact_on_small_integers(backend):
    backend_or_skip(backend)
    name, device = split_id(backend)
    x = small_integers((7, 90001), torch.Generator().manual_seed(2))
    assert torch.equal(sef.gram(x.to(device), backend=name).cpu(), x.double() @ x.double().T)


# The cpp kernel's edges: W not a multiple of its 3-row blocks, P not a
# multiple of its 8-lane vectors, of a tile (128 to 2048 columns) or of a span.
ODD_SIZES = [(3, 0), (1, 1), (2, 7), (3, 8193), (4, 9), (5, 2049), (7, 16391), (13, 1031), (31, 4099), (64, 777), (129, 1001)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("W,P", ODD_SIZES)
def test_cpp_gram_odd_sizes(dtype, W, P):
    backend_or_skip("cpp")
    gen = torch.Generator().manual_seed(1000 * W + P)
    x = torch.randn(W, P, generator=gen).to(dtype)
    tol = torch.stack([dot_tolerance(x, x[i], (0, P))[0] for i in range(W)])
    assert_dots_close(sef.gram(x, backend="cpp"), x.double() @ x.double().T, tol, f"cpp gram W={W} P={P}")
    ints = small_integers((W, P), gen, dtype)
    assert torch.equal(sef.gram(ints, backend="cpp"), ints.double() @ ints.double().T), "small integers exactly"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cpp_gram_same_bits_for_any_thread_count(dtype):
    backend_or_skip("cpp")
    x = torch.randn(37, 5 * 8192 + 11, generator=torch.Generator().manual_seed(5)).to(dtype)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(sef.gram(x, backend="cpp"))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(results[0], r) for r in results[1:]), "gram bits depend on the thread count"
