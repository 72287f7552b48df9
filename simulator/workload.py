"""What a schedule asks of the hardware, before any costs: batches, messages and synchronisations.

:func:`build_workload` reads the ``Schedule`` (its tasks, their ticks and devices) and the core's
:class:`~cascade_sched.transfers.TransferPlan`, the very messages the distributed executor posts, and
re-derives nothing:

- a *batch* per (tick, device): the device's tasks of that tick, run as one forward; its members are
  ``Schedule.forward_inputs`` (a recache task has one cache pass per block it re-encodes), each attending
  to its own tokens plus the versions it reads. Under placement ``layers`` a task runs its segments
  (``Schedule.segments``) one tick each, so a batch is the segments device r of a ring runs at tick n + r
  of the gang that entered at tick n, over its layer range (``Batch.part``: the patch embedding on the
  ring's first device, the head and the sampler steps on its last);
- a *gang* per tick and layer range with gang sends: the devices that exchange K/V in that tick's forward,
  with the bytes each sends to and receives from each peer per layer (one message per version and layer);
- *hops* (placement ``layers``): the plan's hidden-state hand-offs, per (tick, sender, receiver), each
  waited for by the receiver's batch of the next tick;
- *past sends*: the plan's K/V versions sent after the tick that produced them (two messages per layer), each waited
  for by the batch on the receiving device that first reads it (``TransferPlan.first_read``);
- *latent messages*: posted after a tick and waited for by both ends before their next tick (the tick
  loop waits for its latent sends and receives), so each is a synchronisation of its two devices;
- *text jobs*: one prompt encoding per prompt segment (block 0, and every switch), needed by the
  segment's first task.

Ordering on one device covers every other dependency: a version produced earlier on the same device, or
received in an earlier tick's gang, is there before any later batch of that device starts.
"""

from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass
from typing import NamedTuple

from cascade_sched.errors import ConfigError
from cascade_sched.messages import GANG, HOP, LATENT, PAST
from cascade_sched.schedule import KVRef, Schedule, TaskKind
from cascade_sched.transfers import KVSend, MessageSizes, TransferPlan, message_bytes, plan_transfers
from models.config import ACTIVATION_BYTES, ModelSlice
from simulator.catalog import ModelGeometry

__all__ = ["KIND_NAMES", "Batch", "Gang", "Hop", "LatentMessage", "TextJob", "Workload", "build_workload"]

KIND_NAMES = {GANG: "exchange", PAST: "kv", LATENT: "latent", HOP: "hop"}
"""The result's name for each kind of the plan's messages (``SimResult.bytes_by_kind``)."""


class Batch(NamedTuple):
    """The tasks one device runs at one tick, as one forward (of its layer range, under placement layers)."""

    tick: int
    device: int
    refs: tuple[KVRef, ...]  # the tasks' (block, stage); stage -1 is a recache task
    contexts: tuple[int, ...]  # per forward member, the tokens it attends to (own + read versions)
    n_denoise: int  # tasks followed by a sampler step (on the device that runs the head)
    n_cache: int  # forward members that are cache passes (cache tasks and recache members)
    kv_inputs: tuple[int, ...]  # past sends (indices into Workload.past) it is the first reader of
    text: int  # the text job it waits for (its batch holds a segment's first task), or -1
    part: ModelSlice | None = None  # the layers it runs; None: the whole model
    gang: int = -1  # the gang (a key of Workload.gangs) it exchanges K/V in, or -1
    hops: tuple[int, ...] = ()  # the hand-offs (indices into Workload.hops) it waits for
    entered: int = -1  # the tick its tasks entered their ring (== tick for a whole-model batch)


class Gang(NamedTuple):
    """One tick's per-layer K/V exchange among the devices of one layer range: ``sends[(src, dst)]`` =
    messages per layer from src to dst, over ``layers`` layers."""

    tick: int
    devices: tuple[int, ...]
    sends: dict[tuple[int, int], int]
    layers: int = 0  # 0: every layer of the model


class Hop(NamedTuple):
    """The hidden states ``src`` hands to the next device of its ring ``dst`` after ``tick``: ``members``
    forward members' worth (the plan's hop sends of that tick and pair); ``batch`` is the sender's batch."""

    tick: int
    src: int
    dst: int
    members: int
    batch: int


class LatentMessage(NamedTuple):
    """One latent from ``src`` to ``dst`` after ``tick`` (``purpose``: next, decode, recache)."""

    block: int
    src: int
    dst: int
    tick: int
    purpose: str


