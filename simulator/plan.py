"""The planner: sweep GPU count (every GPU counted) x lag x attention x decode placement x window (x link,
x decoder) for a model and GPU, check constraints, rank by delivered FPS and recommend.

Every point is one :func:`simulator.engine.simulate` run of a ``CascadeSpec`` built from plain values.
``gpus`` is every GPU the point occupies: with ``--decode gpu`` one of them is the decoder and the rest
denoise. A point whose memory does not fit (the margin included) is marked infeasible (not simulated),
with its numbers. Each point names its bottleneck (compute, exchange, decode, memory) and what would lift
it. The attention modes searched by default are the two the paper evaluated (causal, bidirectional);
``stale`` (one-step-stale in-flight K/V, DistriFusion-style) is searched only when asked and is labelled
an extension in every row. The ranking puts points that meet every constraint first, then fewer GPUs,
then higher delivered FPS, then an earlier first frame; the recommendation is the first of them.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cascade_sched.errors import ConfigError, SimulationError, check_range
from cascade_sched.schedule import build_schedule
from cascade_sched.spec import CascadeSpec
from simulator.catalog import get_gpu, get_link, get_model
from simulator.cluster import Cluster, MemoryMargin
from simulator.cost import CostModel, make_cost
from simulator.engine import simulate
from simulator.prices import PLACEMENTS

DEFAULT_MODELS = ("wan2.1-1.3b", "wan2.1-14b")
PAPER_ATTENTIONS = ("causal", "bidirectional")
EXTENSION = "stale"
DEFAULT_WINDOW = 7  # Self-Forcing's 21-frame cache
DEFAULT_BLOCKS = 32


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
    attention: str
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

    def row(self) -> dict[str, Any]:
        """A flat dict for CSV and JSON."""
        return asdict(self)


@dataclass(frozen=True)
class SweepSpace:
    """What the planner varies and the fixed cascade around it."""

    models: tuple[str, ...] = DEFAULT_MODELS
    gpu: str = "h100-sxm"
    gpu_counts: tuple[int, ...] = tuple(range(1, 9))
    lags: tuple[int, ...] | None = None  # None: every lag 1..S
    attentions: tuple[str, ...] = PAPER_ATTENTIONS
    decodes: tuple[str, ...] = PLACEMENTS
    decoders: tuple[str, ...] = ("vae",)
    windows: tuple[int | None, ...] = (DEFAULT_WINDOW,)
    interconnects: tuple[str, ...] | None = None  # None: the GPU's usual link
    gpus_per_node: int = 8
    blocks: int = DEFAULT_BLOCKS
    sink: int = 0
    timesteps: tuple[float, ...] = (1000, 750, 500, 250)
    cache_pass: bool = True
    placement: str = "block"
    cost: str = "parts"
    overlap: bool = False
    stream_contention: float = 1.67
    margin: MemoryMargin = field(default_factory=MemoryMargin)


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
    points: list[PlanPoint] = []
    for model_name in space.models:
        geometry = get_model(model_name)
        costs = {dec: make_cost(space.cost, geometry, gpu, dec) for dec in space.decoders}
        n_stages = len(space.timesteps) + (1 if space.cache_pass else 0)
        lags = space.lags or tuple(range(1, n_stages + 1))
        for lag in lags:
            check_range("lags", lag, 1, n_stages, f" (S={n_stages} stages)")
        for n, link, window, lag, attention, decode, decoder in (
            (n, link, w, lag, a, d, dec) for n in space.gpu_counts for link in links for w in space.windows
            for lag in lags for a in space.attentions for d in space.decodes for dec in space.decoders
        ):
            denoise = n - (1 if decode == "gpu" else 0)
            if denoise < 1:
                continue  # a decoder GPU needs at least one GPU beside it
            cluster = Cluster.of(space.gpu, denoise, space.gpus_per_node, link, margin=space.margin)
            spec = CascadeSpec(num_blocks=space.blocks, timesteps=space.timesteps, cache_pass=space.cache_pass,
                               lag=lag, attention=attention, window=window, sink=space.sink,
                               num_devices=denoise, placement=space.placement)
            points.append(_point(spec, cluster, costs[decoder], geometry.name, link, decode, decoder, space,
                                 constraints))
    return rank(points)


def _point(spec: CascadeSpec, cluster: Cluster, cost: CostModel, model: str, link: str, decode: str,
           decoder: str, space: SweepSpace, constraints: Constraints) -> PlanPoint:
    gpus = cluster.num_gpus + (1 if decode == "gpu" else 0)
    base = dict(model=model, gpu=cluster.gpu.name, gpus=gpus, denoising_gpus=cluster.num_gpus,
                lag=spec.lags[0] if spec.lags else 1, attention=spec.attention, decode=decode, decoder=decoder,
                window=spec.window, interconnect=link, extension=spec.attention == EXTENSION, cost=cost.name)
    try:
        r = simulate(build_schedule(spec), cluster, cost, model, decode=decode, overlap=space.overlap,
                     stream_contention=space.stream_contention)
    except SimulationError as e:
        if "does not fit" not in str(e):
            raise
        nan = math.nan
        return PlanPoint(**base, fits=False, fps=nan, paper_fps=nan, first_frame_s=nan,  # type: ignore[arg-type]
                         interval_p50_s=nan, interval_p95_s=nan, interval_max_s=nan, jitter_s=nan,
                         peak_memory_gb=_needed_gb(str(e)), meets=False, status="does not fit in memory",
                         bottleneck="memory", lift="a smaller --window, more GPUs or a larger GPU")
    why = constraints.check(r.fps, r.first_frame_s, r.jitter_s)
    neck, lift = r.bottleneck()
    return PlanPoint(**base, fits=True, fps=r.fps, paper_fps=r.paper_fps,  # type: ignore[arg-type]
                     first_frame_s=r.first_frame_s, interval_p50_s=r.interval_p50_s,
                     interval_p95_s=r.interval_p95_s, interval_max_s=r.interval_max_s, jitter_s=r.jitter_s,
                     peak_memory_gb=max(r.peak_memory_bytes) / 1e9, meets=not why, status=why or "ok",
                     bottleneck=neck, lift=lift)


def _needed_gb(message: str) -> float:
    try:
        return float(message.split(" needs ")[1].split(" GB")[0])
    except (IndexError, ValueError):
        return math.nan


def rank(points: Sequence[PlanPoint]) -> list[PlanPoint]:
    """Meeting every constraint first, then fitting, fewer GPUs, higher delivered FPS, earlier first frame."""
    return sorted(points, key=lambda p: (not p.meets, not p.fits, p.gpus if p.meets else 0,
                                         -(p.fps if p.fits else -1.0), p.first_frame_s if p.fits else 0.0))


def recommend(points: Sequence[PlanPoint], model: str) -> PlanPoint | None:
    """The best point of ``model`` that meets the constraints, or None."""
    for p in rank([p for p in points if p.model == model]):
        if p.meets:
            return p
    return None


def _describe(p: PlanPoint) -> str:
    ext = " (stale: an extension the paper did not evaluate)" if p.extension else ""
    return (f"{p.gpus} x {p.gpu} in all ({p.denoising_gpus} denoising, {p.interconnect}), decode {p.decode} "
            f"({p.decoder}), lag {p.lag}, {p.attention} attention{ext}, window {p.window or 'unbounded'}")


def recommendation_text(points: Sequence[PlanPoint], constraints: Constraints) -> list[str]:
    """One line per model: what to buy, or that nothing in the sweep meets the constraints."""
    lines = []
    for model in dict.fromkeys(p.model for p in points):
        p = recommend(points, model)
        if p is not None:
            lines.append(f"{model}: {_describe(p)} -> {p.fps:.1f} FPS delivered (paper-style {p.paper_fps:.1f}), "
                         f"first frame {p.first_frame_s:.2f} s, worst interval {p.interval_max_s * 1e3:.0f} ms; "
                         f"bottleneck {p.bottleneck}: {p.lift}")
            continue
        fitting = [q for q in points if q.model == model and q.fits]
        if not fitting:
            lines.append(f"{model}: no point of the sweep fits in memory")
            continue
        best = max(fitting, key=lambda q: q.fps)
        lines.append(f"{model}: no point meets the constraints; the fastest is {_describe(best)}: {best.fps:.1f} "
                     f"FPS delivered ({best.status}); bottleneck {best.bottleneck}: {best.lift}")
    return lines


def format_table(points: Sequence[PlanPoint], top: int | None = 12) -> str:
    """The ranked table, ``top`` rows per model (None: all)."""
    header = (f"{'#':>3} {'model':<12} {'GPUs':>4} {'lag':>3} {'attention':<13} {'decode':<11} {'win':>3} "
              f"{'FPS':>6} {'paper':>6} {'1st s':>6} {'p95 ms':>7} {'max ms':>7} {'peak GB':>7}  bottleneck  status")
    lines = [header, "-" * len(header)]
    for model in dict.fromkeys(p.model for p in points):
        rows = [p for p in points if p.model == model]
        for i, p in enumerate(rows[:top] if top else rows, 1):
            if p.fits:
                nums = (f"{p.fps:6.2f} {p.paper_fps:6.2f} {p.first_frame_s:6.2f} {p.interval_p95_s * 1e3:7.1f} "
                        f"{p.interval_max_s * 1e3:7.1f}")
            else:
                nums = f"{'-':>6} {'-':>6} {'-':>6} {'-':>7} {'-':>7}"
            att = p.attention + ("*" if p.extension else "")
            dec = p.decode + ("/taehv" if p.decoder == "taehv" else "")
            lines.append(f"{i:>3} {p.model:<12} {p.gpus:>4} {p.lag:>3} {att:<13} {dec:<11} "
                         f"{p.window or 0:>3} {nums} {p.peak_memory_gb:7.1f}  {p.bottleneck:<10}  {p.status}")
        if top and len(rows) > top:
            lines.append(f"    ... {len(rows) - top} more {model} points in the CSV/JSON")
    if any(p.extension for p in points):
        lines.append("* stale attention: an extension beyond the paper (one-step-stale in-flight K/V)")
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
