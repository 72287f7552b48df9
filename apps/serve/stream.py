"""The generation side of ``cascade serve``: one stream, its hook, and its frames.

A stream starts with one block; the engine declares the next whenever a tick needs it, until the client
leaves (or ``--max-blocks``). A prompt switch applies at the first block not declared yet, and the end
lets the blocks in flight finish (:mod:`apps.streams`); nothing that has run changes and nothing is
re-planned, so the same stream runs on one process or on N ranks (rank 0's hook decides and every rank
declares the same, ``executors.distributed.AgreedHook``).

Everything here runs on the stream's generation thread (torch work never runs on the server's event
loop), apart from the JPEG encoding, which has a thread of its own so it overlaps the next ticks.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from apps.request import RunRequest
from apps.streams import Timeline, first_declaration
from cascade_sched.schedule import build_schedule
from cascade_sched.validate import validate
from executors.base import RunOptions
from executors.feed import Declaration, Stream, StreamView


@dataclass(frozen=True)
class StreamStart:
    """One stream: its number, first prompt and switch policy (what rank 0 posts to the other ranks)."""

    number: int
    prompt: str
    policy: str


STREAM_HISTORY = 256  # blocks of times and trace events a served stream keeps (bounded state)


def stream_of(request: RunRequest, start: StreamStart) -> Stream:
    """The stream a session runs: its first block (validated) under the session's switch policy, to
    ``--max-blocks`` (None: until the client leaves; a request that says nothing of streaming: its spec's
    blocks)."""
    first = first_declaration(request.spec.replace(switch_policy=start.policy))
    validate(build_schedule(first))
    return Stream(first, stream_bound(request))


def stream_bound(request: RunRequest) -> int | None:
    """A served stream's length: ``--max-blocks`` (None: until the client leaves); a request that says
    nothing of streaming: its spec's blocks."""
    return request.streaming.max_blocks if request.streaming is not None else request.spec.num_blocks


def resolve_prompts(options: RunOptions, new: dict[int, str]) -> None:
    """Make new prompt ids known to the run. Today the text itself: the tick loop turns it into the
    model's conditioning when it adopts the schedule that uses it. The one place to rewire when prompts
    are encoded by a text encoder (on rank 0, broadcast with the extension)."""
    options.prompts.update(new)


class PromptBook:
    """Prompt texts and their ids: the same text keeps its id (id 0 is the stream's first prompt)."""

    def __init__(self, first: str) -> None:
        self.ids = {first: 0}

    def id_for(self, text: str) -> tuple[int, bool]:
        """The text's id, and whether it is new."""
        if text in self.ids:
            return self.ids[text], False
        self.ids[text] = len(self.ids)
        return self.ids[text], True

    def text(self, pid: int) -> str:
        return next(t for t, i in self.ids.items() if i == pid)


@dataclass(frozen=True)
class SwitchRequest:
    """A prompt a client sent: when it arrived (the server's monotonic clock) and the block then shown."""

    number: int
    prompt: str
    arrived_s: float
    shown_block: int


class Control:
    """What the server tells a running stream (thread-safe): new prompts, stop, and how far the display
    has got, so generation stays at most ``lead_blocks`` decoded blocks ahead of it."""

    def __init__(self, lead_blocks: int) -> None:
        self.lead_blocks = lead_blocks
        self._cv = threading.Condition()
        self._requests: list[SwitchRequest] = []
        self.stop_reason: str | None = None
        self.ready = 0  # blocks encoded and handed to the server
        self.shown = 0  # blocks whose first frame the server has shown
        self.waited_s = 0.0  # time generation spent waiting for the display

    def ask(self, request: SwitchRequest) -> None:
        with self._cv:
            self._requests.append(request)
            self._cv.notify_all()

    def stop(self, reason: str) -> None:
        with self._cv:
            if self.stop_reason is None:
                self.stop_reason = reason
            self._cv.notify_all()

    def delivered(self) -> None:
        with self._cv:
            self.ready += 1

    def showing(self, block: int) -> None:
        with self._cv:
            self.shown = max(self.shown, block + 1)
            self._cv.notify_all()

    def wait_for_room(self) -> None:
        """Block while ``lead_blocks`` decoded blocks wait to be shown (and nothing asks for a change)."""
        start = time.perf_counter()
        with self._cv:
            self._cv.wait_for(lambda: self.stop_reason is not None or bool(self._requests)
                              or self.ready - self.shown < self.lead_blocks)
            self.waited_s += time.perf_counter() - start

    def take(self) -> tuple[list[SwitchRequest], str | None]:
        with self._cv:
            requests, self._requests = self._requests, []
            return requests, self.stop_reason


