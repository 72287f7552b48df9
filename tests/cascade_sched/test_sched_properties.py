"""Property tests of ``build_schedule`` over the whole spec space (hypothesis; see tests/conftest.py).

Every invariant is checked against a literal reading of docs/contract.md (``sched_support.oracle_*``),
never against the builder's own helpers.
"""

from __future__ import annotations

import math
from collections import defaultdict

import networkx as nx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sched_support import oracle_reads, oracle_starts, specs

from cascade_sched import CascadeSpec, Schedule, build_schedule, parse_task, validate
from cascade_sched.graph import critical_path, to_networkx, wavefronts
from cascade_sched.io import dumps, loads
from cascade_sched.render import render_grid

# Corners of the space named by the issue, run every time in addition to the generated examples.
CORNERS = [
    CascadeSpec(num_blocks=1),
    CascadeSpec(num_blocks=1, lag=1, num_devices=3, attention="bidirectional"),
    CascadeSpec(num_blocks=6, num_devices=1, lag=1),
    CascadeSpec(num_blocks=6, lag=5, num_devices=5),
    CascadeSpec(num_blocks=7, lag=1, num_devices=5, window=1),
    CascadeSpec(num_blocks=7, lag=1, num_devices=5, window=1, sink=9, attention="stale"),
    CascadeSpec(num_blocks=7, lag=2, window=2, sink=7, attention="bidirectional", placement="stage"),
    CascadeSpec(num_blocks=5, timesteps=(500,), cache_pass=False, lag=1, attention="stale"),
    CascadeSpec(num_blocks=5, timesteps=(500,), cache_pass=False, lag=1, attention="bidirectional"),
    CascadeSpec(num_blocks=6, timesteps=(999, 800, 600, 400, 200, 1), lag=(1, 7, 3, 1, 2), num_devices=4),
    CascadeSpec(
        num_blocks=6, timesteps=(900.5, 0.5), cache_pass=False, lag=(2, 1, 2, 1, 1), attention="stale"
    ),
]


def check_all(schedule: Schedule) -> None:
    """Every invariant of one built schedule (called by the generated and the corner tests, and by
    test_sched_rings.py over strides and rings)."""
    spec = schedule.spec
    S, B, D, K = spec.num_stages, spec.num_blocks, spec.num_devices, spec.num_denoise
    k, W = spec.stage_stride, spec.ring_size
    span = (S - 1) * k + 1
    assert validate(schedule) is schedule

    # Start ticks, and each (block, stage) exactly once at start(b) + s, in (tick, block) order.
    starts = oracle_starts(spec)
    assert list(schedule.starts) == starts
    refs = [t.ref for t in schedule.tasks]
    assert sorted(refs) == [(b, s) for b in range(B) for s in range(S)]
    assert len(set(refs)) == B * S
    assert [(t.tick, t.block) for t in schedule.tasks] == sorted((t.tick, t.block) for t in schedule.tasks)
    kinds = ["denoise"] * K + ["cache"] * (S - K)
    for t in schedule.tasks:
        assert t.tick == starts[t.block] + t.stage * k
        assert t.kind == kinds[t.stage]
        assert t.timestep == (spec.timesteps[t.stage] if t.stage < K else 0)
        assert 0 <= t.device < D

    # Reads: exactly the oracle's, for every task.
    for t in schedule.tasks:
        assert t.reads == oracle_reads(spec, t.block, t.stage), str(t)

    # Blocks in flight per tick: brute force, bounded by ceil(span / min lag); the gang of a tick is the
    # blocks in flight with a stage entering then.
    min_lag = min(spec.lags, default=span)
    bound = math.ceil(span / min_lag)
    assert schedule.num_ticks == starts[-1] + (S - 1) * k + W
    for n in range(schedule.num_ticks):
        flying = [b for b in range(B) if starts[b] <= n < starts[b] + span]
        assert list(schedule.in_flight(n)) == flying
        assert [t.block for t in schedule.gangs[n]] == [b for b in flying if (n - starts[b]) % k == 0]
        assert all(t.tick == n for t in schedule.gangs[n])
        assert len(flying) <= bound
    assert schedule.max_in_flight() <= bound
    if bound <= B and len(set(spec.lags)) == 1:  # a uniform lag reaches the bound once enough blocks exist
        assert schedule.max_in_flight() == bound

    # Commit, decode-ready and free ticks.
    for b in range(B):
        assert schedule.version_tick((b, S - 1)) == starts[b] + (S - 1) * k
        assert schedule.task(b, S - 1).tick == schedule.version_tick((b, S - 1))
        assert schedule.decode_ready_tick(b) == starts[b] + (K - 1) * k + W - 1
        assert schedule.task(b, K - 1).kind == "denoise"
        readers = [t.tick for t in schedule.tasks if (b, S - 1) in t.reads]
        assert all(schedule.free_after[b] >= n for n in readers)
        # Exact: the last read of the committed version, or the commit tick when nothing reads it.
        assert schedule.free_after[b] == max([schedule.version_tick((b, S - 1)), *readers])

    # Devices: one device's tasks in one tick are its batch (the grid cell), never two ticks at once.
    # Under a ring, a task occupies device r of its ring at tick + r, and the header names each device's
    # layer range.
    batches: dict[tuple[int, int], list[str]] = defaultdict(list)
    for t in schedule.tasks:
        for r, (d, _, _) in enumerate(schedule.segments(t)):
            batches[(t.tick + r, d)].append(t.name)
    grid = render_grid(schedule).splitlines()
    header = [c.strip() for c in grid[0].split("|")][1:]
    held = {d: spec.layer_ranges[d % W] for d in range(D)}  # a device no task reaches: its ring's split
    assert header == [f"d{d}" if W == 1 else f"d{d} [{held[d][0]},{held[d][1]})" for d in range(D)]
    rows = grid[2:]
    assert len(rows) == schedule.num_ticks
    for n, row in enumerate(rows):
        cells = [c.strip() for c in row.split("|")]
        assert int(cells[0]) == n
        assert cells[1:] == ["+".join(batches.get((n, d), ["."])) for d in range(D)]
    for d in range(D):
        mine = [t for t in schedule.tasks if t.device == d]
        assert mine == [t for t in schedule.tasks if t.device == d]
        assert [(t.tick, t.block) for t in mine] == sorted((t.tick, t.block) for t in mine)
    if spec.placement == "block":
        assert all(t.device == t.block % D for t in schedule.tasks)
        if schedule.max_in_flight() <= D and k == 1:  # in-flight blocks are consecutive, so distinct mod D
            assert all(len(v) == 1 for v in batches.values())
    elif spec.placement == "stage":
        assert all(t.device == t.stage % D for t in schedule.tasks)
    else:  # blocks round robin over G rings of W devices; device r of a ring runs the r-th layer range
        G = spec.rings
        for t in schedule.tasks:
            g = t.block % G
            assert t.device == g * W
            assert [d for d, _, _ in schedule.segments(t)] == list(range(g * W, g * W + W))
        assert [(f, e) for _, f, e in schedule.segments(schedule.tasks[0])] == list(spec.layer_ranges)
        if spec.layer_split is None:  # the even split, the remainder to the first devices
            sizes = [e - f for f, e in spec.layer_ranges]
            n_layers = spec.num_layers
            assert n_layers is not None and sum(sizes) == n_layers
            assert sizes == sorted(sizes, reverse=True) and max(sizes) - min(sizes) <= 1
        else:
            assert [e - f for f, e in spec.layer_ranges] == list(spec.layer_split)

    # Compact names round-trip.
    for t in schedule.tasks:
        assert parse_task(str(t), schedule) == t

    # JSON round-trips to an equal schedule.
    assert loads(dumps(schedule)) == schedule
    assert loads(dumps(schedule, indent=1)) == schedule

    # The DAG: acyclic, edges only forward in ticks, critical path between S and the tick count.
    g = to_networkx(schedule)
    assert g.number_of_nodes() == B * S
    assert nx.is_directed_acyclic_graph(g)
    for u, v in g.edges:
        assert g.nodes[u]["tick"] < g.nodes[v]["tick"]
    path = critical_path(schedule, g)
    assert S <= len(path) <= schedule.num_ticks
    assert sorted(r for gen in wavefronts(schedule, g) for r in gen) == sorted(refs)


