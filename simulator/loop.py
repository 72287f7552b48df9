"""The event loop: the SimPy model of time that runs a workload with its prices (:class:`Engine`), what
``simulator.engine.simulate`` runs over every block (and the steady-state path over a prefix).

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

from cascade_sched.errors import SimulationError
from simulator.cluster import Cluster
from simulator.prices import DecodePlan, Prices
from simulator.result import Timeline
from simulator.sharing import SharedDevice, SharedHost
from simulator.workload import Workload

Proc = Generator[Any, Any, None]

__all__ = ["Engine"]


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
        self.n_dev = n_dev = w.num_devices
        self.reach_time: list[dict[int, float]] = [{} for _ in range(n_dev)]  # per device: tick -> passed at
        self.reached: list[dict[int, Any]] = [{} for _ in range(n_dev)]  # per device: tick -> its waiters' event
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
        self.left: list[list[float]] = [[] for _ in range(n_dev)]  # per agenda item: when it was done

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
        if device >= self.n_dev or tick < 0 or tick in self.reach_time[device]:
            return None
        return self._event(self.reached[device], tick)

    def _reach_at(self, device: int, tick: int) -> float:
        """When ``device`` passed ``tick``, which it has: at that tick's agenda item, or, at a tick with
        nothing to do, when it left its last item before it (a sorted search over its agenda's ticks)."""
        if device >= self.n_dev or tick < 0:
            return 0.0
        t = self.reach_time[device].get(tick)
        if t is not None:
            return t
        i = bisect.bisect_left(self.p.agenda_ticks[device], tick)
        return self.left[device][i - 1] if i > 0 else 0.0

    # -- compute ----------------------------------------------------------------------------------------
    def _compute(self, device: int, seconds: float, batch: int = 1) -> Any:
        """An event after ``seconds`` of alone-speed compute on ``device``."""
        if self.host is not None and device < self.n_dev:
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
        ready = [self.latent_time.get(b, -1.0) for b in range(w.schedule.num_blocks)] if self.latent_time else []
        return Timeline(w, self.start, self.fwd_end, self.end, dict(sorted(self.gang_span.items())),
                        self.past_span, self.latent_span, self.decode_span, self.text_span, self.raw, self.p.split,
                        self.hop_span, ready)

    def device(self, d: int) -> Proc:
        """Device ``d`` walks its agenda: per tick, its text jobs, its batch, its latent meetings, its
        inline decodes."""
        p, env = self.p, self.env
        left = self.left[d]
        reach_time, reached = self.reach_time[d], self.reached[d]
        batches, encode, compute, sample, hop_out = self.w.batches, p.encode, p.compute, p.sample, p.hop_out
        gang_len, exposed, gang_left, joint = p.gang_len, p.exposed, self.gang_left, p.joint
        start, fwd_end, end, raw, gang_span = self.start, self.fwd_end, self.end, self.raw, self.gang_span
        timeout = env.timeout
        dedicated = self.host is None and self.device_share is None
        past, past_tick, past_s, past_span = self.w.past, self.w.past_tick, p.past_s, self.past_span
        hops, hop_s, hop_span, overlap, batch_overlap = self.w.hops, p.hop_s, self.hop_span, p.overlap, p.batch_overlap
        for tick, bi, texts, latents, ready, decodes in p.agenda[d]:
            for job in texts:
                yield from self._encode(d, job)
            if bi >= 0:
                b = batches[bi]
                if dedicated and not (b.text >= 0 or encode[bi]):
                    # _batch's dedicated path, inline (the hot loop): wait for its past sends and hops, join
                    # its gang, one calendar step for the forward, the exchange the forward did not hide, the
                    # sampler and a hop sent on the compute stream
                    need = env.now
                    for pi in b.kv_inputs:  # past sends: both ends posted them when they passed the tick
                        ps, at = past[pi], past_tick[pi]
                        ev = self._reach(ps.src, at)
                        if ev is not None:
                            yield ev
                        t0 = max(self._reach_at(ps.src, at), self._reach_at(ps.dst, at))
                        span = past_s[pi]
                        past_span[pi] = (t0, span)
                        need = max(need, t0 + span - compute[bi] * batch_overlap[bi])
                    for hi in b.hops:  # ring hand-offs: the previous device's batch of the tick before
                        h = hops[hi]
                        ev = self._reach(h.src, h.tick)
                        if ev is not None:
                            yield ev
                        span = hop_s[hi]
                        sent = end[h.batch] - (0.0 if overlap else hop_out[h.batch])
                        hop_span[hi] = (sent, span)
                        need = max(need, sent + span)
                    if need > env.now:
                        yield timeout(need - env.now)
                    g = b.gang
                    member = g >= 0 and joint
                    if member:
                        gang_left[g] -= 1
                        if gang_left[g]:
                            yield self._event(self.gang, g)
                        else:
                            self._fire(self.gang, g)
                    t0 = env.now
                    start[bi] = t0
                    c = compute[bi]
                    length = gang_len[g] if member else c
                    yield timeout(length + sample[bi] + hop_out[bi])
                    fwd_end[bi] = t0 + c
                    if member:
                        gang_span[g] = (t0 + length - exposed[g], exposed[g])
                    end[bi] = env.now
                    raw[bi] = (c, length - c, sample[bi], hop_out[bi], 0.0)
                    self.executed += 1
                else:
                    yield from self._batch(d, bi)
            reach_time[tick] = env.now  # passed: this runs once per agenda item
            ev = reached.pop(tick, None)
            if ev is not None:
                ev.succeed()
            for mi in latents:
                yield from self._meet(d, mi)
            for blk in ready:
                self._latent_arrived(blk)
            for blk in decodes:
                yield from self._decode(d, blk)
            left.append(env.now)

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
