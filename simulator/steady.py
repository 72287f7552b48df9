"""The steady-state fast path: where a run repeats exactly, the event loop runs a prefix and the repeats are
spliced in, so a long stream costs what its first blocks cost.

A cascade with a uniform lag, a bounded window and no prompt switch has the same tasks every ``p`` blocks,
shifted by ``p`` blocks and ``p x lag`` ticks (``p`` = the devices block placement cycles over, the rings a
hybrid cycles over, 1 for stage placement). On identical devices without contention its run settles into a
period: every event of tick ``u + p x lag`` happens ``delta`` seconds after the same event of tick ``u``.
:func:`simulate_steady` then:

1. runs the event loop (:func:`simulator.engine.run_event_loop`) on the first ``P`` blocks of the schedule,
   ``P`` the schedule's length less a multiple ``m x p`` of the period, long enough to hold the transient,
   a stretch that repeats and the drain;
2. finds a cut tick ``T`` where every event (each batch's start, forward end and end and parts, each
   exchange, hop, latent, K/V send and decode, and each device's memory) of the ticks within the
   dependency range around ``T`` repeats one period later to float rounding, and the messages of every
   tick around it repeat too. What happens after a tick depends only on the events within that range
   before it (the window, the blocks in flight and the ring bound how far back a task reads), so the run
   from ``T + p x lag`` on is the run from ``T`` on, shifted;
3. splices: the full run is the prefix's ticks before ``T + p x lag``, the period ``[T, T + p x lag)``
   repeated ``m`` more times (each ``delta`` later, its blocks ``p`` later), then the prefix's ticks after
   it, ``m`` periods later. Block times, bytes (the prefix's plus ``m`` periods' traffic), memory peaks (a
   repeat holds no new peak) and every device's busy time follow. A decoder on a GPU of its own takes
   blocks in order as they arrive, a chain the splice cannot repeat when it falls behind: it is
   recomputed over every block from their arrivals.

Where no cut is found (a transient longer than the prefix, a decoder that throttles the devices
irregularly), the prefix is doubled, and then the event loop runs every block. Where the path does not
apply (switches, stragglers, degraded links, contention, processor sharing, a decode stream, custom
segments, an unbounded window), the event loop runs: it is the general path, and
``tests/simulator/test_sim_steady.py`` proves both give the same results to float rounding on random
specs. ``SimResult.path`` says which ran.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cascade_sched.metrics import stream_metrics
from cascade_sched.schedule import Schedule, build_schedule
from simulator.cluster import Cluster
from simulator.cost import CostModel
from simulator.memory import DeviceMemory, MemoryReport
from simulator.result import SimResult, Timeline

if TYPE_CHECKING:
    from simulator.engine import Run, RunOptions

__all__ = ["Splice", "SteadyTimeline", "applies", "simulate_steady"]

REL = 1e-9  # what "repeats" means: equal to within this share of the times compared (float rounding)


@dataclass(frozen=True)
class Splice:
    """Where the prefix's period is repeated: the cut tick ``cut``, the period of ``ticks`` ticks and
    ``blocks`` blocks, ``delta`` seconds long, repeated ``repeats`` more times."""

    cut: int
    ticks: int
    blocks: int
    delta: float
    repeats: int

    def tick(self, u: int) -> tuple[int, int]:
        """(prefix tick, periods later) of the full run's tick ``u``."""
        end = self.cut + self.ticks
        if u < end:
            return u, 0
        if u < end + self.repeats * self.ticks:
            k = (u - self.cut) // self.ticks
            return u - k * self.ticks, k
        return u - self.repeats * self.ticks, self.repeats

    def copies(self, u: int) -> range:
        """The periods later at which the prefix's tick ``u`` happens in the full run."""
        if u < self.cut:
            return range(0, 1)
        if u < self.cut + self.ticks:
            return range(0, self.repeats + 1)
        return range(self.repeats, self.repeats + 1)


def applies(schedule: Schedule, cluster: Cluster, opts: RunOptions) -> str:
    """Why the steady-state path does not apply to this run, or ``""`` where it may."""
    spec = schedule.spec
    if spec.switches:
        return "prompt switches"
    if spec.window is None:
        return "an unbounded window (every block reads more than the one before)"
    if len(set(spec.lags)) > 1:
        return "per-block lags"
    if schedule.custom_segments:
        return "hand-edited segments"
    if cluster.stragglers or cluster.degraded:
        return "stragglers or degraded links"
    if cluster.contention != 1.0 or cluster.host_cores is not None:
        return "contention between devices"
    if opts.plan.placement == "stream":
        return "a decode stream sharing a device"
    return ""


