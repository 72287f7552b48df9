"""What cascade settings do to video quality, measured on the trained toy model (docs/quality.md).

For every variant (the shipped ``cascade``-trained weights and the ``sequential``-trained ones), lag 1..S
and attention mode, `measure` generates N videos with fixed seeds through the reference executor (the
same seed gives every setting the same noise); video s has prompt ``PROMPTS[s % len(PROMPTS)]``. Per video:

- physics error (pixels): ball centroids per frame and colour channel (`toy_world.find_balls`, threshold 0,
  i.e. the pixels brighter than mid-grey); over every three consecutive frames (t-1, t, t+1) where the
  ball is found in all three, the residual of constant-velocity motion per axis,
  ``x[t+1] - 2 x[t] + x[t-1]``, or, where it explains the motion better, the residual of one elastic bounce
  off a wall w (lo = radius, hi = size - radius) between t and t+1 (``x[t+1] + 2 x[t] - x[t-1] - 2 w``,
  allowed when the straight-line prediction ``2 x[t] - x[t-1]`` is past w) or between t-1 and t
  (``x[t+1] - 2 x[t] - x[t-1] + 2 w``, allowed when x[t-1] and x[t] are both within 2 px of w); the error
  is the mean Euclidean norm of the (x, y) residuals over the prompt's balls and triples.
- missing (%): the share of (frame, ball) pairs of the prompt's balls where the ball's channel has less
  than 1.5 pixels' worth of mass above the threshold (`toy_world.ball_present`); extra (%): the share of
  (frame, channel) pairs the prompt leaves empty where a ball is drawn.
- speed error (px per frame): ``| |x[t+1] - x[t]| - speed |`` per axis, over the prompt's balls found in
  both frames and away from the walls (`speed_error`): a ball that stands still, which the physics error
  does not catch, scores the prompt's speed.
- jump ratio: the mean absolute frame difference across block boundaries over the mean difference between
  consecutive frames inside blocks; the world's own clips give its floor.
- distance to sequential: the mean absolute pixel difference to the same seed's video at lag S.

`measure_switches` runs prompt switches (``SWITCHES[s % len(SWITCHES)]`` at block `SWITCH_AT`) under
policy ``none`` (the cascade: in-flight blocks keep the old prompt's context) and ``recache`` (the
baseline: the committed context is re-encoded under the new prompt, one extra pass). Per video:

- frames to follow: from the switch block's first frame, how many frames pass before the video follows
  the new prompt for good. A frame follows when the channels drawn are exactly the new prompt's balls and
  every ball both prompts name is within 1 px of where the world puts it: rolled on from the video's own
  last pre-switch frames at the new speed (`follow_frames`). The share of videos following within one
  block (3 frames) is reported too.
- switch jump: the jump ratio of the switch boundary alone, over the channels both prompts name.
- stall (ms): the stall the executor measured at the switch (`cascade_sched.metrics.switch_stalls` on the
  blocks' completion times; one process on a CPU, so a recache pass shows as a longer interval).

>>> rows = measure(seeds=1, blocks=2, lags=[5], attentions=["causal"])   # doctest: +SKIP
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from apps.progress import bar as progress_bar
from cascade_sched import CascadeSpec, build_schedule
from cascade_sched.metrics import switch_stalls
from cascade_sched.outputs import save_figure
from executors.base import RunOptions, RunResult
from executors.reference import ReferenceExecutor
from models.checkpoints import load_model
from models.dit import CausalWanDiT
from models.sampler import FlowMatchSampler
from models.toy_world import (
    FRAMES_PER_BLOCK,
    RADIUS,
    SIZE,
    ball_present,
    find_balls,
    make_clip,
    parse_prompt,
    reflect,
)

ATTENTIONS = ("causal", "bidirectional", "stale")  # the default rows; "stage" (StreamDiffusionV2's context) on request
POLICIES = ("none", "recache")
NEAR_WALL = 2.0  # px: a bounce between t-1 and t is allowed only this close to the wall
FOLLOW_PX = 1.0  # px: a continuing ball follows the new prompt within this distance of the world's path
PROMPTS = ("red green blue slow", "red green blue fast", "red slow", "green blue fast", "red blue slow",
           "green fast", "red green slow", "blue fast")
SWITCHES = (("red green slow", "red green blue fast"), ("red green blue fast", "green slow"),
            ("blue slow", "red blue fast"), ("red green blue slow", "red blue slow"))
SWITCH_AT = 4  # the switch block of `measure_switches`


@dataclass
class Row:
    """Quality of one (variant, lag, attention) setting, averaged over the seeds."""

    variant: str
    lag: int
    attention: str
    in_flight: int  # blocks in flight at once (ceil(S / lag))
    physics_px: float
    speed_err: float  # px per frame
    missing_pct: float
    extra_pct: float
    jump_ratio: float
    dist_to_seq: float


@dataclass
class SwitchRow:
    """A prompt switch under one (variant, lag, attention, policy), averaged over the seeds."""

    variant: str
    lag: int
    attention: str
    policy: str
    follow_frames: float  # mean frames from the switch until the video follows the new prompt for good
    within_block_pct: float  # videos that follow within one block
    switch_jump: float  # jump ratio at the switch boundary, over the balls both prompts name
    stall_ms: float  # the measured stall at the switch


def toy_model(path: str | Path | None = None) -> CausalWanDiT:
    """The trained toy model (the shipped weights unless `path` names others), eval mode, float32."""
    from models.weights import TOY_WEIGHTS

    return load_model(path or TOY_WEIGHTS).float().eval()


def variant_models() -> dict[str, CausalWanDiT]:
    """The two shipped variants (docs/quality.md): cascade-trained (the default toy) and sequential-trained."""
    from models.weights import TOY_SEQUENTIAL_WEIGHTS

    return {"cascade": toy_model(), "sequential": toy_model(TOY_SEQUENTIAL_WEIGHTS)}


def toy_sampler(path: str | Path | None = None) -> FlowMatchSampler:
    """The sampler the toy weights were trained for (saved beside them; shift 1 for the shipped ones)."""
    from apps.request import ModelSource
    from apps.sources import build_sampler

    return build_sampler(ModelSource(checkpoint=str(path) if path else None), "toy")


def run(model: CausalWanDiT, seed: int, blocks: int, lag: int, attention: str,
        timeline: Sequence[tuple[int, str]] | str = "", policy: str = "none",
        sampler: FlowMatchSampler | None = None) -> tuple[Tensor, RunResult]:
    """One video's frames (3, T, H, W) in the model's latent (= pixel) space, of a prompt or a timeline
    ``[(0, text), (at_block, text), ...]``, and the executor's result (default: the shipped sampler), with
    the attention window the toy was trained for (`models.weights.TOY_WINDOW`)."""
    timeline = [(0, timeline)] if isinstance(timeline, str) else list(timeline)
    from models.weights import TOY_WINDOW

    spec = CascadeSpec(num_blocks=blocks, lag=lag, attention=attention, seed=seed, window=TOY_WINDOW,
                       switches=tuple((at, i) for i, (at, _) in enumerate(timeline) if i),
                       switch_policy=policy)
    options = RunOptions(prompt=timeline[0][1], prompts={i: text for i, (_, text) in enumerate(timeline) if i},
                         sampler=sampler or toy_sampler())
    with torch.inference_mode():
        result = ReferenceExecutor().run(build_schedule(spec), model, options)
    return torch.cat(result.latents, dim=1).float(), result


def generate(model: CausalWanDiT, seed: int, blocks: int, lag: int, attention: str,
             sampler: FlowMatchSampler | None = None, prompt: str = "") -> Tensor:
    """One video's frames (3, T, H, W) of `prompt` (see `run`)."""
    return run(model, seed, blocks, lag, attention, prompt, sampler=sampler)[0]


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


