"""Modular-arithmetic grokking: the paper's reference experiment
(docs/math.md#the-reference-experiment).

The setup of the author's sweep: all pairs ``(x, y)`` of residues mod ``p``
(``x, y != 0`` for multiplication), half of them for training, the other
half held out; a 2-layer pre-norm transformer (``d = 128``, 4 heads,
``d_ff = 256``, GELU, no dropout, ~290k parameters at ``p = 97``) reads the
two tokens with learned positions and predicts the result from position 0;
AdamW (lr 1e-3, betas (0.9, 0.98)), batches of 512 drawn with replacement,
gradient clipping at 1.0, weight decay 1.0 (groks) versus 0.0 (does not).

Two layers are the default because the author's sweep script uses them (the
paper's text speaks of one layer and 400K parameters); ``n_layers`` sets the
depth. ``optimizer="muon"`` trains the encoder layers' 2-D weights with Muon
and the rest (embeddings, head, norms, biases) with AdamW (:class:`MuonAdamW`).
A comma-joined ``task`` (``"add,mul"``) trains one model on several tasks: each
input starts with a task token and each task has its own head, ~315K
parameters for three tasks at ``p = 97``.

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
from typing import Callable, Dict, Optional, Sequence, Tuple

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
OPTIMIZERS = ("adamw", "muon")


@dataclass
class TrainingConfig:
    """The knobs every workload's run shares: AdamW's (``lr``, ``betas``,
    ``weight_decay``), the batch, gradient clipping, the seed and the device.
    Each workload's config extends it and changes only the defaults that
    differ."""

    lr: float = 1e-3
    betas: Tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 1.0
    batch_size: int = 512
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if not (self.lr > 0 and len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)):
            raise ValueError(f"lr must be > 0 and betas two numbers in [0, 1), got lr={self.lr}, betas={self.betas}")
        if not (self.weight_decay >= 0 and self.grad_clip > 0 and int(self.batch_size) >= 1):
            raise ValueError(f"weight_decay must be >= 0, grad_clip > 0 and batch_size >= 1, got {self.weight_decay}, "
                             f"{self.grad_clip} and {self.batch_size}")

    def to_dict(self) -> dict:
        return asdict(self)

    def adamw(self, params) -> torch.optim.AdamW:
        return torch.optim.AdamW(params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)


@dataclass
class GrokkingConfig(TrainingConfig):
    """Every knob of one run; the defaults are the author's setup.

    ``task`` is one name of :data:`TASKS` or several joined by commas (one
    model for all). ``optimizer``: ``"adamw"`` (``lr``, ``betas``,
    ``weight_decay`` for every parameter) or ``"muon"``: Muon (``muon_lr``,
    ``muon_momentum``, ``muon_weight_decay``; None gives the AdamW part's
    shrinkage per step, ``weight_decay * lr / muon_lr``) on the encoder
    layers' 2-D weights, Newton–Schulz in ``muon_ns_dtype``, AdamW on the
    rest. "float32" is fast on any CPU; torch's "bfloat16" is as fast only
    where the CPU multiplies bfloat16 matrices natively (AVX512-BF16: 10 ms
    against 12 ms for the eight matrices here; without it a step was
    reported to take about 1.5 s against 85 ms)."""

    task: str = "add"
    p: int = 97
    train_fraction: float = 0.5
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 256
    optimizer: str = "adamw"
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    muon_weight_decay: Optional[float] = None
    muon_ns_dtype: str = "float32"

    def __post_init__(self):
        super().__post_init__()
        for task in self.tasks:
            if task not in TASKS:
                raise ValueError(f"unknown task {task!r} in task={self.task!r}; choose one of {', '.join(TASKS)}, or "
                                 "several joined by commas")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"task={self.task!r} names a task twice")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.muon_ns_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"muon_ns_dtype must be 'float32' or 'bfloat16', got {self.muon_ns_dtype!r}")
        if self.p < 3:
            raise ValueError(f"p must be at least 3, got {self.p}")
        if not 0.0 < self.train_fraction < 1.0:
            raise ValueError(f"train_fraction must lie strictly between 0 and 1, got {self.train_fraction}")

    @property
    def tasks(self) -> Tuple[str, ...]:
        return tuple(t.strip() for t in self.task.split(","))


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


def make_multitask_dataset(tasks: Sequence[str], p: int, train_fraction: float, seed: int):
    """Each task's table split as :func:`make_dataset` splits it, its inputs
    prefixed with the task's token ``p + i``; the tasks' rows in order.

    Returns ``(train_x, train_y, test_x, test_y)`` with ``x`` of shape
    ``[N, 3]``."""
    parts = []
    for i, task in enumerate(tasks):
        tx, ty, vx, vy = make_dataset(task, p, train_fraction, seed)
        parts.append([torch.cat([torch.full((len(x), 1), p + i), x], 1) if j % 2 == 0 else x
                      for j, x in enumerate((tx, ty, vx, vy))])
    return tuple(torch.cat(column) for column in zip(*parts))


class ModularTransformer(nn.Module):
    """Token embedding plus learned positions, a pre-norm transformer
    encoder, a final LayerNorm and a linear head read at position 0.

    With ``n_tasks > 1`` an input is ``(task token p + i, x, y)`` and task
    ``i`` has its own head, ``heads[i]``."""

    def __init__(self, p: int, d_model: int = 128, n_layers: int = 2, n_heads: int = 4, d_ff: int = 256,
                 n_tasks: int = 1):
        super().__init__()
        self.p = p
        multi = n_tasks > 1
        self.tok_emb = nn.Embedding(p + (n_tasks if multi else 0), d_model)
        self.pos_emb = nn.Parameter(torch.randn(3 if multi else 2, d_model) / math.sqrt(d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, d_ff, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        # nested tensors only pay off with padding masks; disabling avoids a warning
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(d_model)
        if multi:
            self.heads = nn.ModuleList(nn.Linear(d_model, p) for _ in range(n_tasks))
        else:
            self.head = nn.Linear(d_model, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.tok_emb(x) + self.pos_emb)
        z = self.ln(h[:, 0])
        if not hasattr(self, "heads"):
            return self.head(z)
        logits = torch.stack([head(z) for head in self.heads], 1)
        return logits[torch.arange(len(x), device=x.device), x[:, 0] - self.p]


def newton_schulz(g: torch.Tensor, coefficients: Tuple[float, float, float] = (3.4445, -4.775, 2.0315),
                  steps: int = 5, eps: float = 1e-7, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Muon's orthogonalisation of a matrix, ``torch.optim.Muon``'s quintic
    iteration computed in ``dtype`` (torch's is bfloat16)."""
    a, b, c = coefficients
    x = g.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.T if tall else x).to(g.dtype)


