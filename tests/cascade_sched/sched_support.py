"""Shared pieces of the cascade_sched tests: their spec strategy and an oracle.

The oracle restates docs/contract.md in the most literal way (for each task, loop over every block and
decide visibility and version), deliberately sharing no code with ``build_schedule`` or ``validate``.
"""

from __future__ import annotations

from hypothesis import strategies as st

from cascade_sched import CascadeSpec, Schedule, Task
from tests import strategies


def specs(min_blocks: int = 1, max_blocks: int = 10, attention: str | None = None,
          max_lag_below_s: bool = False, windowed: bool = False) -> st.SearchStrategy[CascadeSpec]:
    """The core tests' spec space: :func:`tests.strategies.specs` over all of it (random timesteps,
    per-block lags, any window and sink)."""
    return strategies.specs(blocks=(min_blocks, max_blocks), attention=attention,
                            max_lag_below_s=max_lag_below_s, windowed=windowed)


def oracle_starts(spec: CascadeSpec) -> list[int]:
    """Start ticks straight from the spec's own ``lag`` field (not from ``spec.lags``)."""
    s, n = spec.num_stages, spec.num_blocks
    if spec.lag is None:
        lags = [s] * (n - 1)
    elif isinstance(spec.lag, int):
        lags = [spec.lag] * (n - 1)
    else:
        lags = list(spec.lag)
    starts = [0]
    for lag in lags:
        starts.append(starts[-1] + lag)
    return starts


def oracle_reads(spec: CascadeSpec, block: int, stage: int) -> tuple[tuple[int, int], ...]:
    """The KV versions task (block, stage) reads, decided block by block from the contract's words.

    Visible: sink blocks ``0..sink-1`` that precede it, window predecessors ``b - window < j < b``, and
    under bidirectional attention every later block in flight at the tick. Version: committed
    ``(j, S-1)`` if j committed before the tick; else the same tick's ``(j, n - start(j))``, or under
    ``stale`` the previous tick's ``(j, n - 1 - start(j))`` (invisible if negative).
    """
    s_count = spec.num_stages
    starts = oracle_starts(spec)
    n = starts[block] + stage
    out = []
    for j in range(spec.num_blocks):
        if j == block:
            continue
        in_flight = starts[j] <= n <= starts[j] + s_count - 1
        sink = j < spec.sink and j < block
        window = j < block and (spec.window is None or block - spec.window < j)
        later = spec.attention == "bidirectional" and j > block and in_flight
        if not (sink or window or later):
            continue
        if starts[j] + s_count - 1 < n:
            out.append((j, s_count - 1))
        elif not in_flight:
            continue
        elif spec.attention == "stale":
            if n - 1 - starts[j] >= 0:
                out.append((j, n - 1 - starts[j]))
        else:
            out.append((j, n - starts[j]))
    return tuple(out)


def replace_task(schedule: Schedule, index: int, task: Task) -> tuple[Task, ...]:
    """The schedule's tasks with the one at ``index`` replaced."""
    return (*schedule.tasks[:index], task, *schedule.tasks[index + 1 :])
