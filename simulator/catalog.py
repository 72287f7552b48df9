"""Catalogs of hardware and models, each figure with the source it came from.

Names are lower case (``h100-sxm``, ``nvlink4``, ``wan2.1-1.3b``). Every figure names its source: a
datasheet, a public measurement (docs/references.md lists each with its original source), a count on
public code (``benchmarks/count_flops.py`` redoes it), or ``est`` (an estimate, to calibrate). Model
geometry (sizes, tokens, KV bytes) is read from ``models.config``, the one torch-free definition the
executors use too; the simulator imports no torch.

>>> get_gpu("h100-sxm").hbm_bytes
80000000000
>>> get_model("wan2.1-1.3b").tokens_per_block
4680
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from cascade_sched.errors import ConfigError
from models.config import PRESETS, ModelConfig, ModelSlice

GB = 1e9
MiB = 1 << 20
GiB = 1 << 30

# The H100 SXM's measured dense bf16 GEMM rate (8192^3 matmul, 798 of 989 TFLOP/s): other GPUs reach the
# same fraction of their peak (est).
H100_GEMM_FLOPS = 798e12
GEMM_FRACTION = H100_GEMM_FLOPS / 989e12


@dataclass(frozen=True)
class GPU:
    """One GPU kind: dense bf16 peak, memory size and bandwidth, its usual GPU-GPU link, and the dense
    bf16 GEMM rate it reaches (``gemm_flops``; 0 = ``GEMM_FRACTION`` of the peak, an estimate)."""

    name: str
    bf16_flops: float  # dense peak, FLOP/s (FP32 accumulate)
    hbm_bytes: int  # device memory
    mem_bw_Bps: float  # HBM bandwidth, bytes/s
    default_link: str  # the link a node of these GPUs usually has
    source: str
    gemm_flops: float = 0.0
    gemm_source: str = ""

    @property
    def gemm_rate(self) -> float:
        """Achieved dense bf16 GEMM FLOP/s."""
        return self.gemm_flops or GEMM_FRACTION * self.bf16_flops


HOST_CPU = GPU("cpu", 1e12, 1 << 40, 1e11, "ideal",
               "a CPU rank of the distributed executor: profile-priced, memory not checked")


@dataclass(frozen=True)
class Link:
    """A GPU-GPU link: per message ``latency_s + bytes / achieved_Bps(bytes)``.

    ``bandwidth_Bps`` is what point-to-point messages between one pair of GPUs reach at large sizes
    (per direction); ``curve`` gives the achieved bandwidth at smaller messages ((bytes, B/s) points,
    interpolated in log size, flat outside; empty: ``bandwidth_Bps`` at every size). ``port_Bps`` caps
    what one GPU sends (or receives) to all its peers at once (0: ``bandwidth_Bps``, one peer at a time).
    ``datasheet_Bps`` is the nominal figure, kept for the record. ``math.inf`` with zero latency is
    ``ideal``.

    >>> nv = get_link("nvlink4")
    >>> round(nv.achieved_Bps(28.75e6) / 1e9), round(nv.achieved_Bps(4 * GiB) / 1e9)
    (80, 180)
    """

    name: str
    bandwidth_Bps: float
    latency_s: float
    source: str
    curve: tuple[tuple[float, float], ...] = ()
    port_Bps: float = 0.0
    datasheet_Bps: float = 0.0

    def achieved_Bps(self, nbytes: float) -> float:
        """Bytes/s a message of ``nbytes`` reaches between two GPUs."""
        pts = self.curve
        if not pts or nbytes >= pts[-1][0]:
            return self.bandwidth_Bps
        if nbytes <= pts[0][0]:
            return pts[0][1]
        i = bisect.bisect_left([p[0] for p in pts], nbytes)
        (x0, y0), (x1, y1) = pts[i - 1], pts[i]
        f = (math.log(nbytes) - math.log(x0)) / (math.log(x1) - math.log(x0))
        return y0 + (y1 - y0) * f

    @property
    def port_rate(self) -> float:
        """Bytes/s one GPU moves to (or from) all its peers at once."""
        return self.port_Bps or self.bandwidth_Bps

    def wire_s(self, nbytes: float) -> float:
        """Seconds one message of ``nbytes`` spends on the wire (its latency apart)."""
        if nbytes <= 0 or self.bandwidth_Bps == math.inf:
            return 0.0
        return nbytes / self.achieved_Bps(nbytes)

    def time_s(self, nbytes: float, messages: int = 1) -> float:
        """Seconds to move ``nbytes`` as ``messages`` equal messages, one after another (0 for nothing).

        >>> get_link("ideal").time_s(1e9), round(get_link("pcie5").time_s(64e9) * 1e3)
        (0.0, 1250)
        """
        if nbytes <= 0:
            return 0.0
        return messages * (self.latency_s + self.wire_s(nbytes / messages))


def _scaled(name: str, datasheet: float, like: Link, latency: float, why: str) -> Link:
    """A link whose achieved figures are ``like``'s scaled by the ratio of datasheet bandwidths (est)."""
    r = datasheet / like.datasheet_Bps
    return Link(name, like.bandwidth_Bps * r, latency,
                f"{why}; achieved bandwidth = nvlink4's measured curve x {r:.3g} (est)",
                tuple((b, v * r) for b, v in like.curve), like.port_Bps * r, datasheet)


