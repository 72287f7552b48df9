"""The toy world's ground truth, the toy decoder, the shipped weights and the training script."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from cascade_sched.errors import CheckpointError
from models import get_config
from models.checkpoints import load_model, load_sampler, save_model
from models.decode import PixelDecoder
from models.toy_world import RADIUS, SIZE, ball_present, find_balls, make_clip, render, simulate
from models.train_toy import WEIGHTS, main, sample_sigmas, train


@pytest.mark.parametrize("seed", range(6))
def test_ground_truth_positions_match_the_frames(seed: int) -> None:
    clip = make_clip(seed, frames=18)
    assert clip.frames.shape == (3, 18, SIZE, SIZE)
    assert float(clip.frames.min()) >= -1 and float(clip.frames.max()) <= 1
    assert bool(ball_present(clip.frames).all())
    assert torch.allclose(find_balls(clip.frames), clip.positions, atol=0.3)  # centroids within 0.3 px


def test_motion_is_constant_velocity_with_elastic_bounces() -> None:
    for seed in range(20):
        clip = make_clip(seed, frames=30)
        p, v = clip.positions, clip.velocities
        assert bool(((p >= RADIUS - 1e-9) & (p <= SIZE - RADIUS + 1e-9)).all())  # inside the walls
        assert torch.allclose(v.abs(), v[:1].abs().expand_as(v))  # speeds never change, only signs
        step = p[1:] - p[:-1]
        straight = torch.isclose(step, v[:-1])  # no bounce: moved by exactly the velocity
        bounced = v[1:] != v[:-1]
        assert bool((straight | bounced).all())


def test_a_bounce_reflects_off_the_wall() -> None:
    pos, vel = simulate(torch.tensor([[2.5, 8.0]]), torch.tensor([[-1.0, 0.5]]), 3, radius=2.0)
    assert pos[:, 0, 0].tolist() == [2.5, 2.5, 3.5]  # 2.5 -> 1.5 reflects to 2.5 at the wall 2, then out
    assert vel[:, 0, 0].tolist() == [-1.0, 1.0, 1.0]


def test_render_one_ball_per_channel_and_decoder() -> None:
    frames = render(torch.tensor([[[4.0, 4.0], [12.0, 12.0]]]), radius=1.5)  # one frame, two balls
    assert float(frames[2].max()) == -1  # no third ball: blue channel empty
    assert float(frames[0, 0, 3, 3]) == 1 and float(frames[1, 0, 11, 11]) == 1
    out = PixelDecoder(spatial=2).decode_block(frames.repeat(1, 3, 1, 1))
    assert out.shape == (3, 32, 32, 3) and out.dtype.name == "uint8"
    assert tuple(out[0, 7, 7]) == (255, 0, 0)


def test_sigma_patterns_cover_cascade_ticks_and_clean_context() -> None:
    import random

    table = [1.0, 0.9375, 0.8333, 0.625, 0.0]
    rng = random.Random(0)
    draws = [sample_sigmas(rng, 6, table, 5.0) for _ in range(400)]
    assert any(d[0] == 0.0 and d[1] is not None and d[1] > 0 for d in draws)  # clean context, noisy block
    assert any(d[-1] is None for d in draws)  # blocks not started are left out
    for d in draws:
        assert all(s is None or 0.0 <= s <= 1.0 for s in d)


def test_shipped_weights_load_as_the_toy_preset() -> None:
    assert WEIGHTS.is_file() and WEIGHTS.stat().st_size < 5_000_000
    meta = json.loads(WEIGHTS.with_suffix(".json").read_text())
    assert meta["config"]["name"] == "toy"
    model = load_model(WEIGHTS)
    assert model.config == get_config("toy")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(float(b.cross_attn.o.weight.detach().abs().max()) == 0 for b in model.blocks)  # prompt unused
    sampler = load_sampler(WEIGHTS)  # trained for shift 1: sigmas 1, 0.75, 0.5, 0.25 (docs/quality.md)
    assert sampler is not None and sampler.shift == 1.0
    assert [sampler.sigma(t) for t in (1000, 750, 500, 250)] == [1.0, 0.75, 0.5, 0.25]


def test_training_runs_a_few_steps_and_saves(tmp_path: Path) -> None:
    model, losses, _ = train(steps=2, batch=1, blocks=2, progress=False)
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert model.config.name == "toy" and not model.training
    out = tmp_path / "t.safetensors"
    assert main(["--steps", "2", "--batch", "1", "--blocks", "2", "--out", str(out), "--plot",
                 str(tmp_path / "loss.png"), "--no-progress"]) == 0
    assert (tmp_path / "loss.png").is_file()
    assert load_model(out).config.name == "toy"
    saved = load_sampler(out)
    assert saved is not None and saved.shift == 1.0  # the sampler it was trained for travels with it


def test_saved_sampler_settings_round_trip_and_bad_ones_are_named(tmp_path: Path) -> None:
    model = load_model(WEIGHTS)
    path = save_model(model, tmp_path / "m.safetensors", sampler={"shift": 3.0})
    assert load_sampler(path).shift == 3.0  # type: ignore[union-attr]
    assert load_sampler(save_model(model, tmp_path / "plain.safetensors")) is None  # none saved
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["sampler"] = {"shfit": 3.0}
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="sampler"):
        load_sampler(path)
