"""The schedule as the tick loop consumes it: tasks and the transfer plan's entries, tick by tick.

A run is given a whole :class:`~cascade_sched.schedule.Schedule` (a run of known length), or a
:class:`Stream`: a :class:`~cascade_sched.rolling.RollingSchedule` that the loop declares one block at a
time, whenever the next tick needs one, so a stream never drains and never re-plans what came before.
Both reach the loop the same way, as :class:`~cascade_sched.rolling.ScheduleChunk` values: a whole schedule
is one chunk with every transfer entry final (:func:`plan_transfers`), a stream a chunk per advance of its
rolling schedule, whose transfer entries may name ticks already run (a version or latent made then and
needed now for the first time; the loop kept it).

Between ticks a stream's hook (:data:`StreamHook`) may ask for a prompt switch at the next block not yet
declared, or for the end (:class:`Declaration`); the loop applies it to its rolling schedule, so the work
per block does not grow with the blocks before it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from cascade_sched.placement import Segment, placer, ring_segments
from cascade_sched.rolling import RollingSchedule, ScheduleChunk
from cascade_sched.schedule import ForwardInput, KVRef, Schedule, Task
from cascade_sched.spec import CascadeSpec
from cascade_sched.transfers import TransferChunk, plan_transfers

__all__ = ["Declaration", "Feed", "RollingFeed", "Stream", "StreamHook", "StreamView", "WholeFeed", "read_horizon"]


@dataclass(frozen=True)
class Stream:
    """A schedule that goes on while it runs: ``spec`` gives the cascade's settings, its first blocks
    (``num_blocks``) and switches; the loop declares one more block whenever the next tick needs one, up to
    ``max_blocks`` blocks (None: until the hook ends it).

    >>> Stream(CascadeSpec(num_blocks=1, lag=1), max_blocks=100).max_blocks
    100
    """

    spec: CascadeSpec
    max_blocks: int | None = None


@dataclass(frozen=True)
class StreamView:
    """What a stream's hook sees after a tick: the blocks declared so far (a switch asked for now applies from
    block ``declared``), whether the stream is closed, its bound, and the blocks in flight at the tick."""

    tick: int
    declared: int
    closed: bool
    max_blocks: int | None
    in_flight: int = 0


@dataclass(frozen=True)
class Declaration:
    """What a stream's hook asks for after a tick: blocks from the next one not yet declared use prompt id
    ``switch`` (the newer of two asked for before that block wins), and/or ``end``: no block after those
    declared, and the one a switch was asked for (the blocks in flight finish)."""

    switch: int | None = None
    end: bool = False


StreamHook = Callable[[int, StreamView], "Declaration | None"]
"""Called after each tick of a stream with ``(tick, view)``; returns what to declare, or None.

On N ranks every rank calls the hook of the distributed executor, which runs rank 0's and broadcasts its
answer (``executors.distributed.AgreedHook``), so every rank declares the same after the same tick."""


def read_horizon(spec: CascadeSpec, ref: KVRef, made: int) -> int | None:
    """The last tick at which a task can still read version ``ref``, made at tick ``made`` on the device
    that holds it, when the contract bounds it without the window (docs/contract.md): under ``causal`` and
    ``bidirectional`` a version below the commit stage is read while it is its block's newest, at the ticks
    ``made .. made + k - 1``; under ``stale`` one tick later, ``made + 1 .. made + k``. None for committed and
    re-encoded versions, and for every version under ``stage`` (a later block reads each stage's version at
    its own stage), which only the window bounds: the rolling schedule retires them.

    >>> spec = CascadeSpec(num_blocks=4, lag=1, stage_stride=2, attention="stale")
    >>> read_horizon(spec, (1, 2), 7), read_horizon(spec, (1, 4), 9)
    (9, None)
    """
    if spec.attention == "stage" or ref[1] >= spec.num_stages - 1:
        return None
    return made + spec.stage_stride - (0 if spec.attention == "stale" else 1)


class Feed:
    """What the loop asks of its schedule: the first chunk, one more block, a hook's declaration, and each
    task's segments. :class:`WholeFeed` and :class:`RollingFeed` answer it."""

    spec: CascadeSpec
    final: bool  # every transfer entry is known when its tick runs (a whole schedule)
    closed: bool
    declared: int
    max_blocks: int | None

    def first(self) -> ScheduleChunk:
        raise NotImplementedError

    def more(self) -> ScheduleChunk:
        """One more block (or the end, at ``max_blocks``): the next tick needs it."""
        raise NotImplementedError

    def declare(self, declaration: Declaration) -> ScheduleChunk | None:
        """Apply a hook's declaration; the chunk it made final, if any."""
        raise NotImplementedError

    def segments(self, task: Task) -> tuple[Segment, ...]:
        raise NotImplementedError

    def stage_segments(self, block: int, stage: int, tick: int) -> tuple[Segment, ...]:
        """The segments of task (``block``, ``stage``), which enters at ``tick``."""
        raise NotImplementedError

    def forward_inputs(self, task: Task) -> tuple[ForwardInput, ...]:
        """A recache task's forward members (``Schedule.forward_inputs``); asked once per recache task."""
        raise NotImplementedError

    def prompts_from(self, block: int) -> set[int]:
        """The prompt ids of the declared blocks from ``block`` on (asked for with ``block`` not decreasing)."""
        raise NotImplementedError


