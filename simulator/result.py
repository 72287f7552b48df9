"""``SimResult``: what one simulated run predicts.

The metrics are computed by :func:`cascade_sched.metrics.stream_metrics`, shared with the executors so a
prediction and a measurement mean the same thing. Definitions (simulated time in seconds from the run's start, all devices idle with weights loaded):

- *denoised(b)*: the end of the batch that runs block b's last denoise stage
  (``schedule.decode_ready_tick(b)``), its sampler step included: b's clean latent exists.
- *decoded(b)*: the end of b's VAE decoding; the decoder takes blocks in order, so it is a chain.
- *first_frame_s*: decoded(0), when the first video frames (9 for the Wan VAE) can be shown.
- *steady state*: with W = the schedule's most blocks in flight and w the attention window in blocks,
  the intervals ending at blocks ``max(W, w) .. B-W``: the first W blocks fill the pipeline, the first w
  fill the window (a block attends to fewer blocks until then) and the last W-1 drain the pipeline.
  With an unbounded window the cost of a block keeps growing and the rule uses W alone. When the rule
  leaves no interval, every interval (blocks 1 .. B-1) counts; with one block there is none.
- *fps*: video frames per second delivered in steady state, decoding included:
  ``video_frames x n / (decoded(hi) - decoded(lo - 1))`` over the n steady intervals ``lo .. hi``
  (the mean rate). With one block: first-block frames / decoded(0).
- *paper_fps*: the paper's definition: ``video_frames`` (12 = 4 x 3 latent frames) over the *median*
  steady-state interval between consecutive denoised(b), decoding excluded.
- *interval_pXX_s*: percentiles (linear interpolation) of the steady-state intervals between consecutive
  decoded(b), what a viewer sees; *jitter_s* = p99 - p50.
- *switch_stalls*: per prompt switch at block p >= 1 (:func:`cascade_sched.metrics.switch_stalls`): the
  largest interval between consecutive decoded(b) among the blocks ``p - W + 1 .. p + W - 1`` the switch
  can touch (W = most blocks in flight), its excess over the median steady-state interval (``stall_s``)
  and their ratio.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cascade_sched.metrics import SwitchStall
    from cascade_sched.schedule import KVRef
    from simulator.memory import MemoryReport
    from simulator.workload import Workload


@dataclass
class Timeline:
    """The raw simulated times, kept for traces and Gantt charts (indices follow the workload)."""

    workload: Workload
    batch_start: list[float]  # forward start (the gang's start for a joint tick)
    batch_compute_end: list[float]  # this device's own forward end
    batch_end: list[float]  # after the gang's exchange and the sampler steps
    gang_comm: dict[int, tuple[float, float]]  # tick -> (start, seconds) of the exposed exchange
    transfer_span: list[tuple[float, float]]
    decode_span: list[tuple[float, float]]


@dataclass
class SimResult:
    """The predictions of one simulated run (see the module docstring for every definition)."""

    model: str
    cluster: str
    cost: str  # the cost model's name: profile, roofline, baseline-fps, uniform
    cost_source: str  # where its numbers came from
    spec: dict[str, Any]
    decode_device: str
    overlap: bool
    fits: bool
    makespan_s: float
    fps: float
    paper_fps: float
    first_frame_s: float
    interval_p50_s: float
    interval_p95_s: float
    interval_p99_s: float
    steady_blocks: tuple[int, int]  # first and last block whose interval counts (inclusive)
    switch_stalls: tuple[SwitchStall, ...]  # one per prompt switch at a block >= 1
    block_started_s: tuple[float, ...]
    block_denoised_s: tuple[float, ...]
    block_committed_s: tuple[float, ...]
    block_decoded_s: tuple[float, ...]
    device_busy_s: tuple[float, ...]  # per device; the last entry is the decoder when it has its own GPU
    device_comm_s: tuple[float, ...]
    bytes_by_link: dict[str, int]
    bytes_by_kind: dict[str, int]
    peak_memory_bytes: tuple[int, ...]
    memory_capacity_bytes: int
    num_tasks: int
    executed: tuple[KVRef, ...] = field(repr=False, default=())
    memory: MemoryReport | None = field(repr=False, default=None)
    timeline: Timeline | None = field(repr=False, default=None)

    @property
    def jitter_s(self) -> float:
        """p99 - p50 of the steady-state intervals between decoded blocks."""
        return self.interval_p99_s - self.interval_p50_s

    @property
    def bytes_total(self) -> int:
        """Every byte moved between devices."""
        return sum(self.bytes_by_kind.values())

    def shares(self) -> list[dict[str, float]]:
        """Per device: busy (compute, sampling, decoding), communicating (exposed exchange) and idle
        shares of the makespan."""
        out = []
        span = self.makespan_s or 1.0
        for busy, comm in zip(self.device_busy_s, self.device_comm_s, strict=True):
            b, c = busy / span, comm / span
            out.append({"busy": b, "comm": c, "idle": max(0.0, 1.0 - b - c)})
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every metric, per-block and per-device figures, bytes and the provenance."""
        return {
            "model": self.model,
            "cluster": self.cluster,
            "cost": self.cost,
            "cost_source": self.cost_source,
            "spec": self.spec,
            "decode_device": self.decode_device,
            "overlap": self.overlap,
            "fits": self.fits,
            "fps": self.fps,
            "paper_fps": self.paper_fps,
            "makespan_s": self.makespan_s,
            "first_frame_s": self.first_frame_s,
            "interval_p50_s": self.interval_p50_s,
            "interval_p95_s": self.interval_p95_s,
            "interval_p99_s": self.interval_p99_s,
            "jitter_s": self.jitter_s,
            "steady_blocks": list(self.steady_blocks),
            "switch_stalls": [s.to_dict() for s in self.switch_stalls],
            "num_tasks": self.num_tasks,
            "block_started_s": list(self.block_started_s),
            "block_denoised_s": list(self.block_denoised_s),
            "block_committed_s": list(self.block_committed_s),
            "block_decoded_s": list(self.block_decoded_s),
            "devices": [
                {"device": d, "busy_s": b, "comm_s": c, **s}
                for d, (b, c, s) in enumerate(zip(self.device_busy_s, self.device_comm_s, self.shares(), strict=True))
            ],
            "bytes_total": self.bytes_total,
            "bytes_by_kind": self.bytes_by_kind,
            "bytes_by_link": self.bytes_by_link,
            "peak_memory_bytes": list(self.peak_memory_bytes),
            "memory_capacity_bytes": self.memory_capacity_bytes,
        }

    def summary(self) -> str:
        """A few human lines: throughput, latency, jitter, devices, bytes, memory, provenance."""
        gb = 1e9
        lines = [
            f"{self.model} on {self.cluster}; cost {self.cost}; decode on {self.decode_device}",
            f"  FPS {self.fps:.2f} (decoding included)   paper FPS {self.paper_fps:.2f} (denoising only)",
            f"  first frame {self.first_frame_s:.3f} s   makespan {self.makespan_s:.3f} s   "
            f"steady blocks {self.steady_blocks[0]}..{self.steady_blocks[1]}",
            f"  block interval p50 {self.interval_p50_s * 1e3:.1f} ms  p95 {self.interval_p95_s * 1e3:.1f} ms  "
            f"p99 {self.interval_p99_s * 1e3:.1f} ms  (jitter {self.jitter_s * 1e3:.1f} ms)",
        ]
        for st in self.switch_stalls:
            lines.append(f"  switch at block {st.at_block}: stall {st.stall_s * 1e3:.1f} ms (interval "
                         f"{st.interval_s * 1e3:.1f} ms ending at block {st.worst_block} vs steady "
                         f"{st.steady_s * 1e3:.1f} ms, x{st.ratio:.2f})")
        for d, s in enumerate(self.shares()):
            mem = (f"  peak {self.peak_memory_bytes[d] / gb:.1f} of {self.memory_capacity_bytes / gb:.0f} GB"
                   if d < len(self.peak_memory_bytes) else "  (decoder)")
            lines.append(f"  d{d}: busy {s['busy']:.0%}  comm {s['comm']:.0%}  idle {s['idle']:.0%}{mem}")
        kinds = ", ".join(f"{k} {v / gb:.2f} GB" for k, v in self.bytes_by_kind.items())
        lines.append(f"  moved {self.bytes_total / gb:.2f} GB ({kinds})")
        lines.append(f"  costs: {self.cost_source}")
        return "\n".join(lines)
