"""Placement policies: which device runs task (block, stage) at a tick, and the layers each device holds.

A policy is a pure function ``(block, stage, tick, num_devices) -> device``. Register new ones with
:func:`register_placement`; ``CascadeSpec.placement`` names one of :data:`PLACEMENTS`.

Placement ``layers`` runs every task through a *ring* of W devices, device r of the ring running layers
``[first_r, end_r)``: the policy gives the ring's entry device, and :func:`ring_segments` the segments
``(device, first_layer, end_layer)`` the task passes through, in ring order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cascade_sched.spec import CascadeSpec

PlacementFn = Callable[[int, int, int, int], int]
Segment = tuple[int, int, int | None]
"""``(device, first_layer, end_layer)``: a device runs layers ``[first_layer, end_layer)`` of a task
(``end_layer`` None: all the model's layers, their count unknown)."""


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


def place_in_rings(rings: int) -> PlacementFn:
    """Placement ``layers`` over ``rings`` rings: blocks go to the rings round robin, and a task's device
    is its ring's entry device (ring g holds devices ``g*W .. g*W + W - 1``, W = num_devices / rings).

    >>> [place_in_rings(2)(b, 0, 0, 4) for b in range(4)]
    [0, 2, 0, 2]
    """

    def place_by_ring(block: int, stage: int, tick: int, num_devices: int) -> int:
        return (block % rings) * (num_devices // rings)

    return place_by_ring


PLACEMENTS: dict[str, PlacementFn] = {"block": place_by_block, "stage": place_by_stage, "layers": place_in_rings(1)}


def register_placement(name: str, fn: PlacementFn) -> None:
    """Add a named placement policy (a pure function of block, stage, tick and device count)."""
    PLACEMENTS[name] = fn


def placer(spec: CascadeSpec) -> PlacementFn:
    """The policy that places ``spec``'s tasks, ``(block, stage, tick, num_devices) -> device`` (the ring's
    entry device under ``layers``, for the spec's rings). The builder and the validator both place
    through it."""
    return place_in_rings(spec.rings) if spec.placement == "layers" else PLACEMENTS[spec.placement]


def ring_segments(spec: CascadeSpec, device: int) -> tuple[Segment, ...] | None:
    """The segments of a task whose (entry) device is ``device`` under ``spec``: one segment of all layers
    for placements other than ``layers``; under ``layers`` the ring that starts at ``device``, device r
    running the spec's r-th layer range. None when ``device`` starts no ring.

    >>> from cascade_sched.spec import CascadeSpec
    >>> ring_segments(CascadeSpec(num_blocks=1, num_devices=4, rings=2, placement="layers", stage_stride=2,
    ...                           num_layers=30), 2)
    ((2, 0, 15), (3, 15, 30))
    """
    ranges = spec.layer_ranges
    w = len(ranges)
    if device % w:
        return None
    return tuple((device + r, first, end) for r, (first, end) in enumerate(ranges))


def default_decode_device(spec: CascadeSpec) -> int:
    """Where clean latents are decoded unless a run says otherwise: the device that runs the sampler step
    of ring 0's tasks, its last device (device 0 for the block and stage placements). Everyone (core,
    simulator, executors) asks this function.

    >>> from cascade_sched.spec import CascadeSpec
    >>> default_decode_device(CascadeSpec(num_blocks=1, num_devices=4, placement="layers", stage_stride=4,
    ...                                   num_layers=30))
    3
    """
    return spec.ring_size - 1
