"""Streaming metrics from per-block times: one FPS vocabulary for every prediction, measurement and page.

The simulator, every executor's summary, ``cascade validate``, the serve page and the docs use these words
and only these, so "FPS" means the same thing in a prediction and in the measurement it is checked against
(docs/concepts.md, "Which FPS?", sets them beside the peers' definitions). Times are seconds from the
*request*: the prompt handed to a loaded model (loading weights and compiling come before it; encoding the
prompt is part of it).

- *denoised(b)*: when block b's last denoise stage (``schedule.decode_ready_tick(b)``) ends, its sampler
  step included: b's clean latent exists.
- *decoded(b)*: when b's frames are decoded (shown); the decoder takes blocks in order, so it is a chain.
  Equal to denoised(b) where decoding is not modelled or not run.
- **first-frame latency** (``first_frame_s``): decoded(0), from the request.
- ``end_s``: when the last frame is shown (or the run ends, if later): never before the first frame.
- *steady state*: with W = the schedule's most blocks in flight and w the attention window in blocks,
  the intervals ending at blocks ``max(W, w) .. B-W``: the first W blocks fill the pipeline, the first w
  fill the window (a block attends to fewer blocks until then) and the last W-1 drain it. With an
  unbounded window the rule uses W alone. A run too short to leave one such interval
  (:func:`steady_minimum` blocks) has **no steady state**: its FPS figures are NaN here and ``null`` in
  JSON, and every summary says so (:func:`no_steady_state`) instead of printing a number.
- **delivered FPS** (``delivered_fps``): decoded video frames over wall time in steady state, decoding
  included: ``frames x n / (decoded(hi) - decoded(lo - 1))`` over the n steady intervals ``lo .. hi``
  (the mean rate). What a viewer gets; the planner ranks by it.
- **denoise FPS** (``denoise_fps``): the Block Cascading paper's figure, "time to denoise a block":
  ``frames`` (12 = 4 x 3 latent frames) over the *median* steady-state interval between consecutive
  denoised(b); decoding excluded.
- *interval_pXX_s*: percentiles (linear interpolation) of the steady-state intervals between consecutive
  decoded(b), what a viewer sees; their spread is the jitter.
- *switch stall*: at a prompt switch at block p, the largest interval among the blocks the switch can
  touch against the steady median interval (:func:`switch_stalls` has the exact definition).

``fps`` and ``paper_fps``, the names these figures had before, stay in the JSON beside the new ones (the
same values) for scripts that read them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

DELIVERED = "delivered FPS"
DENOISE = "denoise FPS"
FIRST_FRAME = "first frame"


def video_frames(block: int, frames_per_block: int = 3, temporal_stride: int = 4) -> int:
    """Video frames a block decodes to: the Wan VAE makes ``1 + 4 * (F - 1)`` for the first, ``4F`` after.

    >>> video_frames(0), video_frames(1)
    (9, 12)
    """
    if block == 0:
        return 1 + temporal_stride * (frames_per_block - 1)
    return temporal_stride * frames_per_block


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between order statistics (numpy's default); NaN when empty.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50), percentile([5.0], 99), percentile([], 50)
    (2.5, 5.0, nan)
    """
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def steady_range(num_blocks: int, max_in_flight: int, window: int | None = None) -> range:
    """The blocks whose interval from the previous block counts as steady state (module docstring);
    empty when the run is too short to have one.

    >>> steady_range(32, 5), steady_range(32, 5, 7), steady_range(4, 5), steady_range(1, 1)
    (range(5, 28), range(7, 28), range(5, 0), range(1, 1))
    """
    w = max(1, max_in_flight)
    return range(max(w, window or 0, 1), num_blocks - w + 1)


def steady_minimum(max_in_flight: int, window: int | None = None) -> int:
    """The fewest blocks that leave one steady-state interval: ``max(W, w) + W``.

    >>> steady_minimum(1), steady_minimum(1, 7), steady_minimum(5), steady_minimum(5, 7)
    (2, 8, 10, 12)
    """
    w = max(1, max_in_flight)
    return max(w, window or 0, 1) + w


