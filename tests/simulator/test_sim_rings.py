"""Layer rings and G x W hybrids in the simulator: each device's layer range priced on its own, the plan's
hand-offs on the link, memory per device, and the properties of the whole ring space."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade_sched import CascadeSpec, build_schedule
from cascade_sched.errors import ConfigError
from cascade_sched.transfers import HOP, message_bytes, plan_transfers
from models.config import ACTIVATION_BYTES
from simulator import Cluster, RooflineCost, UniformCost, get_gpu, get_link, get_model, make_cost, simulate
from simulator.catalog import Link, ModelGeometry
from simulator.cost import paper_overhead, slice_seconds
from simulator.result import SimResult
from tests import strategies

H100 = get_gpu("h100-sxm")
G13 = get_model("wan2.1-1.3b")
T = 0.1


def ring_specs(max_devices: int = 6) -> st.SearchStrategy[CascadeSpec]:
    """Ring and hybrid specs (placement layers), nominal steps, uniform lags, a few windows and sinks."""
    return strategies.specs(blocks=(1, 9), devices=(1, max_devices), steps="nominal", max_denoise=4,
                            lags="uniform", window=st.sampled_from([None, 1, 2, 3]), max_sink=2, seeds=(0, 0),
                            strides=(1, 5), placements=("layers",), max_ring=4)


def tiny_with(layers: int) -> ModelGeometry:
    """The tiny model with ``layers`` layers: a ring spec names the layers it splits."""
    g = get_model("tiny")
    return dataclasses.replace(g, config=g.config.replace(num_layers=layers), weight_bytes=0)


def ring(n: int = 4, rings: int = 1, blocks: int = 60, attention: str = "stage", **kw: object) -> CascadeSpec:
    """A ring (or G x W hybrid) at lag 1 and stride W, long enough for a steady state (17 blocks in flight on
    4 devices, and a window of 7)."""
    w = n // rings
    return CascadeSpec(num_blocks=blocks, lag=1, num_devices=n, rings=rings, placement="layers", stage_stride=w,
                       num_layers=kw.pop("num_layers", 30), attention=attention, window=7, **kw)  # type: ignore[arg-type]


def ideal(n: int) -> Cluster:
    return Cluster.of("h100-sxm", n, interconnect="ideal")


def test_slices_of_a_forward_add_up_to_it_plus_the_entry_and_head() -> None:
    """Each device prices its own layers: the ring's slices cost the whole forward, plus the patch embedding
    on the first device and the head on the last (counted, microseconds)."""
    cost = RooflineCost(G13, H100, paper_overhead())
    q = G13.tokens_per_block
    ctx = (q, 3 * q, 7 * q)
    whole = cost.forward_s(q, ctx)
    parts = G13.config.ring_slices((8, 8, 7, 7))
    slices = [cost.slice_s(q, ctx, p) for p in parts]
    edges = (cost.parts(q, ctx, parts[0])["entry"] + cost.parts(q, ctx, parts[-1])["head"])
    assert sum(slices) == pytest.approx(whole + edges, rel=1e-12)
    assert 0 < edges < 1e-3 * whole
    for p, t in zip(parts, slices, strict=True):
        assert t == pytest.approx(whole * (p.end - p.first) / 30, rel=0.01)
    # a cost model without slice_s: the whole forward times the layers' share, flagged as an estimate
    assert slice_seconds(UniformCost(T), q, ctx, parts[0], 30) == (pytest.approx(3 * T * 8 / 30), True)


@pytest.mark.parametrize("w", [1, 2, 3, 5])
def test_a_w_ring_delivers_a_block_every_w_th_of_the_forwards(w: int) -> None:
    """Uniform cost, ideal links, lag 1, stride W, an even split: in steady state every device runs one
    gang of S members over L/W layers per tick, and a block leaves the ring every tick: S x T / W."""
    spec = CascadeSpec(num_blocks=20 + 10 * w, lag=1, num_devices=w, placement="layers", stage_stride=w, num_layers=30,
                       window=4)
    r = simulate(build_schedule(spec), ideal(w), UniformCost(T), G13, check_memory=False)
    assert r.interval_p50_s == pytest.approx(5 * T / w)
    assert r.interval_max_s == pytest.approx(5 * T / w)
    for share in r.steady_shares():
        assert share["busy"] == pytest.approx(1.0)


def test_a_rings_device_busy_time_is_its_share_of_the_one_device_forward() -> None:
    """Parts cost: each device of a 4-ring spends on a steady gang (5 members, each over the window's 7
    blocks) its layers' share of what one device spends on the same gang over every layer, plus the entry
    or the head; and the ring delivers more than 3 times the one device's FPS."""
    cost = make_cost("parts", G13, H100, "taehv")
    one = simulate(build_schedule(ring(1, num_layers=30)), Cluster.of("h100-sxm", 1), cost, G13, decode="gpu")
    four = simulate(build_schedule(ring(4)), Cluster.of("h100-sxm", 4), cost, G13, decode="gpu")
    steady = (7 * G13.tokens_per_block,) * 5

    def forward(r: SimResult, device: int) -> float:
        tl = r.timeline
        assert tl is not None
        return next(tl.batch_raw[bi][0] for bi in tl.workload.device_batches[device]
                    if tl.workload.batches[bi].contexts == steady)

    whole = forward(one, 0)
    for d, (first, end) in enumerate(((0, 8), (8, 16), (16, 23), (23, 30))):
        assert forward(four, d) == pytest.approx(whole * (end - first) / 30, rel=2e-3)
        assert forward(four, d) >= whole * (end - first) / 30 * (1 - 1e-12)  # + the entry or head at the ends
    assert four.fps > 3 * one.fps