def physics_error(frames: Tensor, prompt: str = "", size: int = SIZE,
                  radius: float = RADIUS) -> tuple[float, float, float]:
    """(mean residual in pixels, missing %, extra %) of a video (3, T, H, W) of `prompt`; see the module
    docstring."""
    balls = torch.tensor(parse_prompt(prompt).balls)
    pos = find_balls(frames)  # (T, 3, 2)
    present = ball_present(frames)  # (T, 3)
    ok = present[:-2] & present[1:-1] & present[2:] & balls  # (T-2, 3)
    a, b, c = pos[:-2], pos[1:-1], pos[2:]
    lo, hi = radius, size - radius
    res = torch.stack([_axis_residual(a[..., i], b[..., i], c[..., i], lo, hi) for i in range(2)], -1)
    err = res.norm(dim=-1)[ok]
    missing = 100.0 * float((~present[:, balls]).float().mean())
    extra = 100.0 * float(present[:, ~balls].float().mean()) if (~balls).any() else 0.0
    return (float(err.mean()) if err.numel() else math.nan), missing, extra


def speed_error(frames: Tensor, prompt: str = "", size: int = SIZE, radius: float = RADIUS) -> float:
    """Mean | |x[t+1] - x[t]| - speed | per axis (px per frame) over the prompt's balls found at t and t+1
    and farther than the speed from both walls at t and t+1 (no bounce in between); the world scores 0,
    a ball that stands still scores the speed."""
    pr = parse_prompt(prompt)
    balls = torch.tensor(pr.balls)
    pos, present = find_balls(frames), ball_present(frames)
    ok = (present[:-1] & present[1:] & balls)[..., None].expand(-1, -1, 2)  # (T-1, 3, 2)
    lo, hi = radius + pr.speed, size - radius - pr.speed
    inside = (pos > lo) & (pos < hi)
    ok = ok & inside[:-1] & inside[1:]
    err = ((pos[1:] - pos[:-1]).abs() - pr.speed).abs()[ok]
    return float(err.mean()) if err.numel() else math.nan


