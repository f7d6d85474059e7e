"""ParamLayout: group names from parameter names (repeated blocks at any
depth, wrapper prefixes stripped) and the flat order."""
import pytest
import torch
from torch import nn

from spectral_edge_fast.layout import ParamLayout, auto_group, strip_wrappers


class Block(nn.Module):
    def __init__(self, d=4):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.attn = nn.Module()
        self.attn.q, self.attn.o = nn.Linear(d, d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))


@pytest.mark.parametrize(
    "name, group",
    [
        # today's results, kept
        ("layers.3.attn.q.weight", "layers.3"),
        ("transformer.h.11.mlp.w", "transformer.h.11"),
        ("embed.weight", "embed"),
        ("head.bias", "head"),
        ("scale", "scale"),
        ("0.weight", "0"),
        ("1.0.weight", "1.0"),
        ("layers.3.weight", "layers.3"),
        ("encoder.layers.0.0.weight", "encoder.layers.0"),
        ("params.0", "params"),
        # a block is an indexed child holding named submodules, at any depth
        ("0.attn.q.weight", "0"),
        ("0.mlp.0.weight", "0"),
        ("blocks.2.mlp.0.weight", "blocks.2"),
        ("layers.1.experts.5.w1", "layers.1"),
        ("0.0.attn.q.weight", "0.0"),
    ],
)
def test_auto_group_names(name, group):
    assert auto_group(name) == group


def test_bare_sequential_of_blocks_groups_like_a_named_container():
    bare = nn.Sequential(Block(), Block())
    assert ParamLayout(bare).groups == ["0", "1"]
    named = nn.Module()
    named.embed, named.blocks, named.head = nn.Embedding(10, 4), nn.ModuleList([Block(), Block()]), nn.Linear(4, 3)
    assert ParamLayout(named).groups == ["embed", "blocks.0", "blocks.1", "head"]


@pytest.mark.parametrize(
    "name, plain",
    [
        ("_orig_mod.blocks.0.attn.q.weight", "blocks.0.attn.q.weight"),
        ("module.blocks.0.attn.q.weight", "blocks.0.attn.q.weight"),
        ("module._orig_mod.head.bias", "head.bias"),
        ("_orig_mod.module.head.bias", "head.bias"),
        ("_fsdp_wrapped_module.blocks.0._fsdp_wrapped_module.attn.q.weight", "blocks.0.attn.q.weight"),
        ("blocks.1._checkpoint_wrapped_module.mlp.0.weight", "blocks.1.mlp.0.weight"),
        ("blocks.1._orig_mod.ln.weight", "blocks.1.ln.weight"),
        # a submodule called "module" below the top is the model's own
        ("blocks.module.weight", "blocks.module.weight"),
        ("module", "module"),
    ],
)
def test_strip_wrappers(name, plain):
    assert strip_wrappers(name) == plain


def _blocks_model():
    torch.manual_seed(0)
    model = nn.Module()
    model.blocks, model.head = nn.ModuleList([Block(), Block()]), nn.Linear(4, 3)
    return model


def test_groups_and_names_do_not_depend_on_wrappers():
    model = _blocks_model()
    ddp_like = nn.Module()
    ddp_like.module = model
    plain = ParamLayout(model, groups="tensor")
    for wrapped in (torch.compile(model), ddp_like):
        layout = ParamLayout(wrapped, groups="tensor")
        assert layout.names == plain.names and layout.groups == plain.groups
        assert ParamLayout(wrapped).groups == ParamLayout(model).groups == ["blocks.0", "blocks.1", "head"]


def test_names_that_would_merge_without_the_wrapper_are_kept_whole():
    model = nn.Module()
    model.module, model.head = nn.Linear(2, 2), nn.Linear(2, 2)
    model.module.head = nn.Linear(2, 2)  # module.head.weight would become head.weight
    layout = ParamLayout(model, groups="tensor")
    assert len(set(layout.groups)) == len(layout.names) == 6


@pytest.mark.parametrize("second", ["view", "overlapping slice"])
def test_tensors_sharing_memory_are_refused(second):
    """A parameter and a view of it, given apart, are not the same object but
    the same numbers: counted twice, every Gram entry would be off."""
    p = torch.nn.Parameter(torch.randn(4, 5))
    params = [("w", p), ("w_flat", p.view(-1))] if second == "view" else [("a", p[:2]), ("b", p[1:])]
    with pytest.raises(ValueError, match="share memory .* counted twice"):
        ParamLayout(params)
    ParamLayout([("a", p[:2]), ("b", p[2:])])  # disjoint parts of one buffer are fine
