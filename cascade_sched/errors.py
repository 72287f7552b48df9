"""The project's error hierarchy: every error a user can cause derives from :class:`CascadeError`.

The CLI turns each of these into one line on stderr and exit status 2; anything else is a bug.
"""

from __future__ import annotations


class CascadeError(Exception):
    """Raised for any error the user can fix: bad arguments, an invalid schedule, a bad file."""


class ConfigError(CascadeError, ValueError):
    """Raised when a parameter is out of its valid range; ``param`` names it (``lag``, ``window``, ...)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class ScheduleError(CascadeError):
    """Raised when a schedule breaks the semantic contract; the message carries the marked grid."""


class CheckpointError(CascadeError):
    """Raised when a checkpoint cannot be loaded exactly: missing, unexpected or mis-shaped tensors."""


class SimulationError(CascadeError):
    """Raised when a simulation cannot be run as asked: unknown hardware, a plan that does not fit."""


class ExecutorError(CascadeError):
    """Raised when an executor cannot run a schedule, or a rank failed (names the rank, tick and task)."""


def check_range(param: str, value: int, lo: int, hi: int | None = None, what: str = "") -> int:
    """Return ``value`` if ``lo <= value <= hi`` (``hi=None``: no upper bound), else raise ``ConfigError``.

    >>> check_range("lag", 3, 1, 5)
    3
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(param, f"`{param}` must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}{what}" if hi is not None else f"at least {lo}"
        raise ConfigError(param, f"`{param}` must be {bound}, got {value}")
    return value