def _period_blocks(schedule: Schedule) -> int:
    spec = schedule.spec
    if spec.placement == "block":
        return spec.num_devices
    if spec.placement == "layers":
        return spec.rings
    return 1


def simulate_steady(schedule: Schedule, cluster: Cluster, cost: CostModel, opts: RunOptions,
                    check_memory: bool, reuse: dict[Any, Any] | None = None) -> SimResult | None:
    """The run of ``schedule`` by the steady-state path (module docstring), or None where it does not apply
    or finds no exact repeat."""
    from simulator.engine import run_event_loop

    if applies(schedule, cluster, opts):
        return None
    spec = schedule.spec
    p = _period_blocks(schedule)
    lag = spec.lags[0] if spec.lags else spec.tick_span
    B = schedule.num_blocks
    in_flight = -(-spec.tick_span // lag)
    reach = in_flight + (spec.window or 0) + spec.ring_size + 2  # blocks a task's events depend on, back and forth
    size = p * math.ceil((4 * reach + 4 * p) / p)
    while size + p <= B:
        prefix_blocks = B - p * ((B - size) // p)  # the full run is the prefix and a whole number of periods
        key = ("prefix", id(schedule), prefix_blocks)
        held = reuse.get(key) if reuse is not None else None
        if held is not None and held[0] is schedule:
            prefix = held[1]
        else:
            prefix = build_schedule(spec.replace(num_blocks=prefix_blocks))
            if not _same_start(prefix, schedule):
                return None  # not the spec's own schedule: run every block
            if reuse is not None:
                reuse[key] = (schedule, prefix)
        run = run_event_loop(prefix, cluster, cost, opts, check_memory=False, reuse=reuse)
        series: list[list[int]] = []
        report = _memory(run, cluster, series)
        splice = _find_cut(run, series, p, lag, reach, (B - prefix_blocks) // p)
        if splice is not None:
            result = _splice(schedule, run, splice, cluster, cost, report)
            if check_memory and not result.fits:
                raise result.memory.error(cluster.gpu.name)
            return result
        size *= 2
    return None


def _same_start(prefix: Schedule, schedule: Schedule) -> bool:
    """Whether ``schedule`` starts with the prefix's tasks, up to the prefix's last block's start (beyond it
    the prefix lacks the reads of blocks it does not have)."""
    last = prefix.starts[-1]
    n = next((i for i, t in enumerate(prefix.tasks) if t.tick >= last), len(prefix.tasks))
    return prefix.tasks[:n] == schedule.tasks[:n]


def _memory(run: Run, cluster: Cluster, series: list[list[int]]) -> MemoryReport:
    from simulator.memory import memory_report

    o = run.opts
    return memory_report(run.workload, cluster, o.plan, o.overlap, o.dtype_bytes, o.decoder, o.weights, series)


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= REL * (abs(a) + abs(b) + 1.0)


def _find_cut(run: Run, series: Sequence[Sequence[int]], p: int, lag: int, reach: int,
              repeats: int) -> Splice | None:
    """The earliest cut whose dependency range repeats exactly one period later (module docstring)."""
    w = run.workload
    period = p * lag
    radius = reach * lag + period  # ticks around a cut whose events must repeat
    n_ticks = w.schedule.num_ticks
    starts = w.schedule.starts
    first = starts[min(len(starts) - 1, reach)]
    for cut in range(max(first, radius), n_ticks - 2 * period - radius):
        delta = _delta(run, cut, period)
        if delta is None:
            continue
        if _repeats(run, series, cut - radius, cut + radius, period, p, delta):
            return Splice(cut, period, p, delta, repeats)
    return None


def _delta(run: Run, cut: int, period: int) -> float | None:
    """The period's length at ``cut``: how much later the first batch of tick ``cut`` runs one period on."""
    w, tl = run.workload, run.timeline
    batches = w.tick_batches[cut] if cut < len(w.tick_batches) else ()
    if not batches:
        return None
    bi = batches[0]
    other = w.batch_at.get((cut + period, w.batches[bi].device))
    return tl.batch_end[other] - tl.batch_end[bi] if other is not None else None


def _repeats(run: Run, series: Sequence[Sequence[int]], lo: int, hi: int, period: int, p: int,
             delta: float) -> bool:
    """Whether every event of ticks [lo, hi) happens again ``period`` ticks (``p`` blocks) later, ``delta``
    seconds later, and every device's memory repeats."""
    w, tl = run.workload, run.timeline
    batch_at = w.batch_at
    for u in range(lo, hi):
        for bi in w.tick_batches[u]:
            b = w.batches[bi]
            other = batch_at.get((u + period, b.device))
            if other is None:
                return False
            o = w.batches[other]
            if o.contexts != b.contexts or o.refs != tuple((j + p, v) for j, v in b.refs):
                return False
            for arr in (tl.batch_start, tl.batch_compute_end, tl.batch_end):
                if not _close(arr[other] - arr[bi], delta):
                    return False
            if any(not _close(x, y) for x, y in zip(tl.batch_raw[bi], tl.batch_raw[other], strict=True)):
                return False
        for totals in series:
            if totals[u] != totals[u + period]:
                return False
    return (_messages_repeat(w.latents, tl.latent_span, lambda m: (m.block, m.src, m.dst, m.purpose), lo, hi, period,
                             p, delta)
            and _messages_repeat([_Past(ps, t) for ps, t in zip(w.past, w.past_tick, strict=True)], tl.past_span,
                                 lambda m: (m.ref[0], m.ref[1], m.src, m.dst), lo, hi, period, p, delta)
            and _messages_repeat(w.hops, tl.hop_span, lambda h: (-1, h.src, h.dst, h.members), lo, hi, period, 0, delta)
            and _gangs_repeat(run, lo, hi, period, delta)
            and _decodes_repeat(run, lo, hi, period, p, delta)
            and _traffic_repeats(run, lo, hi, period))


@dataclass(frozen=True)
class _Past:
    send: Any
    tick: int

    @property
    def ref(self) -> tuple[int, int]:
        return self.send.ref  # type: ignore[no-any-return]

    @property
    def src(self) -> int:
        return self.send.src  # type: ignore[no-any-return]

    @property
    def dst(self) -> int:
        return self.send.dst  # type: ignore[no-any-return]


def _messages_repeat(messages: Sequence[Any], spans: Sequence[tuple[float, float]], key: Any, lo: int, hi: int,
                     period: int, p: int, delta: float) -> bool:
    """Every message of ticks [lo, hi + period) has its twin one period later (its block ``p`` later), on the
    wire ``delta`` later for as long."""
    at: dict[tuple[int, Any], int] = {}
    for i, m in enumerate(messages):
        t = m.tick
        if lo <= t < hi + period:
            at[(t, key(m))] = i
    for (t, k), i in at.items():
        if t >= hi:
            continue
        twin = at.get((t + period, (k[0] + p, *k[1:])))
        if twin is None:
            return False
        (s0, d0), (s1, d1) = spans[i], spans[twin]
        if not (_close(s1 - s0, delta) and _close(d0, d1)):
            return False
    return True


def _gangs_repeat(run: Run, lo: int, hi: int, period: int, delta: float) -> bool:
    w, tl = run.workload, run.timeline
    for key, (s0, d0) in tl.gang_comm.items():
        g = w.gangs[key]
        if lo <= g.tick < hi:
            twin = tl.gang_comm.get(key + period)
            if twin is None or w.gangs[key + period].tick != g.tick + period or not (
                    _close(twin[0] - s0, delta) and _close(twin[1], d0)):
                return False
    return True


def _decodes_repeat(run: Run, lo: int, hi: int, period: int, p: int, delta: float) -> bool:
    """Decodes on a denoising device (inline) repeat; a decoder GPU's arrivals repeat (its chain is
    recomputed over every block)."""
    sched, tl = run.workload.schedule, run.timeline
    own = run.opts.plan.placement == "gpu"
    for b in range(sched.num_blocks - p):
        t = sched.decode_ready_tick(b)
        if not lo <= t < hi:
            continue
        if own:
            if not _close(tl.latent_ready[b + p] - tl.latent_ready[b], delta):
                return False
            continue
        d0, s0, x0 = tl.decode_span[b]
        d1, s1, x1 = tl.decode_span[b + p]
        if d0 != d1 or not (_close(s1 - s0, delta) and _close(x0, x1)):
            return False
    return True


def _traffic_repeats(run: Run, lo: int, hi: int, period: int) -> bool:
    plan, sizes = run.workload.plan, run.workload.sizes
    assert sizes is not None
    by_tick: dict[int, dict[tuple[str, int, int], int]] = {}
    for t in plan.transfers(sizes):
        if lo <= t.tick < hi + period:
            cell = by_tick.setdefault(t.tick, {})
            cell[(t.kind, t.src, t.dst)] = cell.get((t.kind, t.src, t.dst), 0) + t.nbytes
    return all(by_tick.get(u, {}) == by_tick.get(u + period, {}) for u in range(lo, hi))


class SteadyTimeline(Timeline):
    """The full run's timeline, told by the prefix's and the splice: a batch of the period counts ``repeats``
    more times, each ``delta`` later (busy times, the decomposition, per-device shares)."""

    splice: Splice
    full_decode_span: list[tuple[int, float, float]]
    full_schedule: Schedule

    def times(self, bi: int, t0: float, t1: float) -> int:
        return _count(self.batch_start[bi], self.splice.copies(self.workload.batches[bi].tick), self.splice.delta,
                      t0, t1)

    def decodes(self) -> list[tuple[int, float, float]]:
        return self.full_decode_span

    def executed(self) -> tuple[tuple[int, int], ...]:
        """Every task of the full run: the prefix's, those of the period once more per repeat (their blocks
        ``blocks`` later each time), those after it ``repeats`` periods later."""
        sp = self.splice
        out: list[tuple[int, int]] = []
        for b in self.workload.batches:
            if b.part is None or b.part.entry:
                for k in sp.copies(b.tick):
                    out.extend((j + k * sp.blocks, v) for j, v in b.refs)
        return tuple(out)


def _count(start: float, ks: range, delta: float, t0: float, t1: float) -> int:
    """How many of ``start + k delta`` (k in ``ks``) lie in [t0, t1)."""
    if delta <= 0:
        return len(ks) if t0 <= start < t1 else 0
    lo = max(ks.start, math.ceil((t0 - start) / delta - 1e-12)) if t0 > -math.inf else ks.start
    hi = min(ks.stop - 1, math.floor((t1 - start) / delta - 1e-12)) if t1 < math.inf else ks.stop - 1
    n = 0
    for k in range(max(ks.start, lo - 1), min(ks.stop, hi + 2)):  # the edges checked exactly
        if t0 <= start + k * delta < t1:
            n += 1
    return n


def _splice(schedule: Schedule, run: Run, sp: Splice, cluster: Cluster, cost: CostModel,
            prefix_report: MemoryReport) -> SimResult:
    """The full run's result from the prefix's run and the splice (module docstring, step 3)."""
    w, tl, opts = run.workload, run.timeline, run.opts
    prefix = w.schedule
    B, S, K = schedule.num_blocks, schedule.num_stages, schedule.spec.num_denoise
    bo = w.batch_of

    def block_time(arr: Sequence[float], b: int, stage: int, last: bool, tick: int) -> float:
        k = sp.tick(tick)[1]
        return arr[bo(b - k * sp.blocks, stage, last)] + k * sp.delta

    spec = schedule.spec
    k_s, W = spec.stage_stride, spec.ring_size
    started = tuple(block_time(tl.batch_start, b, 0, False, schedule.starts[b]) for b in range(B))
    denoised = tuple(block_time(tl.batch_end, b, K - 1, True, schedule.starts[b] + (K - 1) * k_s + W - 1)
                     for b in range(B))
    committed = tuple(block_time(tl.batch_end, b, S - 1, True, schedule.starts[b] + (S - 1) * k_s + W - 1)
                      for b in range(B))
    decode_span = _full_decodes(schedule, run, sp)
    decoded = tuple(s + dur for _, s, dur in decode_span)
    last_end = max(tl.batch_end[bi] + sp.copies(w.batches[bi].tick)[-1] * sp.delta for bi in range(len(w.batches)))
    makespan = max(last_end, max(decoded))
    in_flight = schedule.max_in_flight()
    metrics = stream_metrics(denoised, decoded, max_in_flight=in_flight, window=spec.window, frames=opts.frames,
                             end_s=makespan)
    full = SteadyTimeline(w, tl.batch_start, tl.batch_compute_end, tl.batch_end, tl.gang_comm, tl.past_span,
                          tl.latent_span, tl.decode_span, tl.text_span, tl.batch_raw, tl.splitter, tl.hop_span,
                          tl.latent_ready)
    full.splice, full.full_decode_span, full.full_schedule = sp, decode_span, schedule
    by_kind, by_link = _bytes(run, sp)
    report = _full_memory(prefix_report, sp)
    path = (f"steady state: the event loop ran blocks 0-{prefix.num_blocks - 1} (ticks 0-{prefix.num_ticks - 1}); "
            f"ticks {sp.cut}-{sp.cut + sp.ticks - 1} ({sp.blocks} block(s), {sp.delta * 1e3:.6g} ms) repeat "
            f"{sp.repeats} more times")
    return SimResult(
        model=opts.geometry.name, cluster=cluster.describe(), cost=cost.name, cost_source=cost.source,
        spec=spec.to_dict(), decode=opts.plan, overlap=opts.overlap, fits=report.fits, metrics=metrics,
        switch_stalls=(), block_started_s=started, block_denoised_s=denoised, block_committed_s=committed,
        block_decoded_s=decoded, bytes_by_link=by_link, bytes_by_kind=by_kind, memory=report,
        num_tasks=len(schedule.tasks), timeline=full, gpu=cluster.gpu.name, notes=tuple(run.prices.notes),
        weights=opts.weights, path=path, in_flight=in_flight,
    )


def _full_decodes(schedule: Schedule, run: Run, sp: Splice) -> list[tuple[int, float, float]]:
    """Every block's decode: spliced where it runs on a denoising device; recomputed in block order from the
    spliced arrivals where a GPU of its own decodes (it takes each block when the block has arrived and the
    one before it is done)."""
    tl, prices = run.timeline, run.prices
    out: list[tuple[int, float, float]] = []
    if run.opts.plan.placement != "gpu":
        for b in range(schedule.num_blocks):
            _, k = sp.tick(schedule.decode_ready_tick(b))
            d, s, dur = tl.decode_span[b - k * sp.blocks]
            out.append((d, s + k * sp.delta, dur))
        return out
    device = run.opts.plan.device
    free = max((s + dur for d, s, dur in tl.text_span if d == device), default=0.0)
    for b in range(schedule.num_blocks):
        _, k = sp.tick(schedule.decode_ready_tick(b))
        ready = tl.latent_ready[b - k * sp.blocks] + k * sp.delta
        start = max(free, ready)
        end = start + prices.decode[0 if b == 0 else 1]
        out.append((device, start, end - start))
        free = end
    return out


def _bytes(run: Run, sp: Splice) -> tuple[dict[str, int], dict[str, int]]:
    """The prefix's bytes and ``repeats`` times those of the period's ticks."""
    from simulator.workload import KIND_NAMES

    w = run.workload
    assert w.sizes is not None
    by_kind = dict.fromkeys(("kv", "exchange", "latent", "hop"), 0)
    by_link: dict[tuple[int, int], int] = {}
    for t in w.plan.transfers(w.sizes):
        n = len(sp.copies(t.tick))
        by_kind[KIND_NAMES[t.kind]] += n * t.nbytes
        by_link[(t.src, t.dst)] = by_link.get((t.src, t.dst), 0) + n * t.nbytes
    return by_kind, {f"d{s}->d{d}": by_link[(s, d)] for s, d in sorted(by_link)}


def _full_memory(report: MemoryReport, sp: Splice) -> MemoryReport:
    """The prefix's peaks: a repeat of the period holds no new one; a peak first reached after the period
    is reached ``repeats`` periods later."""
    devices = []
    for d in report.devices:
        tick = d.peak_tick if d.peak_tick < sp.cut + sp.ticks else d.peak_tick + sp.repeats * sp.ticks
        devices.append(DeviceMemory(d.device, d.peak_bytes, tick, d.parts))
    return MemoryReport(tuple(devices), report.capacity_bytes, report.margin)