def jump_ratio(frames: Tensor, frames_per_block: int = FRAMES_PER_BLOCK) -> float:
    """Mean |frame difference| across block boundaries over the mean inside blocks (3, T, H, W)."""
    d = (frames[:, 1:] - frames[:, :-1]).abs().mean(dim=(0, 2, 3))  # (T-1,): d[t-1] = |f_t - f_{t-1}|
    t = torch.arange(1, frames.shape[1])
    boundary = t % frames_per_block == 0
    if not boundary.any() or boundary.all():
        return math.nan
    return float(d[boundary].mean() / d[~boundary].mean().clamp(min=1e-8))


def follow_frames(frames: Tensor, timeline: Sequence[tuple[int, str]], size: int = SIZE,
                  radius: float = RADIUS, paths: bool = True) -> int:
    """Frames after the (one) switch until `frames` (3, T, H, W) follows the new prompt for good (see the
    module docstring); the frames left after the switch when it never does. ``paths=False`` checks the
    content only (the channels drawn are the new prompt's balls), not where the continuing balls go."""
    (_, old), (at, new) = timeline
    t0, t_end = at * FRAMES_PER_BLOCK, frames.shape[1]
    before, after = parse_prompt(old), parse_prompt(new)
    pos, present = find_balls(frames), ball_present(frames)
    want = torch.tensor(after.balls)
    path = {}  # the world's path of every ball both prompts name, from the video's own pre-switch motion
    for k in range(3):
        if paths and before.balls[k] and after.balls[k] and t0 >= 2:
            p = pos[t0 - 1, k]
            v = (pos[t0 - 1, k] - pos[t0 - 2, k]).sign() * after.speed
            for t in range(t0, t_end):
                p, v = reflect(p + v, v, size, radius)
                path[(t, k)] = p
    follows = []
    for t in range(t0, t_end):
        ok = bool((present[t] == want).all())
        for (tt, k), p in path.items():
            if tt == t and ok:
                ok = bool(((pos[t, k] - p).norm() <= FOLLOW_PX).nan_to_num(False))
        follows.append(ok)
    lead = len(follows)
    while lead > 0 and follows[lead - 1]:
        lead -= 1
    return lead


