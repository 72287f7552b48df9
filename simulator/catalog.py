"""Catalogs of hardware and models, each figure with the source it came from.

Names are lower case (``h100-sxm``, ``nvlink4``, ``wan2.1-1.3b``). Figures come from
/work/shared/REFERENCE.md (datasheets and the public Wan2.1 configurations) unless the source says
``est`` (arithmetic or an estimate to calibrate). Model geometry (sizes, tokens, KV bytes) is read from
``models.config``, the one torch-free definition the executors use too; the simulator imports no torch.

>>> get_gpu("h100-sxm").hbm_bytes
80000000000
>>> get_model("wan2.1-1.3b").tokens_per_block
4680
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from cascade_sched.errors import ConfigError
from models.config import PRESETS, ModelConfig

GB = 1e9
REF = "REFERENCE.md"


@dataclass(frozen=True)
class GPU:
    """One GPU kind: dense bf16 peak, memory size and bandwidth, its usual GPU-GPU link."""

    name: str
    bf16_flops: float  # dense peak, FLOP/s
    hbm_bytes: int  # device memory
    mem_bw_Bps: float  # HBM bandwidth, bytes/s
    default_link: str  # the link a node of these GPUs usually has
    source: str


HOST_CPU = GPU("cpu", 1e12, 1 << 40, 1e11, "ideal",
               "a CPU rank of the distributed executor: profile-priced, memory not checked")


@dataclass(frozen=True)
class Link:
    """A GPU-GPU link in the alpha-beta model: ``latency_s + bytes / bandwidth_Bps`` per message.

    ``bandwidth_Bps`` is per direction and per GPU port; ``math.inf`` with zero latency is ``ideal``.
    """

    name: str
    bandwidth_Bps: float
    latency_s: float
    source: str

    def time_s(self, nbytes: float, messages: int = 1) -> float:
        """Seconds to move ``nbytes`` in ``messages`` messages (0 for nothing to move).

        >>> get_link("ideal").time_s(1e9), round(get_link("pcie5").time_s(64e9), 3)
        (0.0, 1.0)
        """
        if nbytes <= 0:
            return 0.0
        return messages * self.latency_s + nbytes / self.bandwidth_Bps


GPUS: dict[str, GPU] = {
    g.name: g
    for g in (
        GPU("h100-sxm", 989e12, 80_000_000_000, 3.35e12, "nvlink4", f"{REF}: H100 SXM datasheet"),
        GPU("h100-pcie", 756e12, 80_000_000_000, 2.0e12, "pcie5", f"{REF}: H100 PCIe datasheet"),
        GPU("h200", 989e12, 141_000_000_000, 4.8e12, "nvlink4", f"{REF}: H200 datasheet"),
        GPU("a100-sxm", 312e12, 80_000_000_000, 2.0e12, "nvlink3", f"{REF}: A100 SXM datasheet"),
        GPU("l40s", 362e12, 48_000_000_000, 0.86e12, "pcie4", f"{REF}: L40S datasheet"),
        GPU("b200", 2250e12, 192_000_000_000, 8.0e12, "nvlink5", f"{REF}: B200 datasheet"),
    )
}

LINKS: dict[str, Link] = {
    k.name: k
    for k in (
        Link("nvlink3", 300e9, 6e-6, f"{REF}: NVLink 3 per direction; latency as NVLink 4 (est)"),
        Link("nvlink4", 450e9, 6e-6, f"{REF}: NVLink 4 per direction; P2P latency ~6 us"),
        Link("nvlink5", 900e9, 6e-6, f"{REF}: NVLink 5 per direction; latency as NVLink 4 (est)"),
        Link("pcie4", 32e9, 10e-6, f"{REF}: PCIe Gen4 x16 per direction; latency 10 us (est)"),
        Link("pcie5", 64e9, 10e-6, f"{REF}: PCIe Gen5 x16 per direction; latency 10 us (est)"),
        Link("ib-ndr", 50e9, 5e-6, f"{REF}: InfiniBand NDR 400 Gb/s per port; latency 5 us (est)"),
        Link("ideal", math.inf, 0.0, "ideal: infinite bandwidth, zero latency (a bound, not hardware)"),
    )
}


@dataclass(frozen=True)
class Baseline:
    """A measured sequential FPS (the paper's definition: 12 frames over one block's denoising).

    ``window`` and ``num_denoise`` describe the sequential setting it was measured in.
    """

    fps: float
    gpu: str
    window: int | None
    num_denoise: int
    cache_pass: bool
    source: str


@dataclass(frozen=True)
class ModelGeometry:
    """What the simulator knows about a block-causal Wan-style DiT: its geometry (``config``, the one
    definition in ``models.config``, which imports no torch) plus what a run costs beyond the DiT.

    ``decode_s_per_frame`` is the VAE decoding time per video frame on an H100 SXM (scaled by peak FLOP/s
    on other GPUs).
    """

    config: ModelConfig
    weight_bytes: int = 0  # 0: estimated from the geometry in bf16
    decode_s_per_frame: float = 0.0
    decode_cache_bytes: int = 0
    baseline: Baseline | None = None
    source: str = ""
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.weight_bytes == 0:
            object.__setattr__(self, "weight_bytes", 2 * estimated_params(self))

    # The geometry, read from the config: sizes are defined once, in models.config.
    @property
    def name(self) -> str:
        return self.config.name

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def ffn_dim(self) -> int:
        return self.config.ffn_dim

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    @property
    def num_heads(self) -> int:
        return self.config.num_heads

    @property
    def text_len(self) -> int:
        return self.config.text_len

    @property
    def text_dim(self) -> int:
        return self.config.text_dim

    @property
    def frames_per_block(self) -> int:
        return self.config.frames_per_block

    @property
    def latent_channels(self) -> int:
        return self.config.in_channels

    @property
    def tokens_per_frame(self) -> int:
        """Tokens of one latent frame (``ModelConfig.tokens_per_frame``)."""
        return self.config.tokens_per_frame

    @property
    def tokens_per_block(self) -> int:
        """Tokens of one block (``ModelConfig.tokens_per_block``)."""
        return self.config.tokens_per_block

    def kv_bytes_per_block(self, dtype_bytes: int = 2) -> int:
        """K and V of one block over all layers (``ModelConfig.kv_bytes_per_block``).

        >>> round(get_model("wan2.1-1.3b").kv_bytes_per_block() / 1e9, 3)
        0.863
        """
        return self.config.kv_bytes_per_block(dtype_bytes)

    def latent_bytes_per_block(self, dtype_bytes: int = 2) -> int:
        """One block's latent (channels x frames x h x w), what moves between stages on two devices."""
        return math.prod(self.config.latent_shape()) * dtype_bytes


