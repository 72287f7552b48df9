"""What a schedule asks of the hardware, before any costs: batches, messages and synchronisations.

:func:`build_workload` reads the ``Schedule`` (its tasks, their ticks and devices) and the core's
:class:`~cascade_sched.transfers.TransferPlan`, the very messages the distributed executor posts, and
re-derives nothing:

- a *batch* per (tick, device): the device's tasks of that tick, run as one forward; its members are
  ``Schedule.forward_inputs`` (a recache task has one cache pass per block it re-encodes), each attending
  to its own tokens plus the versions it reads;
- a *gang* per tick with gang sends: the devices that exchange K/V in that tick's forward, with the bytes
  each sends to and receives from each peer per layer (one message per version and layer);
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
import operator
from dataclasses import dataclass
from typing import NamedTuple

from cascade_sched.schedule import KVRef, Schedule, TaskKind
from cascade_sched.transfers import KVSend, TransferPlan, message_bytes, plan_transfers
from simulator.catalog import ModelGeometry

__all__ = ["Batch", "Gang", "LatentMessage", "TextJob", "Workload", "build_workload"]


class Batch(NamedTuple):
    """The tasks one device runs at one tick, as one forward."""

    tick: int
    device: int
    refs: tuple[KVRef, ...]  # the tasks' (block, stage); stage -1 is a recache task
    contexts: tuple[int, ...]  # per forward member, the tokens it attends to (own + read versions)
    n_denoise: int  # tasks followed by a sampler step
    n_cache: int  # forward members that are cache passes (cache tasks and recache members)
    kv_inputs: tuple[int, ...]  # past sends (indices into Workload.past) it is the first reader of
    text: int  # the text job it waits for (its batch holds a segment's first task), or -1


class Gang(NamedTuple):
    """One tick's per-layer K/V exchange: ``sends[(src, dst)]`` = messages per layer from src to dst."""

    tick: int
    devices: tuple[int, ...]
    sends: dict[tuple[int, int], int]


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
    gangs: dict[int, Gang]  # tick -> its exchange
    past: tuple[KVSend, ...]  # the plan's past sends, every tick's in order (all layers: 2 x layers messages)
    past_tick: tuple[int, ...]  # per past send, the tick after which it is posted
    past_bytes: int  # bytes of one past send (one version, all layers)
    latents: tuple[LatentMessage, ...]
    texts: tuple[TextJob, ...]
    decode_device: int  # == num_devices for a decoder GPU of its own
    layer_kv_bytes: int
    latent_bytes: int

    @property
    def num_devices(self) -> int:
        return self.schedule.num_devices

    def batch_of(self, block: int, stage: int) -> int:
        """The batch that runs task (block, stage)."""
        t = self.schedule.task(block, stage)
        return self.batch_at[(t.tick, t.device)]

    def bytes_total(self) -> int:
        """Every byte the schedule moves between devices."""
        return sum(self.bytes_by_kind().values())

    def bytes_by_kind(self) -> dict[str, int]:
        """Bytes per kind of message: ``exchange`` (gangs), ``kv`` (past sends), ``latent``."""
        layers = self.geometry.num_layers
        ex = sum(n for g in self.gangs.values() for n in g.sends.values()) * layers * self.layer_kv_bytes
        return {"kv": len(self.past) * self.past_bytes, "exchange": ex,
                "latent": len(self.latents) * self.latent_bytes}

    def bytes_by_link(self) -> dict[str, int]:
        """Bytes per (sender, receiver) pair, keyed ``d0->d1``."""
        pair = operator.itemgetter(1, 2)
        out: collections.Counter[tuple[int, int]] = collections.Counter()
        for counts, nbytes in (
            (collections.Counter(map(pair, itertools.chain.from_iterable(self.plan.gang))),
             self.geometry.num_layers * self.layer_kv_bytes),
            (collections.Counter(map(pair, self.past)), self.past_bytes),
            (collections.Counter((m.src, m.dst) for m in self.latents), self.latent_bytes),
        ):
            for key, n in counts.items():
                out[key] += n * nbytes
        return {f"d{s}->d{d}": out[(s, d)] for s, d in sorted(out)}