@given(specs())
def test_every_invariant_holds_across_the_spec_space(spec: CascadeSpec) -> None:
    check_all(build_schedule(spec))


@pytest.mark.parametrize("spec", CORNERS, ids=repr)
def test_every_invariant_holds_at_the_corners(spec: CascadeSpec) -> None:
    check_all(build_schedule(spec))


@given(specs(), st.data())
def test_prefix_is_stable_when_blocks_are_added(spec: CascadeSpec, data: st.DataObject) -> None:
    """Adding blocks changes nothing before the first added block starts (prompt switches rely on it)."""
    extra = data.draw(st.integers(1, 5), label="extra blocks")
    lag = spec.lag
    if isinstance(lag, tuple):
        lag = lag + tuple(
            data.draw(st.lists(st.integers(1, spec.num_stages), min_size=extra, max_size=extra))
        )
    bigger = CascadeSpec.from_dict({**spec.to_dict(), "num_blocks": spec.num_blocks + extra, "lag": lag})
    small, large = build_schedule(spec), build_schedule(bigger)
    boundary = large.starts[spec.num_blocks]
    before_small = [t for t in small.tasks if t.tick < boundary]
    before_large = [t for t in large.tasks if t.tick < boundary]
    assert before_small == before_large
    assert large.starts[: spec.num_blocks] == small.starts


def test_sequential_critical_path_is_the_whole_run() -> None:
    """Lag S with every block reading its predecessor: nothing overlaps, the chain is B x S ticks."""
    for attention in ("causal", "bidirectional", "stale"):
        s = build_schedule(CascadeSpec(num_blocks=4, attention=attention, window=2))
        assert len(critical_path(s)) == s.num_ticks == 20
        assert s.max_in_flight() == 1


def test_fully_parallel_cascade_has_s_blocks_in_flight() -> None:
    s = build_schedule(CascadeSpec(num_blocks=8, lag=1, num_devices=5))
    assert s.max_in_flight() == 5
    assert s.num_ticks == 7 + 5
    # Causal lag 1: block b's stage s reads block b-1 at stage s+1 of the same tick (the gang).
    assert s.task(3, 1).reads == ((0, 4), (1, 3), (2, 2))
    # Block 2 commits at tick 6 itself, so block 6 reads its gang version (2, 4), not a committed one.
    assert s.task(6, 0).reads == ((0, 4), (1, 4), (2, 4), (3, 3), (4, 2), (5, 1))
    assert s.free_after[2] == 11 and s.free_after[7] == s.version_tick((7, s.num_stages - 1))
