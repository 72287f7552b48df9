"""``validate(schedule)``: check a schedule against the semantic contract (docs/contract.md).

The checks are written from the contract's definitions, independently of ``build_schedule``, so a bug
in one is caught by the other. A failure raises ``ScheduleError`` with the tick x device grid and the
failing cell marked.
"""

from __future__ import annotations

from cascade_sched.errors import ScheduleError
from cascade_sched.placement import Segment, placer, ring_segments
from cascade_sched.render import render_grid
from cascade_sched.schedule import (
    RECACHE_STAGE,
    KVRef,
    Schedule,
    Task,
    TaskKind,
    gc_paused,
    in_flight,
    stage_kinds,
)


def _fail(
    schedule: Schedule, message: str, task: Task | None = None, mark: tuple[int, int] | None = None
) -> ScheduleError:
    if task is not None:
        mark = (task.tick, task.device)
    where = f"{task} (tick {task.tick}): " if task is not None else ""
    try:
        # A long grid is cut around the mark; with nothing to mark, show its head rather than all of it.
        ticks = range(min(schedule.num_ticks, 13)) if mark is None and schedule.num_ticks > 40 else None
        grid = render_grid(schedule, mark=mark, ticks=ticks)
    except Exception:  # a schedule too broken to draw still gets its message
        grid = "(grid unavailable)"
    return ScheduleError(f"invalid schedule: {where}{message}\n{grid}")


def _explain_read(schedule: Schedule, task: Task, ref: object, expected: tuple[KVRef, ...]) -> str:
    """Say what is wrong with one read that the contract did not ask for."""
    S, B = schedule.num_stages, schedule.num_blocks
    if not (isinstance(ref, tuple) and len(ref) == 2 and all(isinstance(x, int) for x in ref)):
        return f"read {ref!r} is not a (block, stage) pair"
    j, v = ref
    if not (0 <= j < B and 0 <= v < S):
        return f"reads KV version B{j}S{v}, which does not exist (blocks 0..{B - 1}, stages 0..{S - 1})"
    if j == task.block:
        return f"reads its own block's version B{j}S{v}; a block's own tokens are not a read"
    produced = schedule.version_tick(ref)
    if produced > task.tick:
        return f"reads B{j}S{v}, produced at tick {produced}, after the reading tick {task.tick}"
    if produced == task.tick and schedule.spec.attention in ("stale", "stage"):
        return (f"reads B{j}S{v} of the same tick; `{schedule.spec.attention}` attention reads only strictly "
                "earlier versions")
    want = dict(expected)
    if j not in want:
        return (
            f"reads block {j}, which is outside its window={schedule.spec.window} and "
            f"sink={schedule.spec.sink} (or not in flight) under {schedule.spec.attention} attention"
        )
    return f"reads B{j}S{v}, but the contract says it reads version B{j}S{want[j]}"


def _explain_task(
    schedule: Schedule,
    task: Task,
    seen: bytearray,
    prev: tuple[int, int],
    kinds: tuple[TaskKind, ...],
    stage_t: tuple[float, ...],
) -> str:
    b, s = task.block, task.stage
    S, B, D = schedule.num_stages, schedule.num_blocks, schedule.num_devices
    if not (0 <= b < B and 0 <= s < S):
        return f"task B{b}S{s} does not exist (blocks 0..{B - 1}, stages 0..{S - 1})"
    if seen[b * S + s]:
        return "task appears more than once"
    k = schedule.spec.stage_stride
    if task.tick != schedule.starts[b] + s * k:
        step = f"{s}" if k == 1 else f"{s}*{k}"
        return f"stage {s} must run at start({b}) + {step} = {schedule.starts[b] + s * k}, not tick {task.tick}"
    if (task.tick, b) <= prev:
        return f"tasks out of (tick, block) order: follows tick {prev[0]}, block {prev[1]}"
    if task.kind != kinds[s] or task.timestep != stage_t[s]:
        return f"stage {s} must be {kinds[s]} at t={stage_t[s]}, got {task.kind} at t={task.timestep}"
    want = schedule.spec.prompt_of(b)
    if task.prompt != want:
        return f"block {b} uses prompt {want} (the spec's switches), but the task carries prompt {task.prompt}"
    if task.replaces:
        return f"only a recache task replaces versions, but this {task.kind} task replaces {list(task.replaces)}"
    return f"device {task.device} is out of range 0..{D - 1}"


