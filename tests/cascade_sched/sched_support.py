"""Shared pieces of the cascade_sched tests: hypothesis strategies over the spec space and an oracle.

The oracle restates DESIGN.md section 2 in the most literal way (for each task, loop over every block and
decide visibility and version), deliberately sharing no code with ``build_schedule`` or ``validate``.
"""

from __future__ import annotations

from hypothesis import strategies as st

from cascade_sched import CascadeSpec, Schedule, Task

ATTENTION = ("causal", "bidirectional", "stale")
PLACEMENT = ("block", "stage")


@st.composite
def timesteps(draw: st.DrawFn, min_k: int = 1, max_k: int = 6) -> tuple[float, ...]:
    """1..6 distinct timesteps in (0, 1000], strictly decreasing; mostly integers, sometimes floats."""
    k = draw(st.integers(min_k, max_k))
    value = st.integers(1, 1000) | st.floats(0.5, 1000.0, allow_nan=False, allow_infinity=False)
    values = draw(st.lists(value, min_size=k, max_size=k, unique=True))
    return tuple(sorted(values, reverse=True))


@st.composite
def specs(
    draw: st.DrawFn,
    min_blocks: int = 1,
    max_blocks: int = 10,
    attention: str | None = None,
    max_lag_below_s: bool = False,
    windowed: bool = False,
) -> CascadeSpec:
    """A valid spec anywhere in the space: 1 block, 1 device, lag S or 1, per-block lags, window 1,
    sink covering every block, no cache pass, all attention modes, both placements."""
    steps = draw(timesteps())
    cache_pass = draw(st.booleans())
    s = len(steps) + cache_pass
    top = s - 1 if max_lag_below_s and s > 1 else s
    n = draw(st.integers(min_blocks, max_blocks))
    lag_kind = draw(st.sampled_from(("none", "uniform", "per_block")))
    lag: int | tuple[int, ...] | None
    if lag_kind == "none" and not max_lag_below_s:
        lag = None
    elif lag_kind == "per_block":
        lag = tuple(draw(st.lists(st.integers(1, top), min_size=n - 1, max_size=n - 1)))
    else:
        lag = draw(st.integers(1, top))
    window = draw(st.integers(1, n + 1)) if windowed else draw(st.none() | st.integers(1, n + 1))
    return CascadeSpec(
        num_blocks=n,
        timesteps=steps,
        cache_pass=cache_pass,
        lag=lag,
        attention=attention or draw(st.sampled_from(ATTENTION)),
        window=window,
        sink=draw(st.integers(0, n + 1)),
        num_devices=draw(st.integers(1, 6)),
        placement=draw(st.sampled_from(PLACEMENT)),
        seed=draw(st.integers(0, 2**31)),
    )


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
