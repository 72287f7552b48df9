"""The SimPy model of time: ``simulate(schedule, cluster, cost, model) -> SimResult``.

One fresh ``simpy.Environment`` per run. Every cost is computed once, in plain Python, before the run
(:class:`Prices`); the run itself is one process per device walking its *agenda* (the ticks at which it
computes, sends or receives a latent, decodes or encodes a prompt), one process for a decoder or text
encoder on a GPU of its own or on a second stream, and SimPy events named for what they mark:
``done[batch]`` (a batch has ended), ``reached[(device, tick)]`` (a device has passed a tick),
``gang[tick]`` (every member of a tick's exchange has arrived), ``latent[block]`` (a clean latent is on
its decoder) and ``text[job]`` (a prompt is encoded). A process waits only on events it names.

The rules (what the executors' tick loop does; docs/simulator.md has the long form):

1. A device runs its batches (its tasks of one tick) in tick order. A batch costs the tick overhead, one
   batched forward and its sampler steps.
2. *Gangs*: the devices that exchange K/V in a tick (the plan's gang sends, per layer range) start that
   tick's forward together and end it together, after the slowest member's forward plus the per-layer
   exchange; other devices of the tick run on their own. The exchange of one layer is one message per version and peer,
   all posted at once: it takes the link's latency plus the slowest of every device's per-peer and
   per-port transfer (in or out), every layer. ``overlap`` hides it behind compute.
3. *Past sends* (a version read at a later tick) are posted after the producing tick by both ends; the
   first batch that reads one waits for it, layer by layer (it may start once all but its last layer's
   worth of compute remains).
4. *Latents* are posted after a tick and waited for by both ends before their next tick: a sender and
   its receiver meet at the end of that tick.
5. *Decoding* (``DecodePlan``): ``inline`` on a denoising device at the end of the tick that delivered the
   clean latent, before that device's next tick (the default, what an N-GPU run does); ``stream`` on a
   second stream of that device, sharing it with the forwards (``SharedDevice``); ``gpu`` on a GPU of its
   own (counted). Blocks decode in order.
6. *Text encoding*: a segment's prompt is encoded on the decoding device when the segment's first task's
   device reaches the tick before it, and that task waits for it (and the embedding's transfer).
7. *Rings* (placement ``layers``): device r of a ring runs, at tick n + r, the layer range r of the gang
   that entered at tick n (``Workload.batches``), after the hidden states of device r - 1's tick n + r - 1
   have arrived (a hop: sent on the compute stream after that batch, or with ``overlap`` on a second
   stream beside the sender's next batch). The latent of a block's next stage goes from the ring's last
   device back to its first as any latent (rule 4).
8. *Video input*: a ring's first device encodes a block's input frames before the forward that holds its
   first stage.
9. A straggler's compute is multiplied by its factor; a degraded device divides the bandwidth of every
   message touching it. ``cluster.contention`` (> 1) multiplies a batch's compute when another device has
   a batch in the same tick; with ``cluster.host_cores`` compute is processor-shared instead
   (:mod:`simulator.sharing`), and a gang ends when its last member's forward ends plus the exchange
   that compute did not hide.
"""

from __future__ import annotations

import bisect
from collections.abc import Generator
from typing import Any

from cascade_sched.errors import ConfigError, SimulationError
from cascade_sched.metrics import stream_metrics, switch_stalls, video_frames
from cascade_sched.placement import default_decode_device
from cascade_sched.schedule import Schedule, gc_paused
from models.config import ACTIVATION_BYTES
from simulator.catalog import ModelGeometry, get_model
from simulator.cluster import Cluster
from simulator.cost import CostModel
from simulator.memory import memory_report
from simulator.prices import DecodePlan, Prices, decode_plan
from simulator.result import SimResult, Timeline
from simulator.sharing import SharedDevice, SharedHost
from simulator.workload import Workload, build_workload

Proc = Generator[Any, Any, None]

