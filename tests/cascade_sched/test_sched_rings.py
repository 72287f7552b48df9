"""Issue 24's contract: stage strides, the ``stage`` context and the ``layers`` placement (G x W rings).

Every schedule of the new space passes :func:`check_all` (test_sched_properties.py: the oracle's reads,
ticks, in-flight sets, grids, JSON, DAG) and the ring's own invariants below; ``validate`` rejects every
mutation of it, naming the task.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections import Counter, defaultdict

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from sched_support import replace_task, ring_specs
from test_sched_properties import check_all

from cascade_sched import CascadeSpec, ConfigError, Schedule, ScheduleError, build_schedule, validate
from cascade_sched.io import dumps, loads
from cascade_sched.placement import default_decode_device
from cascade_sched.schedule import RECACHE_STAGE, TaskKind
from cascade_sched.transfers import DECODE, NEXT, message_bytes, plan_transfers
from tests import strategies

MARK = "<-- ERROR HERE"

CORNERS = [
    # StreamDiffusionV2's stream batch: 4 stages, one ring of 4 devices, stride 4, stage context.
    CascadeSpec(num_blocks=9, timesteps=(1000, 750, 500, 250), cache_pass=False, lag=1, num_devices=4,
                placement="layers", stage_stride=4, num_layers=30, attention="stage"),
    CascadeSpec(num_blocks=1, num_devices=4, placement="layers", stage_stride=4, num_layers=4),
    CascadeSpec(num_blocks=5, num_devices=1, placement="layers", stage_stride=3, num_layers=1, lag=1),
    CascadeSpec(num_blocks=7, lag=1, num_devices=6, placement="layers", rings=3, stage_stride=2,
                layer_split=(20, 10), attention="bidirectional", window=2, sink=1),
    CascadeSpec(num_blocks=7, lag=13, num_devices=4, placement="layers", rings=2, stage_stride=3,
                num_layers=5, attention="stale", window=1),
    CascadeSpec(num_blocks=6, lag=(1, 17, 2, 1, 9), num_devices=4, placement="layers", stage_stride=4,
                num_layers=30, attention="causal", sink=9),
    CascadeSpec(num_blocks=6, lag=1, stage_stride=4, num_devices=5, attention="stage", window=3, sink=1),
    CascadeSpec(num_blocks=6, lag=2, stage_stride=2, num_devices=3, placement="stage", attention="stale"),
    CascadeSpec(num_blocks=6, lag=1, num_devices=4, placement="layers", rings=2, stage_stride=2,
                num_layers=30, switches=((2, 1), (4, 2)), switch_policy="recache", window=3),
    CascadeSpec(num_blocks=5, timesteps=(500,), cache_pass=False, lag=1, num_devices=2, placement="layers",
                stage_stride=2, num_layers=8, switches=((3, 1),), switch_policy="recache"),
]


def check_ring(schedule: Schedule) -> None:
    """The invariants the ring adds: where and when every layer range of every task runs, what each read
    finds there, and what the transfer plan moves and keeps."""
    spec = schedule.spec
    S, W = spec.num_stages, spec.ring_size
    segs = {t.ref: schedule.segments(t) for t in schedule.tasks}
    tick_of = {(t.block, t.stage): t.tick for t in schedule.tasks}
    producer = {ref: t for t in schedule.tasks for ref in schedule.writes(t)}

    # A ring never holds two stages of one block at once: the device ticks of a block's stages are
    # disjoint, and each stage enters after the previous one left (its input latent exists).
    for b in range(spec.num_blocks):
        spans = [(tick_of[(b, s)], tick_of[(b, s)] + W - 1) for s in range(S)]
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start > end
        held = Counter((tick_of[(b, s)] + r, d) for s in range(S) for r, (d, _, _) in enumerate(segs[(b, s)]))
        assert max(held.values()) == 1

    # Every read is of a produced version: at the reader's layer range, no later than the reader runs it,
    # and at the same tick only inside the gang (causal, bidirectional).
    for t in schedule.tasks:
        for ref in t.reads:
            p = producer[ref]
            for (_, pf, pe), (_, f, e), r in zip(segs[p.ref], segs[t.ref], range(W), strict=True):
                assert (pf, pe) == (f, e)  # the same layer range, at the same place in both rings
                assert p.tick + r <= t.tick + r
                if p.tick == t.tick:
                    assert spec.attention in ("causal", "bidirectional")

    # The transfer plan: every cross-device read is a gang exchange at its tick, a past send or a kept
    # gang copy; bytes add up per message; hops and latents follow the ring.
    plan = plan_transfers(schedule)
    decode = default_decode_device(spec)
    assert plan.decode_device == decode == W - 1
    gang = {(tick, m.ref, m.dst): m for tick, sends in enumerate(plan.gang) for m in sends}
    past = {(m.ref, m.dst): (tick, m) for tick, sends in enumerate(plan.past) for m in sends}
    for t in schedule.tasks:
        for ref in t.reads:
            p = producer[ref]
            for r, ((pd, f, e), (d, _, _)) in enumerate(zip(segs[p.ref], segs[t.ref], strict=True)):
                if p.tick < t.tick:  # a later read: the device holds it from its first read to its last
                    assert plan.first_read[(d, ref)] <= t.tick + r <= plan.keep_until[(d, ref)]
                if pd == d:
                    continue
                if p.tick == t.tick:
                    m = gang[(t.tick + r, ref, d)]
                    assert (m.src, m.first_layer, m.end_layer) == (pd, f, e)
                elif (d, ref) in plan.kept_from_gang:
                    assert (p.tick + r, ref, d) in gang
                else:
                    tick, m = past[(ref, d)]
                    assert tick == p.tick + r and (m.src, m.first_layer, m.end_layer) == (pd, f, e)
    # The K/V pool keeps each version a later task reads, on every device of its layer range, until then.
    for hold in plan.residency():
        assert plan.device_layers[hold.device] == (hold.first_layer, hold.end_layer)
    hops = Counter((tick, h.block, h.stage) for tick, sends in enumerate(plan.hops) for h in sends)
    for t in schedule.tasks:
        members = len(schedule.writes(t)) if t.kind == TaskKind.RECACHE else 1
        for r in range(W - 1 if members else 0):
            assert hops[(t.tick + r, t.block, t.stage)] == 1
    assert sum(hops.values()) == sum(W - 1 for t in schedule.tasks if t.kind != TaskKind.RECACHE or t.replaces)
    latents = [(tick, m) for tick, sends in enumerate(plan.latents) for m in sends]
    for tick, m in latents:
        if m.purpose == NEXT:  # from the ring's last device, after the previous stage's last segment
            prev = segs[(m.block, m.stage - 1)]
            assert (m.src, tick) == (prev[-1][0], tick_of[(m.block, m.stage - 1)] + W - 1)
            assert m.dst == segs[(m.block, m.stage)][0][0]
    decoded = sorted(m.block for _, m in latents if m.purpose == DECODE)
    assert decoded == [b for b in range(spec.num_blocks) if segs[(b, spec.num_denoise - 1)][-1][0] != decode]

    sizes = message_bytes(1000, spec.num_layers or 30, 64, hidden_bytes=300)
    transfers = list(plan.transfers(sizes))
    traffic = plan.traffic(sizes)
    assert sum(traffic.values()) == sum(t.nbytes for t in transfers)
    by_link: dict[tuple[int, int], int] = defaultdict(int)
    for (tick, src, dst), n in traffic.items():
        assert 0 <= tick < schedule.num_ticks and src != dst
        by_link[(src, dst)] += n
    # The same bytes restated from the plan's entries: a K/V send carries its layer range only.
    n_layers = spec.num_layers or 30
    expect = sum(1000 * ((m.end_layer or n_layers) - m.first_layer) for g in plan.gang for m in g)
    expect += sum(2 * 500 * ((m.end_layer or n_layers) - m.first_layer) for g in plan.past for m in g)
    expect += 64 * len(latents) + sum(300 * h.members for g in plan.hops for h in g)
    assert sum(by_link.values()) == expect


@given(ring_specs())
def test_every_invariant_holds_across_the_ring_space(spec: CascadeSpec) -> None:
    s = build_schedule(spec)
    check_all(s)
    check_ring(s)


@given(ring_specs(switches=3))
def test_ring_invariants_hold_with_prompt_switches(spec: CascadeSpec) -> None:
    """With switches (either policy; recache tasks run through the ring too): valid, the ring's rules, JSON."""
    s = validate(build_schedule(spec))
    check_ring(s)
    assert loads(dumps(s)) == s


