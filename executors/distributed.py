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
already run is moved then (the tick loop posts it): the clean latents a new recache task re-encodes come
from the decode rank, which holds every finished block. An extension that would need K/V already sent
elsewhere (a schedule that grows on N ranks) is refused with one ``ExecutorError``
(:meth:`DistributedTransport.check_adopt`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from cascade_sched.errors import ExecutorError
from cascade_sched.schedule import KVRef, Schedule, build_schedule
from cascade_sched.trace import COMM, TraceEvent, exchange_name, transfer_name
from cascade_sched.transfers import KVSend, LatentSend
from executors.base import BlockCallback, ExtendHook, RunOptions, RunResult, TickLoop
from executors.transport import Mail
from models.dit import CausalWanDiT, KVPair, TickKernels
from models.sampler import latent_dtype


class DistributedTransport:
    """Point-to-point K/V and latent traffic of one rank (gloo on CPU, NCCL on GPU): a
    :class:`~executors.transport.Transport`."""

    def __init__(self, rank: int, model: CausalWanDiT, timeout_s: float) -> None:
        cfg = model.config
        self.rank, self.device, self.dtype = rank, model.device, model.dtype
        self.kv_shape = (cfg.tokens_per_block, cfg.num_heads, cfg.head_dim)
        self.latent_shape, self.latent_dtype = cfg.latent_shape(), latent_dtype(model.dtype)
        self.layers = cfg.num_layers
        self.timeout = timedelta(seconds=timeout_s)
        self.pending_kv: dict[tuple[KVRef, int], list[Any]] = {}
        self.pending_send: list[Any] = []
        self._events: list[tuple[str, int, float, float, float]] = []  # (name, tick, start, end, busy) perf_counter

    def _post(self, ops: list[dist.P2POp]) -> list[Any]:
        return list(dist.batch_isend_irecv(ops)) if ops else []

    def _wait(self, works: Sequence[Any]) -> None:
        for w in works:
            w.wait(self.timeout)

    def exchange(self, tick: int, layer: int, sends: Sequence[KVSend],
                 local: Mapping[KVRef, KVPair]) -> dict[KVRef, KVPair]:
        ops: list[dist.P2POp] = []
        received: dict[KVRef, Tensor] = {}
        for m in sends:
            if m.src == self.rank:
                k, v = local[m.ref]
                ops.append(dist.P2POp(dist.isend, torch.stack((k, v)), m.dst))
            elif m.dst == self.rank and m.ref not in received:
                received[m.ref] = torch.empty((2, *self.kv_shape), dtype=self.dtype, device=self.device)
                ops.append(dist.P2POp(dist.irecv, received[m.ref], m.src))
        if not ops:
            return {}
        start = time.perf_counter()
        self._wait(self._post(ops))
        self._record(exchange_name(tick), tick, start)
        return {ref: (buf[0], buf[1]) for ref, buf in received.items()}

    def post(self, tick: int, kv: Sequence[KVSend], latents: Sequence[LatentSend], outbox: Mail) -> Mail:
        inbox = Mail()
        ops: list[dist.P2POp] = []
        kv_recv: list[tuple[KVRef, int]] = []
        for m in kv:
            if m.src == self.rank:
                for k, v in outbox.kv[m.ref]:
                    ops.append(dist.P2POp(dist.isend, k.contiguous(), m.dst))
                    ops.append(dist.P2POp(dist.isend, v.contiguous(), m.dst))
            elif m.dst == self.rank:
                layers = []
                for layer in range(self.layers):
                    k = torch.empty(self.kv_shape, dtype=self.dtype, device=self.device)
                    v = torch.empty(self.kv_shape, dtype=self.dtype, device=self.device)
                    ops.append(dist.P2POp(dist.irecv, k, m.src))
                    ops.append(dist.P2POp(dist.irecv, v, m.src))
                    layers.append((k, v))
                    kv_recv.append((m.ref, layer))
                inbox.kv[m.ref] = layers
        n_kv = len(ops)
        received: list[tuple[int, str, Tensor]] = []
        for ls in latents:
            if ls.src == self.rank:
                x = outbox.latents[(ls.block, ls.purpose)].to(self.device).contiguous()
                ops.append(dist.P2POp(dist.isend, x, ls.dst))
            elif ls.dst == self.rank:
                buf = torch.empty(self.latent_shape, dtype=self.latent_dtype, device=self.device)
                ops.append(dist.P2POp(dist.irecv, buf, ls.src))
                received.append((ls.block, ls.purpose, buf))
        if not ops:
            return inbox
        start = time.perf_counter()
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
            self._wait(works[n_kv:])  # latents are needed at the next tick: small, wait now
        for block, purpose, buf in received:
            inbox.latents[(block, purpose)] = buf
        self.pending_send = [w for w in self.pending_send if not w.is_completed()]
        self._record(transfer_name(tick), tick, start)
        return inbox

    def _record(self, name: str, tick: int, start: float) -> None:
        """One comm event per tick and kind: per-layer exchanges of a tick merge into one slice."""
        end = time.perf_counter()
        last = self._events[-1] if self._events else None
        if last is not None and last[0] == name:
            self._events[-1] = (name, tick, last[2], end, last[4] + end - start)
        else:
            self._events.append((name, tick, start, end, end - start))

    def events(self, t0: float) -> list[TraceEvent]:
        return [TraceEvent(name, self.rank, COMM, start - t0, end - start, {"tick": tick, "busy_s": busy})
                for name, tick, start, end, busy in self._events]

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

    def check_adopt(self, tick: int, sent: Sequence[Sequence[KVSend]], needed: Sequence[Sequence[KVSend]]) -> None:
        for t, (was, now) in enumerate(zip(sent, needed, strict=True)):
            missed = set(now) - set(was)
            if missed:
                m = min(missed, key=lambda m: (m.ref, m.src, m.dst))
                raise ExecutorError(
                    f"the schedule adopted after tick {tick} needs version {m.ref} on rank {m.dst}, which was "
                    f"sent at tick {t} only where the old schedule read it; on N ranks a running schedule may "
                    "switch prompts and end early, not grow"
                )


class AgreedExtension:
    """The extend hook of every rank of a distributed run: rank 0's ``hook`` decides after each tick and
    its answer is broadcast, with the prompt texts rank 0 added to its ``RunOptions.prompts``, so every
    rank adopts the same schedule after the same tick (the other ranks build it from its spec).

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
        if self.rank == 0 and self.hook is not None:
            new = self.hook(tick, schedule)
            added = {pid: text for pid, text in self.options.prompts.items() if self.sent.get(pid) != text}
            self.sent.update(added)
            if new is not None or added:
                msg = [(None if new is None else new.spec, added)]
        dist.broadcast_object_list(msg, src=0, group=self.group)
        if self.rank == 0 or msg[0] is None:
            return new
        spec, added = msg[0]
        self.options.prompts.update(added)
        return None if spec is None else build_schedule(spec)


class DistributedExecutor:
    """Runs this rank's share of a schedule inside an initialised default process group.

    The world size must equal the schedule's device count (device d runs on rank d). Only the decode
    rank (0) returns latents; the others return their timings and trace events. A run that may switch
    schedules while it goes is ``extendable`` on every rank, and rank 0 passes the ``extend`` hook (see
    :class:`AgreedExtension`); ``kernels`` run the model's tick forward (None: its own modules).
    """

    name = "distributed"

    def __init__(self, extendable: bool = False, kernels: TickKernels | None = None) -> None:
        self.extendable, self.kernels = extendable, kernels
        self.loop: TickLoop | None = None  # this rank's loop while a run goes on (a server reads its K/V pool)

    def run(self, schedule: Schedule, model: CausalWanDiT, options: RunOptions,
            on_block: BlockCallback | None = None, extend: ExtendHook | None = None) -> RunResult:
        """Run this rank's share."""
        if not dist.is_initialized():
            raise ExecutorError("the distributed executor needs an initialised process group (use launch.py)")
        rank, world = dist.get_rank(), dist.get_world_size()
        if world != schedule.num_devices:
            raise ExecutorError(
                f"world size {world} does not match the schedule's {schedule.num_devices} devices "
                f"(`--devices` and `--nproc` must agree)"
            )
        if extend is not None and not self.extendable:
            raise ExecutorError("a distributed run that may switch schedules is extendable on every rank")
        transport = DistributedTransport(rank, model, options.timeout_s)
        group = dist.new_group(backend="gloo", timeout=timedelta(seconds=options.timeout_s)) if self.extendable else None
        agreed = AgreedExtension(extend, options, rank, group) if self.extendable else None
        try:
            self.loop = TickLoop(schedule, model, options, [rank], transport, on_block if rank == 0 else None,
                                 rank=rank, extend=agreed, kernels=self.kernels)
            return self.loop.run()
        finally:
            self.loop = None
            if group is not None:
                dist.destroy_process_group(group)