GPUS: dict[str, GPU] = {
    g.name: g
    for g in (
        GPU("h100-sxm", 989e12, 80_000_000_000, 3.35e12, "nvlink4", "NVIDIA H100 datasheet (SXM5)",
            H100_GEMM_FLOPS, "measured: bf16 8192^3 matmul 798 TFLOP/s on an H100 SXM"),
        GPU("h100-pcie", 756e12, 80_000_000_000, 2.0e12, "pcie5", "NVIDIA H100 datasheet (PCIe)"),
        GPU("h200", 989e12, 141_000_000_000, 4.8e12, "nvlink4", "NVIDIA H200 datasheet"),
        GPU("a100-sxm", 312e12, 80_000_000_000, 2.0e12, "nvlink3", "NVIDIA A100 datasheet (SXM4 80GB)"),
        GPU("l40s", 362e12, 48_000_000_000, 0.86e12, "pcie4", "NVIDIA L40S datasheet"),
        GPU("b200", 2250e12, 192_000_000_000, 8.0e12, "nvlink5", "NVIDIA B200 datasheet (HGX B200)"),
        GPU("gb200", 2500e12, 186_000_000_000, 8.0e12, "nvlink5", "NVIDIA GB200 NVL72 datasheet, per GPU"),
        GPU("rtx5090", 209.5e12, 32_000_000_000, 1.792e12, "pcie5",
            "NVIDIA RTX Blackwell architecture whitepaper: RTX 5090 FP16/BF16 tensor 209.5 TFLOP/s dense with "
            "FP32 accumulate, 32 GB GDDR7 at 1.792 TB/s"),
    )
}

_NVLINK4 = Link(
    "nvlink4", 180e9, 15e-6,
    "NCCL point-to-point between two H100s over NVLink 4: ~80 GB/s at nccl-tests' default 32 MiB messages, "
    "rising to a ~180 GB/s plateau at large messages (NVIDIA/nccl-tests issue 268; plateau size 1 GiB est); "
    "latency 15 us per message group (per-collective latency 10-20 us); one GPU's port to all peers 380 GB/s "
    "(raw GPU-to-GPU copy one way, NVIDIA/nccl issue 1264); datasheet 450 GB/s per direction",
    ((32 * MiB, 80e9), (1 * GiB, 180e9)), 380e9, 450e9,
)

