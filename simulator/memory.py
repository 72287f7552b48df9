"""GPU memory per device over the ticks of a schedule, checked against the GPU's memory.

Accounted per device and tick (bytes; the peak over ticks is what must fit):

- *weights*: the whole model on every denoising device (Block Cascading replicates it);
- *committed KV*: block j's committed version is held by its producer and by every device that reads
  it, from its commit tick to that device's last read (the schedule's reads decide; ``free_after`` is
  the last read anywhere); a re-encoded version ``(j, S + q)`` that a recache task writes counts here
  too, held from the recache tick to its last read on each device (``recache_free_after`` is the last
  read anywhere);
- *in-flight KV*: a non-committed version read at a later tick (``stale`` attention reads last tick's),
  held the same way, plus one layer of the peers' K/V received per joint-attention exchange (two with
  overlap, double-buffered);
- *activations*: one layer's working set of the device's batch (tokens x (4 dim + ffn dim) x 2 bytes),
  one block's tokens per forward member (a recache task has one member per block it re-encodes);
- *decode cache*: the streaming VAE's cache on a denoising device that also decodes.

A decoder on a device of its own is not checked (its VAE and cache fit any catalog GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

from cascade_sched.errors import SimulationError
from cascade_sched.schedule import TaskKind
from simulator.catalog import Cluster
from simulator.workload import Workload

PARTS = ("weights", "committed_kv", "inflight_kv", "activations", "decode_cache")


@dataclass(frozen=True)
class DeviceMemory:
    """The peak of one device: its tick, the total and the parts at that tick (keys of ``PARTS``)."""

    device: int
    peak_bytes: int
    peak_tick: int
    parts: dict[str, int]


@dataclass(frozen=True)
class MemoryReport:
    """Peak memory of every denoising device against ``capacity_bytes`` (one GPU's memory)."""

    devices: tuple[DeviceMemory, ...]
    capacity_bytes: int

    @property
    def fits(self) -> bool:
        """Whether every device's peak fits in its GPU."""
        return all(d.peak_bytes <= self.capacity_bytes for d in self.devices)

    @property
    def worst(self) -> DeviceMemory:
        """The device with the largest peak."""
        return max(self.devices, key=lambda d: d.peak_bytes)

    def error(self, gpu: str) -> SimulationError:
        """The one-line error for a plan that does not fit."""
        w = self.worst
        parts = ", ".join(f"{k.replace('_', ' ')} {v / 1e9:.1f}" for k, v in w.parts.items() if v)
        return SimulationError(
            f"plan does not fit: device {w.device} needs {w.peak_bytes / 1e9:.1f} GB at tick {w.peak_tick} "
            f"({parts} GB) but a {gpu} has {self.capacity_bytes / 1e9:.1f} GB; "
            "use a smaller --window, more devices or a larger GPU"
        )


def memory_report(
    workload: Workload,
    cluster: Cluster,
    overlap: bool = False,
    dtype_bytes: int = 2,
) -> MemoryReport:
    """Peak memory per denoising device (see the module docstring), from the workload's reads.

    >>> from cascade_sched import CascadeSpec, build_schedule
    >>> from simulator.catalog import get_model
    >>> from simulator.workload import build_workload
    >>> w = build_workload(build_schedule(CascadeSpec(num_blocks=4, window=2)), get_model("wan2.1-1.3b"))
    >>> r = memory_report(w, Cluster.of("h100-sxm", 1))
    >>> r.fits, round(r.worst.parts["committed_kv"] / 1e9, 2)  # the block itself plus one in the window
    (True, 1.73)
    """
    schedule, geometry = workload.schedule, workload.geometry
    decode_device = workload.decode_device
    n_dev, n_ticks = schedule.num_devices, schedule.num_ticks
    S = schedule.num_stages
    span = n_dev + 1
    vtick = workload.version_tick
    kv = geometry.kv_bytes_per_block(dtype_bytes)
    layer_kv = kv // geometry.num_layers * (2 if overlap else 1)
    last = S - 1
    act_per_task = geometry.tokens_per_block * (4 * geometry.dim + geometry.ffn_dim) * dtype_bytes

    exchange = [[0] * n_ticks for _ in range(n_dev)]
    act = [[0] * n_ticks for _ in range(n_dev)]
    for bi, b in enumerate(workload.batches):
        act[b.device][b.tick] += act_per_task * len(b.contexts)
        exchange[b.device][b.tick] += layer_kv * workload.exchange_in[bi]
    committed = [[0] * (n_ticks + 1) for _ in range(n_dev)]
    inflight = [[0] * (n_ticks + 1) for _ in range(n_dev)]
    held = workload.held
    for key, until in held.items():
        k, d = divmod(key, span)
        _, v = workload.version(k)
        arr = committed[d] if v >= last else inflight[d]  # v >= S: a re-encoded version
        arr[vtick[k]] += kv
        arr[until + 1] -= kv
    # A committed (or re-encoded) version nobody reads later still exists on its producer during its tick.
    for b in workload.batches:
        for j, v in b.refs:
            task = schedule.task(j, v)
            if task.kind != TaskKind.RECACHE and v != last:  # an in-flight version, counted above
                continue
            for ref in schedule.writes(task):  # the committed version, or a recache task's re-encodes
                if workload.vindex(*ref) * span + b.device not in held:
                    committed[b.device][b.tick] += kv
                    committed[b.device][b.tick + 1] -= kv

    cache = geometry.decode_cache_bytes
    out = []
    for d in range(n_dev):
        fixed = geometry.weight_bytes + (cache if d == decode_device else 0)
        best_total, best_tick, best_c, best_f = -1, 0, 0, 0
        c = f = 0
        com, inf, ex, ac = committed[d], inflight[d], exchange[d], act[d]
        for n in range(n_ticks):
            c += com[n]
            f += inf[n]
            total = c + f + ex[n] + ac[n]
            if total > best_total:
                best_total, best_tick, best_c, best_f = total, n, c, f
        parts = {
            "weights": geometry.weight_bytes,
            "committed_kv": best_c,
            "inflight_kv": best_f + ex[best_tick],
            "activations": ac[best_tick],
            "decode_cache": cache if d == decode_device else 0,
        }
        out.append(DeviceMemory(d, fixed + max(best_total, 0), best_tick, parts))
    return MemoryReport(tuple(out), cluster.gpu.hbm_bytes)
