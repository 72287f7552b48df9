"""``cascade validate``: run a matrix of schedules through the executors and the simulator, and compare.

Every row is one schedule (lag, attention, world size) run for real and simulated with a calibrated
profile (:mod:`apps.calibrate.calibrate`). Both sides reduce one series of per-block times with the one
definition of the metrics, :func:`cascade_sched.metrics.stream_metrics`:

- *measured*: ``RunResult.block_done_s`` of the decode rank: when block b's clean latent is ready there
  (its last denoise stage and sampler step done, and, on two ranks, the latent received by rank 0);
  the element-wise median over ``repeats`` runs. No decoding on either side, so a block is "shown" when
  its clean latent is ready (``cascade_sched.metrics``: decoded(b) = denoised(b)).
- *predicted*: the simulator's ``block_decoded_s`` with decoding priced at zero and the decoder on device
  0 (shared): when block b's clean latent is on device 0 and device 0 is between batches, which is when
  the executor's tick loop hands it over. Forward and sampler costs come from the profile, the gloo (or
  NCCL) link from its ``link`` fit, K/V bytes at the run's dtype.

World 1 runs the reference executor in this process with the profile's thread count; world 2 and more
spawn one rank per device (the distributed executor, ``cores // ranks`` threads each) once for the whole
matrix, warm up, and synchronise with a barrier before every measured run. Every run starts once the
machine's CPUs are idle (at most ``quiet_s`` of waiting; rows that had to start on a busy machine say so).
The world > 1 rows are the held-out check when the profile was measured in one process.

Errors are ``100 * (predicted - measured) / measured`` for delivered FPS, denoise FPS, first-frame time and the p50
and p95 of the steady-state block interval.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from apps.request import ModelSource
from cascade_sched.errors import ConfigError
from cascade_sched.metrics import StreamMetrics, stream_metrics, video_frames
from cascade_sched.schedule import Schedule, build_schedule
from cascade_sched.spec import CascadeSpec
from cascade_sched.validate import validate as validate_schedule
from executors.base import Executor
from models.dit import CausalWanDiT
from models.dtypes import dtype_bytes as dtype_of
from simulator.catalog import HOST_CPU, Link, get_model
from simulator.cluster import Cluster
from simulator.profile import Profile, ProfileCost

__all__ = [
    "METRICS",
    "ROW_FIELDS",
    "MatrixOptions",
    "Row",
    "format_markdown",
    "format_table",
    "matrix_specs",
    "measure",
    "predict",
    "run_matrix",
]

METRICS = ("delivered_fps", "denoise_fps", "first_frame_s", "interval_p50_s", "interval_p95_s")
ROW_FIELDS = ("name", "world", "lag", "attention", "window", "blocks", "held_out", "extrapolated",
              "measured", "predicted", "error_pct", "idle")
"""The keys of every row of ``cascade validate --json`` (``measured``/``predicted``: the METRICS plus
``block_s``; ``error_pct``: the METRICS)."""

TARGETS = {"delivered_fps": 10.0, "interval_p95_s": 15.0}  # |error| at most, in percent
Progress = Callable[[str], None]


@dataclass(frozen=True)
class MatrixOptions:
    """The schedules of a validation matrix and how to run them."""

    model: str = "small"
    blocks: int = 16
    window: int | None = 4
    lags: tuple[int, ...] | None = None  # None: every lag 1..S
    attentions: tuple[str, ...] = ("causal", "bidirectional", "stale")
    worlds: tuple[int, ...] = (1, 2)
    timesteps: tuple[float, ...] = (1000, 750, 500, 250)
    repeats: int = 1
    device: str = "cpu"
    dtype: str = "float32"
    threads: int | None = None  # world 1: None takes the profile's thread count
    checkpoint: str | None = None
    timeout_s: float = 120.0
    traces: str | None = None
    quiet_s: float = 30.0  # before each run, wait up to this long for the machine to be idle
    sharing: bool = True  # predict with processor sharing (False: one contention factor per tick)

    @property
    def source(self) -> ModelSource:
        """The model every row runs."""
        return ModelSource(model=self.model, checkpoint=self.checkpoint, device=self.device, dtype=self.dtype)


def matrix_specs(options: MatrixOptions) -> list[CascadeSpec]:
    """Every (world, lag, attention) spec of the matrix, world-major.

    >>> [ (s.num_devices, s.lag, s.attention) for s in matrix_specs(MatrixOptions(
    ...     lags=(1, 5), attentions=("causal",), worlds=(1, 2)))]
    [(1, 1, 'causal'), (1, 5, 'causal'), (2, 1, 'causal'), (2, 5, 'causal')]
    """
    if options.blocks < 2:
        raise ConfigError("blocks", f"`blocks` must be at least 2 to have an interval, got {options.blocks}")
    probe = CascadeSpec(num_blocks=options.blocks, timesteps=options.timesteps)
    lags = options.lags or tuple(range(1, probe.num_stages + 1))
    out = []
    for world in options.worlds:
        if world < 1:
            raise ConfigError("worlds", f"world sizes must be positive, got {world}")
        for lag in lags:
            for attention in options.attentions:
                out.append(CascadeSpec(num_blocks=options.blocks, timesteps=options.timesteps, lag=lag,
                                       attention=attention, window=options.window, num_devices=world))
    return out


def _name(spec: CascadeSpec) -> str:
    return f"w{spec.num_devices}-lag{spec.lag}-{spec.attention}"


def _metrics(schedule: Schedule, series: Sequence[float]) -> StreamMetrics:
    F = schedule.spec.frames_per_block
    return stream_metrics(list(series), None, max_in_flight=schedule.max_in_flight(), window=schedule.spec.window,
                          frames=video_frames(1, F))


def _side(m: StreamMetrics, series: Sequence[float]) -> dict[str, Any]:
    out: dict[str, Any] = {k: getattr(m, k) for k in METRICS}
    out["block_s"] = [round(t, 6) for t in series]
    return out


def _err(pred: float, meas: float) -> float | None:
    if not (math.isfinite(pred) and math.isfinite(meas)) or meas == 0:
        return None
    return 100.0 * (pred - meas) / meas


@dataclass
class Row:
    """One schedule, measured and predicted (see ``ROW_FIELDS``)."""

    name: str
    world: int
    lag: int
    attention: str
    window: int | None
    blocks: int
    held_out: bool
    extrapolated: list[str]
    measured: dict[str, Any]
    predicted: dict[str, Any]
    error_pct: dict[str, float | None] = field(default_factory=dict)
    idle: float = math.nan  # the least share of idle CPU seen just before the row's runs (0..1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def misses(self) -> list[str]:
        """The targets this row misses, e.g. ``["delivered_fps +12.3%"]``."""
        out = []
        for k, limit in TARGETS.items():
            e = self.error_pct.get(k)
            if e is None or abs(e) > limit:
                out.append(f"{k} {'n/a' if e is None else f'{e:+.1f}%'}")
        return out


# -- predictions ----------------------------------------------------------------------------------------
def link_of(profile: Profile) -> Link:
    """The profile's fitted link, or an ideal one (and a note) when it has none."""
    link = profile.link()
    if link is None:
        return Link("ideal", math.inf, 0.0, "no link in the profile: ideal")
    backend = profile.provenance.get("link_backend", "profile")
    return dataclasses.replace(link, name=str(backend))


