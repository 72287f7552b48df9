"""GPU memory per device over the ticks of a schedule, checked against the GPU's memory less a margin.

Accounted per device and tick (bytes; the peak over ticks is what must fit), from the core's
``TransferPlan`` and the schedule's tasks:

- *weights*: the whole DiT on every denoising device (Block Cascading replicates it); under placement
  ``layers`` with ``weights="sharded"`` (the default) only the device's layer range and the conditioning
  every slice holds (``ModelGeometry.slice_weight_bytes``), with ``replicated`` all of it
  (StreamDiffusionV2 loads the whole model on every rank);
- *committed KV*: a committed (or re-encoded) version held by every device that reads it at a later tick,
  from the tick that writes it to its last read there (``TransferPlan.keep_until``: the producer, the
  receivers of past sends, the devices that keep it from a gang exchange); under placement ``layers``
  only its layer range (``TransferPlan.residency``), from the tick the device runs that range;
- *in-flight KV*: non-committed versions read at a later tick (``stale`` and ``stage`` attention, strides
  above 1: the per-stage histories), held the same way; the K/V every forward member of a tick computes
  (its layers, until the tick's end), when no later read keeps it; and one layer of the peers' K/V
  received per joint-attention exchange (two with overlap);
- *activations*: one layer's working set of the device's batch, the larger of its two peaks
  (:func:`activation_bytes`): the feed-forward's (per token, the FFN hidden and its GELU in the weight
  dtype beside the residual stream's working copies in the activation dtype) and the attention's (per
  token q, k, v and the stream; plus, for the largest key set of the batch, its context K/V gathered into
  one tensor); the coefficients are the engine's own, counted storage by storage by the meta-device dry
  runs of 1.3B and 14B (``apps/calibrate/dryrun.py``, docs/validation.md);
- *hand-off*: a ring device's buffers for the hidden states it receives and sends per tick (one forward
  member's ``tokens x dim x activation bytes`` each; twice with overlap, sends in flight beside compute);
- *decoder*: the decoder's weights and streaming cache on the device that decodes;
- *text encoder*: its weights on the device that encodes prompts (the decoding device);
- *reserved*: the cluster's :class:`~simulator.cluster.MemoryMargin` (CUDA context, workspaces, the
  allocator's slack) on every GPU.

A decoder GPU of its own is checked too (decoder, text encoder, margin).

:func:`process_memory` prices the same parts for one process that runs every device of a schedule (the
reference executor on a CPU): what ``cascade generate`` checks against the memory it has before a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cascade_sched.errors import SimulationError
from cascade_sched.schedule import TaskKind, build_schedule
from cascade_sched.spec import CascadeSpec
from simulator.catalog import HOST_CPU, ModelGeometry, get_model
from simulator.cluster import NO_MARGIN, Cluster
from simulator.prices import DecodePlan
from simulator.workload import Workload, build_workload

PARTS = ("weights", "committed_kv", "inflight_kv", "activations", "handoff", "decoder", "text_encoder", "reserved")


@dataclass(frozen=True)
class DeviceMemory:
    """The peak of one device: its tick, the total and the parts at that tick (keys of ``PARTS``)."""

    device: int
    peak_bytes: int
    peak_tick: int
    parts: dict[str, int]


@dataclass(frozen=True)
class MemoryReport:
    """Peak memory of every GPU of the run (the margin included) against ``capacity_bytes``."""

    devices: tuple[DeviceMemory, ...]
    capacity_bytes: int
    margin: str = ""

    @property
    def fits(self) -> bool:
        """Whether every device's peak, margin included, fits in its GPU."""
        return all(d.peak_bytes <= self.capacity_bytes for d in self.devices)

    @property
    def worst(self) -> DeviceMemory:
        """The device with the largest peak."""
        return max(self.devices, key=lambda d: d.peak_bytes)

    def error(self, gpu: str) -> SimulationError:
        """The one-line error for a plan that does not fit, with the numbers."""
        w = self.worst
        parts = ", ".join(f"{k.replace('_', ' ')} {v / 1e9:.1f}" for k, v in w.parts.items() if v)
        return SimulationError(
            f"plan does not fit: device {w.device} needs {w.peak_bytes / 1e9:.1f} GB at tick {w.peak_tick} "
            f"({parts} GB; reserved = {self.margin}) but a {gpu} has {self.capacity_bytes / 1e9:.1f} GB; "
            "use a smaller --window, more devices, another --decode placement or a larger GPU"
        )


