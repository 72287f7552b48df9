"""The project's error hierarchy: every error a user can cause derives from :class:`CascadeError`; and
the range checks that raise them, and the interrupt a signal becomes.

The CLI turns each of these into one line on stderr and exit status 2; anything else is a bug.
"""

from __future__ import annotations

import math
import signal


class CascadeError(Exception):
    """Raised for any error the user can fix: bad arguments, an invalid schedule, a bad file."""


class ConfigError(CascadeError, ValueError):
    """Raised when a parameter is out of its valid range; ``param`` names it (``lag``, ``window``, or a flag
    such as ``--seeds``), and ``part_of`` the setting it is a part of, if any (``at_block`` of ``switches``):
    the command line names the flag that sets it."""

    def __init__(self, param: str, message: str, *, part_of: str | None = None) -> None:
        super().__init__(message)
        self.param, self.part_of = param, part_of


class ScheduleError(CascadeError):
    """Raised when a schedule breaks the semantic contract; the message carries the marked grid."""


class CheckpointError(CascadeError):
    """Raised when a checkpoint cannot be loaded exactly: missing, unexpected or mis-shaped tensors."""


class SimulationError(CascadeError):
    """Raised when a simulation cannot be run as asked: unknown hardware, a plan that does not fit."""


class ExecutorError(CascadeError):
    """Raised when an executor cannot run a schedule, or a rank failed (names the rank, tick and task)."""


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread when the process receives ``signum`` (SIGTERM; Ctrl-C raises the plain
    ``KeyboardInterrupt``); ``kept`` says what the interrupted run kept, where the code raising it knows."""

    def __init__(self, signum: int, kept: str | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.kept = signum, kept

    @staticmethod
    def on_signal(signum: int, frame: object) -> None:
        """A signal handler (``signal.signal(signal.SIGTERM, Interrupted.on_signal)``): raise it."""
        raise Interrupted(signum)


def signal_of(exc: BaseException) -> int:
    """The signal an interrupt came from: SIGTERM (or another) for :class:`Interrupted`, SIGINT for Ctrl-C.

    >>> signal_of(KeyboardInterrupt()) == signal.SIGINT, signal_of(Interrupted(signal.SIGTERM)) == signal.SIGTERM
    (True, True)
    """
    return int(getattr(exc, "signum", signal.SIGINT))


def check_range(param: str, value: int | None, lo: int, hi: int | None = None, what: str = "", *,
                part_of: str | None = None) -> None:
    """Refuse an integer ``value`` outside ``lo..hi`` (``hi=None``: no upper bound) with one
    :class:`ConfigError` naming ``param`` (a setting, or the flag itself), the bound and ``what`` it means;
    None (a flag not given) passes.

    >>> check_range("lag", 3, 1, 5)
    >>> check_range("--seeds", 0, 1, 10)
    Traceback (most recent call last):
    ...
    cascade_sched.errors.ConfigError: `--seeds` must be between 1 and 10, got 0
    """
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(param, f"`{param}` must be an integer, got {value!r}", part_of=part_of)
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ConfigError(param, f"`{param}` must be {bound}{what}, got {value}", part_of=part_of)


def check_float(param: str, value: float | None, lo: float, hi: float | None = None, *, open_lo: bool = False,
                what: str = "") -> None:
    """:func:`check_range` for a number: refuse a non-finite ``value``, or one outside ``lo..hi``
    (``open_lo``: strictly above ``lo``).

    >>> check_float("--timeout", 0.0, 0, open_lo=True, what=" seconds")
    Traceback (most recent call last):
    ...
    cascade_sched.errors.ConfigError: `--timeout` must be a finite number above 0 seconds, got 0
    """
    if value is None:
        return
    bad_lo = value <= lo if open_lo else value < lo
    if not math.isfinite(value) or bad_lo or (hi is not None and value > hi):
        low = f"above {lo:g}" if open_lo else f"at least {lo:g}"
        bound = f"{low} and at most {hi:g}" if hi is not None else low
        raise ConfigError(param, f"`{param}` must be a finite number {bound}{what}, got {value:g}")