def _check_recache(
    schedule: Schedule,
    task: Task,
    expected: dict[int, Task],
    seen: set[int],
    prev: tuple[int, int],
) -> None:
    """A recache task must be one the spec's switches ask for, exactly as the contract builds it."""
    want = expected.get(task.block)
    if want is None:
        why = ("switch_policy is none" if schedule.spec.switch_policy == "none"
               else f"no prompt switch at block {task.block} asks for one")
        raise _fail(schedule, f"unexpected recache task: {why}", task)
    if task.block in seen:
        raise _fail(schedule, "recache task appears more than once", task)
    if task.stage != RECACHE_STAGE:
        raise _fail(schedule, f"a recache task is stage {RECACHE_STAGE} (B{task.block}R), got stage {task.stage}",
                    task)
    if task.tick != want.tick:
        raise _fail(schedule, f"the recache task of block {task.block} must run at tick {want.tick} "
                    f"(the tick before the block's first stage), not {task.tick}", task)
    if (task.tick, task.block) <= prev:
        raise _fail(schedule, f"tasks out of (tick, block) order: follows tick {prev[0]}, block {prev[1]}", task)
    if task.timestep != 0 or task.prompt != want.prompt:
        raise _fail(schedule, f"a recache task is kind recache at t=0 with the new prompt {want.prompt}, got "
                    f"{task.kind} at t={task.timestep} with prompt {task.prompt}", task)
    if not 0 <= task.device < schedule.num_devices:
        raise _fail(schedule, f"device {task.device} is out of range 0..{schedule.num_devices - 1}", task)
    if task.replaces != want.replaces:
        raise _fail(schedule, f"the recache task must re-encode {list(want.replaces)}, got "
                    f"{list(task.replaces)}", task)
    if task.reads:
        raise _fail(schedule, f"a recache task computes from clean latents and reads no K/V, got reads "
                    f"{list(task.reads)}", task)


def _explain_reads(schedule: Schedule, task: Task, expected: tuple[KVRef, ...]) -> str:
    extra = [r for r in task.reads if r not in expected]
    if extra:
        return _explain_read(schedule, task, extra[0], expected)
    missing = [r for r in expected if r not in task.reads]
    if missing:
        j, v = missing[0]
        return f"does not read B{j}S{v}, which the contract makes visible"
    return "reads must be sorted by block without repeats"


def validate(schedule: Schedule) -> Schedule:
    """Check ``schedule`` against the contract; return it unchanged, or raise ``ScheduleError``.

    Checked: start ticks and lag bounds, completeness (every (block, stage) exactly once), stage order
    (``stage_stride`` ticks apart), task order, kinds and timesteps, device indices, segments (every
    layer range of the spec in ring order, on distinct devices in range, each device always the same
    layer range), that a ring never holds two stages of one block at once (a stage enters after the
    previous one left its ring, which also gives it its input latent), every read (exists, produced no
    later than the reading tick at each layer range, same tick only inside a joint-attention gang,
    window and sink rules), and that no committed block is freed before its last read.

    >>> from cascade_sched import CascadeSpec, build_schedule
    >>> validate(build_schedule(CascadeSpec(num_blocks=3, lag=2))).num_blocks
    3
    """
    with gc_paused():
        return _validate(schedule)


def _check_segments(
    schedule: Schedule, task: Task, segs: tuple[Segment, ...], holds: dict[int, tuple[int, int | None]]
) -> None:
    """A task's segments: the spec's layer ranges in ring order, the first on the task's device, on
    distinct devices in range, each device holding one layer range across the schedule."""
    spec = schedule.spec
    ranges, D = spec.layer_ranges, spec.num_devices
    if not segs:
        raise _fail(schedule, f"device {task.device} starts no ring of placement {spec.placement} (ring "
                    f"entry devices: {', '.join(str(d) for d in range(0, D, len(ranges)))})", task)
    got = [(first, end) for _, first, end in segs]
    if got != list(ranges):
        raise _fail(schedule, f"segments must run the layer ranges {[list(r) for r in ranges]} in ring order, "
                    f"got {[list(r) for r in got]}", task)
    devices = [d for d, _, _ in segs]
    if devices[0] != task.device:
        raise _fail(schedule, f"its first segment runs on device {devices[0]}, not on its device {task.device}",
                    task)
    for d, first, end in segs:
        if not (isinstance(d, int) and 0 <= d < D):
            raise _fail(schedule, f"segment device {d} is out of range 0..{D - 1}", task)
        if devices.count(d) > 1:
            raise _fail(schedule, f"device {d} runs two segments of one task", task)
        held = holds.setdefault(d, (first, end))
        if held != (first, end):
            raise _fail(schedule, f"device {d} runs layers [{first}, {end}) here but [{held[0]}, {held[1]}) "
                        "elsewhere; a device holds one layer range and its K/V", task)


