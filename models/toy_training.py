"""The toy model's training objectives: a flow-matching teacher, its rollouts, and a few-step student.

`models/train_toy.py` runs the three stages; this module holds what they compute.

**Why two models.** The sampler of Self-Forcing, CausVid and this project (`models.sampler`) re-noises
the x0 prediction with *fresh* noise after every step. A plain flow-matching model predicts the
posterior mean of x0, a blurred average wherever the noisy input leaves the answer open, and with fresh
noise at every step nothing sharper carries over: from pure noise it draws faint, averaged balls that
fade from block to block. A few-step student must instead map each input to one *sample*. The published
models get there by distilling a many-step teacher, and so does the toy:

1. **Teacher** (`teacher_loss`): flow matching with one noise level per block (diffusion forcing). Per
   clip, the blocks' sigmas follow a real cascade tick in `TICK_SHARE` of the clips (a random lag 1..S and
   tick: block b at stage ``n - b * lag`` with the sampler's sigma for that stage, 0 for the cache stage
   and finished blocks, blocks not started left out) and are independent in the rest (half from that
   table, half uniform). The loss is the velocity MSE (target ``eps - x0``) on the started noisy blocks.
   Sampled with a many-step Euler ODE, it draws sharp balls.
2. **Rollouts** (`ode_videos`): the teacher generates videos block by block *through the student's
   sampler*, with an exact ODE solve inside every step. Stage k's input at ``SIGMAS[k]`` goes down an Euler
   ODE to sigma 0 (a grid through `SIGMAS`, `substeps` steps per interval); that endpoint is stage k's
   target and, re-noised with the sampler's own noise ``noise(seed, b, k + 1)``, stage k + 1's input;
   stage 0 starts from ``noise(seed, b, 0)``. The last endpoint is the committed block, whose cache-pass
   (timestep 0) K/V the later blocks read, as in a sequential schedule.
3. **Student** (`student_loss`), initialised from the teacher: from each stage's input, regress that
   stage's ODE endpoint (``x0 = x - sigma * v``, MSE). Noise and endpoint are paired deterministically by
   the ODE, so the target is one sample, not a mean (CausVid's and Self-Forcing's "ODE initialisation");
   and the inputs are exactly what the sampler feeds the student, re-noised endpoints included. The
   blocks' stages follow the same cascade-tick / independent mix as the teacher's (finished blocks as
   committed context), so the student sees the noisy-context reads of every lag.

Both stages run whole clips through `clip_velocity`, a dense form of one *causal gang* tick: every block
reads the same-pass K/V of every block before it. A test checks it against `CausalWanDiT.forward_tick`.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from models.config import get_config
from models.dit import CausalWanDiT, TaskInput
from models.sampler import SELF_FORCING, FlowMatchSampler, noise

__all__ = [
    "PROMPT",
    "SHIFT",
    "SIGMAS",
    "OdeVideos",
    "clip_velocity",
    "ode_grid",
    "ode_videos",
    "stage_pattern",
    "student_loss",
    "teacher_loss",
    "teacher_sigmas",
    "toy_model",
]

PROMPT = 0  # the one prompt key the toy registers (its prompt path is switched off)
SHIFT = 1.0  # the student's sampler shift (saved with the weights)
SIGMAS = tuple(FlowMatchSampler(shift=SHIFT).sigmas(SELF_FORCING["steps"]))  # steps 1000..250: 1, 0.75, 0.5, 0.25
TICK_SHARE = 0.6  # share of clips whose per-block stages follow a cascade tick
VIDEO_SEED0 = 1_000_000  # ODE rollout seeds start here, away from the seeds `cascade quality` samples


def toy_model(seed: int = 0) -> CausalWanDiT:
    """A fresh toy model whose prompt path is switched off (cross-attention output zero and frozen), with
    the empty prompt registered under `PROMPT`."""
    from models.prompts import text_embedding

    model = CausalWanDiT(get_config("toy"), seed=seed)
    with torch.no_grad():
        for blk in model.blocks:
            blk.cross_attn.o.weight.zero_()
            blk.cross_attn.o.bias.zero_()
    for name, p in model.named_parameters():
        if name.startswith("text_embedding") or ".cross_attn." in name or ".norm3." in name:
            p.requires_grad_(False)
    model.register_prompt(PROMPT, text_embedding("", model.config))
    return model


def clip_velocity(model: CausalWanDiT, latents: Tensor, timesteps: Tensor) -> Tensor:
    """Velocity (N, C, T, H, W) of clips (N, C, T, H, W) whose block b is at effective timestep
    ``timesteps[n, b]``: one causal-gang tick per clip, block b reading the same-pass K/V of blocks < b,
    run densely (one SDPA per layer with a block-causal mask) and with autograd."""
    cfg = model.config
    n, _, t, _, _ = latents.shape
    pt = cfg.patch_size[0]
    blocks = t // cfg.frames_per_block
    frames = cfg.frames_per_block // pt  # patch frames per block
    x = model.embed(list(latents.unbind(0)))  # (N * blocks * frames, P, dim)
    e, e0 = model.time_conditioning(timesteps.reshape(-1).to(torch.float64),
                                    torch.full((n * blocks,), frames))
    freqs = model.rope(torch.arange(blocks * frames, dtype=torch.float64).repeat(n))
    length = blocks * frames * cfg.tokens_per_frame
    block_of = torch.arange(length, device=x.device) // (frames * cfg.tokens_per_frame)
    mask = block_of[:, None] >= block_of[None, :]  # (L, L): a token sees its own and earlier blocks
    prompt_kv = model.prompt_kv(PROMPT)
    for layer, blk in enumerate(model.blocks):
        mod = blk.modulate(e0)
        q, k, v = (z.view(n, length, cfg.num_heads, -1).transpose(1, 2) for z in blk.pre_attention(x, mod, freqs))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(n * length, -1)
        x = blk.post_attention(x, y, mod, [(None, prompt_kv[layer])])
    return torch.stack(model.unpatchify(model.head(x, e), [t // pt] * n))


def _per_frame(per_block: Tensor, frames_per_block: int) -> Tensor:
    """(N, B) -> (N, 1, B * F, 1, 1), to broadcast against clips (N, C, T, H, W)."""
    return per_block.repeat_interleave(frames_per_block, 1)[:, None, :, None, None]


def _masked_mse(pred: Tensor, target: Tensor, sigma: Tensor, started: Tensor, frames_per_block: int) -> Tensor:
    """MSE over the blocks (N, B) that have started and are noisy (sigma > 0); 0 when there are none."""
    w = ((_per_frame(sigma, frames_per_block) > 0) & _per_frame(started, frames_per_block)).to(pred.dtype)
    w = w.expand_as(pred)
    return (((pred - target) ** 2) * w).sum() / w.sum().clamp(min=1)


def teacher_sigmas(rng: random.Random, blocks: int) -> list[float | None]:
    """Per-block sigmas of one teacher clip (None: not started); see the module docstring."""
    table = [*SIGMAS, 0.0]
    if rng.random() < TICK_SHARE:
        return [None if k is None else table[k] for k in stage_pattern(rng, blocks)]
    return [rng.choice(table) if rng.random() < 0.5 else rng.random() for _ in range(blocks)]


def teacher_loss(model: CausalWanDiT, x0: Tensor, rng: random.Random, gen: torch.Generator) -> Tensor:
    """Diffusion-forcing flow matching on clean clips x0 (N, C, T, H, W): velocity MSE on the noisy blocks
    that have started."""
    fpb = model.config.frames_per_block
    n, blocks = x0.shape[0], x0.shape[2] // fpb
    draws = [teacher_sigmas(rng, blocks) for _ in range(n)]
    sigma = torch.tensor([[1.0 if x is None else x for x in d] for d in draws])  # (N, B)
    started = torch.tensor([[x is not None for x in d] for d in draws])
    eps = torch.randn(x0.shape, generator=gen)
    v = clip_velocity(model, FlowMatchSampler.renoise(x0, eps, _per_frame(sigma, fpb)), 1000.0 * sigma)
    return _masked_mse(v, eps - x0, sigma, started, fpb)


def ode_grid(substeps: int) -> list[float]:
    """Euler grid from sigma 1 to 0: each interval between consecutive `SIGMAS` (and 0) cut in `substeps`."""
    knots = [*SIGMAS, 0.0]
    grid = [a + (b - a) * i / substeps for a, b in itertools.pairwise(knots) for i in range(substeps)]
    return [*grid, 0.0]


@dataclass
class OdeVideos:
    """Videos for the student: per video and stage k, every block's input at ``SIGMAS[k]`` (``inputs``)
    and the teacher's ODE endpoint from it (``targets``); ``committed`` is what each block committed, the
    context later blocks read. All (C, T, H, W) per video (and stage)."""

    inputs: Tensor  # (V, len(SIGMAS), C, T, H, W)
    targets: Tensor  # (V, len(SIGMAS), C, T, H, W)
    committed: Tensor  # (V, C, T, H, W)

    def __len__(self) -> int:
        return self.inputs.shape[0]

    @staticmethod
    def cat(parts: Sequence[OdeVideos]) -> OdeVideos:
        return OdeVideos(*(torch.cat([getattr(p, f) for p in parts]) for f in ("inputs", "targets", "committed")))


class _Roller:
    """One model's ticks over a batch of videos, with the cache-pass K/V of their committed blocks."""

    def __init__(self, model: CausalWanDiT, videos: int, blocks: int) -> None:
        self.model, self.n, self.blocks = model, videos, blocks
        self.cache: dict[tuple[int, int], list[tuple[Tensor, Tensor]]] = {}

    def velocity(self, x: Tensor, b: int, sigma: float, stage: int = 1) -> Tensor:
        # One task per video; block labels only have to be distinct within the batch: video v's block b is
        # v * blocks + b. Stage 0 is the cache pass, whose K/V the later blocks read.
        fpb = self.model.config.frames_per_block
        tasks = [TaskInput(ref=(v * self.blocks + b, stage), latent=x[v], timestep=1000.0 * sigma,
                           frame_offset=b * fpb, prompt=PROMPT, reads=[(v * self.blocks + j, 0) for j in range(b)])
                 for v in range(self.n)]
        out = self.model.forward_tick(tasks, kv=lambda ref, layer: self.cache[ref][layer])
        if stage == 0:
            self.cache.update({(v * self.blocks + b, 0): out.kv[v] for v in range(self.n)})
        return torch.stack(out.velocity)

    def commit(self, x: Tensor, b: int) -> None:
        self.velocity(x, b, 0.0, stage=0)


