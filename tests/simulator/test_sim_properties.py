"""Hypothesis properties of the simulator over the whole spec space."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import networkx as nx
from hypothesis import given
from hypothesis import strategies as st

from cascade_sched import CascadeSpec, build_schedule
from cascade_sched.graph import critical_path, to_networkx
from cascade_sched.schedule import Schedule
from simulator import Cluster, RooflineCost, UniformCost, get_gpu, get_link, get_model, simulate
from simulator.catalog import Link
from simulator.cluster import MemoryMargin
from simulator.result import SimResult
from tests import strategies


def specs(max_devices: int = 6, switches: int = 0) -> st.SearchStrategy[CascadeSpec]:
    """The simulator tests' spec space: nominal steps, uniform lags, a few windows and sinks."""
    return strategies.specs(blocks=(1, 9), devices=(1, max_devices), steps="nominal", max_denoise=4,
                            lags="uniform", window=st.sampled_from([None, 1, 2, 3, 5]), max_sink=2,
                            switches=switches, seeds=(0, 0))


def cluster_with(n: int, bandwidth: float, latency: float = 5e-6, **kw: Any) -> Cluster:
    return Cluster(get_gpu("h200"), n, 4, Link("test", bandwidth, latency, "test"), get_link("ib-ndr"), **kw)


G13 = get_model("wan2.1-1.3b")


@given(specs(), st.sampled_from([5e9, 50e9, 400e9]), st.booleans())
def test_a_slower_link_is_never_faster(spec: CascadeSpec, bandwidth: float, overlap: bool) -> None:
    s = build_schedule(spec)
    cost = UniformCost(0.02, decode_block_s=0.01, sample_task_s=0.001)
    slow = simulate(s, cluster_with(spec.num_devices, bandwidth), cost, G13, overlap=overlap, check_memory=False)
    fast = simulate(s, cluster_with(spec.num_devices, 2 * bandwidth), cost, G13, overlap=overlap,
                    check_memory=False)
    inf = simulate(s, cluster_with(spec.num_devices, float("inf"), 0.0), cost, G13, overlap=overlap,
                   check_memory=False)
    laggy = simulate(s, cluster_with(spec.num_devices, bandwidth, 50e-6), cost, G13, overlap=overlap,
                     check_memory=False)
    assert inf.makespan_s <= fast.makespan_s + 1e-12 <= slow.makespan_s + 2e-12 <= laggy.makespan_s + 3e-12
    for a, b, c in zip(fast.block_decoded_s, slow.block_decoded_s, laggy.block_decoded_s, strict=True):
        assert a <= b + 1e-12 <= c + 2e-12


@given(specs(), st.sampled_from([UniformCost(0.02, decode_block_s=0.05, sample_task_s=0.001, text_encode_s=0.01),
                                 UniformCost(0.02, decode_block_s=0.005)]))
def test_a_decoder_gpu_of_its_own_is_never_slower_than_inline(spec: CascadeSpec, cost: UniformCost) -> None:
    """Taking the decode off a denoising GPU never delays a block (ideal links: no latent transfer cost)."""
    s = build_schedule(spec)
    ideal = Cluster(get_gpu("h200"), spec.num_devices, 4, get_link("ideal"), get_link("ideal"))
    inline = simulate(s, ideal, cost, G13, check_memory=False)
    own = simulate(s, ideal, cost, G13, decode="gpu", check_memory=False)
    for a, b in zip(own.block_decoded_s, inline.block_decoded_s, strict=True):
        assert a <= b + 1e-9
    assert own.makespan_s <= inline.makespan_s + 1e-9


@given(specs(), st.sampled_from(["inline", "stream", "gpu"]))
def test_every_gpu_is_counted(spec: CascadeSpec, decode: str) -> None:
    s = build_schedule(spec)
    r = simulate(s, cluster_with(spec.num_devices, 100e9), UniformCost(0.01, decode_block_s=0.01), G13,
                 decode=decode, check_memory=False)
    want = spec.num_devices + (1 if decode == "gpu" else 0)
    d = r.to_dict()
    assert r.gpus == d["gpus"] == want
    assert len(r.peak_memory_bytes) == len(d["devices"]) == len(r.shares()) == want


@given(specs(max_devices=3), st.floats(0.0, 10.0), st.floats(0.0, 10.0), st.floats(0.0, 0.2))
def test_more_margin_never_makes_a_refused_plan_fit(spec: CascadeSpec, a: float, b: float, frac: float) -> None:
    s = build_schedule(spec)
    g = get_model("wan2.1-14b")
    lo, hi = sorted((a, b))
    runs = [simulate(s, Cluster.of("h100-sxm", spec.num_devices, margin=MemoryMargin(m * 1e9, 0.0, f)),
                     UniformCost(0.01), g, check_memory=False) for m, f in ((lo, frac / 2), (hi, frac))]
    small, large = runs
    assert all(x <= y for x, y in zip(small.peak_memory_bytes, large.peak_memory_bytes, strict=True))
    if not small.fits:
        assert not large.fits


def _solo_longest_path(s: Schedule, cost: RooflineCost) -> float:
    """The critical path with every task at its cost alone on a device (a lower bound on any batch)."""
    g = to_networkx(s)
    q = cost.geometry.tokens_per_block
    weight = {t.ref: cost.forward_s(q, (q * (1 + len(t.reads)),)) for t in s.tasks}
    best: dict[Any, float] = {}
    for node in nx.topological_sort(g):
        best[node] = weight[node] + max((best[p] for p in g.predecessors(node)), default=0.0)
    return max(best.values())


