"""A small GPT trained from scratch on byte-level text that every install
has: the Python standard library's own source (``reproduce lm``).

The corpus is every ``*.py`` file under ``sysconfig.get_paths()["stdlib"]``
(``site-packages`` and ``dist-packages`` left out), read in sorted order of
their relative paths; every tenth file of that order is held out for
validation, the rest is training text, so the split is fixed for a given
Python version (another version's stdlib is another corpus). Tokens are the
bytes themselves (vocabulary 256).

The model is a pre-norm GPT (learned positions, causal self-attention, GELU
MLP, final LayerNorm, untied head). :meth:`LMConfig.gpt2_124m` sizes its
blocks like GPT-2 124M (12 layers, d 768, 12 heads, context 1024; with 256
byte tokens instead of 50257 it has 86M parameters). Training: AdamW with a
linear warm-up, random windows of the training text drawn with a seeded
generator, gradient clipping at 1.0. Validation loss is the mean over a fixed
set of windows of the held-out text.

Usage::

    run = LMRun(LMConfig())
    monitor = SpectralMonitor(run.model, run.optimizer, every=10, analyze_every=50)
    for _ in range(3000):
        run.train_step()
        if run.step % 50 == 0:
            monitor.log(run.evaluate(), step=run.step)
"""
from __future__ import annotations

import functools
import math
import os
import sysconfig
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .grokking import ResumableRun, TrainingConfig

VOCAB = 256
#: every VAL_EVERY-th file of the sorted stdlib goes to validation
VAL_EVERY = 10
_SKIP_DIRS = ("site-packages", "dist-packages", "__pycache__")


@functools.lru_cache(maxsize=2)
def stdlib_corpus(root: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)`` uint8 tensors of the stdlib's Python source.

    Raises:
        RuntimeError: no ``.py`` file under ``root`` (a stdlib without its
            sources), naming the directory.
    """
    root = root or sysconfig.get_paths()["stdlib"]
    files = []
    for d, dirs, names in os.walk(root):
        dirs[:] = [x for x in dirs if x not in _SKIP_DIRS]
        files += [os.path.relpath(os.path.join(d, f), root) for f in names if f.endswith(".py")]
    if not files:
        raise RuntimeError(f"no .py files under {root}: the LM workload reads the standard library's source; "
                           "install Python with its sources or pass root=")
    parts: Dict[str, list] = {"train": [], "val": []}
    for i, rel in enumerate(sorted(files)):
        with open(os.path.join(root, rel), "rb") as f:
            parts["val" if i % VAL_EVERY == VAL_EVERY - 1 else "train"].append(f.read() + b"\n")
    return tuple(torch.frombuffer(bytearray(b"".join(parts[s])), dtype=torch.uint8) for s in ("train", "val"))


@dataclass
class LMConfig(TrainingConfig):
    """Every knob of one run; the defaults: a 4-layer, d 128 GPT (0.87M
    parameters), context 128, batches of 16."""

    context: int = 128
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    betas: Tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    warmup: int = 100
    batch_size: int = 16
    eval_batches: int = 8

    def __post_init__(self):
        super().__post_init__()
        for name in ("context", "d_model", "n_layers", "n_heads", "batch_size", "eval_batches"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")

    @classmethod
    def gpt2_124m(cls, **overrides) -> "LMConfig":
        """GPT-2 124M's blocks: 12 layers, d 768, 12 heads, context 1024 (a GPU run)."""
        base = dict(context=1024, d_model=768, n_layers=12, n_heads=12, lr=6e-4, warmup=200, batch_size=16)
        return cls(**{**base, **overrides})