@torch.no_grad()
def ode_videos(teacher: CausalWanDiT, seeds: Sequence[int], blocks: int, substeps: int = 3,
               student: CausalWanDiT | None = None) -> OdeVideos:
    """Roll out through the student's sampler, one video per seed, all videos of a call in one tick per
    step; every stage's input goes down the teacher's Euler ODE to sigma 0, its target. Without `student`
    the teacher's endpoints are re-noised into the next stage and committed; with it (on-policy), the
    student's own x0 predictions are, so the inputs and context are the student's video (see the module
    docstring)."""
    cfg = teacher.config
    fpb = cfg.frames_per_block
    shape = (cfg.in_channels, fpb, cfg.latent_height, cfg.latent_width)
    n = len(seeds)
    size = (n, len(SIGMAS), cfg.in_channels, blocks * fpb, cfg.latent_height, cfg.latent_width)
    inputs, targets = torch.empty(size), torch.empty(size)
    committed = torch.empty(size[:1] + size[2:])
    grid = ode_grid(substeps)
    rollers = [_Roller(teacher, n, blocks)] + ([_Roller(student, n, blocks)] if student is not None else [])
    for b in range(blocks):
        frames = slice(b * fpb, (b + 1) * fpb)
        x = torch.stack([noise(s, b, 0, shape) for s in seeds])
        for k, sigma in enumerate(SIGMAS):
            inputs[:, k, :, frames] = x
            end = x
            path = grid[grid.index(sigma):]
            for now, nxt in itertools.pairwise(path):
                end = end + (nxt - now) * rollers[0].velocity(end, b, now)
            targets[:, k, :, frames] = end
            x0 = end if student is None else FlowMatchSampler.x0_from_velocity(x, rollers[1].velocity(x, b, sigma), sigma)
            if k + 1 < len(SIGMAS):  # the sampler's re-noising
                eps = torch.stack([noise(s, b, k + 1, shape) for s in seeds])
                x = FlowMatchSampler.renoise(x0, eps, SIGMAS[k + 1])
        committed[:, :, frames] = x0
        for roller in rollers:
            roller.commit(x0, b)
    return OdeVideos(inputs, targets, committed)


