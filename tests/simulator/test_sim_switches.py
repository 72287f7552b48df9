"""Prompt switches in the simulator: recache tasks costed, re-encoded versions moved and held, and the stall
at a switch (``cascade_sched.metrics.switch_stalls``) in closed form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_sim_properties import cluster_with, simulate_every_task_once, specs

from apps.cli import main
from cascade_sched import CascadeSpec, build_schedule
from cascade_sched.metrics import switch_stalls, switch_touched
from cascade_sched.schedule import KVRef, Schedule, TaskKind
from cascade_sched.trace import read_chrome_trace
from cascade_sched.transfers import REENCODE, plan_transfers
from simulator import Cluster, UniformCost, get_gpu, get_model, make_cost, simulate
from simulator.profile import ForwardPoint, Profile, ProfileCost
from simulator.visual import draw_gantt, write_trace
from simulator.workload import build_workload

T = 0.1
G13 = get_model("wan2.1-1.3b")


def ideal(n: int) -> Cluster:
    return Cluster.of("h100-sxm", n, interconnect="ideal")


def n_reencoded(s: Schedule, block: int) -> int:
    return len(s.writes(s.task(block, -1)))


# -- closed forms ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("window", "sink", "expect_n"), [(2, 0, 1), (4, 1, 4), (3, 0, 2), (None, 0, 6)])
@pytest.mark.parametrize("devices", [1, 3])
def test_sequential_recache_stalls_one_forward_per_reencoded_block(window: int | None, sink: int, expect_n: int,
                                                                   devices: int) -> None:
    p, B = 6, 10
    spec = CascadeSpec(num_blocks=B, window=window, sink=sink, num_devices=devices, switches=((p, 1),),
                       switch_policy="recache")
    s = build_schedule(spec)
    n = n_reencoded(s, p)
    assert n == expect_n
    r = simulate(s, ideal(devices), UniformCost(T), "tiny")
    S, K = s.num_stages, spec.num_denoise
    # Every block before p is shown after its own K denoise ticks plus the earlier blocks' S each; from p on,
    # the recache forward (n members of T each under uniform costs) comes on top.
    for b in range(B):
        if devices == 1 or b < p:
            assert r.block_decoded_s[b] == pytest.approx((b * S + K + (n if b >= p else 0)) * T)
        else:
            # On several devices the recache needs only the clean latents it re-encodes, not the commit
            # of the last block before it (it replaces that K/V), so it may overlap that cache pass.
            shift = r.block_decoded_s[b] - (b * S + K) * T
            assert (n - 1) * T - 1e-9 <= shift <= n * T + 1e-9
    (st_,) = r.switch_stalls
    assert st_.at_block == st_.worst_block == p
    assert st_.steady_s == pytest.approx(S * T)
    if devices == 1:
        assert st_.stall_s == pytest.approx(n * T)
        assert st_.ratio == pytest.approx((S + n) / S)
        assert r.makespan_s == pytest.approx((B * S + n) * T)
    else:
        assert (n - 1) * T - 1e-9 <= st_.stall_s <= n * T + 1e-9


def test_sequential_recache_of_one_block_is_exactly_one_tick() -> None:
    s = build_schedule(CascadeSpec(num_blocks=8, window=2, switches=((4, 1),), switch_policy="recache"))
    r = simulate(s, ideal(1), UniformCost(T), "tiny")
    assert r.switch_stalls[0].stall_s == pytest.approx(T)  # one tick: the recache task re-encodes block 3
    base = simulate(build_schedule(CascadeSpec(num_blocks=8, window=2, switches=((4, 1),))), ideal(1),
                    UniformCost(T), "tiny")
    assert base.switch_stalls[0].stall_s == pytest.approx(0.0, abs=1e-12)
    assert r.makespan_s - base.makespan_s == pytest.approx(T)


@pytest.mark.parametrize("attention", ["causal", "bidirectional", "stale"])
def test_cascade_with_policy_none_has_no_stall(attention: str) -> None:
    spec = CascadeSpec(num_blocks=14, lag=1, window=4, sink=1, num_devices=5, attention=attention,
                       switches=((7, 1),), switch_policy="none")
    s = build_schedule(spec)
    assert not any(t.kind == TaskKind.RECACHE for t in s.tasks)
    r = simulate(s, ideal(5), UniformCost(T), "tiny")
    d = r.block_decoded_s
    assert all(d[b] - d[b - 1] == pytest.approx(T) for b in range(1, 14))
    (st_,) = r.switch_stalls
    assert st_.stall_s == pytest.approx(0.0, abs=1e-12) and st_.ratio == pytest.approx(1.0)
    # The same timing as with no switch at all: switching the prompt costs the cascade nothing.
    plain = simulate(build_schedule(CascadeSpec.from_dict({**spec.to_dict(), "switches": []})), ideal(5),
                     UniformCost(T), "tiny")
    assert r.block_decoded_s == pytest.approx(plain.block_decoded_s)


def test_cascade_with_recache_has_a_one_tick_bubble() -> None:
    # Lag 1: the blocks in the new block's window are still in flight, so only the sink is re-encoded (one
    # member, one tick on its own device) and block p starts one tick late: one tick of stall.
    s = build_schedule(CascadeSpec(num_blocks=14, lag=1, window=4, sink=1, num_devices=5, switches=((7, 1),),
                                   switch_policy="recache"))
    assert s.task(7, -1).replaces == ((0, 4),)
    r = simulate(s, ideal(5), UniformCost(T), "tiny")
    assert r.switch_stalls[0].stall_s == pytest.approx(T)
    assert r.switch_stalls[0].worst_block == 7


# -- the metric -----------------------------------------------------------------------------------------
def test_switch_stall_definition() -> None:
    shown = [0.0, 1.0, 2.0, 3.0, 4.0, 6.5, 7.5, 8.5, 9.5, 10.5]
    (a,) = switch_stalls(shown, None, [5])
    assert (a.at_block, a.worst_block, a.interval_s, a.steady_s, a.stall_s, a.ratio) == (5, 5, 2.5, 1.0, 1.5, 2.5)
    # decoded times win over denoised ones; a switch at block 0 has nothing to stall against.
    (b,) = switch_stalls([0.0] * 10, shown, [0, 5])
    assert b.stall_s == 1.5
    # With W blocks in flight the switch touches p - W + 1 .. p + W - 1 (a recache delays blocks in flight).
    assert switch_touched(5, 10, 3) == range(3, 8)
    (c,) = switch_stalls([0.0, 1.0, 2.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], None, [5], max_in_flight=3)
    assert (c.worst_block, c.stall_s) == (3, 1.0)
    with pytest.raises(ValueError):
        switch_stalls([1.0], [1.0, 2.0], [1])


# -- every task once, bytes, memory -----------------------------------------------------------------------
def switched_specs(max_devices: int = 6) -> st.SearchStrategy[CascadeSpec]:
    """The simulator's spec space (test_sim_properties.specs) with up to three prompt switches."""
    return specs(max_devices, switches=3)


