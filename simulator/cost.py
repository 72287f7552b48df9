"""Cost models: how long each part of a block's time takes, each part priced on its own with its source.

A cost model is a small object with a ``name`` and a ``source`` (its provenance, copied into every
result) and, all in seconds:

- ``forward_s(query_tokens, contexts)``: one batched forward of ``len(contexts)`` members on one device,
  each with ``query_tokens`` new tokens attending to ``contexts[i]`` tokens (its own plus visible KV); the
  cache pass is a forward like any other (:meth:`RooflineCost.parts` splits one into its parts);
- ``sample_s(n)``: the sampler steps of ``n`` denoise tasks after that forward;
- ``decode_s(block, frames)``: decoding one block into ``frames`` video frames (9 for the first block of
  the Wan VAE, 12 after: ``cascade_sched.metrics.video_frames``);
- ``text_s()``: encoding one prompt (at the start, and at every prompt switch);
- ``tick_s()``: the executor's per-tick framework overhead on a device that has work in the tick.

Two optional methods, asked for where a cost model has them (:func:`slice_seconds`, :func:`encode_seconds`):

- ``slice_s(query_tokens, contexts, part)``: the forward of the layers ``part`` holds (a
  ``models.config.ModelSlice``: layers ``[first, end)``, the patch embedding when ``entry``, the head when
  ``head``), what one device of a layer ring runs. Without it a slice costs the whole forward times its
  share of the layers (est);
- ``encode_s(block)``: encoding one block of input video into latents (video-to-video runs, on the first
  device of the block's ring); without it, nothing.

Built-in models (:func:`make_cost` parses the names):

- ``parts`` (the default; ``baseline-fps`` is the same): :class:`RooflineCost` with linear layers at the
  GPU's GEMM rate, attention at FlashAttention-3 rates for its key length, and a per-forward overhead
  fitted once, jointly, to the paper's two sequential baselines (16 FPS for 1.3B, 4.5 FPS for 14B on one
  H100): what those figures leave unknown once every other part is priced from its own measurement.
  ``baseline-fps:FPS`` refits that overhead's scale to a sequential FPS measured on the chosen GPU.
- ``roofline``: the same rates with no overhead (a bound: no implementation reaches it).
- ``uniform:SECONDS``: every task costs the same (tests and teaching).
- ``profile:PATH``: measured times (:class:`simulator.profile.ProfileCost`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

from cascade_sched.errors import ConfigError
from models.config import ModelSlice
from simulator.catalog import GPU, Baseline, Decoder, ModelGeometry, get_gpu, get_model
from simulator.public import figure
from simulator.rates import (
    CONV_SOURCE,
    FA_SOURCE,
    attention_rate,
    conv_efficiency,
    decode_seconds,
    memory_rate,
)

__all__ = [
    "ENCODE_SOURCE",
    "NO_OVERHEAD",
    "CostModel",
    "Overhead",
    "RooflineCost",
    "UniformCost",
    "encode_seconds",
    "fit_baseline",
    "make_cost",
    "paper_overhead",
    "sequential_interval",
    "slice_seconds",
]


@runtime_checkable
class CostModel(Protocol):
    """What the simulator asks a cost model; ``name`` and ``source`` are its provenance."""

    @property
    def name(self) -> str:
        """Which kind of cost model: parts, roofline, baseline-fps, profile or uniform."""
        ...

    @property
    def source(self) -> str:
        """Where its numbers came from (a file, a fit, public measurements)."""
        ...

    def forward_s(self, query_tokens: int, contexts: tuple[int, ...]) -> float:
        """Seconds for one device's batched forward of ``len(contexts)`` members."""
        ...

    def sample_s(self, n: int) -> float:
        """Seconds for the sampler steps of ``n`` denoise tasks of one batch."""
        ...

    def decode_s(self, block: int, frames: int) -> float:
        """Seconds to decode ``block`` into ``frames`` video frames."""
        ...

    def text_s(self) -> float:
        """Seconds to encode one prompt."""
        ...

    def tick_s(self) -> float:
        """Seconds of framework overhead per tick on a device with work in it."""
        ...


