"""Streaming metrics from per-block times: one definition for predicted and measured runs.

The simulator and every executor call :func:`stream_metrics`, so "FPS" means the same thing in a
prediction and in the measurement it is checked against. Times are seconds from the run's start.

- *denoised(b)*: when block b's last denoise stage (``schedule.decode_ready_tick(b)``) ends, its sampler
  step included: b's clean latent exists.
- *decoded(b)*: when b's frames are decoded (shown); the decoder takes blocks in order, so it is a chain.
  Equal to denoised(b) where decoding is not modelled or not run.
- *first_frame_s*: decoded(0).
- *steady state*: with W = the schedule's most blocks in flight and w the attention window in blocks,
  the intervals ending at blocks ``max(W, w) .. B-W``: the first W blocks fill the pipeline, the first w
  fill the window (a block attends to fewer blocks until then) and the last W-1 drain it. With an
  unbounded window the rule uses W alone. When it leaves no interval, every interval (blocks 1 .. B-1)
  counts; with one block there is none.
- *fps*: video frames per second delivered in steady state, decoding included:
  ``frames x n / (decoded(hi) - decoded(lo - 1))`` over the n steady intervals ``lo .. hi`` (the mean
  rate). With one block: first-block frames / decoded(0).
- *paper_fps*: the paper's definition: ``frames`` (12 = 4 x 3 latent frames) over the *median*
  steady-state interval between consecutive denoised(b), decoding excluded.
- *interval_pXX_s*: percentiles (linear interpolation) of the steady-state intervals between consecutive
  decoded(b), what a viewer sees; their spread is the jitter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


def video_frames(block: int, frames_per_block: int = 3, temporal_stride: int = 4) -> int:
    """Video frames a block decodes to: the Wan VAE makes ``1 + 4 * (F - 1)`` for the first, ``4F`` after.

    >>> video_frames(0), video_frames(1)
    (9, 12)
    """
    if block == 0:
        return 1 + temporal_stride * (frames_per_block - 1)
    return temporal_stride * frames_per_block


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between order statistics (numpy's default); 0.0 when empty.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50), percentile([5.0], 99)
    (2.5, 5.0)
    """
    if not values:
        return 0.0
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def steady_range(num_blocks: int, max_in_flight: int, window: int | None = None) -> range:
    """The blocks whose interval from the previous block counts as steady state (module docstring).

    >>> steady_range(32, 5), steady_range(32, 5, 7), steady_range(4, 5), steady_range(1, 1)
    (range(5, 28), range(7, 28), range(1, 4), range(1, 1))
    """
    w = max(1, max_in_flight)
    r = range(max(w, window or 0), num_blocks - w + 1)
    return r if len(r) > 0 else range(1, num_blocks)


@dataclass(frozen=True)
class StreamMetrics:
    """FPS, latency and jitter of one run (see the module docstring for the exact definitions)."""

    fps: float
    paper_fps: float
    first_frame_s: float
    makespan_s: float
    interval_p50_s: float
    interval_p95_s: float
    interval_p99_s: float
    steady_blocks: tuple[int, int]  # first and last block whose interval counts (inclusive)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["steady_blocks"] = list(self.steady_blocks)
        return out


def stream_metrics(
    denoised: Sequence[float],
    decoded: Sequence[float] | None = None,
    *,
    max_in_flight: int = 1,
    window: int | None = None,
    frames: int = 12,
    first_frames: int = 9,
    makespan_s: float | None = None,
) -> StreamMetrics:
    """The metrics of one run from denoised(b) and decoded(b) (None: decoding not modelled).

    >>> m = stream_metrics([1.0, 2.0, 3.0, 4.0])
    >>> m.paper_fps, m.fps, m.first_frame_s, m.steady_blocks
    (12.0, 12.0, 1.0, (1, 3))
    """
    shown = list(denoised if decoded is None else decoded)
    n = len(shown)
    if n == 0 or len(denoised) != n:
        raise ValueError(f"need one time per block in both lists, got {len(denoised)} and {n}")
    steady = steady_range(n, max_in_flight, window)
    if len(steady):
        lo, hi = steady[0], steady[-1]
        gaps = [shown[b] - shown[b - 1] for b in steady]
        med = percentile([denoised[b] - denoised[b - 1] for b in steady], 50)
        span = shown[hi] - shown[lo - 1]
        fps = frames * len(steady) / span if span > 0 else math.inf
        paper = frames / med if med > 0 else math.inf
        blocks = (lo, hi)
    else:
        gaps = []
        fps = first_frames / shown[0] if shown[0] > 0 else math.inf
        paper = frames / denoised[0] if denoised[0] > 0 else math.inf
        blocks = (0, 0)
    return StreamMetrics(
        fps=fps,
        paper_fps=paper,
        first_frame_s=shown[0],
        makespan_s=max(shown[-1], makespan_s or 0.0),
        interval_p50_s=percentile(gaps, 50),
        interval_p95_s=percentile(gaps, 95),
        interval_p99_s=percentile(gaps, 99),
        steady_blocks=blocks,
    )
