"""Pictures of simulated runs: the Chrome trace (through ``cascade_sched.trace``), a Gantt PNG, the interval
between decoded blocks (periodic stalls), the decomposition of a block's time as stacked bars, and the
planner's FPS-against-GPUs plot. Matplotlib is imported only when a picture is drawn.

Trace layout and event names: :mod:`cascade_sched.trace` (the executors write the same). Flow arrows join
a task to the first task that waits for a past send it made, and a block's last denoise task to its
decoding.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cascade_sched.errors import SimulationError
from cascade_sched.outputs import save_figure
from cascade_sched.schedule import task_name
from cascade_sched.trace import (
    COMM,
    COMPUTE,
    DECODE,
    HOST,
    SAMPLE,
    TraceEvent,
    TraceFlow,
    decode_name,
    exchange_name,
    transfer_name,
    write_chrome_trace,
)
from simulator.catalog import get_gpu
from simulator.result import PARTS

if TYPE_CHECKING:
    from simulator.plan import PlanPoint
    from simulator.result import SimResult, Timeline

MAX_FLOWS = 20000
PART_COLOURS = {"text": "#8c564b", "tick": "#7f7f7f", "forward": "#1f77b4", "cache": "#17becf",
                "sample": "#bcbd22", "exchange": "#ff7f0e", "decode": "#d62728", "wait": "#dddddd"}


def _timeline(result: SimResult) -> Timeline:
    if result.timeline is None:
        raise SimulationError("this result keeps no timeline (it was not produced by simulate)")
    from simulator.steady import SteadyTimeline

    if isinstance(result.timeline, SteadyTimeline):
        raise SimulationError("this run took the steady-state path (its repeats were spliced in, not run): "
                              "simulate it with path='event' (`cascade simulate --path event`) to draw every block")
    return result.timeline


def trace_events(result: SimResult) -> tuple[list[TraceEvent], list[TraceFlow]]:
    """The trace's slices and flow arrows (see the module docstring)."""
    tl = _timeline(result)
    w = tl.workload
    sched = w.schedule
    events: list[TraceEvent] = []
    task_event: dict[tuple[int, int], TraceEvent] = {}
    for bi, b in enumerate(w.batches):
        start, cend, end = tl.batch_start[bi], tl.batch_compute_end[bi], tl.batch_end[bi]
        for j, v in b.refs:
            ev = TraceEvent(task_name(j, v), b.device, COMPUTE, start, cend - start,
                            {"tick": b.tick, "batch": len(b.refs)})
            events.append(ev)
            task_event[(j, v)] = ev
        if b.n_denoise:  # the sampler steps fill the time between the forward's (or gang's) end and the batch's
            f_end = cend
            if b.gang in tl.gang_comm:
                g0, gd = tl.gang_comm[b.gang]
                f_end = max(cend, g0 + gd)
            step = (end - f_end) / b.n_denoise
            t = f_end
            if step > 0:
                for j, v in (r for r in b.refs if 0 <= r[1] < sched.spec.num_denoise):
                    events.append(TraceEvent(task_name(j, v), b.device, SAMPLE, t, step, {"tick": b.tick}))
                    t += step
    for gk, (start, dur) in tl.gang_comm.items():
        if dur <= 0:
            continue
        g = w.gangs[gk]
        for d in g.devices:
            events.append(TraceEvent(exchange_name(g.tick), d, COMM, start, dur, {"tick": g.tick}))
    for h, (start, dur) in zip(w.hops, tl.hop_span, strict=True):  # ring hand-offs, on the sender's comm track
        events.append(TraceEvent(f"hop t{h.tick} d{h.src}->d{h.dst}", h.src, COMM, start, dur, {"tick": h.tick}))
    # One comm slice per (sending device, tick) for everything it sent after that tick, as the executor writes.
    sent: dict[tuple[int, int], list[float]] = {}
    ends = [(m.src, t) for m, t in zip(w.past, w.past_tick, strict=True)] + [(m.src, m.tick) for m in w.latents]
    for (s0, dur), key in zip(tl.past_span + tl.latent_span, ends, strict=True):
        slot = sent.setdefault(key, [s0, s0 + dur])
        slot[0], slot[1] = min(slot[0], s0), max(slot[1], s0 + dur)
    for (src, tick), (s0, s1) in sorted(sent.items()):
        events.append(TraceEvent(transfer_name(tick), src, COMM, s0, s1 - s0, {"tick": tick}))
    decode_event: dict[int, TraceEvent] = {}
    for blk, (d, start, dur) in enumerate(tl.decode_span):
        ev = TraceEvent(decode_name(blk), d, DECODE, start, dur, {"block": blk})
        events.append(ev)
        decode_event[blk] = ev
    for job, (d, start, dur) in enumerate(tl.text_span):
        events.append(TraceEvent(f"text B{w.texts[job].block}", d, HOST, start, dur, {"block": w.texts[job].block}))
    flows: list[TraceFlow] = []
    for pi, ps in enumerate(w.past):
        if len(flows) >= MAX_FLOWS:
            break
        reader = next((bi for bi in w.device_batches[ps.dst] if w.batches[bi].tick > w.past_tick[pi]), None)
        if reader is not None and ps.ref in task_event and pi < len(tl.past_span):
            flows.append(TraceFlow(task_event[ps.ref], task_event[w.batches[reader].refs[0]], "kv"))
    K = sched.spec.num_denoise
    for blk in range(sched.num_blocks):
        if len(flows) >= MAX_FLOWS:
            break
        flows.append(TraceFlow(task_event[(blk, K - 1)], decode_event[blk], "decode"))
    return events, flows


