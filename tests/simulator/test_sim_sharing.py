"""Processor sharing (``Cluster(host_cores=...)``, simulator/sharing.py): CPU ranks sharing one host."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import pytest
import simpy
from hypothesis import given
from hypothesis import strategies as st
from test_sim_properties import specs

from cascade_sched import CascadeSpec, build_schedule
from cascade_sched.errors import ConfigError
from simulator import Cluster, UniformCost, get_gpu, simulate
from simulator.catalog import HOST_CPU, Link
from simulator.sharing import SharedHost


def host(n: int, **kw: Any) -> Cluster:
    return Cluster(HOST_CPU, n, gpus_per_node=8, intra=Link("test", 1e9, 2e-5, "test"), **kw)


def run_jobs(cluster: Cluster, jobs: list[tuple[Any, ...]]) -> dict[str, float]:
    """Start each (name, at, work[, batch]) on a SharedHost; the time each ends."""
    env = simpy.Environment()
    shared = SharedHost(env, cluster)
    done: dict[str, float] = {}

    def job(name: str, at: float, work: float, batch: int = 1) -> Any:
        yield env.timeout(at)
        yield shared.run(work, batch)
        done[name] = env.now

    for j in jobs:
        env.process(job(*j))
    env.run()
    return done


def test_rates_follow_the_share_of_cores() -> None:
    one_core = host(3, host_cores=1)
    # a alone 0.5 s, then a and b at half speed: a ends at 1.5; b alone after that.
    assert run_jobs(one_core, [("a", 0, 1.0), ("b", 0.5, 1.0)]) == pytest.approx({"a": 1.5, "b": 2.0})
    # three at a third each until c (0.3 of work) ends at 0.9; then a and b at half: 0.7 left -> 2.3.
    got = run_jobs(one_core, [("a", 0, 1.0), ("b", 0, 1.0), ("c", 0, 0.3)])
    assert got == pytest.approx({"c": 0.9, "a": 2.3, "b": 2.3})
    # two cores: two jobs run at full speed, a third shares (3 on 2 cores: 2/3 speed each).
    assert run_jobs(host(3, host_cores=2), [("a", 0, 1.0), ("b", 0, 1.0)]) == pytest.approx({"a": 1.0, "b": 1.0})
    got = run_jobs(host(3, host_cores=2), [("a", 0, 1.0), ("b", 0, 1.0), ("c", 0, 1.0)])
    assert got == pytest.approx({"a": 1.5, "b": 1.5, "c": 1.5})
    # background load: one core busy elsewhere leaves 2 cores for 1 + 1 -> (2 + 1) / 2 = 1.5x when both run.
    assert run_jobs(host(2, host_cores=2, background_load=1.0), [("a", 0, 1.0)]) == pytest.approx({"a": 1.0})
    got = run_jobs(host(2, host_cores=2, background_load=1.0), [("a", 0, 1.0), ("b", 0, 1.0)])
    assert got == pytest.approx({"a": 1.5, "b": 1.5})
    # interference applies only while two or more compute at once.
    got = run_jobs(host(2, host_cores=2, contention=1.2), [("a", 0, 1.0), ("b", 0.5, 0.5)])
    assert got == pytest.approx({"a": 1.1, "b": 1.1})
    # interference by batch size: a (batch 1, x1.0) is not slowed; b (batch 3, x1.2) does 1/1.2 of its
    # work by t = 1, then the rest alone.
    by_batch = host(2, host_cores=2, contention_by_batch=((1, 1.0), (3, 1.2)))
    got = run_jobs(by_batch, [("a", 0, 1.0, 1), ("b", 0, 1.0, 3)])
    assert got == pytest.approx({"a": 1.0, "b": 1.0 + (1 - 1 / 1.2)})


def test_slowdown_formula_and_bad_parameters() -> None:
    c = host(4, host_cores=2, threads_per_device=2, background_load=0.5, contention=1.1)
    assert c.host_slowdown(0) == 1.0
    assert c.host_slowdown(1) == pytest.approx(1.25)  # (2 + 0.5) / 2
    assert c.host_slowdown(2) == pytest.approx(2.25 * 1.1)  # (4 + 0.5) / 2, with interference
    assert host(4).host_slowdown(3) == 1.0  # no host: dedicated devices
    assert "one host of 2 cores" in c.describe()
    for kw, param in (({"host_cores": 0}, "host_cores"), ({"host_cores": float("nan")}, "host_cores"),
                      ({"threads_per_device": 0}, "threads_per_device"),
                      ({"background_load": -1.0}, "background_load"),
                      ({"contention_by_batch": ((0, 1.1),)}, "contention_by_batch"),
                      ({"contention_by_batch": ((2, 0.9),)}, "contention_by_batch")):
        with pytest.raises(ConfigError, match=param) as err:
            host(2, **kw)
        assert err.value.param == param


@given(specs(max_devices=4), st.sampled_from(["own", 0]), st.booleans())
def test_enough_cores_is_the_dedicated_model(spec: CascadeSpec, decode: Any, overlap: bool) -> None:
    """As many cores as devices (one thread each, no load, no interference): nothing is shared, so the
    prediction is the dedicated-device one, event for event."""
    s = build_schedule(spec)
    cost = UniformCost(0.02, decode_block_s=0.01, sample_task_s=0.001)
    base = host(spec.num_devices)
    a = simulate(s, base, cost, "tiny", decode=decode, overlap=overlap, check_memory=False)
    b = simulate(s, dataclasses.replace(base, host_cores=float(spec.num_devices)), cost, "tiny", decode=decode,
                 overlap=overlap, check_memory=False)
    assert b.block_decoded_s == pytest.approx(a.block_decoded_s, abs=1e-12)
    assert b.block_started_s == pytest.approx(a.block_started_s, abs=1e-12)


@given(specs(max_devices=4), st.booleans())
def test_fewer_cores_or_more_load_is_never_faster(spec: CascadeSpec, overlap: bool) -> None:
    s = build_schedule(spec)
    cost = UniformCost(0.02, decode_block_s=0.01, sample_task_s=0.001)
    base = host(spec.num_devices, host_cores=4.0)
    runs = [simulate(s, dataclasses.replace(base, **kw), cost, "tiny", overlap=overlap, check_memory=False)
            for kw in ({}, {"host_cores": 2.0}, {"host_cores": 2.0, "background_load": 1.0},
                       {"host_cores": 1.0, "background_load": 1.0})]
    for faster, slower in itertools.pairwise(runs):
        for a, b in zip(faster.block_decoded_s, slower.block_decoded_s, strict=True):
            assert a <= b + 1e-9


def test_one_core_serialises_the_work() -> None:
    """On one core with ideal links, a cascade on two devices takes as long as all its work in a row."""
    s = build_schedule(CascadeSpec(num_blocks=6, lag=1, num_devices=2, attention="stale"))
    ideal = Cluster(get_gpu("h100-sxm"), 2, intra=Link("ideal", float("inf"), 0.0, "test"))
    dedicated = simulate(s, ideal, UniformCost(0.1), "tiny", decode=0)
    shared = simulate(s, dataclasses.replace(ideal, host_cores=1.0), UniformCost(0.1), "tiny", decode=0)
    assert shared.makespan_s == pytest.approx(0.1 * len(s.tasks))
    assert dedicated.makespan_s < 0.7 * shared.makespan_s