def switch_jump(frames: Tensor, timeline: Sequence[tuple[int, str]]) -> float:
    """The jump ratio of the switch boundary alone, over the channels both prompts name (NaN if none)."""
    (_, old), (at, new) = timeline
    keep = [k for k in range(3) if parse_prompt(old).balls[k] and parse_prompt(new).balls[k]]
    if not keep:
        return math.nan
    f = frames[keep]
    d = (f[:, 1:] - f[:, :-1]).abs().mean(dim=(0, 2, 3))
    t = torch.arange(1, frames.shape[1])
    inside = t % FRAMES_PER_BLOCK != 0
    return float(d[at * FRAMES_PER_BLOCK - 1] / d[inside].mean().clamp(min=1e-8))


def measure(model: CausalWanDiT | None = None, *, seeds: int = 4, blocks: int = 8, lags: Sequence[int] | None = None,
            attentions: Sequence[str] = ATTENTIONS, progress: bool = False,
            videos: dict[tuple[int, str, int], Tensor] | None = None, sampler: FlowMatchSampler | None = None,
            variant: str = "cascade") -> list[Row]:
    """Quality rows for every (lag, attention) of one model; `videos`, if given, receives every generated
    video. `sampler` defaults to the one saved with the shipped weights."""
    model = toy_model() if model is None else model
    sampler = sampler or toy_sampler()
    stages = CascadeSpec(num_blocks=blocks).num_stages
    lags = list(range(1, stages + 1)) if lags is None else list(lags)
    settings = [(lag, att) for lag in lags for att in attentions]
    bar = progress_bar(len(settings) * seeds + seeds, f"quality ({variant})", "video", on=progress)
    try:  # the bar is closed before anything else is said, an interrupt's line included
        base: dict[int, Tensor] = {}
        for s in range(seeds):
            base[s] = generate(model, s, blocks, stages, "causal", sampler, PROMPTS[s % len(PROMPTS)])
            if bar is not None:
                bar.update(1)
        rows = []
        for lag, att in settings:
            phys, speed, miss, extra, jump, dist = [], [], [], [], [], []
            for s in range(seeds):
                prompt = PROMPTS[s % len(PROMPTS)]
                v = base[s] if lag == stages else generate(model, s, blocks, lag, att, sampler, prompt)
                if videos is not None:
                    videos[(lag, att, s)] = v
                p, m, x = physics_error(v, prompt)
                phys.append(p)
                speed.append(speed_error(v, prompt))
                miss.append(m)
                extra.append(x)
                jump.append(jump_ratio(v, model.config.frames_per_block))
                dist.append(float((v - base[s]).abs().mean()))
                if bar is not None:
                    bar.update(1)
            rows.append(Row(variant, lag, att, math.ceil(stages / lag), _mean(phys), _mean(speed), _mean(miss),
                            _mean(extra), _mean(jump), _mean(dist)))
    finally:
        if bar is not None:
            bar.close()
    return rows