def write_trace(result: SimResult, path: str) -> None:
    """Write the run as Chrome trace JSON (opens in Perfetto); metadata carries the summary metrics."""
    events, flows = trace_events(result)
    meta = {k: v for k, v in result.to_dict().items() if not k.startswith("block_") and k != "bytes_by_link"}
    meta["source"] = "simulator"
    write_chrome_trace(path, events, flows, meta)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_gantt(result: SimResult, path: str, max_ticks: int | None = 60) -> None:
    """A Gantt chart PNG: one row per GPU (the decoder's too), compute bars coloured by block, exchanges
    and transfers hatched, decoding dark red; ``max_ticks`` limits it to the first ticks (None: all)."""
    plt = _plt()
    tl = _timeline(result)
    w = tl.workload
    limit = max_ticks if max_ticks is not None else w.schedule.num_ticks
    horizon = max((tl.batch_end[bi] for bi, b in enumerate(w.batches) if b.tick < limit), default=0.0)
    n_rows = result.gpus
    fig, ax = plt.subplots(figsize=(12, 1.6 + 0.55 * n_rows))
    cmap = plt.get_cmap("tab10")
    for bi, b in enumerate(w.batches):
        if b.tick >= limit:
            continue
        start, cend = tl.batch_start[bi], tl.batch_compute_end[bi]
        ax.broken_barh([(start, cend - start)], (b.device - 0.4, 0.5), facecolors=cmap(b.refs[0][0] % 10),
                       edgecolor="k", linewidth=0.3)
        label = "+".join(task_name(j, v) for j, v in b.refs)
        if cend - start > horizon * len(label) / 180:  # only where the label fits its bar
            ax.text(start + (cend - start) / 2, b.device - 0.15, label, ha="center", va="center", fontsize=6)
    for gk, (start, dur) in tl.gang_comm.items():
        g = w.gangs[gk]
        if g.tick < limit and dur > 0:
            for d in g.devices:
                ax.broken_barh([(start, dur)], (d + 0.12, 0.25), facecolors="0.7", hatch="//")
    for h, (start, dur) in zip(w.hops, tl.hop_span, strict=True):
        if h.tick < limit and dur > 0:
            ax.broken_barh([(start, dur)], (h.src + 0.12, 0.25), facecolors="#ffd27f", hatch="xx")
    for (start, dur), m in zip(tl.past_span, w.past, strict=True):
        if start <= horizon and dur > 0:
            ax.broken_barh([(start, dur)], (m.src + 0.12, 0.25), facecolors="0.85", hatch="..")
    for d, start, dur in tl.decode_span:
        if start <= horizon:
            ax.broken_barh([(start, max(dur, horizon / 2000))], (d - 0.4 + (0.5 if result.decode.placement == "stream"
                                                                             else 0.0), 0.5 if result.decode.placement != "stream" else 0.3),
                           facecolors="#8b0000")
    roles = result.device_roles()
    ax.set_yticks(range(n_rows))
    ax.set_yticklabels([f"d{d}" + (f"\n{roles[d]}" if roles[d] else "") for d in range(n_rows)], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, horizon * 1.01 if horizon > 0 else 1)
    ax.set_xlabel("simulated time from the request (s)")
    ax.set_ylabel("GPU")
    sm = result.metrics
    figures = (f"delivered FPS {sm.delivered_fps:.1f}, denoise FPS {sm.denoise_fps:.1f}" if sm.steady
               else "FPS: none (no steady state)") + f", first frame {sm.first_frame_s:.2f} s"
    shown = f"the first {limit} ticks" if limit < w.schedule.num_ticks else "every tick"
    ax.set_title("\n".join([*textwrap.wrap(f"cascade simulate: {run_label(result)}", 130), f"{figures}; {shown}"]),
                 fontsize=8)
    from matplotlib.patches import Patch

    legend = [Patch(facecolor=cmap(0), edgecolor="k", linewidth=0.3, label="compute (colour: block mod 10)"),
              Patch(facecolor="0.7", hatch="//", label="K/V exchange"),
              Patch(facecolor="#ffd27f", hatch="xx", label="ring hop"),
              Patch(facecolor="0.85", hatch="..", label="K/V send"),
              Patch(facecolor="#8b0000", label="decode")]
    fig.legend(handles=legend, fontsize=7, loc="lower center", ncol=len(legend), frameon=False)
    fig.tight_layout(rect=(0, 0.35 / fig.get_figheight(), 1, 1))  # the legend's row below the axes
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def run_label(result: SimResult) -> str:
    """What was simulated, in one line: ``wan2.1-1.3b on 5 x h100-sxm (nvlink4): 32 blocks, block placement,
    lag 1, causal context, window 7, decode inline on d0, cost parts``."""
    spec = result.spec
    where = (f"{spec['rings']} ring(s) of {spec['num_devices'] // spec['rings']}, stride {spec['stage_stride']}"
             if result.placement == "layers" else f"{result.placement} placement")
    window = spec.get("window") or "unbounded"
    return (f"{result.model} on {result.cluster.split(',')[0]}: {spec['num_blocks']} blocks, {where}, lag "
            f"{spec.get('lag') or 'S'}, {spec.get('attention')} context, window {window}, decode "
            f"{result.decode.describe()}, cost {result.cost}")


