"""A procedural video world for the toy model: coloured balls moving at constant velocity and bouncing
elastically off the walls of a small frame, with ground-truth positions for every frame.

- Frames are ``size x size`` RGB (default 16 x 16), values in [-1, 1]: background -1 (black).
- Ball k (k < 3) lives in colour channel k only (red, green, blue), so balls never occlude one another
  and each is found again in its own channel. A ball is an anti-aliased disc of radius `radius` pixels:
  channel value ``-1 + 2 * clamp(radius + 0.5 - distance, 0, 1)`` at each pixel centre.
- Motion: position p (x, y) in pixel units (pixel centres are at 0.5, 1.5, ...), velocity v per frame;
  each frame ``p += v``, and a coordinate that leaves ``[radius, size - radius]`` is reflected back inside
  and its velocity component flips sign (elastic bounce). Speeds are 0.4 .. 1.0 pixel per frame per axis.

The latent space of the toy model *is* this pixel space: a block's latent is (3, F, size, size).

>>> clip = make_clip(0, frames=6)
>>> clip.frames.shape, clip.positions.shape
(torch.Size([3, 6, 16, 16]), torch.Size([6, 3, 2]))
>>> bool(torch.allclose(find_balls(clip.frames), clip.positions, atol=0.3))
True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cascade_sched.errors import ConfigError

__all__ = ["COLOURS", "Clip", "ball_present", "find_balls", "make_batch", "make_clip", "render", "simulate"]

COLOURS = ("red", "green", "blue")  # ball k is drawn in channel k
SIZE = 16
RADIUS = 2.0
SPEED = (0.4, 1.0)  # pixels per frame, per axis (uniform magnitude, random sign)


@dataclass
class Clip:
    """One video of the toy world: frames (3, T, H, W) in [-1, 1], positions (T, balls, 2) as (x, y)."""

    frames: Tensor
    positions: Tensor
    velocities: Tensor  # (T, balls, 2): the velocity each ball moves with from frame t to frame t+1


def simulate(p0: Tensor, v0: Tensor, frames: int, size: int = SIZE, radius: float = RADIUS) -> tuple[Tensor, Tensor]:
    """Positions (T, N, 2) and velocities (T, N, 2) from initial positions/velocities (N, 2) (float64)."""
    lo, hi = radius, size - radius
    p, v = p0.double().clone(), v0.double().clone()
    ps, vs = [], []
    for _ in range(frames):
        ps.append(p.clone())
        vs.append(v.clone())
        p = p + v
        below, above = p < lo, p > hi
        p = torch.where(below, 2 * lo - p, p)
        p = torch.where(above, 2 * hi - p, p)
        v = torch.where(below | above, -v, v)
    return torch.stack(ps), torch.stack(vs)


def render(positions: Tensor, size: int = SIZE, radius: float = RADIUS) -> Tensor:
    """Frames (3, T, size, size) in [-1, 1] from positions (T, N <= 3, 2)."""
    t, n, _ = positions.shape
    if n > 3:
        raise ConfigError("balls", f"at most 3 balls (one per colour channel), got {n}")
    centres = torch.arange(size, dtype=torch.float64) + 0.5
    frames = torch.full((3, t, size, size), -1.0, dtype=torch.float64)
    for k in range(n):
        dx = centres[None, None, :] - positions[:, k, 0, None, None]  # (T, 1, W)
        dy = centres[None, :, None] - positions[:, k, 1, None, None]  # (T, H, 1)
        cover = (radius + 0.5 - torch.sqrt(dx**2 + dy**2)).clamp(0, 1)  # (T, H, W)
        frames[k] = -1 + 2 * cover
    return frames.float()


def make_clip(seed: int, frames: int = 18, balls: int = 3, size: int = SIZE, radius: float = RADIUS) -> Clip:
    """A random clip: initial positions uniform inside the walls, speeds uniform in SPEED with random signs."""
    if not 1 <= balls <= 3:
        raise ConfigError("balls", f"`balls` must be 1..3, got {balls}")
    g = torch.Generator().manual_seed(seed)
    p0 = radius + torch.rand(balls, 2, generator=g, dtype=torch.float64) * (size - 2 * radius)
    mag = SPEED[0] + torch.rand(balls, 2, generator=g, dtype=torch.float64) * (SPEED[1] - SPEED[0])
    sign = torch.where(torch.rand(balls, 2, generator=g) < 0.5, -1.0, 1.0).double()
    pos, vel = simulate(p0, mag * sign, frames, size, radius)
    return Clip(render(pos, size, radius), pos, vel)


def make_batch(seeds: list[int], frames: int, balls: int = 3) -> Tensor:
    """Frames of several clips stacked: (len(seeds), 3, T, H, W)."""
    return torch.stack([make_clip(s, frames, balls).frames for s in seeds])


def ball_present(frames: Tensor, threshold: float = 0.0, min_mass: float = 1.5) -> Tensor:
    """Per frame and channel, whether a ball is visible: (T, 3) bool (mass of pixels above `threshold`)."""
    w = ((frames.float() - threshold).clamp(min=0) / (1 - threshold))  # (3, T, H, W) in [0, 1]
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