def stage_pattern(rng: random.Random, blocks: int) -> list[int | None]:
    """Per-block stage for one student clip: 0..len(SIGMAS)-1 denoise, len(SIGMAS) the cache pass (clean
    context), None not started (left out). See the module docstring."""
    stages = len(SIGMAS) + 1
    if rng.random() < TICK_SHARE:
        lag = rng.randint(1, stages)
        tick = rng.randint(0, (blocks - 1) * lag + stages - 1)
        return [None if tick < b * lag else min(tick - b * lag, stages - 1) for b in range(blocks)]
    return [rng.randrange(stages) for _ in range(blocks)]


def student_loss(model: CausalWanDiT, videos: OdeVideos, index: Sequence[int], rng: random.Random) -> Tensor:
    """x0 MSE against the teacher's ODE endpoints on the denoising blocks of clips `index` of `videos`."""
    fpb = model.config.frames_per_block
    index = list(index)
    n, blocks = len(index), videos.inputs.shape[3] // fpb
    cache = len(SIGMAS)
    patterns = [stage_pattern(rng, blocks) for _ in range(n)]
    # A block's input and target at its stage; at the cache stage (and for blocks not started, which no
    # earlier block can see and which take no loss) the committed block, as input and target.
    stage = torch.tensor([[cache if k is None else k for k in p] for p in patterns])  # (N, B)
    started = torch.tensor([[k is not None for k in p] for p in patterns])  # (N, B)
    clean = videos.committed[index][:, None]
    pick = stage.repeat_interleave(fpb, 1)[:, None, None, :, None, None].expand(n, 1, *clean.shape[2:])

    def at_stage(table: Tensor) -> Tensor:
        return torch.gather(torch.cat([table[index], clean], dim=1), 1, pick)[:, 0]  # (N, C, T, H, W)

    x_in, target = at_stage(videos.inputs), at_stage(videos.targets)
    sig = torch.tensor([*SIGMAS, 0.0])[stage]  # (N, B)
    v = clip_velocity(model, x_in, 1000.0 * sig)
    return _masked_mse(FlowMatchSampler.x0_from_velocity(x_in, v, _per_frame(sig, fpb)), target, sig, started, fpb)
