"""What cascade settings do to video quality, measured on the trained toy model (docs/quality.md).

For every lag 1..S and attention mode, `measure` generates N videos with fixed seeds through the reference
executor (the same seed gives every setting the same noise) and computes, per video:

- physics error (pixels): ball centroids per frame and colour channel (`toy_world.find_balls`, threshold 0,
  i.e. the pixels brighter than mid-grey); over every three consecutive frames (t-1, t, t+1) where the
  ball is found in all three, the residual of constant-velocity motion per axis,
  ``x[t+1] - 2 x[t] + x[t-1]``, or, where it explains the motion better, the residual of one elastic bounce
  off a wall w (lo = radius, hi = size - radius) between t and t+1 (``x[t+1] + 2 x[t] - x[t-1] - 2 w``,
  allowed when the straight-line prediction ``2 x[t] - x[t-1]`` is past w) or between t-1 and t
  (``x[t+1] - 2 x[t] - x[t-1] + 2 w``, allowed when x[t-1] and x[t] are both within 2 px of w); the error
  is the mean Euclidean norm of the (x, y) residuals over balls and triples. Ground-truth clips score
  about 0.05 px (rendering), a static ball 0, so it is read with `missing` and the jump ratio.
- missing (%): the share of (frame, ball) pairs where the ball's channel has less than 1.5 pixels' worth
  of mass above the threshold (`toy_world.ball_present`).
- jump ratio: the mean absolute frame difference across block boundaries (last frame of block b-1 to the
  first of block b) over the mean difference between consecutive frames inside blocks; 1 for smooth
  motion, larger when blocks do not join up (the paper's frame jumps).
- distance to sequential: the mean absolute pixel difference (pixels in [-1, 1]) to the video of the same
  seed at lag = S (the sequential baseline; at lag S all attention modes are that baseline).

>>> rows = measure(seeds=1, blocks=2, lags=[5], attentions=["causal"])   # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cascade_sched import CascadeSpec, build_schedule
from cascade_sched.outputs import save_figure
from executors.base import RunOptions
from executors.reference import ReferenceExecutor
from models.checkpoints import load_model
from models.dit import CausalWanDiT
from models.sampler import FlowMatchSampler
from models.toy_world import RADIUS, SIZE, ball_present, find_balls

ATTENTIONS = ("causal", "bidirectional", "stale")
NEAR_WALL = 2.0  # px: a bounce between t-1 and t is allowed only this close to the wall


@dataclass
class Row:
    """Quality of one (lag, attention) setting, averaged over the seeds."""

    lag: int
    attention: str
    in_flight: int  # blocks in flight at once (ceil(S / lag))
    physics_px: float
    missing_pct: float
    jump_ratio: float
    dist_to_seq: float


def toy_model(path: str | Path | None = None) -> CausalWanDiT:
    """The trained toy model (the shipped weights unless `path` names others), eval mode, float32."""
    from models.train_toy import WEIGHTS

    return load_model(path or WEIGHTS).float().eval()


def toy_sampler(path: str | Path | None = None) -> FlowMatchSampler:
    """The sampler the toy weights were trained for (saved beside them; shift 1 for the shipped ones)."""
    from executors.generate import build_sampler

    return build_sampler("toy", str(path) if path else None, None)


def generate(model: CausalWanDiT, seed: int, blocks: int, lag: int, attention: str,
             sampler: FlowMatchSampler | None = None) -> Tensor:
    """One video's frames (3, T, H, W) in the model's latent (= pixel) space (default: the shipped sampler)."""
    spec = CascadeSpec(num_blocks=blocks, lag=lag, attention=attention, seed=seed)
    options = RunOptions(prompt="", sampler=sampler or toy_sampler())
    with torch.inference_mode():
        result = ReferenceExecutor().run(build_schedule(spec), model, options)
    return torch.cat(result.latents, dim=1).float()


def _axis_residual(a: Tensor, b: Tensor, c: Tensor, lo: float, hi: float) -> Tensor:
    """Smallest constant-velocity(-with-one-bounce) residual of positions a, b, c at t-1, t, t+1 (one axis)."""
    straight = 2 * b - a
    cands = [c - straight]
    for w in (lo, hi):
        past = (straight < w) if w == lo else (straight > w)
        cands.append(torch.where(past, c + 2 * b - a - 2 * w, torch.inf))  # bounce between t and t+1
        near = ((a - w).abs() <= NEAR_WALL) & ((b - w).abs() <= NEAR_WALL)
        cands.append(torch.where(near, c - 2 * b - a + 2 * w, torch.inf))  # bounce between t-1 and t
    return torch.stack([x.abs() for x in cands]).min(dim=0).values


def physics_error(frames: Tensor, size: int = SIZE, radius: float = RADIUS) -> tuple[float, float]:
    """(mean residual in pixels, missing %) of a video (3, T, H, W); see the module docstring."""
    pos = find_balls(frames)  # (T, 3, 2)
    present = ball_present(frames)  # (T, 3)
    ok = present[:-2] & present[1:-1] & present[2:]  # (T-2, 3)
    a, b, c = pos[:-2], pos[1:-1], pos[2:]
    lo, hi = radius, size - radius
    res = torch.stack([_axis_residual(a[..., i], b[..., i], c[..., i], lo, hi) for i in range(2)], -1)
    err = res.norm(dim=-1)[ok]
    missing = 100.0 * float((~present).float().mean())
    return (float(err.mean()) if err.numel() else math.nan), missing


def jump_ratio(frames: Tensor, frames_per_block: int = 3) -> float:
    """Mean |frame difference| across block boundaries over the mean inside blocks (3, T, H, W)."""
    d = (frames[:, 1:] - frames[:, :-1]).abs().mean(dim=(0, 2, 3))  # (T-1,): d[t-1] = |f_t - f_{t-1}|
    t = torch.arange(1, frames.shape[1])
    boundary = t % frames_per_block == 0
    if not boundary.any() or boundary.all():
        return math.nan
    return float(d[boundary].mean() / d[~boundary].mean().clamp(min=1e-8))


def measure(
    model: CausalWanDiT | None = None,
    *,
    seeds: int = 4,
    blocks: int = 6,
    lags: Sequence[int] | None = None,
    attentions: Sequence[str] = ATTENTIONS,
    progress: bool = False,
    videos: dict[tuple[int, str, int], Tensor] | None = None,
    sampler: FlowMatchSampler | None = None,
) -> list[Row]:
    """Quality rows for every (lag, attention); `videos`, if given, receives every generated video.
    `sampler` defaults to the one saved with the shipped weights."""
    model = toy_model() if model is None else model
    sampler = sampler or toy_sampler()
    stages = CascadeSpec(num_blocks=blocks).num_stages
    lags = list(range(1, stages + 1)) if lags is None else list(lags)
    settings = [(lag, att) for lag in lags for att in attentions]
    bar = None
    if progress:
        import sys

        from tqdm import tqdm

        bar = tqdm(total=len(settings) * seeds + seeds, desc="quality", unit="video", file=sys.stderr,
                   dynamic_ncols=True)
    try:  # the bar is closed before anything else is said, an interrupt's line included
        base: dict[int, Tensor] = {}
        for s in range(seeds):
            base[s] = generate(model, s, blocks, stages, "causal", sampler)
            if bar is not None:
                bar.update(1)
        rows = []
        for lag, att in settings:
            phys, miss, jump, dist = [], [], [], []
            for s in range(seeds):
                v = base[s] if lag == stages else generate(model, s, blocks, lag, att, sampler)
                if videos is not None:
                    videos[(lag, att, s)] = v
                p, m = physics_error(v)
                phys.append(p)
                miss.append(m)
                jump.append(jump_ratio(v, model.config.frames_per_block))
                dist.append(float((v - base[s]).abs().mean()))
                if bar is not None:
                    bar.update(1)
            rows.append(Row(lag, att, math.ceil(stages / lag), _mean(phys), _mean(miss), _mean(jump), _mean(dist)))
    finally:
        if bar is not None:
            bar.close()
    return rows


def data_row(seeds: int = 4, blocks: int = 6) -> Row:
    """The same metrics on ground-truth clips of the world (the floor the model is compared with)."""
    from models.toy_world import make_clip

    phys, miss, jump = [], [], []
    for s in range(seeds):
        v = make_clip(10_000 + s, frames=3 * blocks).frames
        p, m = physics_error(v)
        phys.append(p)
        miss.append(m)
        jump.append(jump_ratio(v))
    return Row(0, "data", 0, _mean(phys), _mean(miss), _mean(jump), math.nan)


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else math.nan


def format_table(rows: Sequence[Row]) -> str:
    """A plain-text table (markdown-compatible)."""
    head = "| lag | attention | in flight | physics err (px) | missing (%) | jump ratio | dist to seq |"
    lines = [head, "|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lag = "data" if r.attention == "data" else str(r.lag)
        att = "ground truth" if r.attention == "data" else r.attention
        fl = "" if r.attention == "data" else str(r.in_flight)
        dist = "" if math.isnan(r.dist_to_seq) else f"{r.dist_to_seq:.3f}"
        lines.append(f"| {lag} | {att} | {fl} | {r.physics_px:.3f} | {r.missing_pct:.1f} | "
                     f"{r.jump_ratio:.2f} | {dist} |")
    return "\n".join(lines)


def rows_json(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Rows as plain dicts (NaN becomes None)."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(r).items()} for r in rows]


def save_strip(videos: dict[str, Tensor], path: str | Path, scale: int = 4) -> None:
    """A picture: one row per labelled video (3, T, H, W), its frames side by side, block boundaries marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from models.decode import PixelDecoder

    names = list(videos)
    t = next(iter(videos.values())).shape[1]
    fig, axes = plt.subplots(len(names), 1, figsize=(t * 0.55, 0.75 * len(names) + 0.3), dpi=110, squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        frames = PixelDecoder(spatial=scale).decode_block(videos[name])  # (T, sH, sW, 3)
        gap = 2
        h, w = frames.shape[1], frames.shape[2]
        canvas = torch.full((h, t * (w + gap) + gap * (t // 3), 3), 255, dtype=torch.uint8)
        x = 0
        for i in range(t):
            if i and i % 3 == 0:
                x += gap  # a wider gap at block boundaries
            canvas[:, x:x + w] = torch.from_numpy(frames[i])
            x += w + gap
        ax.imshow(canvas.numpy(), interpolation="nearest")
        ax.set_yticks([])
        ax.set_xticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)
    plt.close(fig)
