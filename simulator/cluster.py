"""The hardware a schedule runs on: a :class:`Cluster` of GPUs and links, and the :class:`MemoryMargin`
reserved on every GPU beyond what the schedule itself holds.

>>> c = Cluster.of("h100-sxm", 16)
>>> c.intra.name, c.link(0, 9).name, c.link(0, 7).name
('nvlink4', 'ib-ndr', 'nvlink4')
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from cascade_sched.errors import ConfigError
from simulator.catalog import GPU, LINKS, Link, get_gpu, get_link


@dataclass(frozen=True)
class MemoryMargin:
    """What a GPU needs besides weights, K/V, activations and decoder state: the CUDA context, library
    workspaces (cuBLAS, cuDNN, NCCL buffers) and the caching allocator's slack (a fraction of what is
    allocated). A plan whose peak plus this margin exceeds the GPU's memory is refused.

    >>> round(MemoryMargin().reserve_bytes(70e9) / 1e9, 2)
    5.0
    """

    context_bytes: float = 1.0e9
    workspace_bytes: float = 0.5e9
    allocator_fraction: float = 0.05
    source: str = ("CUDA context ~0.5-1 GB per GPU (1.0 taken); workspaces 0.5 GB (est: cuBLAS, cuDNN, NCCL "
                   "buffers); caching-allocator slack 5% of the allocated bytes (est)")

    def __post_init__(self) -> None:
        for name in ("context_bytes", "workspace_bytes", "allocator_fraction"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0) or isinstance(v, bool):
                raise ConfigError("memory_margin", f"`{name}` must be a finite number >= 0, got {v!r}")

    def reserve_bytes(self, allocated: float) -> float:
        """Bytes reserved on a GPU that allocates ``allocated`` bytes for the run itself."""
        return self.context_bytes + self.workspace_bytes + self.allocator_fraction * allocated

    def describe(self, allocated: float) -> str:
        """``CUDA context 1.0 + workspaces 0.5 + allocator 5% 3.5 GB``."""
        return (f"CUDA context {self.context_bytes / 1e9:.1f} + workspaces {self.workspace_bytes / 1e9:.1f} + "
                f"allocator {self.allocator_fraction:.0%} {self.allocator_fraction * allocated / 1e9:.1f} GB")


NO_MARGIN = MemoryMargin(0.0, 0.0, 0.0, "no margin (the schedule's own bytes only)")


@dataclass(frozen=True)
class Cluster:
    """The hardware a schedule runs on: ``num_gpus`` of one kind, ``gpus_per_node`` to a node, an
    ``intra`` link inside a node and an ``inter`` link between nodes.

    What-if faults: ``stragglers`` maps a device to a slowdown factor (its compute takes that many times
    longer); ``degraded`` maps a device to a factor dividing the bandwidth of every transfer touching it.
    ``contention`` (>= 1) is how much slower a device computes while another device has work in the same
    tick: devices that share one host's cores, caches and memory bandwidth, such as the ranks of the
    distributed executor on a CPU (``cascade calibrate`` measures it); 1.0 for GPUs.

    Processor sharing (CPU ranks on one host): with ``host_cores`` set, every device is a process of
    ``threads_per_device`` threads on one host of that many cores, next to ``background_load`` cores' worth
    of other work. While n devices compute at one instant, each computes at speed
    ``1 / (max(1, (n * threads_per_device + background_load) / host_cores) * (contention if n > 1 else 1))``,
    re-evaluated whenever a device starts or stops computing (``contention`` is then the interference of
    caches and memory bandwidth beyond the share of cores, per instant rather than per tick).
    ``contention_by_batch`` ((tasks in the forward, factor) pairs, measured by ``cascade calibrate``)
    replaces that one factor by one that depends on the size of the job: larger batches touch more memory
    and suffer more from a neighbour.

    ``margin`` is what every GPU reserves beyond the schedule's own bytes (:class:`MemoryMargin`).
    """

    gpu: GPU
    num_gpus: int
    gpus_per_node: int = 8
    intra: Link = field(default_factory=lambda: LINKS["nvlink4"])
    inter: Link = field(default_factory=lambda: LINKS["ib-ndr"])
    stragglers: tuple[tuple[int, float], ...] = ()
    degraded: tuple[tuple[int, float], ...] = ()
    contention: float = 1.0
    host_cores: float | None = None
    threads_per_device: int = 1
    background_load: float = 0.0
    contention_by_batch: tuple[tuple[int, float], ...] = ()
    margin: MemoryMargin = field(default_factory=MemoryMargin)

    def __post_init__(self) -> None:
        if self.host_cores is not None and not (isinstance(self.host_cores, (int, float))
                                                and math.isfinite(self.host_cores) and self.host_cores > 0):
            raise ConfigError("host_cores", f"`host_cores` must be a positive number of cores, got {self.host_cores!r}")
        if isinstance(self.threads_per_device, bool) or not isinstance(self.threads_per_device, int) \
                or self.threads_per_device < 1:
            raise ConfigError("threads_per_device",
                              f"`threads_per_device` must be a positive integer, got {self.threads_per_device!r}")
        for batch, factor in self.contention_by_batch:
            if batch < 1 or not (math.isfinite(factor) and factor >= 1.0):
                raise ConfigError("contention_by_batch", f"`contention_by_batch` needs (batch >= 1, factor >= 1) "
                                                         f"pairs, got ({batch}, {factor})")
        if not (isinstance(self.background_load, (int, float)) and math.isfinite(self.background_load)
                and self.background_load >= 0):
            raise ConfigError("background_load",
                              f"`background_load` must be a non-negative number of cores, got {self.background_load!r}")
        if not (isinstance(self.contention, (int, float)) and math.isfinite(self.contention)
                and self.contention >= 1.0):
            raise ConfigError("contention", f"`contention` must be a factor of at least 1, got {self.contention!r}")
        for param, value in (("num_gpus", self.num_gpus), ("gpus_per_node", self.gpus_per_node)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(param, f"`{param}` must be a positive integer, got {value!r}")
        for param, pairs in (("straggler", self.stragglers), ("degrade", self.degraded)):
            for device, factor in pairs:
                if not 0 <= device < self.num_gpus:
                    raise ConfigError(param, f"`{param}` names device {device}, but the cluster has "
                                             f"devices 0..{self.num_gpus - 1}")
                if not factor >= 1.0:
                    raise ConfigError(param, f"`{param}` factor must be at least 1, got {factor}")

    @classmethod
    def of(
        cls,
        gpu: str,
        num_gpus: int,
        gpus_per_node: int = 8,
        interconnect: str | None = None,
        inter_node: str = "ib-ndr",
        stragglers: tuple[tuple[int, float], ...] = (),
        degraded: tuple[tuple[int, float], ...] = (),
        margin: MemoryMargin | None = None,
    ) -> Cluster:
        """Build a cluster from catalog names; ``interconnect=None`` takes the GPU's usual link."""
        g = get_gpu(gpu)
        return cls(g, num_gpus, gpus_per_node, get_link(interconnect or g.default_link),
                   get_link(inter_node, "inter_node"), stragglers, degraded, margin=margin or MemoryMargin())

    def node(self, device: int) -> int:
        """The node a device sits in."""
        return device // self.gpus_per_node

    def link(self, src: int, dst: int) -> Link:
        """The link a transfer from ``src`` to ``dst`` crosses."""
        return self.intra if self.node(src) == self.node(dst) else self.inter

    def degradation(self, device: int) -> float:
        """The factor dividing the bandwidth of every message touching ``device`` (1.0 when healthy)."""
        for d, factor in self.degraded:
            if d == device:
                return factor
        return 1.0

    def slowdown(self, device: int) -> float:
        """The straggler factor of ``device`` (1.0 for a healthy one)."""
        for d, factor in self.stragglers:
            if d == device:
                return factor
        return 1.0

    def describe(self) -> str:
        """One line: ``5 x h100-sxm, 8/node, nvlink4 (ib-ndr between nodes)``."""
        text = f"{self.num_gpus} x {self.gpu.name}, {self.gpus_per_node}/node, {self.intra.name}"
        if self.num_gpus > self.gpus_per_node:
            text += f" ({self.inter.name} between nodes)"
        for d, f in self.stragglers:
            text += f", straggler d{d} x{f:g}"
        for d, f in self.degraded:
            text += f", degraded link d{d} /{f:g}"
        if self.host_cores is not None:
            text += (f", one host of {self.host_cores:g} cores ({self.threads_per_device} thread(s) per device, "
                     f"background load {self.background_load:.2g} cores, interference "
                     + (", ".join(f"x{f:.3g} at batch {b}" for b, f in sorted(self.contention_by_batch))
                        if self.contention_by_batch else f"x{self.contention:.3g}") + ")")
        elif self.contention > 1.0:
            text += f", shared-host contention x{self.contention:.3g}"
        return text

    def interference(self, batch: int) -> float:
        """The interference factor of a forward of ``batch`` tasks while other devices compute:
        ``contention_by_batch`` interpolated (held flat outside its range) when given, else ``contention``.

        >>> c = Cluster(Cluster.of("h100-sxm", 2).gpu, 2, host_cores=2, contention_by_batch=((1, 1.0), (3, 1.2)))
        >>> c.interference(1), round(c.interference(2), 3), c.interference(5)
        (1.0, 1.1, 1.2)
        """
        pts = sorted(self.contention_by_batch)
        if not pts:
            return self.contention
        if batch <= pts[0][0]:
            return pts[0][1]
        for (b0, f0), (b1, f1) in itertools.pairwise(pts):
            if batch <= b1:
                return f0 + (f1 - f0) * (batch - b0) / (b1 - b0)
        return pts[-1][1]

    def host_slowdown(self, computing: int) -> float:
        """Processor sharing: how many times slower each of ``computing`` devices computes at one instant
        (1.0 without ``host_cores``; see the class docstring).

        >>> c = Cluster.of("h100-sxm", 2)
        >>> Cluster(c.gpu, 2, host_cores=2, background_load=1.0).host_slowdown(2)
        1.5
        """
        return self.host_share(computing) * (self.contention if computing > 1 else 1.0)

    def host_share(self, computing: int) -> float:
        """Processor sharing without interference: how many times slower each of ``computing`` devices
        computes because the host's cores are shared, ``max(1, (n * threads + background) / cores)``."""
        if self.host_cores is None or computing < 1:
            return 1.0
        return max(1.0, (computing * self.threads_per_device + self.background_load) / self.host_cores)
