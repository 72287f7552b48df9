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
from cascade_sched.placement import PLACEMENTS
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
    """

    spec: CascadeSpec
    tasks: tuple[Task, ...]
    starts: tuple[int, ...]
    free_after: tuple[int, ...]
    recache_free_after: Mapping[KVRef, int] = field(default_factory=dict)

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
        """Ticks from the first task to the last commit, inclusive."""
        return max(t.tick for t in self.tasks) + 1 if self.tasks else 0

    def decode_ready_tick(self, block: int) -> int:
        """The tick of the block's last denoise stage: after it the clean latent can be decoded."""
        return self.starts[block] + self.spec.num_denoise - 1

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
        """The tick at which KV version ``ref`` is written."""
        if ref[1] < self.num_stages:
            return self.starts[ref[0]] + ref[1]
        return self.producer(ref).tick

    @cached_property
    def gangs(self) -> tuple[tuple[Task, ...], ...]:
        """The tasks of each tick (index = tick), in block order: one joint forward per tick."""
        by_tick: list[list[Task]] = [[] for _ in range(self.num_ticks)]
        for t in self.tasks:
            by_tick[t.tick].append(t)
        return tuple(tuple(g) for g in by_tick)

    def in_flight(self, tick: int) -> range:
        """The blocks in flight at ``tick``: every b with ``start(b) <= tick < start(b) + S``."""
        return in_flight(self.starts, self.num_stages, tick)

    def max_in_flight(self) -> int:
        """The largest number of blocks in flight at any tick (recache tasks are not blocks in flight)."""
        return max((sum(1 for t in g if t.kind != TaskKind.RECACHE) for g in self.gangs), default=0)

    def __str__(self) -> str:
        from cascade_sched.render import render_grid

        return render_grid(self)


def stage_kinds(spec: CascadeSpec) -> tuple[TaskKind, ...]:
    """The kind of every stage: ``K`` denoise stages, then the cache stage when ``cache_pass`` is on.

    >>> [str(k) for k in stage_kinds(CascadeSpec(num_blocks=1, timesteps=(1000, 500)))]
    ['denoise', 'denoise', 'cache']
    """
    return (TaskKind.DENOISE,) * spec.num_denoise + ((TaskKind.CACHE,) if spec.cache_pass else ())


def start_ticks(lags: tuple[int, ...], recache_blocks: frozenset[int] = frozenset()) -> tuple[int, ...]:
    """``start(0) = 0`` and ``start(b+1) = start(b) + lag(b)``, plus one tick before every block that
    a recache task precedes.

    >>> start_ticks((1, 2, 5)), start_ticks((1, 2, 5), frozenset({2}))
    ((0, 1, 3, 8), (0, 1, 4, 9))
    """
    out = [0]
    for b, lag in enumerate(lags):
        out.append(out[-1] + lag + (1 if b + 1 in recache_blocks else 0))
    return tuple(out)


def in_flight(starts: tuple[int, ...], num_stages: int, tick: int) -> range:
    """Blocks in flight at ``tick``; starts are non-decreasing, so they form a contiguous range."""
    import bisect

    hi = bisect.bisect_right(starts, tick)  # blocks started at or before tick
    lo = bisect.bisect_right(starts, tick - num_stages)  # blocks already finished before tick
    return range(lo, hi)


def build_schedule(spec: CascadeSpec) -> Schedule:
    """Build the schedule of ``spec``; see :func:`_build`."""
    with gc_paused():
        return _build(spec)


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


def _build(spec: CascadeSpec) -> Schedule:
    """Build the schedule of ``spec``: every task, its tick, device and KV reads (docs/contract.md).

    >>> s = build_schedule(CascadeSpec(num_blocks=3, lag=1, num_devices=3))
    >>> [str(t) for t in s.gangs[1]]
    ['B0S1@d0', 'B1S0@d1']
    >>> s.task(1, 0).reads  # block 1's first stage reads block 0's version of the same tick
    ((0, 1),)
    """
    n_blocks, n_stages = spec.num_blocks, spec.num_stages
    recache = spec.recache_switches
    starts = start_ticks(spec.lags, frozenset(at for _, at in recache))
    last = n_stages - 1
    kinds = stage_kinds(spec)
    stage_t = spec.stage_timesteps
    place = PLACEMENTS[spec.placement]
    n_dev = spec.num_devices
    window, sink, mode = spec.window, spec.sink, spec.attention
    stale, bidir = mode == "stale", mode == "bidirectional"
    prompts = [spec.prompt_of(b) for b in range(n_blocks)]
    # Interned refs: every version tuple exists once, so reads share memory and compare fast.
    versions = [[(b, s) for s in range(n_stages)] for b in range(n_blocks)]
    free_after = [starts[b] + last for b in range(n_blocks)]
    by_tick: list[list[Task]] = [[] for _ in range(starts[-1] + n_stages)]

    def visible_earlier(b: int) -> list[int]:
        lo = 0 if window is None else max(0, b - window + 1)
        return list(range(min(sink, lo))) + list(range(lo, b))

    # Recache tasks first (in switch order): each re-encodes the versions its block will read that are
    # committed by then; later reads of those blocks see the newest re-encoded version.
    reencoded: dict[int, list[tuple[int, KVRef]]] = {}  # block -> [(tick written, version)]
    recache_free: dict[KVRef, int] = {}
    recache_tasks: list[Task] = []

    def committed_version(j: int, n: int, keep: bool = True) -> KVRef:
        for tick, ref in reversed(reencoded.get(j, ())):
            if tick < n:
                if keep and recache_free[ref] < n:
                    recache_free[ref] = n
                return ref
        if keep and free_after[j] < n:
            free_after[j] = n
        return versions[j][last]

    for q, p in recache:
        r = starts[p] - 1
        # A recache task names the versions it replaces, but computes from the blocks' clean latents:
        # its reads move no K/V and keep nothing alive.
        replaced = tuple(committed_version(j, r, keep=False) for j in visible_earlier(p) if starts[j] + last < r)
        for j, _ in replaced:
            ref = (j, n_stages + q)
            reencoded.setdefault(j, []).append((r, ref))
            recache_free[ref] = r
        recache_tasks.append(Task(p, RECACHE_STAGE, r, place(p, 0, r + 1, n_dev), TaskKind.RECACHE, 0, (),
                                  prompts[p], replaced))

    for b in range(n_blocks):
        earlier = visible_earlier(b)
        sb = starts[b]
        for s in range(n_stages):
            n = sb + s
            reads: list[KVRef] = []
            for j in earlier:
                sj = starts[j]
                if sj + last < n:  # committed strictly before this tick
                    if reencoded:
                        reads.append(committed_version(j, n))
                        continue
                    reads.append(versions[j][last])
                    if free_after[j] < n:
                        free_after[j] = n
                else:  # in flight now (j < b started no later than b)
                    v = n - sj - 1 if stale else n - sj
                    if v >= 0:
                        reads.append(versions[j][v])
            if bidir:
                j = b + 1
                while j < n_blocks and starts[j] <= n:
                    reads.append(versions[j][n - starts[j]])
                    j += 1
            by_tick[n].append(
                Task(b, s, n, place(b, s, n, n_dev), kinds[s], stage_t[s], tuple(reads), prompts[b])
            )
    for t in recache_tasks:  # its block starts next tick, so it sorts after every task of its tick
        by_tick[t.tick].append(t)
    tasks = tuple(t for tick in by_tick for t in tick)
    return Schedule(spec=spec, tasks=tasks, starts=starts, free_after=tuple(free_after),
                    recache_free_after=recache_free)


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
