"""The shared tick loop every executor runs, and the ``Executor`` protocol.

For each tick: the tasks placed on this process, their noise and latents, the KV versions they read,
one joint forward through the model's tick interface (its own kernels, or compiled ones), the sampler
update, KV commits and frees, and clean latents handed to the decode device in block order. Executors
differ only in *where* tasks run and *how* K/V moves: that is the :class:`~executors.transport.Transport`,
which the loop hands the plan's messages and what to send, and which returns what arrived.

A process holds the whole model or one slice of it (:class:`models.config.ModelSlice`). With the whole
model it runs every segment of its tasks at once, in the tick they enter (placement ``layers`` does not
change latents, so one process may run a ring's segments back to back). With a slice it is one device of
a layer ring (placement ``layers``): at tick n it runs its layer range of the tasks that entered the ring
at n - r (r its place in the ring), from the hidden state the previous device handed it after tick n - 1
(or the latents, on the first device), and hands its own on (or, on the last device, runs the head and
the sampler step). The K/V pool then holds that layer range only.

A rank that fails says where: its rank, the tick, its tasks, and the schedule's grid around them with the
failing cell marked, as a schedule that breaks the contract is reported (:mod:`cascade_sched.validate`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from cascade_sched.errors import ExecutorError
from cascade_sched.render import render_grid
from cascade_sched.schedule import KVRef, Schedule, Task, TaskKind, extend_schedule
from cascade_sched.trace import COMPUTE, SAMPLE, TraceEvent, decode_name
from cascade_sched.trace import DECODE as DECODE_TRACK
from cascade_sched.transfers import DECODE, NEXT, REENCODE, LatentSend, TransferPlan, plan_transfers
from executors.transport import Mail, Transport
from models.dit import CausalWanDiT, HiddenState, KVPair, TaskInput, TickKernels
from models.kv import KVPool
from models.prompts import TextEncoder, default_text_encoder
from models.sampler import FlowMatchSampler, latent_dtype, noise

BlockCallback = Callable[[int, Tensor], None]
"""Called on the decode device with ``(block, clean latent (C, F, H, W))``, in block order."""

ExtendHook = Callable[[int, Schedule], "Schedule | None"]
"""Called after each tick with ``(tick, schedule)``; returns an extended schedule to switch to, or None.

