"""Closed forms the simulator must reproduce exactly."""

from __future__ import annotations

import math

import pytest

from cascade_sched import CascadeSpec, build_schedule
from simulator import Cluster, UniformCost, get_gpu, get_link, get_model, make_cost, simulate
from simulator.catalog import Link

T = 0.1


def ideal(n: int) -> Cluster:
    return Cluster.of("h100-sxm", n, interconnect="ideal")


@pytest.mark.parametrize("attention", ["causal", "bidirectional", "stale"])
@pytest.mark.parametrize(("blocks", "lag", "timesteps"), [(6, 1, (1000, 750, 500, 250)), (9, 2, (1000, 500)),
                                                          (5, 3, (1000, 750, 500, 250)), (1, 1, (1000,))])
def test_enough_devices_makespan_is_last_start_plus_stages(attention: str, blocks: int, lag: int,
                                                           timesteps: tuple[float, ...]) -> None:
    spec = CascadeSpec(num_blocks=blocks, lag=lag, timesteps=timesteps, attention=attention, num_devices=1)
    w = build_schedule(spec).max_in_flight()
    s = build_schedule(CascadeSpec.from_dict({**spec.to_dict(), "num_devices": w}))
    r = simulate(s, ideal(w), UniformCost(T), "tiny")
    assert r.makespan_s == pytest.approx((s.starts[-1] + s.num_stages) * T)
    if blocks > 2:
        assert r.paper_fps == pytest.approx(12 / (lag * T))
    # Block 0 is denoised after its K denoise ticks; decoding costs nothing under uniform.
    assert r.first_frame_s == pytest.approx(spec.num_denoise * T)


@pytest.mark.parametrize("lag", [1, 2, 5])
def test_one_device_makespan_is_sum_of_task_times(lag: int) -> None:
    s = build_schedule(CascadeSpec(num_blocks=7, lag=lag, window=3))
    r = simulate(s, Cluster.of("h100-sxm", 1), UniformCost(T), "tiny")
    assert r.makespan_s == pytest.approx(len(s.tasks) * T)
    assert r.bytes_by_kind["kv"] == r.bytes_by_kind["exchange"] == 0


def test_sampling_and_decoding_add_where_they_should() -> None:
    s = build_schedule(CascadeSpec(num_blocks=3))  # sequential: 3 x (4 denoise + 1 cache)
    r = simulate(s, ideal(1), UniformCost(T, decode_block_s=0.05, sample_task_s=0.01), "tiny")
    # The last block decodes while its cache pass runs on the denoising device (0.05 < T).
    assert r.makespan_s == pytest.approx(15 * T + 12 * 0.01)
    assert r.block_decoded_s[2] == pytest.approx(14 * T + 12 * 0.01 + 0.05)
    assert r.first_frame_s == pytest.approx(4 * T + 4 * 0.01 + 0.05)


def test_shared_decoder_takes_device_time() -> None:
    s = build_schedule(CascadeSpec(num_blocks=3))
    r = simulate(s, Cluster.of("h100-sxm", 1), UniformCost(T, decode_block_s=0.05), "tiny", decode=0)
    assert r.makespan_s == pytest.approx(15 * T + 3 * 0.05)
    assert r.device_busy_s[0] == pytest.approx(r.makespan_s)


def test_joint_exchange_costs_bytes_over_bandwidth_plus_latency_per_layer() -> None:
    # Two blocks, two stages, lag 1 on two devices: tick 1 exchanges block 0's KV with device 1.
    s = build_schedule(CascadeSpec(num_blocks=2, timesteps=(1000,), lag=1, num_devices=2))
    g = get_model("wan2.1-1.3b")
    link = Link("test", 100e9, 1e-5, "test")
    cluster = Cluster(get_gpu("h100-sxm"), 2, 8, link, get_link("ib-ndr"))
    r = simulate(s, cluster, UniformCost(T), g)
    comm = g.kv_bytes_per_block() / 100e9 + g.num_layers * 1e-5
    assert r.bytes_by_kind["exchange"] == g.kv_bytes_per_block()
    assert r.makespan_s == pytest.approx(3 * T + comm)
    over = simulate(s, cluster, UniformCost(T), g, overlap=True)
    assert over.makespan_s == pytest.approx(3 * T + comm / g.num_layers)  # hidden behind compute


def test_committed_kv_moves_once_to_each_reader() -> None:
    # Sequential on two devices: block b+1 (other device) reads block b's committed KV once per stage.
    s = build_schedule(CascadeSpec(num_blocks=2, num_devices=2))
    g = get_model("wan2.1-1.3b")
    r = simulate(s, Cluster.of("h100-sxm", 2), UniformCost(T), g)
    assert r.bytes_by_kind["kv"] == g.kv_bytes_per_block()
    wire = g.kv_bytes_per_block() / 450e9
    # The KV streams during block 0's commit stage; one layer's share is left after it, plus the latency.
    assert r.block_started_s[1] == pytest.approx(5 * T + wire / g.num_layers + 6e-6, rel=1e-9)


def test_straggler_and_degraded_link_slow_things_down() -> None:
    s = build_schedule(CascadeSpec(num_blocks=8, lag=1, num_devices=5, window=4))
    cost = make_cost("baseline-fps", get_model("wan2.1-1.3b"), get_gpu("h100-sxm"))
    base = simulate(s, Cluster.of("h100-sxm", 5), cost)
    slow = simulate(s, Cluster.of("h100-sxm", 5, stragglers=((2, 1.5),)), cost)
    bad = simulate(s, Cluster.of("h100-sxm", 5, interconnect="pcie4", degraded=((1, 10.0),)), cost)
    assert slow.makespan_s > base.makespan_s * 1.3  # the gang waits for its slowest member
    assert bad.makespan_s > base.makespan_s


@pytest.mark.parametrize(("model", "fps"), [("wan2.1-1.3b", 16.0), ("wan2.1-14b", 4.5)])
def test_baseline_fps_reproduces_the_published_sequential_fps(model: str, fps: float) -> None:
    g = get_model(model)
    cost = make_cost("baseline-fps", g, get_gpu("h100-sxm"))
    s = build_schedule(CascadeSpec(num_blocks=20, window=7))
    r = simulate(s, Cluster.of("h100-sxm", 1), cost)
    assert r.paper_fps == pytest.approx(fps, rel=1e-6)
    assert "baseline-fps" in r.cost_source and "2511.20426" in r.cost_source


def test_sequential_fps_on_other_gpus_scales_with_their_peaks() -> None:
    g = get_model("wan2.1-1.3b")
    s = build_schedule(CascadeSpec(num_blocks=20, window=7))
    fps = {}
    for gpu in ("h100-sxm", "a100-sxm", "b200"):
        fps[gpu] = simulate(s, Cluster.of(gpu, 1), make_cost("baseline-fps", g, get_gpu(gpu))).paper_fps
    assert fps["a100-sxm"] < fps["h100-sxm"] < fps["b200"]


def test_one_block_has_no_intervals_but_sane_rates() -> None:
    r = simulate(build_schedule(CascadeSpec(num_blocks=1)), ideal(1), UniformCost(T), "tiny")
    assert r.interval_p99_s == 0 and r.steady_blocks == (0, 0)
    assert r.fps == pytest.approx(9 / (4 * T)) and math.isfinite(r.paper_fps)
