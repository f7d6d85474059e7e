"""``gram(x)``: the drop-in fast Gram matrix ``x x^T`` in float64."""
from __future__ import annotations

import torch

from .kernels import backend_status, get_backend

#: The most rows the CUDA extension's Gram kernel takes (csrc/kernels/gram.h,
#: kGramMaxRowsCuda: each thread owns a 4 x 4 block of the Gram); "auto" hands
#: a larger x to the Triton kernel, which tiles pairs of row blocks.
CUDA_GRAM_MAX_ROWS = 64


def gram(x, backend: str = "auto") -> torch.Tensor:
    """W x W float64 Gram of ``x`` of shape (W, P), or of a list of W tensors
    (each flattened), on ``x``'s device. Products accumulate in float32 over
    chunks whose partial sums are added in float64; the result's bits do not
    depend on the thread count. On a CPU with AVX512-BF16, bf16 input is
    multiplied by its dot-product instruction, which counts products and
    partial sums below float32's normal range (1.2e-38) as zero."""
    if isinstance(x, (list, tuple)):
        if not x:
            raise ValueError("gram() needs at least one row")
        x = torch.stack([t.detach().reshape(-1) for t in x])
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"gram() takes a (W, P) tensor or a list of W tensors, got {getattr(x, 'shape', type(x))}")
    if not torch.is_floating_point(x):
        raise TypeError(f"gram() needs a floating-point tensor, got {x.dtype}")
    x = x.detach()
    if not x.is_contiguous():
        x = x.contiguous()
    if x.dtype not in (torch.float32, torch.bfloat16):
        x = x.float() if x.dtype != torch.float64 else x
    if x.dtype == torch.float64:
        return x @ x.T
    if backend == "auto" and x.device.type == "cuda" and x.shape[0] > CUDA_GRAM_MAX_ROWS:
        backend = "triton" if backend_status("triton", x.device)[0] else "torch"
    return get_backend(backend, x.device).gram(x)
