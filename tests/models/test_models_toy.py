"""The toy world's prompts and ground truth, its text encoder, the exact training targets, the shipped
weights and the training script."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from cascade_sched.errors import CheckpointError, ConfigError
from models import get_config
from models.checkpoints import load_model, load_sampler, save_model
from models.decode import PixelDecoder
from models.dit import TaskInput
from models.prompts import default_text_encoder
from models.toy_text import ToyTextEncoder
from models.toy_training import (
    SIGMAS,
    VARIANTS,
    candidates,
    clip_velocity,
    exact_chain,
    make_examples,
    ode_pick,
    posterior,
    stage_pattern,
    text_rows,
    toy_model,
    x0_loss,
)
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
from models.train_toy import SEQUENTIAL_WEIGHTS, WEIGHTS, main, train_variant

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


def _gang(x: torch.Tensor, timesteps: list[float], prompts: list[str]) -> list[TaskInput]:
    """One clip (C, T, H, W) as a causal gang tick: block b reads the same-tick K/V of blocks < b."""
    return [TaskInput(ref=(b, 1), latent=x[:, 3 * b:3 * b + 3], timestep=t, frame_offset=3 * b, prompt=prompts[b],
                      reads=[(j, 1) for j in range(b)]) for b, t in enumerate(timesteps)]


def test_training_forward_is_the_causal_gang_tick_with_per_block_prompts() -> None:
    model = toy_model(seed=3)
    prompts = ["red slow", "red slow", "green blue fast", "green blue fast"]
    for p in set(prompts):
        model.register_prompt(p, ToyTextEncoder(model.config).encode(p))
    x = make_clip(5, frames=12).frames + 0.3 * torch.randn(3, 12, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    timesteps = [[1000.0, 0.0, 500.0, 250.0], [0.0, 0.0, 750.0, 1000.0]]
    text = torch.stack([text_rows(p, model) for p in prompts])[None].expand(2, -1, -1, -1)
    with torch.no_grad():
        dense = clip_velocity(model, torch.stack([x, x.flip(1)]), torch.tensor(timesteps), text)
    for n, clip in enumerate((x, x.flip(1))):
        tick = model.forward_tick(_gang(clip, timesteps[n], prompts), kv=lambda ref, layer: None)
        assert torch.allclose(dense[n], torch.cat(tick.velocity, dim=1), atol=1e-5)
    # Causal: changing the last block leaves the earlier blocks' velocities alone.
    y = x.clone()
    y[:, 9:] = 0
    with torch.no_grad():
        one = clip_velocity(model, x[None], torch.tensor(timesteps[:1]), text[:1])
        other = clip_velocity(model, y[None], torch.tensor(timesteps[:1]), text[:1])
    assert torch.equal(other[0, :, :9], one[0, :, :9]) and not torch.allclose(other[0, :, 9:], one[0, :, 9:])


def test_exact_posterior_and_ode_end_on_the_candidate_the_noise_carries() -> None:
    cands = candidates(0.5)
    assert cands.shape == (36, 3 * SIZE * SIZE)
    g = torch.Generator().manual_seed(0)
    x = 0.7 * cands[[3, 20]] + 0.3 * torch.randn(2, cands.shape[1], generator=g, dtype=torch.float64)
    w, _ = posterior(x, 0.3, cands)
    assert w.argmax(-1).tolist() == [3, 20] and torch.allclose(w.sum(-1), torch.ones(2, dtype=torch.float64))
    assert ode_pick(x, 0.3, cands).tolist() == [3, 20]
    _, blur = posterior(torch.randn(1, cands.shape[1], dtype=torch.float64), 1.0, cands)
    assert torch.allclose(blur[0], cands.mean(0))  # at sigma 1 the posterior mean is the average: a blur
    picks, inputs = exact_chain(torch.randn(300, len(SIGMAS), cands.shape[1], generator=g), cands)
    assert inputs.shape == (300, len(SIGMAS), cands.shape[1])
    assert len(set(picks[:, 0].tolist())) > 30  # from pure noise the ODE reaches (nearly) every candidate
    assert float((picks[:, -1] == picks[:, 1]).float().mean()) > 0.9  # once chosen, re-noising keeps it


def test_examples_are_the_samplers_inputs_with_exact_targets() -> None:
    model = toy_model()
    ex = make_examples(model, random.Random(1), torch.Generator().manual_seed(1), 6, 4)
    assert ex.inputs.shape == ex.targets.shape == (6, 3, 12, SIZE, SIZE)
    assert set(ex.sigma.unique().tolist()) <= {0.0, *SIGMAS}
    for i in range(6):
        for b in range(4):
            f = slice(3 * b, 3 * b + 3)
            if ex.sigma[i, b] == 0 and ex.started[i, b]:
                assert torch.equal(ex.inputs[i, :, f], ex.targets[i, :, f])  # clean context is its own target
        # targets are renderings of the world: every channel is a ball or empty
        assert torch.all((ex.targets[i] == -1).all(dim=(2, 3)) | ball_present(ex.targets[i]).T)
    loss = x0_loss(model, ex)
    assert math.isfinite(float(loss.detach())) and float(loss.detach()) > 0


def test_stage_patterns_of_the_two_variants() -> None:
    rng = random.Random(0)
    seq = [stage_pattern(rng, 6, VARIANTS["sequential"]) for _ in range(200)]
    for p in seq:  # sequential: at most one block denoising, everything before it committed
        noisy = [b for b, s in enumerate(p) if s is not None and s < len(SIGMAS)]
        assert len(noisy) <= 1 and all(s == len(SIGMAS) for s in p[: noisy[0] if noisy else 0])
    cas = [stage_pattern(rng, 6, VARIANTS["cascade"]) for _ in range(200)]
    assert any(sum(s is not None and s < len(SIGMAS) for s in p) >= 3 for p in cas)  # several in flight


def test_shipped_weights_load_as_the_toy_preset() -> None:
    for path, limit in ((WEIGHTS, 5_000_000), (SEQUENTIAL_WEIGHTS, 2_600_000)):
        assert path.is_file() and path.stat().st_size < limit
        model = load_model(path)
        assert model.config == get_config("toy")
        assert all(torch.isfinite(p).all() for p in model.parameters())
        sampler = load_sampler(path)  # trained for shift 1: sigmas 1, 0.75, 0.5, 0.25 (docs/quality.md)
        assert sampler is not None and sampler.shift == 1.0
        assert [sampler.sigma(t) for t in (1000, 750, 500, 250)] == [1.0, 0.75, 0.5, 0.25]


def test_training_runs_a_few_steps_of_every_variant_and_saves(tmp_path: Path) -> None:
    model, st = train_variant("sequential", steps=2, batch=2, blocks=2, progress=False)
    assert len(st.losses) == 2 and all(math.isfinite(x) for x in st.losses) and not model.training
    for variant in VARIANTS:
        out = tmp_path / f"{variant}.safetensors"
        assert main(["--variant", variant, "--steps", "2", "--batch", "2", "--blocks", "3", "--out", str(out),
                     "--plot", str(tmp_path / "loss.png"), "--no-progress"]) == 0
        assert load_model(out).config.name == "toy"
        saved = load_sampler(out)
        assert saved is not None and saved.shift == 1.0  # the sampler it was trained for travels with it
    assert (tmp_path / "loss.png").is_file()


def test_training_rejects_bad_counts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--steps", "0"])
    assert exc.value.code == 2 and "--steps must be a positive integer, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--out", "x.safetensors"])
    assert exc.value.code == 2 and "--variant cascade or --variant sequential" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--device", "nonsense"])
    assert exc.value.code == 2 and "`--device` must be cpu, cuda or cuda:N" in capsys.readouterr().err


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
