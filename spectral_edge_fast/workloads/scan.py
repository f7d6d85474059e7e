"""SCAN: commands to action sequences (docs/reproduction.md#scan).

The data set of Lake and Baroni (2018), made here from its definition: the
phrase-structure grammar ::

    C -> S and S | S after S | S
    S -> V twice | V thrice | V
    V -> D opposite DIR | D around DIR | D | U     (D's verb with a direction)
    D -> U left | U right | turn left | turn right
    U -> walk | look | run | jump

(20,910 commands) and its interpretation: ``walk`` is ``I_WALK`` (likewise
look, run, jump); ``turn left`` is ``I_TURN_LEFT``; ``u left`` is
``I_TURN_LEFT u``; ``u opposite left`` is ``I_TURN_LEFT I_TURN_LEFT u``
(``turn opposite left``: the two turns); ``u around left`` is ``I_TURN_LEFT u``
four times (``turn around left``: four turns); ``x twice`` and ``x thrice``
repeat ``x``; ``x1 and x2`` is ``x1`` then ``x2``; ``x1 after x2`` is ``x2``
then ``x1``. The paper's Section 27 does not name its split: here the
"simple" one, a random 80/20 split of all commands (seeded).

The model: the layers of an encoder-decoder ``nn.Transformer`` (post-norm,
ReLU, no dropout) with learned positions; the paper's "6-layer" model of
~1.5M parameters is read as 3 encoder and 3 decoder layers at ``d = 128``,
4 heads, ``d_ff = 512`` (1.40M; the paper gives no more detail). Trained
with teacher forcing (cross-entropy on every target token) by AdamW (lr
5e-4, betas (0.9, 0.98), gradient clipping at 1.0, weight decay 1.0 versus
0); accuracy is exact match of the greedy decoding of the whole action
sequence, as in the SCAN literature.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .grokking import GROK_ACCURACY, TrainingConfig, TrainingRun, grok_step

PRIMITIVES = ("walk", "look", "run", "jump")
DIRECTIONS = ("left", "right")
ACTIONS = ("I_WALK", "I_LOOK", "I_RUN", "I_JUMP", "I_TURN_LEFT", "I_TURN_RIGHT")
TURN = {"left": "I_TURN_LEFT", "right": "I_TURN_RIGHT"}

#: command words and action tokens; PAD 0, BOS 1 and EOS 2 come first in both
SPECIALS = ("<pad>", "<bos>", "<eos>")
PAD, BOS, EOS = 0, 1, 2
COMMAND_WORDS = SPECIALS + PRIMITIVES + DIRECTIONS + ("turn", "opposite", "around", "twice", "thrice", "and", "after")
ACTION_WORDS = SPECIALS + ACTIONS
MAX_COMMAND = 9  # "jump around left thrice and walk opposite right twice"
MAX_ACTIONS = 48  # "x around left thrice and y around right thrice"


def _verb_phrases() -> List[Tuple[str, List[str]]]:
    """Every V with its meaning."""
    out = [(u, ["I_" + u.upper()]) for u in PRIMITIVES]
    for d in DIRECTIONS:
        t = TURN[d]
        out.append((f"turn {d}", [t]))
        out.append((f"turn opposite {d}", [t, t]))
        out.append((f"turn around {d}", [t] * 4))
        for u in PRIMITIVES:
            a = "I_" + u.upper()
            out.append((f"{u} {d}", [t, a]))
            out.append((f"{u} opposite {d}", [t, t, a]))
            out.append((f"{u} around {d}", [t, a] * 4))
    return out


def _sentences() -> List[Tuple[str, List[str]]]:
    """Every S with its meaning."""
    out = []
    for v, a in _verb_phrases():
        out += [(v, a), (f"{v} twice", a * 2), (f"{v} thrice", a * 3)]
    return out


def all_commands() -> List[Tuple[str, List[str]]]:
    """Every SCAN command with its action sequence, in a fixed order."""
    s = _sentences()
    out = list(s)
    for (c1, a1), (c2, a2) in product(s, s):
        out.append((f"{c1} and {c2}", a1 + a2))
        out.append((f"{c1} after {c2}", a2 + a1))
    return out


def interpret(command: str) -> List[str]:
    """The action sequence of one command, parsed by the grammar.

    Raises:
        ValueError: the command is not in the language.
    """
    words = command.split()
    for conj in ("and", "after"):
        if conj in words:
            i = words.index(conj)
            first, second = interpret(" ".join(words[:i])), interpret(" ".join(words[i + 1:]))
            return first + second if conj == "and" else second + first
    reps = {"twice": 2, "thrice": 3}
    n = 1
    if words and words[-1] in reps:
        n = reps[words.pop()]
    if not words:
        raise ValueError(f"{command!r} is not a SCAN command")
    verb, rest = words[0], words[1:]
    if verb not in PRIMITIVES and verb != "turn":
        raise ValueError(f"{command!r} is not a SCAN command: {verb!r} is not a verb")
    act = [] if verb == "turn" else ["I_" + verb.upper()]
    if not rest:
        if verb == "turn":
            raise ValueError(f"{command!r} is not a SCAN command: 'turn' needs a direction")
        return act * n
    if rest[-1] not in DIRECTIONS or len(rest) > 2 or (len(rest) == 2 and rest[0] not in ("opposite", "around")):
        raise ValueError(f"{command!r} is not a SCAN command")
    t = TURN[rest[-1]]
    if len(rest) == 1:
        phrase = [t] + act
    elif rest[0] == "opposite":
        phrase = [t, t] + act
    else:
        phrase = ([t] + act) * 4
    return phrase * n


def encode(words: List[str], vocab: Tuple[str, ...], length: int, bos: bool) -> List[int]:
    """Token ids, ``EOS`` after the words (``BOS`` before them when asked),
    padded with ``PAD`` to ``length``."""
    ids = ([BOS] if bos else []) + [vocab.index(w) for w in words] + [EOS]
    return ids + [PAD] * (length - len(ids))


def make_dataset(train_fraction: float, seed: int, limit: int = 0):
    """The simple split: all commands, shuffled (seeded), ``train_fraction``
    of them for training. ``limit`` > 0 keeps that many commands (a random
    subset, for small runs) before splitting.

    Returns ``(train_src, train_tgt, test_src, test_tgt)``: ``src`` is
    ``[N, MAX_COMMAND + 1]`` command ids ending in ``EOS``, ``tgt`` is
    ``[N, MAX_ACTIONS + 2]`` action ids between ``BOS`` and ``EOS``, padded."""
    pairs = all_commands()
    perm = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    if limit:
        perm = perm[:limit]
    src = torch.tensor([encode(pairs[i][0].split(), COMMAND_WORDS, MAX_COMMAND + 1, bos=False) for i in perm])
    tgt = torch.tensor([encode(pairs[i][1], ACTION_WORDS, MAX_ACTIONS + 2, bos=True) for i in perm])
    n = int(train_fraction * len(perm))
    return src[:n], tgt[:n], src[n:], tgt[n:]


@dataclass
class ScanConfig(TrainingConfig):
    """Every knob of one run; the defaults are the paper's size."""

    train_fraction: float = 0.8
    limit: int = 0
    d_model: int = 128
    n_heads: int = 4
    n_encoder: int = 3
    n_decoder: int = 3
    d_ff: int = 512
    lr: float = 5e-4
    batch_size: int = 64
    eval_size: int = 1000

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.train_fraction < 1.0:
            raise ValueError(f"train_fraction must lie strictly between 0 and 1, got {self.train_fraction}")
        if self.limit < 0 or self.eval_size < 0:
            raise ValueError(f"limit and eval_size must be >= 0 (0: all), got {self.limit} and {self.eval_size}")