@dataclass(frozen=True)
class UniformCost:
    """Every task costs ``task_s`` (a batch of n costs n x ``task_s``: batching buys nothing); decoding,
    sampling, text encoding and tick overhead cost nothing unless given. For tests and teaching.

    >>> UniformCost(0.1).forward_s(4680, (4680, 9360))
    0.2
    """

    task_s: float
    decode_block_s: float = 0.0
    sample_task_s: float = 0.0
    text_encode_s: float = 0.0
    tick_overhead_s: float = 0.0
    name: str = "uniform"
    encode_block_s: float = 0.0

    def __post_init__(self) -> None:
        for label, v in (("task", self.task_s), ("decode", self.decode_block_s), ("sample", self.sample_task_s),
                         ("text", self.text_encode_s), ("tick", self.tick_overhead_s),
                         ("encode", self.encode_block_s)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigError("cost", f"`uniform` {label} seconds must be a finite number >= 0, got {v!r}")

    @property
    def source(self) -> str:
        return (f"uniform: {self.task_s:g} s per task, {self.sample_task_s:g} s per sampler step, "
                f"{self.decode_block_s:g} s per decoded block, {self.text_encode_s:g} s per prompt, "
                f"{self.tick_overhead_s:g} s per tick")

    def forward_s(self, query_tokens: int, contexts: tuple[int, ...]) -> float:
        return self.task_s * len(contexts)

    def sample_s(self, n: int) -> float:
        return self.sample_task_s * n

    def decode_s(self, block: int, frames: int) -> float:
        return self.decode_block_s

    def text_s(self) -> float:
        return self.text_encode_s

    def tick_s(self) -> float:
        return self.tick_overhead_s

    def encode_s(self, block: int) -> float:
        return self.encode_block_s


@dataclass(frozen=True)
class Overhead:
    """What a forward costs beyond its GEMMs and attention: ``per_layer_s`` of fixed cost per layer
    (kernel launches, Python) plus ``passes`` float32 elementwise passes over every token's hidden state
    per layer (norms, modulation, RoPE, residuals) at the GPU's memory rate."""

    per_layer_s: float
    passes: float
    source: str

    def seconds(self, tokens: int, dim: int, layers: int, gpu: GPU) -> float:
        return layers * (self.per_layer_s + self.passes * tokens * dim * 4 / memory_rate(gpu))


NO_OVERHEAD = Overhead(0.0, 0.0, "no per-forward overhead (a bound)")


@dataclass(frozen=True)
class RooflineCost:
    """Every part of a block's time from the model geometry and the GPU's measured rates
    (:mod:`simulator.rates`).

    Per member with q query tokens over c context tokens, FLOPs (2 per multiply-add): linear layers
    ``2 q L (6 d^2 + 2 d f)`` (self-attention QKVO, cross-attention Q and O, FFN) at the GEMM rate;
    self-attention ``4 L q c d`` and cross-attention over the T text tokens ``4 L q T d`` at the attention
    kernel's rate for c (resp. T) keys; the prompt's cross-attention K/V is computed once per prompt and
    cached. At least the weights' and the visible KV's bytes at the memory rate. Plus ``overhead``.
    The sampler is a few elementwise passes over the latent; the decoder its counted FLOPs at the fitted
    convolution efficiency plus its counted bytes; the text encoder its matmuls at the GEMM rate plus the
    per-layer overhead.

    >>> cost = RooflineCost(get_model("wan2.1-1.3b"), get_gpu("h100-sxm"))
    >>> round(cost.flops(4680, (4680,)) / 1e12, 1)  # ~16 TFLOP with 1 visible block
    16.2
    """

    geometry: ModelGeometry
    gpu: GPU
    overhead: Overhead = NO_OVERHEAD
    decoder_name: str = "vae"
    attention_kernel: str = "fa3"
    name: str = "roofline"
    fitted: str = ""

    @property
    def decoder(self) -> Decoder | None:
        return self.geometry.decoder(self.decoder_name)

    @property
    def source(self) -> str:
        g = self.gpu
        text = (f"{self.name}: {self.geometry.name} on {g.name} ({g.source}); linear layers at "
                f"{g.gemm_rate / 1e12:.0f} TFLOP/s ({g.gemm_source or 'est: the H100 fraction of peak'}); "
                f"attention {self.attention_kernel} ({FA_SOURCE}); overhead {self.overhead.per_layer_s * 1e3:.3g} ms "
                f"per layer + {self.overhead.passes:.3g} fp32 passes per layer ({self.fitted or self.overhead.source})")
        dec = self.decoder
        if dec is not None:
            text += f"; decoder {dec.name} ({dec.source}; {CONV_SOURCE})"
        return text

    def _split(self, q: int, contexts: tuple[int, ...], layers: int | None = None) -> tuple[float, float, float]:
        """(linear FLOPs, attention FLOPs, attention seconds) of one batched forward over ``layers`` layers
        (default all)."""
        g, gpu, kernel = self.geometry, self.gpu, self.attention_kernel
        d, L, T = g.dim, g.num_layers if layers is None else layers, g.text_len
        n = len(contexts)
        linear = n * 2.0 * q * L * (6 * d * d + 2 * d * g.ffn_dim)
        att_flops = 0.0
        att_s = 0.0
        per = 4.0 * L * q * d
        cross = per * T
        cross_s = cross / attention_rate(kernel, T, gpu)
        for c in contexts:
            f = per * c
            att_flops += f + cross
            att_s += f / attention_rate(kernel, c, gpu) + cross_s
        return linear, att_flops, att_s

    def flops(self, query_tokens: int, contexts: tuple[int, ...]) -> float:
        """Total FLOPs of one batched forward."""
        linear, attention, _ = self._split(query_tokens, contexts)
        return linear + attention

    def parts(self, query_tokens: int, contexts: tuple[int, ...], part: ModelSlice | None = None) -> dict[str, float]:
        """Seconds of one batched forward by part: ``linear``, ``attention``, ``overhead`` (a forward bound
        by reading its weights and KV adds the difference to ``linear``), over the layers of ``part`` (default
        the whole model). A slice of some layers also prices its ``entry`` (the patch embedding) and
        ``head`` (norm, modulation and the output projection) where it holds them, from their counted
        FLOPs and bytes; in a whole forward they are inside the fitted overhead (< 0.1% of its FLOPs).

        >>> cost = RooflineCost(get_model("wan2.1-1.3b"), get_gpu("h100-sxm"), paper_overhead())
        >>> q = 4680
        >>> whole = cost.forward_s(q, (2 * q,))
        >>> half = cost.slice_s(q, (2 * q,), cost.geometry.config.layer_slice(0, 15))
        >>> round(half / whole, 3)  # half the layers, and the patch embedding
        0.5
        """
        g, gpu = self.geometry, self.gpu
        layers = g.num_layers if part is None else part.end - part.first
        linear, _, att_s = self._split(query_tokens, contexts, layers)
        lin_s = linear / gpu.gemm_rate
        weights = g.weight_bytes if part is None else g.slice_weight_bytes(part)
        floor = (weights + sum(contexts) * layers * 4 * g.dim) / memory_rate(gpu)
        if lin_s + att_s < floor:
            lin_s = floor - att_s
        tokens = query_tokens * len(contexts)
        out = {"linear": lin_s, "attention": att_s, "overhead": self.overhead.seconds(tokens, g.dim, layers, gpu)}
        if part is not None and layers < g.num_layers:
            c = g.config
            out["entry"] = self._edge_s(tokens, 2.0 * tokens * c.patch_dim * g.dim) if part.entry else 0.0
            out["head"] = self._edge_s(tokens, 2.0 * tokens * g.dim * c.out_channels * math.prod(c.patch_size)) \
                if part.head else 0.0
        return out

    def _edge_s(self, tokens: int, flops: float) -> float:
        """The patch embedding or the head of ``tokens`` tokens: its GEMM at the GEMM rate, two float32 passes
        over the hidden state (norm, modulation; est) and five kernel launches of 5 us (est)."""
        return flops / self.gpu.gemm_rate + 2 * tokens * self.geometry.dim * 4 / memory_rate(self.gpu) + 5 * 5e-6

    def forward_s(self, query_tokens: int, contexts: tuple[int, ...]) -> float:
        key = (query_tokens, contexts, None)
        got = self._memo.get(key)
        if got is None:
            got = self._memo[key] = sum(self.parts(query_tokens, contexts).values())
        return got

    def slice_s(self, query_tokens: int, contexts: tuple[int, ...], part: ModelSlice) -> float:
        """One device's forward over the layers of ``part`` (:meth:`parts`), remembered per shape (a planner
        prices the same shapes for many points)."""
        key = (query_tokens, contexts, part)
        got = self._memo.get(key)
        if got is None:
            got = self._memo[key] = sum(self.parts(query_tokens, contexts, part).values())
        return got

    @property
    def _memo(self) -> dict[Any, float]:
        memo: dict[Any, float] | None = self.__dict__.get("_slice_memo")
        if memo is None:
            memo = {}
            object.__setattr__(self, "_slice_memo", memo)
        return memo

    def sample_s(self, n: int) -> float:
        # x0 = x - sigma v, fresh noise, re-noise: ~8 float32 passes over the latent, plus ~10 launches (est).
        latent = self.geometry.latent_bytes_per_block(4)
        return n * (10 * 5e-6 + 8 * latent / memory_rate(self.gpu))

    def decode_s(self, block: int, frames: int) -> float:
        dec = self.decoder
        if dec is None:
            return 0.0
        f = self.geometry.frames_per_block
        return decode_seconds(dec.flops(frames, f), dec.bytes(frames, f), self.gpu, conv_efficiency())

    def encode_s(self, block: int) -> float:
        """Encoding one block of input video (video-to-video): the Wan VAE decoder's price for the block
        times the encoder-to-decoder ratio measured per chunk on an RTX 5090 (:func:`encode_ratio`, est)."""
        f = self.geometry.frames_per_block
        from cascade_sched.metrics import video_frames

        return self.decode_s(block, video_frames(block, f)) * encode_ratio()

    def text_s(self) -> float:
        enc = self.geometry.text_encoder
        if enc is None:
            return 0.0
        compute = enc.flops() / self.gpu.gemm_rate
        weights = enc.weight_bytes / memory_rate(self.gpu)
        return max(compute, weights) + enc.layers * self.overhead.per_layer_s

    def tick_s(self) -> float:
        return 0.0  # the paper-fitted overhead per forward already holds the tick loop's own


def slice_seconds(cost: CostModel, query_tokens: int, contexts: tuple[int, ...], part: ModelSlice | None,
                  num_layers: int) -> tuple[float, bool]:
    """(seconds, priced by share) of one device's forward over the layers of ``part`` (None or every layer:
    the whole forward): the cost model's own ``slice_s`` where it has one, else the whole forward times
    the slice's share of the layers (an estimate, flagged by the second value).

    >>> part = get_model("tiny").config.layer_slice(0, 1)
    >>> slice_seconds(UniformCost(0.1), 12, (12, 24), part, 2)
    (0.1, True)
    """
    if part is None or (part.first == 0 and part.end == num_layers):
        return cost.forward_s(query_tokens, contexts), False
    fn: Any = getattr(cost, "slice_s", None)
    if fn is not None:
        return float(fn(query_tokens, contexts, part)), False
    return cost.forward_s(query_tokens, contexts) * (part.end - part.first) / num_layers, True


def encode_seconds(cost: CostModel, block: int) -> float:
    """Seconds to encode one block of input video (video-to-video): the cost model's ``encode_s``, or 0."""
    fn: Any = getattr(cost, "encode_s", None)
    return float(fn(block)) if fn is not None else 0.0


ENCODE_SOURCE = ("the Wan VAE encoder priced as its decoder times their ratio measured by StreamDiffusionV2 per 4-frame "
                 "chunk at 480x832 on an RTX 5090, 100 / 168 ms (daydreamlive/scope; est)")


@functools.cache
def encode_ratio() -> float:
    """The Wan VAE's encode time over its decode time for one 4-frame chunk at 480x832 on an RTX 5090, as
    StreamDiffusionV2 measured them (100 and 168 ms): what prices the encoder from the decoder (est).

    >>> round(encode_ratio(), 3)
    0.595
    """
    return figure("sdv2-vae-encode-5090").mid / figure("sdv2-vae-5090").mid


def sequential_interval(cost: CostModel, geometry: ModelGeometry, baseline: Baseline) -> float:
    """Seconds between two steady-state blocks of the sequential schedule on one device: its K denoise
    forwards and the cache pass with the baseline's window of visible blocks, the sampler steps and the
    tick overhead (decoding and text encoding excluded, as in the paper's FPS)."""
    q = geometry.tokens_per_block
    stages = baseline.num_denoise + (1 if baseline.cache_pass else 0)
    ctx = (q * (baseline.window or 7),)
    return stages * (cost.forward_s(q, ctx) + cost.tick_s()) + baseline.num_denoise * cost.sample_s(1)


@functools.cache
def paper_overhead() -> Overhead:
    """The reference implementation's per-forward overhead, fitted jointly to the paper's two sequential
    baselines: the (per layer, per token) pair that makes both the 1.3B and the 14B sequential schedules
    (4 denoise + cache pass, window 7 blocks, FlashAttention 3) reproduce 16 and 4.5 FPS on one H100.
    Linear in both unknowns, so two equations solve it exactly.

    >>> o = paper_overhead()
    >>> round(o.per_layer_s * 1e3, 2), round(o.passes)
    (2.23, 83)
    """
    rows = []
    for name in ("wan2.1-1.3b", "wan2.1-14b"):
        g = get_model(name)
        base = g.baseline
        assert base is not None
        gpu = get_gpu(base.gpu)
        bare = sequential_interval(RooflineCost(g, gpu, attention_kernel=base.attention), g, base)
        stages = base.num_denoise + (1 if base.cache_pass else 0)
        residual = (12.0 / base.fps - bare) / stages  # seconds per forward the rates leave unexplained
        per_pass = g.tokens_per_block * g.dim * g.num_layers * 4 / memory_rate(gpu)
        rows.append((g.num_layers, per_pass, residual))
    (a1, b1, r1), (a2, b2, r2) = rows
    det = a1 * b2 - a2 * b1
    per_layer, passes = (r1 * b2 - r2 * b1) / det, (a1 * r2 - a2 * r1) / det
    if per_layer < 0 or passes < 0:
        raise ConfigError("cost", "the paper's baselines give a negative per-forward overhead; check the rates")
    return Overhead(per_layer, passes,
                    f"fitted jointly to the paper's sequential {figure('paper-1.3b-seq').mid:g} FPS (1.3B) and "
                    f"{figure('paper-14b-seq').mid:g} FPS (14B) on one H100 ({figure('paper-1.3b-seq').source})")


def fit_baseline(geometry: ModelGeometry, gpu: GPU, baseline: Baseline, decoder: str = "vae") -> RooflineCost:
    """A parts model whose per-forward overhead is scaled so that the sequential schedule of ``baseline``
    reproduces its FPS on ``baseline.gpu`` (the paper-fitted overhead's split between per-layer and
    per-token cost is kept); the returned model prices ``gpu``.

    >>> m = get_model("wan2.1-1.3b")
    >>> c = fit_baseline(m, get_gpu("h100-sxm"), m.baseline)
    >>> round(12 / sequential_interval(c, m, m.baseline), 3)
    16.0
    """
    fit_gpu = get_gpu(baseline.gpu)
    target = 12.0 / baseline.fps
    shape = paper_overhead()
    bare = RooflineCost(geometry, fit_gpu, NO_OVERHEAD, decoder, baseline.attention)
    unit = RooflineCost(geometry, fit_gpu, replace(shape, source=""), decoder, baseline.attention)
    t0 = sequential_interval(bare, geometry, baseline)
    t1 = sequential_interval(unit, geometry, baseline)
    if t0 > target:
        raise ConfigError("cost", f"`baseline-fps` {baseline.fps:g} FPS is out of reach for {geometry.name} on "
                                  f"{fit_gpu.name}: its GEMMs and attention alone take {t0:.3g} s per block")
    scale = (target - t0) / (t1 - t0)
    over = Overhead(shape.per_layer_s * scale, shape.passes * scale, "")
    note = (f"baseline-fps: per-forward overhead x{scale:.3f} of the paper-fitted one, so the sequential schedule "
            f"gives {baseline.fps:g} FPS on {fit_gpu.name} ({baseline.source})")
    return RooflineCost(geometry, gpu, over, decoder, baseline.attention, name="baseline-fps", fitted=note)


def make_cost(text: str, geometry: ModelGeometry, gpu: GPU, decoder: str = "vae") -> CostModel:
    """Parse ``--cost``: ``parts`` (default), ``baseline-fps``, ``baseline-fps:FPS`` (a sequential FPS
    measured on ``gpu``), ``roofline``, ``uniform:SECONDS[,decode=S][,sample=S][,text=S][,tick=S]`` or
    ``profile:PATH`` (``uniform`` also takes ``encode=S``, seconds to encode a block of input video).
    ``decoder`` names the decoder the parts models price (``vae`` or ``taehv``).

    >>> make_cost("uniform:0.1,decode=0.05", get_model("tiny"), get_gpu("h100-sxm")).decode_s(0, 12)
    0.05
    """
    kind, _, arg = text.strip().partition(":")
    kind = kind.lower()
    if kind == "uniform":
        return _uniform(arg)
    if kind in ("parts", "baseline-fps") and not arg:
        geometry.decoder(decoder)  # ConfigError for an unknown decoder
        return RooflineCost(geometry, gpu, paper_overhead(), decoder, name="parts")
    if kind == "roofline":
        geometry.decoder(decoder)
        return RooflineCost(geometry, gpu, NO_OVERHEAD, decoder)
    if kind == "baseline-fps":
        try:
            fps = float(arg)
        except ValueError:
            raise ConfigError("cost", f"`baseline-fps:FPS` needs a number, got {arg!r}") from None
        if not (math.isfinite(fps) and fps > 0):
            raise ConfigError("cost", f"`baseline-fps` must be a positive number, got {arg}")
        ref = geometry.baseline
        base = Baseline(fps, gpu.name, ref.window if ref else 7, ref.num_denoise if ref else 4, True,
                        f"user-given sequential {fps:g} FPS on {gpu.name}")
        return fit_baseline(geometry, gpu, base, decoder)
    if kind == "profile":
        if not arg:
            raise ConfigError("cost", "`profile` needs a path, e.g. profile:calib.json")
        from simulator.profile import ProfileCost

        return ProfileCost.load(arg, geometry)
    raise ConfigError("cost", f"unknown cost model {text!r}; valid: parts, baseline-fps[:FPS], roofline, "
                              "profile:PATH, uniform:SECONDS")


def _uniform(arg: str) -> UniformCost:
    parts = [p.strip() for p in arg.split(",") if p.strip()]
    if not parts:
        raise ConfigError("cost", "`uniform` needs seconds per task, e.g. uniform:0.1")
    try:
        task_s = float(parts[0])
        extra = {k.strip(): float(v) for k, _, v in (p.partition("=") for p in parts[1:])}
    except ValueError:
        raise ConfigError("cost", f"`uniform` takes SECONDS[,decode=S][,sample=S][,text=S][,tick=S][,encode=S], "
                                  f"got {arg!r}") from None
    unknown = sorted(set(extra) - {"decode", "sample", "text", "tick", "encode"})
    if unknown:
        raise ConfigError("cost", f"`uniform` options are decode=, sample=, text=, tick= and encode=, got {unknown}")
    return UniformCost(task_s, extra.get("decode", 0.0), extra.get("sample", 0.0), extra.get("text", 0.0),
                       extra.get("tick", 0.0), encode_block_s=extra.get("encode", 0.0))