def measure_switches(model: CausalWanDiT | None = None, *, seeds: int = 4, blocks: int = 8,
                     lags: Sequence[int] | None = None, attentions: Sequence[str] = ATTENTIONS,
                     policies: Sequence[str] = POLICIES, progress: bool = False,
                     videos: dict[tuple[int, str, str, int], Tensor] | None = None,
                     sampler: FlowMatchSampler | None = None, variant: str = "cascade") -> list[SwitchRow]:
    """Switch rows for every (lag, attention, policy) of one model (see the module docstring)."""
    model = toy_model() if model is None else model
    sampler = sampler or toy_sampler()
    stages = CascadeSpec(num_blocks=blocks).num_stages
    lags = list(range(1, stages + 1)) if lags is None else list(lags)
    at = min(SWITCH_AT, blocks - 1)
    settings = switch_settings(lags, attentions, policies)
    bar = progress_bar(len(settings) * seeds, f"switches ({variant})", "video", on=progress)
    try:
        rows = []
        for lag, att, pol in settings:
            follow, jump, stall = [], [], []
            for s in range(seeds):
                old, new = SWITCHES[s % len(SWITCHES)]
                timeline = [(0, old), (at, new)]
                v, result = run(model, s, blocks, lag, att, timeline, pol, sampler)
                if videos is not None:
                    videos[(lag, att, pol, s)] = v
                follow.append(follow_frames(v, timeline))
                jump.append(switch_jump(v, timeline))
                st = switch_stalls(result.block_done_s, None, [at], max_in_flight=math.ceil(stages / lag))
                stall.append(1000.0 * st[0].stall_s if st else math.nan)
                if bar is not None:
                    bar.update(1)
            within = 100.0 * sum(f <= FRAMES_PER_BLOCK for f in follow) / len(follow)
            rows.append(SwitchRow(variant, lag, att, pol, _mean([float(f) for f in follow]), within, _mean(jump),
                                  _mean(stall)))
    finally:
        if bar is not None:
            bar.close()
    return rows


def switch_settings(lags: Sequence[int], attentions: Sequence[str], policies: Sequence[str]
                    ) -> list[tuple[int, str, str]]:
    """The (lag, attention, policy) settings of the switch rows: every combination but ``stage`` under
    ``recache``, which the contract refuses (a recache re-encodes committed K/V, which ``stage`` reads only at
    the commit stage; docs/contract.md).

    >>> switch_settings([1], ["causal", "stage"], ["none", "recache"])
    [(1, 'causal', 'none'), (1, 'causal', 'recache'), (1, 'stage', 'none')]
    """
    return [(lag, att, pol) for lag in lags for att in attentions for pol in policies
            if not (att == "stage" and pol == "recache")]


def data_row(seeds: int = 4, blocks: int = 8) -> Row:
    """The same metrics on clips of the world itself, with the same prompts (the floor of the model)."""
    phys, speed, miss, extra, jump = [], [], [], [], []
    for s in range(seeds):
        prompt = PROMPTS[s % len(PROMPTS)]
        v = make_clip(10_000 + s, prompt, frames=FRAMES_PER_BLOCK * blocks).frames
        p, m, x = physics_error(v, prompt)
        phys.append(p)
        speed.append(speed_error(v, prompt))
        miss.append(m)
        extra.append(x)
        jump.append(jump_ratio(v))
    return Row("world", 0, "data", 0, _mean(phys), _mean(speed), _mean(miss), _mean(extra), _mean(jump), math.nan)


def data_switch_row(seeds: int = 4, blocks: int = 8) -> SwitchRow:
    """The switch metrics on the world's own switching clips."""
    at = min(SWITCH_AT, blocks - 1)
    follow, jump = [], []
    for s in range(seeds):
        timeline = [(0, SWITCHES[s % len(SWITCHES)][0]), (at, SWITCHES[s % len(SWITCHES)][1])]
        v = make_clip(10_000 + s, timeline, frames=FRAMES_PER_BLOCK * blocks).frames
        follow.append(float(follow_frames(v, timeline)))
        jump.append(switch_jump(v, timeline))
    within = 100.0 * sum(f <= FRAMES_PER_BLOCK for f in follow) / len(follow)
    return SwitchRow("world", 0, "data", "", _mean(follow), within, _mean(jump), math.nan)


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else math.nan


def _num(x: float, fmt: str) -> str:
    return "" if math.isnan(x) else format(x, fmt)