class ScanTransformer(nn.Module):
    """Embeddings with learned positions into the encoder and decoder of an
    ``nn.Transformer``, and a linear head over the actions."""

    def __init__(self, d_model: int = 128, n_heads: int = 4, n_encoder: int = 3, n_decoder: int = 3, d_ff: int = 512):
        super().__init__()
        self.src_emb = nn.Embedding(len(COMMAND_WORDS), d_model, padding_idx=PAD)
        self.tgt_emb = nn.Embedding(len(ACTION_WORDS), d_model, padding_idx=PAD)
        self.src_pos = nn.Parameter(torch.randn(MAX_COMMAND + 1, d_model) / math.sqrt(d_model))
        self.tgt_pos = nn.Parameter(torch.randn(MAX_ACTIONS + 1, d_model) / math.sqrt(d_model))
        # nn.Transformer's layers, built here so the encoder can be told not to
        # make nested tensors (they warn, and pay off only for long padding)
        enc = nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout=0.0, batch_first=True)
        dec = nn.TransformerDecoderLayer(d_model, n_heads, d_ff, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(enc, n_encoder, nn.LayerNorm(d_model), enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(dec, n_decoder, nn.LayerNorm(d_model))
        self.head = nn.Linear(d_model, len(ACTION_WORDS))
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(MAX_ACTIONS + 1),
                             persistent=False)

    def encode(self, src: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.src_emb(src) + self.src_pos[: src.shape[1]],
                                        src_key_padding_mask=src == PAD)

    def decode(self, memory: torch.Tensor, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        n = tgt_in.shape[1]
        h = self.decoder(self.tgt_emb(tgt_in) + self.tgt_pos[:n], memory, tgt_mask=self.causal[:n, :n],
                                     tgt_is_causal=True, memory_key_padding_mask=src == PAD)
        return self.head(h)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits: ``tgt_in`` is the target without its last token."""
        return self.decode(self.encode(src), src, tgt_in)


class ScanRun(TrainingRun):
    """One training run (the interface of
    :class:`~spectral_edge_fast.workloads.grokking.GrokkingRun`:
    ``train_step()``, ``evaluate()``, ``model``, ``optimizer``, ``step``)."""

    def __init__(self, config: ScanConfig):
        self.config = c = config
        torch.manual_seed(c.seed)
        self.device = torch.device(c.device)
        data = make_dataset(c.train_fraction, c.seed, c.limit)
        self.train_src, self.train_tgt, self.test_src, self.test_tgt = (t.to(self.device) for t in data)
        self.model = ScanTransformer(c.d_model, c.n_heads, c.n_encoder, c.n_decoder, c.d_ff).to(self.device)
        self.optimizer = c.adamw(self.model.parameters())
        self.sampler = torch.Generator(device=self.device).manual_seed(c.seed + 1)
        # the evaluation subsets, fixed for the run
        g = torch.Generator().manual_seed(c.seed + 2)
        self.eval_index = {split: (torch.randperm(len(src), generator=g)[: c.eval_size or len(src)]).to(self.device)
                           for split, src in (("train", self.train_src), ("test", self.test_src))}
        self.step = 0

    def _loss(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.model(src, tgt[:, :-1]).transpose(1, 2), tgt[:, 1:], ignore_index=PAD)

    def train_step(self) -> torch.Tensor:
        """One optimizer step on a fresh batch; returns the loss (on the device)."""
        self.model.train()
        idx = torch.randint(len(self.train_src), (self.config.batch_size,), generator=self.sampler, device=self.device)
        loss = self._loss(self.train_src[idx], self.train_tgt[idx])
        return self.optimize(loss)

    @torch.no_grad()
    def evaluate(self, chunk: int = 512) -> Dict[str, float]:
        """Per-token loss (teacher forced) and exact-match accuracy of greedy
        decoding, on ``eval_size`` fixed commands of each split (all when 0).

        Greedy decoding gives the target exactly when, fed the target's
        prefix, the model's argmax is the target's next token at every
        position up to ``EOS`` (by induction on the position), so one
        teacher-forced pass counts the exact matches."""
        self.model.eval()
        out = {}
        for split, (src, tgt) in (("train", (self.train_src, self.train_tgt)), ("test", (self.test_src, self.test_tgt))):
            idx = self.eval_index[split]
            loss_sum, tokens, correct = torch.zeros((), device=self.device), 0, torch.zeros((), device=self.device)
            for i in range(0, len(idx), chunk):
                s, t = src[idx[i : i + chunk]], tgt[idx[i : i + chunk]]
                logits, gold = self.model(s, t[:, :-1]), t[:, 1:]
                loss_sum += F.cross_entropy(logits.transpose(1, 2), gold, ignore_index=PAD, reduction="sum")
                tokens += int((gold != PAD).sum())
                correct += ((logits.argmax(-1) == gold) | (gold == PAD)).all(1).sum()
            out[f"{split}_loss"] = loss_sum.item() / tokens
            out[f"{split}_acc"] = correct.item() / len(idx)
        return out


__all__ = ["ACTIONS", "ACTION_WORDS", "COMMAND_WORDS", "GROK_ACCURACY", "ScanConfig", "ScanRun", "ScanTransformer",
           "all_commands", "grok_step", "interpret", "make_dataset"]
