"""Interactive streaming: switching prompts while frames stream.

- :class:`PromptFeed` reads new prompts from a stream (standard input) on a thread while a run goes on
  (each applies from the first block not declared yet: :class:`apps.streams.Timeline`);
- :class:`Console` is the terminal side: on a TTY an input prompt with the stream's status redrawn on
  its own line above it, so output never lands on the line being typed; elsewhere (a pipe, a test)
  plain lines in, and a line on stderr when a real-time stream falls behind;
- :class:`Pace` holds a ``--realtime`` stream to the video's frame rate.
"""

from __future__ import annotations

import queue
import threading
from typing import IO

PROMPT = "prompt> "


class Console:
    """The terminal an interactive stream talks to: the status on its own line, above the prompt line.

    On a TTY the layout is a status line, then ``prompt> `` and what is being typed (the terminal's own
    line editing). The status is redrawn in place one line up (cursor saved and restored), so it never
    touches the line being typed; each prompt sent stays in the scrollback with the status of its time.
    """

    def __init__(self, stdin: IO[str], out: IO[str]) -> None:
        self.out = out
        self.tty = _isatty(stdin) and _isatty(out)
        self._behind = False
        self._text = "starting"
        self._lock = threading.Lock()
        if self.tty:
            self._write(f"{self._fit(self._text)}\n{PROMPT}")

    def _fit(self, text: str) -> str:
        import shutil

        width = shutil.get_terminal_size((100, 24)).columns - 1
        return text if len(text) <= width else text[: max(1, width - 3)] + "..."

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def sent(self) -> None:
        """A line was entered: a fresh status and prompt below it."""
        if self.tty:
            with self._lock:
                self._write(f"{self._fit(self._text)}\n{PROMPT}")

    def status(self, text: str, behind_s: float | None = None) -> None:
        """Show the stream's status: on a TTY redrawn in place above the prompt line; elsewhere only the
        moment a real-time stream falls behind (``behind_s`` > 0), one line each time."""
        with self._lock:
            self._text = text
            if self.tty:
                self._write(f"\x1b7\x1b[1A\r\x1b[2K{self._fit(text)}\x1b8")
            elif behind_s is not None and behind_s > 0 and not self._behind:
                print(f"note: {text}", file=self.out, flush=True)
            self._behind = behind_s is not None and behind_s > 0

    def end(self) -> None:
        """Leave the terminal on a fresh line (after Ctrl-D, or before an interrupt's line)."""
        if self.tty:
            with self._lock:
                self._write("\n")
                self.tty = False


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Pace:
    """Hold a stream to real time: the frames shown so far may run at most ``lead_s`` ahead of the wall
    clock since the first frame, at ``fps``; :meth:`wait` sleeps off any further lead and returns how
    far behind real time the stream is (negative: ahead)."""

    def __init__(self, fps: float, lead_s: float = 1.0) -> None:
        import time

        self.fps, self.lead_s = fps, lead_s
        self._clock = time.monotonic
        self._sleep = time.sleep
        self.start: float | None = None

    def wait(self, frames_shown: int) -> float:
        if frames_shown <= 0:
            return 0.0
        now = self._clock()
        if self.start is None:
            self.start = now
        ahead = frames_shown / self.fps - (now - self.start)
        if ahead > self.lead_s:
            self._sleep(ahead - self.lead_s)
            ahead = self.lead_s
        return -ahead


class PromptFeed:
    """New prompts from a text stream, one per line, read on a daemon thread (blank lines are skipped);
    a ``console`` draws a fresh prompt after each line."""

    def __init__(self, stream: IO[str], console: Console | None = None) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.open = True
        self.console = console
        self._thread = threading.Thread(target=self._read, args=(stream,), name="prompt-feed", daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:  # a terminal edits the line itself; Ctrl-D ends the stream
            if self.console is not None:
                self.console.sent()
            if line.strip():
                self._lines.put(line.strip())
        if self.console is not None:
            self.console.end()
        self._lines.put(None)

    def poll(self) -> list[str]:
        """The prompts that arrived since the last poll; ``open`` turns False once the stream ended."""
        out: list[str] = []
        while True:
            try:
                item = self._lines.get_nowait()
            except queue.Empty:
                return out
            if item is None:
                self.open = False
            else:
                out.append(item)
