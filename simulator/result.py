"""``SimResult``: what one simulated run predicts.

The stream metrics are a :class:`cascade_sched.metrics.StreamMetrics`, computed by the one definition the
executors use too (:func:`cascade_sched.metrics.stream_metrics`), so a prediction and a measurement mean
the same thing. Simulated time is in seconds from the run's start (all devices idle, weights loaded):

- *denoised(b)*: the end of the batch that runs block b's last denoise stage, its sampler step included;
- *decoded(b)*: the end of b's decoding (the decoder takes blocks in order: a chain); *first_frame_s* is
  decoded(0), which includes encoding the first prompt;
- *fps* (**delivered**): video frames over the steady-state span of decoded(b), what a viewer gets;
  *paper_fps*: the paper's figure, 12 frames over the *median* steady interval of denoised(b), decoding
  excluded. A run with periodic stalls has a median far above its delivered rate; the planner ranks by
  delivered FPS;
- *interval_pXX_s* and ``interval_max_s``: the distribution of the steady intervals between decoded blocks;
- *gpus*: every GPU the run occupies: the denoising devices plus a decoder GPU of its own;
- per device: its *busy*, *communication* and *bubble* shares of the steady state (:meth:`SimResult.steady_shares`:
  compute, the exchange and hops it waited on or sent on its stream, and the rest: idle while the stream
  runs), and its bottleneck (:meth:`SimResult.device_bottlenecks`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cascade_sched.metrics import StreamMetrics, steady_range

if TYPE_CHECKING:
    from cascade_sched.metrics import SwitchStall
    from cascade_sched.schedule import KVRef
    from simulator.memory import MemoryReport
    from simulator.prices import DecodePlan
    from simulator.workload import Workload

PARTS = ("text", "tick", "forward", "cache", "sample", "exchange", "hop", "encode", "decode", "wait")
"""The parts of a block's time (:meth:`SimResult.decomposition`): ``hop`` is a ring hand-off sent on the
compute stream, ``encode`` the encoding of input video."""
BATCH_NAMES = ("tick", "forward", "cache", "exchange", "sample", "hop", "encode")  # Prices.BATCH_PARTS
COMM_PARTS = ("exchange", "hop")


def window(t0: float, t1: float) -> tuple[float, float]:
    """[t0, t1) moved a float rounding's width earlier: work that starts as a window's edge event ends (a
    batch right after a decode) belongs to the window it starts, however its time was rounded."""
    return t0 - 1e-9 * (abs(t0) + 1e-3), t1 - 1e-9 * (abs(t1) + 1e-3)


@dataclass
class Timeline:
    """The raw simulated times, kept for traces, Gantt charts and the decomposition (indices follow the
    workload)."""

    workload: Workload
    batch_start: list[float]  # forward start (the gang's start for a joint tick)
    batch_compute_end: list[float]  # this device's own forward end
    batch_end: list[float]  # after the gang's exchange and the sampler steps
    gang_comm: dict[int, tuple[float, float]]  # tick -> (start, seconds) of the exposed exchange
    past_span: list[tuple[float, float]]  # per past send: (start, seconds) on the wire
    latent_span: list[tuple[float, float]]
    decode_span: list[tuple[int, float, float]]  # per block: (device, start, seconds)
    text_span: list[tuple[int, float, float]]  # per prompt: (device, start, seconds)
    batch_raw: list[tuple[float, ...]]  # per batch: forward, exchange (and waiting), sampler, hop, encode seconds
    splitter: Callable[..., tuple[float, ...]]
    hop_span: list[tuple[float, float]] = field(default_factory=list)  # per ring hop: (sent, seconds on the wire)
    latent_ready: list[float] = field(default_factory=list)  # per block: its clean latent at a decoder of its own

    def executed(self) -> tuple[KVRef, ...]:
        """Every task run, once each (a task under placement layers runs one batch per device of its ring:
        counted at its first)."""
        return tuple(ref for b in self.workload.batches if b.part is None or b.part.entry for ref in b.refs)

    @property
    def batch_parts(self) -> list[tuple[float, ...]]:
        """Per batch: tick overhead, denoise forwards, cache passes, exchange, sampler, hop, encode
        (``Prices.split``)."""
        return [self.splitter(bi, *raw) for bi, raw in enumerate(self.batch_raw)]

    def busy(self, device: int, t0: float = 0.0, t1: float = float("inf"), decode: bool = True) -> dict[str, float]:
        """Seconds ``device`` spent on each part (``PARTS`` less ``wait``) in work that started in [t0, t1)
        (``decode=False``: without decoding, which ran on a second stream beside the rest)."""
        out = dict.fromkeys(PARTS[:-1], 0.0)
        w = self.workload
        t0, t1 = window(t0, t1)
        for bi in w.device_batches[device] if device < len(w.device_batches) else ():
            n = self.times(bi, t0, t1)
            if n:
                for name, v in zip(BATCH_NAMES, self.splitter(bi, *self.batch_raw[bi]), strict=True):
                    out[name] += n * v
        for d, s, dur in self.decodes():
            if decode and d == device and t0 <= s < t1:
                out["decode"] += dur
        for d, s, dur in self.text_span:
            if d == device and t0 <= s < t1:
                out["text"] += dur
        return out

    def times(self, bi: int, t0: float, t1: float) -> int:
        """How many times batch ``bi`` starts in [t0, t1): once or not (a spliced run repeats some)."""
        return 1 if t0 <= self.batch_start[bi] < t1 else 0

    def decodes(self) -> list[tuple[int, float, float]]:
        """Every block's decode: (device, start, seconds)."""
        return self.decode_span


