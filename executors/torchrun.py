"""The environment torchrun (or another launcher) gives each rank: its rank, the world size, the local rank
and the store's address. Read here only; importing this module imports no torch."""

from __future__ import annotations

import os

__all__ = ["local_rank", "local_world", "rank", "under_torchrun", "world_size"]


def under_torchrun() -> bool:
    """True when torchrun (or another launcher) set this process's rank and world size."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def rank() -> int:
    """This process's rank (0 outside a launch)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """The launch's world size (1 outside a launch)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """This process's rank on its node (its rank where the launcher does not say)."""
    return int(os.environ.get("LOCAL_RANK", rank()))


def local_world() -> int | None:
    """Ranks on this node, where the launcher says."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", 0)) or None