def draw_intervals(result: SimResult, path: str) -> None:
    """The interval between consecutive decoded blocks against the block: the data first (drawn on top, the
    y-axis from zero so a small ramp stays small), the steady state shaded, and the summary second (p50, p95
    and the mean, the delivered FPS's interval, as thin lines behind the data). The legend sits below the
    plot, over no data; the title says what was run and both FPS figures (or that there is no steady
    state)."""
    plt = _plt()
    dec = result.block_decoded_s
    blocks = list(range(1, len(dec)))
    gaps = [1e3 * (dec[b] - dec[b - 1]) for b in blocks]
    fig, ax = plt.subplots(figsize=(9, 4.4))
    m = result.metrics
    if m.steady:
        lo, hi = m.steady_blocks
        ax.axvspan(lo - 0.5, hi + 0.5, color="0.93", zorder=0, label=f"steady state (blocks {lo}..{hi})")
        mean = 1e3 * (dec[hi] - dec[lo - 1]) / (hi - lo + 1)
        for value, style, label in ((m.interval_p50_s * 1e3, "--", "p50"), (m.interval_p95_s * 1e3, ":", "p95"),
                                    (mean, "-.", f"mean (= {m.delivered_fps:.1f} delivered FPS)")):
            ax.axhline(value, linestyle=style, color="0.45", linewidth=0.9, zorder=1,
                       label=f"{label}: {value:.0f} ms")
        figures = (f"delivered FPS {m.delivered_fps:.1f} (decoded frames over wall time), denoise FPS "
                   f"{m.denoise_fps:.1f} (the paper's: decoding excluded)")
    else:
        figures = f"FPS: none, {m.no_steady}"
    ax.plot(blocks, gaps, "o-", color="#1f77b4", markersize=3.5, linewidth=1.4, zorder=3,
            label="interval between decoded blocks")
    ax.set_xlim(0.5, max(len(dec) - 0.5, 1.5))
    ax.set_ylim(0, max(gaps, default=1.0) * 1.12)  # from zero: the spikes and ramps at their true size
    ax.set_xlabel("block (the interval ending at its decode)")
    ax.set_ylabel("interval between decoded blocks (ms)")
    ax.set_title("\n".join([*textwrap.wrap(f"cascade simulate: {run_label(result)}", 110), figures]), fontsize=8)
    ax.grid(alpha=0.3, zorder=0)
    handles, labels = ax.get_legend_handles_labels()  # the data first in the legend too, then the summary
    order = [len(handles) - 1, *range(len(handles) - 1)]
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=7, loc="upper center",
              bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def draw_decomposition(rows: Sequence[tuple[str, SimResult]], path: str, title: str = "") -> None:
    """Stacked bars, one per (label, result): the seconds of one delivered block by part
    (``SimResult.decomposition``), so the bar's height is the delivered interval."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows) + 2), 4.6))
    labels = [label for label, _ in rows]
    bottoms = [0.0] * len(rows)
    parts = [r.decomposition() for _, r in rows]
    for part in PARTS:
        heights = [1e3 * p[part] for p in parts]
        if not any(heights):
            continue
        ax.bar(labels, heights, bottom=bottoms, color=PART_COLOURS[part], label=part, edgecolor="white", linewidth=0.5)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    for i, (_, r) in enumerate(rows):
        fps = f"{r.delivered_fps:.1f} FPS" if r.metrics.steady else "no steady\nstate"
        ax.text(i, bottoms[i], f"{fps}\n{r.gpus} GPU", ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("ms per delivered block (the interval)")
    ax.set_xlabel("setting")
    fig.suptitle(title or "where a delivered block's time goes (cascade simulate, steady state)", fontsize=9)
    ax.set_ylim(0, max(bottoms, default=1.0) * 1.18)
    plt.setp(ax.get_xticklabels(), fontsize=7, rotation=20, ha="right")
    handles, labels = ax.get_legend_handles_labels()  # a row between the title and the plot, over no bar
    top = 1 - 0.6 / fig.get_figheight()
    fig.legend(handles[::-1], labels[::-1], fontsize=7, ncol=len(handles), loc="lower center",
               bbox_to_anchor=(0.5, top), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, top))
    save_figure(fig, path, dpi=120)
    plt.close(fig)


CAP_WORDS = {"in-flight": "the blocks in flight", "ring-stage": "the slowest ring stage", "decoder": "the decoder",
             "link": "the link", "compute": "compute", "memory": "memory"}
FAMILY_STYLE = {"block": ("#1f77b4", "o", "block placement (one block per GPU)"),
                "ring": ("#ff7f0e", "s", "one layer ring (W = the denoising GPUs)"),
                "hybrid": ("#2ca02c", "^", "G x W hybrid (G rings of W)"),
                "stage": ("#9467bd", "v", "stage placement")}


def draw_plan(points: Sequence[PlanPoint], path: str, target_fps: float | None = None, space: Any = None) -> None:
    """Delivered FPS against GPUs in all (a decoder GPU counted), one line per placement family (block, one
    ring, G x W hybrids): at each count the best lag, context, decode placement and split that fits. One
    panel per model; the target dashed; the recommended point starred (where none meets the target, the
    fastest point on the FPS plateau, circled, with what caps it). The title says what was run; the legend
    sits below the panels."""
    from simulator.plan import plateau, recommend

    plt = _plt()
    models = list(dict.fromkeys(p.model for p in points))
    n = max(1, len(models))
    fig, axes = plt.subplots(1, n, figsize=(6.2 * n, 4.6), squeeze=False)
    handles: dict[str, Any] = {}
    for ax, model in zip(axes[0], models, strict=True):
        best: dict[str, dict[int, PlanPoint]] = {}
        for p in points:
            if p.model != model or not p.fits:
                continue
            line = best.setdefault(p.family, {})
            if p.gpus not in line or p.fps > line[p.gpus].fps:
                line[p.gpus] = p
        top = 1.0
        for family in ("block", "ring", "hybrid", "stage"):
            if family not in best:
                continue
            colour, marker, label = FAMILY_STYLE[family]
            xs = sorted(best[family])
            ys = [best[family][x].fps for x in xs]
            top = max(top, *ys)
            (h,) = ax.plot(xs, ys, marker=marker, color=colour, linewidth=1.4, markersize=5, label=label)
            handles.setdefault(label, h)
        if target_fps:
            h = ax.axhline(target_fps, color="k", linestyle="--", linewidth=1)
            handles.setdefault(f"target {target_fps:g} FPS", h)
            top = max(top, target_fps)
        rec = recommend(points, model)
        mark, flat_from = (rec, 0) if rec is not None else plateau(points, model)
        if mark is not None:
            counts_swept = [p.gpus for p in points if p.model == model]
            word = "recommended" if rec is not None else (
                "fastest, FPS still rising at the largest count" if flat_from == max(counts_swept) else
                f"fastest; FPS plateaus from {flat_from} GPUs")
            (h,) = ax.plot([mark.gpus], [mark.fps], marker="*" if rec is not None else "o", markersize=17,
                           markerfacecolor="gold" if rec is not None else "none", markeredgecolor="k",
                           linestyle="none")
            handles.setdefault("recommended point" if rec is not None else "fastest point (no point meets the "
                               "target)", h)
            note = f"{word}: {mark.label}, {mark.attention}, lag {mark.lag}, decode {mark.decode}\n{mark.fps:.1f} FPS"
            if rec is None and mark.cap_kind:
                note += f", capped by {CAP_WORDS.get(mark.cap_kind, mark.cap_kind)}"
            ax.annotate(note, (mark.gpus, mark.fps), xytext=(0.03, 0.97), textcoords="axes fraction", fontsize=7.5,
                        va="top", ha="left", bbox={"boxstyle": "round", "fc": "white", "ec": "0.6", "alpha": 0.9},
                        arrowprops={"arrowstyle": "->", "color": "0.4", "linewidth": 0.8})
        counts = sorted({p.gpus for p in points if p.model == model})
        ax.set_xticks(counts)
        ax.set_xlim(min(counts, default=1) - 0.4, max(counts, default=1) + 0.4)
        ax.set_ylim(0, top * 1.35)
        ax.set_title(model, fontsize=10)
        ax.set_xlabel("GPUs in all (a decoder GPU counted)")
        ax.set_ylabel("delivered FPS (frames/s)")
        ax.grid(alpha=0.3)
    title = "cascade plan: delivered FPS against GPUs, per placement"
    if space is not None:
        links = ",".join(space.interconnects) if space.interconnects else f"{get_gpu(space.gpu).default_link}"
        win = ",".join(str(w or "unbounded") for w in space.windows)
        steps = f"{len(space.timesteps)} denoise steps" + (" + cache pass" if space.cache_pass else "")
        title = (f"cascade plan: delivered FPS against GPUs, per placement, on {space.gpu} ({links})\n"
                 f"window {win}, {steps}, cost {space.cost}; each point the best lag, context "
                 f"({', '.join(space.attentions)}) and decode ({', '.join(space.decodes)}) at that count")
    # Title and legend fit the figure's width: wrap the title, and give the legend as many columns as fit.
    width_in = fig.get_figwidth()
    lines = [part for line in title.splitlines() for part in textwrap.wrap(line, int(width_in * 15))]
    fig.suptitle("\n".join(lines), fontsize=9)
    ncol = max(1, min(len(handles), int(width_in // 2.4)))
    rows = -(-len(handles) // ncol)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.045 * rows + 0.02, 1, 1 - 0.033 * len(lines)))
    save_figure(fig, path, dpi=120)
    plt.close(fig)
