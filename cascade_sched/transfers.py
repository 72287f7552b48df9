"""What moves between devices, derived from a schedule's placement and reads (a pure transformation).

Executors post exactly these messages and the simulator costs exactly these bytes, so neither
re-derives communication on its own. Three kinds of traffic:

- *gang* K/V: a version produced at tick n and read at the same tick by a task on another device
  (joint attention; exchanged per layer inside the tick's forward);
- *past* K/V: a version produced at tick n and read at a later tick by a task on another device
  (committed KV, a re-encoded version written by a recache task, or last tick's version under
  ``stale`` attention); sent once, after tick n;
- *latents*: a block's latent moving to the device of its next stage, and each clean latent to the
  decode device when its last denoise stage ends.
"""

from __future__ import annotations

from dataclasses import dataclass

from cascade_sched.schedule import KVRef, Schedule, TaskKind


@dataclass(frozen=True)
class KVSend:
    """Send version ``ref``'s K/V (all layers) from device ``src`` to device ``dst``."""

    ref: KVRef
    src: int
    dst: int


NEXT, DECODE, REENCODE = "next", "decode", "recache"


@dataclass(frozen=True)
class LatentSend:
    """Send block ``block``'s latent from ``src`` to ``dst``.

    ``purpose`` ``next``: the input of its stage ``stage`` on another device; ``decode``: its clean latent
    to the decode device; ``recache``: its clean latent to the device of a recache task that re-encodes it.
    """

    block: int
    stage: int
    src: int
    dst: int
    purpose: str = NEXT


@dataclass(frozen=True)
class TransferPlan:
    """Every message a run of the schedule sends, indexed by the tick that produces it.

    ``keep_until[(device, ref)]`` is the last tick at which a task on ``device`` reads the past version
    ``ref``; after it the device may free that version. Every list is in a canonical order (by ref, then
    devices), which both ends of a link follow, so point-to-point messages match by order (NCCL).
    """

    gang: tuple[tuple[KVSend, ...], ...]
    past: tuple[tuple[KVSend, ...], ...]
    latents: tuple[tuple[LatentSend, ...], ...]
    keep_until: dict[tuple[int, KVRef], int]
    decode_device: int

    def gang_sends(self, tick: int) -> tuple[KVSend, ...]:
        return self.gang[tick]

    def past_sends(self, tick: int) -> tuple[KVSend, ...]:
        return self.past[tick]

    def latent_sends(self, tick: int) -> tuple[LatentSend, ...]:
        return self.latents[tick]


def plan_transfers(schedule: Schedule, decode_device: int = 0) -> TransferPlan:
    """Derive the :class:`TransferPlan` of ``schedule`` (clean latents go to ``decode_device``).

    >>> from cascade_sched import CascadeSpec, build_schedule
    >>> p = plan_transfers(build_schedule(CascadeSpec(num_blocks=2, lag=1, num_devices=2)))
    >>> p.gang_sends(1)  # block 1's first stage reads block 0's same-tick version, on another device
    (KVSend(ref=(0, 1), src=0, dst=1),)
    """
    n_ticks = schedule.num_ticks
    device_of = {ref: t.device for t in schedule.tasks for ref in schedule.writes(t)}
    gang: list[set[KVSend]] = [set() for _ in range(n_ticks)]
    past: list[set[KVSend]] = [set() for _ in range(n_ticks)]
    keep_until: dict[tuple[int, KVRef], int] = {}
    for t in schedule.tasks:  # a recache task reads no K/V: it re-encodes clean latents (sent below)
        for ref in t.reads:
            produced = schedule.version_tick(ref)
            src = device_of[ref]
            if produced == t.tick:
                if src != t.device:
                    gang[produced].add(KVSend(ref, src, t.device))
                continue
            key = (t.device, ref)
            if keep_until.get(key, -1) < t.tick:
                keep_until[key] = t.tick
            if src != t.device:
                past[produced].add(KVSend(ref, src, t.device))
    latents: list[list[LatentSend]] = [[] for _ in range(n_ticks)]
    k = schedule.spec.num_denoise
    reencoders: dict[int, set[int]] = {}  # block -> devices of recache tasks that need its clean latent
    for t in schedule.tasks:
        for j, _ in t.replaces:
            reencoders.setdefault(j, set()).add(t.device)
    for t in schedule.tasks:
        if t.kind == TaskKind.RECACHE:  # its inputs are other blocks' clean latents; it sends none
            continue
        if t.stage + 1 < schedule.num_stages:
            nxt = device_of[(t.block, t.stage + 1)]
            if nxt != t.device:
                latents[t.tick].append(LatentSend(t.block, t.stage + 1, t.device, nxt))
        if t.stage == k - 1:
            if t.device != decode_device:
                latents[t.tick].append(LatentSend(t.block, k - 1, t.device, decode_device, DECODE))
            for dst in sorted(reencoders.get(t.block, ())):
                if dst != t.device:
                    latents[t.tick].append(LatentSend(t.block, k - 1, t.device, dst, REENCODE))

    def order(sends: set[KVSend]) -> tuple[KVSend, ...]:
        return tuple(sorted(sends, key=lambda m: (m.ref, m.src, m.dst)))

    return TransferPlan(
        gang=tuple(order(g) for g in gang),
        past=tuple(order(p) for p in past),
        latents=tuple(tuple(sorted(x, key=lambda m: (m.block, m.stage, m.purpose, m.dst))) for x in latents),
        keep_until=keep_until,
        decode_device=decode_device,
    )