LINKS: dict[str, Link] = {
    k.name: k
    for k in (
        _scaled("nvlink3", 300e9, _NVLINK4, 15e-6, "NVLink 3 (A100), 300 GB/s per direction datasheet"),
        _NVLINK4,
        _scaled("nvlink5", 900e9, _NVLINK4, 15e-6, "NVLink 5 (B200), 900 GB/s per direction datasheet"),
        Link("pcie4", 0.8 * 32e9, 20e-6, "PCIe Gen4 x16, 32 GB/s per direction datasheet; NCCL reaches 80% of it "
             "(est), with nvlink4's small-message ramp (est); latency 20 us (est)",
             ((32 * MiB, 0.8 * 32e9 * 80 / 180), (1 * GiB, 0.8 * 32e9)), 0.8 * 32e9, 32e9),
        Link("pcie5", 0.8 * 64e9, 20e-6, "PCIe Gen5 x16, 64 GB/s per direction datasheet; NCCL reaches 80% of it "
             "(est), with nvlink4's small-message ramp (est); latency 20 us (est)",
             ((32 * MiB, 0.8 * 64e9 * 80 / 180), (1 * GiB, 0.8 * 64e9)), 0.8 * 64e9, 64e9),
        Link("ib-ndr", 0.9 * 50e9, 15e-6, "InfiniBand NDR 400 Gb/s, 50 GB/s per port datasheet; NCCL reaches 90% "
             "of it (est); latency 15 us (est)", (), 0.9 * 50e9, 50e9),
        Link("ideal", math.inf, 0.0, "ideal: infinite bandwidth, zero latency (a bound, not hardware)"),
    )
}


@dataclass(frozen=True)
class Baseline:
    """A measured sequential FPS (the paper's definition: 12 frames over one block's denoising: its K
    denoise forwards, the cache pass and the sampler steps; no decoding, no text encoding).

    ``window`` and ``num_denoise`` describe the sequential setting it was measured in; ``attention`` is
    the attention kernel of that run (``fa3`` or ``fa2``, :mod:`simulator.rates`).
    """

    fps: float
    gpu: str
    window: int | None
    num_denoise: int
    cache_pass: bool
    source: str
    attention: str = "fa3"


COUNTED_LATENT = (60, 104)  # the latent frame (480x832 video) the decoders' work was counted at
COUNTED_FRAMES = 3  # latent frames of the block the decoders' work was counted for


@dataclass(frozen=True)
class Decoder:
    """A latent-to-video decoder priced from its counted work, for a block of ``COUNTED_FRAMES`` latent
    frames at the ``COUNTED_LATENT`` size: ``flops(frames)`` and ``bytes(frames)`` are affine in the video
    frames the block decodes to (the Wan VAE makes 9 for the first block, 12 after).

    The Wan VAE decodes one latent frame at a time (a causal first chunk of 1 video frame, then 4 per
    latent frame), so the fixed part is per latent frame: ``flops(frames, latent_frames)`` scales it by
    ``latent_frames / COUNTED_FRAMES``. That reproduces both counted blocks at 3 latent frames, and prices a
    1-latent-frame chunk (StreamDiffusionV2's) at a third of a later block. :meth:`at_area` scales the work
    and the streaming cache to another latent size (convolutions are linear in pixels, est).
    """

    name: str
    flops_fixed: float
    flops_per_frame: float
    bytes_fixed: float  # memory traffic, every op's inputs and outputs unfused
    bytes_per_frame: float
    weight_bytes: int
    cache_bytes: int  # the streaming state kept across blocks
    source: str

    def flops(self, frames: int, latent_frames: int = COUNTED_FRAMES) -> float:
        """FLOPs of decoding one block of ``latent_frames`` latent frames into ``frames`` video frames."""
        return self.flops_fixed * latent_frames / COUNTED_FRAMES + self.flops_per_frame * frames

    def bytes(self, frames: int, latent_frames: int = COUNTED_FRAMES) -> float:
        """Memory traffic of the same decode."""
        return self.bytes_fixed * latent_frames / COUNTED_FRAMES + self.bytes_per_frame * frames

    def at_area(self, latent_height: int, latent_width: int) -> Decoder:
        """This decoder at another latent frame size: work and streaming cache scaled by the pixel count
        (itself at the counted size).

        >>> round(WAN_VAE.at_area(64, 64).flops(12) / WAN_VAE.flops(12), 3)  # 512x512 against 480x832
        0.656
        """
        area = latent_height * latent_width
        base = COUNTED_LATENT[0] * COUNTED_LATENT[1]
        if area == base:
            return self
        r = area / base
        return replace(self, flops_fixed=self.flops_fixed * r, flops_per_frame=self.flops_per_frame * r,
                       bytes_fixed=self.bytes_fixed * r, bytes_per_frame=self.bytes_per_frame * r,
                       cache_bytes=int(self.cache_bytes * r),
                       source=f"{self.source}; scaled x{r:.3g} to a {latent_height}x{latent_width} latent (est: "
                              "convolutions linear in pixels)")


