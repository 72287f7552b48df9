"""The one progress bar every command shows: tqdm on stderr, as wide as the terminal.

A command with ``--no-progress`` (or a bar that would only clutter, such as a stream on a terminal with
its own status line) asks for none and gets None; callers update what they were given.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["bar", "track"]

T = TypeVar("T")


def bar(total: int, desc: str, unit: str, *, on: bool = True) -> tqdm[NoReturn] | None:
    """A bar of ``total`` ``unit``\\ s labelled ``desc`` (update it, close it), or None when not ``on``."""
    if not on:
        return None
    return _tqdm()(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)


def track(items: Iterable[T], desc: str, unit: str) -> Iterator[T]:
    """``items``, one step of a bar per item; the bar closes when the loop ends or leaves early."""
    yield from _tqdm()(items, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)


@functools.cache
def _tqdm() -> type[tqdm[Any]]:
    """tqdm, writing under a thread lock. Its default lock also takes a multiprocessing lock, which under
    the spawn and forkserver start methods (a spawned process's, and Python 3.14's default) is a named
    semaphore that a resource tracker watches: a rank that stops leaves through ``os._exit``
    (executors.launch), which never releases it, and the tracker then warns of a leaked semaphore after
    the command's last line. One bar per process needs no lock across processes."""
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())
    return tqdm
