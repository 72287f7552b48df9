"""Process groups for the distributed executor: join a torchrun launch, or spawn local ranks.

Failure policy: a rank that fails writes one message (rank, tick, task, error) to the group's store and
exits 1; every other rank's watchdog sees it within ``POLL_S``, says why it stops and exits 1 too, so no
rank hangs on a peer that is gone. Collective waits also carry the run's timeout as a backstop.
"""

from __future__ import annotations

import contextlib
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

from cascade_sched.errors import ConfigError, ExecutorError

ABORT_KEY = "cascade/abort"
POLL_S = 0.2

RankFn = Callable[[Any, int, int], Any]
"""``fn(payload, rank, world_size) -> result``; rank 0's result goes back to the launcher."""


def under_torchrun() -> bool:
    """True when torchrun (or another launcher) set this process's rank and world size."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def backend_for(device: str) -> str:
    """NCCL for CUDA devices, gloo for the CPU."""
    return "nccl" if device.startswith("cuda") else "gloo"


def check_device(device: str, local_rank: int | None = None, ranks_here: int | None = None) -> None:
    """Refuse, in one ``ConfigError`` naming ``--device``, a device this machine cannot give: a name other
    than cpu / cuda / cuda:N, CUDA where torch sees none (a CPU build, no driver, no GPU), a GPU index past
    the count, NCCL missing from this torch build, or more local ranks than GPUs (NCCL cannot put two
    ranks on one GPU). Every rank runs it before touching CUDA, so every rank stops with the same line."""
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise ConfigError("device", f"`--device` must be cpu, cuda or cuda:N, got {device!r}")
    if kind == "cpu":
        return
    if not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "torch sees no CUDA device here"
        raise ConfigError("device", f"`--device {device}` was asked for, but {why}; use --device cpu")
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        raise ConfigError("device", f"`--device {device}`: there are {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    if local_rank is not None:
        if not dist.is_nccl_available():
            raise ConfigError("device", f"`--device {device}` across ranks needs NCCL, which this torch build lacks")
        if local_rank >= count or (ranks_here or 0) > count:
            raise ConfigError("device", f"`--device {device}`: {max(ranks_here or 0, local_rank + 1)} ranks on this "
                                        f"node but {count} GPU(s); NCCL needs one GPU per rank")


def init_group(device: str, timeout_s: float) -> tuple[int, int]:
    """Initialise the default process group from the environment (``env://``); returns (rank, world)."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    check_device(device, local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", 0)) or None)
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend_for(device), rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s))
    # NCCL's first point-to-point batch must involve every rank: a collective sets the communicators up.
    dist.barrier()
    return rank, world


class Shutdown:
    """Stop this rank once, from any thread or a signal handler: say why, run ``on_abort``, exit 1.

    The work runs on its own thread, so a signal that lands while the main thread holds a lock (mid-way
    through writing a block, say) does not deadlock: the block finishes, then the files are closed.
    """

    def __init__(self, rank: int, on_abort: Callable[[], None] | None) -> None:
        self.rank, self.on_abort = rank, on_abort
        self._once = threading.Lock()

    def __call__(self, message: str) -> None:
        if not self._once.acquire(blocking=False):
            return

        def work() -> None:
            print(f"rank {self.rank}: stopping: {message}", file=sys.stderr, flush=True)
            if self.on_abort is not None:
                try:
                    self.on_abort()
                except Exception as e:  # closing files must not keep a dead group alive
                    print(f"rank {self.rank}: while closing outputs: {e}", file=sys.stderr, flush=True)
            os._exit(1)

        threading.Thread(target=work, name="cascade-shutdown", daemon=True).start()


class Watchdog:
    """Polls the group's store for another rank's failure and stops this rank promptly if one is seen."""

    def __init__(self, shutdown: Shutdown) -> None:
        self.shutdown = shutdown
        self.store = dist.distributed_c10d._get_default_store()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="cascade-watchdog", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                if not self.store.check([ABORT_KEY]):
                    continue
                message = self.store.get(ABORT_KEY).decode()
            except Exception:  # the store's host is gone: the group is over either way
                message = "the process group's store stopped answering"
            if not self._stop.is_set():
                self.shutdown(message)
            return

    def fail(self, message: str) -> None:
        """Tell every rank this one failed (best effort), then stop watching."""
        self._stop.set()
        with contextlib.suppress(Exception):
            self.store.set(ABORT_KEY, message)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_rank(fn: RankFn, payload: Any, device: str, timeout_s: float,
             on_abort: Callable[[], None] | None = None) -> Any:
    """Run ``fn`` on this rank of an environment-configured group, with the failure policy above."""
    rank, world = init_group(device, timeout_s)
    shutdown = Shutdown(rank, on_abort)
    signal.signal(signal.SIGTERM, lambda signum, frame: shutdown(
        "terminated by the launcher after another rank failed"))
    dog = Watchdog(shutdown)
    try:
        result = fn(payload, rank, world)
        dog.stop()
        dist.barrier()
    except BaseException as e:
        message = str(e) if isinstance(e, ExecutorError) else f"rank {rank} failed: {type(e).__name__}: {e}"
        dog.fail(message)
        print(f"rank {rank}: error: {message}", file=sys.stderr, flush=True)
        if on_abort is not None:
            on_abort()
        # Exit now: a clean shutdown would wait on peers that may be blocked on this rank.
        os._exit(1)
    dist.destroy_process_group()
    return result


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawned(local_rank: int, nproc: int, port: int, fn: RankFn, payload: Any, device: str,
             timeout_s: float, threads: int, result_path: str, on_abort: Callable[[], None] | None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(local_rank),
                      WORLD_SIZE=str(nproc), LOCAL_RANK=str(local_rank))
    torch.set_num_threads(threads)
    result = run_rank(fn, payload, device, timeout_s, on_abort)
    if local_rank == 0:
        # A file, not a pipe: a large result would fill the pipe and block this rank before the join.
        with open(result_path + ".tmp", "wb") as f:
            pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(result_path + ".tmp", result_path)


def spawn(fn: RankFn, payload: Any, nproc: int, device: str = "cpu", timeout_s: float = 60.0,
          threads: int | None = None, on_abort: Callable[[], None] | None = None) -> Any:
    """Spawn ``nproc`` local ranks running ``fn``; return rank 0's result or raise ``ExecutorError``.

    Each rank gets ``threads`` intra-op threads (default: the cores divided among the ranks).
    ``fn``, ``payload`` and ``on_abort`` must pickle (module-level functions, plain data).
    """
    import torch.multiprocessing as mp

    check_device(device, nproc - 1, nproc)  # one line here, before any rank starts
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // nproc)
    port = _free_port()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cascade-spawn-") as tmp:
        result_path = os.path.join(tmp, "rank0.pkl")
        try:
            mp.start_processes(_spawned, args=(nproc, port, fn, payload, device, timeout_s, threads,
                                               result_path, on_abort), nprocs=nproc, join=True,
                               start_method="spawn")
        except mp.ProcessExitedException as e:
            raise ExecutorError(
                f"rank {e.error_index} exited with status {e.exit_code} after "
                f"{time.perf_counter() - start:.1f} s; every rank was stopped (each rank's own message is above)"
            ) from None
        except mp.ProcessRaisedException as e:
            last = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown error"
            raise ExecutorError(f"rank {e.error_index} failed: {last}") from None
        if not os.path.exists(result_path):
            raise ExecutorError("rank 0 finished without a result")
        with open(result_path, "rb") as f:
            return pickle.load(f)