class TextJob(NamedTuple):
    """Encoding the prompt of the segment that starts at ``block`` (its first task starts at ``tick``)."""

    block: int
    tick: int
    device: int  # the device that runs the segment's first task


@dataclass(frozen=True, slots=True)
class Workload:
    """Everything the engine needs that does not depend on costs or hardware (indices into the tuples)."""

    schedule: Schedule
    geometry: ModelGeometry
    plan: TransferPlan
    batches: tuple[Batch, ...]
    device_batches: tuple[tuple[int, ...], ...]  # per device (the decode GPU too), its batches in tick order
    tick_batches: tuple[tuple[int, ...], ...]
    batch_at: dict[tuple[int, int], int]  # (tick, device) -> batch
    gangs: dict[int, Gang]  # gang key (tick, plus num_ticks x the ring position of its layer range) -> exchange
    past: tuple[KVSend, ...]  # the plan's past sends, every tick's in order (2 messages per layer of its range)
    past_tick: tuple[int, ...]  # per past send, the tick after which it is posted
    past_bytes: int  # bytes of one past send of every layer (one version)
    latents: tuple[LatentMessage, ...]
    texts: tuple[TextJob, ...]
    decode_device: int  # == num_devices for a decoder GPU of its own
    layer_kv_bytes: int
    latent_bytes: int
    sizes: MessageSizes | None = None  # the plan's message sizes (what ``bytes_by_kind`` prices)
    hops: tuple[Hop, ...] = ()

    @property
    def num_devices(self) -> int:
        return self.schedule.num_devices

    def batch_of(self, block: int, stage: int, last: bool = False) -> int:
        """The batch that runs task (block, stage): its first segment's, or with ``last`` its last segment's
        (the one that runs the head and the sampler step; the same batch outside placement layers)."""
        t = self.schedule.task(block, stage)
        if not last:
            return self.batch_at[(t.tick, t.device)]
        segs = self.schedule.segments(t)
        return self.batch_at[(t.tick + len(segs) - 1, segs[-1][0])] if segs else self.batch_at[(t.tick, t.device)]

    def past_nbytes(self, send: KVSend) -> int:
        """Bytes of one past send: K and V of every layer of its range."""
        layers = len(send.layers(self.geometry.num_layers))
        return self.past_bytes * layers // self.geometry.num_layers

    def bytes_total(self) -> int:
        """Every byte the schedule moves between devices."""
        return sum(self.bytes_by_kind().values())

    def byte_totals(self) -> tuple[dict[str, int], dict[str, int]]:
        """(:meth:`bytes_by_kind`, :meth:`bytes_by_link`) in one pass over the plan."""
        by_kind, by_link = self._totals()
        return by_kind, {f"d{s}->d{d}": by_link[(s, d)] for s, d in sorted(by_link)}

    def _totals(self) -> tuple[dict[str, int], dict[tuple[int, int], int]]:
        """Bytes per kind and per (sender, receiver), from the plan's own totals (``TransferPlan.transfers``,
        what the executors send)."""
        sizes = self.sizes or message_bytes(self.layer_kv_bytes, self.geometry.num_layers, self.latent_bytes)
        by_kind = dict.fromkeys(("kv", "exchange", "latent", "hop"), 0)
        by_link: collections.Counter[tuple[int, int]] = collections.Counter()
        for (kind, src, dst), nbytes in self.plan.link_bytes(sizes).items():
            by_kind[KIND_NAMES[kind]] += nbytes
            by_link[(src, dst)] += nbytes
        return by_kind, dict(by_link)

    def bytes_by_kind(self) -> dict[str, int]:
        """Bytes per kind of message: ``exchange`` (gangs), ``kv`` (past sends), ``latent``, ``hop`` (ring
        hand-offs)."""
        return self._totals()[0]

    def bytes_by_link(self) -> dict[str, int]:
        """Bytes per (sender, receiver) pair, keyed ``d0->d1``."""
        out = self._totals()[1]
        return {f"d{s}->d{d}": out[(s, d)] for s, d in sorted(out)}


