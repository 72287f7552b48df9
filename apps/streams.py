"""What the apps' streams tell the engine between ticks (``cascade generate --interactive``, ``cascade serve``).

A stream runs as a :class:`~executors.feed.Stream`: the engine declares one block whenever the next tick
needs one, so a stream never drains, and its hook answers after each tick with a
:class:`~executors.feed.Declaration`: a new prompt switches at the first block not declared yet (the newer
of two asked for before that block wins), and the stream's end lets the blocks in flight finish. Nothing
that has run changes, and nothing is re-planned.

:class:`Timeline` is the hooks' shared bookkeeping: it turns a new prompt into a declaration (or says why
none can be made), and gives the prompt of each block as its frames come out, forgetting the switches
behind them, so a stream's state stays bounded.
"""

from __future__ import annotations

import bisect

from cascade_sched.spec import CascadeSpec
from executors.feed import Declaration, StreamView

__all__ = ["Timeline", "first_declaration"]


def first_declaration(spec: CascadeSpec) -> CascadeSpec:
    """A stream's first blocks: as few as hold the spec's own switches (one without any), so that a prompt
    typed while it streams applies at the first block not yet started; the engine declares the others. Given
    per-block lags, every block they place (the stream then repeats the last lag).

    >>> first_declaration(CascadeSpec(num_blocks=16, lag=1, switches=((3, 1),))).num_blocks
    4
    """
    if isinstance(spec.lag, tuple):
        return spec
    return spec.replace(num_blocks=max((at + 1 for at, _ in spec.switches), default=1))


class Timeline:
    """The prompt switches of a stream, from its spec's and as its hook declares them.

    >>> t = Timeline(CascadeSpec(num_blocks=2, lag=1))
    >>> t.switch(StreamView(tick=3, declared=4, closed=False, max_blocks=None), 7)
    (Declaration(switch=7, end=False), 4)
    >>> t.prompt_of(3), t.prompt_of(4)
    (0, 7)
    """

    def __init__(self, spec: CascadeSpec) -> None:
        self._at = [0, *(at for at, _ in spec.switches if at)]  # block -> prompt id from there on
        self._ids = [spec.prompt_of(0), *(p for at, p in spec.switches if at)]

    def switch(self, view: StreamView, prompt: int) -> tuple[Declaration | None, int | None]:
        """Declare ``prompt`` from the first block not declared yet: (the declaration, that block), or
        (None, None) when no block follows (the stream is closed, or every block it may have is declared)."""
        if view.closed or (view.max_blocks is not None and view.declared >= view.max_blocks):
            return None, None
        at = view.declared
        if self._at[-1] == at:  # asked for twice before the block was declared: the newer wins
            self._ids[-1] = prompt
        else:
            self._at.append(at)
            self._ids.append(prompt)
        return Declaration(switch=prompt), at

    def prompt_of(self, block: int) -> int:
        """The prompt id of ``block``; blocks are asked for in order, so the switches before it are forgotten."""
        i = bisect.bisect_right(self._at, block) - 1
        if i > 0:
            del self._at[:i], self._ids[:i]
        return self._ids[0]

    @property
    def latest(self) -> int:
        """The prompt id of the last block declared or asked for."""
        return self._ids[-1]
