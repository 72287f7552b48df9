"""GPU memory per device over the ticks of a schedule, checked against the GPU's memory less a margin.

Accounted per device and tick (bytes; the peak over ticks is what must fit), from the core's
``TransferPlan`` and the schedule's tasks:

- *weights*: the whole DiT on every denoising device (Block Cascading replicates it);
- *committed KV*: a committed (or re-encoded) version held by every device that reads it at a later tick,
  from the tick that writes it to its last read there (``TransferPlan.keep_until``: the producer, the
  receivers of past sends, the devices that keep it from a gang exchange);
- *in-flight KV*: non-committed versions read at a later tick (``stale`` attention), held the same way;
  the K/V every forward member of a tick computes (all layers, until the tick's end), when no later read
  keeps it; and one layer of the peers' K/V received per joint-attention exchange (two with overlap);
- *activations*: one layer's working set of the device's batch (tokens x (4 dim + ffn dim) x 2 bytes),
  one block's tokens per forward member;
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

from cascade_sched.errors import SimulationError
from cascade_sched.schedule import TaskKind, build_schedule
from cascade_sched.spec import CascadeSpec
from simulator.catalog import HOST_CPU, get_model
from simulator.cluster import NO_MARGIN, Cluster
from simulator.prices import DecodePlan
from simulator.workload import Workload, build_workload

PARTS = ("weights", "committed_kv", "inflight_kv", "activations", "decoder", "text_encoder", "reserved")


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


def memory_report(
    workload: Workload,
    cluster: Cluster,
    plan: DecodePlan | None = None,
    overlap: bool = False,
    dtype_bytes: int = 2,
    decoder: str = "vae",
) -> MemoryReport:
    """Peak memory per GPU (see the module docstring), from the workload's plan and batches.

    >>> from cascade_sched import CascadeSpec, build_schedule
    >>> from simulator.catalog import get_model
    >>> from simulator.workload import build_workload
    >>> w = build_workload(build_schedule(CascadeSpec(num_blocks=4, window=2)), get_model("wan2.1-1.3b"))
    >>> r = memory_report(w, Cluster.of("h100-sxm", 1))
    >>> r.fits, round(r.worst.parts["committed_kv"] / 1e9, 2)  # the block read later and the one in flight
    (True, 0.86)
    """
    plan = plan or DecodePlan("inline", workload.decode_device)
    schedule, geometry = workload.schedule, workload.geometry
    n_dev, n_ticks = schedule.num_devices, schedule.num_ticks
    S = schedule.num_stages
    starts = schedule.starts
    kv = geometry.kv_bytes_per_block(dtype_bytes)
    layer_kv = geometry.kv_bytes_per_layer(dtype_bytes) * (2 if overlap else 1)
    act_per_member = geometry.tokens_per_block * (4 * geometry.dim + geometry.ffn_dim) * dtype_bytes
    recache_tick = {ref: t.tick for t in schedule.tasks if t.kind == TaskKind.RECACHE for ref in schedule.writes(t)}

    committed = [[0] * (n_ticks + 1) for _ in range(n_dev)]
    inflight = [[0] * (n_ticks + 1) for _ in range(n_dev)]
    keep = workload.plan.keep_until
    for (d, (j, s)), until in keep.items():
        written = starts[j] + s if s < S else recache_tick[(j, s)]
        arr = committed[d] if s >= S - 1 else inflight[d]  # s >= S: a re-encoded version
        arr[written] += kv
        arr[until + 1] -= kv
    transient = [[0] * n_ticks for _ in range(n_dev)]  # per tick: exchange buffers, outputs not kept
    act = [[0] * n_ticks for _ in range(n_dev)]
    for b in workload.batches:
        act[b.device][b.tick] += act_per_member * len(b.contexts)
    for t in schedule.tasks:  # each task's K/V (all layers) exists until its tick's end
        refs = schedule.writes(t) if t.kind == TaskKind.RECACHE else (t.ref,)
        for ref in refs:
            if (t.device, ref) not in keep:
                transient[t.device][t.tick] += kv
    for tick, g in workload.gangs.items():
        for (_, dst), n in g.sends.items():
            transient[dst][tick] += n * layer_kv

    dec = geometry.decoder(decoder)
    dec_bytes = (dec.weight_bytes + dec.cache_bytes) if dec is not None else 0
    text = geometry.text_encoder.weight_bytes if geometry.text_encoder is not None else 0
    margin = cluster.margin
    out = []
    for d in range(n_dev):
        on_dec = d == plan.device
        fixed = geometry.weight_bytes + (dec_bytes + text if on_dec else 0)
        best_total, best_tick, best_c, best_f = -1, 0, 0, 0
        c = f = 0
        com, inf, tr, ac = committed[d], inflight[d], transient[d], act[d]
        for n in range(n_ticks):
            c += com[n]
            f += inf[n]
            total = c + f + tr[n] + ac[n]
            if total > best_total:
                best_total, best_tick, best_c, best_f = total, n, c, f
        allocated = fixed + max(best_total, 0)
        reserved = int(margin.reserve_bytes(allocated))
        parts = {"weights": geometry.weight_bytes, "committed_kv": best_c, "inflight_kv": best_f + tr[best_tick],
                 "activations": ac[best_tick], "decoder": dec_bytes if on_dec else 0,
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
