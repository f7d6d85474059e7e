"""Dyck-1 grokking: is a bracket string balanced? (docs/reproduction.md#dyck)

The paper's Section 27 trains a 2-layer transformer of ~150K parameters on
"the Dyck-1 language" and calls grokking the first evaluation at which test
accuracy exceeds 0.95; it does not say which Dyck-1 task, nor its data or
initialisation. Here it is recognition: every string has ``length``
brackets, as many ``(`` as ``)``, and the model says whether it is balanced
(no prefix closes more than it opened). Half the strings are balanced, drawn
uniformly from all balanced strings; the other half are drawn uniformly from
the unbalanced strings with equal counts that open with ``(`` and close with
``)``, as every balanced string does: neither counting nor the ends give
anything away, only the prefix rule decides. ``n_train`` strings are for
training, ``n_test`` others for testing.

The model: a pre-norm causal transformer (``d = 64``, 4 heads,
``d_ff = 448``, 2 layers, ~150K parameters) that reads a start token and the
brackets with learned positions and classifies from the last position
(which sees the whole string). AdamW (lr 1e-3, betas (0.9, 0.98)), batches
of 64 drawn with replacement, gradient clipping at 1.0, weight decay 1.0
versus 0.

Why these defaults: with PyTorch's initialisation this model generalises as
soon as it fits its training set (48 to 1000 strings tried; with or without
weight decay, test accuracy passes 0.95 within 150 steps), so nothing
groks. Its weights start ``init_scale = 4`` times larger instead (the
large-norm start that makes a network memorise first, as in Liu et al.'s
Omnigrok), on 200 training strings: it fits them while its test accuracy
stays near 0.8, and only weight decay, shrinking the weights, brings it to
the rule (seed 42: train accuracy 0.99 at step 850 with test accuracy 0.78,
test accuracy above 0.95 at step 2950; without weight decay train accuracy
0.9-0.99 and test accuracy 0.73-0.80 up to step 6000).

Usage::

    run = DyckRun(DyckConfig(weight_decay=1.0, seed=42))
    for _ in range(6000):
        run.train_step()
        if run.step % 100 == 0:
            print(run.step, run.evaluate())
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

from .grokking import GROK_ACCURACY, TrainingConfig, TrainingRun, grok_step

#: token ids: the start token and the two brackets
BOS, OPEN, CLOSE = 0, 1, 2
VOCAB = 3


@dataclass
class DyckConfig(TrainingConfig):
    """Every knob of one run."""

    length: int = 24
    n_train: int = 200
    n_test: int = 1000
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 448
    #: every parameter starts this many times PyTorch's initialisation (the module docstring says why)
    init_scale: float = 4.0
    batch_size: int = 64

    def __post_init__(self):
        super().__post_init__()
        if self.length < 4 or self.length % 2:
            raise ValueError(f"length must be even and at least 4, got {self.length}")
        if self.n_train < 2 or self.n_test < 2:
            raise ValueError(f"n_train and n_test must be at least 2, got {self.n_train} and {self.n_test}")
        if not self.init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {self.init_scale}")


def is_balanced(brackets) -> bool:
    """Whether a string of ``OPEN``/``CLOSE`` ids (or ``(``/``)`` characters)
    is a Dyck-1 word: no prefix closes more than it opened, and all close."""
    depth = 0
    for b in brackets:
        depth += 1 if b in (OPEN, "(") else -1
        if depth < 0:
            return False
    return depth == 0


def _balanced(n: int, length: int, g: torch.Generator) -> torch.Tensor:
    """``n`` balanced strings, uniform over all balanced strings of ``length``.

    Cycle lemma: of the ``length + 1`` rotations of an arrangement of
    ``length/2 + 1`` opens and ``length/2`` closes, exactly one has every
    prefix above zero (the one starting after the last minimum of the prefix
    sums), and it is an open followed by a balanced string; each balanced
    string arises from exactly ``length + 1`` arrangements, so a uniform
    arrangement gives a uniform balanced string."""
    m = length + 1
    steps = torch.where(torch.rand(n, m, generator=g).argsort(1) <= length // 2, 1, -1)
    prefix = torch.cat([torch.zeros(n, 1, dtype=steps.dtype), steps.cumsum(1)[:, :-1]], 1)  # S_0 .. S_{m-1}
    start = m - 1 - prefix.flip(1).argmin(1)  # argmin takes the first minimum: flipped, the last
    rotated = steps.gather(1, (start[:, None] + torch.arange(m)) % m)
    return rotated[:, 1:]


def _unbalanced(n: int, length: int, g: torch.Generator) -> torch.Tensor:
    """``n`` strings with ``length/2`` of each bracket, ``(`` first, ``)``
    last and some prefix below zero, uniform over such strings (rejection
    from uniform arrangements)."""
    half = length // 2
    out = []
    while sum(len(o) for o in out) < n:
        steps = torch.where(torch.rand(4 * n, length, generator=g).argsort(1) < half, 1, -1)
        out.append(steps[(steps.cumsum(1) < 0).any(1) & (steps[:, 0] > 0) & (steps[:, -1] < 0)])
    return torch.cat(out)[:n]


def make_dataset(length: int, n_train: int, n_test: int, seed: int):
    """Disjoint train and test sets of distinct strings, half balanced each.

    Returns ``(train_x, train_y, test_x, test_y)``: ``x`` is ``[N, length + 1]``
    token ids (``BOS`` first), ``y`` ``[N]`` 1 for balanced, 0 otherwise.

    Raises:
        ValueError: there are not enough distinct strings of ``length``.
    """
    half = length // 2
    n_pos = math.comb(length, half) // (half + 1)
    n_neg = math.comb(length - 2, half - 1) - n_pos  # "(" first, ")" last, as every balanced string
    need = (n_train + n_test + 1) // 2 + 1
    if need > min(n_pos, n_neg) // 2:
        raise ValueError(f"length {length} has {n_pos} balanced strings and {n_neg} unbalanced ones that open with "
                         f"( and close with ); n_train + n_test = {n_train + n_test} needs at least twice as many of "
                         "each: raise length or lower n_train/n_test")
    g = torch.Generator().manual_seed(seed)
    sets = []
    for kind, draw in (("balanced", _balanced), ("unbalanced", _unbalanced)):
        rows = torch.unique(draw(4 * need, length, g), dim=0)  # unique sorts: shuffle again below
        if len(rows) < need:
            raise ValueError(f"length {length}: {len(rows)} distinct {kind} strings in {4 * need} draws, "
                             f"{need} needed: raise length or lower n_train/n_test")
        sets.append(rows[torch.randperm(len(rows), generator=g)][:need])
    pos, neg = sets
    n_tr_pos, n_te_pos = n_train // 2, n_test // 2
    train = torch.cat([pos[:n_tr_pos], neg[:n_train - n_tr_pos]])
    test = torch.cat([pos[n_tr_pos:n_tr_pos + n_te_pos], neg[n_train - n_tr_pos:n_train - n_tr_pos + n_test - n_te_pos]])
    out = []
    for rows, n_p in ((train, n_tr_pos), (test, n_te_pos)):
        y = torch.cat([torch.ones(n_p, dtype=torch.long), torch.zeros(len(rows) - n_p, dtype=torch.long)])
        perm = torch.randperm(len(rows), generator=g)
        tokens = torch.where(rows[perm] > 0, OPEN, CLOSE)
        out += [torch.cat([torch.full((len(rows), 1), BOS), tokens], 1), y[perm]]
    return tuple(out)


class DyckTransformer(nn.Module):
    """Token embedding plus learned positions, a pre-norm causal transformer
    encoder, a final LayerNorm and a 2-way head read at the last position;
    every parameter ``init_scale`` times its usual initialisation."""

    def __init__(self, length: int, d_model: int = 64, n_layers: int = 2, n_heads: int = 4, d_ff: int = 448,
                 init_scale: float = 1.0):
        super().__init__()
        self.tok_emb = nn.Embedding(VOCAB, d_model)
        self.pos_emb = nn.Parameter(torch.randn(length + 1, d_model) / math.sqrt(d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, d_ff, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, 2)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(length + 1), persistent=False)
        with torch.no_grad():
            for p in self.parameters():
                p.mul_(init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits read at the last position: the last layer is computed
        there only (its queries, attention output and feed-forward elsewhere
        are never read: about 40% of the model's work), equal to the whole
        encoder's."""
        n = x.shape[1]
        h = self.tok_emb(x) + self.pos_emb[:n]
        for layer in self.encoder.layers[:-1]:
            h = layer(h, src_mask=self.mask[:n, :n], is_causal=True)
        last = self.encoder.layers[-1]  # pre-norm, no dropout: x + attn(norm1 x), then + ff(norm2 x)
        kv = last.norm1(h)
        h = h[:, -1] + last.self_attn(kv[:, -1:], kv, kv, need_weights=False)[0][:, 0]
        h = h + last.linear2(last.activation(last.linear1(last.norm2(h))))
        return self.head(self.ln(h))


