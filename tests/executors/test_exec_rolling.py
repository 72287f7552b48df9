"""Streams on the engine (executors.feed): the tick loop consumes a rolling schedule tick by tick, declaring
one block whenever the next tick needs one and a hook's switches and end between ticks. A stream is the
same schedule built whole, its state stays bounded, and positions past the RoPE table are the documented
ones (absolute, extrapolated: models.attention.rope_positions)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from exec_support import PROMPTS, assert_promise, ring_config, tiny_model
from hypothesis import given

from cascade_sched import CascadeSpec, build_schedule
from executors.base import RunOptions, TickLoop
from executors.distributed import DistributedExecutor, rank_slice
from executors.feed import Declaration, RollingFeed, Stream, StreamView, read_horizon
from executors.launch import spawn
from executors.reference import ReferenceExecutor
from models import CausalWanDiT
from tests import strategies

SCRIPT = {2: 1, 5: 2, 6: 3, 11: 1}  # tick -> a prompt id typed then (5 and 6: the newer wins if one block)
END = 16  # the tick the stream is told to end


@given(strategies.specs(blocks=(1, 8), devices=(1, 6), strides=(1, 4), placements=strategies.ALL_PLACEMENTS,
                        switches=2))
def test_the_read_horizon_bounds_every_read(spec: CascadeSpec) -> None:
    """What a stream drops once its readers are given: no task reads a version after its horizon."""
    s = build_schedule(spec)
    for t in s.tasks:
        for ref in t.reads:
            horizon = read_horizon(spec, ref, s.version_tick(ref))
            assert horizon is None or t.tick <= horizon, (str(t), ref, horizon)


class Scripted:
    """A stream's hook that types ``SCRIPT``'s prompts and ends at ``END``, recording what it declared."""

    def __init__(self, options: RunOptions) -> None:
        self.options, self.switches = options, []  # type: ignore[var-annotated]

    def __call__(self, tick: int, view: StreamView) -> Declaration | None:
        if tick == END:
            return Declaration(end=True)
        if tick not in SCRIPT:
            return None
        pid = SCRIPT[tick]
        self.options.prompts[pid] = PROMPTS[pid]
        self.switches = [sw for sw in self.switches if sw[0] != view.declared] + [(view.declared, pid)]
        return Declaration(switch=pid)


SPECS = [dict(attention=a, switch_policy=p, **place)
         for a, p in (("causal", "none"), ("bidirectional", "recache"), ("stale", "recache"), ("stage", "none"),
                      ("causal", "recache"))
         for place in ({"num_devices": 2}, {"num_devices": 2, "placement": "layers", "stage_stride": 2,
                                            "num_layers": 4})]


def stream_spec(fields: dict[str, Any]) -> CascadeSpec:
    return CascadeSpec(num_blocks=1, lag=1, window=3, sink=1, **fields)


@pytest.mark.parametrize("fields", SPECS, ids=lambda f: f"{f['attention']}-{f['switch_policy']}-{f.get('placement', 'block')}")
def test_a_stream_is_the_schedule_built_whole_bit_for_bit(fields: dict[str, Any]) -> None:
    spec = stream_spec(fields)
    model = CausalWanDiT(ring_config(spec), seed=0)
    options = RunOptions(prompts={})
    hook = Scripted(options)
    streamed = ReferenceExecutor().run(Stream(spec), model, options, hook=hook)
    final = spec.replace(num_blocks=streamed.blocks, switches=tuple(hook.switches))
    whole = ReferenceExecutor().run(build_schedule(final), model, RunOptions(prompts=dict(options.prompts)))
    assert streamed.blocks > END // 2 and len(hook.switches) >= 3
    assert torch.equal(streamed.stacked(), whole.stacked())


def streams_on_rank(specs: list[dict[str, Any]], rank: int, world: int) -> list[Any]:
    """Rank function: each stream with rank 0's scripted hook; rank 0 returns what it declared and made."""
    torch.set_num_threads(1)
    out = []
    for fields in specs:
        spec = stream_spec(fields)
        config = ring_config(spec)
        model = CausalWanDiT(config, seed=0, part=rank_slice(spec, config, rank))
        options = RunOptions(prompts={})
        hook = Scripted(options) if rank == 0 else None
        result = DistributedExecutor(extendable=True).run(Stream(spec), model, options, hook=hook)
        out.append((result.blocks, hook.switches, dict(options.prompts), result.stacked().numpy())
                   if hook is not None else None)
    return out


@pytest.mark.slow
def test_a_stream_on_two_ranks_is_the_schedule_built_whole() -> None:
    for fields, (blocks, switches, prompts, latents) in zip(SPECS, spawn(streams_on_rank, SPECS, 2, timeout_s=60,
                                                                            threads=1), strict=True):
        spec = stream_spec(fields)
        final = spec.replace(num_blocks=blocks, switches=tuple(switches))
        whole = ReferenceExecutor().run(build_schedule(final), CausalWanDiT(ring_config(spec), seed=0),
                                        RunOptions(prompts=prompts))
        assert_promise(whole.stacked().numpy(), latents)