def test_hand_off_bytes_are_the_plans_traffic() -> None:
    """The hops the simulator prices are the plan's: tokens x dim x activation bytes per task and hop, and
    the run's bytes equal the plan's own totals."""
    spec = ring(4, attention="causal", blocks=10)
    s = build_schedule(spec)
    r = simulate(s, Cluster.of("h100-sxm", 4), make_cost("parts", G13, H100), G13)
    hidden = G13.tokens_per_block * G13.dim * ACTIVATION_BYTES["bfloat16"]
    assert r.bytes_by_kind["hop"] == len(s.tasks) * 3 * hidden  # every task crosses 3 hops
    sizes = message_bytes(G13.kv_bytes_per_layer(), 30, G13.latent_bytes_per_block(), hidden)
    traffic = plan_transfers(s, 3).transfers(sizes)
    assert r.bytes_by_kind["hop"] == sum(t.nbytes for t in traffic if t.kind == HOP)
    assert r.bytes_total == sum(plan_transfers(s, 3).traffic(sizes).values())
    half = simulate(s, Cluster.of("h100-sxm", 4), make_cost("parts", G13, H100), G13, activation_bytes=2)
    assert half.bytes_by_kind["hop"] == r.bytes_by_kind["hop"] // 2


def test_sharded_weights_are_a_wth_replicated_ones_are_whole() -> None:
    cost = make_cost("parts", G13, H100)
    s = build_schedule(ring(4))
    sharded = simulate(s, Cluster.of("h100-sxm", 4), cost, G13)
    replicated = simulate(s, Cluster.of("h100-sxm", 4), cost, G13, weights="replicated")
    weights = [d.parts["weights"] for d in sharded.memory.devices]
    assert all(G13.weight_bytes / 4 * 0.9 < w < G13.weight_bytes / 4 * 1.2 for w in weights)
    assert sum(weights) >= G13.weight_bytes  # every slice holds the conditioning
    assert all(d.parts["weights"] == G13.weight_bytes for d in replicated.memory.devices)
    assert replicated.fps == pytest.approx(sharded.fps)  # where the weights live costs no time
    with pytest.raises(ConfigError, match="weights"):
        simulate(s, Cluster.of("h100-sxm", 4), cost, G13, weights="mirrored")


def test_stage_context_keeps_a_history_per_stage() -> None:
    """The stage context keeps each stage's version of every visible block on each device (its layer range
    of it): more in-flight K/V than causal at the same stride, per device about 1/W of one device's."""
    cost = make_cost("parts", G13, H100)
    causal = simulate(build_schedule(ring(4, attention="causal")), Cluster.of("h100-sxm", 4), cost, G13)
    stage = simulate(build_schedule(ring(4, attention="stage")), Cluster.of("h100-sxm", 4), cost, G13)
    one = simulate(build_schedule(ring(1, attention="stage", num_layers=30)), Cluster.of("h100-sxm", 1), cost, G13)

    def kv(r: SimResult, d: int) -> int:
        return r.memory.devices[d].parts["committed_kv"] + r.memory.devices[d].parts["inflight_kv"]

    assert kv(stage, 0) > kv(causal, 0)
    assert kv(stage, 0) == pytest.approx(kv(one, 0) * 8 / 30, rel=0.35)