On N processes every rank passes a hook and every rank must adopt the same schedule after the same tick:
the distributed executor calls rank 0's hook and broadcasts its answer (``executors.distributed``)."""


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
    """Run the tasks of ``schedule`` placed on ``local_devices``, tick by tick (docs/contract.md).

    ``model`` is the whole model (every segment of a local task runs in the tick it enters), or the
    slice one device of a layer ring holds (``local_devices`` is that one device; see the module doc).
    ``kernels`` run the model's tick forward (``CausalWanDiT.forward_slice``): None for its own modules,
    compiled graphs for the compiled executor.
    """

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
        kernels: TickKernels | None = None,
    ) -> None:
        self.schedule, self.model, self.options, self.kernels = schedule, model, options, kernels
        self.local = frozenset(local_devices)
        self.transport, self.on_block, self.rank = transport, on_block, rank
        self.plan: TransferPlan = plan_transfers(schedule)
        self.extend = extend
        cfg = model.config
        spec = schedule.spec
        if spec.frames_per_block != cfg.frames_per_block:
            raise ExecutorError(
                f"the schedule has {spec.frames_per_block} latent frames per block but the model "
                f"{cfg.name!r} expects {cfg.frames_per_block}"
            )
        if spec.placement == "layers" and spec.num_layers != cfg.num_layers:
            raise ExecutorError(f"the schedule splits {spec.num_layers} layers over its rings but the model "
                                f"{cfg.name!r} has {cfg.num_layers}")
        self.shape = (cfg.in_channels, cfg.frames_per_block, cfg.latent_height, cfg.latent_width)
        self.part = model.part
        self.first_layer, self.end_layer = self.part.first, self.part.end
        self.ring_pos = None if model.whole else self._ring_position()
        self.latent_dtype = latent_dtype(model.dtype)
        # The latent input of a task whose latent this process does not read (a middle device of a ring
        # reads the hidden state): its shape only, no storage.
        self.blank = torch.zeros((), dtype=model.dtype, device=model.device).expand(self.shape)
        self.eff_t = [options.sampler.effective_timestep(t) for t in spec.timesteps]
        self.keep = self._keep_ticks()
        self.pool = KVPool(options.kv_budget_bytes)
        self.latent: dict[int, Tensor] = {}  # block -> input latent of its next local stage
        self.hidden: dict[KVRef, list[Tensor]] = {}  # (block, stage) -> its members' hidden states from a hop
        self.outbox = Mail()  # what this tick made that leaves this process (the plan's messages)
        self.gang_kept: dict[KVRef, list[KVPair]] = {}  # peers' versions of a gang read again later, by layer
        self.clean: dict[int, Tensor] = {}  # block -> clean latent awaiting decode (decode device only)
        self.reencode_until = self._reencode_ticks()
        self.reencode_src: dict[int, Tensor] = {}
        self.next_block = 0
        self.tick = -1
        self.events: list[TraceEvent] = []
        self.block_done_s: list[float] = []
        self.latents_out: list[Tensor] = []
        self.forward_s = 0.0
        self.t0 = time.perf_counter()
        self._registered: dict[int, str] = {}  # prompt id -> the text it is registered with
        self._encoded: dict[str, Tensor] = {}  # text -> its embedding, so a text is encoded once
        self._encoder: TextEncoder | None = None
        self.register_prompts()

    def _ring_position(self) -> int:
        """This process's place r in its layer ring, checked: one local device, which runs layers
        ``[first_r, end_r)`` of the schedule's split, the slice the model holds."""
        spec, part = self.schedule.spec, self.part
        if spec.placement != "layers" or len(self.local) != 1:
            raise ExecutorError(f"a model holding {part.describe()} runs one device of a layer ring (placement "
                                f"layers); this process runs devices {sorted(self.local)} of placement "
                                f"{spec.placement}")
        (device,) = self.local
        r = device % spec.ring_size
        first, end = spec.layer_ranges[r]
        want = self.model.config.layer_slice(first, end)
        if part != want:
            raise ExecutorError(f"device {device} runs {want.describe()} of the schedule's ring, but this "
                                f"model holds {part.describe()}")
        return r

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
        """Blocks whose clean latent a local recache task re-encodes -> the last such task's tick (a ring's
        first device re-encodes them: the others run its later layers on hidden states)."""
        until: dict[int, int] = {}
        for t in self.schedule.tasks:
            if t.device in self.local and self.part.entry:
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
        self.transport.check_adopt(tick, old_plan.past[:tick + 1], self.plan.past[:tick + 1])
        self.keep = self._keep_ticks()
        for ref in self.pool.refs():
            if ref in self.keep:
                self.pool.retain_until(ref, self.keep[ref])
        self.reencode_until = self._reencode_ticks()
        for j in self.reencode_until:  # blocks already finished: their clean latents are in the output
            if j < len(self.latents_out) and j not in self.reencode_src:
                self.reencode_src[j] = self.latents_out[j].to(self.model.device)
        self._resend_clean(tick)
        self.register_prompts()

    def _resend_clean(self, tick: int) -> None:
        """A recache task added now re-encodes blocks whose clean latents were made (and sent only to the
        decode device) before it existed: the decode device sends them again, in one canonical order."""
        decode = self.plan.decode_device
        sends: list[LatentSend] = []
        for task in self.schedule.tasks:
            if task.kind != TaskKind.RECACHE or task.tick <= tick or task.device == decode:
                continue
            for j in sorted({j for j, _ in task.replaces}):
                if self.schedule.decode_ready_tick(j) <= tick:  # made already (else the plan sends it)
                    sends.append(LatentSend(j, task.stage, decode, task.device, REENCODE))
        outbox = Mail(latents={(m.block, REENCODE): self.latents_out[m.block] for m in sends
                               if m.src in self.local})
        for (block, purpose), x in self.transport.post(tick, (), sends, (), outbox).latents.items():
            self.receive_latent(block, purpose, x)

    def register_prompts(self) -> None:
        """Make every prompt id the schedule uses known to the model, conditioned as ``RunOptions`` says.

        An id already registered by this loop with the same text is left alone (its cross-attention
        cache stays valid); each distinct text is encoded at most once per loop. A slice of the model
        computes its own layers' cross-attention K/V only.
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
            self.tick = tick
            tasks = self.local_tasks(tick)
            try:
                if self.options.fail_at == (self.rank, tick):
                    raise RuntimeError("injected failure (fail_at)")
                if tasks:
                    self._compute(tick, tasks)
                self._post(tick)
            except Exception as e:
                raise self._failure(tick, tasks, e) from e
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
            events=[*self.events, *self.transport.events(self.t0)],
            peak_kv_bytes=self.pool.peak_bytes,
        )

    def local_tasks(self, tick: int) -> list[Task]:
        """The tasks this process runs at ``tick``: those entering a local device then (the whole model),
        or, on device r of a ring, those that entered its ring at ``tick - r`` (their segment r)."""
        gangs = self.schedule.gangs
        if self.ring_pos is None:
            return [t for t in gangs[tick] if t.device in self.local]
        r, entered = self.ring_pos, tick - self.ring_pos
        if entered < 0:
            return []
        segments = self.schedule.segments
        return [t for t in gangs[entered] if len(segments(t)) > r and segments(t)[r][0] in self.local]

    def _failure(self, tick: int, tasks: Sequence[Task], e: Exception) -> ExecutorError:
        """This rank's failure at ``tick``: where (rank, tick, tasks), why, and the schedule's grid with the
        failing cell marked."""
        where = ", ".join(map(str, tasks)) or "no local task"
        device = min(self.local) if self.ring_pos is not None or not tasks else tasks[0].device
        try:
            grid = "\n" + render_grid(self.schedule, mark=(tick, device))
        except Exception:  # the failure is said whatever the grid does
            grid = ""
        return ExecutorError(f"rank {self.rank} failed at tick {tick} ({where}): {type(e).__name__}: {e}{grid}")

    def _compute(self, tick: int, tasks: list[Task]) -> None:
        """One joint forward of the tick's local tasks (this process's layers of them), then each task's own
        step (:meth:`_step`), and the hidden states handed to the next device of a ring."""
        start = self.now()
        steps = [self._step(t) for t in tasks]
        hidden = None if self.part.entry else self._hidden_in(tasks, steps)
        out = self.model.forward_slice([x for step in steps for x in step.inputs], self._lookup,
                                       lambda layer, local: self._exchange(tick, layer, local), hidden=hidden,
                                       kernels=self.kernels)
        mid = self.now()
        self.forward_s += mid - start
        ring = self.ring_pos is not None
        for task in tasks:  # one slice per task over its device's batched forward (cascade_sched.trace)
            device = min(self.local) if ring else task.device
            batch = [t.name for t in tasks if ring or t.device == task.device]
            self.events.append(TraceEvent(task.name, device, COMPUTE, start, mid - start,
                                          {"tick": tick, "batch": batch, "rank": self.rank}))
        i = 0
        for task, step in zip(tasks, steps, strict=True):
            n = len(step.inputs)
            step.finish(out.velocity[i:i + n] if out.velocity else None, out.kv[i:i + n])
            if out.hidden is not None and n:  # one piece per forward member, as the plan's hop sends them
                self.outbox.hidden[task.ref] = list(torch.split(out.hidden.x[i * self.frames:(i + n) * self.frames],
                                                                self.frames))
            i += n

    @property
    def frames(self) -> int:
        """Patch frames of one forward member (one block) in the hidden state."""
        return self.model.config.frames_per_block // self.model.config.patch_size[0]

    def _hidden_in(self, tasks: list[Task], steps: list[_Step]) -> HiddenState | None:
        """The hidden state the previous device of the ring handed this one for ``tasks``, in their order
        (None when they have no forward member: a recache task that re-encodes nothing)."""
        pieces = []
        for t, step in zip(tasks, steps, strict=True):
            if not step.inputs:
                continue
            try:
                pieces.extend(self.hidden.pop(t.ref))
            except KeyError:
                raise ExecutorError(f"rank {self.rank}: no hidden state for {t} (it never arrived)") from None
        if not pieces:
            return None
        return HiddenState(torch.cat(pieces) if len(pieces) > 1 else pieces[0], self.first_layer)

    def _step(self, task: Task) -> _Step:
        """The one dispatch on a task's kind: its model inputs, and what follows its forward."""
        if task.kind == TaskKind.DENOISE:
            return self._denoise(task)
        if task.kind == TaskKind.CACHE:
            return self._cache(task)
        if task.kind == TaskKind.RECACHE:
            return self._recache(task)
        raise ExecutorError(f"rank {self.rank}: no step for {task} of kind {task.kind!r}")

    def _denoise(self, task: Task) -> _Step:
        """A denoise stage: the sampler's step (where the head runs), then the next stage's input (or the
        clean latent)."""
        x = self._latent_in(task) if self.part.entry or self.part.head else self.blank
        inp = self._input(task, x, self.eff_t[task.stage])

        def finish(velocity: list[Tensor] | None, kv: list[list[KVPair]]) -> None:
            self._publish(task.ref, kv[0])
            if velocity is not None:
                t0 = self.now()
                self._sample(task, inp.latent, velocity[0])  # the latent as the model saw it
                self.events.append(TraceEvent(task.name, min(self.local) if self.ring_pos is not None
                                              else task.device, SAMPLE, t0, self.now() - t0, {"tick": self.tick}))

        return _Step([inp], finish)

    def _cache(self, task: Task) -> _Step:
        """The cache pass: the clean latent at t = 0 writes the block's committed K/V."""

        def finish(velocity: list[Tensor] | None, kv: list[list[KVPair]]) -> None:
            self._publish(task.ref, kv[0])
            self.latent.pop(task.block, None)

        return _Step([self._input(task, self._latent_in(task) if self.part.entry else self.blank, 0.0)], finish)

    def _recache(self, task: Task) -> _Step:
        """A recache task: one cache pass per block it re-encodes (``Schedule.forward_inputs``), on the
        block's clean latent under the new prompt, causal among them (one joint forward)."""
        inputs: list[TaskInput] = []
        for ref, reads in self.schedule.forward_inputs(task):
            j = ref[0]
            x0 = self.blank
            if self.part.entry:
                try:
                    x0 = self.reencode_src[j]
                except KeyError:
                    raise ExecutorError(f"rank {self.rank}: no clean latent of block {j} for {task}") from None
            inputs.append(TaskInput(ref=ref, latent=x0.to(self.model.dtype), timestep=0.0,
                                    frame_offset=j * self.schedule.spec.frames_per_block, prompt=task.prompt,
                                    reads=reads))

        def finish(velocity: list[Tensor] | None, kv: list[list[KVPair]]) -> None:
            for x, layers in zip(inputs, kv, strict=True):
                self._publish(x.ref, layers)

        return _Step(inputs, finish)

    def _latent_in(self, task: Task) -> Tensor:
        """The input latent of a block's stage: fresh noise at stage 0, else what the last stage made."""
        b, s = task.block, task.stage
        if s == 0:
            return noise(self.schedule.spec.seed, b, 0, self.shape).to(self.model.device, self.latent_dtype)
        try:
            return self.latent[b]
        except KeyError:
            raise ExecutorError(f"rank {self.rank}: no latent for {task} (it never arrived)") from None

    def _input(self, task: Task, x: Tensor, timestep: float) -> TaskInput:
        return TaskInput(ref=task.ref, latent=x.to(self.model.dtype), timestep=timestep,
                         frame_offset=task.block * self.schedule.spec.frames_per_block, prompt=task.prompt,
                         reads=task.reads)

    def _lookup(self, ref: KVRef, layer: int) -> KVPair:
        self.transport.wait_kv(ref, layer)
        return self.pool.get(ref, layer - self.first_layer)  # the pool holds this process's layers only

    def _exchange(self, tick: int, layer: int, local: dict[KVRef, KVPair]) -> dict[KVRef, KVPair]:
        """The per-layer joint-attention exchange of ``tick``; a peer's version that a local task reads
        again at a later tick is kept, and committed to the pool once every local layer has come."""
        peers = self.transport.exchange(tick, layer, self.plan.gang_sends(tick), local)
        for ref, kv in peers.items():
            if any((d, ref) in self.plan.kept_from_gang for d in self.local):
                layers = self.gang_kept.setdefault(ref, [])
                layers.append(kv)
                if layer + 1 == self.end_layer:
                    self.pool.commit(ref, self.gang_kept.pop(ref), free_after_tick=self.keep[ref])
        return peers

    def _post(self, tick: int) -> None:
        """Send the tick's past K/V, latents and hidden states, and take what arrives (K/V into the pool,
        latents, the hidden states of the next tick)."""
        inbox = self.transport.post(tick, self.plan.past_sends(tick), self.plan.latent_sends(tick),
                                    self.plan.hop_sends(tick), self.outbox)
        self.outbox = Mail()
        for ref, layers in inbox.kv.items():
            self.pool.commit(ref, layers, free_after_tick=self.keep[ref])
        for (block, purpose), x in inbox.latents.items():
            self.receive_latent(block, purpose, x)
        self.hidden.update(inbox.hidden)

    def _publish(self, ref: KVRef, kv: list[KVPair]) -> None:
        """Keep a version (this process's layers of it) that a local task reads later; queue it for the
        processes that read it."""
        if ref in self.keep:
            self.pool.commit(ref, kv, free_after_tick=self.keep[ref])
        if any(m.ref == ref and m.src in self.local and m.dst not in self.local
               for m in self.plan.past_sends(self.tick)):
            self.outbox.kv[ref] = kv

    def _sample(self, task: Task, x: Tensor, velocity: Tensor) -> None:
        """The sampler update after a denoise stage (on the device that runs the head), then where its
        latent goes next: the next stage's first device (its input) and the device that runs its head (the
        next sampler step's), and the clean latent to the decode device."""
        b, s = task.block, task.stage
        spec, sched = self.schedule.spec, self.schedule
        steps = spec.timesteps
        last = s + 1 == spec.num_denoise
        eps = None if last else noise(spec.seed, b, s + 1, self.shape).to(x.device, self.latent_dtype)
        x0, nxt = self.options.sampler.step(x.to(self.latent_dtype), velocity.to(self.latent_dtype), steps[s],
                                            None if last else steps[s + 1], eps)
        if last:
            if self.is_decode_device:
                self.clean[b] = x0
            else:
                self.outbox.latents[(b, DECODE)] = x0
            if b in self.reencode_until:
                self.reencode_src[b] = x0
            self.outbox.latents[(b, REENCODE)] = x0
        self.latent.pop(b, None)
        if s + 1 < sched.num_stages:
            after = sched.task(b, s + 1)
            segments = sched.segments(after)
            if segments[0][0] in self.local or (segments[-1][0] in self.local and after.kind == TaskKind.DENOISE):
                self.latent[b] = nxt
            if segments[0][0] not in self.local:
                self.outbox.latents[(b, NEXT)] = nxt

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


@dataclass(frozen=True)
class _Step:
    """One local task in a tick: its model inputs (one, or a recache task's several), and what runs on
    its share of the forward's outputs."""

    inputs: list[TaskInput]
    finish: Callable[[list[Tensor] | None, list[list[KVPair]]], None]  # (velocities where the head ran, K/V)


class Executor(Protocol):
    """Runs a schedule with a model and returns the decode device's :class:`RunResult`; ``extend`` may
    switch to an extended schedule between ticks (a stream)."""

    name: str

    def run(self, schedule: Schedule, model: CausalWanDiT, options: RunOptions,
            on_block: BlockCallback | None = None, extend: ExtendHook | None = None) -> RunResult:
        ...