__all__ = ["WEIGHTS", "simulate"]

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
    (video-to-video). ``activation_bytes`` is the width of the hidden states a ring hop carries.

    >>> from cascade_sched import CascadeSpec, build_schedule
    >>> from simulator.cost import UniformCost
    >>> s = build_schedule(CascadeSpec(num_blocks=6, lag=1, num_devices=5))
    >>> r = simulate(s, Cluster.of("h100-sxm", 5, interconnect="ideal"), UniformCost(0.1), "tiny")
    >>> round(r.makespan_s, 6), round(r.paper_fps, 6)  # (start(B-1) + S) x t; 12 frames per tick
    (1.0, 120.0)
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
    with gc_paused():  # many small acyclic tuples: the cyclic collector would only slow the run down
        workload = build_workload(schedule, geometry, plan.device, dtype_bytes, activation_bytes=activation_bytes)
        report = memory_report(workload, cluster, plan, overlap, dtype_bytes, getattr(cost, "decoder_name", "vae"),
                               weights=weights)
        if check_memory and not report.fits:
            raise report.error(cluster.gpu.name)
        check = getattr(cost, "check_shapes", None)
        if check is not None:
            check(geometry.tokens_per_block, {len(b.contexts) for b in workload.batches if b.contexts})
        prices = Prices(workload, cluster, cost, plan, overlap, frames, first, video_input)
        timeline = Engine(workload, cluster, prices, plan, stream_contention).run()
        return _result(workload, cluster, cost, prices, timeline, report, plan, frames, first, weights)


def _geometry(model: ModelGeometry | str | None, cost: CostModel) -> ModelGeometry:
    if isinstance(model, ModelGeometry):
        return model
    if isinstance(model, str):
        return get_model(model)
    g = getattr(cost, "geometry", None)
    if isinstance(g, ModelGeometry):
        return g
    raise ConfigError("model", "`model` is needed with this cost model (a name such as wan2.1-1.3b)")


