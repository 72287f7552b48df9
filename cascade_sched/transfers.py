"""What moves between devices, derived from a schedule's placement and reads (a pure transformation).

Executors post exactly these messages and the simulator costs exactly these messages, so neither
re-derives communication on its own. Three kinds of traffic:

- *gang* K/V: a version produced at tick n and read at the same tick by a task on another device
  (joint attention; exchanged layer by layer inside the tick's forward). The receiving device keeps
  every layer it received when one of its tasks reads that version again at a later tick, so the
  version is never sent to it a second time;
- *past* K/V: a version produced at tick n and read at a later tick by a task on another device that
  did not already receive it in tick n's gang (committed KV, a re-encoded version written by a recache
  task, or last tick's version under ``stale`` attention); sent once, after tick n, layer by layer;
- *latents*: a block's latent moving to the device of its next stage, and each clean latent to the
  decode device when its last denoise stage ends (and to every device whose recache task re-encodes it).

The message pattern the distributed executor uses (and the simulator prices): a gang send is one message
per layer (K and V stacked); a past send is two messages per layer (K, then V); a latent is one message.
:func:`message_bytes` states those sizes once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from cascade_sched.schedule import KVRef, Schedule, TaskKind, gc_paused


class KVSend(NamedTuple):
    """Send version ``ref``'s K/V (all layers) from device ``src`` to device ``dst``."""

    ref: KVRef
    src: int
    dst: int


NEXT, DECODE, REENCODE = "next", "decode", "recache"


class LatentSend(NamedTuple):
    """Send block ``block``'s latent from ``src`` to ``dst``.

    ``purpose`` ``next``: the input of its stage ``stage`` on another device; ``decode``: its clean latent
    to the decode device; ``recache``: its clean latent to the device of a recache task that re-encodes it.
    """

    block: int
    stage: int
    src: int
    dst: int
    purpose: str = NEXT


class MessageSizes(NamedTuple):
    """Bytes of one message of each kind, and how many messages one send is (see the module docstring)."""

    gang: int  # one layer of one version, K and V stacked; ``layers`` of them per gang send
    past: int  # one layer's K, or its V; ``2 * layers`` of them per past send
    latent: int  # one block's latent
    layers: int


