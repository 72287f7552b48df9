"""Cost models: how long a device's batch of tasks, a sampler step and a block's decoding take.

Every cost model is a small object with a ``name`` and a ``source`` (its provenance, copied into every
result) and three methods, all in seconds:

- ``forward_s(query_tokens, contexts)``: one batched forward of ``len(contexts)`` tasks on one device,
  each with ``query_tokens`` new tokens attending to ``contexts[i]`` tokens (its own plus visible KV);
- ``sample_s(n)``: the sampler steps of ``n`` denoise tasks after that forward;
- ``decode_s(block, frames)``: VAE decoding of one block into ``frames`` video frames.

Built-in models: :class:`UniformCost` (``uniform:SECONDS``), :class:`RooflineCost` (``roofline``),
``baseline-fps`` (a roofline whose efficiency is fitted by :func:`fit_baseline` so the sequential
schedule reproduces a measured FPS) and ``profile:PATH`` (:class:`simulator.profile.ProfileCost`).
:func:`make_cost` parses those strings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

from cascade_sched.errors import ConfigError
from simulator.catalog import GPU, Baseline, ModelGeometry, get_gpu

__all__ = [
    "DEFAULT_EFFICIENCY",
    "CostModel",
    "Efficiency",
    "RooflineCost",
    "UniformCost",
    "fit_baseline",
    "make_cost",
]


@runtime_checkable
class CostModel(Protocol):
    """What the simulator asks a cost model; ``name`` and ``source`` are its provenance."""

    @property
    def name(self) -> str:
        """Which kind of cost model: profile, roofline, baseline-fps or uniform."""
        ...

    @property
    def source(self) -> str:
        """Where its numbers came from (a file, a fit, datasheets)."""
        ...

    def forward_s(self, query_tokens: int, contexts: tuple[int, ...]) -> float:
        """Seconds for one device's batched forward of ``len(contexts)`` tasks."""
        ...

    def sample_s(self, n: int) -> float:
        """Seconds for the sampler steps of ``n`` denoise tasks of one batch."""
        ...

    def decode_s(self, block: int, frames: int) -> float:
        """Seconds to decode ``block`` into ``frames`` video frames."""
        ...


