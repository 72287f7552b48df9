"""A procedural video world for the toy model, driven by a prompt: coloured balls moving at constant
velocity and bouncing elastically off the walls, with ground-truth positions for every frame.

**The prompt.** A prompt names, from a small vocabulary (`VOCABULARY`), which balls are present and how
fast they move: colour words ``red``, ``green``, ``blue`` (the balls present; none named: all three) and
one speed word, ``slow`` (0.5 px per frame per axis, the default) or ``fast`` (1.0). Other words are
ignored. ``"red blue fast"`` is two fast balls; ``""`` three slow ones.

**A prompt timeline** ``[(0, p0), (k, p1), ...]`` switches the prompt at block k (3 frames per block):
from the switch block's first frame on, a ball the new prompt drops is gone, a ball it adds appears at a
fresh gridded state (below), and a ball both name keeps its position and direction with the new speed.

**Frames.** ``size x size`` RGB (16 x 16), values in [-1, 1], background -1 (black). Ball k lives in
colour channel k only (red, green, blue), so balls never occlude one another and each is found again in
its own channel. A ball is an anti-aliased disc of radius 3 px: channel value
``-1 + 2 * clamp(radius + 0.5 - distance, 0, 1)`` at each pixel centre.

**Motion.** Position p (x, y) in pixels (pixel centres at 0.5, 1.5, ...), velocity v per frame; each frame
``p += v``, and a coordinate that leaves ``[radius, size - radius]`` is reflected back inside and its
velocity component flips sign (elastic bounce).

**A gridded world (simpler than the first version, on purpose).** A ball starts (at block 0, or when a
switch adds it) at one of a finite set of states (`START_STATES`): x and y each from ``GRID`` =
(5, 8, 11) px and each velocity sign from (-1, +1), 36 states per speed, uniformly. So a prompt's first
block has a finite, enumerable set of possible contents per ball, and the exact posterior mean of a noisy
block is a closed-form softmax over it (`models/toy_training.py`). The first version had balls of radius
2 at uniform random positions and speeds 0.4-1.0; docs/quality.md says why this one is simpler.

The latent space of the toy model *is* this pixel space: a block's latent is (3, 3, size, size).

>>> clip = make_clip(0, [(0, "red green"), (2, "red green blue fast")], frames=12)
>>> clip.frames.shape, clip.positions.shape, clip.present[:, 2].tolist()
(torch.Size([3, 12, 16, 16]), torch.Size([12, 3, 2]), [False, False, False, False, False, False, True, True, True, True, True, True])
>>> bool(torch.allclose(find_balls(clip.frames)[clip.present], clip.positions[clip.present], atol=0.3))
True
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from cascade_sched.errors import ConfigError

__all__ = [
    "COLOURS",
    "DEMO",
    "FRAMES_PER_BLOCK",
    "SPEEDS",
    "START_STATES",
    "VOCABULARY",
    "Clip",
    "Prompt",
    "ball_present",
    "find_balls",
    "make_clip",
    "parse_prompt",
    "reflect",
    "render",
    "simulate",
]

COLOURS = ("red", "green", "blue")  # ball k is drawn in channel k
SPEEDS = {"slow": 0.5, "fast": 1.0}  # px per frame, per axis
VOCABULARY = (*COLOURS, *SPEEDS)
SIZE = 16
RADIUS = 3.0
FRAMES_PER_BLOCK = 3
GRID = (5.0, 8.0, 11.0)  # start coordinates, px
# (x, y, sign x, sign y) of every start state, in a fixed order: 3 * 3 * 2 * 2 = 36.
START_STATES = tuple(itertools.product(GRID, GRID, (-1.0, 1.0), (-1.0, 1.0)))

Timeline = Sequence[tuple[int, str]]
# The demo of `cascade generate` with no arguments: a third ball appears and all speed up at block 3.
DEMO = ((0, "red green slow"), (3, "red green blue fast"))


@dataclass(frozen=True)
class Prompt:
    """A parsed prompt: which balls are present (per colour channel) and their speed (px/frame/axis)."""

    balls: tuple[bool, bool, bool]
    speed: float

    @property
    def words(self) -> list[str]:
        """The prompt's vocabulary words in canonical order (colours, then the speed)."""
        speed = next(w for w, s in SPEEDS.items() if s == self.speed)
        return [c for c, on in zip(COLOURS, self.balls, strict=True) if on] + [speed]