def _affine(first: float, later: float, f0: int = 9, f1: int = 12) -> tuple[float, float]:
    per = (later - first) / (f1 - f0)
    return later - per * f1, per


# Counted by benchmarks/count_flops.py on the public decoders at 60x104 latent -> 480x832 (meta device,
# torch.utils.flop_counter.FlopCounterMode; bytes = inputs + outputs of every aten op, unfused).
_VAE_FLOPS = _affine(31.452e12, 40.650e12)
_VAE_BYTES = _affine(271.73e9, 360.97e9)
WAN_VAE = Decoder(
    "wan-vae", *_VAE_FLOPS, *_VAE_BYTES, weight_bytes=147_000_000, cache_bytes=1_800_000_000,
    source="Wan2.1 VAE decoder (diffusers AutoencoderKLWan, same weights as wan/modules/vae.py), streaming "
           "decode, counted: 31.45 TFLOP / 271.7 GB for the first block (9 frames), 40.65 TFLOP / 361.0 GB per "
           "later block (12 frames), 73.3 M decoder parameters; streaming cache ~1.8 GB fp16",
)
# TAEHV computes 4 frames per latent frame, the first block included (it drops the 3 start-up frames), so
# its work is per latent frame and does not depend on the frame count.
TAEHV = Decoder(
    "taehv", 3 * 0.5442e12, 0.0, 3 * 3.725e9, 0.0, weight_bytes=20_000_000, cache_bytes=100_000_000,
    source="TAEHV tiny decoder for Wan 2.1 latents (madebyollin/taehv taehv.py, taew2_1), counted from its "
           "layer list: 0.544 TFLOP and 3.7 GB of activations per latent frame, 9.8 M parameters; streaming "
           "state ~0.1 GB (est)",
)


@dataclass(frozen=True)
class TextEncoder:
    """The prompt encoder run once per prompt: ``flops()`` for ``tokens`` tokens, weights ``weight_bytes``."""

    name: str
    layers: int
    dim: int
    ffn_dim: int
    tokens: int
    matmul_params: int  # parameters in the matmuls a token goes through (embeddings excluded)
    weight_bytes: int
    source: str

    def flops(self) -> float:
        return 2.0 * self.matmul_params * self.tokens + 4.0 * self.layers * self.tokens**2 * self.dim


UMT5_XXL = TextEncoder(
    "umt5-xxl", layers=24, dim=4096, ffn_dim=10240, tokens=512,
    matmul_params=24 * (4 * 4096 * 4096 + 3 * 4096 * 10240), weight_bytes=11_360_000_000,
    source="umT5-XXL encoder of Wan2.1 (public wan/modules/t5.py: 24 layers, dim 4096, gated FFN 10240, "
           "64 heads; 512 text tokens); weights 5.68 B parameters in bf16 (models_t5_umt5-xxl-enc-bf16.pth)",
)


