"""What this machine offers a command: the cores this process may run on and the memory available to a new
allocation, read once per command (:func:`machine`) and handed to the bounds that need them
(:class:`cascade_sched.bounds.Machine`)."""

from __future__ import annotations

import os

from cascade_sched.bounds import Machine
from cascade_sched.errors import check_range

__all__ = ["available_memory", "check_threads", "cpu_count", "machine", "rss_bytes"]


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _proc_kib(path: str, key: str) -> int | None:
    """Bytes of a ``key: N kB`` line of a /proc file, or None where the system does not say."""
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_memory() -> int:
    """Bytes of memory available to a new allocation (MemAvailable; 8 GiB where the system does not say)."""
    found = _proc_kib("/proc/meminfo", "MemAvailable")
    if found is not None:
        return found
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 8 << 30


def rss_bytes() -> int:
    """This process's resident memory now, in bytes (VmRSS; 0 where the system does not say)."""
    return _proc_kib("/proc/self/status", "VmRSS") or 0


def machine() -> Machine:
    """This machine, now."""
    return Machine(cores=cpu_count(), memory_bytes=available_memory())


def check_threads(flag: str, value: int, cores: int) -> None:
    """``--threads``: 0 (torch's default) up to this process's ``cores`` (more threads only contend)."""
    check_range(flag, value, 0, cores, f" (0 = torch's default; this process may use {cores} core(s))")
