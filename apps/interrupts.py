"""Ctrl-C and SIGTERM end every command the same way: one line that says what was kept, exit 130 or 143.

SIGTERM is turned into :class:`~cascade_sched.errors.Interrupted` (a ``KeyboardInterrupt``) in the main
thread, so it unwinds through the same ``finally`` blocks and partial-output handling as Ctrl-C. Code that
has something to say when interrupted (``kept 60 finished blocks in x.partial.mp4``) registers it with
:func:`on_interrupt` while it runs; the command line prints it, after the stack has unwound (so the note
sees the files as the ``finally`` blocks left them).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from cascade_sched.errors import Interrupted, signal_of

__all__ = ["exit_code", "handled", "install", "line", "on_interrupt", "say", "stop_on_sigint", "what_was_kept"]

_notes: list[Callable[[], str | None]] = []
_unwound: list[Callable[[], str | None]] = []  # notes of blocks an exception left: said once, then dropped


def install() -> None:
    """Turn SIGTERM into :class:`~cascade_sched.errors.Interrupted` (main thread only; a no-op elsewhere),
    and forget the notes of an earlier command in this process."""
    _unwound.clear()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, Interrupted.on_signal)


def stop_on_sigint() -> None:
    """Let SIGINT interrupt this process even where it started with SIGINT ignored (main thread only).

    A shell without job control (a script, ``sh -c``) starts a background job (``cascade serve &``) with
    SIGINT ignored, as POSIX asks, and Python keeps an inherited SIG_IGN. A server is stopped with SIGINT
    wherever it runs: uvicorn takes SIGINT while it serves, shuts down, then raises it again into the
    disposition it found, which must be Python's, so the command says its one line and exits 130 as it
    does in a terminal."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


def handled() -> None:
    """Tell CPython that the interrupt was handled, so the command exits with its own status.

    A KeyboardInterrupt raised inside ``exec`` of a string (dataclasses and namedtuple build their methods
    so, while a module imports: a Ctrl-C during an import often lands there) sets CPython's "unhandled
    KeyboardInterrupt" flag even when the exception is then caught, and the interpreter ends by killing
    itself with SIGINT instead of exiting 130. Running a string clears the flag again (CPython's
    ``run_eval_code_obj`` resets it before each one).
    """
    exec("None")


def exit_code(exc: BaseException) -> int:
    """128 + the signal number: 130 for SIGINT, 143 for SIGTERM (the shell's convention)."""
    return 128 + signal_of(exc)


def line(command: str, signum: int, kept: str | None) -> str:
    """The one line an interrupted command prints: ``cascade generate: interrupted (SIGINT): kept ...``.

    >>> line("cascade plan", signal.SIGTERM, "")
    'cascade plan: interrupted (SIGTERM)'
    """
    return f"{command}: interrupted ({signal.Signals(signum).name})" + (f": {kept}" if kept else "")


def say(command: str, signum: int, kept: str | None) -> None:
    """Print ``command``'s one line for an interrupt: what rank 0 of a torchrun launch reports
    (``functools.partial(say, "cascade generate")`` is :func:`executors.launch.run_rank`'s ``report``)."""
    print(line(command, signum, kept), file=sys.stderr, flush=True)


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


def what_was_kept(exc: BaseException | None = None) -> str:
    """What the interrupt ``exc`` says it kept (ranks that stopped report it so), then the registered
    notes, joined (empty when none has anything to say); the notes of blocks an exception left are said
    once."""
    out = [exc.kept] if isinstance(exc, Interrupted) and exc.kept else []
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