def test_decoding_defaults_to_the_rings_last_device_and_a_ring_can_decode_on_its_own_gpu() -> None:
    cost = make_cost("parts", G13, H100)
    s = build_schedule(ring(4))
    r = simulate(s, Cluster.of("h100-sxm", 4), cost, G13)
    assert r.decode.device == 3 and r.device_bottlenecks()[3][0] == "decode"
    assert r.bottleneck()[0] == "decode" and "layer-split" in r.bottleneck()[1]
    own = simulate(s, Cluster.of("h100-sxm", 4), cost, G13, decode="gpu")
    assert own.gpus == 5 and own.fps > r.fps
    # a layer split that gives the decoding device fewer layers lifts the inline ring
    split = simulate(build_schedule(ring(4, layer_split=(9, 9, 9, 3), num_layers=None)), Cluster.of("h100-sxm", 4),
                     cost, G13)
    assert split.fps > r.fps


def test_overlap_hides_hops_and_a_serialised_hop_is_exposed() -> None:
    """On a slow link the serialised hand-off adds its wire time to the sender's tick; on a second stream
    (--overlap) it runs beside the next batch."""
    slow = Link("slow", 2e9, 1e-5, "test")
    s = build_schedule(ring(4))
    cost = UniformCost(T)
    serial = simulate(s, Cluster(H100, 4, 8, slow, slow), cost, G13, check_memory=False)
    over = simulate(s, Cluster(H100, 4, 8, slow, slow), cost, G13, overlap=True, check_memory=False)
    free = simulate(s, ideal(4), cost, G13, check_memory=False)
    hop = 1e-5 + 5 * G13.tokens_per_block * G13.dim * 4 / 2e9  # the stream batch: 5 members' hidden states
    latent = 1e-5 + G13.latent_bytes_per_block() / 2e9  # the next stage's latent, d3 to d0, every tick
    assert serial.interval_p50_s == pytest.approx(free.interval_p50_s + hop + latent, rel=1e-6)
    assert over.interval_p50_s == pytest.approx(free.interval_p50_s + latent, rel=1e-6)
    assert serial.steady_shares()[0]["comm"] > 0 and over.steady_shares()[0]["comm"] == 0


def test_hybrids_move_kv_between_rings_at_the_same_layer_range() -> None:
    """2 rings of 2: blocks alternate rings, and a read of a block on the other ring is a K/V transfer
    between the devices of the same layer range, carrying that range's layers only."""
    s = build_schedule(ring(4, rings=2, attention="causal", blocks=12))
    r = simulate(s, Cluster.of("h100-sxm", 4), make_cost("parts", G13, H100), G13)
    links = {k for k, v in r.bytes_by_link.items() if v}
    assert {"d0->d2", "d2->d0", "d1->d3", "d3->d1"} <= links
    assert not {"d0->d3", "d2->d1"} & links
    assert r.bytes_by_kind["kv"] + r.bytes_by_kind["exchange"] > 0


def test_video_input_is_encoded_on_the_first_device() -> None:
    cost = UniformCost(T, encode_block_s=0.05)
    s = build_schedule(ring(2, blocks=20))
    t2v = simulate(s, ideal(2), cost, G13, check_memory=False)
    v2v = simulate(s, ideal(2), cost, G13, check_memory=False, video_input=True)
    assert v2v.decomposition(0)["encode"] == pytest.approx(0.05)
    assert v2v.decomposition(1)["encode"] == 0 and t2v.decomposition(0)["encode"] == 0
    assert v2v.interval_p50_s == pytest.approx(t2v.interval_p50_s + 0.05)


@given(ring_specs(), st.sampled_from(["inline", "gpu", "stream"]), st.booleans())
def test_every_ring_task_runs_once_on_each_device_of_its_ring(spec: CascadeSpec, decode: str, overlap: bool) -> None:
    g = tiny_with(spec.num_layers or 2)
    s = build_schedule(spec)
    r = simulate(s, Cluster(H100, spec.num_devices, 4, Link("t", 50e9, 1e-5, "t"), get_link("ib-ndr")),
                 UniformCost(0.01, decode_block_s=0.005), g, decode=decode, overlap=overlap, check_memory=False)
    assert Counter(r.executed) == Counter(t.ref for t in s.tasks)
    w = r.timeline.workload if r.timeline is not None else None
    assert w is not None
    per_device = Counter((ref, b.device) for b in w.batches for ref in b.refs)
    for t in s.tasks:
        for dev, _, _ in s.segments(t):
            assert per_device[(t.ref, dev)] == 1
    for b in w.batches:  # device r of a ring runs a gang r ticks after it entered
        assert b.part is None or b.tick - b.entered == b.device % spec.ring_size
    assert all(x <= y + 1e-12 for x, y in zip(r.block_started_s, r.block_denoised_s, strict=True))


