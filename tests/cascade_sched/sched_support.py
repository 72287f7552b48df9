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
    """The core tests' spec space at stage stride 1 on the block and stage placements:
    :func:`tests.strategies.specs` over all of it (random timesteps, per-block lags, any window and sink,
    every attention mode)."""
    return strategies.specs(blocks=(min_blocks, max_blocks), attention=attention,
                            max_lag_below_s=max_lag_below_s, windowed=windowed)


def ring_specs(min_blocks: int = 1, max_blocks: int = 10, attention: str | None = None,
               max_lag_below_s: bool = False, windowed: bool = False, switches: int = 0,
               placements: tuple[str, ...] = strategies.ALL_PLACEMENTS) -> st.SearchStrategy[CascadeSpec]:
    """The space issue 24 adds: stage strides 1..4, and placement ``layers`` on G x W rings (W <= 4) beside
    the block and stage placements, with every attention mode."""
    return strategies.specs(blocks=(min_blocks, max_blocks), attention=attention, devices=(1, 8),
                            max_lag_below_s=max_lag_below_s, windowed=windowed, strides=(1, 4),
                            placements=placements, switches=switches)


def oracle_starts(spec: CascadeSpec) -> list[int]:
    """Start ticks straight from the spec's own ``lag`` field (not from ``spec.lags``); the sequential lag
    is ``(S-1)*k + 1``."""
    s, n = spec.num_stages, spec.num_blocks
    if spec.lag is None:
        lags = [(s - 1) * spec.stage_stride + 1] * (n - 1)
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

    Task (b, s) runs at tick ``n = start(b) + s*k``. Visible: sink blocks ``0..sink-1`` that precede it,
    window predecessors ``b - window < j < b``, and under bidirectional attention every later block in
    flight at n (``start(j) <= n <= start(j) + (S-1)*k``). Version: ``stage`` reads ``(j, s)``; ``stale``
    reads ``(j, done(j, n))``, the largest v with ``start(j) + v*k < n`` (nothing if none); the others
    read ``(j, ver(j, n))``, the largest v with ``start(j) + v*k <= n``; both capped at S-1.
    """
    s_count, k = spec.num_stages, spec.stage_stride
    starts = oracle_starts(spec)
    n = starts[block] + stage * k
    out = []
    for j in range(spec.num_blocks):
        if j == block:
            continue
        in_flight = starts[j] <= n <= starts[j] + (s_count - 1) * k
        sink = j < spec.sink and j < block
        window = j < block and (spec.window is None or block - spec.window < j)
        later = spec.attention == "bidirectional" and j > block and in_flight
        if not (sink or window or later):
            continue
        ver = [v for v in range(s_count) if starts[j] + v * k <= n]
        done = [v for v in range(s_count) if starts[j] + v * k < n]
        if spec.attention == "stage":
            out.append((j, stage))
        elif spec.attention == "stale":
            if done:
                out.append((j, done[-1]))
        elif ver:
            out.append((j, ver[-1]))
    return tuple(out)


def replace_task(schedule: Schedule, index: int, task: Task) -> tuple[Task, ...]:
    """The schedule's tasks with the one at ``index`` replaced."""
    return (*schedule.tasks[:index], task, *schedule.tasks[index + 1 :])
