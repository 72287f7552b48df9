"""The toy model's training objective: exact few-step targets from the gridded world, no teacher.

`models/train_toy.py` runs it; this module holds what it computes. docs/quality.md has the diagnosis.

**Why not a posterior mean.** The sampler of Self-Forcing, CausVid and this project (`models.sampler`)
re-noises each step's x0 prediction with *fresh* noise. A model that regresses clean clips predicts the
posterior mean of x0; from pure noise (step 1, sigma 1) that is the average of every clip the prompt
allows, a blur, and only what the blur keeps survives the fresh noise. A few-step generator must map its
step-1 noise to one *sample*. Later blocks are different: the world is deterministic, so given clean
context a block's content is fixed, and there the posterior mean is already sharp, if the model reads its
context.

**Exact targets.** The world is gridded (`models/toy_world.py`): a ball that appears (at block 0, or when
a switch adds it) takes one of 36 start states, and balls live in separate colour channels, so the
posterior of a noisy block factorises per channel, and per channel it is a softmax over the 36 candidate
renderings (`posterior`). That makes the probability-flow ODE from noise to a sample exactly solvable
(`ode_pick`: Euler on the exact velocity ``(x - E[x0 | x]) / sigma``; it ends on one candidate):

- a *fresh* channel (a ball that appears in this block) follows the sampler's chain: stage 0's input is
  the block's noise ``eps_0``; stage k's target is the candidate the exact ODE from stage k's input ends
  on; stage k + 1's input re-noises that target with the sampler's fresh noise ``eps_{k+1}`` (`exact_chain`).
  The last target is the committed start state, and the world rolls on from it (`toy_world.roll`).
- every other channel (a ball that continues, or an absent one) is determined by the committed past: its
  target at every stage is the true continuation, and stage k's input re-noises it.

So every (input, target) pair is what an exact few-step sampler would see and give: noise-to-sample
pairs for appearing balls (exact ODE distillation, with no learned teacher) and the true continuation
elsewhere. The model (`CausalWanDiT`, preset ``toy``) regresses x0 (``x - sigma * v``, MSE) on the noisy
blocks, the prompt through cross-attention (`models/toy_text.py`).

**Clips.** 6 blocks; a random prompt (colours, speed), and in half of the clips a switch to another at a
random block >= 1 (in 30% of those, with every pre-switch block committed, those blocks are encoded under
the new prompt: the recache baseline's context). The blocks' stages follow `stage_pattern`: a real
cascade tick at a random lag (`lags`) in `TICK_SHARE` of the clips and independent stages in the rest
(variant ``cascade``), or a sequential tick only (variant ``sequential``, lag S = 5).

Whole clips run through `clip_velocity`, a dense form of one *causal gang* tick: every block reads the
same-pass K/V of every block before it. A test checks it against `CausalWanDiT.forward_tick`.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from models.config import get_config
from models.dit import CausalWanDiT
from models.sampler import SELF_FORCING, FlowMatchSampler
from models.toy_text import toy_text_embedding
from models.toy_world import (
    COLOURS,
    FRAMES_PER_BLOCK,
    SPEEDS,
    START_STATES,
    appearances,
    parse_prompt,
    prompt_per_frame,
    render,
    roll,
    simulate,
    start_state,
)

__all__ = [
    "SHIFT",
    "SIGMAS",
    "VARIANTS",
    "Examples",
    "clip_velocity",
    "context_diagnosis",
    "exact_chain",
    "make_examples",
    "ode_pick",
    "posterior",
    "random_timeline",
    "stage_pattern",
    "text_rows",
    "toy_model",
    "x0_loss",
]

SHIFT = 1.0  # the sampler shift the toy is trained for (saved with the weights)
SIGMAS = tuple(FlowMatchSampler(shift=SHIFT).sigmas(SELF_FORCING["steps"]))  # steps 1000..250: 1, 0.75, 0.5, 0.25
STAGES = len(SIGMAS) + 1  # the denoise stages and the cache pass
TICK_SHARE = 0.6  # cascade variant: share of clips whose per-block stages follow a cascade tick
SWITCH_SHARE = 0.5  # share of clips with a prompt switch
RECACHE_SHARE = 0.3  # of those, share whose committed pre-switch blocks are encoded under the new prompt
ODE_STEPS = 40  # Euler steps of one exact ODE solve (to sigma 0)
BLUR_SHARE = 0.5  # fresh channels whose stage-1 input re-noises a partly blurred stage-0 output
VARIANTS = {"cascade": tuple(range(1, STAGES + 1)), "sequential": (STAGES,)}  # lags each variant trains on


def toy_model(seed: int = 0) -> CausalWanDiT:
    """A fresh toy model (preset ``toy``)."""
    return CausalWanDiT(get_config("toy"), seed=seed)


def text_rows(text: str, model: CausalWanDiT) -> Tensor:
    """(text_len, text_dim): the toy encoder's row for `text`, zero-padded as `register_prompt` pads."""
    cfg = model.config
    emb = toy_text_embedding(text, cfg.text_dim)
    return torch.cat([emb, emb.new_zeros(cfg.text_len - emb.shape[0], cfg.text_dim)])


