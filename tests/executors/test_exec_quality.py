"""``cascade quality`` and its metrics, on the shipped toy weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch

from executors.quality import data_row, jump_ratio, measure, physics_error, toy_model
from models.toy_world import make_clip

CASCADE = [sys.executable, "-m", "cascade_sched.cli"]

# Loose bounds around what the shipped weights give on seed 0, 4 blocks (docs/quality.md): sequential
# 0.66 px with 53% of (frame, ball) pairs missing, lag 1 causal 0.52 px with 64% missing. The first,
# undistilled toy model missed 69% sequentially on this seed, so the missing bound separates the two.
PHYSICS_BOUND_PX = 1.2
MISSING_BOUND_PCT = 65.0


@pytest.fixture(autouse=True)
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_metrics_on_ground_truth_and_on_broken_videos() -> None:
    clip = make_clip(7, frames=18).frames
    phys, missing = physics_error(clip)
    assert phys < 0.3 and missing == 0
    assert 0.7 < jump_ratio(clip) < 1.4
    shuffled = clip[:, torch.randperm(18, generator=torch.Generator().manual_seed(0))]
    assert physics_error(shuffled)[0] > 1.0  # frames out of order break the motion
    jumpy = clip.clone()
    for b in range(1, 6):  # every block shifted by another 4 px: a jump at each block boundary
        jumpy[:, 3 * b:3 * b + 3] = clip[:, 3 * b:3 * b + 3].roll(4 * b, dims=-1)
    assert jump_ratio(jumpy) > 1.5
    row = data_row(seeds=2, blocks=4)
    assert row.physics_px < 0.3 and row.missing_pct == 0


def test_shipped_weights_keep_the_documented_quality_on_seed_0() -> None:
    rows = measure(toy_model(), seeds=1, blocks=4, lags=[5, 1], attentions=["causal"])
    seq, lag1 = rows
    assert (seq.lag, lag1.lag) == (5, 1) and seq.dist_to_seq == 0
    assert seq.physics_px < PHYSICS_BOUND_PX and seq.missing_pct < MISSING_BOUND_PCT
    assert lag1.physics_px < 2 * PHYSICS_BOUND_PX and lag1.missing_pct < 80.0
    assert 0 < lag1.dist_to_seq < 0.5


def test_quality_cli_json_and_frames(tmp_path: Path) -> None:
    png = tmp_path / "f.png"
    r = subprocess.run([*CASCADE, "quality", "--seeds", "1", "--blocks", "2", "--lags", "5,1", "--attention",
                        "causal,bidirectional", "--json", "--no-progress", "--frames", str(png)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [(x["lag"], x["attention"]) for x in rows] == [
        (0, "data"), (5, "causal"), (5, "bidirectional"), (1, "causal"), (1, "bidirectional")]
    assert rows[1]["dist_to_seq"] == 0 and rows[0]["dist_to_seq"] is None
    assert png.is_file()


def test_quality_cli_rejects_bad_attention() -> None:
    r = subprocess.run([*CASCADE, "quality", "--attention", "sideways"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "attention" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_generate_with_the_toy_model_writes_pixel_frames(tmp_path: Path) -> None:
    out = tmp_path / "v.gif"
    r = subprocess.run([*CASCADE, "generate", "--model", "toy", "--blocks", "2", "--out", str(out), "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert iio.imread(out).shape == (6, 128, 128, 3)  # one frame per latent frame, x8 upsampled