def prompt_words(text: str) -> list[str]:
    """The words of a prompt as the toy reads them: lower case, letters only.

    >>> prompt_words("A red, FAST ball!")
    ['a', 'red', 'fast', 'ball']
    """
    return [w for w in ("".join(ch for ch in word if ch.isalpha()) for word in text.lower().split()) if w]


def parse_prompt(text: str) -> Prompt:
    """The prompt's balls and speed (see the module docstring); two speed words are refused.

    >>> parse_prompt("a red and a blue ball, fast")
    Prompt(balls=(True, False, True), speed=1.0)
    """
    words = prompt_words(text)
    speeds = sorted({w for w in words if w in SPEEDS})
    if len(speeds) > 1:
        raise ConfigError("prompt", f"toy prompt {text!r} names two speeds ({', '.join(speeds)}); use one of slow, fast")
    balls = tuple(c in words for c in COLOURS)
    if not any(balls):
        balls = (True, True, True)
    return Prompt(balls, SPEEDS[speeds[0]] if speeds else SPEEDS["slow"])  # type: ignore[arg-type]


@dataclass
class Clip:
    """One video of the world: frames (3, T, H, W) in [-1, 1]; positions (T, 3, 2) as (x, y), NaN where a
    ball is absent; velocities (T, 3, 2), the velocity a ball leaves frame t with (at frame t's speed; a
    switch changes its magnitude); present (T, 3) bool."""

    frames: Tensor
    positions: Tensor
    velocities: Tensor
    present: Tensor


def reflect(p: Tensor, v: Tensor, size: float, radius: float) -> tuple[Tensor, Tensor]:
    lo, hi = radius, size - radius
    below, above = p < lo, p > hi
    p = torch.where(below, 2 * lo - p, torch.where(above, 2 * hi - p, p))
    return p, torch.where(below | above, -v, v)


def simulate(p0: Tensor, v0: Tensor, frames: int, size: int = SIZE, radius: float = RADIUS) -> tuple[Tensor, Tensor]:
    """Positions (T, N, 2) and velocities (T, N, 2) from initial positions/velocities (N, 2) (float64)."""
    p, v = p0.double().clone(), v0.double().clone()
    ps, vs = [], []
    for _ in range(frames):
        ps.append(p.clone())
        vs.append(v.clone())
        p, v = reflect(p + v, v, size, radius)
    return torch.stack(ps), torch.stack(vs)


def render(positions: Tensor, size: int = SIZE, radius: float = RADIUS) -> Tensor:
    """Frames (3, T, size, size) in [-1, 1] from positions (T, N <= 3, 2); a NaN position draws nothing."""
    t, n, _ = positions.shape
    if n > 3:
        raise ConfigError("balls", f"at most 3 balls (one per colour channel), got {n}")
    centres = torch.arange(size, dtype=torch.float64) + 0.5
    frames = torch.full((3, t, size, size), -1.0, dtype=torch.float64)
    for k in range(n):
        dx = centres[None, None, :] - positions[:, k, 0, None, None]  # (T, 1, W)
        dy = centres[None, :, None] - positions[:, k, 1, None, None]  # (T, H, 1)
        cover = (radius + 0.5 - torch.sqrt(dx**2 + dy**2)).clamp(0, 1).nan_to_num(0.0)  # (T, H, W)
        frames[k] = -1 + 2 * cover
    return frames.float()


def start_state(index: int, speed: float) -> tuple[Tensor, Tensor]:
    """Position and velocity (2,) float64 of start state `index` (into `START_STATES`) at `speed`."""
    x, y, sx, sy = START_STATES[index]
    return torch.tensor([x, y], dtype=torch.float64), torch.tensor([sx * speed, sy * speed], dtype=torch.float64)


def check_timeline(timeline: Timeline, blocks: int | None = None) -> list[tuple[int, Prompt]]:
    """The parsed timeline; it must start at block 0 and switch at increasing blocks (< `blocks`)."""
    if not timeline or timeline[0][0] != 0:
        raise ConfigError("prompt", f"a toy prompt timeline starts at block 0, got {list(timeline)!r}")
    ats = [at for at, _ in timeline]
    if any(b <= a for a, b in itertools.pairwise(ats)) or (blocks is not None and ats[-1] >= blocks):
        raise ConfigError("prompt", f"toy prompt switches must be at increasing blocks < {blocks}, got {ats}")
    return [(at, parse_prompt(text)) for at, text in timeline]