class WholeFeed(Feed):
    """A built schedule, given to the loop as one chunk with its whole transfer plan."""

    final = True
    closed = True

    def __init__(self, schedule: Schedule) -> None:
        self.schedule, self.spec = schedule, schedule.spec
        self.declared, self.max_blocks = schedule.num_blocks, schedule.num_blocks

    def first(self) -> ScheduleChunk:
        s = self.schedule
        plan = plan_transfers(s)
        transfers = TransferChunk(gang=_by_tick(plan.gang), past=_by_tick(plan.past), latents=_by_tick(plan.latents),
                                  hops=_by_tick(plan.hops), keep_until=plan.keep_until, first_read=plan.first_read,
                                  kept_from_gang=plan.kept_from_gang)
        last = max((t.tick for t in s.tasks), default=-1)
        return ScheduleChunk(from_tick=0, until_tick=last + 1, tasks=s.tasks, first_block=0, starts=s.starts,
                             free_after=dict(enumerate(s.free_after)), recache_free_after=dict(s.recache_free_after),
                             retired={}, transfers=transfers)

    def more(self) -> ScheduleChunk:
        raise AssertionError("a whole schedule is given at once")

    def declare(self, declaration: Declaration) -> ScheduleChunk | None:
        return None

    def segments(self, task: Task) -> tuple[Segment, ...]:
        return self.schedule.segments(task)

    def stage_segments(self, block: int, stage: int, tick: int) -> tuple[Segment, ...]:
        return self.schedule.segments(self.schedule.task(block, stage))

    def forward_inputs(self, task: Task) -> tuple[ForwardInput, ...]:
        return self.schedule.forward_inputs(task)

    def prompts_from(self, block: int) -> set[int]:
        spec = self.spec
        return {spec.prompt_of(block), *(p for at, p in spec.switches if at >= block)}


_E = TypeVar("_E")


def _by_tick(entries: tuple[tuple[_E, ...], ...]) -> dict[int, tuple[_E, ...]]:
    """A plan's per-tick tuples as a chunk states them: the ticks that have entries."""
    return {t: e for t, e in enumerate(entries) if e}


class RollingFeed(Feed):
    """A :class:`Stream`'s rolling schedule: one block declared at a time, switches at the next block."""

    final = False

    def __init__(self, stream: Stream) -> None:
        self.spec, self.max_blocks = stream.spec, stream.max_blocks
        self.rolling = RollingSchedule(stream.spec)
        self.closed = False
        self._place = placer(stream.spec)
        self._rings: dict[int, tuple[Segment, ...]] = {}
        self._switch: int | None = None  # a prompt id asked for from the next block to declare
        # Switches are numbered as declared (the core's q): a recache task at block p writes (j, S + q).
        self._switches = len(stream.spec.switches)
        self._recache_q = {at: q for q, at in stream.spec.recache_switches}  # block -> q, until its task
        # (first block, prompt id) of every prompt a declared block still to finish may use, in block order
        spec = stream.spec
        self._prompts = [(0, spec.prompt_of(0)), *((at, p) for at, p in spec.switches if at)]

    @property
    def declared(self) -> int:  # type: ignore[override]  # read-only here: the rolling schedule counts
        return self.rolling.declared

    def _close(self) -> None:
        self.rolling.close()
        self.closed = True

    def _full(self) -> bool:
        return self.max_blocks is not None and self.rolling.declared >= self.max_blocks

    def first(self) -> ScheduleChunk:
        if self._full():
            self._close()
        return self.rolling.advance()

    def more(self) -> ScheduleChunk:
        if self._full():
            self._close()
        else:
            self._extend()
        return self.rolling.advance()

    def _extend(self) -> None:
        """Declare one block, with the switch asked for."""
        switches = [] if self._switch is None else [(self.rolling.declared, self._switch)]
        if switches and self.spec.switch_policy == "recache" and self.rolling.declared >= 1:
            self._recache_q[self.rolling.declared] = self._switches
        self._switches += len(switches)
        self._prompts.extend(switches)
        self._switch = None
        self.rolling.extend(1, switches)

    def declare(self, declaration: Declaration) -> ScheduleChunk | None:
        if self.closed:
            return None
        if declaration.switch is not None and not self._full():
            self._switch = declaration.switch
        if declaration.end:
            if self._switch is not None:  # a switch declared before the end: its block is declared too
                self._extend()
            self._close()
            return self.rolling.advance()
        return None

    def segments(self, task: Task) -> tuple[Segment, ...]:
        out = self._rings.get(task.device)
        if out is None:
            out = self._rings[task.device] = ring_segments(self.spec, task.device) or ()
        return out

    def stage_segments(self, block: int, stage: int, tick: int) -> tuple[Segment, ...]:
        device = self._place(block, stage, tick, self.spec.num_devices)
        out = self._rings.get(device)
        if out is None:
            out = self._rings[device] = ring_segments(self.spec, device) or ()
        return out

    def forward_inputs(self, task: Task) -> tuple[ForwardInput, ...]:
        # Schedule.forward_inputs of the rolling schedule: one cache pass per version the task writes, each
        # reading the ones before it.
        q = self._recache_q.pop(task.block)
        refs = tuple((j, self.spec.num_stages + q) for j, _ in task.replaces)
        return tuple(ForwardInput(ref, refs[:i]) for i, ref in enumerate(refs))

    def prompts_from(self, block: int) -> set[int]:
        prompts = self._prompts
        while len(prompts) > 1 and prompts[1][0] <= block:  # blocks before `block` are done with it
            prompts.pop(0)
        return {p for _, p in prompts}
