"""Rolling schedules (issue 25, item 1): a schedule built block by block, from bounded state, is the
schedule built whole: the same tasks, reads, start and free ticks, and transfer plan, whatever the cuts,
the switches (either policy, queued early or at the last moment), the stride, context and placement."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sched_support import ring_specs

from cascade_sched import CascadeSpec, ConfigError, build_schedule
from cascade_sched.rolling import RollingSchedule, ScheduleChunk
from cascade_sched.transfers import TransferPlan, plan_transfers


def roll(spec: CascadeSpec, cuts: Sequence[int], early: bool) -> list[ScheduleChunk]:
    """Stream ``spec``'s blocks through a rolling schedule: ``cuts[0]`` blocks at first, then ``cuts[i]``
    more at a time (the last cut repeats), advancing after each; its switches queued as soon as possible
    (``early``) or with the blocks that reach them."""
    first = min(cuts[0], spec.num_blocks)
    data = spec.to_dict()
    data.update(num_blocks=first, lag=list(spec.lag[:first - 1]) if isinstance(spec.lag, tuple) else spec.lag,
                switches=[list(sw) for sw in spec.switches if sw[0] < first])
    stream = RollingSchedule(CascadeSpec.from_dict(data))
    pending = [sw for sw in spec.switches if sw[0] >= first]
    chunks = [stream.advance()]
    declared, i = first, 1
    while declared < spec.num_blocks:
        n = min(cuts[min(i, len(cuts) - 1)], spec.num_blocks - declared)
        i += 1
        if early:
            for at, prompt in pending:
                stream.switch(at, prompt)
            now, pending = [], []
        else:
            now = [sw for sw in pending if sw[0] < declared + n]
            pending = pending[len(now):]
        stream.extend(n, now, lags=spec.lags[declared - 1:declared - 1 + n])
        declared += n
        chunks.append(stream.advance())
    stream.close()
    chunks.append(stream.advance())
    return chunks


def joined(chunks: list[ScheduleChunk]) -> dict[str, Any]:
    """The chunks of a rolling schedule put together, in the whole schedule's terms."""
    out: dict[str, Any] = {"tasks": [], "starts": [], "free_after": {}, "recache_free_after": {},
                           "keep_until": {}, "first_read": {}, "kept_from_gang": set()}
    per_tick: dict[str, dict[int, list[Any]]] = {"gang": {}, "past": {}, "latents": {}, "hops": {}}
    until = 0
    for c in chunks:
        assert c.from_tick == until and all(c.from_tick <= t.tick < c.until_tick for t in c.tasks)
        until = c.until_tick
        assert c.first_block == len(out["starts"])
        out["tasks"] += c.tasks
        out["starts"] += c.starts
        for name in ("free_after", "recache_free_after"):
            assert not set(getattr(c, name)) & set(out[name])  # each final value is given once
            out[name].update(getattr(c, name))
        assert c.transfers is not None
        for name, entries in per_tick.items():
            for tick, sends in getattr(c.transfers, name).items():
                entries.setdefault(tick, []).extend(sends)
        for name in ("keep_until", "first_read"):
            assert not set(getattr(c.transfers, name)) & set(out[name])
            out[name].update(getattr(c.transfers, name))
        out["kept_from_gang"] |= c.transfers.kept_from_gang
    for name, entries in per_tick.items():
        out[name] = {t: sorted(v) for t, v in entries.items() if v}
    return out


def assert_same(spec: CascadeSpec, got: dict[str, Any]) -> None:
    whole = build_schedule(spec)
    plan: TransferPlan = plan_transfers(whole)
    assert tuple(got["tasks"]) == whole.tasks  # the task set, each task's tick, device, reads and prompt
    assert tuple(got["starts"]) == whole.starts
    assert got["free_after"] == dict(enumerate(whole.free_after))
    assert got["recache_free_after"] == dict(whole.recache_free_after)
    for name in ("gang", "past", "latents", "hops"):
        assert got[name] == {t: sorted(v) for t, v in enumerate(getattr(plan, name)) if v}, name
    assert got["keep_until"] == plan.keep_until
    assert got["first_read"] == plan.first_read
    assert got["kept_from_gang"] == plan.kept_from_gang


def long_spec(**kw: Any) -> CascadeSpec:
    """300 blocks with a switch every 37 blocks (to prompts 1, 2, ...), window 7, sink 1 unless told."""
    return CascadeSpec(**{"num_blocks": 300, "window": 7, "sink": 1,
                          "switches": tuple((at, i + 1) for i, at in enumerate(range(5, 300, 37))), **kw})


LONG = {
    "causal-lag1-block-none": long_spec(lag=1, num_devices=5),
    "causal-lag1-block-recache": long_spec(lag=1, num_devices=5, switch_policy="recache"),
    "bidirectional-lag2-stage-recache": long_spec(lag=2, num_devices=3, placement="stage", attention="bidirectional",
                                                  switch_policy="recache"),
    "stale-stride2-hybrid-recache": long_spec(lag=1, num_devices=4, placement="layers", rings=2, stage_stride=2,
                                              num_layers=30, attention="stale", switch_policy="recache"),
    "stage-stride4-ring-none": long_spec(lag=1, num_devices=4, placement="layers", stage_stride=4, num_layers=30,
                                         attention="stage", timesteps=(1000, 750, 500, 250), cache_pass=False),
    "bidirectional-stride3-ring3-recache": long_spec(lag=(1, 2, 3) * 99 + (1, 1), num_devices=3,
                                                     placement="layers", stage_stride=3, layer_split=(4, 4, 2),
                                                     attention="bidirectional", switch_policy="recache", sink=2),
    "causal-stride3-block-perblock-recache": long_spec(lag=tuple(1 + b % 11 for b in range(299)), num_devices=2,
                                                       stage_stride=3, switch_policy="recache", window=3),
}


