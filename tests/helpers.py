"""Shared test helpers: fresh random data and tolerances that scale with the
length of the reduction."""
from __future__ import annotations

import torch

EPS32 = torch.finfo(torch.float32).eps
# Backend ids: a backend name runs on the CPU; "name@cuda" runs that backend on
# the GPU (ids present only where one is visible), fed the same CPU tensors
# through OnDevice, so every kernel test checks the GPU kernels too.
BACKENDS = ("torch", "cpp", "triton") + (("torch@cuda", "cuda@cuda", "triton@cuda") if torch.cuda.is_available() else ())


def split_id(backend_id: str):
    """``(backend name, device)`` of a backend id."""
    name, _, device = backend_id.partition("@")
    return name, device or "cpu"


def backend_or_skip(backend_id: str):
    import pytest

    from spectral_edge_fast.kernels import backend_status, get_backend

    name, device = split_id(backend_id)
    ok, reason = backend_status(name, device)
    if not ok:
        pytest.skip(f"backend {backend_id} unavailable: {reason}")
    backend = get_backend(name, device)
    return backend if device == "cpu" else OnDevice(backend, device)


class OnDevice:
    """A backend on a GPU, called with CPU tensors: each call copies its tensor
    arguments to the device and back afterwards (the ops update the ring and
    the snapshot in place), and returns its result on the CPU."""

    def __init__(self, backend, device):
        self._backend, self._device = backend, torch.device(device)

    def __getattr__(self, attr):
        fn = getattr(self._backend, attr)
        if not callable(fn):
            return fn

        def call(*args, **kwargs):
            moved = []

            def to_device(x):
                if isinstance(x, torch.Tensor):
                    moved.append((x, x.to(self._device)))
                    return moved[-1][1]
                return type(x)(map(to_device, x)) if isinstance(x, (list, tuple)) else x

            out = fn(*map(to_device, args), **{k: to_device(v) for k, v in kwargs.items()})
            with torch.no_grad():  # a Parameter given to the op is written back as the op wrote it
                for host, dev in moved:
                    host.copy_(dev)
            return out.cpu() if isinstance(out, torch.Tensor) else out

        return call


def random_bounds(P: int, groups: int, gen: torch.Generator):
    """``groups`` contiguous ranges over [0, P), some of them possibly empty."""
    cuts = sorted(torch.randint(0, P + 1, (groups - 1,), generator=gen).tolist())
    return (0, *cuts, P)


def random_params(sizes, gen: torch.Generator, dtype=torch.float32):
    return [torch.randn(n, generator=gen).to(dtype) for n in sizes]


CHUNK_MAX = 1 << 16  # the kernels' contract: float32 sums over at most this many products


def dot_tolerance(x: torch.Tensor, y: torch.Tensor, bounds) -> torch.Tensor:
    """Per group and row, ``2 u sqrt(n) sum_k |x_ik y_k|`` with
    ``n = min(L, CHUNK_MAX)``: the probabilistic bound on float32 summation of
    ``n`` terms (Higham and Mary), summed over chunks in float64. It grows with
    the length L of the reduction up to the chunk length. Single missing or
    doubled terms are caught by the exact small-integer tests instead."""
    x, y = x.double(), y.double()
    rows = []
    for s, e in zip(bounds[:-1], bounds[1:]):
        n = min(max(e - s, 1), CHUNK_MAX)
        rows.append(2 * EPS32 * n**0.5 * (x[:, s:e] * y[s:e]).abs().sum(dim=1))
    return torch.stack(rows) + 1e-30


def small_integers(shape, gen: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    """Integers in [-4, 4]: every product and partial sum below 2**24 is exact
    in float32 (and bf16 holds them exactly), so results must match exactly."""
    return torch.randint(-4, 5, shape, generator=gen).to(dtype)


def assert_dots_close(got: torch.Tensor, want: torch.Tensor, tol: torch.Tensor, what: str = ""):
    assert got.dtype == torch.float64, f"{what}: expected float64, got {got.dtype}"
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert torch.isfinite(got).all(), f"{what}: non-finite entries in {got}"
    err = (got.cpu() - want.cpu()).abs()
    bad = err > tol.cpu()
    assert not bad.any(), f"{what}: max error {err.max():.3e}, worst ratio {(err / tol.cpu()).max():.2f} of tolerance"


class TinyRegressor(torch.nn.Module):
    """A Hugging Face-style model (returns a dict with ``loss``) small enough
    for a Trainer test: one Linear(4, 1) under a mean-squared error."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def forward(self, x, labels=None):
        out = self.net(x)
        return {"loss": torch.nn.functional.mse_loss(out, labels), "logits": out}
