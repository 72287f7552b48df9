"""Tasks and schedules: the cascade as small immutable values, built by a pure function of the spec.

``build_schedule(spec)`` implements the semantic contract (docs/contract.md) exactly: start ticks from the lags, every
(block, stage) task at ``start(b) + s``, the KV versions each task reads, gangs per tick, commit and
decode-ready ticks, and the tick after which each committed block may be freed.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from typing import NamedTuple, TypeVar

from cascade_sched.errors import ScheduleError
from cascade_sched.placement import Segment, ring_segments
from cascade_sched.spec import CascadeSpec

KVRef = tuple[int, int]
"""A KV version: ``(block, stage)`` = the K/V block ``block`` wrote at stage ``stage``."""

class TaskKind(str, Enum):
    """What a task computes. A ``str`` enum: it compares equal to its value and is written as it in JSON.

    - ``denoise``: one denoise stage of a block (a forward, then the sampler step);
    - ``cache``: the block's cache pass at t=0 on its clean latent (writes the committed KV);
    - ``recache``: before a prompt switch (policy ``recache``), one cache pass under the new prompt per
      block it *replaces* (``Task.replaces``), on their clean latents, causal among them.
    """

    DENOISE = "denoise"
    CACHE = "cache"
    RECACHE = "recache"

    def __str__(self) -> str:
        return self.value


RECACHE_STAGE = -1
"""A recache task is ``(p, -1)``: it runs on the tick before block p's first stage."""


class Task(NamedTuple):
    """One (block, stage) at a tick on a device, with the KV versions of other blocks it reads.

    ``str(task)`` is the compact form ``B3S1@d2`` (``B3R@d0`` for block 3's recache task);
    :func:`parse_task` reads it back. ``prompt`` is the prompt id the task is conditioned on.
    ``reads`` are the versions whose K/V the task attends to (empty for a recache task, which computes
    from clean latents); ``replaces`` are, for a recache task only, the committed versions it re-encodes.
    """

    block: int
    stage: int
    tick: int
    device: int
    kind: TaskKind
    timestep: float
    reads: tuple[KVRef, ...] = ()
    prompt: int = 0
    replaces: tuple[KVRef, ...] = ()

    @property
    def ref(self) -> KVRef:
        """The KV version this task writes (``(p, -1)`` names a recache task; it writes :meth:`Schedule.writes`)."""
        return (self.block, self.stage)

    @property
    def name(self) -> str:
        """The compact name without the device: ``B3S1``, or ``B3R`` for block 3's recache task."""
        return task_name(self.block, self.stage)

    def __str__(self) -> str:
        return f"{self.name}@d{self.device}"


def task_name(block: int, stage: int) -> str:
    """``B3S1`` for (3, 1); ``B3R`` for block 3's recache task (stage -1). Every trace and grid uses it.

    >>> task_name(3, 1), task_name(3, RECACHE_STAGE)
    ('B3S1', 'B3R')
    """
    return f"B{block}R" if stage == RECACHE_STAGE else f"B{block}S{stage}"


class ForwardInput(NamedTuple):
    """One member of a forward: the version it writes and the versions it attends to (see
    :meth:`Schedule.forward_inputs`)."""

    ref: KVRef
    reads: tuple[KVRef, ...]


_K = TypeVar("_K", bound=Hashable)


