"""Train the toy block-causal model on the prompted bouncing-balls world (models/toy_world.py); rerun with

    python -m apps.toy                 # both variants, the shipped weights (see docs/quality.md)
    python -m apps.toy --variant cascade --steps 2 --batch 2 --out /tmp/t.safetensors --no-plot

Latent = pixels: a block is (3, 3, 16, 16) in [-1, 1]. The prompt (colours, slow/fast) reaches the
model through cross-attention; its text encoder is the toy vocabulary (models/toy_text.py).

No teacher: every target is exact (`apps/toy/targets.py`): for a ball that appears in a block, the
candidate the exact probability-flow ODE of the gridded world ends on from each sampler stage's input;
elsewhere the world's true continuation. The model regresses x0 from the inputs the 4-step sampler
actually feeds it (sigmas 1, 0.75, 0.5, 0.25, each re-noising the previous step's target with fresh
noise). One stage per variant, the same budget each (`--steps` steps of `--batch` clips of `--blocks`
blocks):

  cascade     the blocks' stages follow a real cascade tick at a random lag 1..5 in 60% of the clips,
              independent stages in the rest: the shipped `toy.safetensors`;
  sequential  a sequential tick only (lag 5): `toy_sequential.safetensors` (float16, for `cascade quality`).

Adam with a linear warm-up and cosine decay to 5%, gradient clip 1; the weights kept are an EMA of the
trained ones. Both are saved with the sampler they were trained for: shift 1, so the default steps
1000/750/500/250 are exactly those sigmas.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from apps.progress import bar as progress_bar
from apps.toy.targets import VARIANTS, make_examples, toy_model, x0_loss
from models.dit import CausalWanDiT
from models.weights import TOY_SEQUENTIAL_WEIGHTS, TOY_WEIGHTS

OUTS = {"cascade": TOY_WEIGHTS, "sequential": TOY_SEQUENTIAL_WEIGHTS}  # where each variant ships


@dataclass
class Stage:
    """One training stage's record: per-step losses and wall seconds."""

    name: str
    losses: list[float] = field(default_factory=list)
    wall_s: float = 0.0


def fit(model: CausalWanDiT, loss_fn: Callable[[int], Tensor], steps: int, lr: float, ema_decay: float,
        stage: Stage, progress: bool = True) -> CausalWanDiT:
    """Adam on `loss_fn(step)` for `steps` steps; returns the EMA of the weights (eval mode)."""
    ema = toy_model()
    ema.load_state_dict(model.state_dict())
    ema.to(model.device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    warm = min(200, max(1, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(i / steps, 1)))))
    bar = progress_bar(steps, f"train {stage.name}", "step", on=progress)
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # torch: Tensor.backward is not annotated
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
        stage.losses.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{sum(stage.losses[-50:]) / len(stage.losses[-50:]):.4f}")
    if bar is not None:
        bar.close()
    stage.wall_s = time.perf_counter() - t0
    return ema.cpu().eval()


def train_variant(variant: str, steps: int, batch: int = 16, blocks: int = 3, lr: float = 3e-3, seed: int = 0,
                  device: str = "cpu", progress: bool = True,
                  init: CausalWanDiT | None = None) -> tuple[CausalWanDiT, Stage]:
    """One variant (`targets.VARIANTS`): fresh exact-target clips every step (seeded by `seed`),
    from a fresh model or from `init`'s weights (a second round)."""
    torch.manual_seed(seed)
    model = toy_model(seed)
    if init is not None:
        model.load_state_dict(init.state_dict())
    model = model.to(device)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    stage = Stage(variant)
    lags = VARIANTS[variant]

    def loss(step: int) -> Tensor:
        ex = make_examples(model, rng, gen, batch, blocks, lags)
        if device != "cpu":
            ex = type(ex)(*(t.to(device) for t in (ex.inputs, ex.targets, ex.sigma, ex.started, ex.text)))
        return x0_loss(model, ex)

    return fit(model, loss, steps, lr, 0.998, stage, progress), stage


def plot_losses(stages: list[Stage], path: str | Path, settings: str = "") -> None:
    """Every trained variant's x0 MSE per step and its 50-step running mean, log scale, one panel; the title
    says what was trained (``settings``: batch, blocks, learning rate, seed), the legend sits below the plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.9), dpi=120)
    for st in stages:
        losses = st.losses
        line = ax.plot(losses, lw=0.4, alpha=0.3)[0]
        k = 50
        if len(losses) >= k:
            run = [sum(losses[i - k:i]) / k for i in range(k, len(losses) + 1)]
            ax.plot(range(k - 1, len(losses)), run, lw=1.5, color=line.get_color(),
                    label=f"{st.name}: {len(losses)} steps, {st.wall_s / 60:.1f} min")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("x0 MSE vs the exact target\n(pixels in [-1, 1], log scale)", fontsize=8)
    if ax.get_legend_handles_labels()[0]:  # a run shorter than the running mean has no labelled line
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False,
                  title="50-step running mean (faint: every step)", title_fontsize=7)
    variants = ", ".join(st.name for st in stages)
    ax.set_title(f"python -m apps.toy: {variants}{'; ' + settings if settings else ''}; "
                 f"{torch.get_num_threads()} CPU thread(s) per run", fontsize=8, wrap=True)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
