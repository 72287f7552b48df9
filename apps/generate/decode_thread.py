"""Decoding off the denoising thread: a worker that decodes blocks in order while later blocks denoise.

The tick loop hands each clean latent to :meth:`DecodeWorker.submit` and goes on at once; the worker
decodes on its own thread (and, on a GPU, its own CUDA stream, so its kernels overlap the DiT's), writes
the frames to the video sink, and records when each block was decoded and shown. The streaming decoders
keep a causal cache across blocks, so one worker decodes the blocks strictly in order.

A decode failure is raised on the next ``submit`` or at ``close``; ``close`` decodes what is still queued
first, so no finished frame is lost. An interrupted run calls ``close(drain=False)`` instead: the block
being decoded is finished and written, the queue is dropped, so the run stops at once however far the
decoder lags behind the denoiser; and a decode failure then is not raised, since the interrupt is what
the run reports (a terminal's Ctrl-C reaches every process of its group, so the failure is most often its
echo: an encoder's helper process killed by the same Ctrl-C).
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from cascade_sched.errors import ExecutorError
from cascade_sched.trace import TraceEvent

__all__ = ["DecodeWorker"]


class DecodeWorker:
    """Decode (and write) blocks on a thread; ``decoded[b] = (start, end)`` in ``time.perf_counter`` seconds.

    ``history`` N keeps the times of the last N blocks only (and block 0's, ``first``): a stream's state
    stays bounded; ``count`` and ``frames_total`` count every block."""

    def __init__(self, decoder: Any, write: Callable[[Any], None] | None, device: str | torch.device = "cpu",
                 history: int | None = None) -> None:
        self.decoder, self.write = decoder, write
        self.device = torch.device(device)
        self.history = history
        self.decoded: collections.OrderedDict[int, tuple[float, float]] = collections.OrderedDict()
        self.frames: dict[int, int] = {}  # block -> frames, for the blocks in ``decoded``
        self.first: tuple[float, float] | None = None
        self.count = 0  # blocks decoded and written
        self.frames_total = 0
        self._queue: queue.Queue[tuple[int, torch.Tensor] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._failed_block = -1
        self._stream = (torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]  # torch: Stream() is not annotated
                        if self.device.type == "cuda" else None)
        self._thread = threading.Thread(target=self._run, name="cascade-decode", daemon=True)
        self._closed = False
        self._dropping = False
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            block, latent = item
            if self._error is not None or self._dropping:
                continue  # drain: the run is failing or stopping anyway
            try:
                start = time.perf_counter()
                with torch.inference_mode():
                    if self._stream is not None:
                        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
                            frames = self.decoder.decode_block(latent)  # ends in a host copy: synchronous
                    else:
                        frames = self.decoder.decode_block(latent)
                if self.write is not None:
                    self.write(frames)
                self._done(block, (start, time.perf_counter()), len(frames))
            except BaseException as e:  # reported to the tick loop's thread
                self._error, self._failed_block = e, block

    def _done(self, block: int, span: tuple[float, float], frames: int) -> None:
        self.decoded[block] = span
        self.frames[block] = frames
        if self.first is None:
            self.first = span
        self.count += 1
        self.frames_total += frames
        if self.history is not None and len(self.decoded) > self.history:
            old, _ = self.decoded.popitem(last=False)
            del self.frames[old]

    def _raise(self) -> None:
        if self._error is not None:
            e = self._error
            raise ExecutorError(f"decoding block {self._failed_block} failed: {type(e).__name__}: {e}") from e

    def submit(self, block: int, latent: torch.Tensor) -> None:
        """Queue a block's clean latent (C, F, H, W); blocks must come in order."""
        self._raise()
        self._queue.put((block, latent))

    def close(self, drain: bool = True) -> None:
        """Decode everything queued (with ``drain=False``: only the block being decoded, for an
        interrupted run), stop the thread, and raise a decode failure if there was one (when draining)."""
        if not drain:
            self._dropping = True
        if not self._closed:
            self._closed = True
            self._queue.put(None)
        self._thread.join()
        if drain:
            self._raise()

    def events(self, offset_s: float, device: int) -> list[TraceEvent]:
        """The decodes as trace events on ``device``'s decode track; ``offset_s`` maps perf_counter to the
        run's clock."""
        name = getattr(self.decoder, "name", type(self.decoder).__name__)
        return [TraceEvent(f"decode B{b}", device, "decode", start + offset_s, end - start,
                           {"block": b, "frames": self.frames.get(b, 0), "decoder": name, "on": str(self.device)})
                for b, (start, end) in sorted(self.decoded.items())]
