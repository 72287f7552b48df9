"""Ctrl-C and SIGTERM end every command the same way: one line that says what was kept, exit 130 or 143.

SIGTERM is turned into :class:`Interrupted` (a ``KeyboardInterrupt``) in the main thread, so it unwinds
through the same ``finally`` blocks and partial-output handling as Ctrl-C. Code that has something to say
when interrupted (``kept 60 finished blocks in x.partial.mp4``) registers it with :func:`on_interrupt`
while it runs; the command line prints it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["Interrupted", "exit_code", "install", "on_interrupt", "signal_name", "what_was_kept"]

_notes: list[Callable[[], str | None]] = []


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread when the process receives ``signum`` (SIGTERM; Ctrl-C raises the
    ``KeyboardInterrupt`` it always did)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def install() -> None:
    """Turn SIGTERM into :class:`Interrupted` (main thread only; a no-op elsewhere)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise)


def signal_name(exc: BaseException) -> str:
    """``SIGINT`` or ``SIGTERM`` for an interrupt."""
    return signal.Signals(getattr(exc, "signum", signal.SIGINT)).name


def exit_code(exc: BaseException) -> int:
    """128 + the signal number: 130 for SIGINT, 143 for SIGTERM (the shell's convention)."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


@contextmanager
def on_interrupt(note: Callable[[], str | None]) -> Iterator[None]:
    """While the block runs, ``note()`` says what an interrupt keeps (or None for nothing to say)."""
    _notes.append(note)
    try:
        yield
    finally:
        _notes.remove(note)


def what_was_kept() -> str:
    """The registered notes, joined (empty when none has anything to say)."""
    out = []
    for note in list(_notes):
        try:
            text = note()
        except Exception:  # saying what was kept must never hide the interrupt itself
            text = None
        if text:
            out.append(text)
    return "; ".join(out)