class DyckRun(TrainingRun):
    """One training run: data, model, optimizer and a seeded batch sampler
    (the interface of :class:`~spectral_edge_fast.workloads.grokking.GrokkingRun`:
    ``train_step()``, ``evaluate()``, ``model``, ``optimizer``, ``step``)."""

    def __init__(self, config: DyckConfig):
        self.config = c = config
        torch.manual_seed(c.seed)
        self.device = torch.device(c.device)
        data = make_dataset(c.length, c.n_train, c.n_test, c.seed)
        self.train_x, self.train_y, self.test_x, self.test_y = (t.to(self.device) for t in data)
        self.model = DyckTransformer(c.length, c.d_model, c.n_layers, c.n_heads, c.d_ff, c.init_scale).to(self.device)
        self.optimizer = c.adamw(self.model.parameters())
        self.sampler = torch.Generator(device=self.device).manual_seed(c.seed + 1)
        self.step = 0

    def train_step(self) -> torch.Tensor:
        """One optimizer step on a fresh batch; returns the loss (on the device)."""
        self.model.train()
        idx = torch.randint(len(self.train_x), (self.config.batch_size,), generator=self.sampler, device=self.device)
        loss = F.cross_entropy(self.model(self.train_x[idx]), self.train_y[idx])
        return self.optimize(loss)

    @torch.no_grad()
    def evaluate(self, chunk: int = 4096) -> Dict[str, float]:
        """Loss and accuracy on the whole train and test sets."""
        self.model.eval()
        out = {}
        for split, (x, y) in (("train", (self.train_x, self.train_y)), ("test", (self.test_x, self.test_y))):
            loss_sum = torch.zeros((), device=self.device)
            correct = torch.zeros((), device=self.device, dtype=torch.long)
            for i in range(0, len(x), chunk):
                logits = self.model(x[i : i + chunk])
                loss_sum += F.cross_entropy(logits, y[i : i + chunk], reduction="sum")
                correct += (logits.argmax(-1) == y[i : i + chunk]).sum()
            out[f"{split}_loss"] = loss_sum.item() / len(x)
            out[f"{split}_acc"] = correct.item() / len(x)
        return out


__all__ = ["BOS", "CLOSE", "DyckConfig", "DyckRun", "DyckTransformer", "GROK_ACCURACY", "OPEN", "grok_step",
           "is_balanced", "make_dataset"]