def activation_bytes(geometry: ModelGeometry, members: int, context_tokens: int, dtype_bytes: int = 2) -> int:
    """One layer's working set of a forward of ``members`` blocks whose largest key set (own tokens and
    read versions) is ``context_tokens``: the larger of the feed-forward's peak, ``tokens x (2 ffn w +
    6.5 dim a)``, and the attention's, ``tokens x 3.5 dim a + context_tokens x 2 dim w`` (w the weight
    dtype's bytes, a the activation dtype's: float32 for half-precision weights). Source: measured here,
    the engine's allocations counted storage by storage on the meta device (``apps/calibrate/dryrun.py``):
    Wan2.1 1.3B's peak is the FFN's, 14B's with 7 blocks of context the attention's.

    >>> from simulator.catalog import get_model
    >>> round(activation_bytes(get_model("wan2.1-1.3b"), 1, 7 * 4680) / 1e9, 3)  # the FFN's peak
    0.355
    >>> round(activation_bytes(get_model("wan2.1-14b"), 1, 7 * 4680) / 1e9, 3)  # the attention's
    1.006
    """
    w, a = dtype_bytes, max(4, dtype_bytes)
    tokens = members * geometry.tokens_per_block
    ffn = tokens * (2 * geometry.ffn_dim * w + 6.5 * geometry.dim * a)
    attention = tokens * 3.5 * geometry.dim * a + context_tokens * 2 * geometry.dim * w
    return int(max(ffn, attention))


def memory_report(
    workload: Workload,
    cluster: Cluster,
    plan: DecodePlan | None = None,
    overlap: bool = False,
    dtype_bytes: int = 2,
    decoder: str = "vae",
    weights: str = "sharded",
    series: list[list[int]] | None = None,
) -> MemoryReport:
    """Peak memory per GPU (see the module docstring), from the workload's plan and batches.

    >>> from cascade_sched import CascadeSpec, build_schedule
    >>> from simulator.catalog import get_model
    >>> from simulator.workload import build_workload
    >>> w = build_workload(build_schedule(CascadeSpec(num_blocks=4, window=2)), get_model("wan2.1-1.3b"))
    >>> r = memory_report(w, Cluster.of("h100-sxm", 1))
    >>> r.fits, round(r.worst.parts["committed_kv"] / 1e9, 2)  # the block read later and the one in flight
    (True, 0.86)

    ``series``, when given, receives per denoising device its bytes at every tick (weights, decoder and margin
    apart): what the steady-state path checks repeats.
    """
    plan = plan or DecodePlan("inline", workload.decode_device)
    schedule, geometry = workload.schedule, workload.geometry
    n_dev, n_ticks = schedule.num_devices, schedule.num_ticks
    S = schedule.num_stages
    L = geometry.num_layers
    kv_layer = geometry.kv_bytes_per_layer(dtype_bytes)
    kv = geometry.kv_bytes_per_block(dtype_bytes)
    layer_kv = kv_layer * (2 if overlap else 1)
    recache_tick = {ref: t.tick for t in schedule.tasks if t.kind == TaskKind.RECACHE for ref in schedule.writes(t)}

    # Each device's layer range, its ring position (the tick offset of its segments) and its weights.
    parts_of: dict[int, Any] = {}
    for b in workload.batches:
        if b.part is not None:
            parts_of.setdefault(b.device, (b.part, b.tick - b.entered))
    kv_of = [kv if d not in parts_of else kv_layer * (parts_of[d][0].end - parts_of[d][0].first)
             for d in range(n_dev)]
    offset = [parts_of[d][1] if d in parts_of else 0 for d in range(n_dev)]
    sharded = weights == "sharded"
    weights_of = [geometry.slice_weight_bytes(parts_of[d][0]) if sharded and d in parts_of else geometry.weight_bytes
                  for d in range(n_dev)]

    committed = [[0] * (n_ticks + 1) for _ in range(n_dev)]
    inflight = [[0] * (n_ticks + 1) for _ in range(n_dev)]
    keep = workload.plan.keep_until
    starts, k = schedule.starts, schedule.spec.stage_stride
    for (d, (j, s)), until in keep.items():
        written = (starts[j] + s * k if s < S else recache_tick[(j, s)]) + offset[d]  # Schedule.version_tick
        arr = committed[d] if s >= S - 1 else inflight[d]  # s >= S: a re-encoded version
        size = kv_of[d]
        arr[written] += size
        arr[until + 1] -= size
    transient = [[0] * n_ticks for _ in range(n_dev)]  # per tick: exchange buffers, outputs not kept
    act = [[0] * n_ticks for _ in range(n_dev)]
    handoff = [[0] * n_ticks for _ in range(n_dev)]
    hidden = workload.sizes.hidden if workload.sizes is not None else 0
    for b in workload.batches:
        members = len(b.contexts)
        act[b.device][b.tick] += activation_bytes(geometry, members, max(b.contexts, default=0), dtype_bytes)
        size = kv_of[b.device]
        for j, v in b.refs:  # each member's K/V (its layers) exists until its tick's end
            refs = schedule.writes(schedule.task(j, v)) if v < 0 else ((j, v),)
            for ref in refs:
                if (b.device, ref) not in keep:
                    transient[b.device][b.tick] += size
        if b.part is not None and hidden and (b.part.first or b.part.end < L):
            # receive (not the ring's first device) and send (not its last): one member's hidden states each
            ways = (0 if b.part.entry else 1) + (0 if b.part.head else 1)
            handoff[b.device][b.tick] += ways * members * hidden * (2 if overlap else 1)
    for g in workload.gangs.values():  # one layer's messages at a time, whatever the range
        for (_, dst), count in g.sends.items():
            transient[dst][g.tick] += count * layer_kv

    dec = geometry.decoder(decoder)
    dec_bytes = (dec.weight_bytes + dec.cache_bytes) if dec is not None else 0
    text = geometry.text_encoder.weight_bytes if geometry.text_encoder is not None else 0
    margin = cluster.margin
    out = []
    for d in range(n_dev):
        on_dec = d == plan.device
        fixed = weights_of[d] + (dec_bytes + text if on_dec else 0)
        best_total, best_tick, best_c, best_f = -1, 0, 0, 0
        c = f = 0
        com, inf, tr, ac, ho = committed[d], inflight[d], transient[d], act[d], handoff[d]
        totals: list[int] | None = [] if series is not None else None
        for n in range(n_ticks):
            c += com[n]
            f += inf[n]
            total = c + f + tr[n] + ac[n] + ho[n]
            if totals is not None:
                totals.append(total)
            if total > best_total:
                best_total, best_tick, best_c, best_f = total, n, c, f
        if series is not None and totals is not None:
            series.append(totals)
        allocated = fixed + max(best_total, 0)
        reserved = int(margin.reserve_bytes(allocated))
        parts = {"weights": weights_of[d], "committed_kv": best_c, "inflight_kv": best_f + tr[best_tick],
                 "activations": ac[best_tick], "handoff": ho[best_tick], "decoder": dec_bytes if on_dec else 0,
                 "text_encoder": text if on_dec else 0, "reserved": reserved}
        out.append(DeviceMemory(d, allocated + reserved, best_tick, parts))
    if plan.placement == "gpu":
        allocated = dec_bytes + text
        reserved = int(margin.reserve_bytes(allocated))
        parts = dict.fromkeys(PARTS, 0)
        parts.update(decoder=dec_bytes, text_encoder=text, reserved=reserved)
        out.append(DeviceMemory(n_dev, allocated + reserved, 0, parts))
    worst = max(out, key=lambda m: m.peak_bytes)
    return MemoryReport(tuple(out), cluster.gpu.hbm_bytes,
                        margin.describe(worst.peak_bytes - worst.parts["reserved"]))