def estimated_params(g: ModelGeometry) -> int:
    """Parameters of a Wan2.1-style DiT from its geometry (linear layers, embeddings, modulation).

    >>> round(estimated_params(get_model("wan2.1-1.3b")) / 1e9, 2)
    1.42
    """
    c = g.config
    d, f = c.dim, c.ffn_dim
    per_layer = 8 * d * d + 2 * d * f + 6 * d + 10 * d  # self+cross attention, FFN, modulation, norms
    text = c.text_dim * d + d * d
    time = c.freq_dim * d + d * d + 6 * d * d
    patch = 2 * c.patch_dim * d
    return g.num_layers * per_layer + text + time + patch


_WAN_DECODE_S_PER_FRAME = 0.008  # est, see _WAN_NOTE
_WAN_DECODE_CACHE = 1_800_000_000  # REFERENCE.md: streaming Wan VAE cache ~1.8 GB fp16
_WAN_NOTE = (
    "VAE decode 8 ms per video frame on H100 is an estimate (no public per-block timing); calibrate it",
)

MODELS: dict[str, ModelGeometry] = {
    m.name: m
    for m in (
        ModelGeometry(
            PRESETS["wan2.1-1.3b"],
            weight_bytes=2_840_000_000,
            baseline=Baseline(16.0, "h100-sxm", 7, 4, True,
                              "arXiv 2511.20426: sequential 1.3B on one H100 (FA3), 16 FPS; window 21 frames "
                              "(Self-Forcing default)"),
            source=f"{REF}: Wan2.1-T2V-1.3B config; weights ~2.8 GB bf16 (est)",
            notes=_WAN_NOTE,
            decode_s_per_frame=_WAN_DECODE_S_PER_FRAME,
            decode_cache_bytes=_WAN_DECODE_CACHE,
        ),
        ModelGeometry(
            PRESETS["wan2.1-14b"],
            weight_bytes=28_600_000_000,
            baseline=Baseline(4.5, "h100-sxm", 7, 4, True,
                              "arXiv 2511.20426: sequential 14B on one H100 (FA3), 4.5 FPS; window 21 frames "
                              "(Self-Forcing default)"),
            source=f"{REF}: Wan2.1-T2V-14B config; weights ~28 GB bf16 (est)",
            notes=_WAN_NOTE,
            decode_s_per_frame=_WAN_DECODE_S_PER_FRAME,
            decode_cache_bytes=_WAN_DECODE_CACHE,
        ),
        # The CPU test and demo models: their geometry, weights estimated from it, nothing else priced.
        *(ModelGeometry(PRESETS[n], source=f"models/config.py preset `{n}`") for n in ("tiny", "small", "toy")),
    )
}


def _key(kind: str, table: Mapping[str, object], name: str) -> str:
    key = name.strip().lower() if isinstance(name, str) else ""
    if key not in table:
        raise ConfigError(kind, f"unknown {kind} {name!r}; known: {', '.join(sorted(table))}")
    return key


def get_gpu(name: str) -> GPU:
    """The GPU kind called ``name``; ``ConfigError`` (param ``gpu``) listing the known ones otherwise."""
    return GPUS[_key("gpu", GPUS, name)]


def get_link(name: str, param: str = "interconnect") -> Link:
    """The link called ``name``; ``ConfigError`` naming ``param`` otherwise."""
    return LINKS[_key(param, LINKS, name)]


def get_model(name: str) -> ModelGeometry:
    """The model geometry called ``name``; ``ConfigError`` (param ``model``) otherwise."""
    return MODELS[_key("model", MODELS, name)]


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

    >>> c = Cluster.of("h100-sxm", 16)
    >>> c.intra.name, c.link(0, 9).name, c.link(0, 7).name
    ('nvlink4', 'ib-ndr', 'nvlink4')
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
    ) -> Cluster:
        """Build a cluster from catalog names; ``interconnect=None`` takes the GPU's usual link."""
        g = get_gpu(gpu)
        return cls(g, num_gpus, gpus_per_node, get_link(interconnect or g.default_link),
                   get_link(inter_node, "inter_node"), stragglers, degraded)

    def node(self, device: int) -> int:
        """The node a device sits in."""
        return device // self.gpus_per_node

    def link(self, src: int, dst: int) -> Link:
        """The link a transfer from ``src`` to ``dst`` crosses."""
        return self.intra if self.node(src) == self.node(dst) else self.inter

    def bandwidth(self, src: int, dst: int) -> float:
        """Bytes/s from ``src`` to ``dst``, after any degraded port on either end."""
        bw = self.link(src, dst).bandwidth_Bps
        for device, factor in self.degraded:
            if device in (src, dst):
                bw /= factor
        return bw

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
