"""What a schedule asks of the hardware, before any costs: batches, dependencies and data movement.

:func:`build_workload` reads only the ``Schedule`` (tasks, ticks, devices, reads) and the model geometry;
it never re-derives which task runs where or what it reads. From the reads it derives:

- a *batch* per (tick, device): the device's tasks of that tick, run as one forward;
- the *dependencies* of a batch: the batches that produced its latent (stage s-1 of the same block) and
  every KV version it reads that was produced at an earlier tick;
- *transfers*: each KV version moves once to every other device that reads it (a committed block to
  every device whose tasks read it later; with ``stale`` attention, last tick's version); a latent moves
  when stage s-1 and stage s of a block run on different devices, and to the decoder;
- *exchanges*: a version read in the same tick by a task on another device (joint ``causal`` /
  ``bidirectional`` attention) is exchanged per layer inside that tick's gang. A device that got a
  version by exchange keeps it, so a later read there moves nothing again.

Prompt switches with policy ``recache``: a recache task ``(p, -1)`` is one member of its (tick, device)
batch, but its forward is one cache pass per block it re-encodes (what the executors' tick loop runs:
each re-encoded block's clean latent at t=0 under the new prompt, causal among them). It is costed as
that many forward members in the batch: the i-th re-encoded block (0-based, in ``Schedule.writes``
order) has ``tokens_per_block`` query tokens over ``tokens_per_block x (i + 1)`` context tokens (itself
and the earlier re-encoded blocks; nothing else). It depends on the batches that made the clean latents
it re-encodes (their last denoise stage) and, like any task, on the versions it reads (their committed
KV, which the core's transfer plan sends to its device). Each clean latent made on another device moves
to it (``cascade_sched.transfers.plan_transfers``' latent sends with purpose ``recache``). The
re-encoded versions ``(j, S + q)`` it writes are versions like any other: read later by block p and its
successors, moved once to every other device that reads them, held until their last read there.

Versions are indexed ``k = block * V + stage % V`` with ``V = S + len(switches) + 1``: stages ``0 .. S-1``,
re-encoded versions ``S + q``, and the recache task's own ref ``(p, -1)`` in the last slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from cascade_sched.errors import SimulationError
from cascade_sched.schedule import KVRef, Schedule, TaskKind
from cascade_sched.transfers import REENCODE, plan_transfers
from simulator.catalog import ModelGeometry

KV = "kv"
LATENT = "latent"


class Transfer(NamedTuple):
    """One asynchronous move of ``nbytes`` (a KV version or a latent) from ``src`` to ``dst``, sent by the
    batch ``producer`` as it computes."""

    kind: str
    ref: KVRef
    src: int
    dst: int
    nbytes: int
    producer: int


class Batch(NamedTuple):
    """The tasks one device runs at one tick, as one forward (indices into ``Workload.batches``)."""

    tick: int
    device: int
    refs: tuple[KVRef, ...]
    contexts: tuple[int, ...]  # per forward member, the tokens it attends to: a task's own plus every
    #                            version it reads; a recache task has one member per block it re-encodes
    n_denoise: int  # tasks followed by a sampler step
    deps: tuple[int, ...]  # producer batches at earlier ticks
    inputs: tuple[int, ...]  # transfers that must arrive first
    sends: tuple[int, ...]  # transfers this batch sends


@dataclass(frozen=True, slots=True)
class Workload:
    """Everything the engine needs that does not depend on costs or hardware."""

    schedule: Schedule
    geometry: ModelGeometry
    batches: tuple[Batch, ...]
    device_batches: tuple[tuple[int, ...], ...]  # per device, its batches in tick order
    tick_batches: tuple[tuple[int, ...], ...]  # per tick, its batches
    exchanges: tuple[tuple[tuple[int, int, int], ...], ...]  # per tick: (src, dst, bytes) of joint attention
    transfers: tuple[Transfer, ...]
    batch_index: list[int]  # version k = block * vstride + stage % vstride -> its batch
    decode_device: int  # the device that decodes (== num_devices for a decoder of its own)
    decode_inputs: tuple[int, ...]  # per block: the transfer of its latent to the decoder, or -1
    held: dict[int, int]  # (k * (num_devices + 1) + device) -> last tick a version read later is needed there
    exchange_in: tuple[int, ...]  # per batch: versions it receives by same-tick exchange
    kv_bytes: int  # one block's KV over all layers
    latent_bytes: int
    vstride: int  # V: version slots per block (see the module docstring)
    version_tick: tuple[int, ...]  # version k -> the tick that writes it

    def vindex(self, block: int, stage: int) -> int:
        """The index k of version (or task) ``(block, stage)``; stage -1 is a recache task."""
        return block * self.vstride + stage % self.vstride

    def version(self, k: int) -> KVRef:
        """The version ``(block, stage)`` of index k (the inverse of :meth:`vindex` for stage >= 0)."""
        j, v = divmod(k, self.vstride)
        return (j, v)

    def batch_of(self, block: int, stage: int) -> int:
        """The batch that runs task (block, stage) (stage -1: the block's recache task), or that writes
        the re-encoded version (block, S + q)."""
        return self.batch_index[self.vindex(block, stage)]

    def bytes_total(self) -> int:
        """Every byte the schedule moves between devices: transfers plus joint-attention exchanges."""
        return sum(t.nbytes for t in self.transfers) + sum(b for ex in self.exchanges for _, _, b in ex)


def build_workload(
    schedule: Schedule,
    geometry: ModelGeometry,
    decode_device: int | None = None,
    dtype_bytes: int = 2,
) -> Workload:
    """Derive batches, dependencies, transfers and exchanges from ``schedule`` (see the module docstring).

    ``decode_device=None`` decodes on a device of its own (index ``num_devices``).

    >>> from cascade_sched import CascadeSpec, build_schedule
    >>> from simulator.catalog import get_model
    >>> w = build_workload(build_schedule(CascadeSpec(num_blocks=2, lag=1, num_devices=2)), get_model("tiny"))
    >>> len(w.batches), [len(e) for e in w.exchanges][:3]
    (10, [0, 1, 1])
    """
    spec = schedule.spec
    n_dev = spec.num_devices
    dec = n_dev if decode_device is None else decode_device
    tpb = geometry.tokens_per_block
    kv_bytes = geometry.kv_bytes_per_block(dtype_bytes)
    latent_bytes = geometry.latent_bytes_per_block(dtype_bytes)
    K = spec.num_denoise

    # 1. Batches: the tasks of each (tick, device), in tick order. Versions are indexed k = b * V + s % V.
    S = schedule.num_stages
    V = S + len(spec.switches) + 1
    tasks = schedule.tasks
    dev = [0] * (schedule.num_blocks * V)
    bat = [0] * (schedule.num_blocks * V)
    members: list[list[int]] = []
    b_tick: list[int] = []
    b_dev: list[int] = []
    tick_batches: list[list[int]] = [[] for _ in range(schedule.num_ticks)]
    index: dict[int, int] = {}
    span = n_dev + 1
    kidx: dict[KVRef, int] = {}  # version -> k; the schedule interns its version tuples
    prod = [0] * (schedule.num_blocks * V)  # version k -> the tick that writes it
    writes: dict[int, tuple[KVRef, ...]] = {}  # task index of a recache task -> the versions it writes
    for i, t in enumerate(tasks):
        key = t.tick * span + t.device
        bi = index.get(key)
        if bi is None:
            bi = index[key] = len(members)
            members.append([])
            b_tick.append(t.tick)
            b_dev.append(t.device)
            tick_batches[t.tick].append(bi)
        members[bi].append(i)
        k = t.block * V + t.stage % V
        dev[k] = t.device
        bat[k] = bi
        prod[k] = t.tick
        kidx[(t.block, t.stage)] = k
        if t.kind == TaskKind.RECACHE:
            writes[i] = schedule.writes(t)
            for ref in writes[i]:
                kw = ref[0] * V + ref[1]
                dev[kw], bat[kw], prod[kw] = t.device, bi, t.tick
                kidx[ref] = kw
    # Clean latents to recache tasks on other devices: the core's transfer plan names them.
    reencode_in: set[tuple[int, int, int]] = set()  # (block, src, dst)
    if writes:
        for sends_n in plan_transfers(schedule).latents:
            reencode_in.update((ls.block, ls.src, ls.dst) for ls in sends_n if ls.purpose == REENCODE)

    # 2. Who reads what where. A (version, device) pair moves once: by exchange (a same-tick read) or by
    #    transfer (the first later read), keyed k * span + device.
    transfers: list[Transfer] = []
    exchanged: set[int] = set()
    held: dict[int, int] = {}
    exchange_in = [0] * len(members)
    moved: dict[int, int] = {}  # KV pairs; latents are keyed negative
    exchanges: list[list[tuple[int, int, int]]] = [[] for _ in range(schedule.num_ticks)]
    sends: list[list[int]] = [[] for _ in members]
    b_refs: list[tuple[KVRef, ...]] = []
    b_ctx: list[tuple[int, ...]] = []
    b_den: list[int] = []
    b_deps: list[tuple[int, ...]] = []
    b_inputs: list[tuple[int, ...]] = []

    def transfer(key: int, kind: str, ref: KVRef, src: int, dst: int, nbytes: int, pb: int) -> int:
        """The index of the one transfer keyed ``key`` (created, and sent after batch ``pb``, on first use)."""
        ti = moved.get(key)
        if ti is None:
            ti = moved[key] = len(transfers)
            transfers.append(Transfer(kind, ref, src, dst, nbytes, pb))
            sends[pb].append(ti)
        return ti

    for bi, group in enumerate(members):
        tick, device = b_tick[bi], b_dev[bi]
        deps: set[int] = set()
        inputs: list[int] = []
        contexts: list[int] = []
        refs: list[KVRef] = []
        n_den = 0
        for i in group:
            task = tasks[i]
            block, stage, kind, reads = task.block, task.stage, task.kind, task.reads
            refs.append((block, stage))
            # One forward member per model input: a task, or one cache pass per block a recache re-encodes.
            contexts.extend(tpb * (1 + len(x.reads)) for x in schedule.forward_inputs(task))
            if kind == TaskKind.RECACHE:
                for j, _ in task.replaces:  # its inputs: the clean latents (last denoise stage) it re-encodes
                    k = j * V + K - 1
                    pb = bat[k]
                    deps.add(pb)
                    src = dev[k]
                    if src == device:
                        continue
                    if (j, src, device) not in reencode_in:
                        raise SimulationError(f"the transfer plan sends no clean latent of block {j} to "
                                              f"d{device} for {tasks[i]}")
                    key = -(k * span + device) - 1 - len(bat) * span  # apart from the latent chain's keys
                    inputs.append(transfer(key, LATENT, (j, K - 1), src, device, latent_bytes, pb))
            if kind == TaskKind.DENOISE:
                n_den += 1
            if stage > 0:  # the latent chain
                k = block * V + stage - 1
                pb = bat[k]
                deps.add(pb)
                src = dev[k]
                if src != device:
                    key = -(k * span + device) - 1
                    inputs.append(transfer(key, LATENT, (block, stage - 1), src, device, latent_bytes, pb))
            for ref in reads:  # a recache task reads none: it computes from clean latents
                k = kidx[ref]
                src = dev[k]
                key = k * span + device
                if prod[k] == tick:  # a same-tick read: joint attention inside the gang
                    if src != device:
                        exchange_in[bi] += 1
                        if key not in exchanged:
                            exchanged.add(key)
                            exchanges[tick].append((src, device, kv_bytes))
                    continue
                held[key] = tick  # ticks only grow: the last assignment is the last read
                deps.add(bat[k])
                if src == device:
                    continue
                held[k * span + src] = tick
                if key in exchanged:
                    continue
                inputs.append(transfer(key, KV, ref, src, device, kv_bytes, bat[k]))
        b_refs.append(tuple(refs))
        b_ctx.append(tuple(contexts))
        b_den.append(n_den)
        b_deps.append(tuple(sorted(deps)))
        b_inputs.append(tuple(dict.fromkeys(inputs)) if len(inputs) > 1 else tuple(inputs))

    # 3. The decoder: block b's clean latent (its last denoise stage) moves to the decode device.
    decode_inputs: list[int] = []
    for b in range(schedule.num_blocks):
        k = b * V + K - 1
        src = dev[k]
        if src == dec:
            decode_inputs.append(-1)
            continue
        pb = bat[k]
        decode_inputs.append(len(transfers))
        sends[pb].append(len(transfers))
        transfers.append(Transfer(LATENT, (b, K - 1), src, dec, latent_bytes, pb))

    final = tuple(
        Batch(b_tick[i], b_dev[i], b_refs[i], b_ctx[i], b_den[i], b_deps[i], b_inputs[i], tuple(sends[i]))
        for i in range(len(members))
    )
    device_batches: list[list[int]] = [[] for _ in range(n_dev)]
    for i, d in enumerate(b_dev):
        device_batches[d].append(i)
    return Workload(
        schedule=schedule,
        geometry=geometry,
        batches=final,
        device_batches=tuple(tuple(d) for d in device_batches),
        tick_batches=tuple(tuple(t) for t in tick_batches),
        exchanges=tuple(tuple(e) for e in exchanges),
        transfers=tuple(transfers),
        batch_index=bat,
        held=held,
        exchange_in=tuple(exchange_in),
        decode_device=dec,
        decode_inputs=tuple(decode_inputs),
        kv_bytes=kv_bytes,
        latent_bytes=latent_bytes,
        vstride=V,
        version_tick=tuple(prod),
    )
