"""The serving side of one stream, on the server's event loop: clients, pacing, switches, figures.

- :class:`Client`: one websocket with a bounded buffer (frames beyond ``capacity`` drop oldest first, and
  are counted) and a sender task, so a slow reader never holds up the stream or the other clients.
- :class:`Stream`: one generation stream. Its generation thread runs the group; the pacer shows frame k at
  ``t0 + k / fps`` and hands it to every client. A frame that is not there at its due time is an
  *underrun*: the pacer waits for it and restarts its clock from the moment it came, so later frames keep
  their spacing instead of bunching up.

A stream ends when its last client leaves, after ``--idle-timeout`` without a client message, at
``--max-blocks``, on a restart under another policy, or on an error; its generation thread drains the
blocks in flight and every per-stream object (tick loop, K/V pool, decoder) goes with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from apps.flags import DEFAULT_PROMPT
from apps.serve.protocol import Limits, RateLimiter, message
from apps.serve.stream import Control, FramePipe, StreamHook, StreamStart, SwitchRequest, stream_bound

if TYPE_CHECKING:
    from starlette.websockets import WebSocket

    from apps.serve.group import LocalGroup
    from apps.serve.metrics import ServeMetrics
    from executors.feed import StreamView

CLOSE = object()  # a client's queue item: close the socket once everything before it is sent


@dataclass(frozen=True)
class ServeConfig:
    """How the server behaves (the flags of ``cascade serve``)."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    sharing: str = "watch"  # watch: a second client watches the stream; exclusive: it is told busy
    idle_timeout_s: float = 300.0  # 0: never
    fps: float = 16.0
    lead_blocks: int = 1
    client_buffer: int = 48  # frames
    jpeg_quality: int = 85
    prompt: str = DEFAULT_PROMPT
    policy: str = "none"
    limits: Limits = field(default_factory=Limits)
    stats_interval_s: float = 1.0