class Block(nn.Module):
    """Pre-norm transformer block with causal self-attention."""

    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, d))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Byte embedding plus learned positions, ``n_layers`` blocks (``h.0``,
    ``h.1``...: one monitor group each), final LayerNorm, linear head."""

    def __init__(self, context: int, d_model: int, n_layers: int, n_heads: int):
        super().__init__()
        self.tok_emb = nn.Embedding(VOCAB, d_model)
        self.pos_emb = nn.Parameter(torch.zeros(context, d_model))
        self.h = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, VOCAB)
        self.apply(self._init)
        nn.init.normal_(self.pos_emb, std=0.02)
        for name, p in self.named_parameters():  # GPT-2's scaling of the residual projections
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(idx) + self.pos_emb[: idx.shape[1]]
        for block in self.h:
            x = block(x)
        return self.head(self.ln(x))


class LMRun(ResumableRun):
    """One training run: corpus, model, optimizer and seeded samplers.

    ``train_step()`` does one optimizer step; ``evaluate()`` gives the loss
    on fixed windows of the training and the validation text.
    ``state_dict()`` covers the model, the optimizer and the samplers."""

    def __init__(self, config: LMConfig, corpus: Optional[Tuple[torch.Tensor, torch.Tensor]] = None):
        self.config = c = config
        torch.manual_seed(c.seed)
        self.device = torch.device(c.device)
        train, val = corpus if corpus is not None else stdlib_corpus()
        for split, text in (("train", train), ("val", val)):
            if len(text) <= c.context:
                raise ValueError(f"the {split} text has {len(text)} bytes, fewer than context + 1 = {c.context + 1}")
        self.train_text, self.val_text = train.to(self.device), val.to(self.device)
        self.model = GPT(c.context, c.d_model, c.n_layers, c.n_heads).to(self.device)
        self.optimizer = c.adamw(self.model.parameters())
        self.sampler = torch.Generator(device="cpu").manual_seed(c.seed + 1)
        self.probe_sampler = torch.Generator(device="cpu").manual_seed(c.seed + 2)
        # fixed evaluation windows: the same text at every evaluation
        fixed = torch.Generator(device="cpu").manual_seed(c.seed + 3)
        n = c.eval_batches * c.batch_size
        self.eval_starts = {s: torch.randint(len(t) - c.context, (n,), generator=fixed)
                            for s, t in (("train", train), ("val", val))}
        self.step = 0

    def lr_at(self, step: int) -> float:
        """Linear warm-up to ``lr`` over ``warmup`` steps, then constant."""
        c = self.config
        return c.lr * min(1.0, (step + 1) / c.warmup) if c.warmup else c.lr

    def _windows(self, text: torch.Tensor, starts: torch.Tensor):
        idx = starts.to(self.device)[:, None] + torch.arange(self.config.context + 1, device=self.device)
        chunk = text[idx].long()
        return chunk[:, :-1], chunk[:, 1:]

    def batch(self, split: str = "train", generator: Optional[torch.Generator] = None):
        text = self.train_text if split == "train" else self.val_text
        starts = torch.randint(len(text) - self.config.context, (self.config.batch_size,),
                               generator=generator or self.sampler)
        return self._windows(text, starts)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.model(x).flatten(0, 1), y.flatten())

    def train_step(self) -> torch.Tensor:
        """One optimizer step on a fresh batch; returns the loss (on the
        device, so the caller decides when to read it)."""
        self.model.train()
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr_at(self.step)
        loss = self.loss(*self.batch())
        return self.optimize(loss)

    @torch.no_grad()
    def evaluate(self) -> Dict[str, float]:
        """Mean loss (nats per byte) on the fixed train and val windows."""
        self.model.eval()
        c, out = self.config, {}
        for split, text in (("train", self.train_text), ("val", self.val_text)):
            total = torch.zeros((), device=self.device)
            for starts in self.eval_starts[split].split(c.batch_size):
                total += self.loss(*self._windows(text, starts))
            out[f"{split}_loss"] = total.item() / c.eval_batches
        return out

    def gradients(self, split: str) -> None:
        """Leave in ``.grad`` the gradient of the loss on a batch of
        ``split`` ("train" or "val"), drawn from the probe stream so probing
        never changes training."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(*self.batch("train" if split == "train" else "val", self.probe_sampler)).backward()