def _contention_entry(profile: Profile, processes: int) -> dict[str, Any]:
    """The profile's two-rank contention measurement when it was made with ``processes`` ranks, else {}."""
    c = profile.provenance.get("contention")
    return c if processes >= 2 and isinstance(c, dict) and c.get("processes") == processes else {}


def contention(profile: Profile, processes: int) -> float:
    """The profile's measured slowdown of ``processes`` ranks computing at once (1.0 when not measured
    for that many, and always for one process)."""
    return float(_contention_entry(profile, processes).get("slowdown", 1.0))


def interference(profile: Profile, processes: int) -> float:
    """What the measured slowdown leaves once the share of cores is accounted for (caches, memory
    bandwidth): the per-instant factor of the processor-sharing model. Profiles written before it was
    recorded give their whole slowdown (measured on an idle machine, the share of cores explains none)."""
    c = _contention_entry(profile, processes)
    return float(c.get("interference", c.get("slowdown", 1.0)))


def interference_by_batch(profile: Profile, processes: int) -> tuple[tuple[int, float], ...]:
    """The measured interference per batch size (``Cluster.contention_by_batch``); empty when the profile
    has none for that many processes."""
    pairs = _contention_entry(profile, processes).get("interference_by_batch", ())
    return tuple((int(n), float(f)) for n, f in pairs)


