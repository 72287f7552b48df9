"""Streaming metrics from per-block completion times: one definition for predicted and measured runs.

The simulator and every executor call :func:`stream_metrics`, so "FPS" means the same thing in a
prediction and in the measurement it is checked against.

Definitions (times in seconds from the run's start):

- a block *finishes denoising* at the end of its last denoise stage (its decode-ready tick), and is
  *shown* when its frames are decoded (equal to the former when decoding is not modelled);
- *steady state* starts once the pipeline is full: intervals between consecutive blocks ``b-1, b`` with
  ``b >= warmup`` where ``warmup`` is the number of blocks in flight at once (at least 1); with too few
  blocks, every interval counts;
- ``paper_fps``: the paper's FPS, ``4 * frames_per_block`` video frames (12) over the median steady
  interval between blocks finishing their denoising, decoding excluded;
- ``fps``: video frames shown per second in steady state, decoding included: the steady blocks' video
  frames over the time from the last pre-steady block shown to the last block shown;
- ``first_frame_s``: when the first block is shown; ``interval_p50/p95/p99_s``: percentiles of the steady
  intervals between blocks being shown (the jitter a viewer sees).
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
    """Linear-interpolated percentile ``q`` in [0, 100] (numpy's default method), NaN when empty.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
    2.5
    """
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


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
    warmup_blocks: int
    video_frames: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stream_metrics(
    denoised_s: Sequence[float],
    shown_s: Sequence[float] | None = None,
    *,
    frames_per_block: int = 3,
    warmup: int = 1,
    makespan_s: float | None = None,
) -> StreamMetrics:
    """Metrics from each block's denoise-finish time and (optionally) its shown (decoded) time.

    >>> m = stream_metrics([1.0, 2.0, 3.0, 4.0], warmup=1)
    >>> m.paper_fps, m.fps, m.first_frame_s
    (12.0, 12.0, 1.0)
    """
    shown = list(denoised_s if shown_s is None else shown_s)
    n = len(shown)
    if n == 0 or len(denoised_s) != n:
        raise ValueError(f"need one time per block in both lists, got {len(denoised_s)} and {n}")
    w = max(1, min(warmup, n - 1)) if n > 1 else 1
    den = [denoised_s[b] - denoised_s[b - 1] for b in range(w, n)] or [denoised_s[0]]
    gaps = [shown[b] - shown[b - 1] for b in range(w, n)] or [shown[0]]
    frames = sum(video_frames(b, frames_per_block) for b in range(n))
    if n > 1:
        steady_frames = sum(video_frames(b, frames_per_block) for b in range(w, n))
        span = shown[-1] - shown[w - 1]
    else:
        steady_frames, span = frames, shown[0]
    med = percentile(den, 50)
    return StreamMetrics(
        fps=steady_frames / span if span > 0 else math.inf,
        paper_fps=4 * frames_per_block / med if med > 0 else math.inf,
        first_frame_s=shown[0],
        makespan_s=max(shown[-1], makespan_s or 0.0),
        interval_p50_s=percentile(gaps, 50),
        interval_p95_s=percentile(gaps, 95),
        interval_p99_s=percentile(gaps, 99),
        warmup_blocks=w,
        video_frames=frames,
    )
