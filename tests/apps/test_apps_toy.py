"""Training the toy model (apps/toy): the exact targets and the training forward, the two variants'
stage patterns, a few steps of training and the command's refusals."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch

from apps.toy.cli import main
from apps.toy.targets import (
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
from apps.toy.train import train_variant
from models.checkpoints import load_model, load_sampler
from models.dit import TaskInput
from models.toy_text import ToyTextEncoder
from models.toy_world import SIZE, ball_present, make_clip


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