def predict(schedule: Schedule, profile: Profile, dtype_bytes: int = 4, contend: bool = True,
            background: float = 0.0, sharing: bool = True, threads: int | None = None) -> tuple[Any, list[str]]:
    """Simulate ``schedule`` with ``profile`` as the measured runs are set up (see the module docstring).

    ``sharing`` (default) models the ranks as processes sharing the host's cores (``Cluster.host_cores``,
    :mod:`simulator.sharing`) next to ``background`` cores' worth of other work, each rank with ``threads``
    threads (default: the profile's for one process, ``cores // ranks`` for more); without it one
    contention factor applies per tick in which two devices compute. Returns the ``SimResult`` and the
    shapes the profile had to interpolate or extrapolate.
    """
    from simulator.engine import simulate

    no_decode = dataclasses.replace(profile, decode_s_per_block=0.0, decode_first_block_s=None)
    cost = ProfileCost(no_decode, get_model(profile.model))
    n = schedule.num_devices
    link = link_of(profile)
    if sharing:
        cores = profile.provenance.get("cores")
        cores = int(cores) if isinstance(cores, int) and cores > 0 else (os.cpu_count() or 1)
        prof_threads = profile.provenance.get("threads")
        if threads is None:
            threads = (int(prof_threads) if n == 1 and isinstance(prof_threads, int) else max(1, cores // n))
        cluster = Cluster(HOST_CPU, n, gpus_per_node=max(8, n), intra=link,
                          contention=interference(profile, n) if contend else 1.0, host_cores=float(cores),
                          threads_per_device=threads, background_load=max(0.0, background),
                          contention_by_batch=interference_by_batch(profile, n) if contend else ())
    else:
        cluster = Cluster(HOST_CPU, n, gpus_per_node=max(8, n), intra=link,
                          contention=contention(profile, n) if contend else 1.0)
    result = simulate(schedule, cluster, cost, cost.geometry, decode=0, check_memory=False, dtype_bytes=dtype_bytes)
    return result, list(cost.extrapolations())


# -- measurements ---------------------------------------------------------------------------------------
def _median_series(runs: Sequence[Sequence[float]]) -> list[float]:
    return [statistics.median(ts) for ts in zip(*runs, strict=True)]


def _warmup_spec(world: int, blocks: int = 3) -> CascadeSpec:
    return CascadeSpec(num_blocks=blocks, lag=1, num_devices=world, window=2)


def _run_all(specs: Sequence[CascadeSpec], model: CausalWanDiT, repeats: int, timeout_s: float,
             distributed: bool, quiet_s: float = 30.0) -> list[dict[str, Any]]:
    """Run every spec ``repeats`` times on this process's share; per spec: block times and events."""
    from apps.calibrate.timing import wait_idle
    from executors.base import RunOptions
    from executors.distributed import DistributedExecutor
    from executors.reference import ReferenceExecutor
    from models.prompts import StandInEncoder

    if distributed:
        import torch.distributed as dist

    executor: Executor = DistributedExecutor() if distributed else ReferenceExecutor()

    opts = RunOptions(timeout_s=timeout_s, text_encoder=StandInEncoder(model.config))  # timing: any text will do
    world = specs[0].num_devices if specs else 1
    schedules = [validate_schedule(build_schedule(spec)) for spec in specs]
    out: list[dict[str, Any]] = [{"runs": [], "events": [], "threads": torch.get_num_threads(), "idle": []}
                                 for _ in specs]
    with torch.inference_mode():
        for _ in range(2):
            executor.run(validate_schedule(build_schedule(_warmup_spec(world))), model, opts)
        # Repeats go round the whole matrix, so a burst of other work on the machine spoils one run of
        # several rows (the median drops it) rather than every run of one row.
        for r in range(repeats):
            for i, schedule in enumerate(schedules):
                # Start in a quiet moment: with ours idle, the machine should be (other work paused).
                idle = wait_idle(0.8, timeout_s=quiet_s) if not distributed or dist.get_rank() == 0 else 0.0
                if distributed:
                    dist.barrier()
                result = executor.run(schedule, model, opts)
                out[i]["runs"].append(result.block_done_s)
                out[i]["idle"].append(idle)
                if r == repeats - 1:
                    out[i]["events"] = result.events
        if distributed:
            for row in out:
                gathered: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
                dist.gather_object(row["events"], gathered, dst=0)
                row["events"] = [e for evs in gathered for e in evs] if gathered is not None else []
    return out


def _rank_entry(payload: dict[str, Any], rank: int, world: int) -> list[dict[str, Any]] | None:
    """Rank function for the world > 1 rows (module level so spawned ranks import it)."""
    from apps.sources import load_model

    if payload["threads"]:
        torch.set_num_threads(payload["threads"])
    model, _ = load_model(payload["source"])
    out = _run_all(payload["specs"], model, payload["repeats"], payload["timeout_s"], distributed=True,
                   quiet_s=payload["quiet_s"])
    return out if rank == 0 else None


def measure(specs: Sequence[CascadeSpec], options: MatrixOptions, threads: int | None) -> list[dict[str, Any]]:
    """Run ``specs`` (all of one world size) for real; per spec ``{"runs", "events", "threads"}``."""
    from apps.sources import load_model
    from executors.launch import spawn

    if not specs:
        return []
    world = specs[0].num_devices
    if world == 1:
        before = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            model, _ = load_model(options.source)
            return _run_all(specs, model, options.repeats, options.timeout_s, distributed=False,
                            quiet_s=options.quiet_s)
        finally:
            torch.set_num_threads(before)
    payload = {"specs": list(specs), "source": options.source, "repeats": options.repeats, "timeout_s": options.timeout_s,
               "threads": None, "quiet_s": options.quiet_s}
    result = spawn(_rank_entry, payload, world, options.device, options.timeout_s * (1 + len(specs)))
    if not isinstance(result, list):
        raise ConfigError("worlds", f"the world-{world} ranks returned no measurements")
    return result


# -- the matrix -----------------------------------------------------------------------------------------
def run_matrix(options: MatrixOptions, profile: Profile, progress: Progress | None = None) -> list[Row]:
    """Measure and predict every spec of the matrix; rows in matrix order."""
    if profile.model != options.model:
        raise ConfigError("model", f"the profile was measured with model {profile.model!r}, not {options.model!r}")
    say = progress or (lambda _m: None)
    dtype_bytes = dtype_of(options.dtype)
    prof_threads = profile.provenance.get("threads")
    threads = options.threads or (int(prof_threads) if isinstance(prof_threads, int) else None)
    specs = matrix_specs(options)
    if options.traces:
        os.makedirs(options.traces, exist_ok=True)
    rows: list[Row] = []
    for world in dict.fromkeys(s.num_devices for s in specs):
        group = [s for s in specs if s.num_devices == world]
        say(f"measuring {len(group)} schedules on {world} process(es) ...")
        measured = measure(group, options, threads if world == 1 else None)
        for spec, meas in zip(group, measured, strict=True):
            schedule = validate_schedule(build_schedule(spec))
            series = _median_series(meas["runs"])
            idle = [x for x in meas["idle"] if math.isfinite(x)]
            background = (os.cpu_count() or 1) * (1.0 - statistics.median(idle)) if idle else 0.0
            sim, extrapolated = predict(schedule, profile, dtype_bytes, background=background,
                                        sharing=options.sharing, threads=meas["threads"])
            pred_series = list(sim.block_decoded_s)
            m, p = _metrics(schedule, series), _metrics(schedule, pred_series)
            row = Row(_name(spec), world, int(spec.lags[0]) if spec.lags else spec.num_stages, spec.attention,
                      spec.window, spec.num_blocks, held_out=world > 1 or meas["threads"] != prof_threads,
                      extrapolated=extrapolated, measured=_side(m, series), predicted=_side(p, pred_series),
                      error_pct={k: _err(getattr(p, k), getattr(m, k)) for k in METRICS},
                      idle=min(meas["idle"], default=math.nan))
            rows.append(row)
            say(f"  {row.name}: delivered FPS measured {m.delivered_fps:.2f}, predicted {p.delivered_fps:.2f} "
                f"({row.error_pct['delivered_fps'] or 0.0:+.1f}%)")
            if options.traces:
                _write_traces(options.traces, row, meas["events"], sim)
    return rows


def _write_traces(folder: str, row: Row, events: list[Any], sim: Any) -> None:
    from cascade_sched.trace import write_chrome_trace
    from simulator.visual import write_trace

    base = os.path.join(folder, row.name)
    write_chrome_trace(base + ".measured.json", events,
                       metadata={"source": "measured", **{k: row.measured[k] for k in METRICS}})
    write_trace(sim, base + ".predicted.json")


def _fmt(v: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v * scale:.{digits}f}"


def format_table(rows: Sequence[Row]) -> str:
    """The human table: measured / predicted / error for delivered FPS, first frame, interval p50 and p95."""
    head = (f"{'row':<24} {'deliv. FPS':>10} {'pred':>7} {'err%':>6}  {'1st s meas':>10} {'pred':>6} {'err%':>6}  "
            f"{'p50 ms meas':>11} {'pred':>6} {'err%':>6}  {'p95 ms meas':>11} {'pred':>6} {'err%':>6}  note")
    lines = [head, "-" * len(head)]
    for r in rows:
        e, m, p = r.error_pct, r.measured, r.predicted
        note = [f"busy machine (idle {r.idle:.0%})"] if math.isfinite(r.idle) and r.idle < 0.8 else []
        if r.held_out:
            note.append("held-out")
        if r.extrapolated:
            note.append("extrapolated")
        miss = r.misses()
        if miss:
            note.append("MISS " + ", ".join(miss))
        lines.append(
            f"{r.name:<24} {_fmt(m['delivered_fps']):>10} {_fmt(p['delivered_fps']):>7} "
            f"{_fmt(e['delivered_fps'], digits=1):>6}  "
            f"{_fmt(m['first_frame_s'], digits=3):>10} {_fmt(p['first_frame_s'], digits=3):>6} "
            f"{_fmt(e['first_frame_s'], digits=1):>6}  "
            f"{_fmt(m['interval_p50_s'], 1e3, 1):>11} {_fmt(p['interval_p50_s'], 1e3, 1):>6} "
            f"{_fmt(e['interval_p50_s'], digits=1):>6}  "
            f"{_fmt(m['interval_p95_s'], 1e3, 1):>11} {_fmt(p['interval_p95_s'], 1e3, 1):>6} "
            f"{_fmt(e['interval_p95_s'], digits=1):>6}  {'; '.join(note)}"
        )
    lines.append(summary_line(rows))
    return "\n".join(lines)


def format_markdown(rows: Sequence[Row]) -> str:
    """The table as Markdown (what docs/validation.md carries)."""
    lines = ["| row | delivered FPS meas | pred | err % | 1st frame s meas | pred | err % | p50 ms meas | pred | err % "
             "| p95 ms meas | pred | err % | note |", "|" + "---|" * 14]
    for r in rows:
        e, m, p = r.error_pct, r.measured, r.predicted
        note = ["held-out"] if r.held_out else []
        if math.isfinite(r.idle) and r.idle < 0.8:
            note.append(f"busy machine (idle {r.idle:.0%})")
        if r.extrapolated:
            note.append("extrapolated")
        note += ["MISS " + ", ".join(r.misses())] if r.misses() else []
        cells = [r.name, _fmt(m["delivered_fps"]), _fmt(p["delivered_fps"]), _fmt(e["delivered_fps"], digits=1),
                 _fmt(m["first_frame_s"], digits=3), _fmt(p["first_frame_s"], digits=3),
                 _fmt(e["first_frame_s"], digits=1), _fmt(m["interval_p50_s"], 1e3, 1),
                 _fmt(p["interval_p50_s"], 1e3, 1), _fmt(e["interval_p50_s"], digits=1),
                 _fmt(m["interval_p95_s"], 1e3, 1), _fmt(p["interval_p95_s"], 1e3, 1),
                 _fmt(e["interval_p95_s"], digits=1), "; ".join(note)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + summary_line(rows)


def summary_line(rows: Sequence[Row]) -> str:
    """Worst absolute error per metric and how many rows meet the targets."""
    worst = {}
    for k in METRICS:
        vals = [abs(v) for r in rows if (v := r.error_pct.get(k)) is not None]
        worst[k] = max(vals) if vals else math.nan
    ok = sum(1 for r in rows if not r.misses())
    return (f"worst |error|: delivered FPS {worst['delivered_fps']:.1f}%, denoise FPS {worst['denoise_fps']:.1f}%, "
            f"first frame "
            f"{worst['first_frame_s']:.1f}%, p50 {worst['interval_p50_s']:.1f}%, p95 {worst['interval_p95_s']:.1f}%; "
            f"{ok}/{len(rows)} rows within the targets (delivered FPS <= {TARGETS['delivered_fps']:g}%, p95 <= "
            f"{TARGETS['interval_p95_s']:g}%)")
