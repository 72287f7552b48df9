"""Bounds on what a command may be asked to build or run, derived from what the machine can hold or finish.

A request past a bound is refused before any work with one line (a :class:`ConfigError`) naming the flag
as typed, the bound and why. What the machine offers comes in as a :class:`Machine`, measured by the
command line (``apps.host``): nothing here reads the machine, or imports torch or simpy.

>>> check_schedule_size(100, 5, 7, 0, Machine(cores=2, memory_bytes=8 << 30))
>>> check_schedule_size(10**6, 5, 7, 0, Machine(cores=2, memory_bytes=8 << 30))
Traceback (most recent call last):
...
cascade_sched.errors.ConfigError: `--blocks` must be at most 100000 (a schedule holds blocks x stages tasks, ~400 B and ~40 us each to build), got 1000000
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Machine:
    """What the machine a command runs on offers it: the cores this process may run on, and the bytes of
    memory available to a new allocation."""

    cores: int
    memory_bytes: int


def gib(n: float) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def check_schedule_size(
    blocks: int, stages: int, window: int | None, sink: int, machine: Machine, flag: str = "num_blocks"
) -> None:
    """Refuse a schedule too big to build: past ``MAX_BLOCKS``, past half the machine's available memory,
    or past ``WORK_BUDGET_S`` of predicted work (an unbounded window makes the reads quadratic)."""
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
    have = machine.memory_bytes
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
