"""Layer splits of a ring that level its devices: the decoding device (or any with work beside its layers)
holds fewer layers, as StreamDiffusionV2 rebalances its layer ranges once from measured times
(``compute_balanced_split`` in its ``streamv2v/communication/utils.py``).

:func:`level` states the rule; :func:`estimated_split` feeds it the cost model's prices before any run (what
the planner runs a ring with), :func:`balanced_split` a run's measured busy times.
"""

from __future__ import annotations

from collections.abc import Sequence

from cascade_sched.schedule import Schedule
from simulator.catalog import ModelGeometry
from simulator.cost import CostModel
from simulator.result import SimResult

__all__ = ["balanced_split", "estimated_split", "level"]


def estimated_split(schedule: Schedule, g: ModelGeometry, cost: CostModel) -> tuple[int, ...] | None:
    """The layer split of a ring that decodes inline on its last device, leveled from the cost model before
    any run (:func:`level`): the per-layer time of the gang a device runs in steady state (the tasks
    entering at the schedule's middle tick, over one layer) and the decode of a block beside the last
    device's layers (one block leaves the ring per tick at lag 1; ``lag`` ticks per block otherwise)."""
    from cascade_sched.metrics import video_frames
    from simulator.cost import slice_seconds

    spec = schedule.spec
    L, w = g.num_layers, spec.ring_size
    if w > L or not schedule.tasks:
        return None
    mid = schedule.gangs[schedule.num_ticks // 2] or max(schedule.gangs, key=len)
    q = g.tokens_per_block
    ctx = tuple(sorted(q * (1 + len(t.reads)) for t in mid if t.block % spec.rings == mid[0].block % spec.rings))
    layer = g.config.layer_slice(min(1, L - 1), min(2, L), entry=False, head=False) if L > 1 else None
    per_layer = slice_seconds(cost, q, ctx, layer, L)[0] if layer is not None else cost.forward_s(q, ctx)
    lag = spec.lags[0] if spec.lags else 1
    extra = [0.0] * w
    extra[-1] = cost.decode_s(1, video_frames(1, g.frames_per_block)) / lag
    return level(L, w, per_layer, extra)


def level(layers: int, w: int, per_layer: float, extra: Sequence[float]) -> tuple[int, ...] | None:
    """The split of ``layers`` over ``w`` devices, at least one each, that minimises the largest of
    ``n_r * per_layer + extra[r]``: each next layer to the device whose total stays the smallest (optimal,
    every layer adding the same time). None when the layers cannot go round.

    >>> level(30, 4, 0.01, [0.0, 0.0, 0.0, 0.06])
    (9, 9, 9, 3)
    """
    if per_layer <= 0 or layers < w:
        return None
    split = [1] * w
    for _ in range(layers - w):
        r = min(range(w), key=lambda i: ((split[i] + 1) * per_layer + extra[i], i))
        split[r] += 1
    return tuple(split)


def balanced_split(result: SimResult) -> tuple[int, ...] | None:
    """A layer split of a ring that levels its devices' steady-state work: each device's compute per layer
    from ``result`` (its forwards over its layers), plus what it does beside its layers (decoding, encoding,
    the sampler), per block; the split that minimises the slowest device's total, at least one layer each
    (StreamDiffusionV2 rebalances its layer ranges once from measured times to the same end). None
    outside placement layers.

    A device holding ``n_r`` layers at ``t`` seconds per layer with ``e_r`` seconds of other work per block
    takes ``n_r t + e_r`` per block; giving each next layer to the device whose total stays the smallest
    minimises the largest total (each total grows by the same ``t`` per layer).
    """
    if result.placement != "layers" or result.timeline is None:
        return None
    spec = result.spec
    w = int(spec["num_devices"]) // int(spec.get("rings", 1))
    t0, t1, blocks = result.steady_window()
    wl = result.timeline.workload
    per_layer: list[float] = []
    extra: list[float] = []
    total_layers = 0
    for d in range(w):  # ring 0's devices: every ring is alike
        parts = result._busy(d, t0, t1)
        part = next((wl.batches[bi].part for bi in wl.device_batches[d] if wl.batches[bi].part is not None), None)
        if part is None:
            return None
        total_layers = max(total_layers, part.end)
        per_layer.append(sum(parts[k] for k in ("forward", "cache")) / blocks / (part.end - part.first))
        extra.append(sum(parts[k] for k in ("tick", "sample", "decode", "encode", "text", "hop")) / blocks)
    return level(total_layers, w, sum(per_layer) / w, extra)


