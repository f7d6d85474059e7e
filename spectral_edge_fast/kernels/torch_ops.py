"""Vectorised torch fallback: always available, on any device.

Also home of the naive baseline (what a user writes today), which the
benchmarks compare against."""
from __future__ import annotations

import functools

import torch

from . import Backend

CHUNK = 1 << 16  # elements accumulated in float32 before the float64 sum


SUPER = 32  # chunks per batched product: few launches, and a bf16 ring's float32 copy stays small


@functools.lru_cache(maxsize=None)
def _openmp() -> bool:
    """Whether torch runs its CPU ops on OpenMP, where ``torch.set_num_threads``
    takes effect at once (the native backend warns and ignores a second call)."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def _to_float32(out: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """``out.copy_(src)``: a chunk of a bf16 ring into its float32 buffer, on
    the CPU by the calling thread alone. A parallel copy per chunk woke the
    other threads once per chunk; on a busy 2-core machine each wake-up waited
    for a scheduler slice, and the bf16 step at 2 threads took 5 to 10 times
    its float32 step (at 1 thread about the same)."""
    threads = torch.get_num_threads()
    if out.device.type != "cpu" or threads == 1 or not _openmp():
        return out.copy_(src)
    torch.set_num_threads(1)
    try:
        return out.copy_(src)
    finally:
        torch.set_num_threads(threads)


def _chunks(start: int, stop: int):
    return ((s, min(s + CHUNK, stop)) for s in range(start, stop, CHUNK))


def _group_dots(rows: torch.Tensor, vec: torch.Tensor, bounds) -> torch.Tensor:
    """``[G, R]`` float64: float32 mat-vec per chunk, float64 sum of chunks.
    On a GPU whole chunks go ``SUPER`` at a time through one batched product
    (one launch per chunk made a slide of P = 1e8 cost thousands of launches);
    on the CPU one at a time, where the strided batch is slower than the loop.
    ``vec`` is converted to float32 once, and rows of another dtype (a bf16
    ring) into one float32 buffer reused for every chunk (by one thread on
    the CPU, :func:`_to_float32`): converting each chunk into a fresh tensor,
    and ``vec`` once per chunk, made the bf16 step several times slower than
    the float32 one."""
    R = rows.shape[0]
    batch = 1 if rows.device.type == "cpu" else SUPER
    vec = vec.float()
    buf = None if rows.dtype == torch.float32 else torch.empty(R, batch * CHUNK, device=rows.device)
    out = torch.zeros(len(bounds) - 1, R, dtype=torch.float64, device=rows.device)
    for g, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        s = start
        while s < stop:
            n = min((stop - s) // CHUNK, batch)
            e = s + n * CHUNK if n else stop
            block = rows[:, s:e] if buf is None else _to_float32(buf[:, : e - s], rows[:, s:e])
            if n == 0:
                out[g] += (block @ vec[s:e]).double()
                break
            block = block.unflatten(1, (n, CHUNK)).transpose(0, 1)  # [n, R, CHUNK], a view
            parts = torch.bmm(block, vec[s:e].view(n, CHUNK, 1))[..., 0]  # [n, R] float32 sums per chunk
            out[g] += parts.double().sum(dim=0)
            s = e
    return out


class TorchBackend(Backend):
    name = "torch"

    def _gather(self, params, snapshot, out):
        theta = torch.cat([p.reshape(-1) for p in params]).to(snapshot.dtype)
        torch.sub(theta, snapshot, out=snapshot)  # snapshot now holds delta
        out.copy_(snapshot)
        snapshot.copy_(theta)

    def _slide(self, ring, row, slot, bounds):
        a = row.to(ring.dtype)
        a32 = a.float()  # the entering row as stored, converted once
        before = _group_dots(ring, a32, bounds)
        self_dot = _group_dots(a32.unsqueeze(0), a32, bounds)
        ring[slot].copy_(a)
        return torch.cat([before, self_dot], dim=1)

    def _project(self, ring, vec, bounds):
        return _group_dots(ring, vec, bounds)

    def _combine(self, ring, coeffs):
        out = torch.zeros(ring.shape[1], dtype=torch.float32, device=ring.device)
        for i, c in enumerate(coeffs.tolist()):
            out.add_(ring[i].float(), alpha=c)
        return out

    def _gram(self, x):
        w, p = x.shape
        out = torch.zeros(w, w, dtype=torch.float64, device=x.device)
        buf = None if x.dtype == torch.float32 else torch.empty(w, min(CHUNK, p), device=x.device)
        for s, e in _chunks(0, p):
            block = x[:, s:e] if buf is None else _to_float32(buf[:, : e - s], x[:, s:e])
            out += (block @ block.T).double()
        return out


def naive_gram_step(history: list, params, snapshot_flat: torch.Tensor, window: int) -> torch.Tensor:
    """What a user writes today: flatten the parameters with torch.cat, subtract
    the last snapshot, keep a list of the last ``window`` updates, and form the
    Gram with ``X @ X.T`` from scratch every step. Returns the new snapshot."""
    theta = torch.cat([p.detach().reshape(-1).float() for p in params])
    history.append(theta - snapshot_flat)
    del history[:-window]
    x = torch.stack(history)
    naive_gram_step.last_gram = (x @ x.T).double()
    return theta


def make_backend(name):
    return TorchBackend()
