"""The shared tick loop every executor runs, and the ``Executor`` protocol.

For each tick: the tasks placed on this process, their noise and latents, the KV versions they read,
one joint forward through the model's tick interface, the sampler update, KV commits and frees, and clean
latents handed to the decode device in block order. Executors differ only in *where* tasks run and *how*
K/V moves: that is the :class:`Transport`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from cascade_sched.errors import ExecutorError
from cascade_sched.schedule import KVRef, Schedule, Task, TaskKind, extend_schedule
from cascade_sched.trace import COMPUTE, SAMPLE, TraceEvent, decode_name
from cascade_sched.trace import DECODE as DECODE_TRACK
from cascade_sched.transfers import DECODE, NEXT, REENCODE, TransferPlan, plan_transfers
from models.dit import CausalWanDiT, KVPair, TaskInput
from models.kv import KVPool
from models.prompts import TextEncoder, default_text_encoder
from models.sampler import FlowMatchSampler, noise

BlockCallback = Callable[[int, Tensor], None]
"""Called on the decode device with ``(block, clean latent (C, F, H, W))``, in block order."""

ExtendHook = Callable[[int, Schedule], "Schedule | None"]
"""Called after each tick with ``(tick, schedule)``; returns an extended schedule to switch to, or None.

On N processes every rank passes a hook and every rank must adopt the same schedule after the same tick:
the distributed executor calls rank 0's hook and broadcasts its answer (``executors.distributed``)."""


class Transport(Protocol):
    """How K/V and latents move between the processes of one run (identity within one process)."""

    def exchange(self, tick: int, layer: int, local: dict[KVRef, KVPair]) -> dict[KVRef, KVPair]:
        """Per-layer joint-attention exchange inside a tick's forward: peers' same-tick versions."""
        ...

    def after_tick(self, tick: int, loop: TickLoop) -> None:
        """Post the tick's past-KV and latent messages (send what this process made, receive the rest)."""
        ...

    def wait_kv(self, ref: KVRef, layer: int) -> None:
        """Block until a received version's layer has arrived (no-op for local versions)."""
        ...

    def finish(self) -> None:
        """Complete every outstanding message."""
        ...

    def adopted(self, tick: int, old: TransferPlan, loop: TickLoop) -> None:
        """The run switched to ``loop.schedule`` after ``tick`` (its plan was ``old``): move what the new
        schedule needs from ticks already run, or refuse an extension that cannot be honoured."""
        ...


class LocalTransport:
    """Everything in one process: nothing moves."""

    def exchange(self, tick: int, layer: int, local: dict[KVRef, KVPair]) -> dict[KVRef, KVPair]:
        return {}

    def after_tick(self, tick: int, loop: TickLoop) -> None:
        return None

    def wait_kv(self, ref: KVRef, layer: int) -> None:
        return None

    def finish(self) -> None:
        return None

    def adopted(self, tick: int, old: TransferPlan, loop: TickLoop) -> None:
        return None


@dataclass
class RunOptions:
    """How to run a schedule: sampler, prompts and their conditioning, memory budget, timeout, and a
    failure to inject (tests).

    Conditioning of prompt id ``p``: ``embeddings[p]`` when given (pre-encoded, e.g. by the rank that
    encoded for everyone), else ``text_encoder.encode(text)`` (prompts that arrive while streaming), else
    :func:`models.prompts.default_text_encoder` of the model (the stand-in for test models; a refusal
    otherwise). Device and dtype are the model's: move the model first.
    """

    prompt: str = "a red ball bouncing"
    prompts: dict[int, str] = field(default_factory=dict)  # prompt id -> text of each switch's prompt
    embeddings: dict[int, Tensor] = field(default_factory=dict)  # prompt id -> (L, text_dim) float32 CPU
    text_encoder: TextEncoder | None = None  # encodes ids without an embedding; None: the model's default
    sampler: FlowMatchSampler = field(default_factory=FlowMatchSampler)
    kv_budget_bytes: int | None = None
    fail_at: tuple[int, int] | None = None  # (rank, tick): raise there, to test failure handling
    timeout_s: float = 60.0


@dataclass
class RunResult:
    """What a run produced on the decode device: clean latents per block, timings and trace events."""

    latents: list[Tensor]  # per block (C, F, H, W) on the CPU, block order, the sampler's dtype
    block_done_s: list[float]  # wall time (s from start) at which each block's clean latent was ready
    wall_s: float
    forward_s: float  # time inside model forwards on this process
    events: list[TraceEvent]
    peak_kv_bytes: int

    def stacked(self) -> Tensor:
        """All latent frames in order: (num_blocks * frames_per_block, C, H, W)."""
        return torch.cat([x.permute(1, 0, 2, 3) for x in self.latents]) if self.latents else torch.empty(0)


