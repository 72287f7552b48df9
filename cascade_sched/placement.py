"""Placement policies: which device runs task (block, stage) at a tick.

A policy is a pure function ``(block, stage, tick, num_devices) -> device``. Register new ones with
:func:`register_placement`; ``CascadeSpec.placement`` names one of :data:`PLACEMENTS`.
"""

from __future__ import annotations

from collections.abc import Callable

PlacementFn = Callable[[int, int, int, int], int]


def place_by_block(block: int, stage: int, tick: int, num_devices: int) -> int:
    """Round robin by block: a block stays on one device for all its stages, so its own KV never moves.

    >>> [place_by_block(b, 0, 0, 3) for b in range(5)]
    [0, 1, 2, 0, 1]
    """
    return block % num_devices


def place_by_stage(block: int, stage: int, tick: int, num_devices: int) -> int:
    """Pipeline style: device d runs stage d (mod D); a block's latent moves one device per stage.

    >>> [place_by_stage(0, s, s, 5) for s in range(5)]
    [0, 1, 2, 3, 4]
    """
    return stage % num_devices


PLACEMENTS: dict[str, PlacementFn] = {"block": place_by_block, "stage": place_by_stage}


def register_placement(name: str, fn: PlacementFn) -> None:
    """Add a named placement policy (a pure function of block, stage, tick and device count)."""
    PLACEMENTS[name] = fn
