"""The SCAN workload: the grammar's commands and their meanings, the split,
the model's size and the exact-match evaluation."""
import pytest
import torch

from spectral_edge_fast.workloads.scan import (ACTION_WORDS, COMMAND_WORDS, EOS, MAX_ACTIONS, MAX_COMMAND, PAD,
                                               ScanConfig, ScanRun, ScanTransformer, all_commands, interpret,
                                               make_dataset)

L, R = "I_TURN_LEFT", "I_TURN_RIGHT"

#: the examples of Lake and Baroni's Figure 1 (and one per rule)
EXAMPLES = {
    "jump": ["I_JUMP"],
    "jump left": [L, "I_JUMP"],
    "jump around right": [R, "I_JUMP"] * 4,
    "turn left twice": [L, L],
    "jump thrice": ["I_JUMP"] * 3,
    "jump opposite left and walk thrice": [L, L, "I_JUMP", "I_WALK", "I_WALK", "I_WALK"],
    "jump opposite left after walk around left": [L, "I_WALK"] * 4 + [L, L, "I_JUMP"],
    "turn opposite right": [R, R],
    "turn around left": [L] * 4,
    "look right twice after run": ["I_RUN", R, "I_LOOK", R, "I_LOOK"],
}


@pytest.mark.parametrize("command", sorted(EXAMPLES))
def test_interpretation_of_the_papers_examples(command):
    assert interpret(command) == EXAMPLES[command]


def test_the_full_command_set():
    pairs = all_commands()
    assert len(pairs) == 20_910 and len({c for c, _ in pairs}) == 20_910
    assert max(len(c.split()) for c, _ in pairs) == MAX_COMMAND
    assert max(len(a) for _, a in pairs) == MAX_ACTIONS
    assert {w for c, _ in pairs for w in c.split()} == set(COMMAND_WORDS[3:])
    assert {a for _, seq in pairs for a in seq} == set(ACTION_WORDS[3:])
    # the enumeration's meanings agree with the parser's, command by command
    assert all(interpret(c) == a for c, a in pairs)
    for c, a in EXAMPLES.items():
        assert (c, a) in pairs


@pytest.mark.parametrize("bad", ["turn", "turn twice", "walk walk", "jump around", "left", "walk opposite",
                                 "run and", "twice", "walk around left right"])
def test_interpret_refuses_what_the_grammar_does_not_make(bad):
    with pytest.raises(ValueError, match="not a SCAN command"):
        interpret(bad)


def _decode(ids, vocab):
    words = [vocab[i] for i in ids if i != PAD]
    return words[words[0] == "<bos>":words.index("<eos>")]


def test_simple_split_is_a_seeded_80_20_split_of_every_command():
    tr_s, tr_t, te_s, te_t = make_dataset(0.8, seed=5)
    assert len(tr_s) == 16_728 and len(te_s) == 4_182
    assert tr_s.shape[1] == MAX_COMMAND + 1 and tr_t.shape[1] == MAX_ACTIONS + 2
    train = {" ".join(_decode(s, COMMAND_WORDS)) for s in tr_s.tolist()}
    test = {" ".join(_decode(s, COMMAND_WORDS)) for s in te_s.tolist()}
    assert len(train | test) == 20_910 and not train & test
    for s, t in zip(te_s[:300].tolist(), te_t[:300].tolist()):
        assert _decode(t, ACTION_WORDS) == interpret(" ".join(_decode(s, COMMAND_WORDS)))
        assert s.count(EOS) == 1 and t.count(EOS) == 1
    assert torch.equal(make_dataset(0.8, seed=5)[0], tr_s) and not torch.equal(make_dataset(0.8, seed=6)[0], tr_s)
    assert len(make_dataset(0.5, seed=5, limit=100)[0]) == 50


def test_model_matches_the_papers_size():
    model = ScanTransformer()
    n = sum(p.numel() for p in model.parameters())
    assert 1_300_000 < n < 1_600_000  # "1.5M parameters", 3 encoder + 3 decoder layers
    assert len(model.encoder.layers) == 3 and len(model.decoder.layers) == 3
    src, tgt = torch.ones(2, MAX_COMMAND + 1, dtype=torch.long), torch.ones(2, 7, dtype=torch.long)
    assert model(src, tgt).shape == (2, 7, len(ACTION_WORDS))


class Lookup(torch.nn.Module):
    """An autoregressive model that knows every target: fed the target's
    prefix it predicts the next token, except at ``errors[command]`` (a
    position, past EOS for some); fed anything else it predicts ``I_WALK``."""

    def __init__(self, src, tgt, errors):
        super().__init__()
        self.table = {tuple(s): t for s, t in zip(src.tolist(), tgt.tolist())}
        self.errors = errors

    def forward(self, src, tgt_in):
        logits = torch.zeros(*tgt_in.shape, len(ACTION_WORDS))
        for b, (s, fed) in enumerate(zip(src.tolist(), tgt_in.tolist())):
            t = self.table[tuple(s)]
            for j in range(len(fed)):
                ok = fed[: j + 1] == t[: j + 1] and j != self.errors.get(tuple(s))
                nxt = t[j + 1] if ok and j + 1 < len(t) else ACTION_WORDS.index("I_WALK")
                logits[b, j, nxt] = 1.0
        return logits


def test_exact_match_is_that_of_greedy_decoding():
    """evaluate() counts exact matches from one teacher-forced pass; compared
    here with real greedy decoding of a model that errs before EOS on some
    commands, at EOS on others, and after EOS (which does not count) on more."""
    run = ScanRun(ScanConfig(limit=60, d_model=16, n_heads=2, n_encoder=1, n_decoder=1, d_ff=32, eval_size=0))
    src, tgt = run.train_src, run.train_tgt
    ends = [t.index(EOS) for t in tgt.tolist()]  # EOS is predicted at position end - 1 of the fed prefix
    keys = [tuple(s) for s in src.tolist()]
    errors = {k: e for i, (k, e) in enumerate(zip(keys, ends))
              for e in [{0: e // 2, 1: e - 1, 2: e + 2}.get(i % 4)] if e is not None}
    run.model = Lookup(torch.cat([src, run.test_src]), torch.cat([tgt, run.test_tgt]), errors)
    out = torch.full((len(src), 1), 1, dtype=torch.long)
    for _ in range(tgt.shape[1] - 1):  # greedy decoding
        out = torch.cat([out, run.model(src, out)[:, -1].argmax(-1, keepdim=True)], 1)
    right = sum(p[: e + 1] == t[: e + 1] for p, t, e in zip(out.tolist(), tgt.tolist(), ends))
    assert right == len(src) - sum(1 for i in range(len(src)) if i % 4 in (0, 1))  # errors after EOS do not count
    assert run.evaluate()["train_acc"] == right / len(src)


def test_runs_are_reproducible():
    cfg = dict(limit=200, d_model=16, n_heads=2, n_encoder=1, n_decoder=1, d_ff=32, batch_size=8)
    a, b = ScanRun(ScanConfig(seed=1, **cfg)), ScanRun(ScanConfig(seed=1, **cfg))
    assert [a.train_step().item() for _ in range(3)] == [b.train_step().item() for _ in range(3)]
    with pytest.raises(ValueError, match="train_fraction"):
        ScanConfig(train_fraction=1.0)