def clip_velocity(model: CausalWanDiT, latents: Tensor, timesteps: Tensor, text: Tensor) -> Tensor:
    """Velocity (N, C, T, H, W) of clips (N, C, T, H, W) whose block b is at effective timestep
    ``timesteps[n, b]`` under prompt rows ``text[n, b]`` ((N, B, text_len, text_dim)): one causal-gang tick
    per clip, block b reading the same-pass K/V of blocks < b, run densely (one SDPA per layer with a
    block-causal mask) and with autograd."""
    cfg = model.config
    n, _, t, _, _ = latents.shape
    pt = cfg.patch_size[0]
    blocks = t // cfg.frames_per_block
    frames = cfg.frames_per_block // pt  # patch frames per block
    x = model.embed(list(latents.unbind(0)))  # (N * blocks * frames, P, dim)
    e, e0 = model.time_conditioning(timesteps.reshape(-1).to(torch.float64), torch.full((n * blocks,), frames))
    freqs = model.rope(torch.arange(blocks * frames, dtype=torch.float64).repeat(n))
    length = blocks * frames * cfg.tokens_per_frame
    block_of = torch.arange(length, device=x.device) // (frames * cfg.tokens_per_frame)
    mask = block_of[:, None] >= block_of[None, :]  # (L, L): a token sees its own and earlier blocks
    text_kv = model.text_kv(text.reshape(n * blocks, *text.shape[2:]))  # per layer (N * B, L, H, D): batched
    for layer in range(cfg.num_layers):
        blk = model.block(layer)
        mod = blk.modulate(e0)
        q, k, v = (z.view(n, length, cfg.num_heads, -1).transpose(1, 2) for z in blk.pre_attention(x, mod, freqs))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(n * length, -1)
        x = blk.post_attention(x, y, mod, text_kv[layer])
    return torch.stack(model.unpatchify(model.head(x, e), [t // pt] * n))


# --- the exact posterior and ODE of a fresh channel ------------------------------------------------------
@functools.cache
def candidates(speed: float) -> Tensor:
    """(36, F * H * W) float64: one channel of a block in which a ball appears, per start state."""
    out = []
    for i in range(len(START_STATES)):
        p, v = start_state(i, speed)
        pos, _ = simulate(p[None], v[None], FRAMES_PER_BLOCK)
        out.append(render(pos)[0].double().flatten())  # channel 0 holds the ball
    return torch.stack(out)


def posterior(x: Tensor, sigma: float, cands: Tensor) -> tuple[Tensor, Tensor]:
    """Exact posterior over the candidates of noisy channels x (N, D) at `sigma` (x = (1-s) c + s eps, c
    uniform over `cands` (M, D)): weights (N, M) and the posterior mean E[c | x] (N, D)."""
    x = x.double()
    a = 1 - sigma
    logits = (a * x @ cands.T - 0.5 * a * a * (cands**2).sum(-1)) / sigma**2
    w = torch.softmax(logits, dim=-1)
    return w, w @ cands


def ode_pick(x: Tensor, sigma: float, cands: Tensor, steps: int = ODE_STEPS) -> Tensor:
    """The candidate index (N,) that the exact probability-flow ODE from x (N, D) at `sigma` ends on:
    Euler on ``dx/ds = (x - E[c | x]) / s`` over a grid dense near `sigma` (where the choice is made)."""
    grid = [sigma * (1 - (j / steps) ** 2) for j in range(steps)]
    x = x.double()
    for now, nxt in itertools.pairwise(grid):
        _, mean = posterior(x, now, cands)
        x = x + (nxt - now) * (x - mean) / now
    w, _ = posterior(x, grid[-1], cands)  # the last step lands on the posterior mean: one candidate
    return w.argmax(-1)


def exact_chain(eps: Tensor, cands: Tensor, blur: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per fresh channel, the candidate index of every sampler stage's target (N, len(SIGMAS)) and every
    stage's input (N, len(SIGMAS), D), from the sampler's noises eps (N, len(SIGMAS), D): stage 0 starts
    from eps_0; stage k + 1's input re-noises stage k's target with eps_{k+1}. With `blur` (N,) in [0, 1],
    stage 1's input re-noises ``blur * mean(cands) + (1 - blur) * target_0`` instead: the step-1 output of
    a model that has not (fully) learnt to pick, whose exact ODE endpoint is then stage 1's target."""
    x = eps[:, 0].double()
    picks, inputs = [], []
    for k, sigma in enumerate(SIGMAS):
        inputs.append(x)
        idx = ode_pick(x, sigma, cands)
        picks.append(idx)
        if k + 1 < len(SIGMAS):
            out = cands[idx]
            if k == 0 and blur is not None:
                out = blur.double()[:, None] * cands.mean(0) + (1 - blur.double()[:, None]) * out
            x = FlowMatchSampler.renoise(out, eps[:, k + 1].double(), SIGMAS[k + 1])
    return torch.stack(picks, 1), torch.stack(inputs, 1).float()


# --- training clips ---------------------------------------------------------------------------------------
def random_prompt(rng: random.Random) -> str:
    colours = [c for c in COLOURS if rng.random() < 0.5] or [rng.choice(COLOURS)]
    return " ".join([*colours, rng.choice(list(SPEEDS))])


def random_timeline(rng: random.Random, blocks: int) -> list[tuple[int, str]]:
    """A random prompt, and with probability `SWITCH_SHARE` a switch to another at a block >= 1."""
    first = random_prompt(rng)
    if blocks < 2 or rng.random() >= SWITCH_SHARE:
        return [(0, first)]
    second = random_prompt(rng)
    while parse_prompt(second) == parse_prompt(first):
        second = random_prompt(rng)
    return [(0, first), (rng.randint(1, blocks - 1), second)]


def stage_pattern(rng: random.Random, blocks: int, lags: Sequence[int] = VARIANTS["cascade"]) -> list[int | None]:
    """Per-block stage of one clip: 0..len(SIGMAS)-1 denoise, len(SIGMAS) the cache pass (clean context),
    None not started. A cascade tick at a random lag from `lags` (always, for a single lag; else in
    `TICK_SHARE` of the clips, independent stages in the rest)."""
    if len(lags) == 1 or rng.random() < TICK_SHARE:
        lag = rng.choice(list(lags))
        tick = rng.randint(0, (blocks - 1) * lag + STAGES - 1)
        return [None if tick < b * lag else min(tick - b * lag, STAGES - 1) for b in range(blocks)]
    return [rng.randrange(STAGES) for _ in range(blocks)]


@dataclass
class Examples:
    """A batch of training clips: every block at its stage's input, its target, its sigma (0: clean
    context), whether it has started, and its prompt rows."""

    inputs: Tensor  # (N, C, T, H, W)
    targets: Tensor  # (N, C, T, H, W)
    sigma: Tensor  # (N, B)
    started: Tensor  # (N, B) bool
    text: Tensor  # (N, B, text_len, text_dim)


def make_examples(model: CausalWanDiT, rng: random.Random, gen: torch.Generator, n: int, blocks: int,
                  lags: Sequence[int] = VARIANTS["cascade"]) -> Examples:
    """`n` clips of `blocks` blocks with exact targets (see the module docstring)."""
    fpb = FRAMES_PER_BLOCK
    frames = blocks * fpb
    cfg = model.config
    shape = (len(SIGMAS), cfg.in_channels, frames, cfg.latent_height, cfg.latent_width)
    timelines = [random_timeline(rng, blocks) for _ in range(n)]
    eps = torch.randn((n, *shape), generator=gen)
    # Every fresh channel of the batch: (clip, ball, block, speed); their chains run batched per speed.
    jobs = []
    for i, tl in enumerate(timelines):
        per_frame = prompt_per_frame(tl, frames)
        jobs += [(i, k, t // fpb, per_frame[t].speed) for k, ts in enumerate(appearances(tl, frames)) for t in ts]
    picks: dict[int, Tensor] = {}
    fresh_inputs: dict[int, Tensor] = {}
    for speed in {j[3] for j in jobs}:
        mine = [j for j, job in enumerate(jobs) if job[3] == speed]
        noise = torch.stack([eps[jobs[j][0], :, jobs[j][1], jobs[j][2] * fpb:(jobs[j][2] + 1) * fpb].flatten(1)
                             for j in mine])
        blur = torch.rand(len(mine), generator=gen) * (torch.rand(len(mine), generator=gen) < BLUR_SHARE)
        for j, p, x in zip(mine, *exact_chain(noise, candidates(speed), blur), strict=True):
            picks[j], fresh_inputs[j] = p, x
    inputs, targets = torch.empty((n, *shape[1:])), torch.empty((n, *shape[1:]))
    sigma, started = torch.zeros(n, blocks), torch.zeros(n, blocks, dtype=torch.bool)
    text = torch.empty(n, blocks, cfg.text_len, cfg.text_dim)
    for i, tl in enumerate(timelines):
        own = [(j, jobs[j]) for j in range(len(jobs)) if jobs[j][0] == i]
        starts = [[int(picks[j][-1]) for j, job in own if job[1] == k] for k in range(3)]
        clean = roll(tl, frames, starts).frames
        stage_targets = clean[None].repeat(len(SIGMAS), 1, 1, 1, 1)  # (stages, C, T, H, W)
        for j, (_, k, b, speed) in own:
            stage_targets[:, k, b * fpb:(b + 1) * fpb] = candidates(speed)[picks[j]].view(-1, fpb, *clean.shape[2:]).float()
        stage_inputs = torch.stack([eps[i, 0]] + [FlowMatchSampler.renoise(stage_targets[s - 1], eps[i, s], SIGMAS[s])
                                                  for s in range(1, len(SIGMAS))])
        for j, (_, k, b, _) in own:
            stage_inputs[:, k, b * fpb:(b + 1) * fpb] = fresh_inputs[j].view(len(SIGMAS), fpb, *clean.shape[2:])
        pattern = stage_pattern(rng, blocks, lags)
        while not any(s is not None and s < len(SIGMAS) for s in pattern):  # at least one noisy block
            pattern = stage_pattern(rng, blocks, lags)
        for b, s in enumerate(pattern):
            f = slice(b * fpb, (b + 1) * fpb)
            if s is not None and s < len(SIGMAS):  # noisy
                inputs[i, :, f], targets[i, :, f], sigma[i, b] = stage_inputs[s, :, f], stage_targets[s, :, f], SIGMAS[s]
            else:
                inputs[i, :, f], targets[i, :, f], sigma[i, b] = clean[:, f], clean[:, f], 0.0
            started[i, b] = s is not None
        prompt_of = [next(text for at, text in reversed(tl) if at <= b) for b in range(blocks)]
        if len(tl) > 1 and all(s == len(SIGMAS) for s in pattern[: tl[1][0]]) and rng.random() < RECACHE_SHARE:
            prompt_of = [tl[1][1] if b < tl[1][0] else p for b, p in enumerate(prompt_of)]  # the recache baseline
        text[i] = torch.stack([text_rows(p, model) for p in prompt_of])
    return Examples(inputs, targets, sigma, started, text)


def _per_frame(per_block: Tensor, frames_per_block: int) -> Tensor:
    """(N, B) -> (N, 1, B * F, 1, 1), to broadcast against clips (N, C, T, H, W)."""
    return per_block.repeat_interleave(frames_per_block, 1)[:, None, :, None, None]


def x0_loss(model: CausalWanDiT, ex: Examples) -> Tensor:
    """x0 MSE (``x - sigma * v`` against the target) over the started noisy blocks."""
    fpb = model.config.frames_per_block
    last = int(ex.started.any(0).nonzero().max()) + 1  # blocks no clip has started take no part
    sig = ex.sigma[:, :last]
    x = ex.inputs[:, :, : last * fpb]
    v = clip_velocity(model, x, 1000.0 * sig, ex.text[:, :last])
    pred = FlowMatchSampler.x0_from_velocity(x, v, _per_frame(sig, fpb))
    w = ((_per_frame(sig, fpb) > 0) & _per_frame(ex.started[:, :last], fpb)).to(pred.dtype).expand_as(pred)
    return (((pred - ex.targets[:, :, : last * fpb]) ** 2) * w).sum() / w.sum().clamp(min=1)


@torch.no_grad()
def context_diagnosis(model: CausalWanDiT, clips: Sequence[Tensor], prompts: Sequence[str],
                      seed: int = 0) -> list[list[tuple[float, float]]]:
    """Per sigma (rows, `SIGMAS`) and block b >= 0 (columns), the model's x0 MSE on block b of clean clips
    (C, T, H, W) of `prompts` re-noised at that sigma: (with the real clean context blocks < b, with none)."""
    x0 = torch.stack(list(clips))
    n, _, t = x0.shape[:3]
    fpb = model.config.frames_per_block
    rows = torch.stack([text_rows(p, model) for p in prompts])  # (N, L, D)
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in SIGMAS:
        row = []
        for b in range(t // fpb):
            f = slice(b * fpb, (b + 1) * fpb)
            xb = FlowMatchSampler.renoise(x0[:, :, f], torch.randn(x0[:, :, f].shape, generator=g), s)
            inp = torch.cat([x0[:, :, : b * fpb], xb], 2)
            ts = torch.tensor([[0.0] * b + [1000.0 * s]] * n)
            v = clip_velocity(model, inp, ts, rows[:, None].expand(n, b + 1, *rows.shape[1:]))[:, :, b * fpb:]
            with_ctx = float(((FlowMatchSampler.x0_from_velocity(xb, v, s) - x0[:, :, f]) ** 2).mean())
            v = clip_velocity(model, xb, torch.tensor([[1000.0 * s]] * n), rows[:, None])
            alone = float(((FlowMatchSampler.x0_from_velocity(xb, v, s) - x0[:, :, f]) ** 2).mean())
            row.append((with_ctx, alone))
        out.append(row)
    return out
