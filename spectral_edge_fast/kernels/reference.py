"""The float64 definitions of the engine's ops: every backend is tested
against these. Slow and memory-hungry on purpose: clarity over speed."""
from __future__ import annotations

import numpy as np
import torch

from . import Backend


def _flat(params):
    return torch.cat([p.reshape(-1).double() for p in params]) if len(params) else torch.zeros(0, dtype=torch.float64)


def _group_dots(rows: torch.Tensor, vec: torch.Tensor, bounds) -> torch.Tensor:
    """``out[g, i] = <vec, rows[i]>`` over each group, in float64."""
    rows, vec = rows.double(), vec.double()
    return torch.stack([rows[:, s:e] @ vec[s:e] for s, e in zip(bounds[:-1], bounds[1:])])


class ReferenceBackend(Backend):
    name = "reference"

    def _gather(self, params, snapshot, out):
        theta = _flat(params).to(snapshot.device)
        out.copy_((theta - snapshot.double()).to(out.dtype))
        snapshot.copy_(theta.to(snapshot.dtype))

    def _slide(self, ring, row, slot, bounds):
        a = row.to(ring.dtype)
        before = _group_dots(ring, a, bounds)
        self_dot = _group_dots(a.unsqueeze(0), a, bounds)
        ring[slot] = a
        return torch.cat([before, self_dot], dim=1)

    def _project(self, ring, vec, bounds):
        return _group_dots(ring, vec, bounds)

    def _combine(self, ring, coeffs):
        return (ring.double().T @ coeffs.double().to(ring.device)).float()

    def _gram(self, x):
        x = x.double()
        return x @ x.T

    def _sketch(self, views, segs, groups, out, scratch):
        S = sketch_matrix(segs, groups, [v.numel() for v in views], out.numel())
        out.copy_(S.to(out.device) @ _flat(views).to(out.device))


def sketch_matrix(segs, groups, sizes, rows) -> torch.Tensor:
    """The sketch as an explicit float64 ``[rows, sum(sizes)]`` matrix, one
    column per element of the views (of ``sizes``) in order: ``S[bucket, i]
    = sign`` from the hash, or 1 in the coordinate's own bucket for an
    identity group. For small inputs: it is dense."""
    from .sketch import buckets_and_signs

    offsets = np.concatenate(([0], np.cumsum(sizes)))
    S = np.zeros((rows, int(offsets[-1])))
    table = groups.tolist()
    for view, start, length, key, coord, group in segs.tolist():
        base, m, identity = table[group][:3]
        cols = offsets[view] + start + np.arange(length)
        if identity:
            S[base + coord + np.arange(length), cols] = 1.0
        else:
            bucket, sign = buckets_and_signs(key, coord, length, m)
            S[base + bucket.numpy(), cols] = sign.numpy()
    return torch.from_numpy(S)


def make_backend(name):
    return ReferenceBackend()