def prompt_per_frame(timeline: Timeline, frames: int) -> list[Prompt]:
    """The prompt in force at every frame."""
    parsed = check_timeline(timeline)
    return [next(p for at, p in reversed(parsed) if at * FRAMES_PER_BLOCK <= t) for t in range(frames)]


def roll(timeline: Timeline, frames: int, starts: Sequence[Sequence[int]],
         size: int = SIZE, radius: float = RADIUS) -> Clip:
    """The clip of `timeline` whose balls take start states ``starts[ball]`` (one index into `START_STATES`
    per appearance of that ball, in order). `make_clip` draws them at random; the toy training picks them
    with the exact ODE."""
    prompts = prompt_per_frame(timeline, frames)
    pos = torch.full((frames, 3, 2), float("nan"), dtype=torch.float64)
    vel = torch.full((frames, 3, 2), float("nan"), dtype=torch.float64)
    for k in range(3):
        used = 0
        for t, pr in enumerate(prompts):
            if not pr.balls[k]:
                continue
            if t == 0 or not prompts[t - 1].balls[k]:  # the ball appears: a fresh start state
                if used >= len(starts[k]):
                    raise ConfigError("starts", f"ball {k} appears {used + 1} times but has {len(starts[k])} start states")
                pos[t, k], vel[t, k] = start_state(starts[k][used], pr.speed)
                used += 1
                continue
            v = vel[t - 1, k].sign() * pr.speed  # the direction it had, at this frame's speed
            pos[t, k], vel[t, k] = reflect(pos[t - 1, k] + v, v, size, radius)
    present = ~pos[..., 0].isnan()
    return Clip(render(pos, size, radius), pos, vel, present)


def appearances(timeline: Timeline, frames: int) -> list[list[int]]:
    """Per ball, the frames where it appears (starts fresh): frame 0 and switch frames."""
    prompts = prompt_per_frame(timeline, frames)
    return [[t for t, pr in enumerate(prompts) if pr.balls[k] and (t == 0 or not prompts[t - 1].balls[k])]
            for k in range(3)]


def make_clip(seed: int, timeline: Timeline | str = "", frames: int = 24) -> Clip:
    """A random clip of a prompt (or a timeline): every appearance takes a uniform random start state."""
    timeline = [(0, timeline)] if isinstance(timeline, str) else list(timeline)
    g = torch.Generator().manual_seed(seed)
    starts = [torch.randint(len(START_STATES), (len(a),), generator=g).tolist() for a in appearances(timeline, frames)]
    return roll(timeline, frames, starts)


def ball_present(frames: Tensor, threshold: float = 0.0, min_mass: float = 1.5) -> Tensor:
    """Per frame and channel, whether a ball is visible: (T, 3) bool (mass of pixels above `threshold`)."""
    w = (frames.float() - threshold).clamp(min=0) / (1 - threshold)  # (3, T, H, W) in [0, 1]
    return (w.sum(dim=(2, 3)) >= min_mass).T


def find_balls(frames: Tensor, threshold: float = 0.0) -> Tensor:
    """Ball centroids (T, 3, 2) as (x, y) pixels from frames (3, T, H, W): per colour channel, the centroid
    of the pixels above `threshold`, weighted by how far above. NaN where a channel has no such pixel."""
    _, _, h, w = frames.shape
    wt = (frames.double() - threshold).clamp(min=0)  # (3, T, H, W)
    mass = wt.sum(dim=(2, 3))  # (3, T)
    xs = torch.arange(w, dtype=torch.float64) + 0.5
    ys = torch.arange(h, dtype=torch.float64) + 0.5
    cx = (wt.sum(dim=2) * xs).sum(-1) / mass  # (3, T)
    cy = (wt.sum(dim=3) * ys).sum(-1) / mass
    out = torch.stack([cx, cy], dim=-1).permute(1, 0, 2)  # (T, 3, 2)
    return torch.where((mass > 0).T[..., None], out, torch.full_like(out, float("nan")))