@pytest.mark.parametrize("spec", CORNERS, ids=repr)
def test_every_invariant_holds_at_the_ring_corners(spec: CascadeSpec) -> None:
    s = build_schedule(spec)
    if not spec.switches:
        check_all(s)
    check_ring(s)


# -- the contract's rules, on the worked example of docs/contract.md ---------------------------------------


def example(attention: str) -> Schedule:
    """docs/contract.md's worked example: 6 blocks, lag 1, k = 4, one ring of W = 4 devices."""
    return build_schedule(CascadeSpec(num_blocks=6, lag=1, num_devices=4, placement="layers", stage_stride=4,
                                      num_layers=30, attention=attention))


def test_worked_example_of_each_context() -> None:
    """Task (3, 1) runs at tick start(3) + 1*4 = 7; block 0 wrote stage 1 at tick 4, stage 2 at 8."""
    causal = example("causal")
    assert causal.task(3, 1).tick == 7
    assert causal.task(3, 1).reads == ((0, 1), (1, 1), (2, 1))  # ver: the newest by tick 7 (ticks 4, 5, 6)
    assert causal.task(4, 1).reads == ((0, 2), (1, 1), (2, 1), (3, 1))  # tick 8: block 0's stage 2 of this tick
    assert causal.task(0, 2).reads == ()
    assert example("bidirectional").task(0, 2).reads == ((1, 1), (2, 1), (3, 1), (4, 1), (5, 0))
    stale = example("stale")
    assert stale.task(4, 1).reads == ((0, 1), (1, 1), (2, 1), (3, 1))  # done: finished before tick 8
    assert stale.task(1, 0).reads == ((0, 0),)
    stage = example("stage")
    assert stage.task(4, 1).reads == ((0, 1), (1, 1), (2, 1), (3, 1))
    assert stage.task(5, 4).reads == ((0, 4), (1, 4), (2, 4), (3, 4), (4, 4))  # the commit stage: committed
    assert stage.free_after == (21,) * 6  # block 5's commit stage, tick 5 + 16, reads every block last
    assert causal.task(5, 0).reads == example("bidirectional").task(5, 0).reads == (
        (0, 1), (1, 1), (2, 0), (3, 0), (4, 0))
    assert stale.task(5, 0).reads == ((0, 1), (1, 0), (2, 0), (3, 0), (4, 0))
    assert stage.task(5, 0).reads == ((0, 0), (1, 0), (2, 0), (3, 0), (4, 0))
    assert not any(plan_transfers(causal).gang) and not any(plan_transfers(causal).past)  # one ring: no K/V moves
    # The ring: task (3, 1) runs layers [0, 8) on d0 at 7, ..., [23, 30) on d3 at 10; the sampler step
    # and decoding are on d3.
    assert causal.segments(causal.task(3, 1)) == ((0, 0, 8), (1, 8, 16), (2, 16, 23), (3, 23, 30))
    assert causal.exit_tick(causal.task(3, 1)) == 10
    assert causal.decode_ready_tick(3) == 3 + 3 * 4 + 3
    assert causal.num_ticks == 5 + 16 + 4