def build_workload(
    schedule: Schedule,
    geometry: ModelGeometry,
    decode_device: int = 0,
    dtype_bytes: int = 2,
    plan: TransferPlan | None = None,
) -> Workload:
    """Batches, gangs, messages and text jobs of ``schedule`` (see the module docstring).

    ``decode_device`` is a denoising device or ``num_devices`` (a decoder GPU of its own).

    >>> from cascade_sched import CascadeSpec, build_schedule
    >>> from simulator.catalog import get_model
    >>> w = build_workload(build_schedule(CascadeSpec(num_blocks=2, lag=1, num_devices=2)), get_model("tiny"))
    >>> len(w.batches), sorted(w.gangs), len(w.past)
    (10, [1, 2, 3, 4], 0)
    """
    plan = plan or plan_transfers(schedule, decode_device)
    sizes = message_bytes(geometry.kv_bytes_per_layer(dtype_bytes), geometry.num_layers,
                          geometry.latent_bytes_per_block(dtype_bytes))
    n_dev = schedule.num_devices
    tpb = geometry.tokens_per_block
    prompts_at = _segment_starts(schedule)

    # 1. Batches: the tasks of each (tick, device), in tick order, in one pass over the tasks. A batch's
    #    members are its tasks' forward inputs (Schedule.forward_inputs: a recache task has one per block
    #    it re-encodes), each attending to its own tokens plus the versions it reads.
    batch_at: dict[tuple[int, int], int] = {}
    tick_batches: list[list[int]] = [[] for _ in range(schedule.num_ticks)]
    device_batches: list[list[int]] = [[] for _ in range(n_dev + 1)]
    b_tick: list[int] = []
    b_dev: list[int] = []
    b_refs: list[list[KVRef]] = []
    b_ctx: list[list[int]] = []
    b_den: list[int] = []
    b_cache: list[int] = []
    denoise, recache = TaskKind.DENOISE, TaskKind.RECACHE
    for t in schedule.tasks:
        key = (t.tick, t.device)
        bi = batch_at.get(key)
        if bi is None:
            bi = batch_at[key] = len(b_tick)
            tick_batches[t.tick].append(bi)
            device_batches[t.device].append(bi)
            b_tick.append(t.tick)
            b_dev.append(t.device)
            b_refs.append([])
            b_ctx.append([])
            b_den.append(0)
            b_cache.append(0)
        b_refs[bi].append((t.block, t.stage))
        kind = t.kind
        if kind == denoise:
            b_ctx[bi].append(tpb * (1 + len(t.reads)))
            b_den[bi] += 1
        elif kind == recache:
            inputs = schedule.forward_inputs(t)
            b_ctx[bi].extend(tpb * (1 + len(x.reads)) for x in inputs)
            b_cache[bi] += len(inputs)
        else:
            b_ctx[bi].append(tpb * (1 + len(t.reads)))
            b_cache[bi] += 1

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

    fr_get, tx_get = first_reader.get, text_of.get
    batches = tuple(Batch(b_tick[bi], b_dev[bi], tuple(b_refs[bi]), tuple(b_ctx[bi]), b_den[bi], b_cache[bi],
                          tuple(fr_get(bi, ())), tx_get(bi, -1)) for bi in range(len(b_tick)))

    # 3. Gangs and latent messages, straight from the plan.
    gangs: dict[int, Gang] = {}
    pair_of = operator.itemgetter(1, 2)  # (src, dst) of a KVSend
    for tick, sends in enumerate(plan.gang):
        if sends:
            pairs = dict(collections.Counter(map(pair_of, sends)))
            gangs[tick] = Gang(tick, tuple(sorted(set(itertools.chain.from_iterable(pairs)))), pairs)
    latents = tuple(LatentMessage(m.block, m.src, m.dst, tick, m.purpose)
                    for tick, sends in enumerate(plan.latents) for m in sends)
    return Workload(
        schedule=schedule, geometry=geometry, plan=plan, batches=batches,
        device_batches=tuple(tuple(d) for d in device_batches), tick_batches=tuple(tuple(t) for t in tick_batches),
        batch_at=batch_at, gangs=gangs, past=tuple(past), past_tick=tuple(past_tick),
        past_bytes=2 * sizes.layers * sizes.past, latents=latents, texts=tuple(texts),
        decode_device=decode_device, layer_kv_bytes=sizes.gang, latent_bytes=sizes.latent,
    )


def _segment_starts(schedule: Schedule) -> list[int]:
    """The first block of every prompt segment: block 0 and each switch to another prompt."""
    spec, n = schedule.spec, schedule.num_blocks
    return [0, *sorted({at for at, _ in spec.switches if 0 < at < n and spec.prompt_of(at) != spec.prompt_of(at - 1)})]
