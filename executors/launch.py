"""Process groups for the distributed executor: join a torchrun launch, or spawn local ranks.

Failure policy: a rank that fails writes one message (rank, tick, task, error) to the group's store and
exits 1; every other rank's watchdog sees it within ``POLL_S``, says why it stops and exits 1 too, so no
rank hangs on a peer that is gone. Collective waits also carry the run's timeout as a backstop.

Interrupts take the same road: Ctrl-C or SIGTERM on any rank posts an interrupt to the store, every rank
closes its files (rank 0 keeps the finished blocks under the partial names) and exits 130 or 143, and
rank 0 alone says the command's one line.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from cascade_sched.errors import ExecutorError, Interrupted, signal_of
from executors import torchrun
from executors.devices import backend_for, check_device

ABORT_KEY = "cascade/abort"
POLL_S = 0.2

RankFn = Callable[[Any, int, int], Any]
"""``fn(payload, rank, world_size) -> result``; rank 0's result goes back to the launcher."""


def init_group(device: str, timeout_s: float) -> tuple[int, int]:
    """Initialise the default process group from the environment (``env://``); returns (rank, world)."""
    rank, world, local = torchrun.rank(), torchrun.world_size(), torchrun.local_rank()
    check_device(device, local, torchrun.local_world())
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
    dist.init_process_group(backend_for(device), rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s))
    # NCCL's first point-to-point batch must involve every rank: a collective sets the communicators up.
    dist.barrier()
    return rank, world


INTERRUPTED = "interrupted:"  # an abort message that starts so: "interrupted:15:rank 1 received SIGTERM"

Report = Callable[[int, "str | None"], None]
"""``report(signum, kept)`` says the one line of an interrupted run (rank 0 only): the command's own line
under torchrun; :func:`spawn` hands it to the spawning process instead, which says it."""


class Shutdown:
    """Stop this rank once, from any thread or a signal handler: close the files, say why, and exit.

    The work runs on its own thread, so a signal that lands while the main thread holds a lock (mid-way
    through writing a block, say), or waits on a peer that is gone, does not deadlock: the block
    finishes, then the files are closed. ``on_abort(drain)`` closes them and returns what was kept (rank 0).

    A failure exits 1, and each rank says why in a line of its own. An interrupt (Ctrl-C or SIGTERM on
    any rank) exits 130 or 143 on every rank, and only rank 0 says so, in the command's one line.
    """

    def __init__(self, rank: int, on_abort: Callable[[bool], str | None] | None, report: Report) -> None:
        self.rank, self.on_abort, self.report = rank, on_abort, report
        self._once = threading.Lock()

    def __call__(self, message: str, signum: int | None = None, why: str = "stopping") -> None:
        if not self._once.acquire(blocking=False):
            return

        def work() -> None:
            kept = None
            if self.on_abort is not None:
                try:
                    # A failure decodes what is queued (finished frames are never lost); an interrupt
                    # finishes the block being decoded and stops at once.
                    kept = self.on_abort(signum is None)
                except Exception as e:  # closing files must not keep a dead group alive
                    print(f"rank {self.rank}: while closing outputs: {e}", file=sys.stderr, flush=True)
            if signum is not None:
                if self.rank == 0:
                    self.report(signum, kept)
                os._exit(128 + signum)
            print(f"rank {self.rank}: {why}: {message}" + (f"; {kept}" if kept else ""), file=sys.stderr,
                  flush=True)
            os._exit(1)

        threading.Thread(target=work, name="cascade-shutdown", daemon=True).start()

    def follow(self, text: str) -> None:
        """Stop as another rank's abort message says: an interrupt (``INTERRUPTED`` + signum + why) as that
        interrupt, anything else as that rank's failure (its first line: the failing rank printed the
        rest, its schedule grid)."""
        if text.startswith(INTERRUPTED):
            self(text, int(text[len(INTERRUPTED):].split(":", 1)[0]))
        else:
            self(text.split("\n", 1)[0])