def test_stride_one_is_todays_contract() -> None:
    """k = 1: ver(j, n) = n - start(j) while in flight, done(j, n) = n - 1 - start(j); the grids of today."""
    s = build_schedule(CascadeSpec(num_blocks=8, lag=1, num_devices=5))
    assert s.task(3, 1).reads == ((0, 4), (1, 3), (2, 2))
    assert build_schedule(CascadeSpec(num_blocks=3, lag=1, num_devices=3, attention="stale")).task(2, 0).reads == (
        (0, 1), (1, 0))


def test_stage_reads_each_stage_and_the_plan_keeps_it() -> None:
    """Stage context: the K/V pool keeps every stage's version of a visible block while a later task
    reads it; nothing is read at its own tick, so there is no gang exchange."""
    s = build_schedule(CascadeSpec(num_blocks=6, lag=1, num_devices=3, attention="stage", window=3))
    plan = plan_transfers(s)
    assert not any(plan.gang)
    assert plan.keep_until[(2, (0, 1))] == s.task(2, 1).tick  # block 2 (on d2) reads (0, 1) last
    assert plan.keep_until[(1, (0, 1))] == s.task(1, 1).tick
    assert (0, (0, 1)) not in plan.keep_until  # block 3, the next on d0, does not see block 0 (window 3)


