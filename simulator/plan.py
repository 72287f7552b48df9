"""The planner: sweep every way to use N GPUs for a model and GPU, check constraints, rank by delivered FPS
and recommend, saying why, and what caps a target no point reaches.

Every point is one :func:`simulator.engine.simulate` run of a ``CascadeSpec`` built from plain values. The
sweep (:class:`SweepSpace`):

- *placement*: ``block`` (one block per GPU, the paper's; stride 1) and ``layers``: one ring of W GPUs each
  running a range of the layers (W = 2 .. N), or G rings of W side by side (G x W = N), with stride W (a
  block's next stage enters the ring as its last one leaves) and the layer split even, or, where a ring
  device decodes inline, leveled so that the decoding device holds fewer layers (:func:`estimated_split`);
- *context*: ``causal`` and ``bidirectional`` (the paper's), ``stale`` (one-step-stale in-flight K/V, an
  extension the paper did not evaluate, labelled so) and ``stage`` (StreamDiffusionV2's stream batch: each
  stage reads its predecessors' K/V of the same stage); the quality of each is docs/quality.md's to show;
- *lag*, *GPU count* (every GPU counted: with ``--decode gpu`` one of them is the decoder), *decode
  placement*, *decoder*, *window* and *link*.

A point whose memory does not fit (the margin included) is marked infeasible, with its numbers. Each point
names its bottleneck, per device too, and what caps it (:attr:`PlanPoint.cap`): the blocks in flight for
block placement (each block in flight needs a GPU, and no more help), the slowest ring stage, the decoder or
the link. The ranking puts points that meet every constraint first, then fewer GPUs, then higher delivered
FPS, then an earlier first frame; the recommendation is the first of them. Where no point meets the
target, :func:`recommendation_text` names the fastest and what caps it, and where FPS stops growing with
GPUs it says so and gives the smallest count on that plateau, never a count whose extra GPUs sit idle.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from cascade_sched.errors import ConfigError, SimulationError, check_range
from cascade_sched.schedule import build_schedule
from cascade_sched.spec import ATTENTION_MODES, CascadeSpec
from simulator.catalog import get_gpu, get_link, get_model
from simulator.cluster import Cluster, MemoryMargin
from simulator.cost import CostModel, make_cost
from simulator.engine import simulate
from simulator.prices import PLACEMENTS
from simulator.result import SimResult
from simulator.split import balanced_split, estimated_split, level

__all__ = ["Constraints", "PlanPoint", "SweepSpace", "balanced_split", "cap_of", "estimated_split", "format_table",
           "level", "plateau", "rank", "recommend", "recommendation_text", "sweep", "sweep_size", "write_points"]

DEFAULT_MODELS = ("wan2.1-1.3b", "wan2.1-14b")
PAPER_ATTENTIONS = ("causal", "bidirectional")
DEFAULT_ATTENTIONS = ATTENTION_MODES  # causal, bidirectional, stale, stage
EXTENSION = "stale"
SDV2_CONTEXT = "stage"
DEFAULT_WINDOW = 7  # Self-Forcing's 21-frame cache
DEFAULT_BLOCKS = 32
SWEPT_PLACEMENTS = ("block", "layers")
PLATEAU = 0.02  # FPS within 2% of the best counts as the plateau
QUALITY_DOC = "docs/quality.md"


@dataclass(frozen=True)
class Constraints:
    """What a plan must meet; None = no constraint. FPS is the delivered figure (decoding included)."""

    target_fps: float | None = 24.0
    max_first_frame_s: float | None = None
    max_jitter_s: float | None = None

    def check(self, fps: float, first_frame_s: float, jitter_s: float) -> str:
        """Empty when met, else why not (``fps 17.1 < 24``)."""
        why = []
        if self.target_fps is not None and fps < self.target_fps:
            why.append(f"fps {fps:.1f} < {self.target_fps:g}")
        if self.max_first_frame_s is not None and first_frame_s > self.max_first_frame_s:
            why.append(f"first frame {first_frame_s:.2f} s > {self.max_first_frame_s:g}")
        if self.max_jitter_s is not None and jitter_s > self.max_jitter_s:
            why.append(f"jitter {jitter_s * 1e3:.0f} ms > {self.max_jitter_s * 1e3:g}")
        return "; ".join(why)


@dataclass(frozen=True)
class PlanPoint:
    """One simulated (or infeasible) configuration of the sweep."""

    model: str
    gpu: str
    gpus: int  # every GPU the point occupies
    denoising_gpus: int
    lag: int
    attention: str  # the context: causal, bidirectional, stale or stage
    decode: str
    decoder: str
    window: int | None
    interconnect: str
    fits: bool
    fps: float  # delivered
    paper_fps: float
    first_frame_s: float
    interval_p50_s: float
    interval_p95_s: float
    interval_max_s: float
    jitter_s: float
    peak_memory_gb: float
    meets: bool
    status: str  # "ok", why a constraint fails, or why it does not fit
    bottleneck: str = ""
    lift: str = ""
    extension: bool = False
    cost: str = field(default="")
    placement: str = "block"
    rings: int = 1  # G
    ring_size: int = 1  # W
    stride: int = 1
    layer_split: str = ""  # the layers per device of a ring, e.g. 8,8,8,6
    blocks: int = 0  # blocks simulated
    in_flight: int = 0  # most blocks in flight
    cap: str = ""  # what caps the point's FPS, in words
    cap_kind: str = ""  # in-flight, ring-stage, decoder, link, compute or memory
    devices: str = ""  # per device: its bottleneck in steady state (d0 forward 92%, ...)

    def row(self) -> dict[str, Any]:
        """A flat dict for CSV and JSON."""
        return asdict(self)

    @property
    def label(self) -> str:
        """``block``, ``ring 4`` (one ring of 4) or ``2x4`` (2 rings of 4)."""
        if self.placement != "layers":
            return self.placement
        return f"ring {self.ring_size}" if self.rings == 1 else f"{self.rings}x{self.ring_size}"

    @property
    def family(self) -> str:
        """``block``, ``ring`` or ``hybrid``: what the plot draws apart."""
        if self.placement != "layers":
            return self.placement
        return "ring" if self.rings == 1 else "hybrid"


@dataclass(frozen=True)
class SweepSpace:
    """What the planner varies and the fixed cascade around it."""

    models: tuple[str, ...] = DEFAULT_MODELS
    gpu: str = "h100-sxm"
    gpu_counts: tuple[int, ...] = tuple(range(1, 9))
    lags: tuple[int, ...] | None = None  # None: every lag 1..S
    attentions: tuple[str, ...] = DEFAULT_ATTENTIONS
    decodes: tuple[str, ...] = PLACEMENTS
    decoders: tuple[str, ...] = ("vae",)
    windows: tuple[int | None, ...] = (DEFAULT_WINDOW,)
    interconnects: tuple[str, ...] | None = None  # None: the GPU's usual link
    gpus_per_node: int = 8
    blocks: int = DEFAULT_BLOCKS
    sink: int = 0
    timesteps: tuple[float, ...] = (1000, 750, 500, 250)
    cache_pass: bool = True
    placements: tuple[str, ...] = SWEPT_PLACEMENTS
    ring_sizes: tuple[int, ...] | None = None  # None: every W from 2 to the GPU count
    cost: str = "parts"
    overlap: bool = False
    stream_contention: float = 1.67
    margin: MemoryMargin = field(default_factory=MemoryMargin)
    weights: str = "sharded"
    frames_per_block: int | None = None
    resolution: tuple[int, int] | None = None
    video_input: bool = False

    @property
    def placement(self) -> str:
        """The placements swept, comma-separated (for the outputs' metadata)."""
        return ",".join(self.placements)


@dataclass(frozen=True)
class _Layout:
    """Where a point's tasks run: placement, G rings of W, stride, lag."""

    placement: str
    rings: int
    ring_size: int
    lag: int


def _layouts(space: SweepSpace, denoise: int, lags: Sequence[int]) -> list[_Layout]:
    """Every placement of ``denoise`` GPUs the space asks for: block placement at every lag, and every
    G x W = denoise with W >= 2 (a ring of 1 is block placement), at lag 1 (a block enters each ring every
    tick: the stream batch, every device busy every tick) unless the space names its lags; a ring that does
    not fit at lag 1 is tried at the next lags (:func:`_fallback_lags`)."""
    out: list[_Layout] = []
    for placement in space.placements:
        if placement != "layers":
            out.extend(_Layout(placement, 1, 1, lag) for lag in lags)
            continue
        for w in range(2, denoise + 1):
            if denoise % w or (space.ring_sizes is not None and w not in space.ring_sizes):
                continue
            out.extend(_Layout("layers", denoise // w, w, lag) for lag in (lags if space.lags else (1,)))
    return out


def sweep_size(space: SweepSpace) -> tuple[int, int]:
    """(points, tasks x ring size summed over them): what a sweep will simulate, before any work (the
    planner's bound on its own size)."""
    n_stages = len(space.timesteps) + (1 if space.cache_pass else 0)
    lags = space.lags or tuple(range(1, n_stages + 1))
    points = work = 0
    per = len(space.models) * len(space.windows) * len(space.decoders) * len(space.interconnects or (1,)) * \
        len(space.attentions)
    for n in space.gpu_counts:
        for decode in space.decodes:
            denoise = n - (1 if decode == "gpu" else 0)
            if denoise < 1:
                continue
            for layout in _layouts(space, denoise, lags):
                spec = _spec(layout, "causal", max((w or 0 for w in space.windows), default=0) or None, denoise,
                             space, n_stages, 40, 3)
                points += per
                work += per * spec.num_blocks * n_stages * layout.ring_size * (2 if layout.ring_size > 1 and
                                                                                decode == "inline" else 1)
    return points, work


def sweep(space: SweepSpace, constraints: Constraints) -> list[PlanPoint]:
    """Simulate every point of ``space`` (see the module docstring); returns them ranked."""
    gpu = get_gpu(space.gpu)
    links = space.interconnects or (gpu.default_link,)
    for name in links:
        get_link(name)
    for a in space.attentions:
        try:
            CascadeSpec(num_blocks=1, attention=a)  # a bad one is named before any work
        except ConfigError as e:
            raise ConfigError(e.param, str(e), part_of="attentions") from None
    for d in space.decodes:
        if d not in PLACEMENTS:
            raise ConfigError("decodes", f"`decodes` must be among {', '.join(PLACEMENTS)}, got {d!r}")
    for p in space.placements:
        if p not in ("block", "stage", "layers"):
            raise ConfigError("placement", f"`placement` must be among block, stage, layers, got {p!r}")
    points: list[PlanPoint] = []
    for model_name in space.models:
        geometry = get_model(model_name, space.frames_per_block, space.resolution)
        costs = {dec: make_cost(space.cost, geometry, gpu, dec) for dec in space.decoders}
        n_stages = len(space.timesteps) + (1 if space.cache_pass else 0)
        lags = space.lags or tuple(range(1, n_stages + 1))
        for lag in lags:
            check_range("lags", lag, 1, n_stages, f" (S={n_stages} stages)")
        # Each schedule is built once, and run with every decode placement that counts a GPU count of the
        # sweep: inline and stream on its own devices, gpu with one more (they share its workload).
        counts = set(space.gpu_counts)
        denoising = sorted({n - (d == "gpu") for n in counts for d in space.decodes} - {0})
        for link, window, decoder, denoise in (
            (link, w, dec, n) for link in links for w in space.windows for dec in space.decoders for n in denoising
        ):
            cluster = Cluster.of(space.gpu, denoise, space.gpus_per_node, link, margin=space.margin)
            decodes = [d for d in space.decodes if denoise + (d == "gpu") in counts]
            for layout in _layouts(space, denoise, lags):
                for attention in space.attentions:
                    for tried in _fallback_lags(layout, space, n_stages):
                        spec = _spec(tried, attention, window, denoise, space, n_stages, geometry.num_layers,
                                     geometry.frames_per_block)
                        runs = _Runs(spec, geometry)
                        new = [p for decode in decodes for p in _points(runs, tried, cluster, costs[decoder],
                                                                         geometry.name, link, decode, decoder,
                                                                         space, constraints)]
                        points.extend(new)
                        if any(p.fits for p in new):
                            break
    return rank(points)


def _fallback_lags(layout: _Layout, space: SweepSpace, n_stages: int) -> list[_Layout]:
    """The lags to try a layout at, in order, until one fits in memory: a ring swept at its default lag 1
    (S blocks per forward on every device) that does not fit is tried at lags 2, 3, ... S (fewer blocks in
    flight, less K/V and activation per device; the points that did not fit stay in the table as such).
    Every other layout, and any sweep that names its lags, runs as given."""
    if layout.placement != "layers" or space.lags:
        return [layout]
    return [replace(layout, lag=lag) for lag in range(layout.lag, n_stages + 1)]


class _Runs:
    """One spec's schedules (its even split, and a balanced one once asked) and the workloads they share
    between decode placements."""

    def __init__(self, spec: CascadeSpec, geometry: Any) -> None:
        self.spec, self.geometry = spec, geometry
        self.schedules: dict[tuple[int, ...] | None, Any] = {}
        self.reuse: dict[Any, Any] = {}

    def schedule(self, split: tuple[int, ...] | None = None) -> tuple[CascadeSpec, Any]:
        spec = self.spec if split is None else self.spec.replace(layer_split=split, num_layers=None)
        got = self.schedules.get(split)
        if got is None:
            got = self.schedules[split] = build_schedule(spec)
        return spec, got


def _spec(layout: _Layout, attention: str, window: int | None, denoise: int, space: SweepSpace, n_stages: int,
          num_layers: int, frames_per_block: int) -> CascadeSpec:
    """The cascade of one point, with enough blocks for a steady state (``metrics.steady_range``: the
    blocks in flight fill and drain the pipeline, the window fills)."""
    stride = layout.ring_size
    span = (n_stages - 1) * stride + 1
    lag = min(layout.lag, span)
    in_flight = -(-span // lag)
    blocks = max(space.blocks, in_flight + max(in_flight, window or 0) + 1)
    return CascadeSpec(num_blocks=blocks, timesteps=space.timesteps, cache_pass=space.cache_pass, lag=lag,
                       attention=attention, window=window, sink=space.sink, num_devices=denoise,
                       placement=layout.placement, stage_stride=stride, rings=layout.rings,
                       num_layers=num_layers if layout.placement == "layers" else None,
                       frames_per_block=frames_per_block)


def _points(runs: _Runs, layout: _Layout, cluster: Cluster, cost: CostModel, model: str, link: str, decode: str,
            decoder: str, space: SweepSpace, constraints: Constraints) -> list[PlanPoint]:
    """The point of one layout, context and decode placement; a ring that decodes inline on one of its
    devices runs with its layers leveled (the decoding device holds fewer)."""
    even = tuple(b - a for a, b in runs.spec.layer_ranges) if layout.placement == "layers" else ()  # type: ignore[operator]
    if layout.placement == "layers" and decode == "inline":
        schedule = runs.schedule(None)[1]
        split = estimated_split(schedule, runs.geometry, cost)  # leveled first
        if split is not None and split != even:
            return [_point(runs, split, cluster, cost, model, link, decode, decoder, space, constraints)[0]]
    return [_point(runs, None, cluster, cost, model, link, decode, decoder, space, constraints)[0]]


def _point(runs: _Runs, split: tuple[int, ...] | None, cluster: Cluster, cost: CostModel, model: str, link: str,
           decode: str, decoder: str, space: SweepSpace,
           constraints: Constraints) -> tuple[PlanPoint, SimResult | None]:
    gpus = cluster.num_gpus + (1 if decode == "gpu" else 0)
    spec, schedule = runs.schedule(split)
    ring = spec.placement == "layers"
    split_text = ",".join(str(b - a) for a, b in spec.layer_ranges) if ring else ""  # type: ignore[operator]
    base: dict[str, Any] = dict(model=model, gpu=cluster.gpu.name, gpus=gpus, denoising_gpus=cluster.num_gpus,
                lag=spec.lags[0] if spec.lags else 1, attention=spec.attention, decode=decode, decoder=decoder,
                window=spec.window, interconnect=link, extension=spec.attention == EXTENSION, cost=cost.name,
                placement=spec.placement, rings=spec.rings, ring_size=spec.ring_size, stride=spec.stage_stride,
                layer_split=split_text, blocks=spec.num_blocks, in_flight=schedule.max_in_flight())
    try:
        r = simulate(schedule, cluster, cost, runs.geometry, decode=decode, overlap=space.overlap,
                     stream_contention=space.stream_contention, weights=space.weights, video_input=space.video_input,
                     reuse=runs.reuse)
    except SimulationError as e:
        if "does not fit" not in str(e):
            raise
        nan = math.nan
        return PlanPoint(**base, fits=False, fps=nan, paper_fps=nan, first_frame_s=nan,
                         interval_p50_s=nan, interval_p95_s=nan, interval_max_s=nan, jitter_s=nan,
                         peak_memory_gb=_needed_gb(str(e)), meets=False, status="does not fit in memory",
                         bottleneck="memory", lift="a smaller --window, more GPUs or a larger GPU",
                         cap="memory: " + _needed_text(str(e)), cap_kind="memory"), None
    why = constraints.check(r.fps, r.first_frame_s, r.jitter_s)
    neck, lift = r.bottleneck()
    kind, cap = cap_of(r, base["in_flight"])
    return PlanPoint(**base, fits=True, fps=r.fps, paper_fps=r.paper_fps,
                     first_frame_s=r.first_frame_s, interval_p50_s=r.interval_p50_s,
                     interval_p95_s=r.interval_p95_s, interval_max_s=r.interval_max_s, jitter_s=r.jitter_s,
                     peak_memory_gb=max(r.peak_memory_bytes) / 1e9, meets=not why, status=why or "ok",
                     bottleneck=neck, lift=lift, cap=cap, cap_kind=kind, devices=_device_text(r)), r


def cap_of(r: SimResult, in_flight: int) -> tuple[str, str]:
    """(kind, words) of what caps a run's delivered FPS: ``in-flight`` (block placement with a GPU for every
    block in flight: more GPUs would sit idle), ``decoder``, ``link``, ``ring-stage`` (the slowest device of
    a ring) or ``compute`` (block placement with more blocks in flight than GPUs)."""
    neck, _ = r.bottleneck()
    interval = 12.0 / r.fps if r.fps > 0 else math.inf
    if neck == "decode":
        return "decoder", (f"the decoder on d{r.decode.device} ({r.decode.describe()}): one block's decode every "
                           f"{interval * 1e3:.0f} ms")
    if neck == "exchange":
        return "link", "the link: the K/V exchange or hand-offs the compute cannot hide"
    if r.placement == "layers":
        shares = r.steady_shares()
        slow = max(range(len(shares)), key=lambda d: (shares[d]["busy"] + shares[d]["comm"], -d))
        role = r.device_roles()[slow]
        return "ring-stage", f"the slowest ring stage, d{slow} ({role}), {shares[slow]['busy']:.0%} busy"
    if r.denoising_gpus >= in_flight:
        lag = r.spec.get("lag")
        return "in-flight", (f"the blocks in flight: lag {lag} keeps {in_flight} blocks in flight, each on one GPU, "
                             f"so {in_flight} GPUs denoise and more would sit idle")
    return "compute", f"compute: {in_flight} blocks in flight share {r.denoising_gpus} GPUs"


def _device_text(r: SimResult) -> str:
    """``d0 forward 92%, d3 decode 60%``: each GPU's main use of the steady state, and its share."""
    return ", ".join(f"d{d} {neck} {share:.0%}" for d, (neck, share) in enumerate(r.device_bottlenecks()))


def _needed_gb(message: str) -> float:
    try:
        return float(message.split(" needs ")[1].split(" GB")[0])
    except (IndexError, ValueError):
        return math.nan


def _needed_text(message: str) -> str:
    return message.split("plan does not fit: ", 1)[-1].split(";")[0]


def rank(points: Sequence[PlanPoint]) -> list[PlanPoint]:
    """Meeting every constraint first, then fitting, fewer GPUs, higher delivered FPS, earlier first frame,
    less memory on the fullest GPU."""
    return sorted(points, key=lambda p: (not p.meets, not p.fits, p.gpus if p.meets else 0,
                                         -(p.fps if p.fits else -1.0), p.first_frame_s if p.fits else 0.0,
                                         p.peak_memory_gb if p.fits else 0.0))


def recommend(points: Sequence[PlanPoint], model: str) -> PlanPoint | None:
    """The best point of ``model`` that meets the constraints, or None."""
    for p in rank([p for p in points if p.model == model]):
        if p.meets:
            return p
    return None


def plateau(points: Sequence[PlanPoint], model: str) -> tuple[PlanPoint | None, int]:
    """(the fastest point of ``model`` on the smallest GPU count that reaches its best FPS to within 2%, the
    count from which FPS stops growing); (None, 0) when nothing fits. The planner never advises more GPUs
    than that count: beyond it they would sit idle."""
    fitting = [p for p in points if p.model == model and p.fits]
    if not fitting:
        return None, 0
    best = max(p.fps for p in fitting)
    on = [p for p in fitting if p.fps >= (1 - PLATEAU) * best]
    n = min(p.gpus for p in on)
    return max((p for p in on if p.gpus == n), key=lambda p: (p.fps, -p.first_frame_s)), n


def _describe(p: PlanPoint) -> str:
    ctx = {"stale": " (stale: an extension the paper did not evaluate)",
           "stage": " (stage: StreamDiffusionV2's stream-batch context)"}.get(p.attention, "")
    where = "block placement" if p.placement == "block" else (
        f"a ring of {p.ring_size} (layers {p.layer_split} per GPU, stride {p.stride})" if p.rings == 1 else
        f"{p.rings} rings of {p.ring_size} (layers {p.layer_split} per GPU, stride {p.stride})")
    if p.placement == "stage":
        where = "stage placement"
    return (f"{p.gpus} x {p.gpu} in all ({p.denoising_gpus} denoising, {p.interconnect}), {where}, decode "
            f"{p.decode} ({p.decoder}), lag {p.lag}, {p.attention} context{ctx}, window {p.window or 'unbounded'}")


def _why(p: PlanPoint, points: Sequence[PlanPoint]) -> str:
    """Why ``p`` wins: the fewest GPUs meeting the target, against the best of the other placement family
    at that count, and its bottleneck per device."""
    same = [q for q in points if q.model == p.model and q.fits and q.gpus == p.gpus and q.family != p.family]
    rival = max(same, key=lambda q: q.fps, default=None)
    vs = (f"; the best {rival.family} point on {p.gpus} GPUs gives {rival.fps:.1f} FPS ({rival.label}, "
          f"{rival.cap or rival.bottleneck})" if rival is not None else "")
    return f"the fewest GPUs that meet the target{vs}; per GPU: {p.devices}"


def recommendation_text(points: Sequence[PlanPoint], constraints: Constraints) -> list[str]:
    """One line per model: what to run and why, or what caps it; never more GPUs than the FPS plateau's."""
    lines = []
    for model in dict.fromkeys(p.model for p in points):
        p = recommend(points, model)
        if p is not None:
            lines.append(f"{model}: {_describe(p)} -> {p.fps:.1f} FPS delivered (denoise FPS {p.paper_fps:.1f}), "
                         f"first frame {p.first_frame_s:.2f} s, worst interval {p.interval_max_s * 1e3:.0f} ms. Why: "
                         f"{_why(p, points)}; bottleneck {p.bottleneck}: {p.lift}. Quality of the "
                         f"{p.attention} context: {QUALITY_DOC}")
            continue
        best, n = plateau(points, model)
        if best is None:
            lines.append(f"{model}: no point of the sweep fits in memory")
            continue
        counts = sorted({q.gpus for q in points if q.model == model})
        more = [c for c in counts if c > n]
        flat = (f"FPS plateaus from {n} GPUs: {', '.join(map(str, more))} GPUs give no more, the extra GPUs would "
                "sit idle" if more else f"{n} GPUs is the largest count swept")
        lines.append(f"{model}: no point meets the constraints ({best.status}); the fastest is {_describe(best)}: "
                     f"{best.fps:.1f} FPS delivered. What caps it: {best.cap} (lift it with {best.lift}). {flat}. "
                     f"Per GPU: {best.devices}")
    return lines


def format_table(points: Sequence[PlanPoint], top: int | None = 12) -> str:
    """The ranked table, ``top`` rows per model (None: all). The context column is the attention mode each
    point reads its predecessors with; its quality is docs/quality.md's."""
    header = (f"{'#':>3} {'model':<12} {'GPUs':>4} {'placement':<9} {'context':<14} {'lag':>3} {'k':>2} "
              f"{'decode':<11} {'win':>3} {'FPS':>6} {'denoise':>7} {'1st s':>6} {'max ms':>7} {'peak GB':>7}  "
              "cap          status")
    lines = [header, "-" * len(header)]
    for model in dict.fromkeys(p.model for p in points):
        rows = [p for p in points if p.model == model]
        for i, p in enumerate(rows[:top] if top else rows, 1):
            if p.fits:
                nums = (f"{p.fps:6.2f} {p.paper_fps:7.2f} {p.first_frame_s:6.2f} {p.interval_max_s * 1e3:7.1f}")
            else:
                nums = f"{'-':>6} {'-':>7} {'-':>6} {'-':>7}"
            att = p.attention + ("*" if p.extension else "")
            dec = p.decode + ("/taehv" if p.decoder == "taehv" else "")
            lines.append(f"{i:>3} {p.model:<12} {p.gpus:>4} {p.label:<9} {att:<14} {p.lag:>3} {p.stride:>2} "
                         f"{dec:<11} {p.window or 0:>3} {nums} {p.peak_memory_gb:7.1f}  {p.cap_kind:<12} {p.status}")
        if top and len(rows) > top:
            lines.append(f"    ... {len(rows) - top} more {model} points in the CSV/JSON")
    if any(p.extension for p in points):
        lines.append("* stale attention: an extension beyond the paper (one-step-stale in-flight K/V)")
    lines.append(f"context: what each block reads of its predecessors (docs/contract.md); what each costs in "
                 f"quality: {QUALITY_DOC}. k: the stage stride (W for a ring of W). FPS: delivered FPS; denoise: "
                 f"denoise FPS (docs/concepts.md, 'Which FPS?').")
    return "\n".join(lines)


def write_points(points: Sequence[PlanPoint], csv_path: str | None, json_path: str | None,
                 meta: dict[str, Any] | None = None) -> None:
    """Every point as CSV and/or JSON (``{"meta": ..., "points": [...]}``)."""
    rows = [p.row() for p in points]
    from cascade_sched.outputs import committed

    if csv_path:
        with committed(csv_path, keep_partial=False) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["model"])
            writer.writeheader()
            writer.writerows(rows)
    if json_path:
        clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
        with committed(json_path, keep_partial=False) as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump({"meta": meta or {}, "points": clean}, f, indent=1)
