"""Train the toy block-causal model on the bouncing-balls world (models/toy_world.py); rerun with

    python -m models.train_toy                 # the shipped weights: about 28 min on 2 CPU cores
    python -m models.train_toy --teacher-steps 2 --videos 2 --student-steps 2 --out /tmp/t.safetensors --no-plot

Latent = pixels: a block is (3, 3, 16, 16) in [-1, 1]. The prompt is not used: the cross-attention output
projections are zero and frozen, so every prompt gives the same video.

Stages (the objectives, and why there are two models: `models/toy_training.py`):
  1. teacher: diffusion-forcing flow matching on fresh clips of the world (`--teacher-steps` steps of
     `--batch` clips of `--teacher-blocks` blocks);
  2. teacher videos: the teacher draws `--videos` videos of `--blocks` blocks through the student's
     sampler, solving an Euler ODE (`--substeps` steps per sampler step) from every step's input;
  3. student: initialised from the teacher, it regresses each step's ODE endpoint from that step's input
     at sigmas 1, 0.75, 0.5, 0.25 (`--student-steps`);
  4. and 5., only with `--on-policy-videos N`: the student draws N videos of its own (teacher targets for
     its inputs), then trains `--on-policy-steps` more steps on both sets (Self-Forcing's idea: learn on
     your own rollouts; docs/quality.md has what it gave here).
The student is saved with the sampler it was trained for: shift 1, so the default steps 1000/750/500/250
are exactly those sigmas.
`--teacher PATH` skips stage 1 and distils from saved teacher weights; `--save-teacher PATH` keeps the
teacher. Every training stage: Adam with a linear warm-up and cosine decay to 5%, `--batch` clips per
step, gradient clip 1; the weights kept are an EMA of the trained ones.
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
from models.toy_training import (
    SHIFT,
    VIDEO_SEED0,
    OdeVideos,
    ode_videos,
    student_loss,
    teacher_loss,
    toy_model,
)
from models.toy_world import make_batch

WEIGHTS = Path(__file__).parent / "weights" / "toy.safetensors"


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
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    warm = min(100, max(1, steps // 10))
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
    return ema.eval()


def _bar(total: int, desc: str, unit: str, on: bool):  # type: ignore[no-untyped-def]
    if not on:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)


def train_teacher(steps: int, batch: int = 4, blocks: int = 4, lr: float = 1e-3, seed: int = 0,
                  progress: bool = True) -> tuple[CausalWanDiT, Stage]:
    """Stage 1: the flow-matching teacher on fresh clips of the world (seeded by the step)."""
    torch.manual_seed(seed)
    model = toy_model(seed)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    frames = blocks * model.config.frames_per_block
    stage = Stage("teacher")

    def loss(step: int) -> Tensor:
        x0 = make_batch([seed * 1_000_003 + step * batch + i for i in range(batch)], frames)
        return teacher_loss(model, x0, rng, gen)

    return fit(model, loss, steps, lr, 0.995, stage, progress), stage


def rollouts(teacher: CausalWanDiT, videos: int, blocks: int = 6, substeps: int = 3, first_seed: int = VIDEO_SEED0,
             student: CausalWanDiT | None = None, chunk: int = 16,
             progress: bool = True) -> tuple[OdeVideos, Stage]:
    """Stages 2 and 4: `videos` rollouts with seeds from `first_seed`, `chunk` videos per tick; the teacher's
    own, or with `student` the student's videos with the teacher's targets (`toy_training.ode_videos`)."""
    stage = Stage("teacher videos" if student is None else "on-policy videos")
    bar = _bar(videos, stage.name, "video", progress)
    t0 = time.perf_counter()
    parts = []
    for i in range(0, videos, chunk):
        seeds = list(range(first_seed + i, first_seed + min(i + chunk, videos)))
        parts.append(ode_videos(teacher, seeds, blocks, substeps, student=student))
        if bar is not None:
            bar.update(len(seeds))
    if bar is not None:
        bar.close()
    stage.wall_s = time.perf_counter() - t0
    return OdeVideos.cat(parts), stage


def train_student(init: CausalWanDiT, videos: OdeVideos, steps: int, batch: int = 4, lr: float = 3e-4,
                  seed: int = 0, progress: bool = True, name: str = "student") -> tuple[CausalWanDiT, Stage]:
    """Stages 3 and 5: the few-step student, initialised from `init` (the teacher, then the student
    itself), on `videos`."""
    model = _as_toy(init)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    stage = Stage(name)

    def loss(step: int) -> Tensor:
        index = torch.randint(0, len(videos), (batch,), generator=gen).tolist()
        return student_loss(model, videos, index, rng)

    return fit(model, loss, steps, lr, 0.99, stage, progress), stage


def plot_losses(stages: list[Stage], path: str | Path) -> None:
    """One panel per trained stage: loss per step and its 50-step running mean, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = [st for st in stages if st.losses]
    labels = {"teacher": "velocity MSE", "student": "x0 MSE vs the ODE endpoint",
              "student (on-policy)": "x0 MSE vs the ODE endpoint"}
    fig, axes = plt.subplots(1, len(trained), figsize=(5.2 * len(trained), 3.2), dpi=120, squeeze=False)
    for ax, st in zip(axes[0], trained, strict=True):
        losses = st.losses
        ax.plot(losses, lw=0.5, alpha=0.4, label="per step")
        k = 50
        if len(losses) >= k:
            run = [sum(losses[i - k:i]) / k for i in range(k, len(losses) + 1)]
            ax.plot(range(k - 1, len(losses)), run, lw=1.5, label=f"{k}-step mean")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(labels.get(st.name, "loss"))
        ax.set_title(f"{st.name}: {len(losses)} steps, {st.wall_s / 60:.1f} min", fontsize=10)
        ax.legend()
    fig.suptitle(f"toy model training ({torch.get_num_threads()} CPU thread(s))", fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.train_toy", description=__doc__.split("\n")[0])
    p.add_argument("--teacher-steps", type=int, default=4200, help="teacher optimizer steps (default %(default)s)")
    p.add_argument("--teacher-blocks", type=int, default=4, help="blocks per teacher clip (default %(default)s)")
    p.add_argument("--videos", type=int, default=400, help="teacher videos to distil (default %(default)s)")
    p.add_argument("--substeps", type=int, default=3,
                   help="Euler steps of the teacher ODE per student step (default %(default)s)")
    p.add_argument("--student-steps", type=int, default=800, help="student optimizer steps (default %(default)s)")
    p.add_argument("--on-policy-videos", type=int, default=0,
                   help="then roll out the student this often, with teacher targets (default %(default)s: off)")
    p.add_argument("--on-policy-steps", type=int, default=400,
                   help="student steps on teacher + on-policy videos (default %(default)s)")
    p.add_argument("--batch", type=int, default=4, help="clips per step (default %(default)s)")
    p.add_argument("--blocks", type=int, default=6, help="blocks per teacher video and student clip (default %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="teacher peak learning rate (default %(default)s)")
    p.add_argument("--student-lr", type=float, default=3e-4, help="student peak learning rate (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seeds the data, noise and init (default 0)")
    p.add_argument("--teacher", default=None, help="skip stage 1: distil from these teacher weights")
    p.add_argument("--save-teacher", default=None, help="also save the teacher here (.safetensors)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    p.add_argument("--out", default=str(WEIGHTS), help="student weights path (.safetensors; .json beside it)")
    p.add_argument("--plot", default="docs/img/toy_loss.png", help="loss-curve picture")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    for name in ("teacher_steps", "teacher_blocks", "videos", "substeps", "student_steps", "on_policy_steps",
                 "batch", "blocks", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if args.on_policy_videos < 0:
        p.error(f"--on-policy-videos must be 0 (off) or a positive integer, got {args.on_policy_videos}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    progress = not args.no_progress
    stages: list[Stage] = []
    if args.teacher is not None:
        teacher = load_model(args.teacher).float()
    else:
        teacher, st = train_teacher(args.teacher_steps, args.batch, args.teacher_blocks, args.lr, args.seed, progress)
        stages.append(st)
        if args.save_teacher:
            save_model(teacher, args.save_teacher)
    teacher = _as_toy(teacher)
    first = VIDEO_SEED0 + 10_000_000 * args.seed  # rollout seeds: far from `cascade quality`'s
    videos, st = rollouts(teacher, args.videos, args.blocks, args.substeps, first, progress=progress)
    stages.append(st)
    student, st = train_student(teacher, videos, args.student_steps, args.batch, args.student_lr, args.seed, progress)
    stages.append(st)
    if args.on_policy_videos:
        more, st = rollouts(teacher, args.on_policy_videos, args.blocks, args.substeps, first + args.videos,
                            student=student, progress=progress)
        stages.append(st)
        student, st = train_student(student, OdeVideos.cat([videos, more]), args.on_policy_steps, args.batch,
                                    args.student_lr, args.seed, progress, name="student (on-policy)")
        stages.append(st)
    path = save_model(student, args.out, sampler={"shift": SHIFT})
    if not args.no_plot:
        plot_losses(stages, args.plot)
    for st in stages:
        tail = st.losses[-100:]
        loss = f"; final loss (mean of last {len(tail)}) {sum(tail) / len(tail):.4f}" if tail else ""
        print(f"{st.name}: {st.wall_s:.0f} s{loss}")
    print(f"total {sum(st.wall_s for st in stages):.0f} s on {torch.get_num_threads()} thread(s); wrote {path}")
    return 0


def _as_toy(model: CausalWanDiT) -> CausalWanDiT:
    """`model`'s weights in a fresh toy model (prompt registered), eval mode."""
    out = toy_model()
    out.load_state_dict(model.state_dict())
    return out.eval()


if __name__ == "__main__":
    sys.exit(main())
