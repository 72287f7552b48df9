"""Mutation suite: ``validate`` must reject every single corruption of a valid schedule.

Each test draws a valid schedule (hypothesis), applies one kind of mutation with
``dataclasses.replace(schedule, ...)`` / ``Task._replace``, and checks that ``validate`` raises
``ScheduleError`` whose grid marks the implicated cell with ``<-- ERROR HERE``.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from sched_support import oracle_reads, replace_task, specs

from cascade_sched import CascadeSpec, Schedule, ScheduleError, build_schedule, validate

MARK = "<-- ERROR HERE"


def rejected(schedule: Schedule, marked: bool = True, cell: bool = True) -> str:
    """Validate must fail; return the message (checked for the marked row when a task is implicated,
    and for the bracketed cell unless the cell cannot be drawn, as for a negative device)."""
    with pytest.raises(ScheduleError) as info:
        validate(schedule)
    message = str(info.value)
    assert message.startswith("invalid schedule: ")
    if marked:
        assert MARK in message, message
        marked_rows = [line for line in message.splitlines() if MARK in line]
        assert len(marked_rows) == 1, message
        assert "[" in marked_rows[0] or not cell, message
    return message


def with_reads(schedule: Schedule, index: int, reads: list[tuple[int, int]]) -> Schedule:
    task = schedule.tasks[index]
    new = task._replace(reads=tuple(sorted(reads)))
    return dataclasses.replace(schedule, tasks=replace_task(schedule, index, new))


def pick(data: st.DataObject, items: list, label: str):  # type: ignore[no-untyped-def]
    assume(items)
    return data.draw(st.sampled_from(items), label=label)


# -- task-level mutations ---------------------------------------------------------------------------------


@given(specs(), st.data())
def test_drop_a_task(spec: CascadeSpec, data: st.DataObject) -> None:
    s = build_schedule(spec)
    i = data.draw(st.integers(0, len(s.tasks) - 1), label="index")
    gone = s.tasks[i]
    message = rejected(dataclasses.replace(s, tasks=s.tasks[:i] + s.tasks[i + 1 :]))
    assert f"B{gone.block}S{gone.stage}" in message
    marked = next(line for line in message.splitlines() if MARK in line)
    assert int(marked.split("|")[0]) == gone.tick  # the row where the missing task belongs


@given(specs(), st.data())
def test_duplicate_a_task(spec: CascadeSpec, data: st.DataObject) -> None:
    s = build_schedule(spec)
    i = data.draw(st.integers(0, len(s.tasks) - 1), label="index")
    at = data.draw(st.integers(0, len(s.tasks)), label="insert at")
    tasks = list(s.tasks)
    tasks.insert(at, s.tasks[i])
    rejected(dataclasses.replace(s, tasks=tuple(tasks)))


@given(specs(min_blocks=1), st.data())
def test_reorder_two_tasks(spec: CascadeSpec, data: st.DataObject) -> None:
    s = build_schedule(spec)
    assume(len(s.tasks) >= 2)
    i = data.draw(st.integers(0, len(s.tasks) - 2), label="i")
    j = data.draw(st.integers(i + 1, len(s.tasks) - 1), label="j")
    tasks = list(s.tasks)
    tasks[i], tasks[j] = tasks[j], tasks[i]
    rejected(dataclasses.replace(s, tasks=tuple(tasks)))


@given(specs(), st.data())
def test_move_a_task_to_another_tick(spec: CascadeSpec, data: st.DataObject) -> None:
    s = build_schedule(spec)
    i = data.draw(st.integers(0, len(s.tasks) - 1), label="index")
    task = s.tasks[i]
    tick = data.draw(st.integers(0, s.num_ticks + 2).filter(lambda n: n != task.tick), label="tick")
    # Re-sorted, so that only the tick rule (not the order rule) can catch it.
    tasks = sorted(replace_task(s, i, task._replace(tick=tick)), key=lambda t: (t.tick, t.block))
    message = rejected(dataclasses.replace(s, tasks=tuple(tasks)))
    assert str(task).split("@")[0] in message


@given(specs(), st.data())
def test_device_out_of_range(spec: CascadeSpec, data: st.DataObject) -> None:
    s = build_schedule(spec)
    i = data.draw(st.integers(0, len(s.tasks) - 1), label="index")
    device = data.draw(
        st.integers(-3, -1) | st.integers(spec.num_devices, spec.num_devices + 3), label="device"
    )
    bad = dataclasses.replace(s, tasks=replace_task(s, i, s.tasks[i]._replace(device=device)))
    message = rejected(bad, cell=device >= 0)
    assert "out of range" in message and f"@d{device}" in message


@given(specs(), st.data())
def test_wrong_kind_or_timestep(spec: CascadeSpec, data: st.DataObject) -> None:
    s = build_schedule(spec)
    i = data.draw(st.integers(0, len(s.tasks) - 1), label="index")
    t = s.tasks[i]
    new = (
        t._replace(kind="cache" if t.kind == "denoise" else "denoise")
        if data.draw(st.booleans())
        else (t._replace(timestep=t.timestep + 1))
    )
    rejected(dataclasses.replace(s, tasks=replace_task(s, i, new)))


# -- read mutations -----------------------------------------------------------------------------------------


@given(specs(min_blocks=2), st.data())
def test_read_of_a_wrong_version(spec: CascadeSpec, data: st.DataObject) -> None:
    s = build_schedule(spec)
    assume(spec.num_stages >= 2)
    i = pick(data, [k for k, t in enumerate(s.tasks) if t.reads], "index")
    reads = list(s.tasks[i].reads)
    r = data.draw(st.integers(0, len(reads) - 1), label="read")
    j, v = reads[r]
    reads[r] = (j, data.draw(st.integers(0, spec.num_stages - 1).filter(lambda w: w != v), label="version"))
    rejected(with_reads(s, i, reads))


@given(specs(min_blocks=3, windowed=True), st.data())
def test_read_of_a_block_outside_the_window(spec: CascadeSpec, data: st.DataObject) -> None:
    s = build_schedule(spec)
    w, sink = spec.window or 0, spec.sink
    # Task (b, s) and a predecessor j that is neither in the window nor a sink block.
    cands = [(k, j) for k, t in enumerate(s.tasks) for j in range(sink, t.block - w + 1)]
    k, j = pick(data, cands, "task, block")
    task = s.tasks[k]
    # The version the contract would give j if it were visible, so only visibility is wrong.
    widened = dataclasses.replace(spec, window=None)
    version = dict(oracle_reads(widened, task.block, task.stage)).get(j)
    assume(version is not None)
    message = rejected(with_reads(s, k, [*task.reads, (j, version)]))
    assert "outside its window" in message


@given(specs(min_blocks=2), st.data())
def test_read_of_a_future_version(spec: CascadeSpec, data: st.DataObject) -> None:
    s = build_schedule(spec)
    S = spec.num_stages
    cands = [
        (k, j, v)
        for k, t in enumerate(s.tasks)
        for j in range(spec.num_blocks)
        if j != t.block
        for v in range(S)
        if s.starts[j] + v > t.tick
    ]
    k, j, v = pick(data, cands, "task, block, version")
    reads = [r for r in s.tasks[k].reads if r[0] != j] + [(j, v)]
    rejected(with_reads(s, k, reads))


@given(specs(min_blocks=2, attention="stale", max_lag_below_s=True), st.data())
def test_same_tick_read_under_stale(spec: CascadeSpec, data: st.DataObject) -> None:
    s = build_schedule(spec)
    # A visible predecessor in flight at the task's tick, read at the version of that very tick.
    cands = [
        (k, j)
        for k, t in enumerate(s.tasks)
        for j in range(t.block)
        if s.starts[j] <= t.tick <= s.starts[j] + spec.num_stages - 1
        and (j < spec.sink or spec.window is None or t.block - spec.window < j)
    ]
    k, j = pick(data, cands, "task, block")
    task = s.tasks[k]
    reads = [r for r in task.reads if r[0] != j] + [(j, task.tick - s.starts[j])]
    message = rejected(with_reads(s, k, reads))
    assert "same tick" in message


@given(specs(min_blocks=2), st.data())
def test_remove_a_read(spec: CascadeSpec, data: st.DataObject) -> None:
    s = build_schedule(spec)
    i = pick(data, [k for k, t in enumerate(s.tasks) if t.reads], "index")
    reads = list(s.tasks[i].reads)
    del reads[data.draw(st.integers(0, len(reads) - 1), label="read")]
    message = rejected(with_reads(s, i, reads))
    assert "does not read" in message


@given(specs(), st.data())
def test_read_of_its_own_block(spec: CascadeSpec, data: st.DataObject) -> None:
    s = build_schedule(spec)
    i = data.draw(st.integers(0, len(s.tasks) - 1), label="index")
    t = s.tasks[i]
    v = data.draw(st.integers(0, t.stage), label="version")  # even an already produced version
    message = rejected(with_reads(s, i, [*t.reads, (t.block, v)]))
    assert "own block" in message


@given(specs(min_blocks=2), st.data())
def test_read_repeated_or_unsorted(spec: CascadeSpec, data: st.DataObject) -> None:
    s = build_schedule(spec)
    i = pick(data, [k for k, t in enumerate(s.tasks) if t.reads], "index")
    t = s.tasks[i]
    if len(t.reads) >= 2 and data.draw(st.booleans(), label="unsorted"):
        reads = tuple(reversed(t.reads))
    else:
        reads = (*t.reads, t.reads[-1])
    rejected(dataclasses.replace(s, tasks=replace_task(s, i, t._replace(reads=reads))))


# -- whole-schedule mutations --------------------------------------------------------------------------------


@given(specs(), st.data())
def test_free_after_lowered(spec: CascadeSpec, data: st.DataObject) -> None:
    s = build_schedule(spec)
    b = data.draw(st.integers(0, spec.num_blocks - 1), label="block")
    by = data.draw(st.integers(1, 5), label="lowered by")
    free = list(s.free_after)
    free[b] -= by
    message = rejected(dataclasses.replace(s, free_after=tuple(free)))
    assert f"block {b}'s committed KV is freed" in message


@given(specs(min_blocks=2), st.data())
def test_lag_changed_in_starts(spec: CascadeSpec, data: st.DataObject) -> None:
    s = build_schedule(spec)
    b = data.draw(st.integers(1, spec.num_blocks - 1), label="block")
    delta = data.draw(st.integers(-3, 3).filter(bool), label="delta")
    shift_rest = data.draw(st.booleans(), label="shift later blocks too")
    starts = [x + delta if (k == b or (shift_rest and k > b)) else x for k, x in enumerate(s.starts)]
    message = rejected(dataclasses.replace(s, starts=tuple(starts)))
    assert "lag between blocks" in message


def test_start_zero_moved_and_lengths_wrong() -> None:
    s = build_schedule(CascadeSpec(num_blocks=4, lag=2))
    rejected(dataclasses.replace(s, starts=tuple(x + 1 for x in s.starts)), marked=False)
    rejected(dataclasses.replace(s, starts=s.starts[:-1]), marked=False)
    rejected(dataclasses.replace(s, free_after=s.free_after[:-1]), marked=False)


def test_spec_swapped_under_the_tasks() -> None:
    """Tasks built for one spec do not validate under another (lag, attention, window, timesteps)."""
    base = CascadeSpec(num_blocks=5, lag=1, num_devices=5)
    s = build_schedule(base)
    for change in (
        {"attention": "stale"},
        {"attention": "bidirectional"},
        {"window": 2},
        {"sink": 1},
        {"timesteps": (1000, 750, 500, 251)},
        {"num_devices": 4},
    ):
        other = dataclasses.replace(base, **change)
        if change == {"sink": 1}:  # unbounded window already sees block 0: this one is the same schedule
            validate(dataclasses.replace(s, spec=other))
            continue
        rejected(dataclasses.replace(s, spec=other))


# -- error grid on a long schedule ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_schedule() -> Schedule:
    return build_schedule(CascadeSpec(num_blocks=1000, lag=1, num_devices=5, window=7, sink=1))


@pytest.mark.parametrize("mutation", ["drop", "device", "read", "free_after", "starts", "duplicate"])
def test_error_grid_of_a_long_schedule_is_cut_around_the_failing_tick(
    long_schedule: Schedule, mutation: str
) -> None:
    s = long_schedule
    i = 2501  # block 499 or so, far from both ends
    task = s.tasks[i]
    if mutation == "drop":
        bad = dataclasses.replace(s, tasks=s.tasks[:i] + s.tasks[i + 1 :])
    elif mutation == "duplicate":
        bad = dataclasses.replace(s, tasks=s.tasks[: i + 1] + s.tasks[i:])
    elif mutation == "device":
        bad = dataclasses.replace(s, tasks=replace_task(s, i, task._replace(device=7)))
    elif mutation == "read":
        bad = with_reads(s, i, list(task.reads[:-1]))
    elif mutation == "free_after":
        free = list(s.free_after)
        free[task.block] = 0
        bad = dataclasses.replace(s, free_after=tuple(free))
    else:
        bad = dataclasses.replace(
            s, starts=s.starts[: task.block] + tuple(x + 1 for x in s.starts[task.block :])
        )
    message = rejected(bad)
    lines = message.splitlines()
    assert len(lines) < 40, f"{len(lines)} lines"
    row = next(line for line in lines if MARK in line)
    tick = int(row.split("|")[0])
    assert abs(tick - task.tick) <= 8, row
