"""``cascade serve --executor distributed`` on one machine without torchrun: the server is rank 0 of a group
it spawns, and a group that loses a rank is replaced for the next stream.

The server process hosts the group's store (``executors.launch.host_store``) and runs rank 0's share of
every stream; ranks 1..N-1 are processes it spawns, each following the streams rank 0 posts
(:func:`apps.serve.group.follow`). When a stream fails (a rank killed, a rank's error, a wait that timed
out), the stream's clients get one error message, the group is torn down (the other ranks told through the
store and joined, killed after ``STOP_S``, the process group destroyed, the store closed), and the next
stream starts a fresh group. Under torchrun, by contrast, the group is torchrun's and the server stops
with it (:class:`~apps.serve.group.RankGroup`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import signal
import tempfile
import threading
from typing import Any

from apps.request import RunRequest
from apps.serve.group import START_KEY, STOP_KEY, RankGroup, follow
from apps.serve.stream import StreamStart
from cascade_sched.errors import ExecutorError
from executors.base import BlockCallback, RunOptions
from executors.distributed import DistributedExecutor
from executors.feed import Stream, StreamHook
from executors.spawned import Rank

__all__ = ["SpawnedGroup"]


class SpawnedGroup(RankGroup):
    """Rank 0 of a group this process spawns (see the module docstring)."""

    def __init__(self, request: RunRequest) -> None:
        # RankGroup's own __init__ reads a torchrun group's store; this group makes its own in prepare().
        super(RankGroup, self).__init__(request)
        self.world = request.spec.num_devices
        self.host: Any = None  # the group's store, served here: the launcher's keys (executors.launch)
        self.store: Any = None  # the process group's view of it: the streams' keys, as follow() reads them
        self.processes: dict[int, Rank] = {}
        self._folder: tempfile.TemporaryDirectory[str] | None = None  # the ranks' argument files
        self.groups = 0  # groups started so far
        self._joined = False
        self._streams = 0  # streams posted to the current group
        self._lock = threading.RLock()
        self.prepare()
        self._join()

    def prepare(self) -> None:
        """Before a stream: replace a group that lost a rank, and start a new group's ranks (1..N-1), each
        in a session of its own (a terminal's Ctrl-C reaches the server alone, executors.spawned), with a
        fresh store."""
        from executors import spawned
        from executors.launch import host_store, rank_env

        with self._lock:
            dead = self._dead()
            if dead is not None:
                self._teardown(dead)
            if self.host is not None:
                return
            self.host = host_store(self.request.timeout_s)
            self._folder = tempfile.TemporaryDirectory(prefix="cascade-serve-")
            threads = max(1, (os.cpu_count() or 1) // self.world)
            port, folder = self.host.port, self._folder.name
            self.processes = {r: spawned.start(_rank, (r, port, self.request, threads), folder,
                                               rank_env(r, self.world, port)) for r in range(1, self.world)}
            self._joined, self._streams = False, 0
            self.groups += 1

    def _join(self) -> None:
        """Join the prepared group as rank 0 (waits for every rank to start: seconds)."""
        import torch.distributed as dist

        from executors.launch import init_group

        with self._lock:
            if self._joined:
                return
            try:
                init_group(self.request.source.device, self.request.timeout_s, self.host, rank=0, world=self.world)
                self.store = dist.distributed_c10d._get_default_store()
            except Exception as e:
                reason = self._dead() or str(e).split("\n", 1)[0]
                self._teardown(reason)
                raise ExecutorError(f"the rank group did not start: {reason}") from None
            self._joined = True

    def run(self, start: StreamStart, stream: Stream, options: RunOptions, hook: StreamHook,
            on_block: BlockCallback) -> None:
        """Run one stream on every rank (of a fresh group if the last one lost a rank)."""
        self.prepare()
        self._join()
        # The ranks number the streams of their own group from 0; the number means nothing else to them.
        local = dataclasses.replace(start, number=self._streams)
        self._streams += 1
        self.store.set(START_KEY.format(local.number), pickle.dumps(local))
        self._run(DistributedExecutor(extendable=True), stream, options, hook, on_block)

    def _dead(self, killed_only: bool = False) -> str | None:
        """Why a rank of this group is gone, if one is (``rank 1 was killed by SIGKILL``); a rank killed
        by a signal before one that exited (which may only have followed it)."""
        codes = {r: p.poll() for r, p in self.processes.items()}
        ended = sorted((code >= 0, r, code) for r, code in codes.items() if code is not None)
        for exited, r, code in ended:
            if not exited:
                return f"rank {r} was killed by {signal.Signals(-code).name}"
            if not killed_only:
                return f"rank {r} exited with status {code}"
        return None

    def fail(self, message: str) -> tuple[str, str]:
        """A stream failed with ``message`` on rank 0: tell its clients the cause (a rank killed, a rank's
        own error, before rank 0's echo of either), and replace the group before the next stream."""
        from executors.launch import ABORT_KEY, POLL_S

        with self._lock:
            for p in self.processes.values():  # a rank killed outright posts nothing: its exit says it
                p.wait(POLL_S)
            posted = None
            with contextlib.suppress(Exception):
                if self.host is not None and self.host.check([ABORT_KEY]):
                    posted = bytes(self.host.get(ABORT_KEY)).decode().split("\n", 1)[0]
            reason = self._dead(killed_only=True) or posted or self._dead() or message
            self.failure = reason
            self._teardown(reason)
        return "rank_failed", f"{reason}; the next stream starts a fresh group"

    def _teardown(self, reason: str) -> None:
        """End this group: the ranks told through the store (``reason``), joined or killed; the process
        group destroyed, the store closed. Holds ``_lock``."""
        import torch.distributed as dist

        from executors.launch import stop_ranks

        if self.host is not None:
            stop_ranks(self.host, self.processes, reason)
        if self._folder is not None:
            self._folder.cleanup()
        self.processes, self._joined, self.store, self._folder = {}, False, None, None
        if dist.is_initialized():
            dist.destroy_process_group()
        self.host = None  # the last reference: the store's server closes its port

    def close(self) -> None:
        """Stop the group: the ranks leave when told (STOP_KEY) and meet rank 0 at run_rank's barrier."""
        import torch.distributed as dist

        from executors.launch import STOP_S

        with self._lock:
            if self.host is None:
                return
            reason = "the server is stopping"
            try:
                if self._joined:
                    self.store.set(STOP_KEY, "1")
                    dist.barrier()
                    for p in self.processes.values():
                        p.wait(STOP_S)
            except Exception as e:  # a rank already gone: stop the rest the hard way
                reason = f"the server is stopping ({e})"
            self._teardown(reason)


def _rank(rank: int, port: int, request: RunRequest, threads: int) -> None:
    """A spawned rank (1..N-1): follow rank 0's streams until told to stop."""
    import torch

    from executors.launch import join_store, run_rank

    torch.set_num_threads(threads)
    run_rank(_follow, request, request.source.device, request.timeout_s, lambda *_: None,
             store=join_store(port, request.timeout_s))


def _follow(request: RunRequest, rank: int, world: int) -> None:
    follow(request, rank, world)