@dataclass(frozen=True)
class UniformCost:
    """Every task costs ``task_s`` (a batch of n costs n x ``task_s``: batching buys nothing);
    decoding and sampling cost nothing unless given. For tests and teaching.

    >>> UniformCost(0.1).forward_s(4680, (4680, 9360))
    0.2
    """

    task_s: float
    decode_block_s: float = 0.0
    sample_task_s: float = 0.0
    name: str = "uniform"

    def __post_init__(self) -> None:
        for label, v in (("task", self.task_s), ("decode", self.decode_block_s), ("sample", self.sample_task_s)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigError("cost", f"`uniform` {label} seconds must be a finite number >= 0, got {v!r}")

    @property
    def source(self) -> str:
        return (f"uniform: {self.task_s:g} s per task, {self.sample_task_s:g} s per sampler step, "
                f"{self.decode_block_s:g} s per decoded block")

    def forward_s(self, query_tokens: int, contexts: tuple[int, ...]) -> float:
        return self.task_s * len(contexts)

    def sample_s(self, n: int) -> float:
        return self.sample_task_s * n

    def decode_s(self, block: int, frames: int) -> float:
        return self.decode_block_s


@dataclass(frozen=True)
class Efficiency:
    """Fractions of the GPU's peaks a forward reaches, plus a fixed launch overhead per layer.

    ``linear`` applies to the matmuls, ``attention`` to attention FLOPs, ``memory`` to HBM traffic.
    """

    linear: float
    attention: float
    memory: float
    overhead_s_per_layer: float
    source: str


DEFAULT_EFFICIENCY = Efficiency(
    linear=0.81,
    attention=0.5,
    memory=0.9,
    overhead_s_per_layer=30e-6,
    source=("datasheet defaults: linear 0.81 (REFERENCE.md: 8192^3 bf16 matmul 798 of 989 TFLOP/s), "
            "attention 0.5 (est), memory 0.9 (REFERENCE.md: D2D copy 3.0 of 3.35 TB/s), "
            "30 us launch overhead per layer (est)"),
)


@dataclass(frozen=True)
class RooflineCost:
    """FLOPs and bytes per batch from the model geometry, over the GPU's peaks times efficiencies.

    Per task with q query tokens and c context tokens, in FLOPs (2 per multiply-add):
    linear layers ``2 q L (6 d^2 + 2 d f)`` (self-attention QKVO, cross-attention Q and O, FFN),
    cross-attention K/V over the text ``4 L T d^2``, self-attention ``4 L q c d``, cross-attention
    ``4 L q T d``. Bytes: the weights once per batch plus every task's visible KV (``c L 2 d 2``).
    Time = linear / (peak x linear eff) + attention / (peak x attention eff), at least bytes /
    (bandwidth x memory eff), plus the launch overhead of every layer.

    >>> from simulator.catalog import get_model
    >>> cost = RooflineCost(get_model("wan2.1-1.3b"), get_gpu("h100-sxm"))
    >>> round(cost.flops(4680, (4680,)) / 1e12, 1)  # REFERENCE.md: ~16 TFLOP with 1 visible block
    16.3
    """

    geometry: ModelGeometry
    gpu: GPU
    efficiency: Efficiency = DEFAULT_EFFICIENCY
    name: str = "roofline"
    fitted: str = ""

    @property
    def source(self) -> str:
        e = self.efficiency
        text = (f"{self.name}: {self.geometry.name} on {self.gpu.name} ({self.gpu.source}); efficiency "
                f"linear {e.linear:.3f}, attention {e.attention:.3f}, memory {e.memory:.2f}, "
                f"{e.overhead_s_per_layer * 1e6:g} us/layer; {self.fitted or e.source}")
        return text

    def _split_flops(self, q: int, contexts: tuple[int, ...]) -> tuple[float, float]:
        g = self.geometry
        d, L, n = g.dim, g.num_layers, len(contexts)
        linear = n * (2.0 * q * L * (6 * d * d + 2 * d * g.ffn_dim) + 4.0 * L * g.text_len * d * d)
        attention = 4.0 * L * q * d * (sum(contexts) + n * g.text_len)
        return linear, attention

    def flops(self, query_tokens: int, contexts: tuple[int, ...]) -> float:
        """Total FLOPs of one batched forward."""
        a, b = self._split_flops(query_tokens, contexts)
        return a + b

    def forward_s(self, query_tokens: int, contexts: tuple[int, ...]) -> float:
        g, e = self.geometry, self.efficiency
        linear, attention = self._split_flops(query_tokens, contexts)
        compute = linear / (self.gpu.bf16_flops * e.linear) + attention / (self.gpu.bf16_flops * e.attention)
        nbytes = g.weight_bytes + sum(contexts) * g.num_layers * 2 * g.dim * 2
        memory = nbytes / (self.gpu.mem_bw_Bps * e.memory)
        return max(compute, memory) + e.overhead_s_per_layer * g.num_layers

    def sample_s(self, n: int) -> float:
        # x0 = x - sigma v, then re-noise: a few elementwise passes over the latent, plus one launch.
        latent = self.geometry.latent_bytes_per_block()
        return n * (20e-6 + 6 * latent / (self.gpu.mem_bw_Bps * self.efficiency.memory))

    def decode_s(self, block: int, frames: int) -> float:
        ref = get_gpu("h100-sxm").bf16_flops
        return self.geometry.decode_s_per_frame * frames * ref / self.gpu.bf16_flops


def _reference_interval(cost: RooflineCost, baseline: Baseline) -> float:
    """Seconds between two steady-state blocks of the sequential schedule on one device: every stage of
    one block with the baseline's window of visible blocks, plus its sampler steps (decoding excluded,
    as in the paper's FPS)."""
    g = cost.geometry
    window = baseline.window or 7
    stages = baseline.num_denoise + (1 if baseline.cache_pass else 0)
    ctx = (g.tokens_per_block * window,)
    return stages * cost.forward_s(g.tokens_per_block, ctx) + baseline.num_denoise * cost.sample_s(1)


def fit_baseline(
    geometry: ModelGeometry,
    gpu: GPU,
    baseline: Baseline,
    start: Efficiency = DEFAULT_EFFICIENCY,
) -> RooflineCost:
    """A roofline whose compute efficiencies are scaled so that the sequential schedule of ``baseline``
    reproduces its FPS on ``baseline.gpu``; the returned model prices ``gpu`` with those efficiencies.

    >>> from simulator.catalog import get_model
    >>> m = get_model("wan2.1-1.3b")
    >>> c = fit_baseline(m, get_gpu("h100-sxm"), m.baseline)
    >>> round(12 / _reference_interval(c, m.baseline), 3)
    16.0
    """
    fit_gpu = get_gpu(baseline.gpu)
    target = 12.0 / baseline.fps

    def interval(scale: float) -> float:
        eff = replace(start, linear=start.linear * scale, attention=start.attention * scale)
        return _reference_interval(RooflineCost(geometry, fit_gpu, eff), baseline)

    lo, hi = 1e-4, 1e4
    if interval(hi) > target:
        raise ConfigError(
            "cost", f"`baseline-fps` {baseline.fps:g} FPS is out of reach for {geometry.name} on {fit_gpu.name}: "
                    f"even unlimited compute takes {interval(hi):.3g} s per block (memory or launch bound)"
        )
    for _ in range(200):  # bisection in log space; the interval falls monotonically with the scale
        mid = math.sqrt(lo * hi)
        if interval(mid) > target:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1 + 1e-12:
            break
    scale = hi
    eff = replace(start, linear=start.linear * scale, attention=start.attention * scale,
                  source=f"fitted from {start.source}")
    note = (f"baseline-fps: compute efficiency fitted (x{scale:.3f} of the defaults) so the sequential schedule "
            f"gives {baseline.fps:g} FPS on {fit_gpu.name} ({baseline.source})")
    if eff.linear > 1 or eff.attention > 1:
        note += "; WARNING: the fit needs more than the datasheet peak"
    return RooflineCost(geometry, gpu, eff, name="baseline-fps", fitted=note)


def make_cost(text: str, geometry: ModelGeometry, gpu: GPU) -> CostModel:
    """Parse ``--cost``: ``uniform:SECONDS[,decode=S][,sample=S]``, ``roofline``, ``baseline-fps``,
    ``baseline-fps:FPS`` (measured on ``gpu`` itself) or ``profile:PATH``.

    >>> from simulator.catalog import get_model
    >>> make_cost("uniform:0.1,decode=0.05", get_model("tiny"), get_gpu("h100-sxm")).decode_s(0, 12)
    0.05
    """
    kind, _, arg = text.strip().partition(":")
    kind = kind.lower()
    if kind == "uniform":
        parts = [p.strip() for p in arg.split(",") if p.strip()]
        if not parts:
            raise ConfigError("cost", "`uniform` needs seconds per task, e.g. uniform:0.1")
        try:
            task_s = float(parts[0])
            extra = {k.strip(): float(v) for k, _, v in (p.partition("=") for p in parts[1:])}
        except ValueError:
            raise ConfigError("cost", f"`uniform` takes SECONDS[,decode=S][,sample=S], got {arg!r}") from None
        unknown = sorted(set(extra) - {"decode", "sample"})
        if unknown:
            raise ConfigError("cost", f"`uniform` options are decode= and sample=, got {unknown}")
        return UniformCost(task_s, extra.get("decode", 0.0), extra.get("sample", 0.0))
    if kind == "roofline":
        return RooflineCost(geometry, gpu)
    if kind == "baseline-fps":
        if arg:
            try:
                fps = float(arg)
            except ValueError:
                raise ConfigError("cost", f"`baseline-fps:FPS` needs a number, got {arg!r}") from None
            if not fps > 0:
                raise ConfigError("cost", f"`baseline-fps` must be positive, got {fps:g}")
            ref = geometry.baseline
            base = Baseline(fps, gpu.name, ref.window if ref else 7, ref.num_denoise if ref else 4, True,
                            f"user-given sequential {fps:g} FPS on {gpu.name}")
        elif geometry.baseline is None:
            raise ConfigError("cost", f"{geometry.name} has no published baseline; give baseline-fps:FPS "
                                      "(measured on this GPU) or use roofline")
        else:
            base = geometry.baseline
        return fit_baseline(geometry, gpu, base)
    if kind == "profile":
        if not arg:
            raise ConfigError("cost", "`profile` needs a path, e.g. profile:calib.json")
        from simulator.profile import ProfileCost

        return ProfileCost.load(arg, geometry)
    raise ConfigError("cost", f"unknown cost model {text!r}; valid: profile:PATH, roofline, baseline-fps[:FPS], "
                              "uniform:SECONDS")