def test_hybrid_reads_between_rings_move_only_their_layer_range() -> None:
    s = build_schedule(CascadeSpec(num_blocks=4, lag=2, num_devices=4, placement="layers", rings=2,
                                   stage_stride=2, layer_split=(20, 10)))
    plan = plan_transfers(s)
    # Block 1 (ring 1: d2, d3) starts at tick 2 and reads block 0's stage 1 (ring 0), made in the same
    # gang: layers [0, 20) d0 -> d2 at tick 2, layers [20, 30) d1 -> d3 at tick 3.
    assert s.task(1, 0).reads == ((0, 1),)
    assert [tuple(m) for m in plan.gang_sends(2)] == [((0, 1), 0, 2, 0, 20)]
    assert [tuple(m) for m in plan.gang_sends(3)] == [((0, 1), 1, 3, 20, 30)]
    # Under stale the same read is of tick 0's version, sent after it, per layer range.
    stale = build_schedule(CascadeSpec(num_blocks=4, lag=2, num_devices=4, placement="layers", rings=2,
                                       stage_stride=2, layer_split=(20, 10), attention="stale"))
    assert stale.task(1, 0).reads == ((0, 0),)
    splan = plan_transfers(stale)
    assert not any(splan.gang)
    assert [tuple(m) for m in splan.past_sends(0)] == [((0, 0), 0, 2, 0, 20)]
    assert [tuple(m) for m in splan.past_sends(1)] == [((0, 0), 1, 3, 20, 30)]
    assert [tuple(h) for h in plan.hop_sends(0)] == [(0, 0, 0, 1, 1)]
    sizes = message_bytes(1000, 30, 64)
    assert plan.traffic(sizes)[(2, 0, 2)] == 20 * 1000  # one message per layer, K and V stacked
    assert splan.traffic(sizes)[(0, 0, 2)] == 2 * 20 * 500  # K, then V, per layer


# -- validate rejects every corruption, naming the task -----------------------------------------------------


def rejected(schedule: Schedule, name: str | None = None) -> str:
    with pytest.raises(ScheduleError) as info:
        validate(schedule)
    message = str(info.value)
    assert message.startswith("invalid schedule: ") and MARK in message, message
    if name is not None:
        assert name in message.splitlines()[0], message
    return message


def layered() -> st.SearchStrategy[CascadeSpec]:
    """Schedules on rings of two devices or more."""
    return ring_specs(min_blocks=2, placements=("layers",)).filter(lambda s: s.ring_size > 1)


@given(ring_specs(), st.data())
def test_drop_duplicate_or_move_a_task(spec: CascadeSpec, data: st.DataObject) -> None:
    s = build_schedule(spec)
    i = data.draw(st.integers(0, len(s.tasks) - 1), label="index")
    task = s.tasks[i]
    how = data.draw(st.sampled_from(["drop", "duplicate", "move"]), label="mutation")
    if how == "drop":
        message = rejected(dataclasses.replace(s, tasks=s.tasks[:i] + s.tasks[i + 1:]))
        assert task.name in message.splitlines()[0]
    elif how == "duplicate":
        rejected(dataclasses.replace(s, tasks=s.tasks[:i + 1] + s.tasks[i:]), str(task))
    else:
        tick = data.draw(st.integers(0, s.num_ticks + 2).filter(lambda n: n != task.tick), label="tick")
        tasks = sorted(replace_task(s, i, task._replace(tick=tick)), key=lambda t: (t.tick, t.block))
        assert task.name in rejected(dataclasses.replace(s, tasks=tuple(tasks))).splitlines()[0]


