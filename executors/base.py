"""The shared tick loop every executor runs, and the ``Executor`` protocol.

For each tick: the tasks placed on this process, their noise and latents, the KV versions they read,
one joint forward through the model's tick interface (its own kernels, or compiled ones), the sampler
update, KV commits and frees, and clean latents handed to the decode device in block order. Executors
differ only in *where* tasks run and *how* K/V moves: that is the :class:`~executors.transport.Transport`,
which the loop hands the plan's messages and what to send, and which returns what arrived.

The loop consumes its schedule tick by tick (:mod:`executors.feed`): a whole ``Schedule``, or a
:class:`~executors.feed.Stream` whose rolling schedule it declares one block at a time, applying a hook's
prompt switches and end between ticks. It holds only what a tick still to come needs: the tasks and
transfer entries of the ticks ahead, the K/V versions some later task reads (until the plan says their last
reader ran, or, in a stream, until the contract or the block's retirement says no task can read them), the
latents in flight, and, for a stream, a bounded history of block times and trace events; so a stream's
state does not grow with its length.

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

import collections
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor

from cascade_sched.errors import ExecutorError
from cascade_sched.placement import default_decode_device
from cascade_sched.render import render_grid
from cascade_sched.rolling import ScheduleChunk
from cascade_sched.schedule import ForwardInput, KVRef, Schedule, Task, TaskKind
from cascade_sched.trace import COMPUTE, SAMPLE, TraceEvent, decode_name
from cascade_sched.trace import DECODE as DECODE_TRACK
from cascade_sched.transfers import DECODE, NEXT, REENCODE, HiddenSend, KVSend, LatentSend
from executors.feed import Feed, RollingFeed, Stream, StreamHook, StreamView, WholeFeed, read_horizon
from executors.transport import Mail, Transport
from models.dit import CausalWanDiT, HiddenState, KVPair, TaskInput, TickKernels
from models.kv import KVPool
from models.prompts import TextEncoder, default_text_encoder
from models.sampler import FlowMatchSampler, latent_dtype, noise

BlockCallback = Callable[[int, Tensor], None]
"""Called on the decode device with ``(block, clean latent (C, F, H, W))``, in block order."""

Work = Schedule | Stream
"""What an executor runs: a whole schedule, or a stream (:mod:`executors.feed`)."""

_M = TypeVar("_M", bound=tuple[Any, ...])  # a message of the plan (a NamedTuple: sorts canonically)

EVENTS_PER_BLOCK = 32  # trace events a stream keeps per block of its history (a tick's tasks, comm, decode)


@dataclass
class RunOptions:
    """How to run a schedule: sampler, prompts and their conditioning, memory budget, timeout, the history
    a stream keeps, and a failure to inject (tests).

    Conditioning of prompt id ``p``: ``embeddings[p]`` when given (pre-encoded, e.g. by the rank that
    encoded for everyone), else ``text_encoder.encode(text)`` (prompts that arrive while streaming), else
    :func:`models.prompts.default_text_encoder` of the model (the stand-in for test models; a refusal
    otherwise). Device and dtype are the model's: move the model first.

    ``history`` None keeps every block's clean latent, completion time and trace events in the
    :class:`RunResult` (a run of known length); a number N keeps no latents (``on_block`` has them), the
    last N blocks' times and ``EVENTS_PER_BLOCK`` x N trace events: a stream's bounded state.
    """

    prompt: str = "a red ball bouncing"
    prompts: dict[int, str] = field(default_factory=dict)  # prompt id -> text of each switch's prompt
    embeddings: dict[int, Tensor] = field(default_factory=dict)  # prompt id -> (L, text_dim) float32 CPU
    text_encoder: TextEncoder | None = None  # encodes ids without an embedding; None: the model's default
    sampler: FlowMatchSampler = field(default_factory=FlowMatchSampler)
    kv_budget_bytes: int | None = None
    fail_at: tuple[int, int] | None = None  # (rank, tick): raise there, to test failure handling
    timeout_s: float = 60.0
    history: int | None = None


@dataclass
class RunResult:
    """What a run produced on the decode device: clean latents per block, timings and trace events."""

    latents: list[Tensor]  # per block (C, F, H, W) on the CPU, block order, the sampler's dtype (none: history)
    block_done_s: list[float]  # wall time (s from start) each of the last blocks' clean latent was ready
    wall_s: float
    forward_s: float  # time inside model forwards on this process
    events: list[TraceEvent]
    peak_kv_bytes: int
    blocks: int = 0  # blocks decoded on this process: block_done_s covers blocks [blocks - len, blocks)

    def stacked(self) -> Tensor:
        """All latent frames in order: (num_blocks * frames_per_block, C, H, W)."""
        return torch.cat([x.permute(1, 0, 2, 3) for x in self.latents]) if self.latents else torch.empty(0)


class TickLoop:
    """Run the tasks of ``work`` placed on ``local_devices``, tick by tick (docs/contract.md).

    ``model`` is the whole model (every segment of a local task runs in the tick it enters), or the
    slice one device of a layer ring holds (``local_devices`` is that one device; see the module doc).
    ``hook`` is a stream's (called after every tick). ``kernels`` run the model's tick forward
    (``CausalWanDiT.forward_slice``): None for its own modules, compiled graphs for the compiled executor.
    """

    def __init__(
        self,
        work: Work,
        model: CausalWanDiT,
        options: RunOptions,
        local_devices: Sequence[int],
        transport: Transport,
        on_block: BlockCallback | None = None,
        rank: int = 0,
        hook: StreamHook | None = None,
        kernels: TickKernels | None = None,
    ) -> None:
        if hook is not None and not isinstance(work, Stream):
            raise ExecutorError("a hook declares a stream's blocks: run a Stream, not a whole Schedule")
        self.feed: Feed = RollingFeed(work) if isinstance(work, Stream) else WholeFeed(work)
        self.spec = spec = self.feed.spec
        self.model, self.options, self.kernels, self.hook = model, options, kernels, hook
        self.local = frozenset(local_devices)
        self.transport, self.on_block, self.rank = transport, on_block, rank
        cfg = model.config
        if spec.frames_per_block != cfg.frames_per_block:
            raise ExecutorError(
                f"the schedule has {spec.frames_per_block} latent frames per block but the model "
                f"{cfg.name!r} expects {cfg.frames_per_block}"
            )
        if spec.placement == "layers" and spec.num_layers != cfg.num_layers:
            raise ExecutorError(f"the schedule splits {spec.num_layers} layers over its rings but the model "
                                f"{cfg.name!r} has {cfg.num_layers}")
        self.shape = (cfg.in_channels, cfg.frames_per_block, cfg.latent_height, cfg.latent_width)
        self.frames = cfg.frames_per_block // cfg.patch_size[0]  # patch frames of one forward member
        self.part = model.part
        self.first_layer, self.end_layer = self.part.first, self.part.end
        self.ring_pos = None if model.whole else self._ring_position()
        self.ring = spec.ring_size
        self.decode_device = default_decode_device(spec)
        self.latent_dtype = latent_dtype(model.dtype)
        # The latent input of a task whose latent this process does not read (a middle device of a ring
        # reads the hidden state): its shape only, no storage.
        self.blank = torch.zeros((), dtype=model.dtype, device=model.device).expand(self.shape)
        self.eff_t = [options.sampler.effective_timestep(t) for t in spec.timesteps]
        self.recache = spec.switch_policy == "recache"
        self.pool = KVPool(options.kv_budget_bytes)
        # -- the schedule ahead: tasks and the plan's entries by tick, what this process keeps -----------
        self.entering: dict[int, list[Task]] = {}  # tick -> the tasks entering then (kept W ticks: a ring)
        self.until = 0  # ticks before this are given
        self.last_entry = -1
        self.gang: dict[int, tuple[KVSend, ...]] = {}
        self.past: dict[int, tuple[KVSend, ...]] = {}
        self.sends: dict[int, tuple[LatentSend, ...]] = {}
        self.hops: dict[int, tuple[HiddenSend, ...]] = {}
        self.keep: dict[KVRef, int] = {}  # version -> the last tick a local task reads it (final)
        self.kept: set[KVRef] = set()  # versions a local device keeps from their own tick's gang
        self.pending: dict[int, set[KVRef]] = {}  # block -> held versions whose last reader is not known yet
        self.retire_at: dict[int, list[int]] = {}  # tick -> blocks no task reads after it
        # -- latents and hidden states in flight ------------------------------------------------------------
        self.latent: dict[int, Tensor] = {}  # block -> input latent of its next local stage
        self.made: dict[tuple[int, str], Tensor] = {}  # (block, purpose) -> a latent made here, not yet sent
        self.hidden: dict[KVRef, list[Tensor]] = {}  # (block, stage) -> its members' hidden states from a hop
        self.outbox = Mail()  # K/V and hidden states this tick made that leave this process
        self.gang_kept: dict[KVRef, list[KVPair]] = {}  # peers' versions of a gang read again later, by layer
        self.clean: dict[int, Tensor] = {}  # block -> clean latent awaiting decode (decode device only)
        self.reencode_until: dict[int, int] = {}  # block -> last tick a local recache task re-encodes it
        self.reencode_src: dict[int, Tensor] = {}
        self.recache_inputs: dict[int, tuple[ForwardInput, ...]] = {}  # block -> its recache task's members
        # -- what the run reports ----------------------------------------------------------------------------
        history = options.history
        self.next_block = 0
        self.tick = -1
        self.events: collections.deque[TraceEvent] = collections.deque(
            maxlen=None if history is None else EVENTS_PER_BLOCK * history)
        self.block_done_s: collections.deque[float] = collections.deque(maxlen=history)
        self.latents_out: list[Tensor] = []
        self._starts: collections.deque[int] = collections.deque()  # start ticks of the blocks not yet finished
        self.forward_s = 0.0
        self.t0 = time.perf_counter()
        self._registered: dict[int, str] = {}  # prompt id -> the text it is registered with
        self.finished = 0  # blocks whose commit stage has left its ring (they finish in block order)
        self._encoded: dict[str, Tensor] = {}  # text -> its embedding, so a text is encoded once
        self._encoder: TextEncoder | None = None
        self.register_prompts([0])
        self._adopt(self.feed.first())

    def _ring_position(self) -> int:
        """This process's place r in its layer ring, checked: one local device, which runs layers
        ``[first_r, end_r)`` of the schedule's split, the slice the model holds."""
        spec, part = self.spec, self.part
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

    # -- the schedule, chunk by chunk --------------------------------------------------------------------
    def _adopt(self, chunk: ScheduleChunk | None) -> None:
        """Take a chunk: its tasks and plan entries by tick; what it says this process keeps, and until
        when; the entries whose tick has run (moved now, from what was kept); the blocks it retires."""
        if chunk is None:
            return
        prompts = set()
        for t in chunk.tasks:
            self.entering.setdefault(t.tick, []).append(t)
            self.last_entry = t.tick
            prompts.add(t.prompt)
            if t.kind == TaskKind.RECACHE:
                members = self.feed.forward_inputs(t)  # asked on every rank: the feed numbers the switches
                if self._runs_here(t):
                    self.recache_inputs[t.block] = members
            if t.kind == TaskKind.RECACHE and t.device in self.local and self.part.entry:
                for j, _ in t.replaces:
                    self.reencode_until[j] = max(self.reencode_until.get(j, -1), t.tick)
                    made = self.made.get((j, REENCODE))
                    if made is not None:  # its clean latent was made here, before the task was known
                        self.reencode_src[j] = made
        self.until = max(self.until, chunk.until_tick)
        self._starts.extend(chunk.starts)
        self.register_prompts(sorted(prompts))
        tr = chunk.transfers
        if tr is None:
            return
        now = self.tick  # entries at ticks up to it have missed their post: they move now
        late_kv, late_latents = self._merge(self.past, tr.past, now), self._merge(self.sends, tr.latents, now)
        self._merge(self.gang, tr.gang, now)
        self._merge(self.hops, tr.hops, now)
        for (d, ref), tick in tr.keep_until.items():
            if d in self.local and self.keep.get(ref, -1) < tick:
                self.keep[ref] = tick
                if ref in self.pool:
                    self.pool.set_free_after(ref, tick)
                    self.pending.get(ref[0], set()).discard(ref)
        self.kept.update(ref for d, ref in tr.kept_from_gang if d in self.local)
        if late_kv or late_latents:
            self._send(now, late_kv, late_latents, (), {m.ref: self.pool.layers(m.ref) for m in late_kv
                                                       if m.src in self.local})
        for j, last in chunk.retired.items():  # its last reader may still be to run: after that
            when = last + self.ring - 1
            if when <= now:
                self._retire(j)
            else:
                self.retire_at.setdefault(when, []).append(j)

    @staticmethod
    def _merge(into: dict[int, tuple[_M, ...]], entries: dict[int, tuple[_M, ...]], now: int) -> list[_M]:
        """Add a chunk's entries by tick (in the plan's canonical order: both ends post them alike); returns
        those whose tick is ``now`` or earlier, which move at once."""
        late: list[_M] = []
        for tick, new in entries.items():
            if tick <= now:
                late.extend(new)
            else:
                into[tick] = tuple(sorted({*into.get(tick, ()), *new}))
        return late

    def _retire(self, block: int) -> None:
        """No task still to run reads ``block``: drop what was kept for a reader that might have come."""
        for ref in self.pending.pop(block, ()):
            if ref in self.pool:
                if ref in self.keep:
                    self.pool.set_free_after(ref, self.keep[ref])
                else:
                    self.pool.free(ref)
                    self.kept.discard(ref)
        self.made.pop((block, REENCODE), None)
        self.reencode_src.pop(block, None)
        self.reencode_until.pop(block, None)

    def _ready(self, tick: int) -> bool:
        """Whether ``tick`` runs: its tasks are given (a stream declares blocks until they are), or the
        stream is closed and tick is within the last ring's tail."""
        while tick >= self.until:
            if self.feed.closed:
                return tick < self.last_entry + self.ring
            self._adopt(self.feed.more())
        return True

    def register_prompts(self, ids: Sequence[int]) -> None:
        """Make prompt ``ids`` known to the model, conditioned as ``RunOptions`` says.

        An id already registered by this loop with the same text is left alone (its cross-attention
        cache stays valid); each distinct text is encoded at most once while in use. A slice of the model
        computes its own layers' cross-attention K/V only.
        """
        texts = {0: self.options.prompt, **self.options.prompts}
        for pid in ids:
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

    def _drop_prompts(self) -> None:
        """A stream forgets a prompt no block still to finish uses (its cross-attention K/V, and its text's
        embedding): a later switch back to it registers it again."""
        live = self.feed.prompts_from(self.finished)
        for pid in [p for p in self._registered if p not in live]:
            text = self._registered.pop(pid)
            self.model.drop_prompt(pid)
            if text not in self._registered.values():
                self._encoded.pop(text, None)

    def view(self, tick: int) -> StreamView:
        """What a stream's hook sees after ``tick``."""
        in_flight = sum(1 for st in self._starts if st <= tick)
        feed = self.feed
        return StreamView(tick, feed.declared, feed.closed, feed.max_blocks, in_flight)

    @property
    def is_decode_device(self) -> bool:
        return self.decode_device in self.local

    def now(self) -> float:
        return time.perf_counter() - self.t0

    # -- one tick ---------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Run every tick (a stream's until its hook, or ``max_blocks``, ends it); returns this process's
        :class:`RunResult`."""
        self.t0 = time.perf_counter()
        tick = 0
        while self._ready(tick):
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
            self._release(tick)
            if self.hook is not None:
                declaration = self.hook(tick, self.view(tick))
                if declaration is not None:
                    self._adopt(self.feed.declare(declaration))
            tick += 1
        self.transport.finish()
        self._emit_ready()
        if self.is_decode_device and self.next_block != self.feed.declared:
            raise ExecutorError(f"run ended with {self.next_block} of {self.feed.declared} blocks decoded")
        return RunResult(latents=self.latents_out, block_done_s=list(self.block_done_s), wall_s=self.now(),
                         forward_s=self.forward_s, events=[*self.events, *self.transport.events(self.t0)],
                         peak_kv_bytes=self.pool.peak_bytes, blocks=self.next_block)

    def _release(self, tick: int) -> None:
        """After ``tick``: free what its last reader has used, and forget the tick."""
        for j in self.retire_at.pop(tick, ()):
            self._retire(j)
        for ref in self.pool.release_through(tick):  # their last reader ran: nothing of them stays
            self.keep.pop(ref, None)
            self.kept.discard(ref)
        if self.feed.final:  # a stream's later recache task may re-encode it here again, sent once: until retired
            for j in [j for j, until in self.reencode_until.items() if until <= tick]:
                self.reencode_src.pop(j, None)
                del self.reencode_until[j]
        left = self.entering.pop(tick - self.ring + 1, ())  # the gang that left the ring's last device
        self.finished += sum(1 for t in left if t.stage == self.spec.num_stages - 1)
        for table in (self.gang, self.past, self.sends, self.hops):
            table.pop(tick, None)
        starts, span = self._starts, self.spec.tick_span
        while starts and starts[0] + span <= tick + 1:  # finished by the next tick: no longer in flight
            starts.popleft()
        if self.feed.final:
            self.made.clear()  # a whole plan sends every latent at the tick it is made
        else:
            self._drop_prompts()

    def local_tasks(self, tick: int) -> list[Task]:
        """The tasks this process runs at ``tick``: those entering a local device then (the whole model),
        or, on device r of a ring, those that entered its ring at ``tick - r`` (their segment r)."""
        return [t for t in self.entering.get(tick - (self.ring_pos or 0), ()) if self._runs_here(t)]

    def _runs_here(self, task: Task) -> bool:
        """Whether this process runs (a segment of) ``task``."""
        if self.ring_pos is None:
            return task.device in self.local
        segments = self.feed.segments(task)
        return len(segments) > self.ring_pos and segments[self.ring_pos][0] in self.local

    def _failure(self, tick: int, tasks: Sequence[Task], e: Exception) -> ExecutorError:
        """This rank's failure at ``tick``: where (rank, tick, tasks), why, and the schedule's grid with the
        failing cell marked (a whole schedule's; a stream says its tasks only)."""
        where = ", ".join(map(str, tasks)) or "no local task"
        device = min(self.local) if self.ring_pos is not None or not tasks else tasks[0].device
        grid = ""
        if isinstance(self.feed, WholeFeed):
            try:
                grid = "\n" + render_grid(self.feed.schedule, mark=(tick, device))
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
                x = out.hidden.x[i * self.frames:(i + n) * self.frames]
                self.outbox.hidden[task.ref] = list(torch.split(x, self.frames))
            i += n

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
        """A recache task: one cache pass per block it re-encodes (``Schedule.forward_inputs``: the versions
        it writes, causal among them), on the block's clean latent under the new prompt, one joint forward."""
        inputs: list[TaskInput] = []
        for ref, reads in self.recache_inputs.pop(task.block):
            j = ref[0]
            x0 = self.blank
            if self.part.entry:
                try:
                    x0 = self.reencode_src[j]
                except KeyError:
                    raise ExecutorError(f"rank {self.rank}: no clean latent of block {j} for {task}") from None
            inputs.append(TaskInput(ref=ref, latent=x0.to(self.model.dtype), timestep=0.0,
                                    frame_offset=j * self.spec.frames_per_block, prompt=task.prompt, reads=reads))

        def finish(velocity: list[Tensor] | None, kv: list[list[KVPair]]) -> None:
            for x, layers in zip(inputs, kv, strict=True):
                self._publish(x.ref, layers)

        return _Step(inputs, finish)

    def _latent_in(self, task: Task) -> Tensor:
        """The input latent of a block's stage: fresh noise at stage 0, else what the last stage made."""
        b, s = task.block, task.stage
        if s == 0:
            return noise(self.spec.seed, b, 0, self.shape).to(self.model.device, self.latent_dtype)
        try:
            return self.latent[b]
        except KeyError:
            raise ExecutorError(f"rank {self.rank}: no latent for {task} (it never arrived)") from None

    def _input(self, task: Task, x: Tensor, timestep: float) -> TaskInput:
        return TaskInput(ref=task.ref, latent=x.to(self.model.dtype), timestep=timestep,
                         frame_offset=task.block * self.spec.frames_per_block, prompt=task.prompt,
                         reads=task.reads)

    # -- K/V: what is kept, what moves --------------------------------------------------------------------
    def _lookup(self, ref: KVRef, layer: int) -> KVPair:
        self.transport.wait_kv(ref, layer)
        return self.pool.get(ref, layer - self.first_layer)  # the pool holds this process's layers only

    def _hold(self, ref: KVRef, layers: list[KVPair], tick: int) -> bool:
        """Keep version ``ref`` (this process's layers of it), made or received at ``tick``, while a task may
        still read it here or a late send may still need it: until its last local reader when the plan says
        (``keep_until``), else, in a stream, until the contract's horizon (:func:`~executors.feed.read_horizon`)
        or, where only the window bounds it, until its block retires. Returns whether it is held."""
        if ref in self.pool:
            return True
        free = self.keep.get(ref)
        if free is None:
            if self.feed.final:
                return False  # the whole plan: no local task reads it later
            free = read_horizon(self.spec, ref, tick)
            if free is not None and free <= tick:
                return False
        self.pool.commit(ref, layers, free_after_tick=free)
        if free is None:
            self.pending.setdefault(ref[0], set()).add(ref)
        return True

    def _exchange(self, tick: int, layer: int, local: dict[KVRef, KVPair]) -> dict[KVRef, KVPair]:
        """The per-layer joint-attention exchange of ``tick``; a peer's version that a local task may read
        again at a later tick is kept, and held once every local layer has come."""
        peers = self.transport.exchange(tick, layer, self.gang.get(tick, ()), local)
        for ref, kv in peers.items():
            if ref in self.kept or not self.feed.final:
                layers = self.gang_kept.setdefault(ref, [])
                layers.append(kv)
                if layer + 1 == self.end_layer:
                    self._hold(ref, self.gang_kept.pop(ref), tick)
        return peers

    def _post(self, tick: int) -> None:
        """Send the tick's past K/V, latents and hidden states, and take what arrives (K/V into the pool,
        latents, the hidden states of the next tick)."""
        outbox, self.outbox = self.outbox, Mail()
        self._send(tick, self.past.get(tick, ()), self.sends.get(tick, ()), self.hops.get(tick, ()), outbox.kv,
                   outbox.hidden)

    def _send(self, tick: int, kv: Sequence[KVSend], latents: Sequence[LatentSend], hops: Sequence[HiddenSend],
              versions: dict[KVRef, list[KVPair]], hidden: dict[KVRef, list[Tensor]] | None = None) -> None:
        """Post messages of the plan (those of ``tick``, or ones whose tick has run) with what this process
        sends of them, and take what arrives."""
        mail = Mail(kv=versions, hidden=hidden or {})
        out = [m for m in latents if m.src in self.local and m.dst not in self.local]
        for m in out:
            mail.latents[(m.block, m.purpose)] = self.made[(m.block, m.purpose)]
        inbox = self.transport.post(tick, kv, latents, hops, mail)
        for m in out:  # a latent made for one next stage or decode goes once; a clean one may go again
            if m.purpose != REENCODE:
                self.made.pop((m.block, m.purpose), None)
        for ref, layers in inbox.kv.items():
            self._hold(ref, layers, tick)
        for (block, purpose), x in inbox.latents.items():
            self.receive_latent(block, purpose, x)
        self.hidden.update(inbox.hidden)

    def _publish(self, ref: KVRef, kv: list[KVPair]) -> None:
        """Keep a version a local task may read later (:meth:`_hold`); queue it for the processes that read
        it after this tick."""
        self._hold(ref, kv, self.tick)
        if any(m.ref == ref and m.src in self.local and m.dst not in self.local for m in self.past.get(self.tick, ())):
            self.outbox.kv[ref] = kv

    # -- latents ----------------------------------------------------------------------------------------------
    def _sample(self, task: Task, x: Tensor, velocity: Tensor) -> None:
        """The sampler update after a denoise stage (on the device that runs the head), then where its
        latent goes next: the next stage's first device (its input) and the device that runs its head (the
        next sampler step's), and the clean latent to the decode device (and to the recache tasks that
        re-encode it)."""
        b, s = task.block, task.stage
        spec = self.spec
        steps = spec.timesteps
        last = s + 1 == spec.num_denoise
        eps = None if last else noise(spec.seed, b, s + 1, self.shape).to(x.device, self.latent_dtype)
        x0, nxt = self.options.sampler.step(x.to(self.latent_dtype), velocity.to(self.latent_dtype), steps[s],
                                            None if last else steps[s + 1], eps)
        if last:
            if self.is_decode_device:
                self.clean[b] = x0
            else:
                self.made[(b, DECODE)] = x0
            if b in self.reencode_until:
                self.reencode_src[b] = x0
            if self.recache:  # a recache task of a later switch may re-encode it, here or elsewhere
                self.made[(b, REENCODE)] = x0
        self.latent.pop(b, None)
        if s + 1 < spec.num_stages:
            segments = self.feed.stage_segments(b, s + 1, task.tick + spec.stage_stride)
            if segments[0][0] in self.local or (segments[-1][0] in self.local and s + 1 < spec.num_denoise):
                self.latent[b] = nxt
            if segments[0][0] not in self.local:
                self.made[(b, NEXT)] = nxt

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
            if self.options.history is None:
                self.latents_out.append(x0)
            self.block_done_s.append(self.now())
            if self.on_block is not None:
                start = self.now()
                self.on_block(b, x0)
                self.events.append(TraceEvent(decode_name(b), self.decode_device, DECODE_TRACK, start,
                                              self.now() - start, {"block": b}))
            self.next_block += 1


@dataclass(frozen=True)
class _Step:
    """One local task in a tick: its model inputs (one, or a recache task's several), and what runs on
    its share of the forward's outputs."""

    inputs: list[TaskInput]
    finish: Callable[[list[Tensor] | None, list[list[KVPair]]], None]  # (velocities where the head ran, K/V)


class Executor(Protocol):
    """Runs a schedule, or a stream, with a model and returns the decode device's :class:`RunResult`; a
    stream's ``hook`` may switch its prompt and end it between ticks (:mod:`executors.feed`)."""

    name: str

    def run(self, work: Work, model: CausalWanDiT, options: RunOptions,
            on_block: BlockCallback | None = None, hook: StreamHook | None = None) -> RunResult:
        ...
