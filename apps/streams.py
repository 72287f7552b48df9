"""How a running stream's schedule changes between ticks, without changing a task that has run.

- :func:`next_schedule`: each new prompt switches at the first block not yet started (under ``recache``
  its recache task must also be still to come), and while a stream stays open one block is always
  scheduled ahead, so it never drains (``cascade generate --interactive``, ``cascade serve``);
- :func:`end_schedule`: the stream cut after the blocks already started, so those in flight finish and no
  new one starts (a served stream's end).

Both grow or cut the spec the one way a spec changes (``CascadeSpec.extended``, ``CascadeSpec.replace``).
"""

from __future__ import annotations

from cascade_sched.schedule import Schedule, build_schedule

__all__ = ["end_schedule", "next_schedule"]


def next_schedule(schedule: Schedule, tick: int, new_prompt_ids: list[int], streaming: bool,
                  max_blocks: int) -> Schedule | None:
    """The schedule to run after ``tick``: each new prompt switches at the first block not yet started
    (under ``recache`` its recache task must also be still to come), and while ``streaming`` one block
    is always scheduled ahead. None when nothing changes."""
    spec = schedule.spec
    starts = schedule.starts
    margin = 1 if spec.switch_policy == "recache" else 0
    blocks, switches = spec.num_blocks, list(spec.switches)
    changed = False
    for pid in new_prompt_ids:
        p = next((b for b in range(blocks) if b < len(starts) and starts[b] > tick + margin), None)
        if p is None:  # every block has started: the switch takes the next block
            p = max(blocks, len(starts))
        if p >= max_blocks:
            continue
        blocks = max(blocks, p + 1)
        if switches and switches[-1][0] == p:  # two prompts before the block starts: the newer wins
            switches[-1] = (p, pid)
        else:
            switches = [sw for sw in switches if sw[0] < p] + [(p, pid)]
        changed = True
    if streaming and starts[-1] <= tick and blocks == spec.num_blocks and blocks < max_blocks:
        blocks += 1
        changed = True
    if not changed:
        return None
    return build_schedule(spec.extended(blocks - spec.num_blocks).replace(switches=tuple(switches)))


def end_schedule(schedule: Schedule, tick: int) -> Schedule | None:
    """``schedule`` cut after the blocks that have started by ``tick`` (or whose recache task has run): the
    blocks in flight finish, no new one starts. None when nothing is left to cut.

    >>> from cascade_sched import CascadeSpec
    >>> s = build_schedule(CascadeSpec(num_blocks=8, lag=1))
    >>> end_schedule(s, 2).num_blocks, end_schedule(s, 2).num_ticks
    (3, 7)
    """
    spec = schedule.spec
    recache = {at for _, at in spec.recache_switches}
    keep = sum(1 for b, st in enumerate(schedule.starts) if st <= tick or (b in recache and st - 1 <= tick))
    keep = max(keep, 1)
    if keep >= spec.num_blocks:
        return None
    lag = spec.lag[: keep - 1] if isinstance(spec.lag, tuple) else spec.lag
    return build_schedule(spec.replace(num_blocks=keep, lag=lag,
                                       switches=tuple(sw for sw in spec.switches if sw[0] < keep)))