@given(ring_specs(min_blocks=2), st.data())
def test_change_a_read(spec: CascadeSpec, data: st.DataObject) -> None:
    s = build_schedule(spec)
    cands = [k for k, t in enumerate(s.tasks) if t.reads]
    assume(cands and spec.num_stages >= 2)
    i = data.draw(st.sampled_from(cands), label="index")
    t = s.tasks[i]
    reads = list(t.reads)
    r = data.draw(st.integers(0, len(reads) - 1), label="read")
    j, v = reads[r]
    how = data.draw(st.sampled_from(["version", "drop", "add own"]), label="mutation")
    if how == "version":
        reads[r] = (j, data.draw(st.integers(0, spec.num_stages - 1).filter(lambda w: w != v), label="v"))
    elif how == "drop":
        del reads[r]
    else:
        reads.append((t.block, 0))
    bad = dataclasses.replace(s, tasks=replace_task(s, i, t._replace(reads=tuple(sorted(reads)))))
    rejected(bad, str(t))


@given(layered(), st.data())
def test_change_a_segment(spec: CascadeSpec, data: st.DataObject) -> None:
    s = build_schedule(spec)
    t = data.draw(st.sampled_from([t for t in s.tasks if t.stage != RECACHE_STAGE]), label="task")
    segs = list(s.segments(t))
    W, D = len(segs), spec.num_devices
    how = data.draw(st.sampled_from(["range", "drop", "swap", "repeat", "out of range", "other range"]),
                    label="mutation")
    r = data.draw(st.integers(0, W - 1), label="segment")
    d, first, end = segs[r]
    if how == "range":
        assume(end is not None and end - first > 1)
        segs[r] = (d, first, end - 1)
    elif how == "drop":
        del segs[r]
    elif how == "swap":
        segs[0], segs[-1] = segs[-1], segs[0]
    elif how == "repeat":
        segs[r] = (segs[r - 1][0], first, end)
    elif how == "out of range":
        segs[r] = (D + r, first, end)
    else:  # a device that runs another layer range elsewhere
        segs[r] = (segs[(r + 1) % W][0], first, end)
    bad = dataclasses.replace(s, custom_segments={t.ref: tuple(segs)})
    rejected(bad, str(t))


@given(layered(), st.data())
def test_stride_below_the_ring_size(spec: CascadeSpec, data: st.DataObject) -> None:
    """A spec cannot ask for k < W; a schedule built past that check is refused at the block's second stage."""
    assume(spec.num_stages >= 2)
    W = spec.ring_size
    k = data.draw(st.integers(1, W - 1), label="stride")
    with pytest.raises(ConfigError, match="at least the ring size"):
        dataclasses.replace(spec, stage_stride=k)
    bad_spec = copy.copy(dataclasses.replace(spec, lag=1))  # a lag every stride allows
    object.__setattr__(bad_spec, "stage_stride", k)  # as a hand-made schedule could claim
    s = build_schedule(bad_spec)
    message = rejected(s, "B0S1@d0")
    assert "holds it" in message and f"W={W}" in message


def test_a_moved_segment_keeps_its_layer_range_and_is_valid() -> None:
    """A hand-edited segment on another ring's device of the same layer range is a valid placement."""
    s = build_schedule(CascadeSpec(num_blocks=4, lag=1, num_devices=4, placement="layers", rings=2,
                                   stage_stride=2, num_layers=30))
    t = s.task(0, 1)
    moved = dataclasses.replace(s, custom_segments={t.ref: ((0, 0, 15), (3, 15, 30))})
    assert validate(moved) is moved
    plan = plan_transfers(moved)
    assert (0, 1, 0, 3, 1) in [tuple(h) for h in plan.hop_sends(t.tick)]


@given(strategies.specs(blocks=(1, 8), devices=(1, 6), placements=strategies.ALL_PLACEMENTS, strides=(1, 3),
                        switches=2))
def test_link_bytes_are_the_transfers_summed(spec: CascadeSpec) -> None:
    """``TransferPlan.link_bytes`` counts what summing ``transfers`` gives, per kind and link."""
    plan = plan_transfers(build_schedule(spec))
    sizes = message_bytes(1000, spec.num_layers or 30, 64, hidden_bytes=300)
    want: dict[tuple[str, int, int], int] = {}
    for t in plan.transfers(sizes):
        want[(t.kind, t.src, t.dst)] = want.get((t.kind, t.src, t.dst), 0) + t.nbytes
    assert plan.link_bytes(sizes) == want