@pytest.mark.parametrize("early", [False, True], ids=["switch-with-blocks", "switch-queued-early"])
@pytest.mark.parametrize("name", sorted(LONG))
def test_rolling_equals_whole_over_300_blocks(name: str, early: bool) -> None:
    spec = LONG[name]
    cuts = [random.Random(name).randint(1, 7) for _ in range(400)]
    assert_same(spec, joined(roll(spec, cuts, early)))


@given(ring_specs(max_blocks=14, switches=4), st.lists(st.integers(1, 5), min_size=1, max_size=6), st.booleans())
def test_rolling_equals_whole_across_the_spec_space(spec: CascadeSpec, cuts: list[int], early: bool) -> None:
    assert_same(spec, joined(roll(spec, cuts, early)))


def test_state_stays_bounded_on_a_long_stream() -> None:
    """3000 blocks, one at a time, with prompt switches under recache: the state held (blocks, buffered
    ticks, the planner's versions and reads) never grows past what the window, the sink and the blocks in
    flight need; a block leaves it once the last block that sees it is built."""
    stream = RollingSchedule(CascadeSpec(num_blocks=1, lag=1, num_devices=5, window=7, sink=1,
                                         switch_policy="recache"))
    given = len(stream.advance().tasks)
    peak: dict[str, int] = {}
    for b in range(1, 3000):
        if b % 100 == 50:
            stream.switch(b, prompt=b // 100 % 3)
        stream.extend(1)
        chunk = stream.advance()
        given += len(chunk.tasks)
        assert chunk.transfers is not None and given >= 5 * (b - 6)  # a block's worth each time, after a few
        for key, value in stream.state_size().items():
            peak[key] = max(peak.get(key, 0), value)
        if b > 100:
            assert 0 in stream.held_blocks and b - 20 not in stream.held_blocks  # the sink stays, the old go
    # The sink (1), the window (7), and the blocks in flight and declared ahead of them (under recache a
    # block waits for those that start by its commit stage: 2 x S); S = 5 versions each, and the re-encoded
    # ones; one read entry per (version, device).
    held = 1 + 7 + 2 * 5
    assert peak["blocks"] <= held and peak["ticks"] <= 5 and peak["in_flight"] <= 5
    assert peak["versions"] <= held * 5 + peak["reencoded"] and peak["reencoded"] <= held  # superseded ones go
    assert peak["reads"] <= peak["versions"] * 5 and peak["received"] <= peak["versions"] * 5
    stream.close()
    given += len(stream.advance().tasks)
    assert given == 3000 * 5 + 30  # every task, and a recache task per switch
    assert stream.held_blocks == () and stream.state_size()["versions"] == 0


def test_unbounded_window_keeps_every_block() -> None:
    stream = RollingSchedule(CascadeSpec(num_blocks=50, lag=1, num_devices=2))
    stream.advance()
    assert len(stream.held_blocks) == 50  # every block stays visible to every later one


def test_declaring_is_checked() -> None:
    stream = RollingSchedule(CascadeSpec(num_blocks=3, lag=1))
    stream.advance()
    with pytest.raises(ConfigError, match="`at_block` must be at least 3"):
        stream.switch(2, 1)
    stream.switch(5, 1)
    with pytest.raises(ConfigError, match="increasing at_block order"):
        stream.switch(4, 2)
    with pytest.raises(ConfigError, match="`lag` must be between 1 and 5"):
        stream.extend(1, lags=[6])
    with pytest.raises(ConfigError, match="one entry per new block"):
        stream.extend(2, lags=[1])
    stream.extend(3)
    chunk = stream.advance()
    assert {t.prompt for t in chunk.tasks if t.block == 5} <= {1}
    stream.close()
    with pytest.raises(ConfigError, match="closed"):
        stream.extend(1)
    with pytest.raises(ConfigError, match="closed"):
        stream.switch(9, 1)
    last = stream.advance()
    assert max(t.block for t in last.tasks) == 5 and last.tasks[-1].prompt == 1


def test_a_chunk_gives_only_final_ticks() -> None:
    """A tick is given once no block still to come can add to it. Under recache a switch queued later may
    put a recache task before the next block, and every task after it reads what it re-encodes, so a
    block waits for the blocks that start by its commit stage."""
    stream = RollingSchedule(CascadeSpec(num_blocks=2, lag=3, num_devices=2, switch_policy="recache"))
    assert stream.advance().tasks == ()  # block 1 commits at tick 7, after any block 2 could start
    stream.switch(2, 1)
    stream.extend(1)  # block 2 starts at 3 + 3 + 1 = 7, its recache task at 6
    second = stream.advance()
    assert second.until_tick == 6 and {t.block for t in second.tasks} == {0, 1}
    stream.close()
    last = stream.advance()
    assert [t.name for t in last.tasks if t.tick == 6] == ["B1S3", "B2R"]  # the recache task last in its tick
    assert last.tasks[-1].name == "B2S4" and last.tasks[-1].reads == ((0, 5), (1, 4))
    # Without recache and bidirectional, every declared block is built at once.
    causal = RollingSchedule(CascadeSpec(num_blocks=2, lag=3, num_devices=2))
    assert [t.name for t in causal.advance().tasks] == ["B0S0", "B0S1", "B0S2", "B0S3", "B1S0"]
