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


def test_cuda_row_limit_is_the_kernels():
    """gram's "auto" hands more rows than the CUDA kernel takes to Triton: its
    limit must be the one compiled into the kernel."""
    import pathlib
    import re

    from spectral_edge_fast.gram import CUDA_GRAM_MAX_ROWS

    header = (pathlib.Path(__file__).resolve().parents[2] / "csrc" / "kernels" / "gram.h").read_text()
    assert int(re.search(r"kGramMaxRowsCuda = (\d+);", header).group(1)) == CUDA_GRAM_MAX_ROWS


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_auto_gram_on_cuda_takes_any_number_of_rows(dtype):
    from spectral_edge_fast.gram import CUDA_GRAM_MAX_ROWS

    W, P = 2 * CUDA_GRAM_MAX_ROWS, 4099
    x = torch.randn(W, P, generator=torch.Generator().manual_seed(W)).to(dtype)
    want = x.double() @ x.double().T
    tol = torch.stack([dot_tolerance(x, x[i], (0, P))[0] for i in range(W)])
    assert_dots_close(sef.gram(x.cuda()).cpu(), want, tol, "auto gram, W = 128")


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


# Sized for two threads (at least 2^28 products W (W + 1) / 2 P, csrc/kernels/gram.cpp):
# (128, 6 spans): threads share spans; (260, 8000): one span, whose row blocks two threads share.
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("W,P", [(128, 5 * 8192 + 11), (260, 8000)])
def test_cpp_gram_same_bits_for_any_thread_count(dtype, W, P):
    backend_or_skip("cpp")
    x = torch.randn(W, P, generator=torch.Generator().manual_seed(5)).to(dtype)
    tol = torch.stack([dot_tolerance(x, x[i], (0, P))[0] for i in range(W)])
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(sef.gram(x, backend="cpp"))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(results[0], r) for r in results[1:]), "gram bits depend on the thread count"
    assert_dots_close(results[0], x.double() @ x.double().T, tol, f"cpp gram W={W} P={P}")


PARTIALS_BOUND = 64 << 20  # bytes of float64 partials the cpp gram may hold (csrc/kernels/gram.h)


@pytest.mark.parametrize("W", [1, 16, 128, 1000, 4096, 50000])
@pytest.mark.parametrize("P", [1, 8193, 10**7, 10**10])
def test_cpp_gram_partials_are_bounded(W, P):
    backend_or_skip("cpp")
    from spectral_edge_fast import _C

    spans = _C.gram_spans(W, P)
    assert 1 <= spans <= -(-P // 8192)
    assert spans * W * W * 8 <= max(PARTIALS_BOUND, W * W * 8), f"W={W} P={P}: {spans} spans of {W}^2 doubles"


def test_cpp_gram_allocates_the_bounded_partials():
    backend_or_skip("cpp")
    from torch.profiler import ProfilerActivity, profile

    from spectral_edge_fast import _C

    W, P = 40, 3 * 8192 + 5
    x = torch.randn(W, P, generator=torch.Generator().manual_seed(3))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        sef.gram(x, backend="cpp")
    largest = max(e.cpu_memory_usage for e in prof.events() if e.name == "aten::empty")
    assert largest == _C.gram_spans(W, P) * W * W * 8, "the partials are the largest buffer gram allocates"


def test_triton_gram_partials_are_bounded(monkeypatch):
    """With room for two W x W partials, 11 chunks go in two spans of 6 chunks
    (float32 within a chunk, float64 across), exactly, in no more memory."""
    backend_or_skip("triton")
    from torch.profiler import ProfilerActivity, profile

    from spectral_edge_fast.kernels import triton_ops

    W, P = 5, 3001
    bound = 2 * W * W * 8
    monkeypatch.setattr(triton_ops, "GRAM_PARTIAL_BYTES", bound)
    x = small_integers((W, P), torch.Generator().manual_seed(9))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        got = triton_ops.TritonBackend(chunk=300).gram(x)
    assert torch.equal(got, x.double() @ x.double().T)
    largest = max(e.cpu_memory_usage for e in prof.events() if e.name == "aten::empty")
    assert largest <= bound, f"gram allocated {largest} bytes, the partials may take {bound}"
