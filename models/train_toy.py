"""Train the toy block-causal model on the bouncing-balls world (models/toy_world.py); rerun with

    python -m models.train_toy --steps 4200                # the shipped weights: 23 min on one CPU thread
    python -m models.train_toy --steps 3 --out /tmp/t.safetensors --no-plot   # a smoke run

Latent = pixels: a block is (3, 3, 16, 16) in [-1, 1]. The prompt is not used: the cross-attention output
projections are zero and frozen, so every prompt gives the same video.

Sampler: the weights are trained for (and saved with, see ``models.checkpoints.load_sampler``) shift 1,
so the default steps 1000/750/500/250 are sigmas 1, 0.75, 0.5, 0.25. The Wan presets' shift 5 (sigmas 1,
0.9375, 0.833, 0.625) suits *distilled* students, whose first x0 prediction is already a sample; this
model is a plain flow-matching model, whose x0 prediction from a very noisy input is the blurred average
of what the input allows, so it needs the last step at a lower sigma to draw sharp balls.

Objective (flow matching with one noise level per block, diffusion-forcing style, in the exact attention
pattern the executors run): a training clip is 4 blocks; every block b gets its own sigma_b, its input is
``(1 - sigma_b) * x0_b + sigma_b * eps_b`` at timestep ``1000 * sigma_b``, and all blocks go through ONE
joint ``forward_tick`` in which block b reads the same-tick K/V of every earlier block (the causal gang of
a cascade tick; a block at sigma 0 is a cache pass, i.e. committed clean context). The loss is the MSE of
the predicted velocity against ``eps - x0`` on the blocks with sigma > 0. The per-block sigmas come from
  - 60%: a real schedule's tick: a random lag L in 1..S and tick n; block b sits at stage n - b*L with the
    sampler's sigma for that stage (the cache stage and committed blocks at 0); blocks not started yet are
    left out;
  - 40%: independent levels: half from that table (cache level included), half ``shift(u)``, u uniform.
Adam (lr 1e-3, 100-step warm-up, cosine decay to 5%), batch 4 clips, gradient clip 1.0; the weights saved
are an EMA (decay 0.995) of the trained ones. Fresh clips every step (seeded by the step), so no epochs.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

from models.checkpoints import save_model
from models.config import get_config
from models.dit import CausalWanDiT, TaskInput
from models.prompts import text_embedding
from models.sampler import FlowMatchSampler
from models.toy_world import make_batch

WEIGHTS = Path(__file__).parent / "weights" / "toy.safetensors"
STEPS = (1000, 750, 500, 250)  # the default schedule's nominal denoise steps
TOY_SHIFT = 1.0  # the toy's sampler shift: sigmas 1, 0.75, 0.5, 0.25 for STEPS (see the module docstring)
PROMPT = 0
_TICK = CausalWanDiT.forward_tick.__wrapped__  # type: ignore[attr-defined]  # forward_tick without no_grad


def toy_model(seed: int = 0) -> CausalWanDiT:
    """A fresh toy model whose prompt path is switched off (cross-attention output zero and frozen)."""
    model = CausalWanDiT(get_config("toy"), seed=seed)
    with torch.no_grad():
        for blk in model.blocks:
            blk.cross_attn.o.weight.zero_()
            blk.cross_attn.o.bias.zero_()
    for name, p in model.named_parameters():
        if name.startswith("text_embedding") or ".cross_attn." in name or ".norm3." in name:
            p.requires_grad_(False)
    return model


def sample_sigmas(rng: random.Random, blocks: int, table: list[float], shift: float) -> list[float | None]:
    """Per-block sigmas for one clip (None: block not started, left out); see the module docstring."""
    stages = len(table)  # denoise stages + the cache stage (sigma 0)
    if rng.random() < 0.6:
        lag = rng.randint(1, stages)
        tick = rng.randint(0, (blocks - 1) * lag + stages - 1)
        out: list[float | None] = []
        for b in range(blocks):
            s = tick - b * lag
            out.append(None if s < 0 else table[min(s, stages - 1)])
        return out
    res: list[float | None] = []
    for _ in range(blocks):
        if rng.random() < 0.5:
            res.append(rng.choice(table))
        else:
            u = rng.random()
            res.append(shift * u / (1 + (shift - 1) * u))
    return res


def training_loss(model: CausalWanDiT, x0: Tensor, sigmas: list[list[float | None]], gen: torch.Generator) -> Tensor:
    """Velocity MSE of one joint tick over clips x0 (N, 3, T, H, W) with per-clip, per-block sigmas."""
    cfg = model.config
    fpb = cfg.frames_per_block
    tasks, targets = [], []
    for c in range(x0.shape[0]):
        present: list[tuple[int, int]] = []
        for b, sigma in enumerate(sigmas[c]):
            if sigma is None:
                continue
            clean = x0[c, :, b * fpb:(b + 1) * fpb]
            eps = torch.randn(clean.shape, generator=gen)
            ref = (c * 64 + b, 0)  # block labels only need to be distinct within the tick
            tasks.append(TaskInput(ref=ref, latent=(1 - sigma) * clean + sigma * eps, timestep=1000.0 * sigma,
                                   frame_offset=b * fpb, prompt=PROMPT, reads=list(present)))
            targets.append(eps - clean if sigma > 0 else None)
            present.append(ref)
    out = _TICK(model, tasks, kv=lambda ref, layer: None)
    losses = [((v - t) ** 2).mean() for v, t in zip(out.velocity, targets, strict=True) if t is not None]
    return torch.stack(losses).mean() if losses else out.velocity[0].sum() * 0


def train(steps: int, batch: int = 4, blocks: int = 6, lr: float = 1e-3, seed: int = 0,
          max_minutes: float | None = None, progress: bool = True,
          init: str | Path | None = None, shift: float = TOY_SHIFT) -> tuple[CausalWanDiT, list[float], float]:
    """Train; returns (EMA model, per-step losses, wall seconds). Stops early past `max_minutes`.
    `init` continues from saved toy weights (data seeds then differ from the first run's through `seed`)."""
    torch.manual_seed(seed)
    model = toy_model(seed)
    if init is not None:
        from models.checkpoints import load_model

        model.load_state_dict(load_model(init).float().state_dict())
    model.register_prompt(PROMPT, text_embedding("", model.config))
    ema = toy_model(seed)
    ema.load_state_dict(model.state_dict())
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    warm = min(100, max(1, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(i / steps, 1)))))
    sampler = FlowMatchSampler(shift=shift)
    table = [sampler.sigma(t) for t in STEPS] + [0.0]
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="train toy", unit="step", file=sys.stderr, dynamic_ncols=True)
    t0 = time.perf_counter()
    for step in range(steps):
        x0 = make_batch([seed * 1_000_003 + step * batch + i for i in range(batch)], blocks * model.config.frames_per_block)
        sig = [sample_sigmas(rng, blocks, table, sampler.shift) for _ in range(batch)]
        loss = training_loss(model, x0, sig, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(0.995, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
        losses.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        if max_minutes is not None and time.perf_counter() - t0 > 60 * max_minutes:
            break
    if bar is not None:
        bar.close()
    return ema.eval(), losses, time.perf_counter() - t0


def plot_losses(losses: list[float], path: str | Path, wall_s: float) -> None:
    """Loss per step and its 50-step running mean, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=120)
    ax.plot(losses, lw=0.5, alpha=0.4, label="per step")
    k = 50
    if len(losses) >= k:
        run = [sum(losses[i - k:i]) / k for i in range(k, len(losses) + 1)]
        ax.plot(range(k - 1, len(losses)), run, lw=1.5, label=f"{k}-step mean")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("velocity MSE")
    ax.set_title(f"toy model training ({len(losses)} steps, {wall_s / 60:.1f} min, "
                 f"{torch.get_num_threads()} CPU thread(s))")
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.train_toy", description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps (default %(default)s)")
    p.add_argument("--batch", type=int, default=4, help="clips per step (default %(default)s)")
    p.add_argument("--blocks", type=int, default=4, help="blocks per clip (default %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seeds the data, noise and init (default 0)")
    p.add_argument("--init", default=None, help="continue from these toy weights (.safetensors)")
    p.add_argument("--shift", type=float, default=TOY_SHIFT, help="sampler shift trained for (default %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after this long")
    p.add_argument("--out", default=str(WEIGHTS), help="weights path (.safetensors; config .json beside it)")
    p.add_argument("--plot", default="docs/img/toy_loss.png", help="loss-curve picture")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or args.blocks < 1:
        p.error("--steps, --batch and --blocks must be positive")
    torch.set_num_threads(args.threads)
    model, losses, wall = train(args.steps, args.batch, args.blocks, args.lr, args.seed, args.max_minutes,
                                progress=not args.no_progress, init=args.init, shift=args.shift)
    path = save_model(model, args.out, sampler={"shift": args.shift})
    if not args.no_plot:
        plot_losses(losses, args.plot, wall)
    tail = losses[-100:]
    print(f"trained {len(losses)} steps in {wall:.0f} s; final loss (mean of last {len(tail)}) "
          f"{sum(tail) / len(tail):.4f}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
