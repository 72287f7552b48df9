"""What moves between devices, derived from a schedule's placement and reads (a pure transformation).

Executors post exactly these messages and the simulator costs exactly these messages, so neither
re-derives communication on its own. A task runs its segments ``(device, first_layer, end_layer)`` one
tick each (one segment of all layers, except under placement ``layers``); K/V of a layer range lives on
the device that runs it, and moves only between devices that hold the same layer range. Five kinds of
traffic, each indexed by the tick after which (or, for a gang, in which) it moves:

- *gang* K/V: a version produced at tick n and read at the same tick by a task on another device
  (joint attention; exchanged layer by layer inside the tick's forward, at the tick each device runs
  that layer range). The receiving device keeps every layer it received when one of its tasks reads
  that version again at a later tick, so the version is never sent to it a second time;
- *past* K/V: a version produced at tick n and read at a later tick by a task on another device that
  did not already receive it in tick n's gang (committed KV, a re-encoded version written by a recache
  task, an earlier stage's version under ``stale``, ``stage`` or a stage stride above 1); sent once,
  after the producing tick, layer by layer;
- *hidden states* (placement ``layers``): a task's activations from each device of its ring to the
  next, after the tick that device runs it (a ring *hop*);
- *latents*: a block's latent from the device that ran its last segment (the sampler step) to the first
  device of its next stage, each clean latent to the decode device when its last denoise stage ends, and
  to every device whose recache task re-encodes it.

The messages themselves and their sizes on the wire are :mod:`cascade_sched.messages` (re-exported here);
:meth:`TransferPlan.transfers` prices every send with :class:`MessageSizes`, and :meth:`TransferPlan.traffic`
totals them per (tick, src, dst).

:class:`TransferPlanner` states the rules once, tick by tick: :func:`plan_transfers` runs it over a whole
schedule, a :class:`~cascade_sched.rolling.RollingSchedule` over each chunk it gives.
"""

from __future__ import annotations

import collections
import itertools
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from cascade_sched.messages import (  # re-exported (__all__): the plan's vocabulary, imported from here
    DECODE,
    GANG,
    HOP,
    LATENT,
    NEXT,
    PAST,
    REENCODE,
    HiddenSend,
    KVHold,
    KVSend,
    LatentSend,
    MessageSizes,
    Transfer,
    message_bytes,
)
from cascade_sched.placement import Segment, default_decode_device
from cascade_sched.schedule import KVRef, Schedule, Task, TaskKind, gc_paused

if TYPE_CHECKING:
    from cascade_sched.spec import CascadeSpec

__all__ = [
    "DECODE", "GANG", "HOP", "LATENT", "NEXT", "PAST", "REENCODE", "HiddenSend", "KVHold", "KVSend", "LatentSend",
    "MessageSizes", "Transfer", "TransferChunk", "TransferPlan", "TransferPlanner", "message_bytes", "plan_transfers",
]


@dataclass(frozen=True)
class TransferChunk:
    """New entries of a transfer plan, as a :class:`TransferPlanner` gives them: per tick, in the plan's
    canonical order. An entry's tick may precede the chunk's tasks (a version or latent made earlier and
    needed now for the first time); ``keep_until`` gives final values only (a version's last reader
    known), ``first_read`` and ``kept_from_gang`` as soon as they are decided."""

    gang: dict[int, tuple[KVSend, ...]]
    past: dict[int, tuple[KVSend, ...]]
    latents: dict[int, tuple[LatentSend, ...]]
    hops: dict[int, tuple[HiddenSend, ...]]
    keep_until: dict[tuple[int, KVRef], int]
    first_read: dict[tuple[int, KVRef], int]
    kept_from_gang: frozenset[tuple[int, KVRef]]