@dataclass(frozen=True)
class ModelGeometry:
    """What the simulator knows about a block-causal Wan-style DiT: its geometry (``config``, the one
    definition in ``models.config``, which imports no torch) plus what a run needs beyond the DiT: the
    decoders that can turn its latents into video, its text encoder, and a published sequential baseline.
    """

    config: ModelConfig
    weight_bytes: int = 0  # 0: estimated from the geometry in bf16
    decoders: Mapping[str, Decoder] = field(default_factory=dict)
    text_encoder: TextEncoder | None = None
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

    def kv_bytes_per_layer(self, dtype_bytes: int = 2) -> int:
        """K and V of one block in one layer: one gang message (``ModelConfig.kv_bytes_per_block_layer``)."""
        return self.config.kv_bytes_per_block_layer(dtype_bytes)

    def latent_bytes_per_block(self, dtype_bytes: int = 2) -> int:
        """One block's latent (channels x frames x h x w), what moves between stages on two devices."""
        return math.prod(self.config.latent_shape()) * dtype_bytes

    def decoder(self, name: str) -> Decoder | None:
        """The decoder called ``name`` at this model's latent size (None: this model has no priced decoder;
        a profile must price it)."""
        key = name.strip().lower()
        if self.decoders and key not in self.decoders:
            raise ConfigError("decoder", f"unknown decoder {name!r} for {self.name}; known: "
                                         f"{', '.join(sorted(self.decoders))}")
        dec = self.decoders.get(key)
        return dec.at_area(self.config.latent_height, self.config.latent_width) if dec is not None else None

    def at(self, frames_per_block: int | None = None, resolution: tuple[int, int] | None = None) -> ModelGeometry:
        """This model at another block size (latent frames per block) and video resolution (height, width
        in pixels): ``ModelConfig.with_geometry`` checks both (one ``ConfigError`` naming
        ``--frames-per-block`` or ``--resolution``). Weights are unchanged; decoders scale with the area.

        >>> get_model("wan2.1-1.3b").at(1, (512, 512)).tokens_per_block
        1024
        """
        config = self.config.with_geometry(frames_per_block=frames_per_block, resolution=resolution)
        return self if config == self.config else replace(self, config=config)

    def slice_weight_bytes(self, part: ModelSlice | None = None) -> int:
        """Weight bytes a rank holding ``part`` materialises: the model's weights times its share of the
        parameters (``ModelConfig.parameter_count``, which counts the conditioning every slice holds).

        >>> g = get_model("wan2.1-1.3b")
        >>> round(g.slice_weight_bytes(g.config.layer_slice(0, 15)) / g.weight_bytes, 3)  # + the conditioning
        0.509
        """
        if part is None:
            return self.weight_bytes
        c = self.config
        return round(self.weight_bytes * c.parameter_count(part) / c.parameter_count())


def estimated_params(g: ModelGeometry) -> int:
    """Parameters of a Wan2.1-style DiT from its geometry: ``ModelConfig.parameter_count``, the one count the
    executors' slices use too.

    >>> round(estimated_params(get_model("wan2.1-1.3b")) / 1e9, 2)
    1.42
    """
    return g.config.parameter_count()


_PAPER = "arXiv 2511.20426 (Block Cascading)"
_WAN_DECODERS = {"vae": WAN_VAE, "taehv": TAEHV}

def _wan(preset: str, weights: int, fps: float, size: str) -> ModelGeometry:
    """A Wan2.1 model with its decoders, text encoder and the paper's sequential baseline."""
    return ModelGeometry(
        PRESETS[preset], weight_bytes=weights, decoders=_WAN_DECODERS, text_encoder=UMT5_XXL,
        baseline=Baseline(fps, "h100-sxm", 7, 4, True,
                          f"{_PAPER}: sequential {size} on one H100 (FlashAttention 3), {fps:g} FPS; window 21 frames "
                          "(Self-Forcing's default cache)"),
        source=f"Wan2.1-T2V-{size.upper()} config (public Wan2.1 repo); weights ~{weights / 1e9:.2g} GB bf16 (est)",
    )


MODELS: dict[str, ModelGeometry] = {
    m.name: m
    for m in (
        _wan("wan2.1-1.3b", 2_840_000_000, 16.0, "1.3B"),
        _wan("wan2.1-14b", 28_600_000_000, 4.5, "14B"),
        # The CPU test and demo models: their geometry, weights estimated from it; their decoders and text
        # embeddings are the executors' own (a profile measures them).
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


def get_model(name: str, frames_per_block: int | None = None,
              resolution: tuple[int, int] | None = None) -> ModelGeometry:
    """The model geometry called ``name``, at another block size or resolution when given
    (:meth:`ModelGeometry.at`); ``ConfigError`` (param ``model``) for an unknown name."""
    return MODELS[_key("model", MODELS, name)].at(frames_per_block, resolution)
