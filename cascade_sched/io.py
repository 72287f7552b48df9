"""The schedule's JSON form, ``cascade-schedule/4`` (documented in docs/schedule-format.md).

Version 4 adds the placements and contexts of docs/contract.md: the spec's ``stage_stride``, ``rings``,
``layer_split`` and ``num_layers``, and for every task its ``segments``, ``[device, first_layer,
end_layer]`` in ring order. Version 3 (a recache task's re-encoded versions in ``replaces``), version 2
(prompt switches, recache tasks with the replaced versions in ``reads``) and version 1 (no switches) are
still read; their tasks run all layers on their device.
"""

from __future__ import annotations

import json
from typing import Any

from cascade_sched.errors import CascadeError, ScheduleError
from cascade_sched.placement import Segment, ring_segments
from cascade_sched.schedule import KVRef, Schedule, Task, TaskKind, build_schedule
from cascade_sched.spec import CascadeSpec
from cascade_sched.validate import validate

FORMAT = "cascade-schedule/4"
READABLE = ("cascade-schedule/1", "cascade-schedule/2", "cascade-schedule/3", FORMAT)


def schedule_to_dict(schedule: Schedule) -> dict[str, Any]:
    """The JSON-ready object: format, spec (every field), num_stages and the tasks in (tick, block) order."""

    def task_dict(t: Task) -> dict[str, Any]:
        out: dict[str, Any] = {
            "block": t.block,
            "stage": t.stage,
            "tick": t.tick,
            "timestep": t.timestep,
            "kind": str(t.kind),
            "device": t.device,
            "prompt": t.prompt,
            "reads": [[j, v] for j, v in t.reads],
            "segments": [list(seg) for seg in schedule.segments(t)],
        }
        if t.kind == TaskKind.RECACHE:
            out["replaces"] = [[j, v] for j, v in t.replaces]
            out["writes"] = [[j, v] for j, v in schedule.writes(t)]
        return out

    return {
        "format": FORMAT,
        "spec": schedule.spec.to_dict(),
        "num_stages": schedule.num_stages,
        "tasks": [task_dict(t) for t in schedule.tasks],
    }


def dumps(schedule: Schedule, indent: int | None = None) -> str:
    """The schedule as a ``cascade-schedule/4`` JSON string."""
    return json.dumps(schedule_to_dict(schedule), indent=indent)


def schedule_from_dict(data: Any) -> Schedule:
    """Read a ``cascade-schedule/4`` (or ``/3``, ``/2``, ``/1``) object back and validate it.

    The tasks are taken as written (not rebuilt from the spec), so a file edited by hand, with a
    custom placement or custom segments say, is checked by :func:`validate` rather than silently
    replaced.
    """
    if not isinstance(data, dict) or data.get("format") not in READABLE:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ScheduleError(f"not a schedule: expected \"format\" one of {list(READABLE)}, got {got!r}")
    try:
        spec = CascadeSpec.from_dict(data["spec"])
        if data["num_stages"] != spec.num_stages:
            raise ScheduleError(f"num_stages is {data['num_stages']}, but the spec has {spec.num_stages} stages")
        # Before version 3 a recache task named what it replaces in "reads".
        v2 = data["format"] in ("cascade-schedule/1", "cascade-schedule/2")
        tasks = tuple(_task(t, v2) for t in data["tasks"])
        custom = _custom_segments(spec, data["tasks"], tasks)
    except CascadeError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise ScheduleError(f"malformed schedule JSON: {type(e).__name__}: {e}") from None
    # Start ticks and free ticks follow from the spec; the tasks are checked against them.
    reference = build_schedule(spec)
    schedule = Schedule(spec=spec, tasks=tasks, starts=reference.starts, free_after=reference.free_after,
                        recache_free_after=reference.recache_free_after, custom_segments=custom)
    return validate(schedule)


def _custom_segments(
    spec: CascadeSpec, raw: list[dict[str, Any]], tasks: tuple[Task, ...]
) -> dict[KVRef, tuple[Segment, ...]]:
    """The segments written for tasks whose segments differ from those their device gives (a hand edit).

    Outside placement ``layers`` a task is one segment of all layers on its ``device``: the segment's
    device follows ``device``, so a hand edit of ``device`` alone (as in older versions) moves the task."""
    out: dict[KVRef, tuple[Segment, ...]] = {}
    derived: dict[int, tuple[Segment, ...] | None] = {}
    one = spec.ring_size == 1
    for t, task in zip(raw, tasks, strict=True):
        if "segments" not in t:
            continue
        segs = tuple((int(d), int(first), None if end is None else int(end)) for d, first, end in t["segments"])
        if one and len(segs) == 1:
            segs = ((task.device, segs[0][1], segs[0][2]),)
        if task.device not in derived:
            derived[task.device] = ring_segments(spec, task.device)
        if segs != derived[task.device]:
            out[task.ref] = segs
    return out


def _task(t: dict[str, Any], old: bool) -> Task:
    kind = _kind(t["kind"])
    reads = tuple((int(j), int(v)) for j, v in t["reads"])
    replaces = tuple((int(j), int(v)) for j, v in t.get("replaces", ()))
    if old and kind == TaskKind.RECACHE:
        reads, replaces = (), reads
    return Task(int(t["block"]), int(t["stage"]), int(t["tick"]), int(t["device"]), kind, t["timestep"], reads,
                int(t.get("prompt", 0)), replaces)


def _kind(value: Any) -> TaskKind:
    try:
        return TaskKind(value)
    except ValueError:
        raise ScheduleError(f"unknown task kind {value!r}; valid: {', '.join(k.value for k in TaskKind)}") from None


def loads(text: str) -> Schedule:
    """Parse and validate a ``cascade-schedule/4`` (or older) JSON string."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ScheduleError(f"schedule JSON does not parse: {e}") from None
    return schedule_from_dict(data)