@dataclass(frozen=True)
class TransferPlan:
    """Every message a run of the schedule sends, indexed by the tick that produces it.

    ``keep_until[(device, ref)]`` is the last tick at which a task on ``device`` reads the version
    ``ref`` at a later tick than the one that wrote it; until then the device holds it (its layer range
    of it, under placement ``layers``: :meth:`residency`); after it the device may free that version.
    Every list is in a canonical order (by ref, then devices), which both ends of a link follow, so
    point-to-point messages match by order (NCCL). ``first_read[(device, ref)]`` is the first such tick
    (a receiver of a past send waits for it then). ``kept_from_gang`` names the (device, ref) pairs a
    device keeps from a gang exchange instead of receiving a past send. ``hops`` are the ring hand-offs
    of placement ``layers``; ``device_layers[d]`` is the layer range device d runs.
    """

    gang: tuple[tuple[KVSend, ...], ...]
    past: tuple[tuple[KVSend, ...], ...]
    latents: tuple[tuple[LatentSend, ...], ...]
    keep_until: dict[tuple[int, KVRef], int]
    decode_device: int
    kept_from_gang: frozenset[tuple[int, KVRef]] = frozenset()
    first_read: dict[tuple[int, KVRef], int] = field(default_factory=dict)
    hops: tuple[tuple[HiddenSend, ...], ...] = ()
    device_layers: tuple[tuple[int, int | None], ...] = ()

    def gang_sends(self, tick: int) -> tuple[KVSend, ...]:
        return self.gang[tick]

    def past_sends(self, tick: int) -> tuple[KVSend, ...]:
        return self.past[tick]

    def latent_sends(self, tick: int) -> tuple[LatentSend, ...]:
        return self.latents[tick]

    def hop_sends(self, tick: int) -> tuple[HiddenSend, ...]:
        return self.hops[tick] if self.hops else ()

    def residency(self) -> tuple[KVHold, ...]:
        """Which versions each device keeps, for which layer range, until when (sorted by device, ref)."""
        out = []
        for (dev, ref), until in sorted(self.keep_until.items()):
            first, end = self.device_layers[dev] if dev < len(self.device_layers) else (0, None)
            out.append(KVHold(dev, first, end, ref, until))
        return tuple(out)

    def transfers(self, sizes: MessageSizes) -> Iterator[Transfer]:
        """Every send of the plan with its wire messages and bytes (:class:`MessageSizes`): a K/V send of a
        layer range carries that range's layers only.

        >>> from cascade_sched import CascadeSpec, build_schedule
        >>> p = plan_transfers(build_schedule(CascadeSpec(num_blocks=2, lag=1, num_devices=2)))
        >>> next(p.transfers(message_bytes(1000, 30, 64)))
        Transfer(tick=1, kind='gang', src=0, dst=1, messages=30, nbytes=30000)
        """
        for tick in range(len(self.gang)):
            for m in self.gang[tick]:
                n = len(m.layers(sizes.layers))
                yield Transfer(tick, GANG, m.src, m.dst, n, n * sizes.gang)
            for m in self.past[tick]:
                n = 2 * len(m.layers(sizes.layers))
                yield Transfer(tick, PAST, m.src, m.dst, n, n * sizes.past)
            for ls in self.latents[tick]:
                yield Transfer(tick, LATENT, ls.src, ls.dst, 1, sizes.latent)
            for h in self.hop_sends(tick):
                yield Transfer(tick, HOP, h.src, h.dst, h.members, h.members * sizes.hidden)

    def link_bytes(self, sizes: MessageSizes) -> dict[tuple[str, int, int], int]:
        """Bytes per ``(kind, src, dst)`` over the whole plan: :meth:`transfers` summed over ticks, each
        distinct send counted once and multiplied (what a simulator totals per link without walking every
        send).

        >>> from cascade_sched import CascadeSpec, build_schedule
        >>> p = plan_transfers(build_schedule(CascadeSpec(num_blocks=3, lag=1, num_devices=2)))
        >>> p.link_bytes(message_bytes(1000, 30, 64))
        {('gang', 0, 1): 120000, ('gang', 1, 0): 120000, ('latent', 1, 0): 64}
        """
        out: collections.Counter[tuple[str, int, int]] = collections.Counter()
        per_send = operator.itemgetter(1, 2, 3, 4)  # src, dst, first_layer, end_layer of a KVSend
        for kind, table, per_layer in ((GANG, self.gang, sizes.gang), (PAST, self.past, 2 * sizes.past)):
            for (src, dst, first, end), n in collections.Counter(
                    map(per_send, itertools.chain.from_iterable(table))).items():
                out[(kind, src, dst)] += n * ((sizes.layers if end is None else end) - first) * per_layer
        for (src, dst), n in collections.Counter(
                map(operator.itemgetter(2, 3), itertools.chain.from_iterable(self.latents))).items():
            out[(LATENT, src, dst)] += n * sizes.latent
        for (src, dst, members), n in collections.Counter(
                map(operator.itemgetter(2, 3, 4), itertools.chain.from_iterable(self.hops))).items():
            out[(HOP, src, dst)] += n * members * sizes.hidden
        return dict(sorted(out.items()))

    def traffic(self, sizes: MessageSizes) -> dict[tuple[int, int, int], int]:
        """Bytes per ``(tick, src, dst)``: what the simulator prices per link and tick, and what the
        executors send (one total per link and tick: sum over ticks for a link, over links for a tick).

        >>> from cascade_sched import CascadeSpec, build_schedule
        >>> p = plan_transfers(build_schedule(CascadeSpec(num_blocks=2, lag=1, num_devices=2)))
        >>> sorted(p.traffic(message_bytes(1000, 30, 64)).items())[:2]
        [((1, 0, 1), 30000), ((2, 0, 1), 30000)]
        """
        out: collections.Counter[tuple[int, int, int]] = collections.Counter()
        for t in self.transfers(sizes):
            out[(t.tick, t.src, t.dst)] += t.nbytes
        return dict(out)


