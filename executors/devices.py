"""Which devices a run may use: a device name's form (``cpu``, ``cuda``, ``cuda:N``), whether this machine
has it, and the collective backend that serves it.

Importing this module imports no torch (the command line checks names before anything loads).
"""

from __future__ import annotations

from cascade_sched.errors import ConfigError

__all__ = ["backend_for", "check_device", "check_device_name"]


def check_device_name(flag: str, device: str | None) -> None:
    """Refuse a device name this project does not know (cpu, cuda, cuda:N) in one line naming ``flag``;
    None (not given) passes. Whether the machine has it is :func:`check_device`'s."""
    if device is None:
        return
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise ConfigError(flag, f"`{flag}` must be cpu, cuda or cuda:N, got {device!r}")


def check_device(device: str, local_rank: int | None = None, ranks_here: int | None = None,
                 flag: str = "--device") -> None:
    """Refuse, in one ``ConfigError`` naming ``flag``, a device this machine cannot give: a name other
    than cpu / cuda / cuda:N, CUDA where torch sees none (a CPU build, no driver, no GPU), a GPU index past
    the count, NCCL missing from this torch build, or more local ranks than GPUs (NCCL cannot put two
    ranks on one GPU). Every rank runs it before touching CUDA, so every rank stops with the same line."""
    check_device_name(flag, device)
    kind, _, index = device.partition(":")
    if kind == "cpu":
        return
    import torch
    import torch.distributed as dist

    if not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "torch sees no CUDA device here"
        raise ConfigError(flag, f"`{flag} {device}` was asked for, but {why}; use {flag} cpu")
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        raise ConfigError(flag, f"`{flag} {device}`: there are {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    if local_rank is not None:
        if not dist.is_nccl_available():
            raise ConfigError(flag, f"`{flag} {device}` across ranks needs NCCL, which this torch build lacks")
        if local_rank >= count or (ranks_here or 0) > count:
            raise ConfigError(flag, f"`{flag} {device}`: {max(ranks_here or 0, local_rank + 1)} ranks on this "
                                    f"node but {count} GPU(s); NCCL needs one GPU per rank")


def backend_for(device: str) -> str:
    """NCCL for CUDA devices, gloo for the CPU."""
    return "nccl" if device.startswith("cuda") else "gloo"
