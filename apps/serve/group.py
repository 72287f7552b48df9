"""Executor groups for ``cascade serve``: where a stream's ticks run.

- :class:`LocalGroup`: this process, every device of the schedule (the reference executor's tick loop).
- :class:`RankGroup`: rank 0 of a torchrun group (``--executor distributed``). It posts each stream's
  start to the group's store, where the other ranks (:func:`follow`) poll for it, and every rank then runs
  its share with the distributed executor; rank 0's hook decides the stream's switches and end.

The model is built once per group and kept; a stream's K/V pool, tick loop and decoder exist only while
the stream runs, so a stream that ends (client gone, idle, error) leaves nothing behind.

Failure under torchrun: a rank that fails writes the launcher's abort key (``executors.launch``); every
rank's watchdog sees it, and rank 0's abort hook (:data:`ABORT_HOOK`) tells the clients in one error
message before the process exits with the reason.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable

import torch

from apps.request import RunRequest
from apps.serve.stream import STREAM_HISTORY, StreamStart, stream_of
from executors.base import BlockCallback, RunOptions
from executors.distributed import DistributedExecutor
from executors.feed import Stream, StreamHook
from executors.reference import ReferenceExecutor
from models.dit import CausalWanDiT
from models.prompts import TextEncoder
from models.sampler import FlowMatchSampler

START_KEY = "cascade/serve/start/{}"
STOP_KEY = "cascade/serve/stop"
POLL_S = 0.05

ABORT_HOOK: list[Callable[[], None] | None] = [None]
"""Rank 0's server sets this; the launcher's ``on_abort`` calls it when another rank's failure stops us."""


def abort_hook(drain: bool = False) -> None:
    """Close this rank's session (``drain`` is the launcher's: a stream has no queued file to finish)."""
    if ABORT_HOOK[0] is not None:
        ABORT_HOOK[0]()


def _options(request: RunRequest, start: StreamStart, sampler: FlowMatchSampler,
             encoder: TextEncoder | None = None) -> RunOptions:
    return RunOptions(prompt=start.prompt, prompts={}, sampler=sampler, fail_at=request.fail_at,
                      timeout_s=request.timeout_s, text_encoder=encoder, history=STREAM_HISTORY)


def load(request: RunRequest, rank: int | None = None) -> tuple[CausalWanDiT, FlowMatchSampler, TextEncoder]:
    """The stream's model, sampler and text encoder, from its source (as ``cascade generate`` loads them):
    on a rank of a layer ring (``rank`` given, placement ``layers``) only that rank's layers. The encoder
    stays loaded: prompts arrive while streaming."""
    from apps.sources import build_sampler, load_model, text_source
    from executors.distributed import rank_slice

    config = request.source.config()
    part = rank_slice(request.spec, config, rank) if rank is not None and config is not None else None
    model, _ = load_model(request.source, part)
    return model, build_sampler(request.source, model.config.name), text_source(request.source, model.config, [])


class LocalGroup:
    """Every device of the schedule in this process."""

    executor = "reference"

    def __init__(self, request: RunRequest, rank: int | None = None) -> None:
        self.request = request
        self.model, self.sampler, self.encoder = load(request, rank)
        self.alive = True
        self.failure: str | None = None
        self.running: ReferenceExecutor | DistributedExecutor | None = None  # a stream's executor while it runs

    @property
    def devices(self) -> int:
        return self.request.spec.num_devices

    def options(self, start: StreamStart) -> RunOptions:
        return _options(self.request, start, self.sampler, self.encoder)

    def run(self, start: StreamStart, stream: Stream, options: RunOptions, hook: StreamHook,
            on_block: BlockCallback) -> None:
        """Run one stream to its end on the calling thread."""
        self._run(ReferenceExecutor(), stream, options, hook, on_block)

    def _run(self, executor: ReferenceExecutor | DistributedExecutor, stream: Stream, options: RunOptions,
             hook: StreamHook, on_block: BlockCallback) -> None:
        self.running = executor
        try:
            with torch.inference_mode():
                executor.run(stream, self.model, options, on_block, hook=hook)
        finally:
            self.running = None

    def kv_bytes(self) -> int:
        """The K/V the running stream holds on this process (0 between streams)."""
        loop = self.running.loop if self.running is not None else None
        return loop.pool.bytes_in_use if loop is not None else 0

    def fail(self, message: str) -> tuple[str, str]:
        """A stream failed with ``message``: the error code and message to tell its clients. In one process
        the group lives on (the next stream starts clean)."""
        return "generation_failed", message

    def close(self) -> None:
        """Nothing to tell: no other process."""


class RankGroup(LocalGroup):
    """Rank 0 of a torchrun group: streams run on every rank with the distributed executor."""

    executor = "distributed"

    def __init__(self, request: RunRequest, world: int) -> None:
        import torch.distributed as dist

        super().__init__(request, rank=0)
        self.world = world
        self.store = dist.distributed_c10d._get_default_store()

    @property
    def devices(self) -> int:
        return self.world

    def run(self, start: StreamStart, stream: Stream, options: RunOptions, hook: StreamHook,
            on_block: BlockCallback) -> None:
        """Post the stream's start to the other ranks, then run rank 0's share."""
        self.store.set(START_KEY.format(start.number), pickle.dumps(start))  # type: ignore[arg-type]  # bytes work
        self._run(DistributedExecutor(extendable=True), stream, options, hook, on_block)

    def fail(self, message: str) -> tuple[str, str]:
        """Rank 0's stream failed. If another rank failed first, rank 0's error is only the echo of it
        (a peer gone mid-message): report that rank's own message. Else stop the whole group with ours."""
        from executors.launch import ABORT_KEY, POLL_S

        self.alive = False
        deadline = time.monotonic() + 5 * POLL_S
        while time.monotonic() < deadline:
            if self.store.check([ABORT_KEY]):
                self.failure = self.store.get(ABORT_KEY).decode()
                return "rank_failed", self.failure
            time.sleep(POLL_S / 4)
        self.failure = message
        self.store.set(ABORT_KEY, message)
        return "generation_failed", message

    def close(self) -> None:
        self.store.set(STOP_KEY, "1")


def follow(request: RunRequest, rank: int, world: int) -> None:
    """A rank other than 0: run each stream rank 0 posts, until it says stop."""
    import torch.distributed as dist

    model, sampler, encoder = load(request, rank)
    store = dist.distributed_c10d._get_default_store()
    number = 0
    while True:
        key = START_KEY.format(number)
        while not store.check([key]):
            if store.check([STOP_KEY]):
                return
            time.sleep(POLL_S)
        start: StreamStart = pickle.loads(store.get(key))
        with torch.inference_mode():
            DistributedExecutor(extendable=True).run(stream_of(request, start), model,
                                                     _options(request, start, sampler, encoder))
        number = start.number + 1
