"""Bounds on what a command may be asked to build or run, derived from what this machine can hold or finish.

A request past a bound is refused before any work with one line (a :class:`ConfigError`) naming the flag
as typed, the bound and why. :mod:`cascade_sched.cliargs` re-exports these for the subcommands' parsers.
Nothing here imports torch or simpy.

>>> check_int("--seeds", 3, 1, 10)
>>> check_int("--seeds", 0, 1, 10)
Traceback (most recent call last):
...
cascade_sched.errors.ConfigError: `--seeds` must be between 1 and 10, got 0
"""

from __future__ import annotations

import os

from cascade_sched.errors import ConfigError

# Building a schedule costs about TASK_BYTES and TASK_S per task plus READ_BYTES and READ_S per
# (task, visible block) pair (measured: benchmarks/bench_schedule.py; 2 shared cores, generous).
TASK_BYTES, TASK_S, READ_BYTES, READ_S = 400, 40e-6, 10, 2e-6
WORK_BUDGET_S = 600.0  # a run refused up front when its size alone predicts more than ten minutes of work
MAX_BLOCKS = 100_000  # 500 000 tasks: ~0.2 GB and ~20 s to build at the default 4+1 stages
MAX_LIST = 4096  # entries a list flag (1-8, 1,2,4) may expand to
MAX_SEED = 2**63 - 1  # torch and numpy generators take 64-bit seeds
MAX_STRIDE = 64  # ticks between a block's stages: a ring needs its size; past 64 only empty ticks grow the build
MAX_REPEATS = 1000
MAX_TIMEOUT_S = 7 * 24 * 3600.0
PLAN_POINT_TASK_S = 65e-6  # simulating one task of one plan point (the default plan: 76 800 in 5 s)


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def available_memory() -> int:
    """Bytes of memory available to a new allocation (MemAvailable; 8 GiB where the system does not say)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 8 << 30


def gib(n: float) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def check_schedule_size(
    blocks: int, stages: int, window: int | None, sink: int, flag: str = "blocks"
) -> None:
    """Refuse a schedule too big to build: past ``MAX_BLOCKS``, past half the available memory, or past
    ``WORK_BUDGET_S`` of predicted work (an unbounded window makes the reads quadratic)."""
    if blocks > MAX_BLOCKS:
        raise ConfigError(
            flag,
            f"`--blocks` must be at most {MAX_BLOCKS} (a schedule holds blocks x stages "
            f"tasks, ~{TASK_BYTES} B and ~{TASK_S * 1e6:.0f} us each to build), got {blocks}",
        )
    tasks = blocks * stages
    reads = tasks * (min(blocks, window + sink) if window else (blocks + 1) // 2)
    need = tasks * TASK_BYTES + reads * READ_BYTES
    seconds = tasks * TASK_S + reads * READ_S
    have = available_memory()
    why = (
        ""
        if window
        else "; an unbounded `--window` makes every task read every earlier block: give `--window`"
    )
    if need > have // 2:
        raise ConfigError(
            flag,
            f"`--blocks` {blocks} needs ~{gib(need)} to build, more than half the "
            f"{gib(have)} available{why}",
        )
    if seconds > WORK_BUDGET_S:
        raise ConfigError(
            flag,
            f"`--blocks` {blocks} would take ~{seconds / 60:.0f} min just to build the "
            f"schedule (bound: {WORK_BUDGET_S / 60:.0f} min){why}",
        )


def check_int(flag: str, value: int | None, lo: int, hi: int | None = None, why: str = "") -> None:
    """Refuse ``value`` outside ``lo..hi`` in one line naming ``flag`` (as typed) and the bound."""
    if value is None:
        return
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ConfigError(flag, f"`{flag}` must be {bound}{why}, got {value}")


def check_float(
    flag: str,
    value: float | None,
    lo: float,
    hi: float | None = None,
    *,
    open_lo: bool = False,
    why: str = "",
) -> None:
    """Refuse a non-finite ``value``, or one outside ``lo..hi`` (``open_lo``: strictly above ``lo``)."""
    if value is None:
        return
    bad_lo = value <= lo if open_lo else value < lo
    if value != value or value in (float("inf"), float("-inf")) or bad_lo or (hi is not None and value > hi):
        low = f"above {lo:g}" if open_lo else f"at least {lo:g}"
        bound = f"{low} and at most {hi:g}" if hi is not None else low
        raise ConfigError(flag, f"`{flag}` must be a finite number {bound}{why}, got {value:g}")


def check_threads(flag: str, value: int) -> None:
    """``--threads``: 0 (torch's default) up to this process's cores (more threads only contend)."""
    n = cpu_count()
    check_int(flag, value, 0, n, f" (0 = torch's default; this process may use {n} core(s))")
