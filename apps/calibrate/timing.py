"""Wall-clock helpers shared by calibration and validation: the median of timed repeats, and waiting for a
quiet moment on a shared machine (other work only ever adds time to a measurement).

Wall time here is ``time.perf_counter`` seconds, never the simulator's simulated seconds.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from cascade_sched.errors import ConfigError

__all__ = ["idle_share", "median_time", "sync", "wait_idle"]


def sync(device: torch.device) -> None:
    """Wait for ``device``'s queued work (a no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], Any], warmup: int, repeats: int, device: torch.device | None = None) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs.

    >>> median_time(lambda: None, 1, 3) >= 0.0
    True
    """
    if repeats < 1:
        raise ConfigError("repeats", f"`repeats` must be at least 1, got {repeats}")
    dev = device or torch.device("cpu")
    for _ in range(max(0, warmup)):
        fn()
    sync(dev)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _cpu_times() -> tuple[float, float] | None:
    """(idle, total) jiffies of all CPUs from /proc/stat, or None where there is no such file."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return fields[3] + (fields[4] if len(fields) > 4 else 0.0), sum(fields)


def idle_share(window_s: float = 0.3) -> float:
    """The share of all CPUs left idle over the next ``window_s`` seconds (NaN where unknown)."""
    a = _cpu_times()
    time.sleep(window_s)
    b = _cpu_times()
    if a is None or b is None or b[1] <= a[1]:
        return math.nan
    return (b[0] - a[0]) / (b[1] - a[1])


def wait_idle(min_idle: float = 0.8, timeout_s: float = 20.0, window_s: float = 0.3) -> float:
    """Wait until at least ``min_idle`` of the machine's CPUs are idle (other work on a shared machine has
    paused), at most ``timeout_s``; returns the idle share last seen (NaN where it cannot be read).

    Measurements on a shared CI machine start only in quiet moments; a row measured after the timeout
    carries the low idle share so the table can say so.
    """
    end = time.perf_counter() + timeout_s
    share = idle_share(window_s)
    while not (math.isnan(share) or share >= min_idle) and time.perf_counter() < end:
        share = idle_share(window_s)
    return share