def share_groups(keys: Iterable[_K]) -> list[tuple[_K, list[int]]]:
    """The batching rule of attention: members of one forward whose keys are identical share one attention
    call. Returns ``[(key, member indices)]`` in first-seen order (members in order within a group).

    The model applies it to key sets (:func:`attention_groups`) and to prompts (cross-attention).

    >>> share_groups(["a", "b", "a"])
    [('a', [0, 2]), ('b', [1])]
    """
    groups: dict[_K, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return list(groups.items())


def attention_groups(
    inputs: Iterable[tuple[Sequence[int], Iterable[Sequence[int]]]],
) -> list[tuple[tuple[KVRef, ...], list[int]]]:
    """Members of one forward that share one self-attention call: those whose key sets (the version a
    member writes plus the versions it reads, in block order) are identical. ``inputs`` are
    ``(ref, reads)`` pairs (a :class:`ForwardInput`, or the model's task inputs); returns
    ``[(key set in block order, member indices)]`` in first-seen order. The model's tick forward batches
    its SDPA by it, and the compiled executor derives its attention shapes from it.

    >>> attention_groups([((1, 0), [(0, 1)]), ((0, 1), [(1, 0)]), ((2, 0), [(0, 4)])])
    [(((0, 1), (1, 0)), [0, 1]), (((0, 4), (2, 0)), [2])]
    """
    return share_groups(tuple(sorted([(ref[0], ref[1]), *((r[0], r[1]) for r in reads)]))
                        for ref, reads in inputs)


_TASK_RE = re.compile(r"^B(\d+)(?:S(\d+)|(R))@d(\d+)$")


def parse_task(text: str, schedule: Schedule) -> Task:
    """Look up the task named by its compact form in ``schedule`` (the inverse of ``str(task)``).

    >>> s = build_schedule(CascadeSpec(num_blocks=2, num_devices=2))
    >>> str(parse_task("B1S0@d1", s))
    'B1S0@d1'
    """
    m = _TASK_RE.match(text.strip())
    if not m:
        raise ScheduleError(f"not a task name: {text!r} (expected the form B<block>S<stage>@d<device>)")
    block, stage, device = int(m.group(1)), RECACHE_STAGE if m.group(3) else int(m.group(2)), int(m.group(4))
    task = schedule.task(block, stage)
    if task.device != device:
        raise ScheduleError(f"{text} names device {device}, but the schedule places it as {task}")
    return task


@dataclass(frozen=True)
class Schedule:
    """A built cascade: ``tasks`` sorted by (tick, block), plus the per-block start and free ticks.

    ``free_after[b]`` is the last tick at which any task reads block b's committed KV (its commit tick
    when nothing does): after it the KV pool may free the block. ``recache_free_after`` does the same for
    the re-encoded versions ``(j, S + q)`` that the recache task of switch q writes.

    A task's ``tick`` is the tick it *enters* its device (its ring's first device under placement
    ``layers``); :meth:`segments` says which devices run which of its layers, one tick each.
    ``custom_segments`` holds the segments of tasks that differ from the spec's placement rule (a
    hand-edited file); every other task's segments follow from its device (:func:`ring_segments`).
    """

    spec: CascadeSpec
    tasks: tuple[Task, ...]
    starts: tuple[int, ...]
    free_after: tuple[int, ...]
    recache_free_after: Mapping[KVRef, int] = field(default_factory=dict)
    custom_segments: Mapping[KVRef, tuple[Segment, ...]] = field(default_factory=dict)

    @property
    def num_stages(self) -> int:
        return self.spec.num_stages

    @property
    def num_blocks(self) -> int:
        return self.spec.num_blocks

    @property
    def num_devices(self) -> int:
        return self.spec.num_devices

    @cached_property
    def num_ticks(self) -> int:
        """Ticks from the first task to the last commit, inclusive: a task entering a ring of W devices
        at tick n runs its last segment at tick n + W - 1."""
        return max(t.tick for t in self.tasks) + self.spec.ring_size if self.tasks else 0

    def exit_tick(self, task: Task) -> int:
        """The tick of ``task``'s last segment (its own tick unless it runs through a ring): the head, the
        sampler step and its latent's send happen then, on its last segment's device."""
        return task.tick + len(self.segments(task)) - 1

    def decode_ready_tick(self, block: int) -> int:
        """The tick at whose end the block's clean latent exists: its last denoise stage's last segment."""
        spec = self.spec
        return self.starts[block] + (spec.num_denoise - 1) * spec.stage_stride + spec.ring_size - 1

    @cached_property
    def _rings(self) -> dict[int, tuple[Segment, ...]]:
        return {}

    def segments(self, task: Task) -> tuple[Segment, ...]:
        """The ``(device, first_layer, end_layer)`` segments ``task`` runs, in order, segment r at tick
        ``task.tick + r``: one segment of all layers (end None when the spec does not know the layer
        count) for the block and stage placements, its ring for placement ``layers``. Empty when the
        task's device starts no ring (``validate`` reports it).

        >>> s = build_schedule(CascadeSpec(num_blocks=2, lag=1, num_devices=2, placement="layers",
        ...                                stage_stride=2, num_layers=30))
        >>> s.segments(s.task(1, 0))
        ((0, 0, 15), (1, 15, 30))
        """
        if self.custom_segments:
            custom = self.custom_segments.get((task.block, task.stage))
            if custom is not None:
                return custom
        rings = self._rings
        out = rings.get(task.device)
        if out is None:
            out = rings[task.device] = ring_segments(self.spec, task.device) or ()
        return out

    @cached_property
    def _index(self) -> dict[KVRef, Task]:
        return {t.ref: t for t in self.tasks}

    def task(self, block: int, stage: int) -> Task:
        """The task (block, stage) (stage -1: the block's recache task); ``ScheduleError`` if none."""
        try:
            return self._index[(block, stage)]
        except KeyError:
            raise ScheduleError(f"the schedule has no task B{block}S{stage}") from None

    def writes(self, task: Task) -> tuple[KVRef, ...]:
        """The KV versions ``task`` writes: its own ``(block, stage)``, or for a recache task of switch q
        the re-encoded ``(j, S + q)`` of every block it replaces."""
        if task.kind != TaskKind.RECACHE:
            return (task.ref,)
        q = next(q for q, at in self.spec.recache_switches if at == task.block)
        return tuple((j, self.num_stages + q) for j, _ in task.replaces)

    def forward_inputs(self, task: Task) -> tuple[ForwardInput, ...]:
        """The members ``task`` adds to its device's forward: the task itself (its version and reads), or
        for a recache task one cache pass per version it writes, each reading the re-encoded versions
        before it (causal among them, nothing else). Executors, compiled buckets and the simulator all
        expand a task through this one function.

        >>> s = build_schedule(CascadeSpec(num_blocks=3, switches=((2, 1),), switch_policy="recache"))
        >>> s.forward_inputs(s.task(2, RECACHE_STAGE))
        (ForwardInput(ref=(0, 5), reads=()), ForwardInput(ref=(1, 5), reads=((0, 5),)))
        """
        if task.kind != TaskKind.RECACHE:
            return (ForwardInput(task.ref, task.reads),)
        refs = self.writes(task)
        return tuple(ForwardInput(ref, refs[:i]) for i, ref in enumerate(refs))

    @cached_property
    def _producers(self) -> dict[KVRef, Task]:
        out: dict[KVRef, Task] = {}
        for t in self.tasks:
            out.update((ref, t) for ref in self.writes(t))
        return out

    def producer(self, ref: KVRef) -> Task:
        """The task that writes KV version ``ref``."""
        try:
            return self._producers[(ref[0], ref[1])]
        except KeyError:
            raise ScheduleError(f"no task writes KV version B{ref[0]}S{ref[1]}") from None

    def version_tick(self, ref: KVRef) -> int:
        """The tick at which the task writing KV version ``ref`` enters its device (its first segment)."""
        if ref[1] < self.num_stages:
            return self.starts[ref[0]] + ref[1] * self.spec.stage_stride
        return self.producer(ref).tick

    @cached_property
    def gangs(self) -> tuple[tuple[Task, ...], ...]:
        """The tasks entering at each tick (index = tick), in block order: one joint forward per tick
        (under placement ``layers`` it moves through the ring together, one device per tick)."""
        by_tick: list[list[Task]] = [[] for _ in range(self.num_ticks)]
        for t in self.tasks:
            by_tick[t.tick].append(t)
        return tuple(tuple(g) for g in by_tick)

    def in_flight(self, tick: int) -> range:
        """The blocks in flight at ``tick``: every b with ``start(b) <= tick <= start(b) + (S-1)*k``."""
        return in_flight(self.starts, self.spec.tick_span, tick)

    def max_in_flight(self) -> int:
        """The largest number of blocks in flight at any tick (a recache task is no block in flight)."""
        import bisect

        span, starts = self.spec.tick_span, self.starts
        return max((b + 1 - bisect.bisect_right(starts, sb - span) for b, sb in enumerate(starts)), default=0)

    def __str__(self) -> str:
        from cascade_sched.render import render_grid

        return render_grid(self)


def stage_kinds(spec: CascadeSpec) -> tuple[TaskKind, ...]:
    """The kind of every stage: ``K`` denoise stages, then the cache stage when ``cache_pass`` is on.

    >>> [str(k) for k in stage_kinds(CascadeSpec(num_blocks=1, timesteps=(1000, 500)))]
    ['denoise', 'denoise', 'cache']
    """
    return (TaskKind.DENOISE,) * spec.num_denoise + ((TaskKind.CACHE,) if spec.cache_pass else ())


def in_flight(starts: Sequence[int], tick_span: int, tick: int) -> range:
    """Blocks in flight at ``tick`` (``start(b) <= tick < start(b) + tick_span``); starts increase, so they
    form a contiguous range."""
    import bisect

    hi = bisect.bisect_right(starts, tick)  # blocks started at or before tick
    lo = bisect.bisect_right(starts, tick - tick_span)  # blocks already finished before tick
    return range(lo, hi)


def build_schedule(spec: CascadeSpec) -> Schedule:
    """Build the schedule of ``spec``: every task, its tick, device and KV reads (docs/contract.md).

    The rules are stated once, block by block, in :class:`cascade_sched.rolling.RollingSchedule`; a
    whole schedule is the rolling one with every block declared at once.

    >>> s = build_schedule(CascadeSpec(num_blocks=3, lag=1, num_devices=3))
    >>> [str(t) for t in s.gangs[1]]
    ['B0S1@d0', 'B1S0@d1']
    >>> s.task(1, 0).reads  # block 1's first stage reads block 0's version of the same tick
    ((0, 1),)
    """
    from cascade_sched.rolling import RollingSchedule  # it builds Tasks: imported here, not at the top

    with gc_paused():
        return RollingSchedule.whole(spec)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: schedules are many small acyclic tuples, and the collector's
    full passes over them would make building and validating grow faster than linearly in blocks."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def extend_schedule(schedule: Schedule, extra_blocks: int, switches: Sequence[tuple[int, int]] = ()) -> Schedule:
    """The schedule with ``extra_blocks`` more blocks and more prompt switches, for streaming sessions.

    Every task before the first new task (the first new block's first stage, or a new recache task) is
    unchanged, so a run can switch to the extended schedule between ticks.

    >>> s = build_schedule(CascadeSpec(num_blocks=3, lag=1))
    >>> e = extend_schedule(s, 2, [(3, 1)])
    >>> e.tasks[:len(s.gangs[0])] == s.tasks[:len(s.gangs[0])], e.task(4, 0).prompt
    (True, 1)
    """
    return build_schedule(schedule.spec.extended(extra_blocks, switches))
