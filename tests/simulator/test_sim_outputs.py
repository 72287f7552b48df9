"""Results, traces, Gantt charts and the two commands' outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from apps.cli import main
from cascade_sched import CascadeSpec, build_schedule
from cascade_sched.trace import read_chrome_trace
from simulator import Cluster, SimResult, UniformCost, get_gpu, get_model, make_cost, simulate
from simulator.plan import Constraints, SweepSpace, format_table, recommend, sweep
from simulator.visual import draw_decomposition, draw_gantt, draw_intervals, write_trace


def _result(decode: str = "inline") -> SimResult:
    s = build_schedule(CascadeSpec(num_blocks=8, lag=1, num_devices=3, window=4, placement="block"))
    cost = make_cost("parts", get_model("wan2.1-1.3b"), get_gpu("h100-sxm"))
    return simulate(s, Cluster.of("h100-sxm", 3, interconnect="pcie5"), cost, decode=decode)


def test_trace_goes_through_the_shared_format(tmp_path: Path) -> None:
    r = _result()
    path = tmp_path / "t.json"
    write_trace(r, str(path))
    events = read_chrome_trace(str(path))
    compute = [e for e in events if e.track == "compute"]
    assert sorted(e.name for e in compute) == sorted(f"B{b}S{s}" for b in range(8) for s in range(5))
    assert {e.track for e in events} >= {"compute", "comm", "decode", "sample"}
    raw = json.loads(path.read_text())
    assert any(e["ph"] == "s" for e in raw["traceEvents"]) and raw["metadata"]["cost"] == "parts"
    for e in compute:
        assert e.device < 3 and e.duration_s > 0


@pytest.mark.parametrize("decode", ["inline", "stream", "gpu"])
def test_pictures_are_pngs(tmp_path: Path, decode: str) -> None:
    r = _result(decode)
    for name, draw in (("g", lambda p: draw_gantt(r, p)), ("i", lambda p: draw_intervals(r, p)),
                       ("d", lambda p: draw_decomposition([("a", r), ("b", r)], p))):
        path = tmp_path / f"{name}.png"
        draw(str(path))
        assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("decode", ["inline", "stream", "gpu"])
def test_decomposition_sums_to_the_delivered_interval(decode: str) -> None:
    s = build_schedule(CascadeSpec(num_blocks=24, lag=1, num_devices=5, window=7))
    r = simulate(s, Cluster.of("h100-sxm", 5), make_cost("parts", get_model("wan2.1-1.3b"), get_gpu("h100-sxm")),
                 decode=decode)
    parts = r.decomposition()
    assert sum(parts.values()) == pytest.approx(12 / r.fps, rel=1e-6)
    assert parts["forward"] > 0 and parts["cache"] > 0
    if decode == "inline":
        assert parts["decode"] > 0 and r.bottleneck()[0] == "decode"
    else:
        assert parts["decode"] == 0


def test_result_json_has_the_promised_fields() -> None:
    d = _result().to_dict()
    for key in ("gpus", "delivered_fps", "denoise_fps", "fps", "paper_fps", "end_s", "makespan_s", "steady", "first_frame_s", "interval_p50_s", "interval_p95_s",
                "interval_p99_s", "interval_max_s", "jitter_s", "bytes_by_link", "peak_memory_bytes", "cost_source",
                "devices", "decode", "bottleneck", "lift", "decomposition_s", "memory_margin"):
        assert key in d
    assert d["gpus"] == 3
    assert json.loads(json.dumps(d)) == d
    shares = d["devices"][0]
    assert shares["busy"] + shares["comm"] + shares["idle"] == pytest.approx(1.0)


def test_simulate_command_json_and_pictures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace, gantt = tmp_path / "t.json", tmp_path / "g.png"
    assert main(["simulate", "--blocks", "12", "--lag", "1", "--devices", "5", "--window", "7", "--json",
                 "--trace", str(trace), "--gantt", str(gantt)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["delivered_fps"] > 16 and out["denoise_fps"] > 16 and out["interval_p99_s"] > 0 and out["gpus"] == 5
    assert (out["fps"], out["paper_fps"]) == (out["delivered_fps"], out["denoise_fps"])  # the older names
    assert main(["simulate", "--blocks", "10", "--lag", "1", "--devices", "5", "--decode", "gpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["gpus"] == 6
    assert trace.exists() and gantt.exists()
    assert main(["simulate", "--model", "tiny", "--cost", "uniform:0.1", "--straggler", "0:2"]) == 0
    assert "FPS" in capsys.readouterr().out


def test_plan_sweeps_ranks_and_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--model", "wan2.1-1.3b", "--gpu-counts", "1-3", "--lags", "1,5",
                 "--attentions", "causal", "--interconnects", "nvlink4,pcie5", "--blocks", "16",
                 "--target-fps", "20", "--placement", "block", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "recommendation" in out and "wan2.1-1.3b:" in out and "bottleneck" in out
    rows = list(csv.DictReader((tmp_path / "plan.csv").open()))
    # GPU counts 1-3 x 2 links x 2 lags x decode inline/stream/gpu (gpu needs 2 GPUs or more)
    assert len(rows) == (3 * 2 + 2 * 1) * 2 * 2
    assert {r["decode"] for r in rows} == {"inline", "stream", "gpu"}
    assert all(int(r["gpus"]) == int(r["denoising_gpus"]) + (r["decode"] == "gpu") for r in rows)
    assert json.loads((tmp_path / "plan.json").read_text())["points"][0]["meets"] is True
    assert (tmp_path / "plan.png").read_bytes()[:4] == b"\x89PNG"


def test_planner_marks_points_that_do_not_fit() -> None:
    space = SweepSpace(models=("wan2.1-14b",), gpu="l40s", gpu_counts=(1, 2), lags=(1,), attentions=("causal",),
                       blocks=12)
    points = sweep(space, Constraints(target_fps=1.0))
    assert all(not p.fits and p.status == "does not fit in memory" for p in points)
    assert recommend(points, "wan2.1-14b") is None


def test_every_context_is_swept_and_stale_is_labelled() -> None:
    """The planner sweeps the four contexts (issue 24: causal, bidirectional, stale, stage); stale, an
    extension the paper did not evaluate, is labelled so in every row."""
    space = SweepSpace(models=("wan2.1-1.3b",), gpu_counts=(2,), lags=(1,), blocks=12)
    assert {p.attention for p in sweep(space, Constraints())} == {"causal", "bidirectional", "stale", "stage"}
    asked = sweep(SweepSpace(models=("wan2.1-1.3b",), gpu_counts=(2,), lags=(1,), blocks=12,
                             attentions=("causal", "stale")), Constraints())
    assert all(p.extension == (p.attention == "stale") for p in asked)
    assert "extension" in format_table(asked)


def test_simulate_and_plan_share_their_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One point of the default plan and ``simulate`` with the same flags are the same run."""
    assert main(["plan", "--model", "wan2.1-1.3b", "--gpu-counts", "5", "--lags", "1", "--attentions", "causal",
                 "--decodes", "inline", "--placement", "block", "--out", str(tmp_path), "--json"]) == 0
    (point,) = json.loads(capsys.readouterr().out)["points"]
    assert main(["simulate", "--lag", "1", "--devices", "5", "--json"]) == 0
    sim = json.loads(capsys.readouterr().out)
    assert sim["spec"]["window"] == point["window"] == 7 and sim["spec"]["num_blocks"] == 16
    assert sim["fps"] == pytest.approx(point["fps"])


def test_recommendation_is_the_fewest_gpus_meeting_the_target() -> None:
    space = SweepSpace(models=("wan2.1-1.3b",), gpu_counts=(1, 2, 3, 4), lags=(1, 5), attentions=("causal",),
                       blocks=16)
    points = sweep(space, Constraints(target_fps=30.0))
    best = recommend(points, "wan2.1-1.3b")
    assert best is not None and best.fps >= 30
    assert all(p.gpus >= best.gpus for p in points if p.meets)
    assert best.bottleneck in ("compute", "exchange", "decode", "memory") and best.lift


def test_uniform_cost_rates_are_exact() -> None:
    s = build_schedule(CascadeSpec(num_blocks=20, lag=2, num_devices=3))
    r = simulate(s, Cluster.of("h100-sxm", 3, interconnect="ideal"), UniformCost(0.05), "tiny")
    assert r.fps == pytest.approx(12 / 0.1) and r.jitter_s == pytest.approx(0.0, abs=1e-12)