def plan_transfers(schedule: Schedule, decode_device: int | None = None) -> TransferPlan:
    """Derive the :class:`TransferPlan` of ``schedule`` (clean latents go to ``decode_device``, by default
    :func:`~cascade_sched.placement.default_decode_device`, or ``num_devices`` for a decoder on a GPU of
    its own).

    >>> from cascade_sched import CascadeSpec, build_schedule
    >>> p = plan_transfers(build_schedule(CascadeSpec(num_blocks=2, lag=1, num_devices=2)))
    >>> p.gang_sends(1)  # block 1's first stage reads block 0's same-tick version, on another device
    (KVSend(ref=(0, 1), src=0, dst=1, first_layer=0, end_layer=None),)
    >>> p.past_sends(4)  # block 0's committed KV: device 1 got it in tick 4's gang and keeps it
    ()
    """
    spec = schedule.spec
    dd = default_decode_device(spec) if decode_device is None else decode_device
    with gc_paused():  # the per-read dictionaries are many small acyclic objects, as in build_schedule
        planner = TransferPlanner(spec, dd, bounded=False)
        planner.add_tasks(schedule.tasks, schedule.segments, schedule.writes)
        chunk = planner.drain(final=True)
        n = schedule.num_ticks
        return TransferPlan(
            gang=_per_tick(chunk.gang, n), past=_per_tick(chunk.past, n), latents=_per_tick(chunk.latents, n),
            keep_until=chunk.keep_until, decode_device=dd, kept_from_gang=chunk.kept_from_gang,
            first_read=chunk.first_read, hops=_per_tick(chunk.hops, n) if spec.ring_size > 1 else (),
            device_layers=planner.device_layers(),
        )


_E = TypeVar("_E")


def _per_tick(entries: dict[int, tuple[_E, ...]], num_ticks: int) -> tuple[tuple[_E, ...], ...]:
    return tuple(entries.get(t, ()) for t in range(num_ticks))