def loop_state(loop: TickLoop) -> dict[str, int]:
    """Everything a tick loop holds between ticks, by kind (the rolling schedule's own state included)."""
    feed = loop.feed
    assert isinstance(feed, RollingFeed)
    sizes = {"pool": len(loop.pool), "entering": len(loop.entering), "keep": len(loop.keep), "kept": len(loop.kept),
             "pending": sum(map(len, loop.pending.values())), "retire_at": len(loop.retire_at),
             "made": len(loop.made), "latent": len(loop.latent), "clean": len(loop.clean),
             "reencode": len(loop.reencode_src), "plan": sum(map(len, (loop.gang, loop.past, loop.sends, loop.hops))),
             "events": len(loop.events), "block_done_s": len(loop.block_done_s), "prompts": len(loop._registered),
             "prompt_cache": len(loop.model._prompt_kv), "starts": len(loop._starts)}
    sizes.update({f"rolling {k}": v for k, v in feed.rolling.state_size().items()})
    return sizes


@pytest.mark.parametrize("fields", [dict(attention="causal", switch_policy="recache", num_layers=None),
                                    dict(attention="stage", switch_policy="none", num_devices=2, placement="layers",
                                         stage_stride=2, num_layers=2)])
def test_a_streams_state_stays_bounded(fields: dict[str, Any]) -> None:
    """A prompt switch every 40 blocks, 400 blocks: what the loop holds over blocks 250-350 is never more,
    kind by kind, than the most it held over blocks 50-200 (the stream's close, at 400, gives its last ticks
    at once)."""
    spec = CascadeSpec(num_blocks=1, lag=1, window=3, sink=1, **fields)
    options = RunOptions(prompts={}, history=16)
    executor = ReferenceExecutor()
    early: dict[str, int] = {}
    late: dict[str, int] = {}

    def on_block(block: int, _: torch.Tensor) -> None:
        if 50 <= block < 200 or 250 <= block < 350:
            assert executor.loop is not None
            most = early if block < 200 else late
            for k, v in loop_state(executor.loop).items():
                most[k] = max(most.get(k, 0), v)

    def hook(tick: int, view: StreamView) -> Declaration | None:
        if view.declared % 40 == 0 and view.declared // 40 not in options.prompts:
            options.prompts[view.declared // 40] = f"prompt {view.declared // 40}"
            return Declaration(switch=view.declared // 40)
        return None

    result = executor.run(Stream(spec, max_blocks=400), CausalWanDiT(ring_config(spec), seed=0), options, on_block,
                          hook=hook)
    assert result.blocks == 400 and not result.latents and len(result.block_done_s) == 16
    assert all(late[k] <= early[k] for k in early), {k: (early[k], late[k]) for k in early if late[k] > early[k]}


def frame_offsets(model: CausalWanDiT, seen: list[int]) -> None:
    """Record every task's first frame as the model receives it."""
    forward = model.forward_slice

    def spy(tasks, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.extend(t.frame_offset for t in tasks)
        return forward(tasks, *args, **kwargs)

    model.forward_slice = spy  # type: ignore[method-assign]


BLOCKS_PAST_5000 = 1670  # frames 0 .. 5009 at 3 latent frames a block: past frame 5000 (block 1666)
LONG = dict(lag=1, timesteps=(1000, 500), window=2, num_devices=2)  # S = 3 stages: few ticks per block


def last_blocks_on_rank(_: None, rank: int, world: int) -> Any:
    """Rank function: the long stream on 2 ranks; rank 0 returns its last three blocks."""
    torch.set_num_threads(1)
    kept: dict[int, torch.Tensor] = {}
    DistributedExecutor().run(Stream(CascadeSpec(num_blocks=1, **LONG), max_blocks=BLOCKS_PAST_5000), tiny_model(),
                              RunOptions(history=8), (lambda b, x: kept.update({b: x}) if b >= BLOCKS_PAST_5000 - 3
                                                      else None) if rank == 0 else None)
    return [kept[b].numpy() for b in sorted(kept)] if rank == 0 else None


@pytest.mark.slow
def test_frames_past_5000_on_the_reference_and_the_distributed_executor() -> None:
    """Past Wan's 1024-row RoPE table the positions are the frames' own (extrapolated; docs/models.md): no
    crash, finite and the same on 2 ranks as on one."""
    model, offsets = tiny_model(), []
    frame_offsets(model, offsets)
    kept: dict[int, torch.Tensor] = {}
    result = ReferenceExecutor().run(Stream(CascadeSpec(num_blocks=1, **LONG), max_blocks=BLOCKS_PAST_5000), model,
                                     RunOptions(history=8),
                                     lambda b, x: kept.update({b: x}) if b >= BLOCKS_PAST_5000 - 3 else None)
    assert result.blocks == BLOCKS_PAST_5000 and max(offsets) == 3 * (BLOCKS_PAST_5000 - 1) > 5000
    ours = torch.stack([kept[b] for b in sorted(kept)])
    assert torch.isfinite(ours).all() and ours.std() > 0.1
    theirs = spawn(last_blocks_on_rank, None, 2, timeout_s=120, threads=1)
    assert_promise(ours.numpy(), torch.stack([torch.from_numpy(x) for x in theirs]).numpy())
    assert not math.isnan(float(ours.abs().max()))
