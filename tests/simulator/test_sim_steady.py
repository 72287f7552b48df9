"""The steady-state fast path against the event loop: the same results, to float rounding, on random specs
where it applies (every placement, context, window, sink, lag, decode placement, overlap and video input),
and it says when it ran."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade_sched import CascadeSpec, build_schedule
from cascade_sched.errors import SimulationError
from simulator import Cluster, UniformCost, get_gpu, get_link, get_model, make_cost, simulate
from simulator.catalog import Link, ModelGeometry
from simulator.result import SimResult
from tests import strategies

H100 = get_gpu("h100-sxm")
G13 = get_model("wan2.1-1.3b")


def uniform_specs() -> st.SearchStrategy[CascadeSpec]:
    """Specs the fast path may take: a uniform lag, a bounded window, no switch; long enough to splice."""
    return strategies.specs(blocks=(40, 90), devices=(1, 5), steps="nominal", max_denoise=4, lags="uniform",
                            windowed=True, window=st.integers(1, 5), max_sink=2, seeds=(0, 0), strides=(1, 3),
                            placements=("block", "stage", "layers"), max_ring=3)


def geometry(spec: CascadeSpec) -> ModelGeometry:
    g = get_model("small")
    return dataclasses.replace(g, config=g.config.replace(num_layers=spec.num_layers or 4), weight_bytes=0)


def close(a: float, b: float) -> bool:
    return a == b or abs(a - b) <= 1e-9 * (abs(a) + abs(b) + 1.0)


def assert_same(event: SimResult, steady: SimResult) -> None:
    for name in ("block_started_s", "block_denoised_s", "block_committed_s", "block_decoded_s"):
        a, b = getattr(event, name), getattr(steady, name)
        assert len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True)), name
    for name in ("fps", "paper_fps", "first_frame_s", "makespan_s", "interval_p50_s", "interval_p95_s",
                 "interval_p99_s", "interval_max_s"):
        assert close(getattr(event, name), getattr(steady, name)), name
    assert event.steady_blocks == steady.steady_blocks
    assert event.bytes_by_kind == steady.bytes_by_kind and event.bytes_by_link == steady.bytes_by_link
    assert event.num_tasks == steady.num_tasks
    assert Counter(event.executed) == Counter(steady.executed)
    for a, b in zip(event.memory.devices, steady.memory.devices, strict=True):
        assert (a.peak_bytes, a.peak_tick, a.parts) == (b.peak_bytes, b.peak_tick, b.parts)
    assert event.fits == steady.fits
    for d in range(event.gpus):
        for (k, x), (_, y) in zip(event.decomposition(d).items(), steady.decomposition(d).items(), strict=True):
            assert abs(x - y) <= 1e-9 * (abs(x) + 1e-3), (d, k)
        for k, x in event.steady_shares()[d].items():
            assert abs(x - steady.steady_shares()[d][k]) <= 1e-9, (d, k)
    assert event.bottleneck() == steady.bottleneck()


@given(uniform_specs(), st.sampled_from(["inline", "gpu"]), st.booleans(), st.booleans(),
       st.sampled_from([UniformCost(0.02, decode_block_s=0.01, sample_task_s=0.001, text_encode_s=0.005),
                        UniformCost(0.02, decode_block_s=0.09, encode_block_s=0.004), "parts"]))
@settings(max_examples=60)
def test_the_fast_path_gives_the_event_loops_results(spec: CascadeSpec, decode: str, overlap: bool,
                                                     video: bool, cost: object) -> None:
    g = geometry(spec)
    price = make_cost("parts", g, H100) if cost == "parts" else cost
    s = build_schedule(spec)
    link = Link("t", 40e9, 8e-6, "t", ((1e6, 20e9), (1e8, 40e9)), 60e9)
    cluster = Cluster(H100, spec.num_devices, 4, link, get_link("ib-ndr"))
    kw = dict(decode=decode, overlap=overlap, video_input=video, check_memory=False)
    event = simulate(s, cluster, price, g, path="event", **kw)  # type: ignore[arg-type]
    auto = simulate(s, cluster, price, g, **kw)  # type: ignore[arg-type]
    assert event.path == "event loop"
    if auto.path != "event loop":
        assert auto.path.startswith("steady state")
        assert_same(event, auto)


@pytest.mark.parametrize("kw", [{}, {"lag": 1, "num_devices": 5}, {"lag": 1, "num_devices": 5, "attention": "bidirectional"},
                                {"lag": 1, "num_devices": 5, "attention": "stale"}, {"lag": 2, "num_devices": 3},
                                {"lag": 1, "num_devices": 4, "placement": "layers", "stage_stride": 4, "num_layers": 30,
                                 "attention": "stage"},
                                {"lag": 1, "num_devices": 4, "rings": 2, "placement": "layers", "stage_stride": 2,
                                 "num_layers": 30}])
@pytest.mark.parametrize("decode", ["inline", "gpu"])
def test_the_benchmarks_modes_take_the_fast_path_and_agree(kw: dict[str, object], decode: str) -> None:
    s = build_schedule(CascadeSpec(num_blocks=300, window=7, **kw))  # type: ignore[arg-type]
    cost = make_cost("parts", G13, H100)
    cluster = Cluster.of("h100-sxm", s.num_devices)
    steady = simulate(s, cluster, cost, G13, decode=decode)
    assert steady.path.startswith("steady state") and "repeat" in steady.path
    assert_same(simulate(s, cluster, cost, G13, decode=decode, path="event"), steady)
    assert steady.to_dict()["path"] == steady.path


def test_the_event_loop_runs_where_the_fast_path_does_not_apply() -> None:
    cost = UniformCost(0.02, decode_block_s=0.01)
    base = CascadeSpec(num_blocks=120, lag=1, num_devices=3, window=4)
    cases = [(base.replace(switches=((60, 1),)), Cluster.of("h100-sxm", 3)),
             (base, Cluster.of("h100-sxm", 3, stragglers=((1, 1.5),))),
             (base.replace(window=None, num_blocks=60), Cluster.of("h100-sxm", 3)),
             (base.replace(lag=(1, 2) * 59 + (1,)), Cluster.of("h100-sxm", 3))]
    for spec, cluster in cases:
        r = simulate(build_schedule(spec), cluster, cost, G13, check_memory=False)
        assert r.path == "event loop"
        with pytest.raises(SimulationError, match="steady-state path does not apply"):
            simulate(build_schedule(spec), cluster, cost, G13, check_memory=False, path="steady")
    r = simulate(build_schedule(base), Cluster.of("h100-sxm", 3), cost, G13, decode="stream", check_memory=False)
    assert r.path == "event loop"