class Engine:
    """One simulated run of a workload with its prices (see the module docstring)."""

    def __init__(self, w: Workload, cluster: Cluster, prices: Prices, plan: DecodePlan,
                 stream_contention: float) -> None:
        import simpy

        self.simpy = simpy
        self.w, self.cluster, self.p, self.plan = w, cluster, prices, plan
        self.env = env = simpy.Environment()
        nb = len(w.batches)
        self.start = [0.0] * nb
        self.fwd_end = [0.0] * nb
        self.end = [-1.0] * nb
        self.reach_time: dict[tuple[int, int], float] = {}
        self.reached: dict[tuple[int, int], Any] = {}
        self.gang_left = {k: len(g.devices) for k, g in w.gangs.items()}
        self.gang: dict[int, Any] = {}
        self.gang_span: dict[int, tuple[float, float]] = {}
        self.gang_compute: dict[int, float] = {}
        self.latent_ready: dict[int, Any] = {}
        self.latent_time: dict[int, float] = {}
        self.text: dict[int, Any] = {}
        self.text_end = [-1.0] * len(w.texts)
        self.text_span = [(0, 0.0, 0.0)] * len(w.texts)
        self.decode_span = [(0, 0.0, 0.0)] * w.schedule.num_blocks
        self.past_span = [(0.0, 0.0)] * len(w.past)
        self.latent_span = [(0.0, 0.0)] * len(w.latents)
        self.hop_span = [(0.0, 0.0)] * len(w.hops)
        # per batch: forward, exchange, sampler, hop sent on the compute stream, encoding
        self.raw: list[tuple[float, ...]] = [(0.0, 0.0, 0.0, 0.0, 0.0)] * nb
        self.host = SharedHost(env, cluster) if cluster.host_cores is not None else None
        self.device_share = SharedDevice(env, stream_contention) if plan.placement == "stream" else None
        self.executed = 0
        self.left: list[list[float]] = [[] for _ in range(w.num_devices)]  # per agenda item: when it was done

    # -- named events -----------------------------------------------------------------------------------
    def _event(self, table: dict[Any, Any], key: Any) -> Any:
        ev = table.get(key)
        if ev is None:
            ev = table[key] = self.env.event()
        return ev

    def _fire(self, table: dict[Any, Any], key: Any) -> None:
        """Trigger ``table[key]`` for whoever waits on it. A process waits only after checking that what it
        waits for has not happened yet (a time recorded, a counter not yet at zero), so an event nobody asked
        for is never made: most of what happens has no waiter, and each event would cost the calendar a step."""
        ev = table.pop(key, None)
        if ev is not None:
            ev.succeed()

    def _reach(self, device: int, tick: int) -> Any:
        """Wait until ``device`` has passed ``tick`` (a GPU without batches has always passed it)."""
        if device >= self.w.num_devices or tick < 0 or (device, tick) in self.reach_time:
            return None
        return self._event(self.reached, (device, tick))

    def _reach_at(self, device: int, tick: int) -> float:
        """When ``device`` passed ``tick``, which it has: at that tick's agenda item, or, at a tick with
        nothing to do, when it left its last item before it (a sorted search over its agenda's ticks)."""
        if device >= self.w.num_devices or tick < 0:
            return 0.0
        t = self.reach_time.get((device, tick))
        if t is not None:
            return t
        i = bisect.bisect_left(self.p.agenda_ticks[device], tick)
        return self.left[device][i - 1] if i > 0 else 0.0

    # -- compute ----------------------------------------------------------------------------------------
    def _compute(self, device: int, seconds: float, batch: int = 1) -> Any:
        """An event after ``seconds`` of alone-speed compute on ``device``."""
        if self.host is not None and device < self.w.num_devices:
            return self.host.run(seconds, batch)
        if self.device_share is not None and device == self.plan.device:
            return self.device_share.run(seconds)
        return self.env.timeout(seconds)

    # -- the processes ----------------------------------------------------------------------------------
    def run(self) -> Timeline:
        env, w = self.env, self.w
        for d in range(w.num_devices):
            env.process(self.device(d))
        if self.plan.placement != "inline":
            env.process(self.decoder())
        if self.plan.placement == "gpu" and w.texts:
            env.process(self.text_gpu())
        env.run()
        if self.executed != len(w.batches):
            raise SimulationError(f"simulation stalled after {self.executed} of {len(w.batches)} batches")
        return Timeline(w, self.start, self.fwd_end, self.end, dict(sorted(self.gang_span.items())),
                        self.past_span, self.latent_span, self.decode_span, self.text_span, self.raw, self.p.split,
                        self.hop_span)

    def device(self, d: int) -> Proc:
        """Device ``d`` walks its agenda: per tick, its text jobs, its batch, its latent meetings, its
        inline decodes."""
        p = self.p
        left = self.left[d]
        reach_time, reached = self.reach_time, self.reached
        for item in p.agenda[d]:
            tick, bi = item.tick, item.batch
            for job in item.texts:
                yield from self._encode(d, job)
            if bi >= 0:
                yield from self._batch(d, bi)
            reach_time[(d, tick)] = self.env.now  # passed: this runs once per agenda item
            ev = reached.pop((d, tick), None)
            if ev is not None:
                ev.succeed()
            for mi in item.latents:
                yield from self._meet(d, mi)
            for blk in item.ready:
                self._latent_arrived(blk)
            for blk in item.decodes:
                yield from self._decode(d, blk)
            left.append(self.env.now)

    def _batch(self, d: int, bi: int) -> Proc:
        env, p, w = self.env, self.p, self.w
        b = w.batches[bi]
        encode = p.encode[bi]
        if encode > 0:  # video input: the new blocks' frames, before anything else of this tick
            t_e = env.now
            yield self._compute(d, encode, 1)
            encode = env.now - t_e
        if b.text >= 0 and self.text_end[b.text] < 0:
            yield self._event(self.text, b.text)
        need = env.now
        for pi in b.kv_inputs:  # past sends: both ends posted them when they passed the tick
            ps, at = w.past[pi], w.past_tick[pi]
            ev = self._reach(ps.src, at)
            if ev is not None:
                yield ev
            t0 = max(self._reach_at(ps.src, at), self._reach_at(ps.dst, at))
            span = p.past_s[pi]
            self.past_span[pi] = (t0, span)
            need = max(need, t0 + span - p.compute[bi] * p.batch_overlap[bi])
        for hi in b.hops:  # ring hand-offs: the previous device's batch of the tick before, then the wire
            h = w.hops[hi]
            ev = self._reach(h.src, h.tick)
            if ev is not None:
                yield ev
            span = p.hop_s[hi]
            sent = self.end[h.batch] - (0.0 if p.overlap else p.hop_out[h.batch])
            self.hop_span[hi] = (sent, span)
            need = max(need, sent + span)
        if b.text >= 0:
            need = max(need, self.text_end[b.text] + p.text_move_s[b.text])
        if need > env.now:
            yield env.timeout(need - env.now)
        g = b.gang
        member = g >= 0 and p.joint
        if member:
            self.gang_left[g] -= 1
            if self.gang_left[g]:
                yield self._event(self.gang, g)
            else:
                self._fire(self.gang, g)
        t0 = env.now
        self.start[bi] = t0
        compute = p.compute[bi]
        hop = p.hop_out[bi]
        if self.host is None and self.device_share is None:  # dedicated compute: one calendar step
            length = p.gang_len[g] if member else compute
            yield env.timeout(length + p.sample[bi] + hop)
            self.fwd_end[bi] = t0 + compute
            if member:
                self.gang_span[g] = (t0 + length - p.exposed[g], p.exposed[g])
            self.end[bi] = env.now
            self.raw[bi] = (compute, length - compute, p.sample[bi], hop, encode)
            self.executed += 1
            return
        # processor sharing (CPU ranks on one host, or a second stream): compute advances with the others
        yield self._compute(d, compute, len(b.contexts))
        self.fwd_end[bi] = env.now
        if member:  # processor sharing: the gang ends with its last member plus the unhidden exchange
            yield from self._gang_tail(g, env.now - t0)
        t1 = env.now
        if p.sample[bi] > 0:
            yield self._compute(d, p.sample[bi], len(b.contexts))
        t2 = env.now
        if hop > 0:
            yield env.timeout(hop)
        self.end[bi] = env.now
        self.raw[bi] = (self.fwd_end[bi] - t0, t1 - self.fwd_end[bi], t2 - t1, hop, encode)
        self.executed += 1

    def _gang_tail(self, g: int, compute: float) -> Proc:
        """Processor sharing: members compute at their own pace; the last one fixes the gang's end."""
        env, p = self.env, self.p
        self.gang_compute[g] = max(self.gang_compute.get(g, 0.0), compute)
        key = -g - 1  # a second event per gang: every member's forward is done
        self.gang_left.setdefault(key, len(self.w.gangs[g].devices))
        self.gang_left[key] -= 1
        if self.gang_left[key]:
            yield self._event(self.gang, key)
        else:
            slow = self.gang_compute[g]
            c = p.gang_comm[g]
            extra = max(slow, c) + c / p.gang_layers[g] - slow if p.overlap else c
            self.gang_span[g] = (env.now, extra)
            self._fire(self.gang, key)
        yield env.timeout(self.gang_span[g][1])

    def _meet(self, d: int, mi: int) -> Proc:
        """A latent message of this device's tick: both ends post it after the tick and wait for it."""
        env, m = self.env, self.w.latents[mi]
        peer = m.dst if d == m.src else m.src
        ev = self._reach(peer, m.tick)
        if ev is not None:
            yield ev
        t0 = max(self._reach_at(m.src, m.tick), self._reach_at(m.dst, m.tick))
        span = self.p.latent_s[mi]
        self.latent_span[mi] = (t0, span)
        if t0 + span > env.now:
            yield env.timeout(t0 + span - env.now)

    def _latent_arrived(self, block: int) -> None:
        self.latent_time[block] = self.env.now
        self._fire(self.latent_ready, block)

    def _decode(self, d: int, block: int) -> Proc:
        t0 = self.env.now
        yield self._compute(d, self.p.decode[block])
        self.decode_span[block] = (d, t0, self.env.now - t0)

    def _encode(self, d: int, job: int) -> Proc:
        t = self.w.texts[job]
        ev = self._reach(t.device, t.tick - 1)
        if ev is not None:
            yield ev
        t0 = self.env.now
        yield self._compute(d, self.p.text)
        self.text_end[job] = self.env.now
        self.text_span[job] = (d, t0, self.env.now - t0)
        self._fire(self.text, job)

    def decoder(self) -> Proc:
        """Decoding on a second stream or on a GPU of its own: blocks in order, as their latents arrive."""
        d = self.plan.device
        lock = self.gpu_lock
        for blk in range(self.w.schedule.num_blocks):
            if blk not in self.latent_time:
                yield self._event(self.latent_ready, blk)
            req = lock.request(priority=1) if lock is not None else None
            if req is not None:
                yield req
            yield from self._decode(d, blk)
            if req is not None and lock is not None:
                lock.release(req)

    def text_gpu(self) -> Proc:
        """Prompt encoding on the decoder's own GPU, each prompt as soon as it is released."""
        lock = self.gpu_lock
        assert lock is not None
        for job in range(len(self.w.texts)):
            t = self.w.texts[job]
            ev = self._reach(t.device, t.tick - 1)
            if ev is not None:
                yield ev
            req = lock.request(priority=0)
            yield req
            yield from self._encode(self.plan.device, job)
            lock.release(req)

    @property
    def gpu_lock(self) -> Any:
        if self.plan.placement != "gpu":
            return None
        lock = getattr(self, "_lock", None)
        if lock is None:
            lock = self._lock = self.simpy.PriorityResource(self.env, capacity=1)
        return lock


def _result(w: Workload, cluster: Cluster, cost: CostModel, prices: Prices, tl: Timeline, report: Any,
            plan: DecodePlan, frames: int, first_frames: int, weights: str = "sharded") -> SimResult:
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
