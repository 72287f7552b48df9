"""Process groups for the distributed executor: join a torchrun launch, or spawn local ranks.

The group's store lives in the launching process, never in a rank: torchrun's agent hosts it under
torchrun, and :func:`spawn` hosts it in the process that spawns the ranks. So a rank may stop and exit at
once, and every other rank still reads why from the store; "the store stopped answering" means that the
launcher itself is gone.

Failure policy: a rank that fails posts one message (rank, tick, task, error) to the store and exits 1;
every other rank's watchdog sees it within ``POLL_S``, says why it stops and exits 1 too, so no rank hangs
on a peer that is gone. The first message posted stands (``compare_set``): every rank stops for the same
one. Collective waits also carry the run's timeout as a backstop.

Interrupts take the same road. Under torchrun, torchrun passes Ctrl-C and SIGTERM on to every rank, and the
first rank to see one posts it. Under :func:`spawn` the ranks run in sessions of their own
(:mod:`executors.spawned`), so a terminal's Ctrl-C reaches the spawning process alone, which posts it for
every rank; a SIGTERM sent to a rank itself is posted by that rank. Every rank then closes its files
(rank 0 keeps the finished blocks under the partial names) and exits 130 or 143, and one process says the
command's one line: the spawning process, or rank 0 under torchrun.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import Store, TCPStore

from cascade_sched.errors import ExecutorError, Interrupted, signal_of
from executors import spawned, torchrun
from executors.devices import backend_for, check_device
from executors.spawned import Rank

ABORT_KEY = "cascade/abort"
JOINED_KEY = "cascade/joined/{}"  # a spawned rank that watches the store (an interrupt posted now reaches it)
POLL_S = 0.2
STOP_S = 10.0  # how long the spawning process waits for stopping ranks before killing them

RankFn = Callable[[Any, int, int], Any]
"""``fn(payload, rank, world_size) -> result``; rank 0's result goes back to the launcher."""


def host_store(timeout_s: float) -> TCPStore:
    """A group's store, served from this process on 127.0.0.1 at a port the kernel picks when it binds
    (``store.port``), so no other process can take the port between a probe and the bind."""
    return TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                         timeout=timedelta(seconds=timeout_s))


def join_store(port: int, timeout_s: float) -> TCPStore:
    """A rank's connection to the store :func:`host_store` serves on ``port``."""
    return TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=timeout_s))


def init_group(device: str, timeout_s: float, store: Store | None = None, rank: int | None = None,
               world: int | None = None) -> tuple[int, int]:
    """Initialise the default process group; returns (rank, world). ``rank`` and ``world`` default to
    the environment's; the store is ``store`` (a spawned rank's), else the one ``env://`` names
    (torchrun's)."""
    rank = torchrun.rank() if rank is None else rank
    world = torchrun.world_size() if world is None else world
    local = torchrun.local_rank() if store is None else rank
    check_device(device, local, torchrun.local_world() if store is None else world)
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
    timeout = timedelta(seconds=timeout_s)
    if store is None:
        dist.init_process_group(backend_for(device), rank=rank, world_size=world, timeout=timeout)
    else:
        dist.init_process_group(backend_for(device), store=store, rank=rank, world_size=world, timeout=timeout)
    # NCCL's first point-to-point batch must involve every rank: a collective sets the communicators up.
    dist.barrier()
    return rank, world


INTERRUPTED = "interrupted:"  # an abort message that starts so: "interrupted:15:rank 1 received SIGTERM"


def interrupt_message(signum: int, who: str) -> str:
    """The abort message of an interrupt: ``interrupted:2:rank 1 received SIGINT``.

    >>> interrupt_message(signal.SIGTERM, "the command")
    'interrupted:15:the command received SIGTERM'
    """
    return f"{INTERRUPTED}{int(signum)}:{who} received {signal.Signals(signum).name}"


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
        """Stop as the abort message says: an interrupt (``INTERRUPTED`` + signum + why) as that
        interrupt, anything else as that rank's failure (its first line: the failing rank printed the
        rest, its schedule grid)."""
        if text.startswith(INTERRUPTED):
            self(text, int(text[len(INTERRUPTED):].split(":", 1)[0]))
        else:
            self(text.split("\n", 1)[0])


STORE_GONE = "the group's store stopped answering: its launcher (torchrun, or the spawning command) is gone"


