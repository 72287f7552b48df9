"""Ctrl-C and SIGTERM end every command the same way: one line that says what was kept, exit 130 or 143.

SIGTERM is turned into :class:`Interrupted` (a ``KeyboardInterrupt``) in the main thread, so it unwinds
through the same ``finally`` blocks and partial-output handling as Ctrl-C. Code that has something to say
when interrupted (``kept 60 finished blocks in x.partial.mp4``) registers it with :func:`on_interrupt`
while it runs; the command line prints it, after the stack has unwound (so the note sees the files as the
``finally`` blocks left them).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["Interrupted", "exit_code", "install", "line", "on_interrupt", "signal_name", "what_was_kept"]

_notes: list[Callable[[], str | None]] = []
_unwound: list[Callable[[], str | None]] = []  # notes of blocks an exception left: said once, then dropped


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread when the process receives ``signum`` (SIGTERM; Ctrl-C raises the
    ``KeyboardInterrupt`` it always did)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def install() -> None:
    """Turn SIGTERM into :class:`Interrupted` (main thread only; a no-op elsewhere), and forget the notes
    of an earlier command in this process."""
    _unwound.clear()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise)


def signal_name(exc: BaseException) -> str:
    """``SIGINT`` or ``SIGTERM`` for an interrupt."""
    return signal.Signals(getattr(exc, "signum", signal.SIGINT)).name


def exit_code(exc: BaseException) -> int:
    """128 + the signal number: 130 for SIGINT, 143 for SIGTERM (the shell's convention)."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


def line(command: str, signum: int, kept: str | None) -> str:
    """The one line an interrupted command prints: ``cascade generate: interrupted (SIGINT): kept ...``.

    >>> line("cascade plan", signal.SIGTERM, "")
    'cascade plan: interrupted (SIGTERM)'
    """
    return f"{command}: interrupted ({signal.Signals(signum).name})" + (f": {kept}" if kept else "")


@contextmanager
def on_interrupt(note: Callable[[], str | None]) -> Iterator[None]:
    """While the block runs, ``note()`` says what an interrupt keeps (or None for nothing to say).

    When an exception (an interrupt, or a failure) leaves the block, the note is kept for the next
    :func:`what_was_kept`, which asks it then: after every ``finally`` has closed its files.
    """
    _notes.append(note)
    try:
        yield
    except BaseException:
        _unwound.append(note)
        raise
    finally:
        _notes.remove(note)


def what_was_kept() -> str:
    """The registered notes, joined (empty when none has anything to say); the notes of blocks an
    exception left are said once."""
    out = []
    notes = [*_notes, *_unwound[::-1]]  # outermost first
    _unwound.clear()
    for note in notes:
        try:
            text = note()
        except Exception:  # saying what was kept must never hide the interrupt itself
            text = None
        if text:
            out.append(text)
    return "; ".join(out)