class Client:
    """One websocket: its outgoing buffer, its sender task, its rate limit and its delivery figures."""

    def __init__(self, ws: WebSocket, capacity: int, limits: Limits, metrics: ServeMetrics) -> None:
        self.ws, self.capacity, self.metrics = ws, capacity, metrics
        self.queue: deque[Any] = deque()
        self.frames_queued = 0
        self.wake = asyncio.Event()
        self.limiter = RateLimiter(limits.prompt_interval_s)
        self.dropped = self.sent = 0
        self.sent_at: deque[float] = deque(maxlen=512)
        self.intervals: deque[float] = deque(maxlen=512)
        self.closing = False

    def send_frame(self, data: bytes) -> None:
        if self.closing:
            return
        if self.frames_queued >= self.capacity:
            for i, item in enumerate(self.queue):
                if isinstance(item, bytes):
                    del self.queue[i]
                    break
            self.frames_queued -= 1
            self.dropped += 1
            self.metrics.dropped.inc()
        self.queue.append(data)
        self.frames_queued += 1
        self.wake.set()

    def send_text(self, text: str) -> None:
        if not self.closing:
            self.queue.append(text)
            self.wake.set()

    def close(self, code: int = 1000) -> None:
        """Close once what is queued has gone (``code``: the websocket close code)."""
        if not self.closing:
            self.queue.append((CLOSE, code))
            self.closing = True
            self.wake.set()

    def fps(self, now: float, span_s: float = 3.0) -> float:
        recent = [t for t in self.sent_at if t > now - span_s]
        return (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 2 and recent[-1] > recent[0] else 0.0

    def interval_p95(self) -> float | None:
        xs = sorted(self.intervals)
        return xs[min(len(xs) - 1, int(0.95 * len(xs)))] if xs else None

    async def run(self) -> None:
        """Send the queue in order until closed (the websocket's sender task)."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.queue:
                item = self.queue.popleft()
                if isinstance(item, tuple) and item[0] is CLOSE:
                    await self.ws.close(item[1])
                    return
                if isinstance(item, bytes):
                    self.frames_queued -= 1
                    await self.ws.send_bytes(item)
                    now = time.monotonic()
                    if self.sent_at:
                        self.intervals.append(now - self.sent_at[-1])
                        self.metrics.frame_interval.observe(now - self.sent_at[-1])
                    self.sent_at.append(now)
                    self.sent += 1
                    self.metrics.frames_sent.inc()
                else:
                    await self.ws.send_text(item)


@dataclass
class _Frame:
    block: int
    index: int  # within the block
    count: int  # frames in the block
    data: bytes
    prompt: str


class Stream:
    """One generation stream and the clients that watch it."""

    def __init__(self, config: ServeConfig, group: LocalGroup, metrics: ServeMetrics, start: StreamStart) -> None:
        self.config, self.group, self.metrics, self.start = config, group, metrics, start
        self.loop = asyncio.get_running_loop()
        self.clients: set[Client] = set()
        self.control = Control(config.lead_blocks)
        self.frames: deque[_Frame] = deque()
        self.frame_ready = asyncio.Event()
        self.generation_done = asyncio.Event()
        self.finished = asyncio.Event()
        self.error: str | None = None
        self.end_reason: str | None = None
        self.handover = False  # ending for a restart: the clients move to the next stream
        self.discard = False  # ending early: frames not yet shown are dropped
        self.scheduled: dict[int, SwitchRequest] = {}  # at_block -> the request that switches there
        self.requests = 0
        self.block = -1  # the block shown now
        self.frames_shown = 0
        self.underruns = 0
        self.underrun_s = 0.0
        self.block_s: deque[float] = deque(maxlen=16)
        self.in_flight = 0
        self.last_switch: dict[str, Any] | None = None
        self.started_s = time.monotonic()
        self.first_frame_s: float | None = None
        self.last_activity = self.started_s
        self.blocks_total = stream_bound(group.request)  # None: until the client leaves
        self.task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------------
    def begin(self) -> None:
        self.metrics.sessions.set(1)
        self.metrics.sessions_started.inc()
        threading.Thread(target=self._generate, name=f"cascade-stream-{self.start.number}", daemon=True).start()
        self.task = self.loop.create_task(self._run())

    def stop(self, reason: str, *, handover: bool = False, discard: bool = True) -> None:
        """End the stream: generation stops starting blocks; clients get ``end`` (unless handed over)."""
        if self.end_reason is None:
            self.end_reason, self.handover = reason, handover
        self.discard = self.discard or discard
        self.control.stop(reason)
        self.frame_ready.set()

    def fail(self, message_text: str, code: str = "generation_failed") -> None:
        """End the stream on an error: each client gets this one error message, then the socket closes."""
        if self.error is None:
            self.error = message_text
            for c in self.clients:
                c.send_text(message("error", code=code, message=message_text))
                c.close(1011)
        self.stop(message_text)

    async def _run(self) -> None:
        stats = self.loop.create_task(self._stats())
        try:
            await self._pace()
        finally:
            stats.cancel()
            self.control.stop(self.end_reason or "ended")
            await self.generation_done.wait()
            if self.error is None and not self.handover:
                reason = self.end_reason or f"the stream reached --max-blocks ({self.blocks_total} blocks)"
                for c in self.clients:
                    c.send_text(message("end", reason=reason, blocks=self.block + 1, frames=self.frames_shown))
                    c.close(1000)
            self.frames.clear()
            self.metrics.sessions.set(0)
            self.metrics.kv_bytes.set(0)
            self.metrics.in_flight.set(0)
            self.finished.set()

    # -- the generation thread -------------------------------------------------------------------------
    def _call(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` on the event loop, from the generation or encoder thread."""
        with contextlib.suppress(RuntimeError):  # the loop has closed: the server is gone
            self.loop.call_soon_threadsafe(fn, *args)

    def _generate(self) -> None:
        from apps.sources import decoder_for

        group, control = self.group, self.control
        error: str | None = None
        code = "generation_failed"
        pipe: FramePipe | None = None
        try:
            from apps.serve.stream import stream_of

            stream = stream_of(group.request, self.start)
            options = group.options(self.start)
            hook = StreamHook(stream, options, control,
                              report=lambda r, at, why: self._call(self._switch_report, r, at, why),
                              on_tick=self._on_tick)
            source = group.request.source
            decoder = decoder_for(source, group.model.config, source.decode_device)
            pipe = FramePipe(decoder, self.config.jpeg_quality, hook.prompt_of,
                             lambda b, frames, prompt, took: self._call(self._add_block, b, frames, prompt, took),
                             control)
            group.run(self.start, stream, options, hook, pipe.on_block)
        except Exception as e:  # one line to the client; the group decides whether it survives
            code, error = group.fail(str(e) or type(e).__name__)
        finally:
            if pipe is not None:
                try:
                    pipe.close()
                except Exception as e:
                    error = error or f"encoding frames failed: {e}"
            self._call(self._generation_ended, error, code)

    def _on_tick(self, tick: int, view: StreamView) -> None:
        self.in_flight = view.in_flight
        self.metrics.in_flight.set(self.in_flight)
        self.metrics.kv_bytes.set(self.group.kv_bytes())

    # -- on the event loop -----------------------------------------------------------------------------
    def _generation_ended(self, error: str | None, code: str) -> None:
        if error is not None and self.error is None and not self.discard:
            self.fail(error, code)
        elif error is not None and self.error is None:
            self.error = error  # nobody is watching any more: keep it for the log
        self.generation_done.set()
        self.frame_ready.set()

    def _add_block(self, block: int, frames: list[bytes], prompt: str, took: float) -> None:
        self.block_s.append(took)
        self.metrics.block_seconds.observe(took)
        if self.discard:
            return
        self.frames.extend(_Frame(block, i, len(frames), f, prompt) for i, f in enumerate(frames))
        self.frame_ready.set()

    def _switch_report(self, request: SwitchRequest, at: int | None, why: str) -> None:
        if at is None:
            self.broadcast(message("switch", request=request.number, prompt=request.prompt, at_block=None,
                                   applied=False, reason=why))
            return
        old = self.scheduled.get(at)
        if old is not None and old.number != request.number:
            self.broadcast(message("switch", request=old.number, prompt=old.prompt, at_block=None, applied=False,
                                   reason=f"superseded by a newer prompt before block {at} started"))
        self.scheduled[at] = request
        self.broadcast(message("switch", request=request.number, prompt=request.prompt, at_block=at,
                               applied=True, policy=self.start.policy, shown_block=request.shown_block))

    def ask(self, prompt: str) -> None:
        """A client's new prompt: the generation thread applies it at the first block not yet started."""
        self.requests += 1
        self.control.ask(SwitchRequest(self.requests, prompt, time.monotonic(), self.block))

    def broadcast(self, text: str) -> None:
        for c in self.clients:
            c.send_text(text)

    def hello(self) -> str:
        spec = self.group.request.spec
        return message("hello", stream=self.start.number, prompt=self.start.prompt, policy=self.start.policy,
                       fps=self.config.fps, model=self.group.model.config.name, executor=self.group.executor,
                       devices=self.group.devices, lag=spec.lag, attention=spec.attention,
                       window=spec.window, max_blocks=self.blocks_total, sharing=self.config.sharing,
                       block=self.block, limits=self.config.limits.to_dict())

    async def _pace(self) -> None:
        period = 1.0 / self.config.fps
        due: float | None = None
        while True:
            if self.discard and self.end_reason is not None:
                return
            if not self.frames:
                if self.generation_done.is_set():
                    return
                self.frame_ready.clear()
                await self.frame_ready.wait()
                now = time.monotonic()
                if due is not None and self.frames and now > due:
                    self.underruns += 1
                    self.underrun_s += now - due
                    self.metrics.underruns.inc()
                    self.metrics.underrun_seconds.inc(now - due)
                    due = now
                continue
            now = time.monotonic()
            if due is None:
                due = now
            elif due > now:
                await asyncio.sleep(due - now)
                continue  # the stream may have ended meanwhile
            self._show(self.frames.popleft())
            due += period
            if time.monotonic() - due > period:  # the loop itself fell behind: do not burst to catch up
                due = time.monotonic()

    def _show(self, frame: _Frame) -> None:
        now = time.monotonic()
        if frame.index == 0:
            self.block = frame.block
            self.control.showing(frame.block)
            self.broadcast(message("block", block=frame.block, frames=frame.count, prompt=frame.prompt))
            request = self.scheduled.pop(frame.block, None)
            if request is not None:
                self.last_switch = {"at_block": frame.block, "prompt": request.prompt,
                                    "latency_s": round(now - request.arrived_s, 4),
                                    "latency_blocks": frame.block - request.shown_block}
                self.metrics.switch_seconds.observe(now - request.arrived_s)
                self.metrics.switch_blocks.observe(frame.block - request.shown_block)
                self.broadcast(message("switched", request=request.number, **self.last_switch))
        if self.first_frame_s is None:
            self.first_frame_s = now - self.started_s
            self.metrics.first_frame.observe(self.first_frame_s)
        self.frames_shown += 1
        self.metrics.frames_shown.inc()
        for c in self.clients:
            c.send_frame(frame.data)

    async def _stats(self) -> None:
        while True:
            await asyncio.sleep(self.config.stats_interval_s)
            now = time.monotonic()
            idle = self.config.idle_timeout_s
            if idle and now - self.last_activity > idle:
                self.stop(f"no client message for --idle-timeout {idle:g} s")
                return
            fps = [c.fps(now) for c in self.clients]
            self.metrics.delivered_fps.set(sum(fps) / len(fps) if fps else 0.0)
            gen = statistics.median(self.block_s) if self.block_s else None
            for c, f in zip(list(self.clients), fps, strict=True):
                c.send_text(message(
                    "stats", block=self.block, fps=round(f, 2), interval_p95_s=c.interval_p95(),
                    blocks_in_flight=self.in_flight, underruns=self.underruns,
                    underrun_s=round(self.underrun_s, 3), dropped=c.dropped, frames=c.sent,
                    generation_s_per_block=gen, kv_bytes=self.group.kv_bytes(), clients=len(self.clients),
                    switch=self.last_switch,
                ))

