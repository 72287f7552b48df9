"""One Chrome trace format for predicted and measured timelines (opens in Perfetto and chrome://tracing).

The simulator and every executor write events through :func:`write_chrome_trace` and name them with the
functions below, so a predicted and a measured run of one schedule have the same event names, categories
and tracks and can be laid side by side. Devices are processes, tracks are threads (the category of an
event is its track), times are seconds in and microseconds out:

- ``compute``: one slice per task, named :func:`~cascade_sched.schedule.task_name` (``B3S1``, ``B3R``),
  spanning its device's batched forward of the tick;
- ``sample``: the sampler step after each denoise task, named like the task;
- ``comm``: ``exchange t5`` (the per-layer joint-attention exchange inside tick 5's forward) and
  ``transfer t5`` (the K/V and latents tick 5 produced, sent to other devices after it);
- ``decode``: ``decode B3`` (block 3's frames);
- ``host``: anything else a process does (compiling, loading).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cascade_sched.schedule import task_name

COMPUTE, COMM, SAMPLE, DECODE, HOST = "compute", "comm", "sample", "decode", "host"
TRACKS: tuple[str, ...] = (COMPUTE, COMM, SAMPLE, DECODE, HOST)

__all__ = [
    "COMM", "COMPUTE", "DECODE", "HOST", "SAMPLE", "TRACKS", "TraceEvent", "TraceFlow", "chrome_trace",
    "decode_name", "exchange_name", "read_chrome_trace", "task_name", "transfer_name", "write_chrome_trace",
]


def decode_name(block: int) -> str:
    """The decode slice of ``block``: ``decode B3``."""
    return f"decode B{block}"


def exchange_name(tick: int) -> str:
    """The joint-attention exchange inside ``tick``'s forward: ``exchange t5``."""
    return f"exchange t{tick}"


def transfer_name(tick: int) -> str:
    """What ``tick`` produced for other devices (K/V, latents), sent after it: ``transfer t5``."""
    return f"transfer t{tick}"


@dataclass(frozen=True)
class TraceEvent:
    """One slice on a device's track; ``start_s`` and ``duration_s`` in seconds from the run's start."""

    name: str
    device: int
    track: str
    start_s: float
    duration_s: float
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TraceFlow:
    """A dependency arrow from the end of one event to the start of another (e.g. a KV read)."""

    source: TraceEvent
    target: TraceEvent
    name: str = "dep"


def _tid(track: str) -> int:
    return TRACKS.index(track) if track in TRACKS else len(TRACKS) + sum(map(ord, track)) % 1000


def chrome_trace(
    events: Iterable[TraceEvent],
    flows: Iterable[TraceFlow] = (),
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The trace as a JSON-ready object (``traceEvents`` plus ``metadata``).

    >>> ev = TraceEvent("B0S0", 0, "compute", 0.0, 0.001)
    >>> [e["ph"] for e in chrome_trace([ev])["traceEvents"]]
    ['M', 'M', 'X']
    """
    out: list[dict[str, Any]] = []
    named: set[tuple[int, int | None]] = set()

    def name_once(pid: int, tid: int | None, label: str) -> None:
        if (pid, tid) in named:
            return
        named.add((pid, tid))
        if tid is None:
            out.append({"ph": "M", "pid": pid, "name": "process_name", "args": {"name": label}})
        else:
            out.append({"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": label}})

    for e in events:
        tid = _tid(e.track)
        name_once(e.device, None, f"device {e.device}")
        name_once(e.device, tid, e.track)
        out.append(
            {
                "ph": "X",
                "name": e.name,
                "cat": e.track,
                "pid": e.device,
                "tid": tid,
                "ts": e.start_s * 1e6,
                "dur": max(e.duration_s, 0.0) * 1e6,
                "args": dict(e.args),
            }
        )
    for i, f in enumerate(flows):
        src, dst = f.source, f.target
        out.append({"ph": "s", "id": i, "name": f.name, "cat": "dep", "pid": src.device,
                    "tid": _tid(src.track), "ts": (src.start_s + src.duration_s) * 1e6})
        out.append({"ph": "f", "bp": "e", "id": i, "name": f.name, "cat": "dep", "pid": dst.device,
                    "tid": _tid(dst.track), "ts": dst.start_s * 1e6})
    return {"traceEvents": out, "displayTimeUnit": "ms", "metadata": dict(metadata or {})}


def write_chrome_trace(
    path: str,
    events: Iterable[TraceEvent],
    flows: Iterable[TraceFlow] = (),
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write :func:`chrome_trace` to ``path`` (under its partial name until complete)."""
    from cascade_sched.outputs import committed

    with committed(path, keep_partial=False) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(chrome_trace(events, flows, metadata), f)


def read_chrome_trace(path: str) -> list[TraceEvent]:
    """The complete (``X``) events of a trace written by :func:`write_chrome_trace`, in seconds."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return [
        TraceEvent(e["name"], e["pid"], e.get("cat", ""), e["ts"] / 1e6, e["dur"] / 1e6, e.get("args", {}))
        for e in data["traceEvents"]
        if e.get("ph") == "X"
    ]
