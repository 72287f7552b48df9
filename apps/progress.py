"""The one progress bar every command shows: tqdm on stderr, as wide as the terminal.

A command with ``--no-progress`` (or a bar that would only clutter, such as a stream on a terminal with
its own status line) asks for none and gets None; callers update what they were given.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, NoReturn, TypeVar

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["bar", "track"]

T = TypeVar("T")


def bar(total: int, desc: str, unit: str, *, on: bool = True) -> tqdm[NoReturn] | None:
    """A bar of ``total`` ``unit``\\ s labelled ``desc`` (update it, close it), or None when not ``on``."""
    if not on:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)


def track(items: Iterable[T], desc: str, unit: str) -> Iterator[T]:
    """``items``, one step of a bar per item; the bar closes when the loop ends or leaves early."""
    from tqdm import tqdm

    yield from tqdm(items, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)