def _markdown(head: Sequence[str], align: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A plain-text table that is also Markdown: a header, its alignment row, one line per row of cells."""
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows])


def _setting(r: Row | SwitchRow) -> list[str]:
    """The first cells of a row: its variant, lag and attention (a data row: the ground truth)."""
    data = r.attention == "data"
    return [r.variant, "" if data else str(r.lag), "ground truth" if data else r.attention]


def format_table(rows: Sequence[Row]) -> str:
    """A plain-text table (markdown-compatible)."""
    head = ("variant", "lag", "attention", "in flight", "physics err (px)", "speed err (px/frame)", "missing (%)",
            "extra (%)", "jump ratio", "dist to seq")
    return _markdown(head, ("---", "---:", "---", *["---:"] * 7), (
        [*_setting(r), "" if r.attention == "data" else str(r.in_flight), _num(r.physics_px, ".3f"),
         _num(r.speed_err, ".3f"), f"{r.missing_pct:.1f}", f"{r.extra_pct:.1f}", _num(r.jump_ratio, ".2f"),
         _num(r.dist_to_seq, ".3f")] for r in rows))


def format_switch_table(rows: Sequence[SwitchRow]) -> str:
    """The switch rows as a plain-text (markdown-compatible) table."""
    head = ("variant", "lag", "attention", "policy", "frames to follow", "within 1 block (%)", "switch jump",
            "stall (ms)")
    return _markdown(head, ("---", "---:", "---", "---", *["---:"] * 4), (
        [*_setting(r), r.policy, f"{r.follow_frames:.2f}", f"{r.within_block_pct:.0f}", _num(r.switch_jump, ".2f"),
         _num(r.stall_ms, ".1f")] for r in rows))


def rows_json(rows: Sequence[Row | SwitchRow]) -> list[dict[str, Any]]:
    """Rows as plain dicts (NaN becomes None)."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(r).items()} for r in rows]


def save_strip(videos: dict[str, Tensor], path: str | Path, scale: int = 4, *, title: str = "",
               switch_at: int | None = None, frames_per_block: int = 3) -> None:
    """A picture: one row per labelled video (3, T, H, W), its frames side by side left to right, a wider gap
    between blocks and each block labelled under the last row (``B0``, ``B1``, ...); ``switch_at`` marks the
    block a prompt switch applies from with an orange line through every row. ``title`` says what was run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from models.decode import PixelDecoder

    names = list(videos)
    t = next(iter(videos.values())).shape[1]
    fig, axes = plt.subplots(len(names), 1, figsize=(max(8.0, t * 0.55), 0.8 * len(names) + 1.3), dpi=110,
                             squeeze=False)
    gap = 2
    starts: list[float] = []  # x of each block's first frame
    for row, (ax, name) in enumerate(zip(axes[:, 0], names, strict=True)):
        frames = PixelDecoder(spatial=scale).decode_block(videos[name])  # (T, sH, sW, 3)
        h, w = frames.shape[1], frames.shape[2]
        canvas = torch.full((h, t * (w + gap) + gap * (t // frames_per_block), 3), 255, dtype=torch.uint8)
        x = 0
        for i in range(t):
            if i and i % frames_per_block == 0:
                x += gap  # a wider gap at block boundaries
            if row == 0 and i % frames_per_block == 0:
                starts.append(x)
            canvas[:, x:x + w] = torch.from_numpy(frames[i])
            x += w + gap
        ax.imshow(canvas.numpy(), interpolation="nearest")
        ax.set_yticks([])
        ax.set_xticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
        if switch_at is not None and 0 < switch_at < len(starts):
            ax.axvline(starts[switch_at] - gap - 0.5, color="#ff7f0e", linewidth=2.2)
    width = frames_per_block * (w + gap)
    bottom = axes[-1, 0]
    bottom.set_xticks([s + width / 2 - gap for s in starts], [f"B{b}" for b in range(len(starts))], fontsize=7)
    bottom.set_xlabel(f"block ({frames_per_block} frames each, left to right)", fontsize=8)
    if switch_at is not None and 0 < switch_at < len(starts):
        axes[0, 0].annotate(f"prompt switch: from block {switch_at}", (starts[switch_at] - gap, 0),
                            xytext=(0, 4), textcoords="offset points", color="#ff7f0e", fontsize=8, ha="left",
                            va="bottom", annotation_clip=False)
    if title:
        fig.suptitle("\n".join(textwrap.wrap(title, 150)), fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)
    plt.close(fig)