@dataclass(frozen=True)
class ProcessMemory:
    """What one process running a whole schedule holds at its peak, and per block of latents it returns."""

    peak_bytes: int  # weights, K/V (committed and in flight) and activations at the peak tick
    latent_bytes_per_block: int  # one block's float32 latent, as a run returns them


def process_memory(spec: CascadeSpec, model: str, dtype_bytes: int) -> ProcessMemory:
    """:func:`memory_report`'s parts for one process that runs every device of ``spec`` with ``model`` in a
    dtype of ``dtype_bytes``: one K/V pool holds each version once, so it keeps what one device running
    the whole schedule keeps; no decoder, text encoder or GPU margin (the process's own bytes).

    >>> m = process_memory(CascadeSpec(num_blocks=4, window=2), "toy", 4)
    >>> m.peak_bytes > 0, m.latent_bytes_per_block
    (True, 9216)
    """
    geometry = get_model(model)
    one = build_schedule(spec.replace(num_devices=1, placement="block"))
    report = memory_report(build_workload(one, geometry), Cluster(HOST_CPU, 1, margin=NO_MARGIN),
                           dtype_bytes=dtype_bytes)
    parts = report.devices[0].parts
    weights = parts["weights"] * dtype_bytes // 2  # the catalog states weights in bf16
    peak = weights + parts["committed_kv"] + parts["inflight_kv"] + parts["activations"]
    return ProcessMemory(peak, geometry.latent_bytes_per_block(4))
