"""The distributed executor: each rank runs one device of the schedule, K/V moves with torch.distributed.

Rank 0 runs the decode device (device 0, or ring 0's last device under placement ``layers``) and the
others follow round the devices (:func:`rank_device`); under placement ``layers`` a rank builds and loads
only its device's layer range (:func:`rank_slice`), and its K/V pool holds only that range.

Messages are exactly those of :func:`cascade_sched.transfers.plan_transfers`, posted point to point in
its canonical order on both ends (NCCL matches by order, not tag):

- joint attention: per layer, inside the tick's forward, each same-tick version goes to the ranks whose
  tasks read it (``batch_isend_irecv``, completed before attention of that layer); a rank that reads the
  version again at a later tick keeps every layer it received (the plan sends it no second time);
- past K/V (committed KV, or last tick's version under ``stale``): sent once after the producing tick,
  per layer; the receiver waits for a layer only when a task first reads it, so the transfer overlaps
  the computation in between (for ``stale`` that is the next tick's earlier layers);
- latents: to the next stage's rank, and clean latents to the decode rank (0);
- ring hops (placement ``layers``): after each tick, a rank hands the hidden states of the tasks it ran to
  the next device of their ring, one message per forward member; the receiver runs its layers of them at
  the next tick, and the ring's last device runs the head and the sampler step and sends the next stage's
  latent back to the ring's first device. A read between rings is a K/V send between the two devices
  that hold the same layer range (per layer in the gang, or once after the producing tick).

A stream (:class:`~executors.feed.Stream`) grows while it goes: every rank declares the same block when
the next tick needs it, and a hook's prompt switch or end is rank 0's decision, which :class:`AgreedHook`
broadcasts on a gloo control group, so every rank declares the same after the same tick. What a new chunk
of the rolling schedule needs from ticks already run (a version, a next stage's latent, a clean latent a
recache task re-encodes) moves then, from where its maker kept it (the tick loop posts it).
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from cascade_sched.errors import ConfigError, ExecutorError
from cascade_sched.placement import default_decode_device
from cascade_sched.schedule import KVRef
from cascade_sched.spec import CascadeSpec
from cascade_sched.trace import COMM, TraceEvent, exchange_name, transfer_name
from cascade_sched.transfers import HiddenSend, KVSend, LatentSend, MessageSizes, message_bytes
from executors.base import EVENTS_PER_BLOCK, BlockCallback, RunOptions, RunResult, TickLoop, Work
from executors.feed import Declaration, StreamHook, StreamView
from executors.transport import Mail, hidden_message
from models.config import ModelConfig, ModelSlice
from models.dit import CausalWanDiT, KVPair, TickKernels
from models.sampler import latent_dtype


def rank_device(spec: CascadeSpec, rank: int) -> int:
    """The schedule device that rank ``rank`` runs: rank 0 runs the decode device
    (:func:`~cascade_sched.placement.default_decode_device`: device 0, or ring 0's last device under
    placement ``layers``), and the others follow it round the devices, so rank r runs device
    ``(r + decode) mod D``. Rank 0 is where a run's outputs are written and its stream is served.

    >>> from cascade_sched import CascadeSpec
    >>> ring = CascadeSpec(num_blocks=2, num_devices=3, placement="layers", stage_stride=3, num_layers=6)
    >>> [rank_device(ring, r) for r in range(3)], rank_device(ring.replace(placement="block", stage_stride=1,
    ...                                                                       num_layers=None), 1)
    ([2, 0, 1], 1)
    """
    return (rank + default_decode_device(spec)) % spec.num_devices


def device_rank(spec: CascadeSpec, device: int) -> int:
    """The rank that runs schedule device ``device`` (the inverse of :func:`rank_device`)."""
    return (device - default_decode_device(spec)) % spec.num_devices


def rank_slice(spec: CascadeSpec, config: ModelConfig, rank: int) -> ModelSlice | None:
    """The slice of the model rank ``rank`` holds: the layer range its device runs under placement ``layers``
    (the entry on a ring's first device, the head on its last), else None (the whole model).
    ``ConfigError`` when the spec splits another layer count than the model has.

    >>> from cascade_sched import CascadeSpec
    >>> from models.config import get_config
    >>> spec = CascadeSpec(num_blocks=2, num_devices=2, placement="layers", stage_stride=2, num_layers=2)
    >>> rank_slice(spec, get_config("tiny"), 0).describe(), rank_slice(spec, get_config("tiny"), 1).describe()
    ('layers [1, 2) + head', 'layers [0, 1) + entry')
    """
    if spec.placement != "layers":
        return None
    if spec.num_layers != config.num_layers:
        raise ConfigError("num_layers", f"`--layers` {spec.num_layers} does not match the {config.num_layers} "
                                        f"layers of model {config.name!r}")
    first, end = spec.layer_ranges[rank_device(spec, rank) % spec.ring_size]
    return config.layer_slice(first, end)


def message_sizes(config: ModelConfig, dtype: torch.dtype) -> MessageSizes:
    """The bytes of each message this executor sends for a model of ``config`` in ``dtype`` (K/V in the
    weight dtype, latents in the sampler's, hidden states in the residual stream's), as
    :meth:`~cascade_sched.transfers.TransferPlan.traffic` prices a plan.

    >>> from models.config import get_config
    >>> message_bytes_of = message_sizes(get_config("tiny"), torch.float32)
    >>> message_bytes_of.gang, message_bytes_of.latent, message_bytes_of.hidden
    (3072, 3072, 1536)
    """
    element = torch.empty((), dtype=dtype).element_size()
    latent = torch.empty((), dtype=latent_dtype(dtype)).element_size()
    hidden = torch.empty((), dtype=hidden_message(config, dtype)[1]).element_size()
    return message_bytes(config.kv_bytes_per_block_layer(element), config.num_layers,
                         math.prod(config.latent_shape()) * latent, config.hidden_bytes_per_block(hidden))


class DistributedTransport:
    """Point-to-point K/V, latent and hidden-state traffic of one rank (gloo on CPU, NCCL on GPU): a
    :class:`~executors.transport.Transport`. Messages name schedule devices; ``spec`` maps them to ranks
    (:func:`device_rank`). With ``count_bytes``, :attr:`sent` totals the bytes this rank sent per
    ``(tick, src device, dst device)``, the figure ``TransferPlan.traffic`` states (a test's ledger: it grows
    with the run)."""

    def __init__(self, spec: CascadeSpec, rank: int, model: CausalWanDiT, timeout_s: float,
                 count_bytes: bool = False, history: int | None = None) -> None:
        cfg = model.config
        self.spec, self.rank, self.device, self.dtype = spec, rank, model.device, model.dtype
        self.me = rank_device(spec, rank)
        self.kv_shape = (cfg.tokens_per_block, cfg.num_heads, cfg.head_dim)
        self.latent_shape, self.latent_dtype = cfg.latent_shape(), latent_dtype(model.dtype)
        self.hidden_shape, self.hidden_dtype = hidden_message(cfg, model.dtype)  # one forward member
        self.layers = cfg.num_layers
        self.timeout = timedelta(seconds=timeout_s)
        self.pending_kv: dict[tuple[KVRef, int], list[Any]] = {}
        self.pending_send: list[Any] = []
        self.sent: collections.Counter[tuple[int, int, int]] | None = collections.Counter() if count_bytes else None
        # (name, tick, start, end, busy) on perf_counter; a stream keeps the last ticks' only (RunOptions.history)
        self._events: collections.deque[tuple[str, int, float, float, float]] = collections.deque(
            maxlen=None if history is None else EVENTS_PER_BLOCK * history)

    def _rank(self, device: int) -> int:
        return device_rank(self.spec, device)

    def _send(self, ops: list[dist.P2POp], tick: int, x: Tensor, dst: int) -> None:
        ops.append(dist.P2POp(dist.isend, x, self._rank(dst)))
        if self.sent is not None:
            self.sent[(tick, self.me, dst)] += x.numel() * x.element_size()

    def _recv(self, ops: list[dist.P2POp], buf: Tensor, src: int) -> Tensor:
        ops.append(dist.P2POp(dist.irecv, buf, self._rank(src)))
        return buf

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
            if layer not in m.layers(self.layers):
                continue
            if m.src == self.me:
                k, v = local[m.ref]
                self._send(ops, tick, torch.stack((k, v)), m.dst)
            elif m.dst == self.me and m.ref not in received:
                buf = torch.empty((2, *self.kv_shape), dtype=self.dtype, device=self.device)
                received[m.ref] = self._recv(ops, buf, m.src)
        if not ops:
            return {}
        start = time.perf_counter()
        self._wait(self._post(ops))
        self._record(exchange_name(tick), tick, start)
        return {ref: (buf[0], buf[1]) for ref, buf in received.items()}

    def post(self, tick: int, kv: Sequence[KVSend], latents: Sequence[LatentSend], hops: Sequence[HiddenSend],
             outbox: Mail) -> Mail:
        inbox = Mail()
        ops: list[dist.P2POp] = []
        kv_recv: list[tuple[KVRef, int]] = []
        for m in kv:
            if m.src == self.me:
                for k, v in outbox.kv[m.ref]:
                    self._send(ops, tick, k.contiguous(), m.dst)
                    self._send(ops, tick, v.contiguous(), m.dst)
            elif m.dst == self.me:
                layers = []
                for layer in m.layers(self.layers):
                    k = self._recv(ops, torch.empty(self.kv_shape, dtype=self.dtype, device=self.device), m.src)
                    v = self._recv(ops, torch.empty(self.kv_shape, dtype=self.dtype, device=self.device), m.src)
                    layers.append((k, v))
                    kv_recv.append((m.ref, layer))
                inbox.kv[m.ref] = layers
        n_kv = len(ops)
        received: list[tuple[int, str, Tensor]] = []
        for ls in latents:
            if ls.src == self.me:
                self._send(ops, tick, outbox.latents[(ls.block, ls.purpose)].to(self.device).contiguous(), ls.dst)
            elif ls.dst == self.me:
                buf = torch.empty(self.latent_shape, dtype=self.latent_dtype, device=self.device)
                received.append((ls.block, ls.purpose, self._recv(ops, buf, ls.src)))
        for h in hops:  # one message per forward member of the task, in the plan's order on both ends
            if h.src == self.me:
                for piece in outbox.hidden[(h.block, h.stage)]:
                    self._send(ops, tick, piece.contiguous(), h.dst)
            elif h.dst == self.me:
                inbox.hidden[(h.block, h.stage)] = [
                    self._recv(ops, torch.empty(self.hidden_shape, dtype=self.hidden_dtype, device=self.device), h.src)
                    for _ in range(h.members)]
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
            self._wait(works[n_kv:])  # latents and hidden states are needed at the next tick: wait now
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
        return [TraceEvent(name, self.me, COMM, start - t0, end - start, {"tick": tick, "busy_s": busy})
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



class AgreedHook:
    """The stream hook of every rank of a distributed run: rank 0's ``hook`` decides after each tick and
    its declaration is broadcast, with the prompt texts rank 0 added to its ``RunOptions.prompts``, so every
    rank declares the same after the same tick.

    One small broadcast per tick on ``group`` (a gloo group, so NCCL runs move no Python objects on the
    GPU stream). Rank 0's hook may block (a served stream waits for its display there); the others wait
    in the broadcast, within the group's timeout.
    """

    def __init__(self, hook: StreamHook | None, options: RunOptions, rank: int, group: Any) -> None:
        if rank == 0 and hook is None:
            raise ExecutorError("rank 0 of an extendable distributed run needs the stream's hook")
        self.hook, self.options, self.rank, self.group = hook, options, rank, group
        self.sent = dict(options.prompts)

    def __call__(self, tick: int, view: StreamView) -> Declaration | None:
        msg: list[Any] = [None]
        declaration: Declaration | None = None
        if self.rank == 0 and self.hook is not None:
            declaration = self.hook(tick, view)
            added = {pid: text for pid, text in self.options.prompts.items() if self.sent.get(pid) != text}
            self.sent.update(added)
            if declaration is not None or added:
                msg = [(declaration, added)]
        dist.broadcast_object_list(msg, src=0, group=self.group)
        if self.rank == 0 or msg[0] is None:
            return declaration
        declaration, added = msg[0]
        self.options.prompts.update(added)
        return declaration


class DistributedExecutor:
    """Runs this rank's share of a schedule inside an initialised default process group.

    The world size must equal the schedule's device count; rank r runs device :func:`rank_device` (rank 0
    the decode device, so rank 0 alone returns latents and calls ``on_block``; the others return their
    timings and trace events). Under placement ``layers`` each rank holds only its layer range: pass
    that slice of the model (:func:`rank_slice`, loaded alone), or the whole model, whose slice the rank
    then uses. A stream whose hook switches prompts or ends it is ``extendable`` on every rank, and rank 0
    passes the ``hook`` (see :class:`AgreedHook`); ``kernels`` run the model's tick forward
    (None: its own modules). With ``count_bytes``, :attr:`sent` holds what the last run sent per
    ``(tick, src device, dst device)``.
    """

    name = "distributed"

    def __init__(self, extendable: bool = False, kernels: TickKernels | None = None, count_bytes: bool = False) -> None:
        self.extendable, self.kernels, self.count_bytes = extendable, kernels, count_bytes
        self.loop: TickLoop | None = None  # this rank's loop while a run goes on (a server reads its K/V pool)
        self.sent: dict[tuple[int, int, int], int] = {}

    def run(self, work: Work, model: CausalWanDiT, options: RunOptions,
            on_block: BlockCallback | None = None, hook: StreamHook | None = None) -> RunResult:
        """Run this rank's share of a schedule or a stream."""
        if not dist.is_initialized():
            raise ExecutorError("the distributed executor needs an initialised process group (use launch.py)")
        rank, world = dist.get_rank(), dist.get_world_size()
        spec = work.spec
        if world != spec.num_devices:
            raise ExecutorError(
                f"world size {world} does not match the schedule's {spec.num_devices} devices "
                f"(`--devices` and `--nproc` must agree)"
            )
        if hook is not None and not self.extendable:
            raise ExecutorError("a distributed stream with a hook is extendable on every rank")
        part = rank_slice(spec, model.config, rank)
        if part is not None and model.whole:
            from models.checkpoints import take_slice

            model = take_slice(model, part)
        transport = DistributedTransport(spec, rank, model, options.timeout_s, self.count_bytes, options.history)
        group = dist.new_group(backend="gloo", timeout=timedelta(seconds=options.timeout_s)) if self.extendable else None
        agreed = AgreedHook(hook, options, rank, group) if self.extendable else None
        try:
            self.loop = TickLoop(work, model, options, [rank_device(spec, rank)], transport,
                                 on_block if rank == 0 else None, rank=rank, hook=agreed, kernels=self.kernels)
            return self.loop.run()
        finally:
            self.loop = None
            self.sent = dict(transport.sent or {})
            if group is not None:
                dist.destroy_process_group(group)
