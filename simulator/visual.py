"""Pictures of a simulated run: the Chrome trace (through ``cascade_sched.trace``), a Gantt PNG, and the
planner's FPS-against-GPU-count plot. Matplotlib is imported only when a picture is drawn.

Trace layout and event names: :mod:`cascade_sched.trace` (the executors write the same). Flow arrows join
a task to the first task that waits for data it sent to another device, and a block's last denoise task
to its decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from cascade_sched.errors import SimulationError
from cascade_sched.schedule import task_name
from cascade_sched.trace import (
    COMM,
    COMPUTE,
    DECODE,
    SAMPLE,
    TraceEvent,
    TraceFlow,
    decode_name,
    exchange_name,
    transfer_name,
    write_chrome_trace,
)

if TYPE_CHECKING:
    from simulator.plan import PlanPoint
    from simulator.result import SimResult, Timeline

MAX_FLOWS = 20000


def _timeline(result: SimResult) -> Timeline:
    if result.timeline is None:
        raise SimulationError("this result keeps no timeline (it was not produced by simulate)")
    return result.timeline


def trace_events(result: SimResult) -> tuple[list[TraceEvent], list[TraceFlow]]:
    """The trace's slices and flow arrows (see the module docstring)."""
    tl = _timeline(result)
    w = tl.workload
    events: list[TraceEvent] = []
    task_event: dict[tuple[int, int], TraceEvent] = {}
    for bi, b in enumerate(w.batches):
        start, cend, end = tl.batch_start[bi], tl.batch_compute_end[bi], tl.batch_end[bi]
        for j, v in b.refs:
            ev = TraceEvent(task_name(j, v), b.device, COMPUTE, start, cend - start,
                            {"tick": b.tick, "batch": len(b.refs)})
            events.append(ev)
            task_event[(j, v)] = ev
            for ref in w.schedule.writes(w.schedule.task(j, v)):  # a recache task writes several
                task_event[ref] = ev
        if b.n_denoise:  # the sampler steps fill the time between the forward's end and the batch's
            f_end = cend
            if b.tick in tl.gang_comm:
                g0, gd = tl.gang_comm[b.tick]
                f_end = max(cend, g0 + gd)
            step = (end - f_end) / b.n_denoise
            t = f_end
            if step > 0:
                for j, v in (r for r in b.refs if 0 <= r[1] < w.schedule.spec.num_denoise):
                    events.append(TraceEvent(task_name(j, v), b.device, SAMPLE, t, step, {"tick": b.tick}))
                    t += step
    for tick, (start, dur) in tl.gang_comm.items():
        if dur <= 0:
            continue
        for bi in w.tick_batches[tick]:
            events.append(TraceEvent(exchange_name(tick), w.batches[bi].device, COMM, start, dur,
                                     {"tick": tick}))
    consumer: dict[int, int] = {}
    for bi, b in enumerate(w.batches):
        for ti in b.inputs:
            consumer.setdefault(ti, bi)
    flows: list[TraceFlow] = []
    decode_event: dict[int, TraceEvent] = {}
    for blk, (start, dur) in enumerate(tl.decode_span):
        ev = TraceEvent(decode_name(blk), w.decode_device, DECODE, start, dur, {"block": blk})
        events.append(ev)
        decode_event[blk] = ev
    K = w.schedule.spec.num_denoise
    for ti, tr in enumerate(w.transfers):
        start, dur = tl.transfer_span[ti]
        j, v = tr.ref
        tick = w.batches[tr.producer].tick
        events.append(TraceEvent(transfer_name(tick), tr.src, COMM, start, dur,
                                 {"tick": tick, "what": f"{tr.kind} B{j}S{v}", "dst": tr.dst, "bytes": tr.nbytes}))
        if len(flows) >= MAX_FLOWS:
            continue
        src_ev = task_event[tr.ref]
        if ti in consumer:
            c = w.batches[consumer[ti]]
            dst_ev = task_event[c.refs[0]]
            flows.append(TraceFlow(src_ev, dst_ev, tr.kind))
        elif v == K - 1 and tr.dst == w.decode_device:
            flows.append(TraceFlow(src_ev, decode_event[j], "decode"))
    return events, flows


