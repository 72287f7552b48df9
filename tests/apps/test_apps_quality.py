"""``cascade quality`` and its metrics, on the shipped toy weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch

from apps.quality.measure import (
    PROMPTS,
    SWITCHES,
    data_row,
    data_switch_row,
    follow_frames,
    jump_ratio,
    measure,
    physics_error,
    run,
    speed_error,
    toy_model,
)
from models.toy_world import make_clip

CASCADE = [sys.executable, "-m", "cascade_sched.cli"]

# The bounds (docs/quality.md), checked here on fewer seeds than `cascade quality` uses.
MISSING_BOUND_PCT = 10.0
PHYSICS_BOUND_PX = 1.0
JUMP_TOLERANCE = 0.10  # of the world's own jump ratio
FOLLOW_FRAMES = 3  # one block


@pytest.fixture(autouse=True)
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_metrics_on_ground_truth_and_on_broken_videos() -> None:
    clip = make_clip(7, PROMPTS[0], frames=18).frames
    phys, missing, extra = physics_error(clip, PROMPTS[0])
    assert phys < 0.1 and missing == 0 and extra == 0
    assert 0.9 < jump_ratio(clip) < 1.1
    shuffled = clip[:, torch.randperm(18, generator=torch.Generator().manual_seed(0))]
    assert physics_error(shuffled, PROMPTS[0])[0] > 1.0  # frames out of order break the motion
    jumpy = clip.clone()
    for b in range(1, 6):  # every block shifted by another 4 px: a jump at each block boundary
        jumpy[:, 3 * b:3 * b + 3] = clip[:, 3 * b:3 * b + 3].roll(4 * b, dims=-1)
    assert jump_ratio(jumpy) > 1.5
    red = make_clip(7, "red", frames=6).frames
    assert physics_error(red, "red green")[1] == 50.0 and physics_error(red, "")[2] == 0  # green is missing
    assert physics_error(clip, "red")[2] == 100.0  # green and blue drawn where the prompt has only red
    assert speed_error(clip, PROMPTS[0]) < 1e-9 and abs(speed_error(clip[:, :1].repeat(1, 6, 1, 1), PROMPTS[0]) - 0.5) < 1e-9
    row = data_row(seeds=2, blocks=4)
    assert row.physics_px < 0.1 and row.missing_pct == 0


def test_follow_frames_on_the_worlds_own_switch_and_on_a_video_that_ignores_it() -> None:
    timeline = [(0, "red green slow"), (2, "red green blue fast")]
    switched = make_clip(3, timeline, frames=15).frames
    assert follow_frames(switched, timeline) == 0
    ignored = make_clip(3, "red green slow", frames=15).frames  # no third ball, still slow
    assert follow_frames(ignored, timeline) == 9  # never follows: every frame after the switch
    assert follow_frames(ignored, timeline, paths=False) == 9  # the third ball never appears
    row = data_switch_row(seeds=4, blocks=6)
    assert row.follow_frames == 0 and row.within_block_pct == 100


def test_shipped_weights_reach_the_bounds_sequentially() -> None:
    world = data_row(seeds=4, blocks=8)
    (seq,) = measure(toy_model(), seeds=4, blocks=8, lags=[5], attentions=["causal"])
    assert seq.missing_pct <= MISSING_BOUND_PCT
    assert seq.physics_px <= PHYSICS_BOUND_PX
    assert abs(seq.jump_ratio - world.jump_ratio) <= JUMP_TOLERANCE * world.jump_ratio


def test_shipped_weights_draw_the_new_prompts_balls_after_most_switches() -> None:
    # The content of a switch (which balls) is mostly followed within one block; where the continuing
    # balls go is not (docs/quality.md: the bound is missed). 6 of these 8 follow the content.
    followed = 0
    for seed in range(2):
        for old, new in SWITCHES:
            timeline = [(0, old), (4, new)]
            frames, _ = run(toy_model(), seed, 8, 5, "causal", timeline)
            followed += follow_frames(frames, timeline, paths=False) <= FOLLOW_FRAMES
    assert followed >= 4


def test_quality_cli_json_rows_for_every_setting_and_pictures(tmp_path: Path) -> None:
    png, switch_png = tmp_path / "f.png", tmp_path / "s.png"
    r = subprocess.run([*CASCADE, "quality", "--seeds", "1", "--switch-seeds", "1", "--blocks", "3", "--lags", "5,1",
                        "--attention", "causal,bidirectional", "--json", "--no-progress", "--frames", str(png),
                        "--switch-frames", str(switch_png)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    rows, switches = out["rows"], out["switches"]
    settings = [(v, lag, a) for v in ("cascade", "sequential") for lag in (5, 1) for a in ("causal", "bidirectional")]
    assert [(x["variant"], x["lag"], x["attention"]) for x in rows] == [("world", 0, "data"), *settings]
    assert rows[1]["dist_to_seq"] == 0 and rows[0]["dist_to_seq"] is None
    assert [(x["variant"], x["lag"], x["attention"], x["policy"]) for x in switches[1:]] == [
        (*s, p) for s in settings for p in ("none", "recache")]
    assert all(x["stall_ms"] is not None for x in switches[1:])
    assert png.is_file() and switch_png.is_file()


def test_quality_cli_measures_the_stage_context_at_lag_1(tmp_path: Path) -> None:
    """StreamDiffusionV2's stream-batch context beside Block Cascading's at lag 1, on both variants; its switch
    rows run policy none only (the contract refuses a recache under stage)."""
    r = subprocess.run([*CASCADE, "quality", "--seeds", "1", "--switch-seeds", "1", "--blocks", "5", "--lag", "1",
                        "--attention", "stage,causal,bidirectional,stale", "--json", "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    rows = {(x["variant"], x["attention"]): x for x in out["rows"][1:]}
    assert set(rows) == {(v, a) for v in ("cascade", "sequential") for a in ("stage", "causal", "bidirectional", "stale")}
    for v in ("cascade", "sequential"):  # stage reads other versions than causal: another video
        assert rows[(v, "stage")]["dist_to_seq"] != rows[(v, "causal")]["dist_to_seq"]
        assert rows[(v, "stage")]["physics_px"] is not None and rows[(v, "stage")]["missing_pct"] is not None
    switches = {(x["variant"], x["attention"], x["policy"]) for x in out["switches"][1:]}
    assert ("cascade", "stage", "none") in switches and ("cascade", "stage", "recache") not in switches
    assert ("sequential", "causal", "recache") in switches


def test_quality_cli_rejects_bad_lists() -> None:
    for flag, value in (("--attention", "sideways"), ("--policies", "ignore"), ("--variants", "big")):
        r = subprocess.run([*CASCADE, "quality", flag, value], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and flag.lstrip("-") in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_generate_with_the_toy_model_writes_pixel_frames(tmp_path: Path) -> None:
    out = tmp_path / "v.gif"
    r = subprocess.run([*CASCADE, "generate", "--model", "toy", "--blocks", "2", "--out", str(out), "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert iio.imread(out).shape == (6, 128, 128, 3)  # one frame per latent frame, x8 upsampled