class TransferPlanner:
    """The transfer rules, applied tick by tick to tasks given in (tick, block) order.

    ``add_tasks`` takes the next tasks (whole ticks at a time, as a schedule or a rolling chunk lists
    them) with the schedule's ``segments`` and ``writes`` functions; ``drain`` gives the entries made
    since the last drain. A K/V send is decided at the first read of a version on a device, which in tick
    order is final; a device's ``keep_until`` of a version is final once no later task can read it:
    at ``retire`` of its block (``bounded``, the rolling case) or at the final drain.
    """

    def __init__(self, spec: CascadeSpec, decode_device: int, *, bounded: bool) -> None:
        self._S, self._K = spec.num_stages, spec.num_denoise
        self._span = spec.num_devices + 1
        self._decode = decode_device
        self._bounded = bounded
        self._recache = spec.switch_policy == "recache"
        self._range_of: dict[int, tuple[int, int | None]] = {}
        self._seen: dict[int, tuple[Segment, ...]] = {}  # id -> segments whose devices are in _range_of
        self._made: dict[int, tuple[int, tuple[Segment, ...]]] = {}  # version id -> (tick made, its segments)
        self._extra: dict[KVRef, int] = {}  # re-encoded version -> its (negative) id
        self._extra_ref: dict[int, KVRef] = {}
        self._extras = 0  # re-encoded versions seen: the next one's id is -1 - this
        self._recv: set[int] = set()  # id * span + device: received in its producing tick's gang
        self._last: dict[int, int] = {}  # id * span + device -> last tick a task there reads it later
        self._keys: dict[int, list[int]] = {}  # block -> its versions' keys above (bounded only)
        self._prev: dict[int, tuple[int, int]] = {}  # block -> (device, tick) of its last stage's sampler
        self._clean: dict[int, tuple[int, int]] = {}  # block -> (device, tick) its clean latent is made
        self._reencode_to: dict[int, set[int]] = {}  # block -> devices its clean latent went to re-encode
        self._gang: dict[int, dict[int, tuple[int, int, int | None]]] = {}  # tick -> key -> (src, layers)
        self._past: dict[int, list[KVSend]] = {}
        self._lat: dict[int, list[LatentSend]] = {}
        self._hops: dict[int, list[HiddenSend]] = {}
        self._keep: dict[tuple[int, KVRef], int] = {}
        self._first: dict[tuple[int, KVRef], int] = {}
        self._kept: set[tuple[int, KVRef]] = set()

    def state_size(self) -> dict[str, int]:
        """Entries held between ticks: versions still readable, (version, device) pairs read or received,
        blocks in flight; bounded when blocks are retired."""
        return {"versions": len(self._made), "reads": len(self._last), "received": len(self._recv),
                "in_flight": len(self._prev), "clean": len(self._clean)}

    def device_layers(self) -> tuple[tuple[int, int | None], ...]:
        """The layer range of every device seen so far (index = device)."""
        n = max(self._range_of, default=-1) + 1
        return tuple(self._range_of.get(d, (0, None)) for d in range(n))

    def _ref(self, k: int) -> KVRef:
        return divmod(k, self._S) if k >= 0 else self._extra_ref[k]

    def add_tasks(self, tasks: Sequence[Task], segments: Callable[[Task], tuple[Segment, ...]],
                  writes: Callable[[Task], tuple[KVRef, ...]]) -> None:
        """Apply the rules to ``tasks``: whole ticks, in (tick, block) order, after every earlier tick."""
        i, n = 0, len(tasks)
        while i < n:
            tick = tasks[i].tick
            j = i + 1
            while j < n and tasks[j].tick == tick:
                j += 1
            self._tick(tick, tasks[i:j], segments, writes)
            i = j

    def _tick(self, n: int, tasks: Sequence[Task], segments: Callable[[Task], tuple[Segment, ...]],
              writes: Callable[[Task], tuple[KVRef, ...]]) -> None:
        S = self._S
        made, extra = self._made, self._extra
        recache = TaskKind.RECACHE
        segs = [segments(t) for t in tasks]
        # 1. What this tick writes: every version, with the devices that hold its layer ranges.
        for t, sg in zip(tasks, segs, strict=True):
            members = 1
            if t.kind == recache:
                refs = writes(t)
                for ref in refs:
                    self._extras += 1
                    k = extra[ref] = -self._extras
                    self._extra_ref[k] = ref
                    made[k] = (n, sg)
                self._reencode(t, sg)
                members = len(refs)
            else:
                made[t.block * S + t.stage] = (n, sg)
            if id(sg) not in self._seen:  # a device's layer range, from the first segments naming it
                self._seen[id(sg)] = sg
                for d, first, end in sg:
                    self._range_of.setdefault(d, (first, end))
            if len(sg) > 1 and members:
                for r in range(len(sg) - 1):
                    self._hops.setdefault(n + r, []).append(
                        HiddenSend(t.block, t.stage, sg[r][0], sg[r + 1][0], members))
        # 2. What it reads: same-tick versions in the gang, earlier ones kept or sent once. Segment r of a
        #    reader runs at tick n + r, beside segment r of the producer (the same layer range).
        last, span, recv = self._last, self._span, self._recv
        prev, lat, decode, new = self._prev, self._lat, self._decode, tuple.__new__
        last_stage, clean_stage = S - 1, self._K - 1
        gang: dict[int, tuple[int, int, int | None]] | None = None
        for t, sg in zip(tasks, segs, strict=True):
            if t.kind == recache:  # it reads no K/V: it re-encodes clean latents
                continue
            one = len(sg) == 1
            seg0 = sg[0]
            d0 = seg0[0]
            for j, v in t.reads:
                k = j * S + v if v < S else extra[(j, v)]
                m, ps = made[k]
                if m == n:  # made in this tick: the gang exchanges it, per layer, where devices differ
                    if ps is sg:
                        continue
                    if one:  # the loop below, for a task of one segment (r = 0)
                        if ps[0][0] != d0:
                            if gang is None:
                                gang = self._gang.setdefault(n, {})
                            key = k * span + d0
                            gang[key] = (ps[0][0], seg0[1], seg0[2])
                            if key not in recv:
                                self._received(key, j)
                        continue
                    for r, seg in enumerate(sg):
                        if ps[r][0] != seg[0]:
                            key = k * span + seg[0]
                            self._gang.setdefault(n + r, {})[key] = (ps[r][0], seg[1], seg[2])
                            if key not in recv:
                                self._received(key, j)
                elif one:  # the loop below, for a task of one segment (r = 0)
                    key = k * span + d0
                    if key not in last:
                        self._first_read(key, j, v, m, ps[0][0], seg0, n)
                    last[key] = n
                else:
                    for r, seg in enumerate(sg):
                        key = k * span + seg[0]
                        if key not in last:  # the first later read on this device decides the send
                            self._first_read(key, j, v, m + r, ps[r][0], seg, n + r)
                        last[key] = n + r
            # 3. The latent chain: from the device of the previous stage's sampler step (its last segment)
            #    to this stage's first device; the clean latent to the decode device.
            b, s = t.block, t.stage
            out = sg[-1][0], n + len(sg) - 1
            if s:
                dev, tick = prev.pop(b)
                if dev != d0:
                    lat.setdefault(tick, []).append(new(LatentSend, (b, s, dev, d0, NEXT)))
            if s != last_stage:
                prev[b] = out
            if s == clean_stage:
                if out[0] != decode:
                    lat.setdefault(out[1], []).append(new(LatentSend, (b, s, out[0], decode, DECODE)))
                if self._recache:
                    self._clean[b] = out

    def _received(self, key: int, block: int) -> None:
        """A device received a version (``key``) in the gang of the tick that made it."""
        self._recv.add(key)
        if self._bounded:
            self._keys.setdefault(block, []).append(key)

    def _first_read(self, key: int, j: int, v: int, made: int, src: int, seg: Segment, at: int) -> None:
        """The first read of version (j, v) on ``seg``'s device after the tick that made it (``made``, on
        ``src``): it was kept from that tick's gang, or it is sent once, after that tick."""
        d, first, end = seg
        ref = (j, v)
        self._first[(d, ref)] = at
        if src != d:
            if key in self._recv:
                self._kept.add((d, ref))  # exchanged in its own tick: kept, not resent
            else:
                self._past.setdefault(made, []).append(tuple.__new__(KVSend, (ref, src, d, first, end)))
        if self._bounded:
            self._keys.setdefault(j, []).append(key)

    def _reencode(self, t: Task, sg: tuple[Segment, ...]) -> None:
        """A recache task's inputs: the clean latents it re-encodes, once per (block, device)."""
        dst = sg[0][0] if sg else t.device
        for j, _ in t.replaces:
            dev, tick = self._clean[j]
            sent = self._reencode_to.setdefault(j, set())
            if dev != dst and dst not in sent:
                sent.add(dst)
                self._lat.setdefault(tick, []).append(LatentSend(j, self._K - 1, dev, dst, REENCODE))

    def retire(self, block: int, reencoded: Sequence[KVRef] = ()) -> None:
        """No task still to come reads ``block``: its devices' ``keep_until`` are final; forget it."""
        span, last, keep = self._span, self._last, self._keep
        for key in self._keys.pop(block, ()):
            self._recv.discard(key)
            until = last.pop(key, None)
            if until is not None:
                k, d = divmod(key, span)
                keep[(d, self._ref(k))] = until
        base = block * self._S
        for k in range(base, base + self._S):
            self._made.pop(k, None)
        for ref in reencoded:
            k = self._extra.pop(ref)
            del self._extra_ref[k], self._made[k]
        self._clean.pop(block, None)
        self._reencode_to.pop(block, None)

    def retire_version(self, ref: KVRef) -> None:
        """No task still to come reads version ``ref`` (a re-encoded version superseded by a newer one)."""
        k = self._extra.pop(ref)
        span, last = self._span, self._last
        keys = self._keys.get(ref[0], [])
        for key in [key for key in keys if key // span == k]:
            keys.remove(key)
            self._recv.discard(key)
            until = last.pop(key, None)
            if until is not None:
                self._keep[(key - k * span, ref)] = until
        del self._extra_ref[k], self._made[k]

    def drain(self, final: bool = False) -> TransferChunk:
        """The entries made since the last drain; with ``final`` (no task follows), every ``keep_until``."""
        if final:
            S, span, keep, extra = self._S, self._span, self._keep, self._extra_ref
            for key, until in self._last.items():
                k, d = divmod(key, span)
                keep[(d, divmod(k, S) if k >= 0 else extra[k])] = until
            self._last.clear()
        S, span, gang, new = self._S, self._span, {}, tuple.__new__  # NamedTuples without their Python __new__
        for tick, entries in sorted(self._gang.items()):
            # A gang never carries a re-encoded version (those are read at later ticks only), so its keys
            # sort exactly as (ref, dst): no tuple comparisons needed.
            sends = []
            for key in sorted(entries):
                k, d = divmod(key, span)
                s_dev, first, end = entries[key]
                sends.append(new(KVSend, (divmod(k, S), s_dev, d, first, end)))
            gang[tick] = tuple(sends)
        out = TransferChunk(
            gang=gang,
            past={t: tuple(sorted(v)) for t, v in sorted(self._past.items())},
            latents={t: tuple(sorted(v, key=lambda m: (m.block, m.stage, m.purpose, m.dst)))
                     for t, v in sorted(self._lat.items())},
            hops={t: tuple(sorted(v)) for t, v in sorted(self._hops.items())},
            keep_until=self._keep, first_read=self._first, kept_from_gang=frozenset(self._kept),
        )
        self._gang, self._past, self._lat, self._hops = {}, {}, {}, {}
        self._keep, self._first, self._kept = {}, {}, set()
        return out