@dataclass
class SimResult:
    """The predictions of one simulated run (see the module docstring for every definition)."""

    model: str
    cluster: str
    gpu: str
    cost: str  # the cost model's name: parts, roofline, baseline-fps, profile, uniform
    cost_source: str  # where its numbers came from
    spec: dict[str, Any]
    decode: DecodePlan
    overlap: bool
    fits: bool
    metrics: StreamMetrics
    switch_stalls: tuple[SwitchStall, ...]  # one per prompt switch at a block >= 1
    block_started_s: tuple[float, ...]
    block_denoised_s: tuple[float, ...]
    block_committed_s: tuple[float, ...]
    block_decoded_s: tuple[float, ...]
    bytes_by_link: dict[str, int]
    bytes_by_kind: dict[str, int]
    num_tasks: int
    memory: MemoryReport = field(repr=False)
    timeline: Timeline | None = field(repr=False, default=None)
    notes: tuple[str, ...] = ()  # what the prediction estimated beyond its cost model's source
    weights: str = "sharded"  # where a ring's weights live (engine.WEIGHTS)
    path: str = "event loop"  # which path computed the run: the event loop, or the steady state (simulator.steady)
    in_flight: int = 0  # the schedule's most blocks in flight (0: ask the timeline's schedule)
    _memo: dict[tuple[int, float, float], dict[str, float]] = field(default_factory=dict, repr=False, compare=False)

    # -- the stream metrics (cascade_sched.metrics: NaN without a steady state) ---------------------------
    @property
    def delivered_fps(self) -> float:
        """Delivered FPS: video frames over the steady span of decoded blocks."""
        return self.metrics.delivered_fps

    @property
    def denoise_fps(self) -> float:
        """Denoise FPS (the paper's): 12 frames over the median steady denoise interval, decoding excluded."""
        return self.metrics.denoise_fps

    @property
    def fps(self) -> float:
        """:attr:`delivered_fps` by its older name."""
        return self.metrics.delivered_fps

    @property
    def paper_fps(self) -> float:
        """:attr:`denoise_fps` by its older name."""
        return self.metrics.denoise_fps

    @property
    def first_frame_s(self) -> float:
        return self.metrics.first_frame_s

    @property
    def makespan_s(self) -> float:
        return self.metrics.end_s

    @property
    def interval_p50_s(self) -> float:
        return self.metrics.interval_p50_s

    @property
    def interval_p95_s(self) -> float:
        return self.metrics.interval_p95_s

    @property
    def interval_p99_s(self) -> float:
        return self.metrics.interval_p99_s

    @property
    def steady_blocks(self) -> tuple[int, int]:
        return self.metrics.steady_blocks

    @property
    def intervals_s(self) -> list[float]:
        """The steady-state intervals between consecutive decoded blocks, in block order."""
        r = steady_range(len(self.block_decoded_s), self.max_in_flight, self.spec.get("window"))
        d = self.block_decoded_s
        return [d[b] - d[b - 1] for b in r]

    @property
    def interval_max_s(self) -> float:
        return max(self.intervals_s, default=math.nan)

    @property
    def max_in_flight(self) -> int:
        if self.in_flight:
            return self.in_flight
        return self.timeline.workload.schedule.max_in_flight() if self.timeline is not None else 1

    @property
    def jitter_s(self) -> float:
        """p99 - p50 of the steady-state intervals between decoded blocks."""
        return self.interval_p99_s - self.interval_p50_s

    # -- devices, bytes, memory -------------------------------------------------------------------------
    @property
    def denoising_gpus(self) -> int:
        return int(self.spec["num_devices"])

    @property
    def gpus(self) -> int:
        """Every GPU the run occupies: the denoising devices plus a decoder GPU of its own."""
        return self.denoising_gpus + self.decode.extra_gpus

    @property
    def bytes_total(self) -> int:
        """Every byte moved between devices."""
        return sum(self.bytes_by_kind.values())

    @property
    def peak_memory_bytes(self) -> tuple[int, ...]:
        """Per GPU (a decoder GPU of its own last), its peak, the margin included."""
        return tuple(d.peak_bytes for d in self.memory.devices)

    @property
    def memory_capacity_bytes(self) -> int:
        return self.memory.capacity_bytes

    @property
    def executed(self) -> tuple[KVRef, ...]:
        """Every task the run executed (each exactly once: the engine checks it)."""
        if self.timeline is None:
            return ()
        return self.timeline.executed()

    @property
    def device_busy_s(self) -> tuple[float, ...]:
        """Per GPU: seconds of compute (forwards, sampler, tick overhead, decoding, text and video encoding)."""
        return tuple(sum(v for k, v in self._busy(d).items() if k not in COMM_PARTS) for d in range(self.gpus))

    @property
    def device_comm_s(self) -> tuple[float, ...]:
        """Per GPU: seconds of exposed exchange (and waiting for the gang's slowest member) and of ring hops
        sent on its compute stream."""
        return tuple(sum(self._busy(d)[k] for k in COMM_PARTS) for d in range(self.gpus))

    @property
    def placement(self) -> str:
        """The schedule's placement: ``block``, ``stage`` or ``layers``."""
        return str(self.spec.get("placement", "block"))

    def device_roles(self) -> list[str]:
        """Per GPU, what it holds and does: its layer range (placement layers), the decoder."""
        out = []
        ranges: dict[int, tuple[int, int]] = {}
        if self.timeline is not None:
            for b in self.timeline.workload.batches:
                if b.part is not None:
                    ranges.setdefault(b.device, (b.part.first, b.part.end))
        entry_dev = {d for d, (first, _) in ranges.items() if first == 0}
        for d in range(self.gpus):
            role = []
            if d in ranges:
                first, end = ranges[d]
                role.append(f"layers [{first}, {end})" + (" + entry" if d in entry_dev else ""))
            if d == self.decode.device:
                role.append("decoder" if self.decode.placement == "gpu" else f"decodes {self.decode.placement}")
            out.append(", ".join(role))
        return out

    def steady_window(self) -> tuple[float, float, int]:
        """(start, end, blocks) of the steady state: from the decode of the block before the first steady
        block to the last steady block's (the whole run when there is none)."""
        lo, hi = self.steady_blocks
        dec = self.block_decoded_s
        n = hi - lo + 1 if hi >= lo and hi > 0 else 0
        if n <= 0:
            return 0.0, self.makespan_s, max(1, len(dec))
        return dec[lo - 1], dec[hi], n

    def steady_shares(self) -> list[dict[str, float]]:
        """Per GPU over the steady state (:meth:`steady_window`): ``busy`` (compute), ``comm`` (exposed
        exchange and hops sent on its stream) and ``bubble`` (the rest: idle, waiting for a peer, a hop or a
        latent), each a share of the window; they sum to 1."""
        t0, t1, _ = self.steady_window()
        span = (t1 - t0) or 1.0
        out = []
        for d in range(self.gpus):
            parts = self._busy(d, t0, t1)
            comm = min(1.0, sum(parts[k] for k in COMM_PARTS) / span)
            busy = min(1.0 - comm, sum(v for k, v in parts.items() if k not in COMM_PARTS) / span)
            out.append({"busy": busy, "comm": comm, "bubble": max(0.0, 1.0 - busy - comm)})
        return out

    def device_bottlenecks(self) -> list[tuple[str, float]]:
        """Per GPU, what it spends the steady state on most and that share of it: ``forward`` (forwards,
        cache passes, sampler, tick overhead), ``decode``, ``encode``, ``comm`` (exchange, hops) or ``bubble``
        (waiting)."""
        t0, t1, _ = self.steady_window()
        span = (t1 - t0) or 1.0
        out = []
        for d in range(self.gpus):
            parts = self._busy(d, t0, t1)
            if self.decode.placement == "stream" and d == self.decode.device:
                parts["decode"] = 0.0  # on a second stream beside the rest
            share = {"forward": sum(parts[k] for k in ("forward", "cache", "tick", "sample", "text")),
                     "decode": parts["decode"], "encode": parts["encode"],
                     "comm": sum(parts[k] for k in COMM_PARTS)}
            share["bubble"] = max(0.0, span - sum(share.values()))
            neck = max(share, key=lambda k: share[k])
            out.append((neck, min(1.0, share[neck] / span)))
        return out

    def _busy(self, device: int, t0: float = 0.0, t1: float = float("inf")) -> dict[str, float]:
        if self.timeline is None:
            return dict.fromkeys(PARTS[:-1], 0.0)
        key = (device, t0, t1)
        got = self._memo.get(key)
        if got is None:
            overlapped = self.decode.placement == "stream" and device == self.decode.device
            got = self._memo[key] = self.timeline.busy(device, t0, t1, decode=not overlapped)
        return dict(got)

    def shares(self) -> list[dict[str, float]]:
        """Per GPU: busy, communicating and idle shares of the makespan."""
        out = []
        span = self.makespan_s or 1.0
        for busy, comm in zip(self.device_busy_s, self.device_comm_s, strict=True):
            b, c = busy / span, comm / span
            out.append({"busy": b, "comm": c, "idle": max(0.0, 1.0 - b - c)})
        return out

    # -- where the time goes ----------------------------------------------------------------------------
    def decomposition(self, device: int | None = None) -> dict[str, float]:
        """Seconds per delivered block by part (``PARTS``) on ``device`` (default: the decoding device, or
        device 0 when the decoder has a GPU of its own) over the steady state: what that device spent on
        each part divided by the steady blocks, and ``wait`` for the rest of the interval. The parts sum to
        the delivered interval (12 frames / ``fps``)."""
        d = (self.decode.device if self.decode.placement != "gpu" else 0) if device is None else device
        lo, hi = self.steady_blocks
        dec = self.block_decoded_s
        n = hi - lo + 1 if hi >= lo and hi > 0 else 0
        if n <= 0:
            t0, t1, n = 0.0, self.makespan_s, max(1, len(dec))
        else:
            t0, t1 = dec[lo - 1], dec[hi]
        out = {k: v / n for k, v in self._busy(d, t0, t1).items()}
        out["wait"] = max(0.0, (t1 - t0) / n - sum(out.values()))
        return out

    def bottleneck(self) -> tuple[str, str]:
        """(what limits the delivered FPS, what would lift it): ``memory``, ``decode``, ``exchange`` or
        ``compute``."""
        if not self.fits:
            return "memory", "a smaller --window, more GPUs or a larger GPU"
        per_block = self.decomposition()
        interval = sum(per_block.values()) or 1.0
        if self.decode.placement == "gpu":
            dec = self.decomposition(self.decode.device)
            if dec["decode"] >= 0.9 * interval:
                return "decode", "a faster decoder (--decoder taehv) or decoding on more GPUs"
        if self.placement == "layers":
            return self._ring_bottleneck()
        share = {"decode": per_block["decode"], "exchange": per_block["exchange"] + per_block["hop"],
                 "compute": sum(per_block[k] for k in ("forward", "cache", "tick", "sample", "text", "encode"))}
        worst = max(share, key=lambda k: share[k])
        lift = {"decode": "decode on a GPU of its own (--decode gpu), on a second stream (--decode stream) or "
                          "with the TAEHV decoder (--decoder taehv)",
                "exchange": "a faster link, causal instead of bidirectional attention, or --overlap",
                "compute": "more GPUs (while blocks in flight exceed them), a smaller --window or a faster GPU"}
        return worst, lift[worst]

    def _ring_bottleneck(self) -> tuple[str, str]:
        """A ring runs as fast as its slowest device: what that device spends its steady state on."""
        shares = self.steady_shares()
        necks = self.device_bottlenecks()
        slow = max(range(len(shares)), key=lambda d: (shares[d]["busy"] + shares[d]["comm"], -d))
        neck = necks[slow][0]
        if neck == "decode":
            return "decode", (f"d{slow} decodes besides its layers: give it fewer layers (--layer-split), decode on a "
                              "GPU of its own (--decode gpu) or use the TAEHV decoder (--decoder taehv)")
        if neck == "comm":
            return "exchange", f"d{slow} waits on the link: a faster link or --overlap (hops on a second stream)"
        return "compute", (f"the slowest ring stage d{slow} ({self.device_roles()[slow] or 'its layers'}): a longer "
                           "ring (more GPUs per ring), a balanced --layer-split or a faster GPU")

    # -- output -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every metric, per-block and per-device figures, bytes, memory and the provenance."""
        m = self.metrics
        neck, lift = self.bottleneck()
        return {
            "model": self.model,
            "cluster": self.cluster,
            "gpus": self.gpus,
            "denoising_gpus": self.denoising_gpus,
            "decode": {"placement": self.decode.placement, "device": self.decode.device,
                       "where": self.decode.describe()},
            "cost": self.cost,
            "cost_source": self.cost_source,
            "spec": self.spec,
            "overlap": self.overlap,
            "fits": self.fits,
            **m.to_dict(),
            "interval_max_s": _number(self.interval_max_s),
            "jitter_s": _number(self.jitter_s),
            "bottleneck": neck,
            "lift": lift,
            "decomposition_s": self.decomposition(),
            "switch_stalls": [s.to_dict() for s in self.switch_stalls],
            "num_tasks": self.num_tasks,
            "block_started_s": list(self.block_started_s),
            "block_denoised_s": list(self.block_denoised_s),
            "block_committed_s": list(self.block_committed_s),
            "block_decoded_s": list(self.block_decoded_s),
            "devices": [
                {"device": d, "role": role, "busy_s": b, "comm_s": c, **s,
                 "steady_busy": st["busy"], "steady_comm": st["comm"], "bubble": st["bubble"],
                 "bottleneck": neck_d[0],
                 "peak_memory_bytes": self.peak_memory_bytes[d] if d < len(self.peak_memory_bytes) else 0,
                 "memory_parts": dict(self.memory.devices[d].parts) if d < len(self.memory.devices) else {}}
                for d, (b, c, s, st, neck_d, role) in enumerate(zip(
                    self.device_busy_s, self.device_comm_s, self.shares(), self.steady_shares(),
                    self.device_bottlenecks(), self.device_roles(), strict=True))
            ],
            "weights": self.weights,
            "notes": list(self.notes),
            "path": self.path,
            "bytes_total": self.bytes_total,
            "bytes_by_kind": self.bytes_by_kind,
            "bytes_by_link": self.bytes_by_link,
            "peak_memory_bytes": list(self.peak_memory_bytes),
            "memory_capacity_bytes": self.memory_capacity_bytes,
            "memory_margin": self.memory.margin,
        }

    def summary(self) -> str:
        """A few human lines: GPUs, throughput, latency, interval distribution, devices, bytes, provenance."""
        gb = 1e9
        neck, lift = self.bottleneck()
        per = self.decomposition()
        lo, hi = self.steady_blocks
        over = f"steady blocks {lo}..{hi}" if self.metrics.steady else "the whole run: no steady state"
        lines = [
            f"{self.model} on {self.cluster}; {self.gpus} GPU(s) in all; decode {self.decode.describe()}; "
            f"cost {self.cost}",
            *self.metrics.summary_lines(),
        ]
        if self.metrics.steady:
            lines[-1] += f", max {self.interval_max_s * 1e3:.1f} ms"
        lines += [
            f"  per block ({over}): " + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in per.items() if v > 0) + " ms",
            f"  bottleneck: {neck} (lift it with {lift})",
        ]
        for sw in self.switch_stalls:
            lines.append(f"  switch at block {sw.at_block}: stall {sw.stall_s * 1e3:.1f} ms (interval "
                         f"{sw.interval_s * 1e3:.1f} ms ending at block {sw.worst_block} vs steady "
                         f"{sw.steady_s * 1e3:.1f} ms, x{sw.ratio:.2f})")
        lines.append(f"  per GPU over the {over.removeprefix('the ')} (busy = compute, comm = exchange and hops, "
                     "bubble = waiting):")
        roles = self.device_roles()
        for d, (run, st, neck_d) in enumerate(zip(self.shares(), self.steady_shares(), self.device_bottlenecks(),
                                                   strict=True)):
            mem = ""
            if d < len(self.peak_memory_bytes):
                dm = self.memory.devices[d]
                big = ", ".join(f"{k.replace('_', ' ')} {v / gb:.1f}" for k, v in dm.parts.items() if v >= 0.05 * gb)
                mem = f"; peak {dm.peak_bytes / gb:.1f} of {self.memory_capacity_bytes / gb:.0f} GB ({big})"
            role = f" ({roles[d]})" if roles[d] else ""
            lines.append(f"    d{d}{role}: busy {st['busy']:.0%}  comm {st['comm']:.0%}  bubble {st['bubble']:.0%}, "
                         f"mostly {neck_d[0]} (whole run: idle {run['idle']:.0%}){mem}")
        kinds = ", ".join(f"{k} {v / gb:.2f} GB" for k, v in self.bytes_by_kind.items() if v or k != "hop")
        weights = f"; weights {self.weights}" if self.placement == "layers" else ""
        lines.append(f"  moved {self.bytes_total / gb:.2f} GB ({kinds}); memory reserved per GPU: "
                     f"{self.memory.margin}{weights}")
        lines.append(f"  costs: {self.cost_source}")
        lines.append(f"  computed by: {self.path}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines)


def _number(x: float) -> float | None:
    """JSON has no NaN: a figure without a steady state is null."""
    return x if math.isfinite(x) else None
