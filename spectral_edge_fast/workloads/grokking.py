"""Modular-arithmetic grokking: the paper's reference experiment
(docs/math.md#the-reference-experiment).

The setup of the author's sweep: all pairs ``(x, y)`` of residues mod ``p``
(``x, y != 0`` for multiplication), half of them for training, the other
half held out; a 2-layer pre-norm transformer (``d = 128``, 4 heads,
``d_ff = 256``, GELU, no dropout, ~290k parameters at ``p = 97``) reads the
two tokens with learned positions and predicts the result from position 0;
AdamW (lr 1e-3, betas (0.9, 0.98)), batches of 512 drawn with replacement,
gradient clipping at 1.0, weight decay 1.0 (groks) versus 0.0 (does not).

Grokking is the first evaluation at which test accuracy reaches 0.95.

Usage::

    run = GrokkingRun(GrokkingConfig(task="add", weight_decay=1.0))
    monitor = SpectralMonitor(run.model, run.optimizer)
    for _ in range(3000):
        run.train_step()
        if run.step % 50 == 0:
            monitor.log(run.evaluate(), step=run.step)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

Op = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]

#: task name -> (operation on residue tensors, label, operands restricted to non-zero residues)
TASKS: Dict[str, Tuple[Op, str, bool]] = {
    "add": (lambda x, y, p: (x + y) % p, "x+y mod p", False),
    "sub": (lambda x, y, p: (x - y) % p, "x-y mod p", False),
    "mul": (lambda x, y, p: (x * y) % p, "x*y mod p", True),
    "x2+y2": (lambda x, y, p: (x * x + y * y) % p, "x^2+y^2 mod p", False),
}

GROK_ACCURACY = 0.95


@dataclass
class GrokkingConfig:
    """Every knob of one run; the defaults are the author's setup."""

    task: str = "add"
    p: int = 97
    train_fraction: float = 0.5
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 256
    lr: float = 1e-3
    betas: Tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 1.0
    batch_size: int = 512
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        if self.p < 3:
            raise ValueError(f"p must be at least 3, got {self.p}")
        if not 0.0 < self.train_fraction < 1.0:
            raise ValueError(f"train_fraction must lie strictly between 0 and 1, got {self.train_fraction}")
        self.betas = tuple(self.betas)

    def to_dict(self) -> dict:
        return asdict(self)


def make_dataset(task: str, p: int, train_fraction: float, seed: int):
    """All operand pairs, split at random (seeded) into train and test.

    Returns ``(train_x, train_y, test_x, test_y)``: ``x`` is ``[N, 2]`` int64
    operands, ``y`` ``[N]`` the results."""
    op, _, nonzero = TASKS[task]
    lo = 1 if nonzero else 0
    r = torch.arange(lo, p)
    x = torch.cartesian_prod(r, r)
    y = op(x[:, 0], x[:, 1], p)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_train = int(train_fraction * len(x))
    train, test = perm[:n_train], perm[n_train:]
    return x[train], y[train], x[test], y[test]


class ModularTransformer(nn.Module):
    """Token embedding plus learned positions, a pre-norm transformer
    encoder, a final LayerNorm and a linear head read at position 0."""

    def __init__(self, p: int, d_model: int = 128, n_layers: int = 2, n_heads: int = 4, d_ff: int = 256):
        super().__init__()
        self.tok_emb = nn.Embedding(p, d_model)
        self.pos_emb = nn.Parameter(torch.randn(2, d_model) / math.sqrt(d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, d_ff, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        # nested tensors only pay off with padding masks; disabling avoids a warning
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.tok_emb(x) + self.pos_emb)
        return self.head(self.ln(h[:, 0]))


class GrokkingRun:
    """One training run: data, model, optimizer and a seeded batch sampler.

    ``train_step()`` does one optimizer step; ``evaluate()`` measures loss and
    accuracy on the full train and test sets. ``state_dict()`` covers the
    model, the optimizer and the sampler, so a resumed run draws the same
    batches as an uninterrupted one."""

    def __init__(self, config: GrokkingConfig):
        self.config = c = config
        torch.manual_seed(c.seed)
        self.device = torch.device(c.device)
        data = make_dataset(c.task, c.p, c.train_fraction, c.seed)
        self.train_x, self.train_y, self.test_x, self.test_y = (t.to(self.device) for t in data)
        self.model = ModularTransformer(c.p, c.d_model, c.n_layers, c.n_heads, c.d_ff).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=c.lr, betas=c.betas, weight_decay=c.weight_decay)
        self.sampler = torch.Generator(device=self.device).manual_seed(c.seed + 1)
        # probe batches (gradients()) have their own stream so probing never changes training
        self.probe_sampler = torch.Generator(device=self.device).manual_seed(c.seed + 2)
        self.step = 0

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def batch(self):
        idx = torch.randint(len(self.train_x), (self.config.batch_size,), generator=self.sampler, device=self.device)
        return self.train_x[idx], self.train_y[idx]

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.model(x), y)

    def train_step(self) -> torch.Tensor:
        """One optimizer step on a fresh batch; returns the loss (on the
        device, so the caller decides when to read it)."""
        self.model.train()
        loss = self.loss(*self.batch())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.step += 1
        return loss.detach()

    @torch.no_grad()
    def evaluate(self, chunk: int = 4096) -> Dict[str, float]:
        """Loss and accuracy on all train and all test pairs."""
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

    def gradients(self, split: str, batch_size: Optional[int] = None):
        """Leave in ``.grad`` the gradient of the loss on a batch of ``split``
        ("train" or "val"/"test"), for :meth:`SpectralMonitor.observe_gradients`."""
        x, y = (self.train_x, self.train_y) if split == "train" else (self.test_x, self.test_y)
        n = batch_size or self.config.batch_size
        idx = torch.randint(len(x), (n,), generator=self.probe_sampler, device=self.device)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(x[idx], y[idx]).backward()

    def state_dict(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.get_state(),
            "probe_sampler": self.probe_sampler.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.set_state(state["sampler"])
        self.probe_sampler.set_state(state["probe_sampler"])
        self.step = int(state["step"])


def grok_step(metrics, threshold: float = GROK_ACCURACY) -> Optional[int]:
    """The first step whose test accuracy reaches ``threshold``, or None.
    ``metrics``: records with ``step`` and ``test_acc``."""
    for m in metrics:
        if m.get("test_acc") is not None and m["test_acc"] >= threshold:
            return int(m["step"])
    return None