def _validate(schedule: Schedule) -> Schedule:
    spec = schedule.spec
    S, B, D = spec.num_stages, spec.num_blocks, spec.num_devices
    k, W, span = spec.stage_stride, spec.ring_size, spec.tick_span
    last_stage = (S - 1) * k  # ticks from a block's first stage to its commit stage
    starts = schedule.starts
    if len(starts) != B or starts[0] != 0:
        raise _fail(schedule, f"start ticks {list(starts[:8])}... must begin at 0 and name all {B} blocks")
    recache_at = {at: q for q, at in spec.recache_switches}
    for b in range(B - 1):
        lag = starts[b + 1] - starts[b] - (1 if b + 1 in recache_at else 0)
        if not 1 <= lag <= span or lag != spec.lags[b]:
            first = next((t for t in schedule.tasks if t.block == b + 1 and t.stage == 0), None)
            bound = f"1..S={S}" if k == 1 else f"1..(S-1)*k+1={span}"
            raise _fail(schedule, f"lag between blocks {b} and {b + 1} is {lag}; spec says {spec.lags[b]} ({bound})",
                        first)
    if len(schedule.free_after) != B:
        raise _fail(schedule, f"free_after names {len(schedule.free_after)} blocks, expected {B}")

    seen = bytearray(B * S)
    last_read = [starts[b] + last_stage for b in range(B)]
    prompts = [spec.prompt_of(b) for b in range(B)]

    def visible_before(b: int) -> list[int]:  # sink 0..sink-1 and the window b-window < j < b
        lo = 0 if spec.window is None else max(0, b - spec.window + 1)
        return [j for j in range(min(spec.sink, b)) if j < lo] + list(range(lo, b))

    # The re-encodes the contract asks for: switch q's recache task at the tick before block p starts
    # reads the newest version of every block p will read whose commit stage has left its ring by then
    # (committed before it, for W = 1), and writes (j, S+q).
    reencoded: dict[int, list[tuple[int, KVRef]]] = {}
    reenc_last: dict[KVRef, int] = {}

    def newest(j: int, tick: int, keep: bool = True) -> KVRef:
        ref = next((r for t, r in reversed(reencoded.get(j, ())) if t < tick), (j, S - 1))
        if not keep:  # a recache task's reads name what it replaces; they keep nothing alive
            return ref
        if ref[1] >= S:
            reenc_last[ref] = max(reenc_last[ref], tick)
        elif last_read[j] < tick:
            last_read[j] = tick
        return ref

    expected_recache: dict[int, Task] = {}
    for q, p in spec.recache_switches:
        r = starts[p] - 1
        reads_r = tuple(newest(j, r, keep=False) for j in visible_before(p) if starts[j] + last_stage + W - 1 < r)
        for j, _ in reads_r:
            reencoded.setdefault(j, []).append((r, (j, S + q)))
            reenc_last[(j, S + q)] = r
        expected_recache[p] = Task(p, RECACHE_STAGE, r, -1, TaskKind.RECACHE, 0, (), prompts[p], reads_r)
    seen_recache: set[int] = set()
    prev: tuple[int, int] = (-1, -1)
    kinds = stage_kinds(spec)
    stage_t = spec.stage_timesteps
    window, sink, mode = spec.window, spec.sink, spec.attention
    by_stage, stale, bidirectional, commit = mode == "stage", mode == "stale", mode == "bidirectional", S - 1
    custom = schedule.custom_segments
    holds: dict[int, tuple[int, int | None]] = {}  # device -> the layer range it runs
    entry_ok: set[int] = set()  # devices whose derived segments were checked
    exits = [-1] * B  # block -> the tick its latest stage leaves its ring
    seen_by: dict[int, list[int]] = {}  # block -> the earlier blocks it sees (sink and window)
    for task in schedule.tasks:
        b, s, tick, device, kind, timestep, reads, prompt, replaces = task
        if kind == TaskKind.RECACHE:
            _check_recache(schedule, task, expected_recache, seen_recache, prev)
            _check_segments(schedule, task, schedule.segments(task), holds)
            seen_recache.add(b)
            prev = (tick, b)
            continue
        # One combined test on the hot path; the slow path below names the first broken rule.
        if not (
            0 <= b < B
            and 0 <= s < S
            and not seen[b * S + s]
            and tick == starts[b] + s * k
            and (tick, b) > prev
            and kind == kinds[s]
            and timestep == stage_t[s]
            and 0 <= device < D
            and prompt == prompts[b]
            and not replaces
        ):
            raise _fail(schedule, _explain_task(schedule, task, seen, prev, kinds, stage_t), task)
        seen[b * S + s] = 1
        prev = (tick, b)
        if custom and (b, s) in custom:
            _check_segments(schedule, task, custom[(b, s)], holds)
        elif device not in entry_ok:
            _check_segments(schedule, task, ring_segments(spec, device) or (), holds)
            entry_ok.add(device)
        if W > 1:
            # A stage enters its ring only after the previous one has left it: the ring never holds two
            # stages of one block, and the stage's input latent (made on the ring's last device) exists.
            if tick <= exits[b]:
                raise _fail(schedule, f"enters its ring at tick {tick} while stage {s - 1} of block {b} holds it "
                            f"until tick {exits[b]}: a ring of W={W} devices needs its block's stages at least "
                            f"{W} ticks apart (stage_stride {k})", task)
            exits[b] = tick + W - 1
        # The contract's visible blocks: sink 0..sink-1, window b-window < j < b, and (bidirectional)
        # every later block in flight now; then the version of each that this tick sees.
        visible = seen_by.get(b)
        if visible is None:
            lo = 0 if window is None else max(0, b - window + 1)
            visible = seen_by[b] = [*range(min(sink, lo)), *range(lo, b)]
        if bidirectional:
            visible = visible + [j for j in in_flight(starts, span, tick) if j > b]
        expected: list[KVRef] = []
        for j in visible:
            age = tick - starts[j]
            if by_stage:  # the version j wrote at this same stage (an earlier tick: j < b)
                expected.append((j, s))
                if s == commit:
                    last_read[j] = tick  # tasks come in tick order: the latest read so far
            elif age > last_stage:  # committed before this tick: the newest version (re-encoded or committed)
                if reencoded:
                    expected.append(newest(j, tick))
                    continue
                expected.append((j, commit))
                last_read[j] = tick
            elif not stale:  # ver(j, n): the newest version by this tick
                expected.append((j, age // k))
            elif age >= 1:  # done(j, n): the newest version finished before this tick
                expected.append((j, (age - 1) // k))
        if reads != tuple(expected):
            raise _fail(schedule, _explain_reads(schedule, task, tuple(expected)), task)
    if not all(seen):
        missing = [(b, s) for b in range(B) for s in range(S) if not seen[b * S + s]]
        b, s = missing[0]
        # Mark the empty cell where the first missing task belongs under the spec's placement.
        where = (starts[b] + s * k, placer(spec)(b, s, starts[b] + s * k, D))
        names = ", ".join(f"B{mb}S{ms}" for mb, ms in missing[:8])
        raise _fail(schedule, f"missing task(s) {names}", mark=where)
    missing_recache = sorted(set(expected_recache) - seen_recache)
    if missing_recache:
        p = missing_recache[0]
        raise _fail(schedule, f"missing the recache task of the prompt switch at block {p} "
                    f"(switch_policy recache)", mark=(starts[p] - 1, 0))
    for ref, tick in reenc_last.items():
        if schedule.recache_free_after.get(ref, -1) < tick:
            reader = next((t for t in schedule.tasks if t.tick == tick and ref in t.reads), None)
            raise _fail(schedule, f"re-encoded KV B{ref[0]}S{ref[1]} is freed after tick "
                        f"{schedule.recache_free_after.get(ref)}, but a task reads it at tick {tick}", reader)
    for b in range(B):
        if schedule.free_after[b] < last_read[b]:
            committed = (b, S - 1)
            reader = next((t for t in schedule.tasks if t.tick == last_read[b] and committed in t.reads), None)
            if reader is None:  # nothing reads it: the block's own commit task is the one freed too early
                reader = schedule.task(*committed)
            raise _fail(
                schedule,
                f"block {b}'s committed KV is freed after tick {schedule.free_after[b]}, "
                f"but a task reads it at tick {last_read[b]}",
                reader,
            )
    return schedule