SwitchReport = Callable[[SwitchRequest, "int | None", str], None]
"""``(request, at_block or None, why)``: where a request took effect, or why it did not."""


class StreamHook:
    """The hook of a served stream (rank 0's): after each tick, wait for room ahead of the display, then
    apply what the server asked for: the newest prompt, or the stream's end."""

    def __init__(self, stream: Stream, options: RunOptions, control: Control, report: SwitchReport,
                 on_tick: Callable[[int, StreamView], None]) -> None:
        self.options, self.control = options, control
        self.book = PromptBook(options.prompt)
        self.timeline = Timeline(stream.spec)
        self.report, self.on_tick = report, on_tick
        self.ended = False

    def prompt_of(self, block: int) -> str:
        """The prompt text of ``block`` (asked for in block order, as its frames come out)."""
        return self.book.text(self.timeline.prompt_of(block))

    def __call__(self, tick: int, view: StreamView) -> Declaration | None:
        self.on_tick(tick, view)
        self.control.wait_for_room()
        requests, stop = self.control.take()
        if stop is not None and not self.ended:
            self.ended = True
            for r in requests:
                self.report(r, None, f"the stream is ending ({stop})")
            return Declaration(end=True)
        if not requests or self.ended:
            return None
        *older, last = requests
        for r in older:
            self.report(r, None, "superseded by a newer prompt before any block started")
        pid, fresh = self.book.id_for(last.prompt)
        declaration, at = self.timeline.switch(view, pid)
        if declaration is None:
            self.report(last, None, "every block of the stream has started (it ends at --max-blocks)")
            return None
        if fresh:
            resolve_prompts(self.options, {pid: last.prompt})
        self.report(last, at, "")
        return declaration


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    """One uint8 frame (H, W, 3) as a baseline JPEG (4:2:0)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame, "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


BlockFrames = Callable[[int, list[bytes], str, float], None]
"""``(block, jpeg frames, prompt text, generation seconds of the block)``, called on the encoder thread."""


class FramePipe:
    """The decode rank's ``on_block``: decode each block (the decoder keeps its cache for this stream only),
    then encode its frames as JPEG on a thread of their own and hand them to the server in block order."""

    def __init__(self, decoder: Any, quality: int, prompt_of: Callable[[int], str], deliver: BlockFrames,
                 control: Control) -> None:
        self.decoder, self.quality, self.prompt_of = decoder, quality, prompt_of
        self.deliver, self.control = deliver, control
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cascade-jpeg")
        self._last = (time.perf_counter(), 0.0)
        self.error: str | None = None

    def on_block(self, block: int, x0: Any) -> None:
        frames = self.decoder.decode_block(x0)
        now, waited = time.perf_counter(), self.control.waited_s
        took = (now - self._last[0]) - (waited - self._last[1])  # the waits for the display are not generation
        self._last = (now, waited)
        if self.error is not None:
            raise RuntimeError(self.error)
        self._encoder.submit(self._encode, block, frames, self.prompt_of(block), took)

    def _encode(self, block: int, frames: np.ndarray, prompt: str, took: float) -> None:
        try:
            jpegs = [encode_jpeg(f, self.quality) for f in frames]
        except Exception as e:  # surfaces at the next block, as the stream's error
            self.error = f"encoding block {block} failed: {type(e).__name__}: {e}"
            return
        self.deliver(block, jpegs, prompt, took)
        self.control.delivered()

    def close(self) -> None:
        """Finish the frames queued for encoding (idempotent); raise the encoder's error if it had one."""
        self._encoder.shutdown(wait=True)
        if self.error is not None:
            raise RuntimeError(self.error)