class MuonAdamW(torch.optim.Optimizer):
    """Muon on the parameter groups marked ``muon=True`` (2-D weights), AdamW
    on the others, as one optimizer (one step, one step hook for a monitor).

    A Muon group steps as ``torch.optim.Muon`` does (Nesterov momentum,
    :func:`newton_schulz` in ``ns_dtype``, decoupled weight decay
    ``lr * weight_decay``, the step scaled by ``sqrt(max(1, rows / cols))``);
    an AdamW group as ``torch.optim.AdamW``."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.95, ns_dtype: torch.dtype = torch.float32):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, ns_dtype=ns_dtype, muon=False))
        for group in self.param_groups:
            if group["muon"] and any(p.ndim != 2 for p in group["params"]):
                raise ValueError("MuonAdamW: a muon=True group holds a parameter that is not a 2-D matrix")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in (p for p in group["params"] if p.grad is not None):
                state, grad = self.state[p], p.grad
                p.mul_(1 - lr * wd)
                if group["muon"]:
                    buf = state.setdefault("momentum_buffer", torch.zeros_like(p))
                    buf.lerp_(grad, 1 - group["momentum"])
                    update = newton_schulz(grad.lerp(buf, group["momentum"]), dtype=group["ns_dtype"])
                    p.add_(update, alpha=-lr * math.sqrt(max(1.0, p.size(0) / p.size(1))))
                    continue
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                beta1, beta2 = group["betas"]
                state["step"] += 1
                state["exp_avg"].lerp_(grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2 ** state["step"])).add_(group["eps"])
                p.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1 ** state["step"]))
        return loss


def make_optimizer(model: nn.Module, config: "GrokkingConfig") -> torch.optim.Optimizer:
    """The optimizer ``config.optimizer`` names, over ``model``'s parameters;
    for Muon, the Muon group (the encoder layers' 2-D weights) comes first,
    so its learning rate is the one a monitor reads."""
    c = config
    if c.optimizer == "adamw":
        return c.adamw(model.parameters())
    hidden = [p for n, p in model.named_parameters() if n.startswith("encoder.") and p.ndim == 2]
    rest = [p for n, p in model.named_parameters() if not (n.startswith("encoder.") and p.ndim == 2)]
    muon_wd = c.weight_decay * c.lr / c.muon_lr if c.muon_weight_decay is None else c.muon_weight_decay
    return MuonAdamW([{"params": hidden, "muon": True, "lr": c.muon_lr, "weight_decay": muon_wd},
                      {"params": rest}], lr=c.lr, betas=c.betas, weight_decay=c.weight_decay,
                     momentum=c.muon_momentum, ns_dtype=getattr(torch, c.muon_ns_dtype))


class TrainingRun:
    """What every workload's run shares: ``config``, ``model``,
    ``optimizer`` and ``step``; :meth:`optimize` is one step on a loss."""

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def optimize(self, loss: torch.Tensor) -> torch.Tensor:
        """Backward, clip to ``config.grad_clip``, one optimizer step; returns
        the loss (on the device, so the caller decides when to read it)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.step += 1
        return loss.detach()


class ResumableRun(TrainingRun):
    """``state_dict()`` / ``load_state_dict()`` of a training run that keeps
    ``config``, ``step``, ``model``, ``optimizer`` and two seeded generators
    (``sampler`` for training batches, ``probe_sampler`` for probe batches):
    a resumed run draws the same batches as an uninterrupted one."""

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


class GrokkingRun(ResumableRun):
    """One training run: data, model, optimizer and a seeded batch sampler.

    ``train_step()`` does one optimizer step; ``evaluate()`` measures loss and
    accuracy on the full train and test sets. ``state_dict()`` covers the
    model, the optimizer and the sampler, so a resumed run draws the same
    batches as an uninterrupted one."""

    def __init__(self, config: GrokkingConfig):
        self.config = c = config
        torch.manual_seed(c.seed)
        self.device = torch.device(c.device)
        self.tasks = c.tasks
        data = (make_dataset(c.task, c.p, c.train_fraction, c.seed) if len(self.tasks) == 1 else
                make_multitask_dataset(self.tasks, c.p, c.train_fraction, c.seed))
        self.train_x, self.train_y, self.test_x, self.test_y = (t.to(self.device) for t in data)
        self.model = ModularTransformer(c.p, c.d_model, c.n_layers, c.n_heads, c.d_ff, len(self.tasks)).to(self.device)
        self.optimizer = make_optimizer(self.model, c)
        self.sampler = torch.Generator(device=self.device).manual_seed(c.seed + 1)
        # probe batches (gradients()) have their own stream so probing never changes training
        self.probe_sampler = torch.Generator(device=self.device).manual_seed(c.seed + 2)
        self.step = 0

    def batch(self):
        idx = torch.randint(len(self.train_x), (self.config.batch_size,), generator=self.sampler, device=self.device)
        return self.train_x[idx], self.train_y[idx]

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.model(x), y)

    def train_step(self) -> torch.Tensor:
        """One optimizer step on a fresh batch; returns the loss (on the
        device, so the caller decides when to read it)."""
        self.model.train()
        return self.optimize(self.loss(*self.batch()))

    @torch.no_grad()
    def evaluate(self, chunk: int = 4096) -> Dict[str, float]:
        """Loss and accuracy on all train and all test pairs: ``train_loss``,
        ``train_acc``, ``test_loss``, ``test_acc``; with several tasks also
        each task's, ``train_acc_<task>`` and so on."""
        self.model.eval()
        out = {}
        for split, (x, y) in (("train", (self.train_x, self.train_y)), ("test", (self.test_x, self.test_y))):
            losses, correct = [], []
            for i in range(0, len(x), chunk):
                logits = self.model(x[i : i + chunk])
                losses.append(F.cross_entropy(logits, y[i : i + chunk], reduction="none").double())
                correct.append(logits.argmax(-1) == y[i : i + chunk])
            loss, hit = torch.cat(losses), torch.cat(correct).double()
            out[f"{split}_loss"] = loss.mean().item()
            out[f"{split}_acc"] = hit.mean().item()
            if len(self.tasks) > 1:
                for i, task in enumerate(self.tasks):
                    mine = x[:, 0] == self.config.p + i
                    out[f"{split}_loss_{task}"] = loss[mine].mean().item()
                    out[f"{split}_acc_{task}"] = hit[mine].mean().item()
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


def grok_step(metrics, key: str = "test_acc", threshold: float = GROK_ACCURACY) -> Optional[int]:
    """The first step whose ``key`` (test accuracy; ``"test_acc_mul"`` for
    one task of a multi-task run) reaches ``threshold``, or None.
    ``metrics``: records with ``step`` and ``key``."""
    for m in metrics:
        if m.get(key) is not None and m[key] >= threshold:
            return int(m["step"])
    return None