class Watchdog:
    """Polls the group's store for another rank's abort message and stops this rank promptly if one is
    seen."""

    def __init__(self, shutdown: Shutdown, store: Store) -> None:
        self.shutdown, self.store = shutdown, store
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="cascade-watchdog", daemon=True)
        self._thread.start()

    def peek(self) -> str | None:
        """The abort message, if one was posted."""
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
            except Exception:  # the launcher is gone: the group is over either way
                message = STORE_GONE
            if not self._stop.is_set():
                self.shutdown.follow(message)
            return

    def post(self, message: str) -> str:
        """Post this rank's abort ``message`` unless one stands already, and stop watching; returns the
        message that stands (``message`` itself if the store is gone)."""
        self._stop.set()
        try:
            return bytes(self.store.compare_set(ABORT_KEY, "", message)).decode()
        except Exception:
            return message

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_rank(fn: RankFn, payload: Any, device: str, timeout_s: float, report: Report,
             on_abort: Callable[[bool], str | None] | None = None, store: Store | None = None) -> Any:
    """Run ``fn`` on this rank of an environment-configured group, with the failure policy above.

    ``store``: a spawned rank's connection to its launcher's store; None under torchrun, whose agent's
    store ``env://`` names. Under torchrun, SIGINT and SIGTERM (torchrun forwards both to every rank)
    interrupt ``fn`` on this rank; a spawned rank leaves SIGINT to its launcher (see the module
    docstring). The others learn it from the store, so the whole group ends within ``POLL_S`` of the
    first signal. A SIGTERM that torchrun sends because another rank failed stops this rank as that
    failure.
    """
    rank = torchrun.rank()
    shutdown = Shutdown(rank, on_abort, report)
    dog: Watchdog | None = None
    try:
        if store is not None:  # watch from the start: an interrupt posted while this rank starts stops it
            dog = Watchdog(shutdown, store)
            store.set(JOINED_KEY.format(rank), "1")
        for signum in (signal.SIGTERM,) if store is not None else (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, Interrupted.on_signal)
        rank, world = init_group(device, timeout_s, store)
        if dog is None:
            dog = Watchdog(shutdown, dist.distributed_c10d._get_default_store())
        result = fn(payload, rank, world)
        dog.stop()
        dist.barrier()
    except BaseException as e:
        _stop_rank(e, rank, dog, shutdown)
    dist.destroy_process_group()
    return result


def _stop_rank(e: BaseException, rank: int, dog: Watchdog | None, shutdown: Shutdown) -> NoReturn:
    """This rank stopped with ``e``: post why (unless another rank's message stands, which this rank
    then follows) and end the process through ``shutdown``."""
    for s in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the shutdown short
        signal.signal(s, signal.SIG_IGN)
    signum: int | None = None
    if isinstance(e, KeyboardInterrupt):
        signum = signal_of(e)
        mine = interrupt_message(signum, f"rank {rank}")
    else:
        mine = str(e) if isinstance(e, ExecutorError) else f"rank {rank} failed: {type(e).__name__}: {e}"
    earlier = dog.peek() if dog is not None else None
    standing = earlier if earlier is not None else dog.post(mine) if dog is not None else mine
    if standing == mine:
        # Exit through the shutdown thread, not a clean shutdown, which would wait on peers that may be
        # blocked on this rank. It closes this rank's files, keeping what was finished.
        shutdown(mine, signum, "stopping" if signum is not None else "error")
    else:  # another rank stopped first (a failure, or an interrupt): stop as it says
        shutdown.follow(standing)
    threading.Event().wait()  # the shutdown thread ends the process
    raise AssertionError("unreachable")


def _write_kept(path: str, signum: int, kept: str | None) -> None:
    """Rank 0's report under :func:`spawn`: the spawning process says the one line."""
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(kept or "")
    os.replace(path + ".tmp", path)


def _spawned(local_rank: int, port: int, fn: RankFn, payload: Any, device: str, timeout_s: float, threads: int,
             result_path: str, on_abort: Callable[[bool], str | None] | None) -> None:
    torch.set_num_threads(threads)
    report = functools.partial(_write_kept, result_path + ".kept")
    result = run_rank(fn, payload, device, timeout_s, report, on_abort, store=join_store(port, timeout_s))
    if local_rank == 0:
        # A file, not a pipe: a large result would fill the pipe and block this rank before the join.
        with open(result_path + ".tmp", "wb") as f:
            pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(result_path + ".tmp", result_path)


