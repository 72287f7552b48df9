"""The distributed executor: device d of the schedule runs on rank d, K/V moves with torch.distributed.

Messages are exactly those of :func:`cascade_sched.transfers.plan_transfers`, posted point to point in
its canonical order on both ends (NCCL matches by order, not tag):

- joint attention: per layer, inside the tick's forward, each same-tick version goes to the ranks whose
  tasks read it (``batch_isend_irecv``, completed before attention of that layer); a rank that reads the
  version again at a later tick keeps every layer it received (the plan sends it no second time);
- past K/V (committed KV, or last tick's version under ``stale``): sent once after the producing tick,
  per layer; the receiver waits for a layer only when a task first reads it, so the transfer overlaps
  the computation in between (for ``stale`` that is the next tick's earlier layers);
- latents: to the next stage's rank, and clean latents to the decode rank (0).

A run may switch schedules while it goes (a served stream's prompt switches, or its early end): rank 0's
extend hook decides after each tick and :class:`AgreedExtension` broadcasts its answer on a gloo control
group, so every rank adopts the same schedule after the same tick. What the new schedule needs from ticks
already run is moved then (:meth:`DistributedTransport.adopted`): the clean latents a new recache task
re-encodes come from the decode rank, which holds every finished block. An extension that would need K/V
already sent elsewhere (a schedule that grows on N ranks) is refused with one ``ExecutorError``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor

from cascade_sched.errors import ExecutorError
from cascade_sched.schedule import KVRef, Schedule, TaskKind, build_schedule
from cascade_sched.spec import CascadeSpec
from cascade_sched.trace import COMM, TraceEvent, exchange_name, transfer_name
from cascade_sched.transfers import REENCODE, TransferPlan
from executors.base import BlockCallback, ExtendHook, RunOptions, RunResult, TickLoop
from models.dit import CausalWanDiT, KVPair

if TYPE_CHECKING:
    from collections.abc import Sequence


class DistributedTransport:
    """Point-to-point K/V and latent traffic of one rank (gloo on CPU, NCCL on GPU)."""

    def __init__(self, rank: int, model: CausalWanDiT, device: torch.device, timeout_s: float) -> None:
        cfg = model.config
        self.rank, self.device, self.dtype = rank, device, model.dtype
        self.kv_shape = (cfg.tokens_per_block, cfg.num_heads, cfg.head_dim)
        self.timeout = timedelta(seconds=timeout_s)
        self.pending_kv: dict[tuple[KVRef, int], list[Any]] = {}
        self.pending_send: list[Any] = []
        self.events: list[TraceEvent] = []
        self.gang_kept: dict[KVRef, list[KVPair]] = {}  # versions received in a gang and read again later

    def _post(self, ops: list[dist.P2POp]) -> list[Any]:
        return list(dist.batch_isend_irecv(ops)) if ops else []

    def _wait(self, works: Sequence[Any]) -> None:
        for w in works:
            w.wait(self.timeout)

    def exchange(self, tick: int, layer: int, local: dict[KVRef, KVPair]) -> dict[KVRef, KVPair]:
        loop = self.loop
        ops: list[dist.P2POp] = []
        received: dict[KVRef, Tensor] = {}
        for m in loop.plan.gang_sends(tick):
            if m.src == self.rank:
                k, v = local[m.ref]
                ops.append(dist.P2POp(dist.isend, torch.stack((k, v)), m.dst))
            elif m.dst == self.rank and m.ref not in received:
                received[m.ref] = torch.empty((2, *self.kv_shape), dtype=self.dtype, device=self.device)
                ops.append(dist.P2POp(dist.irecv, received[m.ref], m.src))
        if not ops:
            return {}
        start = loop.now()
        self._wait(self._post(ops))
        self._record(exchange_name(tick), tick, start, loop.now() - start)
        peers = {ref: (buf[0], buf[1]) for ref, buf in received.items()}
        last = layer + 1 == len(loop.model.blocks)
        for ref, kv in peers.items():
            if (self.rank, ref) in loop.plan.kept_from_gang:
                layers = self.gang_kept.setdefault(ref, [])
                layers.append(kv)
                if last:
                    loop.pool.commit(ref, self.gang_kept.pop(ref), free_after_tick=loop.keep[ref])
        return peers

    def after_tick(self, tick: int, loop: TickLoop) -> None:
        ops: list[dist.P2POp] = []
        kv_recv: list[tuple[KVRef, int]] = []
        n_layers = len(loop.model.blocks)
        for m in loop.plan.past_sends(tick):
            if m.src == self.rank:
                for k, v in loop.kv_out[m.ref]:
                    ops.append(dist.P2POp(dist.isend, k.contiguous(), m.dst))
                    ops.append(dist.P2POp(dist.isend, v.contiguous(), m.dst))
            elif m.dst == self.rank:
                layers = []
                for layer in range(n_layers):
                    k = torch.empty(self.kv_shape, dtype=self.dtype, device=self.device)
                    v = torch.empty(self.kv_shape, dtype=self.dtype, device=self.device)
                    ops.append(dist.P2POp(dist.irecv, k, m.src))
                    ops.append(dist.P2POp(dist.irecv, v, m.src))
                    layers.append((k, v))
                    kv_recv.append((m.ref, layer))
                loop.pool.commit(m.ref, layers, free_after_tick=loop.keep[m.ref])
        n_kv = len(ops)
        latents: list[tuple[int, str, Tensor]] = []
        for ls in loop.plan.latent_sends(tick):
            if ls.src == self.rank:
                ops.append(dist.P2POp(dist.isend, loop.outgoing[(ls.block, ls.purpose)].contiguous(), ls.dst))
            elif ls.dst == self.rank:
                buf = torch.empty(loop.shape, dtype=loop.latent_dtype, device=self.device)
                ops.append(dist.P2POp(dist.irecv, buf, ls.src))
                latents.append((ls.block, ls.purpose, buf))
        if not ops:
            return
        start = loop.now()
        works = self._post(ops)
        if len(works) != len(ops):  # a coalesced backend returns one handle for the batch: wait for it all
            self._wait(works)
        else:
            recv_i = 0
            for i, op in enumerate(ops[:n_kv]):
                if op.op is dist.irecv:
                    self.pending_kv.setdefault(kv_recv[recv_i // 2], []).append(works[i])
                    recv_i += 1
                else:
                    self.pending_send.append(works[i])
            latent_works = works[n_kv:]
            self._wait(latent_works)  # latents are needed at the next tick: small, wait now
        for block, purpose, buf in latents:
            loop.receive_latent(block, purpose, buf)
        self.pending_send = [w for w in self.pending_send if not w.is_completed()]
        self._record(transfer_name(tick), tick, start, loop.now() - start)

    def _record(self, name: str, tick: int, start: float, duration: float) -> None:
        """One comm event per tick and kind: per-layer exchanges of a tick merge into one slice."""
        last = self.events[-1] if self.events else None
        if last is not None and last.name == name:
            self.events[-1] = TraceEvent(name, self.rank, COMM, last.start_s, start + duration - last.start_s,
                                         {"tick": tick, "busy_s": last.args["busy_s"] + duration})
        else:
            self.events.append(TraceEvent(name, self.rank, COMM, start, duration, {"tick": tick, "busy_s": duration}))

    def wait_kv(self, ref: KVRef, layer: int) -> None:
        works = self.pending_kv.pop((ref, layer), None)
        if works:
            self._wait(works)

    def finish(self) -> None:
        for works in self.pending_kv.values():
            self._wait(works)
        self.pending_kv.clear()
        self._wait(self.pending_send)
        self.pending_send.clear()

    def adopted(self, tick: int, old: TransferPlan, loop: TickLoop) -> None:
        for t in range(tick + 1):
            missed = set(loop.plan.past_sends(t)) - set(old.past_sends(t))
            if missed:
                m = min(missed, key=lambda m: (m.ref, m.src, m.dst))
                raise ExecutorError(
                    f"the schedule adopted after tick {tick} needs version {m.ref} on rank {m.dst}, which was "
                    f"sent at tick {t} only where the old schedule read it; on N ranks a running schedule may "
                    "switch prompts and end early, not grow"
                )
        # A recache task added now re-encodes blocks whose clean latents were made (and sent only to the
        # decode rank) before it existed: the decode rank sends them again, in one canonical order.
        decode, k = loop.plan.decode_device, loop.schedule.spec.num_denoise
        ops: list[dist.P2POp] = []
        received: list[tuple[int, Tensor]] = []
        for task in loop.schedule.tasks:
            if task.kind != TaskKind.RECACHE or task.tick <= tick or task.device == decode:
                continue
            for j in sorted({j for j, _ in task.replaces}):
                if loop.schedule.starts[j] + k - 1 > tick:  # still to be made: the plan sends it
                    continue
                if self.rank == decode:
                    ops.append(dist.P2POp(dist.isend, loop.latents_out[j].to(self.device).contiguous(), task.device))
                elif self.rank == task.device:
                    buf = torch.empty(loop.shape, dtype=loop.latent_dtype, device=self.device)
                    ops.append(dist.P2POp(dist.irecv, buf, decode))
                    received.append((j, buf))
        self._wait(self._post(ops))
        for j, buf in received:
            loop.receive_latent(j, REENCODE, buf)

    loop: TickLoop  # set by DistributedExecutor before the run


class AgreedExtension:
    """The extend hook of every rank of a distributed run: rank 0's ``hook`` decides after each tick and
    its answer is broadcast, with the prompt texts rank 0 added to its ``RunOptions.prompts``, so every
    rank adopts the same schedule after the same tick (the other ranks rebuild it from its spec).

    One small broadcast per tick on ``group`` (a gloo group, so NCCL runs move no Python objects on the
    GPU stream). Rank 0's hook may block (a served stream waits for its display there); the others wait
    in the broadcast, within the group's timeout.
    """

    def __init__(self, hook: ExtendHook | None, options: RunOptions, rank: int, group: Any) -> None:
        if rank == 0 and hook is None:
            raise ExecutorError("rank 0 of an extendable distributed run needs the extend hook")
        self.hook, self.options, self.rank, self.group = hook, options, rank, group
        self.sent = dict(options.prompts)

    def __call__(self, tick: int, schedule: Schedule) -> Schedule | None:
        msg: list[Any] = [None]
        new: Schedule | None = None
        if self.rank == 0:
            assert self.hook is not None
            new = self.hook(tick, schedule)
            added = {pid: text for pid, text in self.options.prompts.items() if self.sent.get(pid) != text}
            self.sent.update(added)
            if new is not None or added:
                msg = [(None if new is None else new.spec.to_dict(), added)]
        dist.broadcast_object_list(msg, src=0, group=self.group)
        if self.rank == 0 or msg[0] is None:
            return new
        spec, added = msg[0]
        self.options.prompts.update(added)
        return None if spec is None else build_schedule(CascadeSpec.from_dict(spec))


class DistributedExecutor:
    """Runs this rank's share of a schedule inside an initialised default process group.

    The world size must equal the schedule's device count (device d runs on rank d). Only the decode
    rank (0) returns latents; the others return their timings and trace events.
    """

    name = "distributed"
    loop: TickLoop | None = None  # this rank's loop while a run goes on (a server reads its K/V pool)

    def run(
        self,
        schedule: Schedule,
        model: CausalWanDiT,
        options: RunOptions,
        on_block: BlockCallback | None = None,
        extend: ExtendHook | None = None,
        extendable: bool = False,
    ) -> RunResult:
        """Run this rank's share. A run that may switch schedules while it goes passes ``extendable``
        on every rank and rank 0's ``extend`` hook (see :class:`AgreedExtension`)."""
        if not dist.is_initialized():
            raise ExecutorError("the distributed executor needs an initialised process group (use launch.py)")
        rank, world = dist.get_rank(), dist.get_world_size()
        if world != schedule.num_devices:
            raise ExecutorError(
                f"world size {world} does not match the schedule's {schedule.num_devices} devices "
                f"(`--devices` and `--nproc` must agree)"
            )
        transport = DistributedTransport(rank, model, model.device, options.timeout_s)
        group = dist.new_group(backend="gloo", timeout=timedelta(seconds=options.timeout_s)) if extendable else None
        agreed = AgreedExtension(extend, options, rank, group) if extendable else None
        try:
            loop = TickLoop(schedule, model, options, [rank], transport, on_block if rank == 0 else None,
                            rank=rank, extend=agreed)
            transport.loop = self.loop = loop
            result = loop.run()
        finally:
            self.loop = None
            if group is not None:
                dist.destroy_process_group(group)
        result.events.extend(transport.events)
        return result
