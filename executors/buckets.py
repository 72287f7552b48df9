"""The forward shapes a schedule needs, derived before the run: the compiled executor's buckets.

A tick's forward on one process has two kinds of shapes (``tpb`` = tokens per block):

- the *stream*: the local model inputs' tokens, ``n * tpb``. The embedding, every layer's projections,
  modulation, cross-attention and FFN, and the head run over it: bucket ``Bucket("tokens", n * tpb)``.
  A task is one model input, except a recache task: one cache pass per block it re-encodes.
- one *attention group* per distinct key set (the model groups inputs whose own version plus reads are
  the same versions; a bidirectional gang is one group): queries ``members * tpb`` against keys
  ``|key set| * tpb``: bucket ``Bucket("attention", q, k)``.

Both are pure functions of the :class:`~cascade_sched.schedule.Schedule` (``gangs``, ``task.reads``,
``task.device``, ``writes``), so the whole set is known before the first tick and nothing is compiled
mid-stream.

>>> from cascade_sched import CascadeSpec, build_schedule
>>> s = build_schedule(CascadeSpec(num_blocks=3, lag=1, timesteps=(1000, 500), num_devices=1))
>>> sorted(map(str, forward_buckets(s, [0], tokens_per_block=12)))
['attn12x12', 'attn12x24', 'attn12x36', 'tokens12', 'tokens24', 'tokens36']
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from cascade_sched.errors import ConfigError
from cascade_sched.schedule import ForwardInput, Schedule, Task, attention_groups

TOKENS = "tokens"
ATTENTION = "attention"


class Bucket(NamedTuple):
    """One static forward shape: the token stream of a tick, or one attention group's (queries, keys)."""

    kind: str  # TOKENS or ATTENTION
    queries: int  # stream tokens (TOKENS) or the group's query tokens (ATTENTION)
    keys: int = 0  # key tokens of the group (ATTENTION only)

    def __str__(self) -> str:
        return f"tokens{self.queries}" if self.kind == TOKENS else f"attn{self.queries}x{self.keys}"


ModelInput = ForwardInput  # (version it writes, versions of other blocks it reads)


def model_inputs(schedule: Schedule, tasks: Sequence[Task]) -> list[ModelInput]:
    """The model inputs of a tick's local ``tasks``, in the order the tick loop builds them
    (``Schedule.forward_inputs``: a task is itself, a recache task one cache pass per version it writes)."""
    return [x for t in tasks for x in schedule.forward_inputs(t)]


def tick_buckets(inputs: Sequence[ModelInput], tokens_per_block: int) -> frozenset[Bucket]:
    """The buckets one forward of ``inputs`` (one tick's local model inputs) uses; empty for none. Its
    attention groups are the model's (:func:`~cascade_sched.schedule.attention_groups`).

    >>> from cascade_sched import CascadeSpec, build_schedule
    >>> s = build_schedule(CascadeSpec(num_blocks=2, lag=1, attention="bidirectional"))
    >>> sorted(map(str, tick_buckets(model_inputs(s, s.gangs[1]), 12)))  # B0S1 + B1S0 see each other
    ['attn24x24', 'tokens24']
    """
    if not inputs:
        return frozenset()
    out = {Bucket(TOKENS, len(inputs) * tokens_per_block)}
    for keys, members in attention_groups(inputs):
        out.add(Bucket(ATTENTION, len(members) * tokens_per_block, len(keys) * tokens_per_block))
    return frozenset(out)


def local_tasks(schedule: Schedule, tick: int, devices: Iterable[int]) -> tuple[Task, ...]:
    """The tasks of ``tick`` placed on ``devices`` (one rank's share of the gang), in block order."""
    local = frozenset(devices)
    return tuple(t for t in schedule.gangs[tick] if t.device in local)


def bucket_of(schedule: Schedule, tick: int, devices: Iterable[int], tokens_per_block: int) -> frozenset[Bucket]:
    """The buckets the process running ``devices`` needs at ``tick``."""
    return tick_buckets(model_inputs(schedule, local_tasks(schedule, tick, devices)), tokens_per_block)


def forward_buckets(schedule: Schedule, devices: Iterable[int], tokens_per_block: int) -> set[Bucket]:
    """Every bucket the process running ``devices`` needs over the whole schedule (see the module doc)."""
    if tokens_per_block < 1:
        raise ConfigError("tokens_per_block", f"`tokens_per_block` must be positive, got {tokens_per_block}")
    devs = frozenset(devices)
    bad = sorted(d for d in devs if not 0 <= d < schedule.num_devices)
    if bad:
        raise ConfigError("devices", f"devices {bad} are not in the schedule's 0..{schedule.num_devices - 1}")
    out: set[Bucket] = set()
    for tick in range(schedule.num_ticks):
        out |= bucket_of(schedule, tick, devs, tokens_per_block)
    return out