def rank_env(rank: int, world: int, port: int) -> dict[str, str]:
    """A spawned rank's environment: torchrun's variables, for the code that reads them."""
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank)}


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Ctrl-C or SIGTERM that arrives in the block is raised when the block ends (main thread only;
    elsewhere nothing changes): a launcher interrupted between starting a rank and recording it would
    leave that rank running on, unknown to the one stopping the others."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _: received.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        raise KeyboardInterrupt() if received[0] == signal.SIGINT else Interrupted(received[0])


def stop_ranks(store: Store, ranks: Mapping[int, Rank], message: str, wait_s: float = STOP_S) -> None:
    """Stop spawned ranks from their launcher: post ``message`` (unless another stands) for the ranks
    watching the store, end the ones not watching it yet (still starting: they hold nothing), give the
    rest ``wait_s`` to close their files, and kill any left."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)} \
        if threading.current_thread() is threading.main_thread() else {}  # a second Ctrl-C waits its turn
    try:
        with contextlib.suppress(Exception):
            store.compare_set(ABORT_KEY, "", message)
        for rank, p in ranks.items():
            joined = False
            with contextlib.suppress(Exception):
                joined = store.check([JOINED_KEY.format(rank)])
            if not joined:
                p.terminate()
        deadline = time.monotonic() + wait_s
        for p in ranks.values():
            if p.wait(max(0.0, deadline - time.monotonic())) is None:
                p.kill()
                p.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def spawn(fn: RankFn, payload: Any, nproc: int, device: str = "cpu", timeout_s: float = 60.0,
          threads: int | None = None, on_abort: Callable[[bool], str | None] | None = None) -> Any:
    """Spawn ``nproc`` local ranks running ``fn``; return rank 0's result or raise ``ExecutorError``.

    Each rank gets ``threads`` intra-op threads (default: the cores divided among the ranks).
    ``fn``, ``payload`` and ``on_abort`` must pickle (module-level functions, plain data).

    This process hosts the group's store, and the ranks run in sessions of their own
    (:mod:`executors.spawned`). Ctrl-C or SIGTERM here is posted to the store for every rank; when the
    ranks stopped for an interrupt (here or on one of them), :class:`~cascade_sched.errors.Interrupted` is
    raised here with what rank 0 kept, so the command says its one line.
    """
    check_device(device, nproc - 1, nproc)  # one line here, before any rank starts
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // nproc)
    store = host_store(timeout_s)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cascade-spawn-") as tmp:
        result_path = os.path.join(tmp, "rank0.pkl")
        kept_path = result_path + ".kept"
        ranks: dict[int, Rank] = {}
        try:
            with deferred_interrupts():  # every rank started is in `ranks` before an interrupt is raised
                for r in range(nproc):
                    args = (r, store.port, fn, payload, device, timeout_s, threads, result_path, on_abort)
                    ranks[r] = spawned.start(_spawned, args, tmp, rank_env(r, nproc, store.port))
            failed = spawned.wait_any(ranks)
        except KeyboardInterrupt as e:
            signum = signal_of(e)
            stop_ranks(store, ranks, interrupt_message(signum, "the command"))
            _interrupted(signum, kept_path)
        if failed is not None:
            r, code = failed
            # The others follow the message it posted (or, killed outright, the one posted here).
            why = f"rank {r} was killed by {signal.Signals(-code).name}" if code < 0 else f"rank {r} exited with status {code}"
            stop_ranks(store, ranks, why)
            if code in (128 + signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGINT, -signal.SIGTERM):
                _interrupted(abs(code) % 128, kept_path)  # a rank was interrupted: every rank stopped
            error = ranks[r].error()
            if error is not None:
                raise ExecutorError(f"rank {r} failed: {error}")
            raise ExecutorError(f"{why} after {time.perf_counter() - start:.1f} s; every rank was stopped (each "
                                "rank's own message is above)")
        if not os.path.exists(result_path):
            raise ExecutorError("rank 0 finished without a result")
        with open(result_path, "rb") as f:
            return pickle.load(f)


def _interrupted(signum: int, kept_path: str) -> NoReturn:
    """Raise the interrupt the ranks stopped for, with what rank 0 said it kept."""
    from pathlib import Path

    kept = Path(kept_path).read_text(encoding="utf-8") if os.path.exists(kept_path) else None
    raise Interrupted(signum, kept or None) from None