class Watchdog:
    """Polls the group's store for another rank's failure and stops this rank promptly if one is seen."""

    def __init__(self, shutdown: Shutdown) -> None:
        self.shutdown = shutdown
        self.store = dist.distributed_c10d._get_default_store()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="cascade-watchdog", daemon=True)
        self._thread.start()

    def peek(self) -> str | None:
        """Another rank's abort message, if one was posted."""
        try:
            return self.store.get(ABORT_KEY).decode() if self.store.check([ABORT_KEY]) else None
        except Exception:
            return None

    def _poll(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                if not self.store.check([ABORT_KEY]):
                    continue
                message = self.store.get(ABORT_KEY).decode()
            except Exception:  # the store's host is gone: the group is over either way
                message = "the process group's store stopped answering"
            if not self._stop.is_set():
                self.shutdown.follow(message)
            return

    def fail(self, message: str) -> None:
        """Tell every rank this one failed (best effort), then stop watching."""
        self._stop.set()
        with contextlib.suppress(Exception):
            self.store.set(ABORT_KEY, message)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_rank(fn: RankFn, payload: Any, device: str, timeout_s: float, report: Report,
             on_abort: Callable[[bool], str | None] | None = None) -> Any:
    """Run ``fn`` on this rank of an environment-configured group, with the failure policy above.

    SIGINT and SIGTERM (torchrun forwards both to every rank) interrupt ``fn`` on this rank; the others
    learn it from the store and stop too, so the whole group ends within ``POLL_S`` of the first signal.
    A SIGTERM that torchrun sends because another rank failed stops this rank as that failure.
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, Interrupted.on_signal)
    rank, world = init_group(device, timeout_s)
    shutdown = Shutdown(rank, on_abort, report)
    dog = Watchdog(shutdown)
    try:
        result = fn(payload, rank, world)
        dog.stop()
        dist.barrier()
    except BaseException as e:
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the shutdown short
            signal.signal(signum, signal.SIG_IGN)
        earlier = dog.peek()
        if isinstance(e, KeyboardInterrupt) and earlier is None:
            received = signal_of(e)
            message = f"{INTERRUPTED}{received}:rank {rank} received {signal.Signals(received).name}"
            dog.fail(message)
            shutdown(message, received)
        elif earlier is not None:  # another rank stopped first (a failure, or an interrupt): stop as it says
            dog.fail(earlier)
            shutdown.follow(earlier)
        else:
            message = str(e) if isinstance(e, ExecutorError) else f"rank {rank} failed: {type(e).__name__}: {e}"
            dog.fail(message)
            # Exit through the shutdown thread, not a clean shutdown, which would wait on peers that may be
            # blocked on this rank. It closes this rank's files, keeping what was finished.
            shutdown(message, why="error")
        threading.Event().wait()  # the shutdown thread ends the process
    dist.destroy_process_group()
    return result


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_kept(path: str, signum: int, kept: str | None) -> None:
    """Rank 0's report under :func:`spawn`: the spawning process says the one line."""
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(kept or "")
    os.replace(path + ".tmp", path)


def _spawned(local_rank: int, nproc: int, port: int, fn: RankFn, payload: Any, device: str,
             timeout_s: float, threads: int, result_path: str, on_abort: Callable[[bool], str | None] | None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(local_rank),
                      WORLD_SIZE=str(nproc), LOCAL_RANK=str(local_rank))
    torch.set_num_threads(threads)
    result = run_rank(fn, payload, device, timeout_s, functools.partial(_write_kept, result_path + ".kept"), on_abort)
    if local_rank == 0:
        # A file, not a pipe: a large result would fill the pipe and block this rank before the join.
        with open(result_path + ".tmp", "wb") as f:
            pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(result_path + ".tmp", result_path)


STOP_S = 10.0  # how long the spawning process waits for interrupted ranks before killing them


def spawn(fn: RankFn, payload: Any, nproc: int, device: str = "cpu", timeout_s: float = 60.0,
          threads: int | None = None, on_abort: Callable[[bool], str | None] | None = None) -> Any:
    """Spawn ``nproc`` local ranks running ``fn``; return rank 0's result or raise ``ExecutorError``.

    Each rank gets ``threads`` intra-op threads (default: the cores divided among the ranks).
    ``fn``, ``payload`` and ``on_abort`` must pickle (module-level functions, plain data).

    Ctrl-C or SIGTERM here is passed on to every rank; when the ranks stopped for an interrupt (here or
    on one of them), :class:`~cascade_sched.errors.Interrupted` is raised here with what rank 0 kept,
    so the command says its one line.
    """
    from torch.multiprocessing.spawn import ProcessExitedException, ProcessRaisedException, start_processes

    check_device(device, nproc - 1, nproc)  # one line here, before any rank starts
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // nproc)
    port = _free_port()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cascade-spawn-") as tmp:
        result_path = os.path.join(tmp, "rank0.pkl")
        kept_path = result_path + ".kept"
        ctx = start_processes(_spawned, args=(nproc, port, fn, payload, device, timeout_s, threads,  # type: ignore[no-untyped-call]  # torch: start_processes is not annotated
                                              result_path, on_abort), nprocs=nproc, join=False,
                              start_method="spawn")
        try:
            while not ctx.join(timeout=POLL_S, grace_period=STOP_S):
                pass
        except KeyboardInterrupt as e:
            signum = signal_of(e)
            for p in ctx.processes:
                if p.is_alive() and p.pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p.pid, signum)
            deadline = time.monotonic() + STOP_S
            for p in ctx.processes:
                p.join(max(0.0, deadline - time.monotonic()))
                if p.is_alive():
                    p.kill()
                    p.join()
            _interrupted(signum, kept_path)
        except ProcessExitedException as e:
            if e.exit_code in (128 + signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGINT, -signal.SIGTERM):
                _interrupted(abs(e.exit_code) % 128, kept_path)  # a rank was interrupted: every rank stopped
            raise ExecutorError(
                f"rank {e.error_index} exited with status {e.exit_code} after "
                f"{time.perf_counter() - start:.1f} s; every rank was stopped (each rank's own message is above)"
            ) from None
        except ProcessRaisedException as e:
            last = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown error"
            raise ExecutorError(f"rank {e.error_index} failed: {last}") from None
        if not os.path.exists(result_path):
            raise ExecutorError("rank 0 finished without a result")
        with open(result_path, "rb") as f:
            return pickle.load(f)


def _interrupted(signum: int, kept_path: str) -> None:
    """Raise the interrupt the ranks stopped for, with what rank 0 said it kept."""
    from pathlib import Path

    kept = Path(kept_path).read_text(encoding="utf-8") if os.path.exists(kept_path) else None
    raise Interrupted(signum, kept or None) from None