@given(ring_specs(max_devices=4), st.sampled_from([5e9, 50e9]), st.booleans())
@settings(max_examples=25)
def test_a_slower_link_never_speeds_a_ring_up(spec: CascadeSpec, bandwidth: float, overlap: bool) -> None:
    g = tiny_with(spec.num_layers or 2)
    s = build_schedule(spec)
    cost = UniformCost(0.02, decode_block_s=0.01, sample_task_s=0.001)

    def run(bw: float) -> SimResult:
        link = Link("t", bw, 5e-6, "t")
        return simulate(s, Cluster(H100, spec.num_devices, 4, link, link), cost, g, overlap=overlap,
                        check_memory=False)

    slow, fast = run(bandwidth), run(2 * bandwidth)
    assert fast.makespan_s <= slow.makespan_s + 1e-12
    for a, b in zip(fast.block_decoded_s, slow.block_decoded_s, strict=True):
        assert a <= b + 1e-12


@given(ring_specs(max_devices=4))
@settings(max_examples=25)
def test_ring_bytes_and_memory_follow_the_plan(spec: CascadeSpec) -> None:
    """Bytes are the plan's (hops included), and no device holds less than its layers' weights."""
    g = tiny_with(spec.num_layers or 2)
    s = build_schedule(spec)
    r = simulate(s, Cluster(H100, spec.num_devices, 4, Link("t", 50e9, 1e-5, "t"), get_link("ib-ndr")),
                 UniformCost(0.01), g, check_memory=False)
    w = r.timeline.workload if r.timeline is not None else None
    assert w is not None and w.sizes is not None
    assert r.bytes_total == sum(w.plan.traffic(w.sizes).values())
    hops = sum(len(seg) - 1 for seg in map(s.segments, s.tasks)) * w.sizes.hidden
    assert r.bytes_by_kind["hop"] == hops
    for d in r.memory.devices[:spec.num_devices]:
        assert d.parts["weights"] > 0 and d.peak_bytes >= d.parts["weights"]


def test_geometry_flags_change_tokens_decode_and_refuse_a_mismatch() -> None:
    g = get_model("wan2.1-1.3b", 1, (512, 512))
    assert g.tokens_per_block == 1024 and g.name == "wan2.1-1.3b"
    dec = g.decoder("vae")
    base = G13.decoder("vae")
    assert dec is not None and base is not None
    assert dec.flops(4, 1) == pytest.approx(base.flops(12) / 3 * 64 * 64 / (60 * 104))
    cost = make_cost("parts", g, H100)
    assert cost.decode_s(1, 4) < make_cost("parts", G13, H100).decode_s(1, 12) / 3
    spec = CascadeSpec(num_blocks=4, frames_per_block=1)
    r = simulate(build_schedule(spec), Cluster.of("h100-sxm", 1), cost, g)
    assert r.first_frame_s > 0 and r.fps > 0
    with pytest.raises(ConfigError, match="latent frames per block"):
        simulate(build_schedule(CascadeSpec(num_blocks=4)), Cluster.of("h100-sxm", 1), cost, g)
    with pytest.raises(ConfigError, match="--resolution"):
        get_model("wan2.1-1.3b", resolution=(500, 832))
    with pytest.raises(ConfigError, match="--frames-per-block"):
        get_model("wan2.1-1.3b", frames_per_block=0)


def test_simulate_takes_every_ring_flag(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from apps.cli import main

    assert main(["simulate", "--model", "wan2.1-14b", "--placement", "layers", "--devices", "4", "--rings", "2",
                 "--stage-stride", "2", "--lag", "1", "--attention", "stage", "--layer-split", "25,15",
                 "--frames-per-block", "1", "--resolution", "512x512", "--weights", "replicated", "--overlap",
                 "--input", "video", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["spec"]["layer_split"] == [25, 15] and out["spec"]["frames_per_block"] == 1
    assert out["weights"] == "replicated" and out["overlap"] is True
    assert [d["role"] for d in out["devices"]][:2] == ["layers [0, 25) + entry", "layers [25, 40), decodes inline"]
    assert {"steady_busy", "steady_comm", "bubble", "bottleneck"} <= set(out["devices"][0])
    assert any("video input" in n for n in out["notes"])
    assert main(["simulate", "--placement", "layers", "--devices", "2", "--stage-stride", "2", "--lag", "1"]) == 0
    text = capsys.readouterr().out
    assert "bubble" in text and "layers [0, 15) + entry" in text and "hop" in text
    for argv, flag in ((["--resolution", "480x830"], "--resolution"), (["--frames-per-block", "0"], "--frames-per-block"),
                       (["--placement", "layers", "--devices", "2", "--stage-stride", "2", "--layers", "31"],
                        "--layers")):
        assert main(["simulate", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and flag in err