@given(switched_specs())
def test_every_task_including_recache_is_simulated_exactly_once(spec: CascadeSpec) -> None:
    r = simulate_every_task_once(spec)
    assert len(r.switch_stalls) == sum(1 for at, _ in spec.switches if at >= 1 and spec.num_blocks > 1)


def _implied_bytes(s: Schedule, kv: int, latent: int, decoder: int) -> int:
    """From the schedule alone: each KV version (re-encoded ones included) once to every other device that
    reads it (a recache task reads no K/V; what it replaces moves nothing), each latent to the next stage's device when it changes, every block's clean latent to the
    decoder, and to every recache task on another device that re-encodes it."""
    pairs = set()
    moves = 0
    k = s.spec.num_denoise
    recache_latents = set()
    for t in s.tasks:
        for ref in t.reads:  # a recache task reads none: it re-encodes clean latents
            if s.producer(ref).device != t.device:
                pairs.add((ref, t.device))
        if t.kind == TaskKind.RECACHE:
            for j, _ in t.replaces:
                if s.task(j, k - 1).device != t.device:
                    recache_latents.add((j, t.device))
        elif t.stage > 0 and s.task(t.block, t.stage - 1).device != t.device:
            moves += 1
    moves += sum(1 for b in range(s.num_blocks) if s.task(b, k - 1).device != decoder)
    return len(pairs) * kv + (moves + len(recache_latents)) * latent


@given(switched_specs(), st.sampled_from(["gpu", 0]))
def test_bytes_moved_include_reencoded_versions(spec: CascadeSpec, decode: str | int) -> None:
    s = build_schedule(spec)
    r = simulate(s, cluster_with(spec.num_devices, 100e9), UniformCost(0.01), G13, decode=decode,
                 check_memory=False)
    decoder = spec.num_devices if decode == "gpu" else 0
    assert r.bytes_total == _implied_bytes(s, G13.kv_bytes_per_block(), G13.latent_bytes_per_block(), decoder)
    # The re-encoded KV and the clean latents to recache devices are exactly the core's transfer plan's.
    w = build_workload(s, G13, decoder)
    plan = plan_transfers(s, decoder)
    S = s.num_stages
    planned_kv = {(m.ref, m.src, m.dst) for sends in plan.past for m in sends if m.ref[1] >= S}
    assert {(p.ref, p.src, p.dst) for p in w.past if p.ref[1] >= S} == planned_kv
    planned_lat = {(m.block, m.src, m.dst) for sends in plan.latents for m in sends if m.purpose == REENCODE}
    K = spec.num_denoise
    implied_lat = {(j, s.task(j, K - 1).device, t.device) for t in s.tasks if t.kind == TaskKind.RECACHE
                   for j, _ in t.replaces if s.task(j, K - 1).device != t.device}
    assert planned_lat == implied_lat


