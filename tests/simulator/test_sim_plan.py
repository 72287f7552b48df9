"""The planner over every placement: block placement, layer rings and G x W hybrids; what caps a target; no
advice of GPUs that would sit idle."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from apps.cli import main
from cascade_sched import CascadeSpec, build_schedule
from simulator import Cluster, get_gpu, get_model, make_cost, simulate
from simulator.plan import (
    PLATEAU,
    Constraints,
    SweepSpace,
    balanced_split,
    format_table,
    plateau,
    recommend,
    recommendation_text,
    sweep,
    sweep_size,
)

G13 = get_model("wan2.1-1.3b")


def test_the_sweep_holds_every_placement_at_every_count() -> None:
    space = SweepSpace(models=("wan2.1-1.3b",), gpu_counts=(1, 2, 4, 6), lags=(1,), attentions=("stage",),
                       decodes=("inline",), blocks=16)
    points = sweep(space, Constraints())
    labels = {(p.gpus, p.label) for p in points}
    assert labels == {(1, "block"), (2, "block"), (2, "ring 2"), (4, "block"), (4, "2x2"), (4, "ring 4"),
                      (6, "block"), (6, "3x2"), (6, "2x3"), (6, "ring 6")}
    assert all(p.stride == p.ring_size for p in points)
    assert sweep_size(space)[0] == len(points)
    # every ring point simulated enough blocks for a steady state
    assert all(p.blocks >= 2 * p.in_flight for p in points if p.fits)


@pytest.mark.parametrize("model", ["wan2.1-1.3b", "wan2.1-14b"])
def test_an_unreachable_target_names_the_plateau_and_never_more_gpus(model: str) -> None:
    """A target no point reaches: the answer is the fastest point on the smallest count of the FPS plateau,
    what caps it, and that more GPUs would sit idle; no point beyond that count is faster than it by more
    than the plateau's margin."""
    space = SweepSpace(models=(model,), gpu_counts=tuple(range(1, 9)), lags=(1,), attentions=("causal",),
                       decodes=("inline", "gpu"), blocks=16)
    points = sweep(space, Constraints(target_fps=500.0))
    assert recommend(points, model) is None
    best, n = plateau(points, model)
    assert best is not None and best.gpus == n
    top = max(p.fps for p in points if p.fits)
    assert best.fps >= (1 - PLATEAU) * top
    assert all(p.fps < (1 - PLATEAU) * top for p in points if p.fits and p.gpus < n)
    (line,) = recommendation_text(points, Constraints(target_fps=500.0))
    assert f"{best.gpus} x h100-sxm" in line and "What caps it:" in line and best.cap in line
    assert best.cap_kind in ("in-flight", "ring-stage", "decoder", "link", "compute")
    if n < 8:
        assert f"FPS plateaus from {n} GPUs" in line and "sit idle" in line


def test_block_placement_is_capped_by_its_blocks_in_flight() -> None:
    """The issue's dead end: 14B by block placement gives the same FPS on 6, 7 and 8 GPUs (a decoder GPU
    and one GPU per block in flight at lag 1); the planner says the blocks in flight cap it and answers
    with 6."""
    space = SweepSpace(models=("wan2.1-14b",), gpu_counts=(5, 6, 7, 8), lags=(1,), attentions=("causal",),
                       decodes=("gpu",), placements=("block",), blocks=16)
    points = sweep(space, Constraints(target_fps=24.0))
    best, n = plateau(points, "wan2.1-14b")
    assert best is not None and n == 6 and best.cap_kind == "in-flight"
    text = recommendation_text(points, Constraints(target_fps=24.0))[0]
    assert "blocks in flight" in text and "7, 8 GPUs give no more" in text


def test_14b_on_h100_at_24_fps_answers_with_a_point_or_its_cap() -> None:
    """`cascade plan --model wan2.1-14b --gpu h100-sxm --target-fps 24`: a real point (the fewest GPUs that
    meet it), never a count past the plateau."""
    space = SweepSpace(models=("wan2.1-14b",), lags=(1,), attentions=("causal", "stage"), blocks=16)
    points = sweep(space, Constraints(target_fps=24.0))
    p = recommend(points, "wan2.1-14b")
    assert p is not None and p.fps >= 24 and p.placement == "layers"
    assert all(q.gpus >= p.gpus for q in points if q.meets)
    _, n = plateau(points, "wan2.1-14b")
    assert p.gpus <= n


def test_a_ring_that_decodes_inline_gets_a_balanced_split() -> None:
    cost = make_cost("parts", G13, get_gpu("h100-sxm"))
    spec = CascadeSpec(num_blocks=50, lag=1, num_devices=4, placement="layers", stage_stride=4, num_layers=30,
                       window=7)
    even = simulate(build_schedule(spec), Cluster.of("h100-sxm", 4), cost, G13)
    split = balanced_split(even)
    assert split is not None and sum(split) == 30 and split[-1] == min(split)
    balanced = simulate(build_schedule(spec.replace(layer_split=split)), Cluster.of("h100-sxm", 4), cost, G13)
    assert balanced.fps > even.fps
    space = SweepSpace(models=("wan2.1-1.3b",), gpu_counts=(4,), lags=(1,), attentions=("causal",),
                       decodes=("inline",), placements=("layers",), ring_sizes=(4,), blocks=16)
    (point,) = sweep(space, Constraints())
    assert point.layer_split == ",".join(map(str, split)) and point.fps == pytest.approx(balanced.fps, rel=0.02)


def test_the_table_shows_the_context_and_points_to_its_quality() -> None:
    space = SweepSpace(models=("wan2.1-1.3b",), gpu_counts=(2,), lags=(1,), decodes=("inline",), blocks=12)
    points = sweep(space, Constraints())
    table = format_table(points, None)
    assert "context" in table.splitlines()[0] and "placement" in table.splitlines()[0]
    for name in ("causal", "bidirectional", "stale*", "stage", "ring 2", "block"):
        assert name in table
    assert "docs/quality.md" in table


def test_plan_command_sweeps_rings_and_marks_the_picture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--model", "wan2.1-1.3b", "--gpu-counts", "2,4", "--lag", "1", "--attention", "causal,stage",
                 "--decode", "inline", "--ring-sizes", "2", "--blocks", "12", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2x2" in out and "ring 2" in out and "recommendation" in out and "Why:" in out
    assert (tmp_path / "plan.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["plan", "--placement", "rings", "--out", str(tmp_path)]) == 2
    assert "--placement" in capsys.readouterr().err


def test_a_ring_that_does_not_fit_at_lag_1_is_tried_at_the_next_lags() -> None:
    """14B as a ring of 7 RTX 5090s (32 GB) with a decoder GPU: lag 1 holds S blocks per forward on every
    device and does not fit; the sweep keeps that point, marked, and goes on to the first lag that fits.
    Block placement, and a sweep that names its lags, run only the lags given."""
    space = SweepSpace(models=("wan2.1-14b",), gpu="rtx5090", gpu_counts=(8,), attentions=("causal",),
                       decodes=("gpu",), placements=("layers",), ring_sizes=(7,))
    points = sweep(space, Constraints())
    tried = sorted((p.lag, p.fits) for p in points)
    assert tried[0] == (1, False) and tried[-1][1], tried
    assert [fits for _, fits in tried] == [False] * (len(tried) - 1) + [True], tried  # stops at the first fit
    named = sweep(dataclasses.replace(space, lags=(1,)), Constraints())
    assert [(p.lag, p.fits) for p in named] == [(1, False)]