def write_trace(result: SimResult, path: str) -> None:
    """Write the run as Chrome trace JSON (opens in Perfetto); metadata carries the summary metrics."""
    events, flows = trace_events(result)
    meta = {k: v for k, v in result.to_dict().items() if not k.startswith("block_") and k != "bytes_by_link"}
    meta["source"] = "simulator"
    write_chrome_trace(path, events, flows, meta)


def draw_gantt(result: SimResult, path: str, max_ticks: int | None = 60) -> None:
    """A Gantt chart PNG: one row per device (and the decoder), compute bars coloured by block, exchanges
    and transfers hatched, decoding dark; ``max_ticks`` limits it to the first ticks (None: all)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = _timeline(result)
    w = tl.workload
    limit = max_ticks if max_ticks is not None else w.schedule.num_ticks
    horizon = max((tl.batch_end[bi] for bi, b in enumerate(w.batches) if b.tick < limit), default=0.0)
    n_rows = max(w.schedule.num_devices, w.decode_device + 1)
    fig, ax = plt.subplots(figsize=(12, 1 + 0.55 * n_rows))
    cmap = plt.get_cmap("tab10")
    for bi, b in enumerate(w.batches):
        if b.tick >= limit:
            continue
        start, cend = tl.batch_start[bi], tl.batch_compute_end[bi]
        blk = b.refs[0][0]
        ax.broken_barh([(start, cend - start)], (b.device - 0.4, 0.5), facecolors=cmap(blk % 10), edgecolor="k",
                       linewidth=0.3)
        label = "+".join(task_name(j, v) for j, v in b.refs)
        if cend - start > horizon / 60:
            ax.text(start + (cend - start) / 2, b.device - 0.15, label, ha="center", va="center", fontsize=6)
    for tick, (start, dur) in tl.gang_comm.items():
        if tick < limit and dur > 0:
            for bi in w.tick_batches[tick]:
                ax.broken_barh([(start, dur)], (w.batches[bi].device + 0.12, 0.25), facecolors="0.7", hatch="//")
    for ti, (start, dur) in enumerate(tl.transfer_span):
        if start <= horizon and dur > 0:
            ax.broken_barh([(start, dur)], (w.transfers[ti].src + 0.12, 0.25), facecolors="0.85", hatch="..")
    for start, dur in tl.decode_span:
        if start <= horizon:
            ax.broken_barh([(start, max(dur, horizon / 2000))], (w.decode_device - 0.4, 0.5), facecolors="0.25")
    ax.set_yticks(range(n_rows))
    ax.set_yticklabels([f"d{d}" + (" (decode)" if d == w.decode_device else "") for d in range(n_rows)])
    ax.invert_yaxis()
    ax.set_xlim(0, horizon * 1.01 if horizon > 0 else 1)
    ax.set_xlabel("simulated seconds")
    ax.set_title(f"{result.model} on {result.cluster}: {result.fps:.1f} FPS, first frame {result.first_frame_s:.2f} s "
                 f"(cost {result.cost})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def draw_plan(points: Sequence[PlanPoint], path: str, target_fps: float | None = None) -> None:
    """FPS (decoding included) against GPU count, one line per lag (the best attention and link at each
    point that fits), one panel per model; the target FPS as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(p.model for p in points))
    fig, axes = plt.subplots(1, max(1, len(models)), figsize=(6 * max(1, len(models)), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        best: dict[int, dict[int, float]] = {}
        for p in points:
            if p.model != model or not p.fits:
                continue
            line = best.setdefault(p.lag, {})
            line[p.gpus] = max(line.get(p.gpus, 0.0), p.fps)
        for lag in sorted(best):
            xs = sorted(best[lag])
            ax.plot(xs, [best[lag][x] for x in xs], marker="o", label=f"lag {lag}")
        if target_fps:
            ax.axhline(target_fps, color="k", linestyle="--", linewidth=1, label=f"target {target_fps:g} FPS")
        ax.set_title(model)
        ax.set_xlabel("GPUs (denoising)")
        ax.set_ylabel("FPS (decoding included)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
