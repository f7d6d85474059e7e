"""DeepSpeed ZeRO on 2 gloo processes on the CPU (DS_ACCELERATOR=cpu).
Stage 3 partitions each parameter: ``param.data`` is empty and the rank's
part of its padded flat order is ``param.ds_tensor``; stages 1 and 2 leave
the parameters replicated. In every stage the window must see each
parameter under its name and group, count no padding, and give the Gram of
a single-process window on the same updates, in exact and sketch mode."""
import importlib.util
import os

import pytest
import torch
import torch.distributed as dist

from spectral_edge_fast import GramWindow, SpectralMonitor
from test_distributed import _flat, _init, _spawn
from test_layout_fsdp1 import SKETCH, Net, _assert_like_unsharded, _summary

pytestmark = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                reason="DeepSpeed is not installed (pip install 'spectral-edge-fast[deepspeed]')")
STAGES = (1, 2, 3)


def _full_parameters(module, stage):
    """The full parameters by name, on every rank (a collective under stage 3)."""
    if stage < 3:
        return {n: p.detach().clone() for n, p in module.named_parameters()}
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(module.parameters())):
        return {n: p.detach().clone() for n, p in module.named_parameters()}


def _zero_worker(rank, world, store_path, out_dir):
    os.environ.update(DS_ACCELERATOR="cpu", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    _init(rank, store_path, world)
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")  # adopts the process group made above
    group = dist.group.WORLD
    out = {}
    for stage in STAGES:
        torch.manual_seed(0)
        model, plain = Net(), Net()
        plain.load_state_dict(model.state_dict())
        config = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
                  "optimizer": {"type": "SGD", "params": {"lr": 0.05}},
                  "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True}
        engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
        try:
            wins = {m: GramWindow(engine.module, window=3, sketch=m, process_group=group) for m in (None, SKETCH)}
            monitor = SpectralMonitor(engine.module, None, window=3, analyze_every=5, sinks=(), process_group=group)
        except Exception as exc:
            out[stage] = f"{type(exc).__name__}: {exc}"
            continue
        refs = {m: GramWindow(plain, window=3, sketch=m) for m in (None, SKETCH)}
        history, last = [], _flat(plain.state_dict().values())
        for step in range(5):
            x = torch.randn(4, 6, generator=torch.Generator().manual_seed(10 * step + rank))
            engine.backward(engine(x).pow(2).mean())
            if step == 4 and stage == 3:  # the gradient partitions are the optimizer's: refused, not read as zeros
                try:
                    monitor.observe_gradients("train")
                    out["grads"] = None
                except ValueError as exc:
                    out["grads"] = str(exc)
            engine.step()
            for w in wins.values():
                w.step()
            monitor.step()
            plain.load_state_dict(_full_parameters(engine.module, stage))
            for w in refs.values():
                w.step()
            now = _flat(plain.state_dict().values())
            history.append(now - last)
            last = now
        out[stage] = _summary(wins, refs, monitor, history)
    torch.save(out, os.path.join(out_dir, f"zero{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def zero_runs():
    # a first run on a machine compiles DeepSpeed's CPU communication op (minutes)
    return _spawn(_zero_worker, "zero", deadline=600.0)


@pytest.mark.parametrize("stage", STAGES)
def test_zero_stage_gives_the_full_gram_by_parameter_name(zero_runs, stage):
    for rank, runs in enumerate(zero_runs):
        _assert_like_unsharded(runs[stage], rank)
    assert sum(runs[stage]["local"] for runs in zero_runs) == zero_runs[0][stage]["P"], "each number held once"


def test_zero3_gradients_are_asked_for(zero_runs):
    for runs in zero_runs:
        assert "is a DeepSpeed ZeRO-3 partition, whose gradient DeepSpeed's optimizer keeps" in (runs["grads"] or ""), runs