def build_workload(
    schedule: Schedule,
    geometry: ModelGeometry,
    decode_device: int | None = None,
    dtype_bytes: int = 2,
    plan: TransferPlan | None = None,
    activation_bytes: int = ACTIVATION_BYTES["bfloat16"],
) -> Workload:
    """Batches, gangs, hops, messages and text jobs of ``schedule`` (see the module docstring).

    ``decode_device`` is a denoising device or ``num_devices`` (a decoder GPU of its own); default the
    schedule's (``placement.default_decode_device``). ``activation_bytes`` is the width of the hidden
    states a ring hop carries (the executors' float32 residual stream by default).

    >>> from cascade_sched import CascadeSpec, build_schedule
    >>> from simulator.catalog import get_model
    >>> w = build_workload(build_schedule(CascadeSpec(num_blocks=2, lag=1, num_devices=2)), get_model("tiny"))
    >>> len(w.batches), sorted(w.gangs), len(w.past)
    (10, [1, 2, 3, 4], 0)
    >>> ring = build_schedule(CascadeSpec(num_blocks=2, lag=1, num_devices=2, placement="layers", stage_stride=2,
    ...                                   num_layers=2, timesteps=(1000,), cache_pass=False))
    >>> w = build_workload(ring, get_model("tiny"))
    >>> sorted((b.tick, b.device, b.part.describe()) for b in w.batches if b.part is not None)
    [(0, 0, 'layers [0, 1) + entry'), (1, 0, 'layers [0, 1) + entry'), (1, 1, 'layers [1, 2) + head'), (2, 1, 'layers [1, 2) + head')]
    >>> [(h.tick, h.src, h.dst) for h in w.hops]
    [(0, 0, 1), (1, 0, 1)]
    """
    from cascade_sched.placement import default_decode_device

    spec = schedule.spec
    if decode_device is None:
        decode_device = default_decode_device(spec)
    plan = plan or plan_transfers(schedule, decode_device)
    L = geometry.num_layers
    if spec.num_layers is not None and spec.num_layers != L and spec.placement == "layers":
        raise ConfigError("num_layers", f"`num_layers` {spec.num_layers} of the schedule does not match "
                                        f"{geometry.name}'s {L} layers")
    sizes = message_bytes(geometry.kv_bytes_per_layer(dtype_bytes), L, geometry.latent_bytes_per_block(dtype_bytes),
                          geometry.config.hidden_bytes_per_block(activation_bytes))
    n_dev = schedule.num_devices
    tpb = geometry.tokens_per_block
    prompts_at = _segment_starts(schedule)
    ring = spec.ring_size > 1 or schedule.custom_segments
    slices: dict[tuple[int, int, bool, bool], ModelSlice | None] = {}

    def part_of(first: int, end: int | None, r: int, w: int) -> ModelSlice | None:
        key = (first, L if end is None else end, r == 0, r == w - 1)
        got = slices.get(key, False)
        if got is False:
            got = None if key[:2] == (0, L) else geometry.config.layer_slice(key[0], key[1], entry=key[2], head=key[3])
            slices[key] = got
        return got  # type: ignore[return-value]

    # 1. Batches: the tasks (their segments, under placement layers) of each (tick, device), in one pass over
    #    the tasks. A batch's members are its tasks' forward inputs (Schedule.forward_inputs: a recache task
    #    has one per block it re-encodes), each attending to its own tokens plus the versions it reads.
    batch_at: dict[tuple[int, int], int] = {}
    tick_batches: list[list[int]] = [[] for _ in range(schedule.num_ticks)]
    device_batches: list[list[int]] = [[] for _ in range(n_dev + 1)]
    b_tick: list[int] = []
    b_dev: list[int] = []
    b_refs: list[list[KVRef]] = []
    b_ctx: list[list[int]] = []
    b_den: list[int] = []
    b_cache: list[int] = []
    b_part: list[ModelSlice | None] = []
    b_entered: list[int] = []
    denoise, recache = TaskKind.DENOISE, TaskKind.RECACHE
    whole = ((0, 0, None),)
    for t in schedule.tasks:
        kind = t.kind
        if kind == recache:
            inputs = schedule.forward_inputs(t)
            ctx = [tpb * (1 + len(x.reads)) for x in inputs]
            cache = len(inputs)
        else:
            ctx = [tpb * (1 + len(t.reads))]
            cache = 0 if kind == denoise else 1
        segs = schedule.segments(t) if ring else whole
        w = len(segs)
        for r, seg in enumerate(segs):
            dev = t.device if not ring else seg[0]
            key = (t.tick + r, dev)
            bi = batch_at.get(key)
            if bi is None:
                bi = batch_at[key] = len(b_tick)
                tick_batches[key[0]].append(bi)
                device_batches[dev].append(bi)
                b_tick.append(key[0])
                b_dev.append(dev)
                b_refs.append([])
                b_ctx.append([])
                b_den.append(0)
                b_cache.append(0)
                b_part.append(part_of(seg[1], seg[2], r, w) if ring else None)
                b_entered.append(t.tick)
            b_refs[bi].append((t.block, t.stage))
            b_ctx[bi].extend(ctx)
            b_cache[bi] += cache
            if kind == denoise and r == w - 1:
                b_den[bi] += 1
    if ring:  # segments beyond the first run at later ticks: put each device's batches in tick order
        for d in device_batches:
            d.sort(key=b_tick.__getitem__)

    # 2. Past sends, each with its first reader's batch.
    past: list[KVSend] = []
    past_tick: list[int] = []
    first_reader: dict[int, list[int]] = {}
    first_read = plan.first_read
    for tick, sends in enumerate(plan.past):
        for i, m in enumerate(sends, len(past)):
            reader = batch_at[(first_read[(m.dst, m.ref)], m.dst)]
            first_reader.setdefault(reader, []).append(i)
        past.extend(sends)
        past_tick.extend([tick] * len(sends))

    texts: list[TextJob] = []
    text_of: dict[int, int] = {}
    for p in prompts_at:
        t = schedule.task(p, 0)
        text_of[batch_at[(t.tick, t.device)]] = len(texts)
        texts.append(TextJob(p, t.tick, t.device))

    # 3. Gangs, one per tick and layer range (the devices of one range exchange among themselves), hops and
    #    latent messages, straight from the plan.
    gangs: dict[int, Gang] = {}
    gang_of: dict[int, int] = {}
    n_ticks = max(schedule.num_ticks, 1)
    position = {first: r for r, (first, _) in enumerate(spec.layer_ranges)}
    for tick, sends in enumerate(plan.gang):
        if not sends:
            continue
        by_range: dict[int, list[KVSend]] = {}
        for m in sends:
            by_range.setdefault(m.first_layer, []).append(m)
        for first, group in by_range.items():
            gkey = tick + n_ticks * position.get(first, 0)
            pairs: dict[tuple[int, int], int] = {}
            for m in group:
                ends = (m.src, m.dst)
                pairs[ends] = pairs.get(ends, 0) + 1
            end = group[0].end_layer
            devices = tuple(sorted(set(itertools.chain.from_iterable(pairs))))
            gangs[gkey] = Gang(tick, devices, pairs, 0 if end is None else end - first)
            for dev in devices:
                gang_of[batch_at[(tick, dev)]] = gkey
    hop_count: dict[tuple[int, int, int], int] = {}
    for tick, hop_sends in enumerate(plan.hops):
        for h in hop_sends:
            k3 = (tick, h.src, h.dst)
            hop_count[k3] = hop_count.get(k3, 0) + h.members
    hops: list[Hop] = []
    hop_in: dict[int, list[int]] = {}
    for (tick, src, dst), members in hop_count.items():
        hop_in.setdefault(batch_at[(tick + 1, dst)], []).append(len(hops))
        hops.append(Hop(tick, src, dst, members, batch_at[(tick, src)]))
    latents = tuple(LatentMessage(m.block, m.src, m.dst, tick, m.purpose)
                    for tick, sends in enumerate(plan.latents) for m in sends)

    fr_get, tx_get, g_get, h_get = first_reader.get, text_of.get, gang_of.get, hop_in.get
    batches = tuple(Batch(b_tick[bi], b_dev[bi], tuple(b_refs[bi]), tuple(b_ctx[bi]), b_den[bi], b_cache[bi],
                          tuple(fr_get(bi, ())), tx_get(bi, -1), b_part[bi], g_get(bi, -1), tuple(h_get(bi, ())),
                          b_entered[bi])
                    for bi in range(len(b_tick)))
    return Workload(
        schedule=schedule, geometry=geometry, plan=plan, batches=batches,
        device_batches=tuple(tuple(d) for d in device_batches), tick_batches=tuple(tuple(t) for t in tick_batches),
        batch_at=batch_at, gangs=gangs, past=tuple(past), past_tick=tuple(past_tick),
        past_bytes=2 * sizes.layers * sizes.past, latents=latents, texts=tuple(texts),
        decode_device=decode_device, layer_kv_bytes=sizes.gang, latent_bytes=sizes.latent, sizes=sizes,
        hops=tuple(hops),
    )


def _segment_starts(schedule: Schedule) -> list[int]:
    """The first block of every prompt segment: block 0 and each switch to another prompt."""
    spec, n = schedule.spec, schedule.num_blocks
    return [0, *sorted({at for at, _ in spec.switches if 0 < at < n and spec.prompt_of(at) != spec.prompt_of(at - 1)})]
