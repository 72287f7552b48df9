"""Calibration and validation: the alpha-beta fit, profile coverage, the simulator's hand-over rules, and a
small ``cascade validate`` on the tiny model."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

from apps.calibrate.calibrate import CalibrateOptions, calibrate, fit_alpha_beta
from apps.calibrate.matrix import METRICS, ROW_FIELDS, MatrixOptions, matrix_specs, predict, run_matrix
from apps.cli import main
from cascade_sched import CascadeSpec, build_schedule
from cascade_sched.errors import ConfigError, SimulationError
from simulator import GPU, Cluster, UniformCost, simulate
from simulator.profile import ForwardPoint, Profile, ProfileCost


# -- the link fit -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("latency, bandwidth", [(5e-5, 2e9), (2e-4, 1e9), (6e-6, 4.5e11), (0.0, 1e10)])
def test_fit_recovers_known_latency_and_bandwidth(latency: float, bandwidth: float) -> None:
    sizes = [1 << k for k in range(10, 25, 2)]
    fit = fit_alpha_beta(sizes, [latency + b / bandwidth for b in sizes])
    assert fit.latency_s == pytest.approx(latency, rel=1e-6, abs=1e-12)
    assert fit.bandwidth_Bps == pytest.approx(bandwidth, rel=1e-6)
    assert fit.residual_pct < 1e-6


def test_fit_tolerates_noise() -> None:
    rng = random.Random(0)
    sizes = [1 << k for k in range(10, 23)] * 3
    times = [(1e-4 + b / 3e9) * (1 + rng.uniform(-0.05, 0.05)) for b in sizes]
    fit = fit_alpha_beta(sizes, times)
    assert fit.latency_s == pytest.approx(1e-4, rel=0.1)
    assert fit.bandwidth_Bps == pytest.approx(3e9, rel=0.1)


def test_fit_never_returns_negative_latency() -> None:
    sizes = [1e3, 1e6, 1e7]
    fit = fit_alpha_beta(sizes, [b / 1e9 - 1e-6 * (b == 1e3) + 1e-9 for b in sizes])
    assert fit.latency_s >= 0 and fit.bandwidth_Bps > 0


def test_fit_needs_two_sizes() -> None:
    with pytest.raises(ConfigError, match="two distinct message sizes"):
        fit_alpha_beta([1024, 1024], [1e-4, 1e-4])


# -- profile coverage -------------------------------------------------------------------------------------
def _profile() -> Profile:
    pts = [ForwardPoint(n, 12, 12 * c, 0.01 * n + 0.001 * c) for n in (1, 3) for c in (1, 2, 4)]
    return Profile("tiny", tuple(pts), sample_s_per_task=1e-4, link_fit=(1e-4, 1e9),
                   provenance={"threads": 1})


def test_missing_batch_is_refused_with_a_clear_message() -> None:
    cost = ProfileCost(_profile())
    with pytest.raises(SimulationError, match=r"no forward entries for batch=5 .*measured batches \[1, 3\]"):
        cost.forward_s(12, (12,) * 5)
    with pytest.raises(SimulationError, match="no forward entries for query_tokens=48"):
        cost.forward_s(48, (48,))


def test_interpolated_and_extrapolated_shapes_are_marked() -> None:
    cost = ProfileCost(_profile())
    cost.forward_s(12, (24,))
    assert cost.extrapolations() == ()  # inside the measured grid
    cost.forward_s(12, (24, 24))
    cost.forward_s(12, (96,))
    marks = cost.extrapolations()
    assert "batch 2 interpolated between measured 1 and 3" in marks
    assert any("context 96 tokens extrapolated beyond the measured 12..48" in m for m in marks)


def test_validate_marks_rows_priced_off_the_grid() -> None:
    sched = build_schedule(CascadeSpec(num_blocks=6, lag=2, num_devices=1, window=None))
    _, marks = predict(sched, _profile())
    assert marks  # batch 2 is interpolated and unbounded windows reach past 4 blocks


# -- the simulator's hand-over rules (what the executors do) ----------------------------------------------
def test_decode_on_a_denoising_device_goes_first() -> None:
    """With the decoder on d0, block b is handed over when its batch ends, not one batch later."""
    s = build_schedule(CascadeSpec(num_blocks=6, lag=1, num_devices=1))
    r = simulate(s, Cluster.of("h100-sxm", 1), UniformCost(0.1), "tiny", decode=0)
    assert r.block_decoded_s == pytest.approx(r.block_denoised_s)
    gaps = [b - a for a, b in zip(r.block_decoded_s, r.block_decoded_s[1:], strict=False)]
    assert min(gaps) > 0


def test_clean_latent_is_received_at_the_end_of_its_tick() -> None:
    """Two devices, decoder on d0: d1's block is on d0 before d0's next batch, as the tick loop waits for it."""
    s = build_schedule(CascadeSpec(num_blocks=6, lag=3, num_devices=2, attention="stale"))
    slow_d1 = Cluster.of("h100-sxm", 2, interconnect="pcie5", stragglers=((1, 1.5),))
    r = simulate(s, slow_d1, UniformCost(0.1), "tiny", decode=0)
    for b in range(1, 6, 2):  # blocks made on the slower d1: d0 waits for them rather than running ahead
        assert r.block_decoded_s[b] == pytest.approx(r.block_denoised_s[b], abs=1e-3)


def test_contention_slows_only_ticks_shared_by_devices() -> None:
    """Shared-host contention applies when two devices compute in one tick, never to a sequential chain."""
    seq = build_schedule(CascadeSpec(num_blocks=4, num_devices=2))  # lag S: one device busy per tick
    par = build_schedule(CascadeSpec(num_blocks=4, lag=1, num_devices=2))
    for sched, expect in ((seq, 1.0), (par, 1.5)):
        base = simulate(sched, Cluster.of("h100-sxm", 2, interconnect="ideal"), UniformCost(0.1), "tiny")
        shared = Cluster(base_gpu(), 2, intra=Cluster.of("h100-sxm", 2, interconnect="ideal").intra, contention=1.5)
        r = simulate(sched, shared, UniformCost(0.1), "tiny")
        assert r.makespan_s == pytest.approx(base.makespan_s * expect, rel=0.2 if expect > 1 else 1e-9)
    with pytest.raises(ConfigError, match="contention"):
        Cluster(base_gpu(), 2, contention=0.5)


def test_predict_shares_the_host_with_the_measured_background_and_interference() -> None:
    """``validate``'s prediction: ranks as processes on the profile's cores, other work from the idle
    share, interference per batch size from the calibration."""
    sched = build_schedule(CascadeSpec(num_blocks=6, lag=1, num_devices=2, window=None))
    prof = _profile()
    prof = dataclasses.replace(prof, provenance={**prof.provenance, "cores": 2, "contention": {
        "processes": 2, "slowdown": 1.0, "interference": 1.0, "interference_by_batch": [[1, 1.0], [3, 1.5]]}})
    idle, _ = predict(sched, prof, contend=False)
    shared, _ = predict(sched, prof)
    loaded, _ = predict(sched, prof, background=1.0)
    assert "one host of 2 cores" in shared.cluster and "x1.5 at batch 3" in shared.cluster
    assert idle.makespan_s < shared.makespan_s < loaded.makespan_s
    # the per-tick factor of the old model, for comparison: 1.0 measured, so no slowdown at all
    tick, _ = predict(sched, prof, sharing=False)
    assert tick.makespan_s == pytest.approx(idle.makespan_s)
    one, _ = predict(build_schedule(CascadeSpec(num_blocks=6, lag=2, window=None)), prof, background=1.0)
    alone, _ = predict(build_schedule(CascadeSpec(num_blocks=6, lag=2, window=None)), prof)
    assert one.makespan_s == pytest.approx(alone.makespan_s)  # 1 rank + 1 core of load fit on 2 cores


@pytest.mark.slow
def test_exchange_is_measured_through_the_distributed_transport() -> None:
    """Two gloo ranks run the distributed executor itself; the time DistributedTransport.exchange spends per
    layer is fitted against the bytes the busier port moves per layer (one stacked K/V message per version)."""
    from apps.calibrate.calibrate import measure_exchange

    g = measure_exchange("tiny", blocks=5, window=2, threads=1)
    pts = g["fit"]["points"]
    layer = 2 * 12 * 32 * 4  # K and V, 12 tokens, dim 32, float32
    assert len(pts) >= 2 and all(p["bytes"] % layer == 0 and p["seconds"] > 0 for p in pts)
    assert g["latency_s"] >= 0 and g["bandwidth_Bps"] > 0 and "DistributedTransport" in g["method"]


def base_gpu() -> GPU:
    return Cluster.of("h100-sxm", 1).gpu


# -- calibrate and validate on the tiny model -------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_profile() -> Profile:
    opts = CalibrateOptions(model="tiny", threads=1, batches=(1, 2, 3, 4, 5), context_blocks=(1, 2, 4, 8),
                            warmup=1, repeats=3, link=False)
    return calibrate(opts, quiet=False)


def test_calibration_writes_provenance(tiny_profile: Profile, tmp_path: object) -> None:
    prov = tiny_profile.provenance
    for key in ("device", "torch", "dtype", "threads", "date"):
        assert key in prov
    assert prov["threads"] == 1 and prov["dtype"] == "float32"
    assert tiny_profile.sample_s_per_task > 0 and tiny_profile.decode_s_per_block > 0
    # the tick loop's own time: the least run less the least forwards (it can round to 0 on a loaded machine)
    tick = prov["tick"]
    assert tiny_profile.tick_overhead_s >= 0 and tick["ticks"] > 0 and tick["wall_s"] > tick["forwards_s"] > 0
    assert {(p.batch, p.context_tokens // 12) for p in tiny_profile.forward} == {
        (n, c) for n in range(1, 6) for c in (1, 2, 4, 8)}
    path = f"{tmp_path}/p.json"
    tiny_profile.save(path)
    assert Profile.load(path).to_dict() == tiny_profile.to_dict()


def test_matrix_specs_cover_every_lag() -> None:
    specs = matrix_specs(MatrixOptions(model="tiny", blocks=4, worlds=(1,), attentions=("causal", "stale")))
    assert sorted({s.lag for s in specs}) == [1, 2, 3, 4, 5]  # type: ignore[type-var]
    assert len(specs) == 10


def test_run_matrix_world_one(tiny_profile: Profile) -> None:
    # 10 blocks: at lag 1, 5 blocks in flight fill and drain the pipeline and leave a steady state
    opts = MatrixOptions(model="tiny", blocks=10, window=2, lags=(1, 5), attentions=("causal",), worlds=(1,),
                         quiet_s=0.0)
    rows = run_matrix(opts, tiny_profile)
    assert [r.name for r in rows] == ["w1-lag1-causal", "w1-lag5-causal"]
    for r in rows:
        assert len(r.measured["block_s"]) == len(r.predicted["block_s"]) == 10
        assert set(r.error_pct) == set(METRICS)
        assert not r.held_out
        assert all(v is not None for v in r.error_pct.values())


def test_profile_of_another_model_is_refused(tiny_profile: Profile) -> None:
    with pytest.raises(ConfigError, match="measured with model 'tiny'"):
        run_matrix(MatrixOptions(model="small", worlds=(1,)), tiny_profile)


@pytest.mark.slow
def test_cli_validate_json_has_the_documented_fields(tiny_profile: Profile, tmp_path: object,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The held-out check in small: a one-process profile predicts a two-process run (gloo)."""
    path = f"{tmp_path}/tiny.json"
    tiny_profile.save(path)
    traces = f"{tmp_path}/traces"
    rc = main(["validate", "--model", "tiny", "--profile", path, "--blocks", "4", "--window", "2", "--lags", "1",
               "--attentions", "causal", "--worlds", "1,2", "--json", "--traces", traces, "--quiet-wait", "0"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["format"] == "cascade-validate/1"
    assert [r["name"] for r in doc["rows"]] == ["w1-lag1-causal", "w2-lag1-causal"]
    for row in doc["rows"]:
        assert set(row) == set(ROW_FIELDS)
        for side in ("measured", "predicted"):
            assert set(row[side]) == {*METRICS, "block_s"}
        assert set(row["error_pct"]) == set(METRICS)
    assert doc["rows"][1]["held_out"] is True
    import os

    assert sorted(os.listdir(traces)) == sorted(
        f"{n}.{k}.json" for n in ("w1-lag1-causal", "w2-lag1-causal") for k in ("measured", "predicted"))


def test_cli_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--model", "tiny", "--repeats", "0", "--worlds", "1"]) == 2
    assert "--repeats" in capsys.readouterr().err
