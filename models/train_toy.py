"""Train the toy block-causal model on the prompted bouncing-balls world (models/toy_world.py); rerun with

    python -m models.train_toy                 # both variants, the shipped weights (see docs/quality.md)
    python -m models.train_toy --variant cascade --steps 2 --batch 2 --out /tmp/t.safetensors --no-plot

Latent = pixels: a block is (3, 3, 16, 16) in [-1, 1]. The prompt (colours, slow/fast) reaches the
model through cross-attention; its text encoder is the toy vocabulary (models/toy_text.py).

No teacher: every target is exact (`models/toy_training.py`): for a ball that appears in a block, the
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

import argparse
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from models.checkpoints import load_model, save_model
from models.dit import CausalWanDiT
from models.toy_training import SHIFT, VARIANTS, make_examples, toy_model, x0_loss

WEIGHTS = Path(__file__).parent / "weights" / "toy.safetensors"
SEQUENTIAL_WEIGHTS = Path(__file__).parent / "weights" / "toy_sequential.safetensors"
OUTS = {"cascade": WEIGHTS, "sequential": SEQUENTIAL_WEIGHTS}
# The attention window (blocks, itself included) the toy runs with: its training clips' length (`--blocks`
# default), so every block sees at run time what it saw in training; `cascade generate` and `cascade
# quality` use it for the toy.
WINDOW = 3


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
    bar = _bar(steps, f"train {stage.name}", "step", progress)
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
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


def _bar(total: int, desc: str, unit: str, on: bool):  # type: ignore[no-untyped-def]
    if not on:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)


def train_variant(variant: str, steps: int, batch: int = 16, blocks: int = 3, lr: float = 3e-3, seed: int = 0,
                  device: str = "cpu", progress: bool = True,
                  init: CausalWanDiT | None = None) -> tuple[CausalWanDiT, Stage]:
    """One variant (`toy_training.VARIANTS`): fresh exact-target clips every step (seeded by `seed`),
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


def plot_losses(stages: list[Stage], path: str | Path) -> None:
    """Every trained variant's x0 MSE per step and its 50-step running mean, log scale, one panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=120)
    for st in stages:
        losses = st.losses
        line = ax.plot(losses, lw=0.4, alpha=0.3)[0]
        k = 50
        if len(losses) >= k:
            run = [sum(losses[i - k:i]) / k for i in range(k, len(losses) + 1)]
            ax.plot(range(k - 1, len(losses)), run, lw=1.5, color=line.get_color(),
                    label=f"{st.name}: {len(losses)} steps, {st.wall_s / 60:.1f} min")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("x0 MSE vs the exact target")
    if ax.get_legend_handles_labels()[0]:  # a run shorter than the running mean has no labelled line
        ax.legend(fontsize=8)
    ax.set_title(f"toy model training ({torch.get_num_threads()} CPU thread(s) per run)", fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.train_toy", description=__doc__.split("\n")[0])
    p.add_argument("--variant", choices=[*VARIANTS, "both"], default="both", help="which to train (default both)")
    p.add_argument("--steps", type=int, default=1600, help="optimizer steps per variant (default %(default)s)")
    p.add_argument("--batch", type=int, default=16, help="clips per step (default %(default)s)")
    p.add_argument("--blocks", type=int, default=WINDOW, help="blocks per clip (default %(default)s)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seeds the data, noise and init (default 0)")
    p.add_argument("--init", default=None,
                   help="start from these weights (a second round) instead of a fresh model; one --variant")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    p.add_argument("--out", default=None,
                   help="weights path (.safetensors; .json beside it) of a single --variant (default: the shipped)")
    p.add_argument("--plot", default="docs/img/toy_loss.png", help="loss-curve picture")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    for name in ("steps", "batch", "blocks", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name} must be a positive integer, got {value}")
    if args.blocks < 2:
        p.error(f"--blocks must be at least 2 (a switch needs a second block), got {args.blocks}")
    if (args.out is not None or args.init is not None) and args.variant == "both":
        p.error("--out and --init name one variant's weights: give --variant cascade or --variant sequential")
    from cascade_sched.errors import ConfigError
    from executors.launch import check_device

    try:
        check_device(args.device)
    except ConfigError as exc:
        p.error(str(exc))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    variants = list(VARIANTS) if args.variant == "both" else [args.variant]
    stages = []
    for variant in variants:
        init = load_model(args.init).float() if args.init else None
        model, st = train_variant(variant, args.steps, args.batch, args.blocks, args.lr, args.seed, args.device,
                                  not args.no_progress, init)
        stages.append(st)
        out = Path(args.out) if args.out else OUTS[variant]
        if variant == "sequential" and args.out is None:
            model = model.half()  # the second variant ships at half the size
        path = save_model(model, out, sampler={"shift": SHIFT})
        tail = st.losses[-100:]
        print(f"{variant}: {st.wall_s:.0f} s; final loss (mean of last {len(tail)}) {sum(tail) / len(tail):.4f}; "
              f"wrote {path}")
    if not args.no_plot:
        plot_losses(stages, args.plot)
    print(f"total {sum(st.wall_s for st in stages):.0f} s on {torch.get_num_threads()} thread(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