class TickLoop:
    """Run the tasks of ``schedule`` placed on ``local_devices``, tick by tick (docs/contract.md)."""

    def __init__(
        self,
        schedule: Schedule,
        model: CausalWanDiT,
        options: RunOptions,
        local_devices: Sequence[int],
        transport: Transport,
        on_block: BlockCallback | None = None,
        rank: int = 0,
        extend: ExtendHook | None = None,
    ) -> None:
        self.schedule, self.model, self.options = schedule, model, options
        self.local = frozenset(local_devices)
        self.transport, self.on_block, self.rank = transport, on_block, rank
        self.plan: TransferPlan = plan_transfers(schedule)
        self.extend = extend
        cfg = model.config
        if schedule.spec.frames_per_block != cfg.frames_per_block:
            raise ExecutorError(
                f"the schedule has {schedule.spec.frames_per_block} latent frames per block but the model "
                f"{cfg.name!r} expects {cfg.frames_per_block}"
            )
        self.shape = (cfg.in_channels, cfg.frames_per_block, cfg.latent_height, cfg.latent_width)
        # The sampler's arithmetic runs in float32 (float64 for a float64 model), whatever the weights.
        self.latent_dtype = torch.float64 if model.dtype == torch.float64 else torch.float32
        spec = schedule.spec
        self.eff_t = [options.sampler.effective_timestep(t) for t in spec.timesteps]
        self.keep = self._keep_ticks()
        self.pool = KVPool(options.kv_budget_bytes)
        self.latent: dict[int, Tensor] = {}  # block -> input latent of its next local stage
        self.outgoing: dict[tuple[int, str], Tensor] = {}  # (block, purpose) -> latent to send after tick
        self.kv_out: dict[KVRef, list[KVPair]] = {}  # versions made this tick that leave this process
        self.clean: dict[int, Tensor] = {}  # block -> clean latent awaiting decode (decode device only)
        self.reencode_until = self._reencode_ticks()
        self.reencode_src: dict[int, Tensor] = {}
        self.next_block = 0
        self.events: list[TraceEvent] = []
        self.block_done_s: list[float] = []
        self.latents_out: list[Tensor] = []
        self.forward_s = 0.0
        self.t0 = time.perf_counter()
        self._registered: dict[int, str] = {}  # prompt id -> the text it is registered with
        self._encoded: dict[str, Tensor] = {}  # text -> its embedding, so a text is encoded once
        self._encoder: TextEncoder | None = None
        self.register_prompts()

    def _keep_ticks(self) -> dict[KVRef, int]:
        """Past versions this process keeps: until the last tick a local task reads them. A run that may
        be extended keeps them as long as one more block would read them too (blocks are appended one
        at a time and a later block reads a subset of what the block before it reads, plus that block)."""
        plan = self.plan
        if self.extend is not None:
            plan = plan_transfers(extend_schedule(self.schedule, 1))
        keep: dict[KVRef, int] = {}
        for (dev, ref), tick in plan.keep_until.items():
            if dev in self.local and keep.get(ref, -1) < tick:
                keep[ref] = tick
        return keep

    def _reencode_ticks(self) -> dict[int, int]:
        """Blocks whose clean latent a local recache task re-encodes -> the last such task's tick."""
        until: dict[int, int] = {}
        for t in self.schedule.tasks:
            if t.device in self.local:
                for j, _ in t.replaces:  # only a recache task replaces versions
                    until[j] = max(until.get(j, -1), t.tick)
        return until

    def _adopt(self, schedule: Schedule, tick: int) -> None:
        """Switch to an extended schedule between ticks: every task up to ``tick`` must be unchanged."""
        old = [t for t in self.schedule.tasks if t.tick <= tick]
        if [t for t in schedule.tasks if t.tick <= tick] != old:
            raise ExecutorError(f"an extended schedule must keep every task up to tick {tick} unchanged")
        old_plan = self.plan
        self.schedule, self.plan = schedule, plan_transfers(schedule)
        self.keep = self._keep_ticks()
        for ref in self.pool.refs():
            if ref in self.keep:
                self.pool.retain_until(ref, self.keep[ref])
        self.reencode_until = self._reencode_ticks()
        for j in self.reencode_until:  # blocks already finished: their clean latents are in the output
            if j < len(self.latents_out) and j not in self.reencode_src:
                self.reencode_src[j] = self.latents_out[j].to(self.model.device)
        self.transport.adopted(tick, old_plan, self)
        self.register_prompts()

    def register_prompts(self) -> None:
        """Make every prompt id the schedule uses known to the model, conditioned as ``RunOptions`` says.

        An id already registered by this loop with the same text is left alone (its cross-attention
        cache stays valid); each distinct text is encoded at most once per loop.
        """
        texts = {0: self.options.prompt, **self.options.prompts}
        for pid in sorted({t.prompt for t in self.schedule.tasks} | {0}):
            if pid not in texts:
                raise ExecutorError(f"the schedule uses prompt id {pid}, but no prompt text was given for it")
            text = texts[pid]
            if self._registered.get(pid) == text:
                continue
            emb = self.options.embeddings.get(pid)
            if emb is None:
                emb = self._encoded.get(text)
            if emb is None:
                if self._encoder is None:
                    self._encoder = self.options.text_encoder or default_text_encoder(self.model.config)
                emb = self._encoder.encode(text)
            self._encoded[text] = emb
            self.model.register_prompt(pid, emb.to(self.model.device, self.model.dtype))
            self._registered[pid] = text

    @property
    def is_decode_device(self) -> bool:
        return self.plan.decode_device in self.local

    def now(self) -> float:
        return time.perf_counter() - self.t0

    # -- one tick ---------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Run every tick; returns this process's :class:`RunResult`."""
        self.t0 = time.perf_counter()
        tick = -1
        while tick + 1 < self.schedule.num_ticks:
            tick += 1
            tasks = [t for t in self.schedule.gangs[tick] if t.device in self.local]
            try:
                if self.options.fail_at == (self.rank, tick):
                    raise RuntimeError("injected failure (fail_at)")
                if tasks:
                    self._compute(tick, tasks)
                self.transport.after_tick(tick, self)
            except Exception as e:
                where = ", ".join(map(str, tasks)) or "no local task"
                raise ExecutorError(
                    f"rank {self.rank} failed at tick {tick} ({where}): {type(e).__name__}: {e}"
                ) from e
            self.kv_out.clear()
            self.outgoing.clear()
            self._emit_ready()
            self.pool.release_through(tick)
            for j in [j for j, until in self.reencode_until.items() if until <= tick]:
                self.reencode_src.pop(j, None)
                del self.reencode_until[j]
            if self.extend is not None:
                extended = self.extend(tick, self.schedule)
                if extended is not None:
                    self._adopt(extended, tick)
        self.transport.finish()
        self._emit_ready()
        if self.is_decode_device and self.next_block != self.schedule.num_blocks:
            raise ExecutorError(f"run ended with {self.next_block} of {self.schedule.num_blocks} blocks decoded")
        return RunResult(
            latents=self.latents_out,
            block_done_s=self.block_done_s,
            wall_s=self.now(),
            forward_s=self.forward_s,
            events=self.events,
            peak_kv_bytes=self.pool.peak_bytes,
        )

    def _inputs(self, task: Task) -> list[TaskInput]:
        """The model inputs of one task (``Schedule.forward_inputs``): itself, or for a recache task one
        cache pass per block it re-encodes, on the block's clean latent under the new prompt, causal
        among them (one joint forward)."""
        if task.kind != TaskKind.RECACHE:
            return [self._input(task)]
        out: list[TaskInput] = []
        for ref, reads in self.schedule.forward_inputs(task):
            j = ref[0]
            try:
                x0 = self.reencode_src[j]
            except KeyError:
                raise ExecutorError(f"rank {self.rank}: no clean latent of block {j} for {task}") from None
            out.append(TaskInput(ref=ref, latent=x0.to(self.model.dtype), timestep=0.0,
                                 frame_offset=j * self.schedule.spec.frames_per_block, prompt=task.prompt,
                                 reads=reads))
        return out

    def _input(self, task: Task) -> TaskInput:
        b, s = task.block, task.stage
        if s == 0:
            x = noise(self.schedule.spec.seed, b, 0, self.shape).to(self.model.device, self.latent_dtype)
        else:
            try:
                x = self.latent[b]
            except KeyError:
                raise ExecutorError(f"rank {self.rank}: no latent for {task} (it never arrived)") from None
        t = 0.0 if task.kind == TaskKind.CACHE else self.eff_t[s]
        return TaskInput(
            ref=task.ref,
            latent=x.to(self.model.dtype),
            timestep=t,
            frame_offset=b * self.schedule.spec.frames_per_block,
            prompt=task.prompt,
            reads=task.reads,
        )

    def _lookup(self, ref: KVRef, layer: int) -> KVPair:
        self.transport.wait_kv(ref, layer)
        return self.pool.get(ref, layer)

    def _compute(self, tick: int, tasks: list[Task]) -> None:
        start = self.now()
        per_task = [self._inputs(t) for t in tasks]
        inputs = [x for xs in per_task for x in xs]
        out = self.model.forward_tick(
            inputs, self._lookup, lambda layer, local: self.transport.exchange(tick, layer, local)
        )
        mid = self.now()
        self.forward_s += mid - start
        for task in tasks:  # one slice per task over its device's batched forward (cascade_sched.trace)
            batch = [t.name for t in tasks if t.device == task.device]
            self.events.append(TraceEvent(task.name, task.device, COMPUTE, start, mid - start,
                                          {"tick": tick, "batch": batch, "rank": self.rank}))
        i = 0
        for task, xs in zip(tasks, per_task, strict=True):
            if task.kind == TaskKind.RECACHE:
                for x, kv in zip(xs, out.kv[i:i + len(xs)], strict=True):
                    self._publish(x.ref, tick, kv)
            else:
                t0 = self.now()
                self._advance(task, xs[0].latent, out.velocity[i], out.kv[i])
                if task.kind == TaskKind.DENOISE:
                    self.events.append(TraceEvent(task.name, task.device, SAMPLE, t0, self.now() - t0,
                                                  {"tick": tick}))
            i += len(xs)

    def _publish(self, ref: KVRef, tick: int, kv: list[KVPair]) -> None:
        """Keep a version this process reads later; queue it for the processes that read it."""
        if ref in self.keep:
            self.pool.commit(ref, kv, free_after_tick=self.keep[ref])
        if any(m.ref == ref and m.dst not in self.local for m in self.plan.past_sends(tick)):
            self.kv_out[ref] = kv

    def _advance(self, task: Task, x: Tensor, velocity: Tensor, kv: list[KVPair]) -> None:
        """The sampler update after one task, then where its latent and K/V go next."""
        b, s = task.block, task.stage
        spec, sched = self.schedule.spec, self.schedule
        k = spec.num_denoise
        self._publish(task.ref, task.tick, kv)
        if task.kind == TaskKind.CACHE:
            self.latent.pop(b, None)
            return
        steps = spec.timesteps
        last = s + 1 == k
        eps = None if last else noise(spec.seed, b, s + 1, self.shape).to(x.device, self.latent_dtype)
        x0, nxt = self.options.sampler.step(x.to(self.latent_dtype), velocity.to(self.latent_dtype), steps[s],
                                            None if last else steps[s + 1], eps)
        if last:
            if self.is_decode_device:
                self.clean[b] = x0
            else:
                self.outgoing[(b, DECODE)] = x0
            if b in self.reencode_until:
                self.reencode_src[b] = x0
            self.outgoing[(b, REENCODE)] = x0
        if s + 1 < sched.num_stages:
            if sched.task(b, s + 1).device in self.local:
                self.latent[b] = nxt
            else:
                self.outgoing[(b, NEXT)] = nxt
                self.latent.pop(b, None)
        else:
            self.latent.pop(b, None)

    def receive_latent(self, block: int, purpose: str, x: Tensor) -> None:
        """A latent arrived: the input of a local stage, a clean latent to decode, or one to re-encode."""
        if purpose == DECODE:
            self.clean[block] = x
        elif purpose == REENCODE:
            self.reencode_src[block] = x
        else:
            self.latent[block] = x

    def _emit_ready(self) -> None:
        """Hand clean latents to the decode callback strictly in block order."""
        while self.next_block in self.clean:
            b = self.next_block
            x0 = self.clean.pop(b).detach().cpu()
            self.latents_out.append(x0)
            self.block_done_s.append(self.now())
            if self.on_block is not None:
                start = self.now()
                self.on_block(b, x0)
                self.events.append(TraceEvent(decode_name(b), self.plan.decode_device, DECODE_TRACK, start,
                                              self.now() - start, {"block": b}))
            self.next_block += 1


class Executor(Protocol):
    """Runs a schedule with a model and returns the decode device's :class:`RunResult`."""

    def run(self, schedule: Schedule, model: CausalWanDiT, options: RunOptions,
            on_block: BlockCallback | None = None) -> RunResult:
        ...
