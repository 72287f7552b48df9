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
"""

from __future__ import annotations

from dataclasses import dataclass

from cascade_sched.schedule import KVRef, Schedule
from simulator.catalog import ModelGeometry

KV = "kv"
LATENT = "latent"


@dataclass(frozen=True, slots=True)
class Transfer:
    """One asynchronous move of ``nbytes`` (a KV version or a latent) from ``src`` to ``dst``, sent by the
    batch ``producer`` as it computes."""

    kind: str
    ref: KVRef
    src: int
    dst: int
    nbytes: int
    producer: int


@dataclass(frozen=True, slots=True)
class Batch:
    """The tasks one device runs at one tick, as one forward (indices into ``Workload.batches``)."""

    tick: int
    device: int
    refs: tuple[KVRef, ...]
    contexts: tuple[int, ...]  # tokens each task attends to: its own plus every version it reads
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
    batch_of: dict[KVRef, int]
    decode_device: int  # the device that decodes (== num_devices for a decoder of its own)
    decode_inputs: tuple[int, ...]  # per block: the transfer of its latent to the decoder, or -1
    kv_bytes: int  # one block's KV over all layers
    latent_bytes: int

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
    (9, [0, 1, 1])
    """
    spec = schedule.spec
    n_dev = spec.num_devices
    dec = n_dev if decode_device is None else decode_device
    tpb = geometry.tokens_per_block
    kv_bytes = geometry.kv_bytes_per_block(dtype_bytes)
    latent_bytes = geometry.latent_bytes_per_block(dtype_bytes)
    starts = schedule.starts
    K = spec.num_denoise
    denoise = "denoise"

    # 1. Batches: the tasks of each (tick, device), in tick order.
    batch_of: dict[KVRef, int] = {}
    device_of: dict[KVRef, int] = {}
    groups: list[tuple[int, int, list[int]]] = []
    tick_batches: list[list[int]] = [[] for _ in range(schedule.num_ticks)]
    index: dict[tuple[int, int], int] = {}
    tasks = schedule.tasks
    for i, t in enumerate(tasks):
        key = (t.tick, t.device)
        bi = index.get(key)
        if bi is None:
            bi = index[key] = len(groups)
            groups.append((t.tick, t.device, []))
            tick_batches[t.tick].append(bi)
        groups[bi][2].append(i)
        batch_of[(t.block, t.stage)] = bi
        device_of[(t.block, t.stage)] = t.device

    # 2. Who reads what where: first tick each (version, device) pair is needed.
    transfers: list[Transfer] = []
    exchanged: set[tuple[KVRef, int]] = set()
    moved: dict[tuple[str, KVRef, int], int] = {}
    exchanges: list[list[tuple[int, int, int]]] = [[] for _ in range(schedule.num_ticks)]
    sends: list[list[int]] = [[] for _ in groups]
    batches: list[Batch] = []
    for bi, (tick, device, members) in enumerate(groups):
        deps: set[int] = set()
        inputs: list[int] = []
        contexts: list[int] = []
        n_den = 0
        refs: list[KVRef] = []
        for i in members:
            t = tasks[i]
            refs.append((t.block, t.stage))
            contexts.append(tpb * (1 + len(t.reads)))
            if t.kind == denoise:
                n_den += 1
            needs: list[tuple[str, KVRef]] = [(KV, r) for r in t.reads]
            if t.stage > 0:
                needs.append((LATENT, (t.block, t.stage - 1)))
            for kind, ref in needs:
                src = device_of[ref]
                produced = starts[ref[0]] + ref[1]
                if produced == tick:  # a same-tick read: joint attention inside the gang
                    if src != device and (ref, device) not in exchanged:
                        exchanged.add((ref, device))
                        exchanges[tick].append((src, device, kv_bytes))
                    continue
                pb = batch_of[ref]
                deps.add(pb)
                if src == device or (kind == KV and (ref, device) in exchanged):
                    continue
                key = (kind, ref, device)
                ti = moved.get(key)
                if ti is None:
                    ti = moved[key] = len(transfers)
                    transfers.append(Transfer(kind, ref, src, device, kv_bytes if kind == KV else latent_bytes, pb))
                    sends[pb].append(ti)
                inputs.append(ti)
        batches.append(Batch(tick, device, tuple(refs), tuple(contexts), n_den, tuple(sorted(deps)),
                             tuple(dict.fromkeys(inputs)), ()))

    # 3. The decoder: block b's clean latent (its last denoise stage) moves to the decode device.
    decode_inputs: list[int] = []
    for b in range(schedule.num_blocks):
        ref = (b, K - 1)
        src = device_of[ref]
        if src == dec:
            decode_inputs.append(-1)
            continue
        pb = batch_of[ref]
        decode_inputs.append(len(transfers))
        sends[pb].append(len(transfers))
        transfers.append(Transfer(LATENT, ref, src, dec, latent_bytes, pb))

    final = tuple(
        Batch(b.tick, b.device, b.refs, b.contexts, b.n_denoise, b.deps, b.inputs, tuple(sends[i]))
        for i, b in enumerate(batches)
    )
    device_batches: list[list[int]] = [[] for _ in range(n_dev)]
    for i, b in enumerate(final):
        device_batches[b.device].append(i)
    return Workload(
        schedule=schedule,
        geometry=geometry,
        batches=final,
        device_batches=tuple(tuple(d) for d in device_batches),
        tick_batches=tuple(tuple(t) for t in tick_batches),
        exchanges=tuple(tuple(e) for e in exchanges),
        transfers=tuple(transfers),
        batch_of=batch_of,
        decode_device=dec,
        decode_inputs=tuple(decode_inputs),
        kv_bytes=kv_bytes,
        latent_bytes=latent_bytes,
    )
