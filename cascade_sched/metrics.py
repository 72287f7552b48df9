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
- *switch stall*: at a prompt switch at block p, the largest interval among the blocks the switch can
  touch against the steady median interval (:func:`switch_stalls` has the exact definition).
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


@dataclass(frozen=True)
class SwitchStall:
    """The stall a prompt switch causes (see :func:`switch_stalls` for the exact definition)."""

    at_block: int  # p: the first block under the new prompt
    worst_block: int  # the block whose interval (from the block before it) is the largest around p
    interval_s: float  # that largest interval
    steady_s: float  # the steady median interval it is held against
    stall_s: float  # interval_s - steady_s: how much longer the viewer waits than usual
    ratio: float  # interval_s / steady_s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def switch_touched(at_block: int, num_blocks: int, max_in_flight: int) -> range:
    """The blocks whose interval a switch at ``at_block`` can change: ``p - W + 1 .. p + W - 1``, clipped
    to ``1 .. B - 1`` (W = most blocks in flight).

    >>> switch_touched(6, 12, 1), switch_touched(6, 12, 5), switch_touched(1, 4, 5)
    (range(6, 7), range(2, 11), range(1, 4))
    """
    w = max(1, max_in_flight)
    return range(max(1, at_block - w + 1), min(num_blocks - 1, at_block + w - 1) + 1)


def switch_stalls(
    denoised: Sequence[float],
    decoded: Sequence[float] | None,
    switches_at_blocks: Sequence[int],
    *,
    max_in_flight: int = 1,
    window: int | None = None,
) -> list[SwitchStall]:
    """The stall at every prompt switch, from per-block times (one definition for predicted and measured).

    Definitions (times as in the module docstring; *shown(b)* = decoded(b), or denoised(b) when
    ``decoded`` is None; *interval(b)* = shown(b) - shown(b - 1) for b >= 1; W = ``max_in_flight``):

    - the blocks a switch at block p can *touch* are ``p - W + 1 .. p + W - 1`` clipped to ``1 .. B-1``
      (:func:`switch_touched`): the intervals ending at p .. p + W - 1 are those of the first W blocks
      under the new prompt, and with W blocks in flight a recache pass inserted before block p also
      delays the blocks p - W + 1 .. p - 1 still being denoised at that tick (with W = 1, the
      sequential baseline, the touched set is exactly {p});
    - *steady_s*: the median of the steady-state intervals (:func:`steady_range`) that no switch
      touches; when every steady interval is touched, the median of all steady-state intervals;
    - *interval_s*: the largest touched interval (*worst_block* the first block that has it);
    - *stall_s* = interval_s - steady_s (it can be slightly negative in a measurement when nothing
      stalls and the touched intervals happen to be fast); *ratio* = interval_s / steady_s.

    A switch at block 0 (no block before it) and a run of one block give no entry.

    >>> [s.stall_s for s in switch_stalls([1.0, 2.0, 3.0, 5.0, 6.0, 7.0], None, [3])]
    [1.0]
    """
    shown = list(denoised if decoded is None else decoded)
    n = len(shown)
    if len(denoised) != n:
        raise ValueError(f"need one time per block in both lists, got {len(denoised)} and {n}")
    touched = {p: switch_touched(p, n, max_in_flight) for p in switches_at_blocks if 1 <= p < n}
    hit = {b for r in touched.values() for b in r}
    steady = steady_range(n, max_in_flight, window)
    gaps = [shown[b] - shown[b - 1] for b in steady if b not in hit]
    if not gaps:
        gaps = [shown[b] - shown[b - 1] for b in steady]
    med = percentile(gaps, 50)
    out = []
    for p, blocks in touched.items():
        worst = max(blocks, key=lambda b: (shown[b] - shown[b - 1], -b))
        interval = shown[worst] - shown[worst - 1]
        out.append(SwitchStall(p, worst, interval, med, interval - med,
                               interval / med if med > 0 else math.inf))
    return out