def no_steady_state(num_blocks: int, max_in_flight: int, window: int | None = None) -> str:
    """Why a run has no steady state, in one clause for a summary; ``""`` when it has one.

    >>> no_steady_state(8, 5, 7)
    'no steady state in 8 blocks: 5 blocks in flight fill and drain the pipeline and the window of 7 fills; give --blocks 12 or more'
    >>> no_steady_state(32, 5, 7)
    ''
    """
    if len(steady_range(num_blocks, max_in_flight, window)):
        return ""
    w = max(1, max_in_flight)
    why = [f"{w} blocks in flight fill and drain the pipeline" if w > 1 else "the first block has no interval"]
    if window and window > w:
        why.append(f"the window of {window} fills")
    return (f"no steady state in {num_blocks} block{'s' * (num_blocks != 1)}: {' and '.join(why)}; "
            f"give --blocks {steady_minimum(max_in_flight, window)} or more")


def _json_number(x: float) -> float | None:
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class StreamMetrics:
    """FPS, latency and jitter of one run (see the module docstring for the exact definitions). Without a
    steady state (``steady`` False) the FPS and interval figures are NaN and ``no_steady`` says why."""

    delivered_fps: float
    denoise_fps: float
    first_frame_s: float
    end_s: float
    interval_p50_s: float
    interval_p95_s: float
    interval_p99_s: float
    steady_blocks: tuple[int, int]  # first and last block whose interval counts (inclusive); (0, 0): none
    no_steady: str = ""  # why there is no steady state ("" when there is one)

    @property
    def steady(self) -> bool:
        """Whether the run had a steady state (and so FPS figures)."""
        return not self.no_steady

    @property
    def makespan_s(self) -> float:
        """``end_s`` by its older name."""
        return self.end_s

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN becomes null; ``fps``, ``paper_fps`` and ``makespan_s`` repeat the figures under
        their older names."""
        out: dict[str, Any] = {
            "delivered_fps": _json_number(self.delivered_fps),
            "denoise_fps": _json_number(self.denoise_fps),
            "first_frame_s": self.first_frame_s,
            "end_s": self.end_s,
            "steady": self.steady,
            "no_steady_state": self.no_steady or None,
            "steady_blocks": list(self.steady_blocks) if self.steady else None,
            "interval_p50_s": _json_number(self.interval_p50_s),
            "interval_p95_s": _json_number(self.interval_p95_s),
            "interval_p99_s": _json_number(self.interval_p99_s),
        }
        out.update(fps=out["delivered_fps"], paper_fps=out["denoise_fps"], makespan_s=self.end_s)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StreamMetrics:
        """The metrics :meth:`to_dict` wrote (other keys ignored).

        >>> m = stream_metrics([1.0, 2.0, 3.0])
        >>> StreamMetrics.from_dict(m.to_dict()) == m, StreamMetrics.from_dict(stream_metrics([1.0]).to_dict()).steady
        (True, False)
        """
        def num(key: str) -> float:
            value = data.get(key)
            return math.nan if value is None else float(value)

        blocks = data.get("steady_blocks") or (0, 0)
        return cls(num("delivered_fps"), num("denoise_fps"), float(data["first_frame_s"]), float(data["end_s"]),
                   num("interval_p50_s"), num("interval_p95_s"), num("interval_p99_s"),
                   (int(blocks[0]), int(blocks[1])), data.get("no_steady_state") or "")

    def summary_lines(self, indent: str = "  ") -> list[str]:
        """The figures, each named with what it counts, for a command's summary; a run without a steady
        state says so instead of printing an FPS.

        >>> print("\\n".join(stream_metrics([1.0, 2.0, 3.0, 4.0]).summary_lines()))
          delivered FPS 12.00: decoded frames over wall time, steady state (blocks 1..3), decoding included
          denoise FPS 12.00: a block's frames over the median time to denoise one, decoding excluded (the paper's)
          first frame 1.000 s from the request (prompt encoding included); end 4.000 s
          interval between blocks shown p50 1000.0 ms, p95 1000.0 ms, p99 1000.0 ms
        >>> print("\\n".join(stream_metrics([1.0]).summary_lines()))
          FPS: none, no steady state in 1 block: the first block has no interval; give --blocks 2 or more
          first frame 1.000 s from the request (prompt encoding included); end 1.000 s
        """
        if self.steady:
            lo, hi = self.steady_blocks
            lines = [f"{indent}{DELIVERED} {self.delivered_fps:.2f}: decoded frames over wall time, steady state "
                     f"(blocks {lo}..{hi}), decoding included",
                     f"{indent}{DENOISE} {self.denoise_fps:.2f}: a block's frames over the median time to denoise "
                     "one, decoding excluded (the paper's)"]
        else:
            lines = [f"{indent}FPS: none, {self.no_steady}"]
        lines.append(f"{indent}{FIRST_FRAME} {self.first_frame_s:.3f} s from the request (prompt encoding "
                     f"included); end {self.end_s:.3f} s")
        if self.steady:
            lines.append(f"{indent}interval between blocks shown p50 {self.interval_p50_s * 1e3:.1f} ms, p95 "
                         f"{self.interval_p95_s * 1e3:.1f} ms, p99 {self.interval_p99_s * 1e3:.1f} ms")
        return lines


def stream_metrics(
    denoised: Sequence[float],
    decoded: Sequence[float] | None = None,
    *,
    max_in_flight: int = 1,
    window: int | None = None,
    frames: int = 12,
    end_s: float | None = None,
) -> StreamMetrics:
    """The metrics of one run from denoised(b) and decoded(b) (None: decoding not modelled), in seconds
    from the request; ``end_s``: when the run ended, if after the last frame shown.

    >>> m = stream_metrics([1.0, 2.0, 3.0, 4.0])
    >>> m.denoise_fps, m.delivered_fps, m.first_frame_s, m.steady_blocks
    (12.0, 12.0, 1.0, (1, 3))
    >>> stream_metrics([1.0]).steady, stream_metrics([1.0, 1.0, 1.0]).delivered_fps
    (False, inf)
    """
    shown = list(denoised if decoded is None else decoded)
    n = len(shown)
    if n == 0 or len(denoised) != n:
        raise ValueError(f"need one time per block in both lists, got {len(denoised)} and {n}")
    steady = steady_range(n, max_in_flight, window)
    nan = math.nan
    fps = paper = nan
    gaps: list[float] = []
    blocks = (0, 0)
    if len(steady):
        lo, hi = steady[0], steady[-1]
        gaps = [shown[b] - shown[b - 1] for b in steady]
        med = percentile([denoised[b] - denoised[b - 1] for b in steady], 50)
        span = shown[hi] - shown[lo - 1]
        fps = frames * len(steady) / span if span > 0 else math.inf
        paper = frames / med if med > 0 else math.inf
        blocks = (lo, hi)
    return StreamMetrics(
        delivered_fps=fps,
        denoise_fps=paper,
        first_frame_s=shown[0],
        end_s=max(max(shown), end_s or 0.0),
        interval_p50_s=percentile(gaps, 50),
        interval_p95_s=percentile(gaps, 95),
        interval_p99_s=percentile(gaps, 99),
        steady_blocks=blocks,
        no_steady=no_steady_state(n, max_in_flight, window),
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
      touches; when every steady interval is touched, the median of all steady-state intervals; a run too
      short for a steady state uses its intervals 1 .. B-1 in their place (the pipeline's filling and
      draining included: a rougher baseline, but the stall a short run shows is still measured);
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
    steady = steady_range(n, max_in_flight, window) or range(1, n)  # too short for a steady state: every interval
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
