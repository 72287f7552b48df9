"""The toy world's ground truth, the toy decoder, the shipped weights and the training script."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from cascade_sched.errors import CheckpointError
from models import get_config
from models.checkpoints import load_model, load_sampler, save_model
from models.decode import PixelDecoder
from models.dit import TaskInput
from models.sampler import noise
from models.toy_training import (
    PROMPT,
    SIGMAS,
    clip_velocity,
    ode_grid,
    ode_videos,
    stage_pattern,
    student_loss,
    teacher_loss,
    teacher_sigmas,
    toy_model,
)
from models.toy_world import RADIUS, SIZE, ball_present, find_balls, make_clip, render, simulate
from models.train_toy import WEIGHTS, main, rollouts, train_student, train_teacher


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


def _gang(x: torch.Tensor, timesteps: list[float]) -> list[TaskInput]:
    """One clip (C, T, H, W) as a causal gang tick: block b reads the same-tick K/V of blocks < b."""
    return [TaskInput(ref=(b, 1), latent=x[:, 3 * b:3 * b + 3], timestep=t, frame_offset=3 * b, prompt=PROMPT,
                      reads=[(j, 1) for j in range(b)]) for b, t in enumerate(timesteps)]


def test_training_forward_is_the_causal_gang_tick() -> None:
    model = toy_model(seed=3)
    x = make_clip(5, frames=12).frames + 0.3 * torch.randn(3, 12, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    timesteps = [[1000.0, 0.0, 500.0, 250.0], [0.0, 0.0, 750.0, 1000.0]]
    with torch.no_grad():
        dense = clip_velocity(model, torch.stack([x, x.flip(1)]), torch.tensor(timesteps))
    for n, clip in enumerate((x, x.flip(1))):
        tick = model.forward_tick(_gang(clip, timesteps[n]), kv=lambda ref, layer: None)
        assert torch.allclose(dense[n], torch.cat(tick.velocity, dim=1), atol=1e-5)
    # Causal: changing the last block leaves the earlier blocks' velocities alone.
    y = x.clone()
    y[:, 9:] = 0
    with torch.no_grad():
        one = clip_velocity(model, x[None], torch.tensor(timesteps[:1]))
        other = clip_velocity(model, y[None], torch.tensor(timesteps[:1]))
    assert torch.equal(other[0, :, :9], one[0, :, :9]) and not torch.allclose(other[0, :, 9:], one[0, :, 9:])


def test_ode_grid_passes_through_the_student_sigmas() -> None:
    grid = ode_grid(3)
    assert grid[0] == 1.0 and grid[-1] == 0.0 and len(grid) == 3 * len(SIGMAS) + 1
    assert all(a > b for a, b in itertools.pairwise(grid))
    assert [grid[3 * k] for k in range(len(SIGMAS))] == list(SIGMAS)


def test_teacher_rollout_follows_the_sampler_and_reads_the_committed_blocks() -> None:
    teacher = toy_model(seed=1).eval()
    videos = ode_videos(teacher, [11, 12], blocks=2, substeps=1)
    assert videos.inputs.shape == videos.targets.shape == (2, len(SIGMAS), 3, 6, SIZE, SIZE) and len(videos) == 2
    assert torch.equal(videos.committed, videos.targets[:, -1])  # the teacher commits its own endpoints
    shape = (3, 3, SIZE, SIZE)
    for b in range(2):
        frames = slice(3 * b, 3 * b + 3)
        assert torch.equal(videos.inputs[1, 0, :, frames], noise(12, b, 0, shape))  # starts at its noise
        for k in range(1, len(SIGMAS)):  # then the sampler's re-noising of the previous stage's endpoint
            sigma = SIGMAS[k]
            want = (1 - sigma) * videos.targets[1, k - 1, :, frames] + sigma * noise(12, b, k, shape)
            assert torch.allclose(videos.inputs[1, k, :, frames], want, atol=1e-6)
    # Block 1's stage 2 again, densely: its ODE from the recorded input, reading block 0's committed
    # endpoint at timestep 0 (the cache pass).
    grid = ode_grid(1)[2:]
    x = videos.inputs[1, 2, :, 3:]
    with torch.no_grad():
        for sigma, nxt in itertools.pairwise(grid):
            v = clip_velocity(teacher, torch.cat([videos.committed[1, :, :3], x], dim=1)[None],
                              torch.tensor([[0.0, 1000.0 * sigma]]))
            x = x + (nxt - sigma) * v[0, :, 3:]
    assert torch.allclose(x, videos.targets[1, 2, :, 3:], atol=1e-4)


def test_on_policy_rollout_is_the_students_own_video_with_teacher_targets() -> None:
    from cascade_sched import CascadeSpec, build_schedule
    from executors.base import RunOptions
    from executors.reference import ReferenceExecutor
    from models.sampler import FlowMatchSampler

    teacher, student = toy_model(seed=1).eval(), toy_model(seed=2).eval()
    videos = ode_videos(teacher, [5], blocks=2, substeps=1, student=student)
    spec = CascadeSpec(num_blocks=2, lag=5, seed=5)  # sequential: what the student streams on its own
    result = ReferenceExecutor().run(build_schedule(spec), student, RunOptions(prompt="", sampler=FlowMatchSampler(shift=1.0)))
    assert torch.allclose(videos.committed[0], torch.cat(result.latents, dim=1), atol=1e-5)
    assert not torch.allclose(videos.targets[0, -1], videos.committed[0], atol=1e-2)  # targets are the teacher's


def test_student_stage_patterns_cover_cascade_ticks_and_clean_context() -> None:
    import random

    rng = random.Random(0)
    draws = [stage_pattern(rng, 6) for _ in range(400)]
    cache = len(SIGMAS)
    assert any(d[0] == cache and d[1] is not None and d[1] < cache for d in draws)  # clean context, noisy block
    assert any(d[-1] is None for d in draws)  # blocks not started are left out
    assert any(all(k is not None and k < cache for k in d) for d in draws)  # all noisy (a lag-1 gang)
    for d in draws:
        assert all(k is None or 0 <= k <= cache for k in d)
        started = [k is not None for k in d]
        assert started == sorted(started, reverse=True)  # not-started blocks only at the end


def test_teacher_sigmas_mix_cascade_ticks_table_levels_and_uniform_levels() -> None:
    import random

    rng = random.Random(1)
    draws = [teacher_sigmas(rng, 4) for _ in range(400)]
    table = {*SIGMAS, 0.0}
    flat = [x for d in draws for x in d]
    assert None in flat and 0.0 in flat  # blocks not started; committed context
    assert any(x is not None and x not in table for x in flat)  # uniform levels between the sampler's
    assert all(x is None or 0.0 <= x <= 1.0 for x in flat)


def test_losses_are_finite_and_the_student_loss_ignores_blocks_not_started() -> None:
    import random

    model = toy_model(seed=2)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.stack([make_clip(s, frames=6).frames for s in range(2)])
    loss = teacher_loss(model, x0, random.Random(0), gen)
    assert math.isfinite(float(loss.detach())) and loss.requires_grad
    videos = ode_videos(model.eval(), [3], blocks=2, substeps=1)
    # Find a pattern with block 1 not started, then check that block 1's data does not enter the loss.
    rng = random.Random(0)
    while True:
        state = rng.getstate()
        first, second = stage_pattern(rng, 2)
        if second is None and first is not None and first < len(SIGMAS):
            break
    rng.setstate(state)
    before = student_loss(model, videos, [0], rng)
    assert float(before.detach()) > 0
    videos.targets[0, :, :, 3:] = 7.0
    videos.inputs[0, :, :, 3:] = -7.0
    videos.committed[0, :, 3:] = 7.0
    rng.setstate(state)
    assert torch.equal(student_loss(model, videos, [0], rng), before)


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
    teacher, st = train_teacher(steps=2, batch=1, blocks=2, progress=False)
    assert len(st.losses) == 2 and all(math.isfinite(x) for x in st.losses) and not teacher.training
    videos, _ = rollouts(teacher, videos=3, blocks=2, substeps=1, chunk=2, progress=False)
    assert len(videos) == 3 and torch.isfinite(videos.committed).all()
    student, st = train_student(teacher, videos, steps=2, batch=2, progress=False)
    assert len(st.losses) == 2 and student.config.name == "toy" and not student.training
    out = tmp_path / "t.safetensors"
    assert main(["--teacher-steps", "2", "--videos", "2", "--student-steps", "2", "--batch", "1", "--blocks", "2",
                 "--out", str(out), "--save-teacher", str(tmp_path / "teacher.safetensors"), "--plot",
                 str(tmp_path / "loss.png"), "--no-progress"]) == 0
    assert (tmp_path / "loss.png").is_file() and (tmp_path / "teacher.safetensors").is_file()
    assert load_model(out).config.name == "toy"
    saved = load_sampler(out)
    assert saved is not None and saved.shift == 1.0  # the sampler it was trained for travels with it
    # Distil again from the saved teacher (stage 1 skipped), with the on-policy stages.
    assert main(["--teacher", str(tmp_path / "teacher.safetensors"), "--videos", "1", "--student-steps", "1",
                 "--on-policy-videos", "1", "--on-policy-steps", "1", "--blocks", "2", "--out", str(out),
                 "--plot", str(tmp_path / "loss2.png"), "--no-progress"]) == 0
    assert (tmp_path / "loss2.png").is_file()


def test_training_rejects_bad_counts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--videos", "0"])
    assert exc.value.code == 2 and "--videos must be a positive integer, got 0" in capsys.readouterr().err


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
