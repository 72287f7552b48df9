"""A spawned rank's process: a fresh Python, in a session of its own, running one function.

The session matters. A terminal sends Ctrl-C (and Ctrl-Z) to every process of its foreground process
group, and a rank started as a plain child is one of them: the signal would interrupt it anywhere, even
half-way through importing torch, where it can only print a traceback. A rank in a session of its own
gets no terminal signal at all: the launching command receives it alone and tells every rank through
the group's store (``executors.launch``). A rank still stops when its launcher dies, because the store
it watches lives in the launcher.

:func:`start` pickles ``fn`` and its arguments to a file, which the rank reads and removes; the rank runs
``fn(*args)`` and exits 0. An exception that escapes ``fn`` is written, one line, to a file beside it
(:meth:`Rank.error`) and the rank exits 1.

    python -m executors.spawned FILE    # what start() runs; not a command for people
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Rank", "start", "wait_any"]


class Rank:
    """One started rank: its process, and where it leaves the error that ended it."""

    def __init__(self, process: subprocess.Popen[bytes], error_path: str) -> None:
        self.process, self.error_path = process, error_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> int | None:
        """Its exit status (negative: the signal that ended it), or None while it runs."""
        return self.process.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to ``timeout`` seconds; its exit status, or None if it still runs."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def terminate(self) -> None:
        if self.poll() is None:
            self.process.terminate()

    def kill(self) -> None:
        if self.poll() is None:
            self.process.kill()

    def error(self) -> str | None:
        """The one line an escaped exception left, if any (read once; the file is removed)."""
        try:
            with open(self.error_path, encoding="utf-8") as f:
                text = f.read().strip()
            os.unlink(self.error_path)
        except OSError:
            return None
        return text or None


def start(fn: Callable[..., Any], args: tuple[Any, ...], folder: str, env: Mapping[str, str] | None = None) -> Rank:
    """Run ``fn(*args)`` in a new Python process, in a session of its own, with ``env`` added to this
    process's environment (and this process's import path, so it imports what this one does).
    ``fn`` and ``args`` must pickle; their file, and the rank's error, are kept in ``folder`` (the
    launcher's, removed with it: a rank stopped before it read its file leaves nothing behind)."""
    fd, path = tempfile.mkstemp(prefix="rank-", suffix=".pkl", dir=folder)
    with os.fdopen(fd, "wb") as f:
        pickle.dump((fn, args), f, protocol=pickle.HIGHEST_PROTOCOL)
    paths = [p or os.getcwd() for p in sys.path]
    child_env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(paths)}
    process = subprocess.Popen([sys.executable, "-m", "executors.spawned", path], env=child_env,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    return Rank(process, path + ".error")


def wait_any(ranks: Mapping[int, Rank], poll_s: float = 0.05) -> tuple[int, int] | None:
    """Wait until every rank has exited 0 (None), or one has ended otherwise: (its rank, its status)."""
    while True:
        running = False
        for r, p in ranks.items():
            code = p.poll()
            if code is None:
                running = True
            elif code != 0:
                return r, code
        if not running:
            return None
        time.sleep(poll_s)


def main(path: str) -> int:
    """The rank: load ``fn`` and its arguments from ``path`` (then remove it), run it."""
    try:
        with open(path, "rb") as f:
            fn, args = pickle.load(f)
    except FileNotFoundError:  # the launcher is gone (its folder with it): nothing to run, nobody to tell
        return 1
    os.unlink(path)
    try:
        fn(*args)
    except BaseException as e:  # the launcher reports it: one line
        with open(path + ".error", "w", encoding="utf-8") as f:
            f.write(f"{type(e).__name__}: {e}".splitlines()[0] if str(e) else type(e).__name__)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