def message_bytes(layer_kv_bytes: int, num_layers: int, latent_bytes: int) -> MessageSizes:
    """The executor's message sizes for a model whose K and V of one block in one layer take
    ``layer_kv_bytes``.

    >>> message_bytes(1000, 30, 64)
    MessageSizes(gang=1000, past=500, latent=64, layers=30)
    """
    return MessageSizes(layer_kv_bytes, layer_kv_bytes // 2, latent_bytes, num_layers)


@dataclass(frozen=True)
class TransferPlan:
    """Every message a run of the schedule sends, indexed by the tick that produces it.

    ``keep_until[(device, ref)]`` is the last tick at which a task on ``device`` reads the version
    ``ref`` at a later tick than the one that wrote it; until then the device holds it (its producer
    from the tick that writes it, a receiver from the tick it arrives, by past send or by gang exchange);
    after it the device may free that version. Every list is in a canonical order (by ref, then devices),
    which both ends of a link follow, so point-to-point messages match by order (NCCL).
    ``first_read[(device, ref)]`` is the first such tick (a receiver of a past send waits for it then).
    ``kept_from_gang`` names the (device, ref) pairs a device keeps from a gang exchange instead of
    receiving a past send.
    """

    gang: tuple[tuple[KVSend, ...], ...]
    past: tuple[tuple[KVSend, ...], ...]
    latents: tuple[tuple[LatentSend, ...], ...]
    keep_until: dict[tuple[int, KVRef], int]
    decode_device: int
    kept_from_gang: frozenset[tuple[int, KVRef]] = frozenset()
    first_read: dict[tuple[int, KVRef], int] = field(default_factory=dict)

    def gang_sends(self, tick: int) -> tuple[KVSend, ...]:
        return self.gang[tick]

    def past_sends(self, tick: int) -> tuple[KVSend, ...]:
        return self.past[tick]

    def latent_sends(self, tick: int) -> tuple[LatentSend, ...]:
        return self.latents[tick]


def plan_transfers(schedule: Schedule, decode_device: int = 0) -> TransferPlan:
    """Derive the :class:`TransferPlan` of ``schedule`` (clean latents go to ``decode_device``, which may
    be ``num_devices`` for a decoder on a GPU of its own).

    >>> from cascade_sched import CascadeSpec, build_schedule
    >>> p = plan_transfers(build_schedule(CascadeSpec(num_blocks=2, lag=1, num_devices=2)))
    >>> p.gang_sends(1)  # block 1's first stage reads block 0's same-tick version, on another device
    (KVSend(ref=(0, 1), src=0, dst=1),)
    >>> p.past_sends(4)  # block 0's committed KV: device 1 got it in tick 4's gang and keeps it
    ()
    """
    with gc_paused():  # the per-read dictionaries are many small acyclic objects, as in build_schedule
        return _plan(schedule, decode_device)


def _plan(schedule: Schedule, decode_device: int) -> TransferPlan:
    """:func:`plan_transfers` without the collector pause."""
    n_ticks = schedule.num_ticks
    n_stages = schedule.num_stages
    starts = schedule.starts
    tasks = schedule.tasks
    # Versions are numbered k = block * S + stage (stage < S) and, for the re-encoded versions a recache
    # task writes, from B * S on; keys below are plain integers (k * span + device), which this loop, run
    # once per read of the whole schedule, hashes far faster than nested tuples.
    span = schedule.num_devices + 1
    base = schedule.num_blocks * n_stages
    dev_of: list[int] = [0] * base
    extra: dict[KVRef, int] = {}  # re-encoded version -> k
    extra_refs: list[KVRef] = []
    extra_tick: list[int] = []
    for t in tasks:
        if t.kind == TaskKind.RECACHE:
            for ref in schedule.writes(t):
                extra[ref] = base + len(extra_refs)
                extra_refs.append(ref)
                extra_tick.append(t.tick)
                dev_of.append(t.device)
        else:
            dev_of[t.block * n_stages + t.stage] = t.device
    gang: list[set[int]] = [set() for _ in range(n_ticks)]  # per tick: k * span + dst
    reads_later: dict[int, int] = {}  # k * span + dev -> last tick a task on dev reads k after its tick
    reads_first: dict[int, int] = {}  # ... and the first
    first = reads_first.setdefault
    for t in tasks:  # a recache task reads no K/V: it re-encodes clean latents (sent below)
        tick, dev = t.tick, t.device
        for j, s in t.reads:
            if s < n_stages:
                k = j * n_stages + s
                produced = starts[j] + s
            else:
                k = extra[(j, s)]
                produced = extra_tick[k - base]
            if produced == tick:
                if dev_of[k] != dev:
                    gang[tick].add(k * span + dev)
                continue
            key = k * span + dev
            if reads_later.get(key, -1) < tick:
                reads_later[key] = tick
            first(key, tick)

    def ref_of(k: int) -> KVRef:
        return divmod(k, n_stages) if k < base else extra_refs[k - base]

    def tick_of(k: int) -> int:
        return starts[k // n_stages] + k % n_stages if k < base else extra_tick[k - base]

    keep_until: dict[tuple[int, KVRef], int] = {}
    first_read: dict[tuple[int, KVRef], int] = {}
    past: list[list[tuple[KVRef, int, int]]] = [[] for _ in range(n_ticks)]
    kept: set[tuple[int, KVRef]] = set()
    for key, last in reads_later.items():
        k, dst = divmod(key, span)
        ref = ref_of(k)
        keep_until[(dst, ref)] = last
        first_read[(dst, ref)] = reads_first[key]
        src = dev_of[k]
        if src == dst:
            continue
        produced = tick_of(k)
        if key in gang[produced]:
            kept.add((dst, ref))  # exchanged in its own tick: the receiver keeps it, nothing is resent
        else:
            past[produced].append((ref, src, dst))
    # A gang never carries a re-encoded version (those are read at later ticks only), so its integer keys
    # sort exactly as (ref, dst): no tuple comparisons needed.
    make = KVSend._make
    gang_sends = []
    for g in gang:
        sends = []
        for key in sorted(g):
            k, dst = divmod(key, span)
            sends.append(make((divmod(k, n_stages), dev_of[k], dst)))
        gang_sends.append(tuple(sends))

    latents: list[list[LatentSend]] = [[] for _ in range(n_ticks)]
    k = schedule.spec.num_denoise
    reencoders: dict[int, set[int]] = {}  # block -> devices of recache tasks that need its clean latent
    for t in tasks:
        for j, _ in t.replaces:
            reencoders.setdefault(j, set()).add(t.device)
    for t in tasks:
        if t.kind == TaskKind.RECACHE:  # its inputs are other blocks' clean latents; it sends none
            continue
        if t.stage + 1 < n_stages:
            nxt = dev_of[t.block * n_stages + t.stage + 1]
            if nxt != t.device:
                latents[t.tick].append(LatentSend(t.block, t.stage + 1, t.device, nxt))
        if t.stage == k - 1:
            if t.device != decode_device:
                latents[t.tick].append(LatentSend(t.block, k - 1, t.device, decode_device, DECODE))
            for dst in sorted(reencoders.get(t.block, ())):
                if dst != t.device:
                    latents[t.tick].append(LatentSend(t.block, k - 1, t.device, dst, REENCODE))

    return TransferPlan(
        gang=tuple(gang_sends),
        past=tuple(tuple(map(make, sorted(p))) for p in past),
        latents=tuple(tuple(sorted(x, key=lambda m: (m.block, m.stage, m.purpose, m.dst))) for x in latents),
        keep_until=keep_until,
        decode_device=decode_device,
        kept_from_gang=frozenset(kept),
        first_read=first_read,
    )
