"""The toy world's prompts and ground truth, its text encoder, and the shipped weights (training them:
tests/apps/test_apps_toy.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cascade_sched.errors import CheckpointError, ConfigError
from models import get_config
from models.checkpoints import load_model, load_sampler, save_model
from models.decode import PixelDecoder
from models.prompts import default_text_encoder
from models.toy_text import ToyTextEncoder
from models.toy_world import (
    RADIUS,
    SIZE,
    START_STATES,
    ball_present,
    find_balls,
    make_clip,
    parse_prompt,
    render,
    roll,
    simulate,
)
from models.weights import TOY_SEQUENTIAL_WEIGHTS as SEQUENTIAL_WEIGHTS
from models.weights import TOY_WEIGHTS as WEIGHTS

TIMELINES = [
    [(0, "")],
    [(0, "red fast")],
    [(0, "red green slow"), (2, "red green blue fast")],  # a ball appears, the others speed up
    [(0, "red green blue fast"), (1, "blue slow")],  # two balls leave, one slows down
    [(0, "green"), (2, "red"), (3, "green blue")],  # green leaves and comes back at a fresh start
]


@pytest.mark.parametrize(("seed", "timeline"), [(s, t) for s in range(3) for t in TIMELINES])
def test_ground_truth_follows_the_timeline_and_matches_the_frames(seed: int, timeline: list) -> None:
    clip = make_clip(seed, timeline, frames=15)
    assert clip.frames.shape == (3, 15, SIZE, SIZE)
    assert float(clip.frames.min()) >= -1 and float(clip.frames.max()) <= 1
    for t in range(15):  # the balls present at frame t are those of the prompt in force at its block
        prompt = parse_prompt(next(text for at, text in reversed(timeline) if 3 * at <= t))
        assert clip.present[t].tolist() == list(prompt.balls)
        moving = clip.present[t] & (clip.present[t - 1] if t else torch.zeros(3, dtype=torch.bool))
        # a ball that continues moves at the prompt's speed (or bounced off a wall, within 2 * speed of it)
        step = (clip.positions[t] - clip.positions[t - 1]).abs()[moving]
        near = ((clip.positions[t][moving] - RADIUS).abs() <= 2 * prompt.speed) | (
            (clip.positions[t][moving] - (SIZE - RADIUS)).abs() <= 2 * prompt.speed)
        assert bool((torch.isclose(step, torch.tensor(prompt.speed, dtype=torch.float64)) | near).all())
    assert torch.equal(ball_present(clip.frames), clip.present)  # drawn exactly where present
    found = find_balls(clip.frames)
    assert torch.allclose(found[clip.present], clip.positions[clip.present], atol=0.3)  # centroids within 0.3 px
    assert bool(found[~clip.present].isnan().all())  # absent balls leave their channel black


def test_prompts_parse_from_the_vocabulary_and_two_speeds_are_refused() -> None:
    assert parse_prompt("").balls == (True, True, True) and parse_prompt("").speed == 0.5
    assert parse_prompt("A Red and a BLUE ball, fast!") == parse_prompt("blue red fast")
    assert parse_prompt("red blue fast").words == ["red", "blue", "fast"]
    with pytest.raises(ConfigError, match="two speeds"):
        parse_prompt("red slow fast")


def test_start_states_are_a_grid_and_a_bounce_reflects_off_the_wall() -> None:
    assert len(START_STATES) == 36 and len(set(START_STATES)) == 36
    pos, vel = simulate(torch.tensor([[12.5, 8.0]]), torch.tensor([[1.0, 0.5]]), 3)
    assert pos[:, 0, 0].tolist() == [12.5, 12.5, 11.5]  # 12.5 -> 13.5 reflects to 12.5 at the wall 13
    assert vel[:, 0, 0].tolist() == [1.0, -1.0, -1.0]
    clip = roll([(0, "red")], 3, [[0], [], []])
    assert clip.positions[0, 0].tolist() == [5.0, 5.0]  # start state 0: (5, 5), moving (-, -)


def test_render_one_ball_per_channel_and_decoder() -> None:
    frames = render(torch.tensor([[[4.0, 4.0], [12.0, 12.0]]]), radius=1.5)  # one frame, two balls
    assert float(frames[2].max()) == -1  # no third ball: blue channel empty
    assert float(frames[0, 0, 3, 3]) == 1 and float(frames[1, 0, 11, 11]) == 1
    out = PixelDecoder(spatial=2).decode_block(frames.repeat(1, 3, 1, 1))
    assert out.shape == (3, 32, 32, 3) and out.dtype.name == "uint8"
    assert tuple(out[0, 7, 7]) == (255, 0, 0)


def test_the_toy_text_encoder_is_the_vocabulary_and_the_toys_default() -> None:
    cfg = get_config("toy")
    enc = default_text_encoder(cfg)
    assert isinstance(enc, ToyTextEncoder)
    assert torch.equal(enc.encode("blue red"), enc.encode("a red and a blue ball, slow"))
    assert not torch.equal(enc.encode("red"), enc.encode("red fast"))
    assert enc.encode("").shape == (1, cfg.text_dim) and float(enc.encode("").sum()) == 4  # 3 colours + slow


def test_shipped_weights_load_as_the_toy_preset() -> None:
    for path, limit in ((WEIGHTS, 5_000_000), (SEQUENTIAL_WEIGHTS, 2_600_000)):
        assert path.is_file() and path.stat().st_size < limit
        model = load_model(path)
        assert model.config == get_config("toy")
        assert all(torch.isfinite(p).all() for p in model.parameters())
        sampler = load_sampler(path)  # trained for shift 1: sigmas 1, 0.75, 0.5, 0.25 (docs/quality.md)
        assert sampler is not None and sampler.shift == 1.0
        assert [sampler.sigma(t) for t in (1000, 750, 500, 250)] == [1.0, 0.75, 0.5, 0.25]


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