def test_reencoded_versions_are_held_until_their_last_read() -> None:
    spec = CascadeSpec(num_blocks=12, lag=2, window=4, sink=1, num_devices=3, switches=((5, 1), (9, 2)),
                       switch_policy="recache")
    s = build_schedule(spec)
    w = build_workload(s, G13)
    assert s.recache_free_after
    for ref, last in s.recache_free_after.items():
        held = [until for (_, r), until in w.plan.keep_until.items() if r == ref]
        assert held and max(held) == last
    # Memory: a device that holds re-encoded versions pays for them as committed KV.
    r = simulate(s, cluster_with(3, 100e9), UniformCost(0.01), G13)
    plain = simulate(build_schedule(CascadeSpec.from_dict({**spec.to_dict(), "switch_policy": "none"})),
                     cluster_with(3, 100e9), UniformCost(0.01), G13)
    assert max(r.peak_memory_bytes) >= max(plain.peak_memory_bytes)


@given(switched_specs())
def test_makespan_is_at_least_the_critical_path_with_recache(spec: CascadeSpec) -> None:
    s = build_schedule(spec)
    r = simulate(s, cluster_with(spec.num_devices, 100e9), UniformCost(0.05), "tiny")
    # Longest chain of tasks, each costing its forward members x 0.05 (a recache task: one per re-encoded
    # block), over the latent chain, the reads of earlier versions and a recache task's clean latents.
    K = spec.num_denoise
    best: dict[KVRef, float] = {}
    for t in sorted(s.tasks, key=lambda t: t.tick):
        w = 0.05 * (len(s.writes(t)) if t.kind == TaskKind.RECACHE else 1)
        preds = [s.producer(ref) for ref in t.reads if s.version_tick(ref) < t.tick]
        if t.kind == TaskKind.RECACHE:
            preds += [s.task(j, K - 1) for j, _ in t.replaces]
        elif t.stage > 0:
            preds.append(s.task(t.block, t.stage - 1))
        best[t.ref] = w + max((best[p.ref] for p in preds), default=0.0)
    assert r.makespan_s >= max(best.values()) - 1e-9


# -- costs, outputs ---------------------------------------------------------------------------------------
def test_recache_forward_is_priced_as_its_members() -> None:
    s = build_schedule(CascadeSpec(num_blocks=8, window=4, sink=1, switches=((5, 1),), switch_policy="recache"))
    w = build_workload(s, get_model("small"))
    q = get_model("small").tokens_per_block
    (bi,) = [i for i, b in enumerate(w.batches) if b.refs == ((5, -1),)]
    assert w.batches[bi].contexts == (q, 2 * q, 3 * q, 4 * q)  # causal among the 4 re-encoded blocks
    producer = s.producer((0, 5))  # it writes (0, S + 0)
    assert w.batch_of(5, -1) == bi == w.batch_at[(producer.tick, producer.device)]
    prof = Profile("small", tuple(ForwardPoint(n, q, q * c, 0.01 * n * c) for n in (1, 2, 4) for c in (1, 4)))
    r = simulate(s, ideal(1), ProfileCost(prof), "small")
    recache = r.timeline.batch_end[bi] - r.timeline.batch_start[bi] if r.timeline else 0.0
    assert recache == pytest.approx(0.01 * 4 * 2.5)  # batch 4 at its mean context of 2.5 blocks


def test_cli_trace_and_gantt_show_switches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--model", "tiny", "--cost", "uniform:0.1", "--blocks", "10", "--window", "3",
                 "--switch", "5:1", "--switch-policy", "recache", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    (st_,) = data["switch_stalls"]
    assert st_["at_block"] == 5 and st_["stall_s"] == pytest.approx(0.2)
    assert main(["simulate", "--model", "tiny", "--cost", "uniform:0.1", "--blocks", "10", "--window", "3",
                 "--switch", "5:1", "--switch-policy", "recache"]) == 0
    assert "switch at block 5: stall 200.0 ms" in capsys.readouterr().out
    s = build_schedule(CascadeSpec(num_blocks=10, lag=2, window=3, num_devices=3, switches=((5, 1),),
                                   switch_policy="recache"))
    r = simulate(s, cluster_with(3, 50e9), make_cost("roofline", G13, get_gpu("h200")), G13)
    path = tmp_path / "t.json"
    write_trace(r, str(path))
    names = {e.name for e in read_chrome_trace(str(path)) if e.track == "compute"}
    assert "B5R" in names and len(names) == len(s.tasks)
    draw_gantt(r, str(tmp_path / "g.png"))
    assert (tmp_path / "g.png").stat().st_size > 0