@given(specs())
def test_makespan_is_at_least_the_critical_path(spec: CascadeSpec) -> None:
    s = build_schedule(spec)
    r = simulate(s, cluster_with(spec.num_devices, 100e9), UniformCost(0.05), "tiny")
    assert r.makespan_s >= len(critical_path(s)) * 0.05 - 1e-9
    cost = RooflineCost(get_model("small"), get_gpu("l40s"))
    r2 = simulate(s, cluster_with(spec.num_devices, 100e9), cost)
    assert r2.makespan_s >= _solo_longest_path(s, cost) - 1e-12


def simulate_every_task_once(spec: CascadeSpec) -> SimResult:
    """Simulate ``spec`` and check that every task of its schedule ran exactly once."""
    s = build_schedule(spec)
    r = simulate(s, cluster_with(spec.num_devices, 100e9), UniformCost(0.01), "tiny")
    counts = Counter(r.executed)
    assert set(counts) == {t.ref for t in s.tasks}
    assert set(counts.values()) == {1}
    assert r.num_tasks == len(s.tasks)
    return r


@given(specs())
def test_every_task_is_simulated_exactly_once(spec: CascadeSpec) -> None:
    simulate_every_task_once(spec)


def _implied_bytes(s: Schedule, kv: int, latent: int, decoder: int) -> int:
    """From the schedule alone: each KV version once to every other device that reads it (in its own
    tick's exchange or after it, never both), each latent to the next stage's device when it changes, and
    every block's clean latent to the decoder."""
    pairs = set()
    moves = 0
    for t in s.tasks:
        for j, v in t.reads:
            if s.task(j, v).device != t.device:
                pairs.add((j, v, t.device))
        if t.stage > 0 and s.task(t.block, t.stage - 1).device != t.device:
            moves += 1
    k = s.spec.num_denoise
    moves += sum(1 for b in range(s.num_blocks) if s.task(b, k - 1).device != decoder)
    return len(pairs) * kv + moves * latent


@given(specs(), st.sampled_from(["gpu", 0]))
def test_bytes_moved_equal_the_bytes_the_schedule_implies(spec: CascadeSpec, decode: str | int) -> None:
    s = build_schedule(spec)
    r = simulate(s, cluster_with(spec.num_devices, 100e9), UniformCost(0.01), G13, decode=decode,
                 check_memory=False)
    decoder = spec.num_devices if decode == "gpu" else 0
    assert r.bytes_total == _implied_bytes(s, G13.kv_bytes_per_block(), G13.latent_bytes_per_block(), decoder)
    assert sum(r.bytes_by_link.values()) == r.bytes_total


@given(st.integers(2, 10), st.integers(1, 7), st.sampled_from(["block", "stage"]), st.sampled_from([None, 2, 4]))
def test_sequential_fps_does_not_depend_on_device_count(blocks: int, devices: int, placement: str,
                                                        window: int | None) -> None:
    cost = RooflineCost(G13, get_gpu("h100-sxm"))

    def run(n: int) -> tuple[float, float]:
        s = build_schedule(CascadeSpec(num_blocks=blocks, num_devices=n, placement=placement, window=window))
        r = simulate(s, Cluster.of("h100-sxm", n, interconnect="ideal"), cost, decode="gpu")
        return r.fps, r.paper_fps

    one, many = run(1), run(devices)
    for a, b in zip(one, many, strict=True):  # NaN on both sides when the run has no steady state
        assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-9 * a


@given(specs(max_devices=4))
def test_memory_never_below_weights_and_flags_agree(spec: CascadeSpec) -> None:
    s = build_schedule(spec)
    r = simulate(s, cluster_with(spec.num_devices, 100e9), UniformCost(0.01), G13, check_memory=False)
    assert all(p >= G13.weight_bytes + 1.5e9 for p in r.peak_memory_bytes)  # the margin too
    assert r.fits == all(p <= r.memory_capacity_bytes for p in r.peak_memory_bytes)


@given(specs(max_devices=4))
def test_the_simulator_costs_the_core_transfer_plan(spec: CascadeSpec) -> None:
    """Every message the simulator prices is one of the plan's, and every plan message is priced."""
    from cascade_sched.transfers import plan_transfers

    s = build_schedule(spec)
    r = simulate(s, cluster_with(spec.num_devices, 100e9), UniformCost(0.01), G13, check_memory=False)
    plan = plan_transfers(s)
    w = r.timeline.workload if r.timeline is not None else None
    assert w is not None
    assert {(p.ref, p.src, p.dst, t) for p, t in zip(w.past, w.past_tick, strict=True)} == {
        (m.ref, m.src, m.dst, t) for t, sends in enumerate(plan.past) for m in sends}
    assert sum(sum(g.sends.values()) for g in w.gangs.values()) == sum(map(len, plan.gang))
    readers = [i for b in w.batches for i in b.kv_inputs]  # each past send waited for once, later, at its dst
    assert sorted(readers) == list(range(len(w.past)))
    for b in w.batches:
        for i in b.kv_inputs:
            assert w.past[i].dst == b.device and w.past_tick[i] < b.tick and w.past[i].ref in {
                r for j, v in b.refs for r in s.task(j, v).reads}
    assert len(w.latents) == sum(map(len, plan.latents))
