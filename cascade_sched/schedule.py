"""Tasks and schedules: the cascade as small immutable values, built by a pure function of the spec.

``build_schedule(spec)`` implements DESIGN.md section 2 exactly: start ticks from the lags, every
(block, stage) task at ``start(b) + s``, the KV versions each task reads, gangs per tick, commit and
decode-ready ticks, and the tick after which each committed block may be freed.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

from cascade_sched.errors import ScheduleError
from cascade_sched.placement import PLACEMENTS
from cascade_sched.spec import CascadeSpec

KVRef = tuple[int, int]
"""A KV version: ``(block, stage)`` = the K/V block ``block`` wrote at stage ``stage``."""

DENOISE = "denoise"
CACHE = "cache"


class Task(NamedTuple):
    """One (block, stage) at a tick on a device, with the KV versions of other blocks it reads.

    ``str(task)`` is the compact form ``B3S1@d2``; :func:`parse_task` reads it back.
    """

    block: int
    stage: int
    tick: int
    device: int
    kind: str
    timestep: float
    reads: tuple[KVRef, ...] = ()

    @property
    def ref(self) -> KVRef:
        """The KV version this task writes."""
        return (self.block, self.stage)

    def __str__(self) -> str:
        return f"B{self.block}S{self.stage}@d{self.device}"


_TASK_RE = re.compile(r"^B(\d+)S(\d+)@d(\d+)$")


def parse_task(text: str, schedule: Schedule) -> Task:
    """Look up the task named by its compact form in ``schedule`` (the inverse of ``str(task)``).

    >>> s = build_schedule(CascadeSpec(num_blocks=2, num_devices=2))
    >>> str(parse_task("B1S0@d1", s))
    'B1S0@d1'
    """
    m = _TASK_RE.match(text.strip())
    if not m:
        raise ScheduleError(f"not a task name: {text!r} (expected the form B<block>S<stage>@d<device>)")
    block, stage, device = (int(g) for g in m.groups())
    task = schedule.task(block, stage)
    if task.device != device:
        raise ScheduleError(f"{text} names device {device}, but the schedule places it as {task}")
    return task


@dataclass(frozen=True)
class Schedule:
    """A built cascade: ``tasks`` sorted by (tick, block), plus the per-block start and free ticks.

    ``free_after[b]`` is the last tick at which any task reads block b's committed KV (its commit tick
    when nothing does): after it the KV pool may free the block.
    """

    spec: CascadeSpec
    tasks: tuple[Task, ...]
    starts: tuple[int, ...]
    free_after: tuple[int, ...]

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

    def commit_tick(self, block: int) -> int:
        """The tick of the block's last stage, whose KV is the block's committed KV."""
        return self.starts[block] + self.num_stages - 1

    def decode_ready_tick(self, block: int) -> int:
        """The tick of the block's last denoise stage: after it the clean latent can be decoded."""
        return self.starts[block] + self.spec.num_denoise - 1

    @cached_property
    def _index(self) -> dict[KVRef, Task]:
        return {t.ref: t for t in self.tasks}

    def task(self, block: int, stage: int) -> Task:
        """The task (block, stage); ``ScheduleError`` if the schedule has none."""
        try:
            return self._index[(block, stage)]
        except KeyError:
            raise ScheduleError(f"the schedule has no task B{block}S{stage}") from None

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
        """The largest number of blocks in flight at any tick."""
        return max((len(g) for g in self.gangs), default=0)

    def device_tasks(self, device: int) -> Iterator[Task]:
        """The tasks placed on ``device``, in (tick, block) order."""
        return (t for t in self.tasks if t.device == device)

    def __str__(self) -> str:
        from cascade_sched.render import render_grid

        return render_grid(self)


def start_ticks(lags: tuple[int, ...]) -> tuple[int, ...]:
    """``start(0) = 0`` and ``start(b+1) = start(b) + lag(b)``.

    >>> start_ticks((1, 2, 5))
    (0, 1, 3, 8)
    """
    out = [0]
    for lag in lags:
        out.append(out[-1] + lag)
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
    """Build the schedule of ``spec``: every task, its tick, device and KV reads (DESIGN.md section 2).

    >>> s = build_schedule(CascadeSpec(num_blocks=3, lag=1, num_devices=3))
    >>> [str(t) for t in s.gangs[1]]
    ['B0S1@d0', 'B1S0@d1']
    >>> s.task(1, 0).reads  # block 1's first stage reads block 0's version of the same tick
    ((0, 1),)
    """
    n_blocks, n_stages = spec.num_blocks, spec.num_stages
    starts = start_ticks(spec.lags)
    last = n_stages - 1
    kinds = [DENOISE] * spec.num_denoise + ([CACHE] if spec.cache_pass else [])
    stage_t = spec.stage_timesteps
    place = PLACEMENTS[spec.placement]
    n_dev = spec.num_devices
    window, sink, mode = spec.window, spec.sink, spec.attention
    stale, bidir = mode == "stale", mode == "bidirectional"
    # Interned refs: every version tuple exists once, so reads share memory and compare fast.
    versions = [[(b, s) for s in range(n_stages)] for b in range(n_blocks)]
    free_after = [starts[b] + last for b in range(n_blocks)]
    by_tick: list[list[Task]] = [[] for _ in range(starts[-1] + n_stages)]

    for b in range(n_blocks):
        lo = 0 if window is None else max(0, b - window + 1)
        earlier = list(range(min(sink, lo))) + list(range(lo, b))
        sb = starts[b]
        for s in range(n_stages):
            n = sb + s
            reads: list[KVRef] = []
            for j in earlier:
                sj = starts[j]
                if sj + last < n:  # committed strictly before this tick
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
                Task(b, s, n, place(b, s, n, n_dev), kinds[s], stage_t[s], tuple(reads))
            )
    tasks = tuple(t for tick in by_tick for t in tick)
    return Schedule(spec=spec, tasks=tasks, starts=starts, free_after=tuple(free_after))
