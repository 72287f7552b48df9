"""``simulate(schedule, cluster, cost, model) -> SimResult``: one run of a schedule, by the event loop over
every block (:mod:`simulator.loop`, whose docstring states the rules) or by the steady-state path
(:mod:`simulator.steady`) where a run repeats exactly; ``SimResult.path`` says which ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cascade_sched.errors import ConfigError, SimulationError
from cascade_sched.metrics import stream_metrics, switch_stalls, video_frames
from cascade_sched.placement import default_decode_device
from cascade_sched.schedule import Schedule, gc_paused
from models.config import ACTIVATION_BYTES
from simulator.catalog import ModelGeometry, get_model
from simulator.cluster import Cluster
from simulator.cost import CostModel
from simulator.loop import Engine
from simulator.memory import MemoryReport, memory_report
from simulator.prices import DecodePlan, Prices, decode_plan
from simulator.result import SimResult, Timeline
from simulator.workload import Workload, build_workload

__all__ = ["PATHS", "WEIGHTS", "Engine", "RunOptions", "simulate"]

WEIGHTS = ("sharded", "replicated")
"""Where a ring's weights live: each device holds its layers' (``sharded``), or every device holds all of
them (``replicated``, StreamDiffusionV2's choice). Outside placement layers every device holds all."""


def simulate(
    schedule: Schedule,
    cluster: Cluster,
    cost: CostModel,
    model: ModelGeometry | str | None = None,
    *,
    decode: str | int = "inline",
    decode_device: int | None = None,
    stream_contention: float = 1.67,
    overlap: bool = False,
    check_memory: bool = True,
    video_frames_per_block: int | None = None,
    first_block_frames: int | None = None,
    dtype_bytes: int = 2,
    weights: str = "sharded",
    video_input: bool = False,
    activation_bytes: int = ACTIVATION_BYTES["bfloat16"],
    path: str = "auto",
    reuse: dict[Any, Any] | None = None,
    **legacy: Any,
) -> SimResult:
    """Simulate ``schedule`` on ``cluster`` with ``cost``; see the module docstring for the rules and
    :mod:`simulator.result` for the metrics.

    ``model`` is a geometry or its name (default: the cost model's own geometry when it has one).
    ``decode`` is where decoding runs: ``inline`` (default), ``stream`` or ``gpu`` (a GPU of its own,
    counted in ``SimResult.gpus``), on denoising device ``decode_device`` (default the schedule's:
    ``placement.default_decode_device``, device 0, or a ring's last device); a device index is ``inline``
    on that device (``own`` is ``gpu``). ``stream_contention`` is how many times slower the forwards and
    an overlapped decode each run while both are active. ``overlap`` hides the joint-attention exchange
    behind compute and sends ring hops on a second stream. ``check_memory`` raises ``SimulationError``
    naming the device, needed and available bytes (the margin included) when the plan does not fit; with
    False the run goes on and ``result.fits`` says so. ``video_frames_per_block`` (default
    ``cascade_sched.metrics.video_frames``: 12) and ``first_block_frames`` (default 9) are the video
    frames a decoded block yields, and what the decoder is priced for. ``weights`` is ``sharded`` (a ring
    device holds its layers' weights) or ``replicated`` (every device holds all of them, as
    StreamDiffusionV2 does). ``video_input`` adds the encoding of each block's input frames
    (video-to-video). ``activation_bytes`` is the width of the hidden states a ring hop carries. ``path``
    (:data:`PATHS`) picks the event loop or the steady-state fast path; ``result.path`` says which ran.
    ``reuse`` is a dict a caller that simulates one schedule several times keeps between the runs: each
    workload (which depends on the schedule, the geometry and the decoding device, not on the hardware or
    the costs) is then built once (the planner runs each schedule with every decode placement).

    >>> from cascade_sched import CascadeSpec, build_schedule
    >>> from simulator.cost import UniformCost
    >>> s = build_schedule(CascadeSpec(num_blocks=12, lag=1, num_devices=5))
    >>> r = simulate(s, Cluster.of("h100-sxm", 5, interconnect="ideal"), UniformCost(0.1), "tiny")
    >>> round(r.makespan_s, 6), round(r.denoise_fps, 6)  # (start(B-1) + S) x t; 12 frames per tick
    (1.6, 120.0)
    """
    unknown = set(legacy) - {"video_frames"}
    if unknown:
        raise TypeError(f"simulate() got unexpected keyword arguments {sorted(unknown)}")
    if video_frames_per_block is None:
        video_frames_per_block = legacy.get("video_frames")
    geometry = _geometry(model, cost)
    n_dev = schedule.num_devices
    if cluster.num_gpus != n_dev:
        raise ConfigError("num_devices", f"the schedule has {n_dev} devices but the cluster {cluster.num_gpus} GPUs")
    if weights not in WEIGHTS:
        raise ConfigError("weights", f"`weights` must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    if path not in PATHS:
        raise ConfigError("path", f"`path` must be one of {', '.join(PATHS)}, got {path!r}")
    if geometry.frames_per_block != schedule.spec.frames_per_block:
        raise ConfigError("frames_per_block", f"the schedule has {schedule.spec.frames_per_block} latent frames per "
                                              f"block but the model geometry {geometry.frames_per_block}: give both the "
                                              "same `--frames-per-block`")
    plan = decode_plan(decode, default_decode_device(schedule.spec) if decode_device is None else decode_device, n_dev)
    F = schedule.spec.frames_per_block
    frames = video_frames(1, F) if video_frames_per_block is None else video_frames_per_block
    first = video_frames(0, F) if first_block_frames is None else first_block_frames
    for name, v in (("video_frames", frames), ("first_block_frames", first)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(name, f"`{name}` must be a positive integer, got {v!r}")
    opts = RunOptions(geometry, plan, overlap, frames, first, video_input, activation_bytes, dtype_bytes, weights,
                      stream_contention, getattr(cost, "decoder_name", "vae"))
    with gc_paused():  # many small acyclic tuples: the cyclic collector would only slow the run down
        if path != "event":
            from simulator.steady import simulate_steady

            steady = simulate_steady(schedule, cluster, cost, opts, check_memory, reuse)
            if steady is not None or path == "steady":
                if steady is None:
                    raise SimulationError("the steady-state path does not apply to this run (it needs a uniform lag, a "
                                          "bounded window, no switches, no stragglers or contention, decoding inline "
                                          "or on a GPU of its own, and a steady state that repeats exactly)")
                return steady
        run = run_event_loop(schedule, cluster, cost, opts, check_memory, reuse)
        return _result(run, cluster, cost)


PATHS = ("auto", "event", "steady")
"""``simulate(path=...)``: ``auto`` takes the steady-state fast path where it applies (:mod:`simulator.steady`)
and the event loop elsewhere; ``event`` always runs the event loop over every block; ``steady`` requires the
fast path (a ``SimulationError`` where it does not apply)."""


@dataclass(frozen=True)
class RunOptions:
    """Everything about one run beyond the schedule, the cluster and the cost model (``simulate``'s keywords,
    resolved)."""

    geometry: ModelGeometry
    plan: DecodePlan
    overlap: bool
    frames: int
    first_frames: int
    video_input: bool
    activation_bytes: int
    dtype_bytes: int
    weights: str
    stream_contention: float
    decoder: str


@dataclass
class Run:
    """What the event loop's run of a schedule leaves: its workload, memory report, prices and timeline."""

    schedule: Schedule
    opts: RunOptions
    workload: Workload
    report: MemoryReport
    prices: Prices
    timeline: Timeline


def run_event_loop(schedule: Schedule, cluster: Cluster, cost: CostModel, opts: RunOptions,
                   check_memory: bool = True, reuse: dict[Any, Any] | None = None) -> Run:
    """The workload, memory check, prices and the SimPy run of ``schedule`` (every block, every rule of the
    module docstring); ``reuse`` as ``simulate``'s."""
    geometry, plan = opts.geometry, opts.plan
    key = (id(schedule), id(geometry), plan.device, opts.dtype_bytes, opts.activation_bytes)
    workload = reuse.get(key) if reuse is not None else None
    if workload is None or workload.schedule is not schedule or workload.geometry is not geometry:
        workload = build_workload(schedule, geometry, plan.device, opts.dtype_bytes,
                                  activation_bytes=opts.activation_bytes)
        if reuse is not None:
            reuse[key] = workload  # it holds the schedule and the geometry: their ids stay theirs
    report = memory_report(workload, cluster, plan, opts.overlap, opts.dtype_bytes, opts.decoder, weights=opts.weights)
    if check_memory and not report.fits:
        raise report.error(cluster.gpu.name)
    check = getattr(cost, "check_shapes", None)
    if check is not None:
        check(geometry.tokens_per_block, {len(b.contexts) for b in workload.batches if b.contexts})
    prices = Prices(workload, cluster, cost, plan, opts.overlap, opts.frames, opts.first_frames, opts.video_input)
    timeline = Engine(workload, cluster, prices, plan, opts.stream_contention).run()
    return Run(schedule, opts, workload, report, prices, timeline)


def _geometry(model: ModelGeometry | str | None, cost: CostModel) -> ModelGeometry:
    if isinstance(model, ModelGeometry):
        return model
    if isinstance(model, str):
        return get_model(model)
    g = getattr(cost, "geometry", None)
    if isinstance(g, ModelGeometry):
        return g
    raise ConfigError("model", "`model` is needed with this cost model (a name such as wan2.1-1.3b)")


def _result(run: Run, cluster: Cluster, cost: CostModel) -> SimResult:
    w, prices, tl, report, plan = run.workload, run.prices, run.timeline, run.report, run.opts.plan
    frames, weights = run.opts.frames, run.opts.weights
    sched = w.schedule
    B, S, K = sched.num_blocks, sched.num_stages, sched.spec.num_denoise
    bo = w.batch_of
    started = tuple(tl.batch_start[bo(b, 0)] for b in range(B))
    denoised = tuple(tl.batch_end[bo(b, K - 1, True)] for b in range(B))
    committed = tuple(tl.batch_end[bo(b, S - 1, True)] for b in range(B))
    decoded = tuple(s + dur for _, s, dur in tl.decode_span)
    makespan = max(max(tl.batch_end), max(decoded))
    metrics = stream_metrics(denoised, decoded, max_in_flight=sched.max_in_flight(), window=sched.spec.window,
                             frames=frames, end_s=makespan)
    stalls = switch_stalls(denoised, decoded, [at for at, _ in sched.spec.switches],
                           max_in_flight=sched.max_in_flight(), window=sched.spec.window)
    by_kind, by_link = w.byte_totals()
    return SimResult(
        model=w.geometry.name, cluster=cluster.describe(), cost=cost.name, cost_source=cost.source,
        spec=sched.spec.to_dict(), decode=plan, overlap=prices.overlap, fits=report.fits, metrics=metrics,
        switch_stalls=tuple(stalls), block_started_s=started, block_denoised_s=denoised,
        block_committed_s=committed, block_decoded_s=decoded, bytes_by_link=by_link,
        bytes_by_kind=by_kind, memory=report, num_tasks=len(sched.tasks), timeline=tl,
        gpu=cluster.gpu.name, notes=tuple(prices.notes), weights=weights,
    )
