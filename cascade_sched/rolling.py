"""Rolling schedules: the cascade built block by block from bounded state, for streams that never end.

:class:`RollingSchedule` is the one statement of the contract's rules (docs/contract.md): it builds each
block's tasks and reads from the window, the sink, the blocks in flight and the pending prompt switches,
so the work per block does not grow with the blocks before it, and it forgets a block as soon as no
future task can read it (``retired``). :func:`cascade_sched.build_schedule` is the rolling schedule with
every block declared at once, and :func:`cascade_sched.transfers.plan_transfers` runs the same
:class:`~cascade_sched.transfers.TransferPlanner` over a whole schedule that a rolling one feeds chunk by
chunk, so a rolling schedule is the whole one, cut into chunks.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Sequence
from dataclasses import dataclass

from cascade_sched.errors import ConfigError, check_range
from cascade_sched.placement import (
    PLACEMENTS,
    Segment,
    default_decode_device,
    place_by_block,
    placer,
    ring_segments,
)
from cascade_sched.schedule import RECACHE_STAGE, KVRef, Schedule, Task, TaskKind, stage_kinds
from cascade_sched.spec import CascadeSpec
from cascade_sched.transfers import TransferChunk, TransferPlanner


@dataclass(frozen=True)
class ScheduleChunk:
    """What one :meth:`RollingSchedule.advance` made final.

    - ``tasks``: every task entering at a tick in ``[from_tick, until_tick)``, in (tick, block) order;
      no later chunk adds a task before ``until_tick``.
    - ``starts``: the start ticks of blocks ``first_block ..`` (the blocks whose tasks were built now).
    - ``free_after`` / ``recache_free_after``: the free ticks of committed (re-encoded) versions that no
      future task can read any more (:class:`~cascade_sched.schedule.Schedule` has the same fields).
    - ``retired``: block -> the last tick at which any task reads a version of it; no task of a later
      chunk reads it, so a consumer may drop everything of it after that tick.
    - ``transfers``: the transfer plan's new entries (None when the rolling schedule plans no transfers).
    """

    from_tick: int
    until_tick: int
    tasks: tuple[Task, ...]
    first_block: int
    starts: tuple[int, ...]
    free_after: dict[int, int]
    recache_free_after: dict[KVRef, int]
    retired: dict[int, int]
    transfers: TransferChunk | None


class RollingSchedule:
    """A schedule built as it goes: declare blocks (and prompt switches) while streaming, and take the
    tasks, reads and transfers that became final with :meth:`advance`.

    ``spec`` gives the cascade's settings and the first declaration: its ``num_blocks`` blocks, its lags
    and its switches. :meth:`extend` declares more blocks, :meth:`switch` queues a prompt switch at any
    block not yet declared (either policy), :meth:`close` says no block follows. A block is built once
    everything it reads is declared: under ``bidirectional`` the later blocks in flight with it, under
    policy ``recache`` the recache tasks of later blocks that run before its commit stage (every task
    after a recache task reads what it re-encodes). A tick's tasks are given once no block still to come
    can add to that tick. Whatever the cuts, the
    chunks joined are exactly ``build_schedule`` and ``plan_transfers`` of the same blocks and switches
    (tests/cascade_sched/test_sched_rolling.py checks it over 300 blocks).

    The state is bounded: it holds the blocks in the window and the sink, those in flight, and pending
    switches; a block leaves it when the last block that sees it is built (never, with an unbounded
    window). Usage, as an engine's tick loop would drive it:

    >>> r = RollingSchedule(CascadeSpec(num_blocks=2, lag=1, num_devices=2, window=2))
    >>> chunk = r.advance()       # what is final so far: the ticks before block 2 can start
    >>> [str(t) for t in chunk.tasks], chunk.until_tick
    (['B0S0@d0', 'B0S1@d0', 'B1S0@d1'], 2)
    >>> chunk.transfers.gang[1]   # the transfer plan's entries, tick by tick
    (KVSend(ref=(0, 1), src=0, dst=1, first_layer=0, end_layer=None),)
    >>> r.switch(3, prompt=1)     # a prompt switch at a block not declared yet
    >>> r.extend(4)               # blocks 2 .. 5 exist now
    >>> chunk = r.advance()
    >>> chunk.until_tick, chunk.retired, r.held_blocks  # block 0 left every window: forgotten
    (6, {0: 5}, (1, 2, 3, 4, 5))
    >>> r.close()                 # the stream ends after block 5
    >>> last = r.advance()
    >>> str(last.tasks[-1]), last.tasks[-1].prompt, last.until_tick
    ('B5S4@d1', 1, 10)

    An engine adopts each chunk as it comes: it runs ``chunk.tasks`` as their ticks arrive, posts
    ``chunk.transfers`` by tick (an entry whose tick has passed moves at once: its version or latent was
    kept, since its block has not retired), and frees a block's K/V after ``retired``.
    """

    def __init__(self, spec: CascadeSpec, *, transfers: bool = True, decode_device: int | None = None) -> None:
        self.spec = spec
        self._S, self._k, self._W = spec.num_stages, spec.stage_stride, spec.ring_size
        self._last = (self._S - 1) * self._k  # ticks from a block's first stage to its commit stage
        self._kinds = stage_kinds(spec)
        self._stage_t = spec.stage_timesteps
        self._place, self._D = placer(spec), spec.num_devices
        self._by_block = spec.placement in ("block", "layers") and PLACEMENTS.get(spec.placement) in (
            place_by_block, PLACEMENTS["layers"])
        self._declared = 0
        self._closed = False
        self._next = 0  # the next block to build
        # The state of every block some future task may read or that is not built yet: (its start, its
        # versions, [its committed KV's free tick]). Versions are interned (j, v), so reads share one
        # tuple each, and padded with the committed version up to index 2S-2, so that a read's index
        # s + min(d // k, S-1) needs no cap.
        self._blocks: dict[int, tuple[int, tuple[KVRef, ...], list[int]]] = {}
        self._last_start = 0  # the last declared block's start
        self._prompt: dict[int, int] = {}  # declared, not yet built
        self._recache_at: dict[int, Task] = {}  # tick -> the recache task entering then, not yet given
        self._pending: list[tuple[int, int]] = []  # switches at undeclared blocks, in block order
        self._switches = 0  # switches declared so far (a recache task's q is its switch's index)
        self._current = 0  # the prompt of the last declared block
        self._lag = spec.lag[-1] if isinstance(spec.lag, tuple) and spec.lag else (
            spec.lag if isinstance(spec.lag, int) else spec.tick_span)
        self._reencoded: dict[int, list[tuple[int, KVRef]]] = {}  # block -> [(tick written, version)]
        self._recache_free: dict[KVRef, int] = {}
        self._buf: list[list[Task]] = []  # built tasks by tick, from tick self._buf0 on
        self._buf0 = 0
        self._retire: list[tuple[int, int]] = []  # (block, last reading tick) not yet given
        self._writes: dict[int, tuple[KVRef, ...]] = {}  # recache block -> the versions its task writes
        self._rings: dict[int, tuple[Segment, ...]] = {}
        self._planner = None
        if transfers:
            dd = default_decode_device(spec) if decode_device is None else decode_device
            self._planner = TransferPlanner(spec, dd, bounded=True)
        self._declare(spec.num_blocks, spec.switches, spec.lags)

    # -- declaring blocks and switches -------------------------------------------------------------------
    @property
    def declared(self) -> int:
        """Blocks declared so far (numbered 0 .. declared - 1)."""
        return self._declared

    @property
    def held_blocks(self) -> tuple[int, ...]:
        """The blocks whose state the schedule holds: those a future task may read (window, sink, in
        flight) and those declared but not built. It stays bounded on an endless stream."""
        return tuple(sorted(self._blocks))

    def state_size(self) -> dict[str, int]:
        """How much state the schedule holds, by kind: it stays bounded on an endless stream with a window
        (with an unbounded window every block stays visible, so ``blocks`` grows with the stream)."""
        out = {"blocks": len(self._blocks), "ticks": len(self._buf), "switches": len(self._pending),
               "reencoded": sum(map(len, self._reencoded.values())), "retiring": len(self._retire)}
        if self._planner is not None:
            out.update(self._planner.state_size())
        return out

    @property
    def built(self) -> int:
        """Blocks whose tasks are built (given once their ticks are final)."""
        return self._next

    def switch(self, at_block: int, prompt: int) -> None:
        """Queue a prompt switch: blocks from ``at_block`` on use prompt id ``prompt``. ``at_block`` must not
        be declared yet, and switches come in increasing block order."""
        check_range("at_block", at_block, self._declared, what=f" (blocks from {self._declared} are not declared yet)")
        check_range("prompt", prompt, 0)
        if self._pending and at_block <= self._pending[-1][0]:
            raise ConfigError("switches", f"prompt switches must be in increasing at_block order, got {at_block} "
                              f"after {self._pending[-1][0]}")
        if self._closed:
            raise ConfigError("switches", "the stream is closed: no block follows to switch")
        self._pending.append((at_block, prompt))

    def extend(self, blocks: int, switches: Sequence[tuple[int, int]] = (), lags: Sequence[int] | None = None) -> None:
        """Declare ``blocks`` more blocks, after queueing ``switches`` (as :meth:`switch`). ``lags`` gives the
        lag before each new block (each in 1..(S-1)*k+1); by default the last lag repeats, as
        :meth:`CascadeSpec.extended` does."""
        check_range("blocks", blocks, 0)
        if self._closed and blocks:
            raise ConfigError("blocks", "the stream is closed: no block can be declared after it")
        for at, prompt in switches:
            self.switch(at, prompt)
        if lags is None:
            lags = (self._lag,) * blocks
        elif len(lags) != blocks:
            raise ConfigError("lag", f"`lag` needs one entry per new block, {blocks}, got {len(lags)}")
        for lag in lags:
            check_range("lag", lag, 1, self.spec.tick_span, f" (S={self._S} stages)")
        self._declare(blocks, (), tuple(lags))

    def close(self) -> None:
        """No block follows the declared ones: everything left becomes final at the next :meth:`advance`."""
        self._closed = True
        self._pending.clear()

    def _declare(self, blocks: int, switches: Sequence[tuple[int, int]], lags: Sequence[int]) -> None:
        """Add ``blocks`` blocks; ``lags[i]`` (checked) is the lag before the i-th new block that has a
        predecessor."""
        pending = self._pending
        pending.extend(switches)
        recache = self.spec.switch_policy == "recache"
        S, last = self._S, self._last
        prompts, blocks_ = self._prompt, self._blocks
        start, lag, prompt = self._last_start, self._lag, self._current
        first = self._declared
        for li, b in enumerate(range(first, first + blocks), -1 if first == 0 else 0):
            q = -1
            while pending and pending[0][0] == b:  # a switch at b: its prompt from b on
                _, prompt = pending.pop(0)
                q = self._switches
                self._switches += 1
            prompts[b] = prompt
            if b:
                lag = lags[li]
                start += lag + (1 if recache and q >= 0 else 0)
            refs = [(b, s) for s in range(S)]
            blocks_[b] = (start, tuple(refs + refs[-1:] * (S - 1)), [start + last])
            self._declared, self._last_start, self._lag, self._current = b + 1, start, lag, prompt
            if recache and q >= 0 and b >= 1:
                self._recache(b, q)

    def _recache(self, p: int, q: int) -> None:
        """Switch q's recache task, one tick before block p: it re-encodes, under the new prompt, the
        newest version of every block p will read whose commit stage has left its ring by then
        (committed before, for W = 1). Every task after it reads the re-encoded versions, so it is made
        when p is declared, before any block that runs after it is built."""
        S, r = self._S, self._blocks[p][0] - 1
        exit_ = self._last + self._W - 1
        replaced = tuple(self._newest(j, r, keep=False) for j in self._visible(p) if self._blocks[j][0] + exit_ < r)
        writes = []
        for j, _ in replaced:
            ref = (j, S + q)
            self._reencoded.setdefault(j, []).append((r, ref))
            self._recache_free[ref] = r
            writes.append(ref)
        if self._planner is not None:  # the planner names the versions it writes when it reaches it
            self._writes[p] = tuple(writes)
        self._recache_at[r] = Task(p, RECACHE_STAGE, r, self._place(p, 0, r + 1, self._D), TaskKind.RECACHE, 0,
                                   (), self._prompt[p], replaced)

    def _visible(self, b: int) -> list[int]:
        """The earlier blocks b sees: the sink ``0 .. sink-1`` and the window ``b - window < j < b``."""
        window = self.spec.window
        lo = 0 if window is None else max(0, b - window + 1)
        return [*range(min(self.spec.sink, lo)), *range(lo, b)]

    # -- building --------------------------------------------------------------------------------------
    def _buildable(self) -> int:
        """The end of the blocks that can be built now: every declared one, except that a block must wait
        for the later blocks in flight with it (bidirectional: it reads them) and for the recache tasks
        that run before its last stage (it reads what they re-encode): those that start by its commit
        stage. A block not declared yet starts after the last declared one."""
        spec, stop = self.spec, self._next
        if self._closed or (spec.attention != "bidirectional" and spec.switch_policy != "recache"):
            return self._declared
        blocks, last, last_start = self._blocks, self._last, self._last_start
        while stop < self._declared and last_start >= blocks[stop][0] + last:
            stop += 1
        return stop

    def _horizon(self) -> int:
        """The first tick a task not built yet can enter at."""
        b = self._next
        if b < self._declared:
            start = self._blocks[b][0]
            return start - (1 if start - 1 in self._recache_at else 0)
        if self._closed:
            return len(self._buf) + self._buf0
        return self._last_start + 1  # an undeclared block starts at least one tick after its predecessor

    def _newest(self, j: int, n: int, keep: bool = True) -> KVRef:
        """Block j's newest committed version before tick n (a re-encoded one, if any), and, with ``keep``,
        the free tick of that version raised to n."""
        for tick, ref in reversed(self._reencoded.get(j, ())):
            if tick < n:
                if keep and self._recache_free[ref] < n:
                    self._recache_free[ref] = n
                return ref
        _, versions, cell = self._blocks[j]
        if keep and cell[0] < n:
            cell[0] = n
        return versions[-1]

    def _slot(self, tick: int) -> list[Task]:
        i = tick - self._buf0
        buf = self._buf
        if i >= len(buf):
            buf.extend([] for _ in range(i + 1 - len(buf)))
        return buf[i]

    def _build(self, first: int, stop: int) -> None:
        """Build the tasks of blocks ``first .. stop - 1``: the contract's rules, stated once (their recache
        tasks are made when they are declared, :meth:`_recache`).

        Task (b, s) runs at ``n = start(b) + s*k``. For a visible earlier block j, with ``d = start(b) -
        start(j)``: ``ver(j, n) = s + d // k`` and ``done(j, n) = s + (d - 1) // k`` (the stage offset is
        the same at every stage); at S-1 or beyond the block is committed (by this tick for ``ver``,
        before it for ``done``) and the task reads its newest committed version."""
        spec = self.spec
        S, k, last = self._S, self._k, self._last
        blocks, prompts = self._blocks, self._prompt
        window, sink, mode = spec.window, spec.sink, spec.attention
        reencoded, retire = self._reencoded, self._retire
        kinds, stage_t, place, D = self._kinds, self._stage_t, self._place, self._D
        buf, buf0 = self._buf, self._buf0
        committed = S - 1
        stale = 1 if mode == "stale" else 0
        new_task, task_type, none = tuple.__new__, Task, ()  # a Task without NamedTuple's Python-level __new__
        # Reads at stage s of a block are, per visible block, item s of that block's versions from its stage
        # offset on: one C-level map per task (a slice of each visible block's versions, per block).
        stages = [(s, s * k, kinds[s], stage_t[s], operator.itemgetter(s)) for s in range(S)]
        none_later: list[tuple[int, tuple[KVRef, ...]]] = []  # never appended to
        by_block = self._by_block  # the device depends on the block alone (every built-in policy but stage)
        for b in range(first, stop):
            sb = blocks[b][0]
            end = sb + last
            prompt = prompts.pop(b)
            base = sb - buf0
            if len(buf) <= base + last:  # room for every stage
                buf.extend([] for _ in range(base + last + 1 - len(buf)))
            later = none_later  # bidirectional: (start, versions) of the later blocks in flight with b
            if mode == "bidirectional":
                later = []
                j = b + 1
                while j < self._declared and blocks[j][0] <= end:
                    later.append(blocks[j][:2])
                    j += 1
            # Without re-encodes every visible block's committed version is read last at b's last stage,
            # its latest tick (with them, each read below keeps its own tick).
            track = bool(reencoded) and mode != "stage"
            ctx = []
            for j in self._visible(b):
                sj, vs, cell = blocks[j]
                off = (sb - sj - stale) // k
                ctx.append((off if off < committed else committed, vs, j))
                if not track and cell[0] < end:
                    cell[0] = end
            # the version each block wrote at this stage (stage), or its ver / done (committed from S-1 on)
            slices = [vs if mode == "stage" else vs[off:] for off, vs, _ in ctx]
            device = place(b, 0, sb, D) if by_block else -1
            for s, step, kind, timestep, item in stages:
                n = sb + step
                reads: tuple[KVRef, ...]
                if not track or mode == "stage":
                    reads = tuple(map(item, slices))
                else:  # a recache task may have re-encoded a committed block: its newest version
                    reads = tuple(vs[s + off] if s + off < committed else self._newest(j, n) for off, vs, j in ctx)
                if later:
                    extra = []
                    for sj, vs in later:  # in flight with b: their version of this tick, or their newest
                        if sj > n:
                            break
                        extra.append(vs[(n - sj) // k])
                    reads += tuple(extra)
                buf[base + step].append(new_task(task_type, (b, s, n, device if by_block else place(b, s, n, D), kind,
                                                             timestep, reads, prompt, none)))
            if window is not None:
                j = b - window + 1  # b is the last block that sees j
                if j >= sink:
                    retire.append((j, end))

    # -- giving what is final --------------------------------------------------------------------------
    def advance(self) -> ScheduleChunk:
        """Build every block that can be built, and give what became final (see :class:`ScheduleChunk`)."""
        first, stop = self._next, self._buildable()
        self._build(first, stop)
        self._next = stop
        starts = tuple(self._blocks[b][0] for b in range(first, stop))
        done = self._closed and self._next == self._declared
        until = self._horizon()
        cut = max(0, until - self._buf0)
        if cut:
            self._slot(until - 1)
        ready, self._buf = self._buf[:cut], self._buf[cut:]
        from_tick, self._buf0 = self._buf0, self._buf0 + cut
        for tick in sorted(t for t in self._recache_at if t < self._buf0):  # after every task of its tick
            ready[tick - from_tick].append(self._recache_at.pop(tick))
        tasks = tuple(itertools.chain.from_iterable(ready))
        if done:  # nothing can read anything any more
            listed = {j for j, _ in self._retire}
            retiring = [*self._retire, *((j, self._buf0) for j in sorted(self._blocks) if j not in listed)]
        else:
            retiring = [x for x in self._retire if x[1] < until]  # every reader of them is given
        del self._retire[:len(retiring)]
        superseded = self._superseded(until, {j for j, _ in retiring})
        transfers = None
        if self._planner is not None:
            self._planner.add_tasks(tasks, self._segments, self._task_writes)
            for j, _ in retiring:
                self._planner.retire(j, self._reencoded_refs(j))
            for ref in superseded:
                self._planner.retire_version(ref)
            transfers = self._planner.drain(final=done)
        freed, refreed, retired = self._forget(retiring)
        for ref in superseded:
            refreed[ref] = self._recache_free.pop(ref)
        return ScheduleChunk(
            from_tick=from_tick, until_tick=self._buf0, tasks=tasks, first_block=first, starts=starts,
            free_after=freed, recache_free_after=refreed, retired=retired, transfers=transfers,
        )

    def _superseded(self, until: int, retiring: set[int]) -> list[KVRef]:
        """Re-encoded versions no task reads any more: a newer one was written before ``until``, and every
        task up to it is given (a block re-encoded at every switch, a sink block say, keeps only its newest)."""
        out = []
        for j, entries in self._reencoded.items():
            if j in retiring:
                continue
            while len(entries) > 1 and entries[1][0] < until:
                out.append(entries.pop(0)[1])
        return out

    def _forget(self, retiring: list[tuple[int, int]]) -> tuple[dict[int, int], dict[KVRef, int], dict[int, int]]:
        """Drop the state of blocks no future task reads, giving their final free ticks."""
        blocks = self._blocks
        freed = {j: blocks.pop(j)[2][0] for j, _ in retiring}
        refreed: dict[KVRef, int] = {}
        if self._reencoded:
            for j, _ in retiring:
                for _, ref in self._reencoded.pop(j, ()):
                    refreed[ref] = self._recache_free.pop(ref)
        return freed, refreed, dict(retiring)

    def _reencoded_refs(self, j: int) -> tuple[KVRef, ...]:
        return tuple(ref for _, ref in self._reencoded.get(j, ()))

    def _segments(self, task: Task) -> tuple[Segment, ...]:
        out = self._rings.get(task.device)
        if out is None:
            out = self._rings[task.device] = ring_segments(self.spec, task.device) or ()
        return out

    def _task_writes(self, task: Task) -> tuple[KVRef, ...]:
        if task.kind != TaskKind.RECACHE:
            return (task.ref,)
        return self._writes.pop(task.block)

    # -- whole schedules -------------------------------------------------------------------------------
    @classmethod
    def whole(cls, spec: CascadeSpec) -> Schedule:
        """The whole schedule of ``spec`` through the same rules: every block declared, the stream closed,
        one chunk."""
        r = cls(spec, transfers=False)
        r.close()
        chunk = r.advance()
        free = chunk.free_after
        return Schedule(spec=spec, tasks=chunk.tasks, starts=chunk.starts,
                        free_after=tuple(map(free.__getitem__, range(spec.num_blocks))),
                        recache_free_after=chunk.recache_free_after)
