"""Helpers the executor tests share; module-level so spawned ranks can import them by name."""

from __future__ import annotations

from typing import Any

import torch

from cascade_sched import CascadeSpec, build_schedule
from executors.base import RunOptions
from executors.distributed import DistributedExecutor
from executors.reference import ReferenceExecutor
from models import CausalWanDiT, get_config

PROMPTS = {1: "a blue cube spinning", 2: "a green field at dusk", 3: "waves on a beach"}


def options() -> RunOptions:
    return RunOptions(prompts=PROMPTS)


def tiny_model(dtype: torch.dtype = torch.float32) -> CausalWanDiT:
    return CausalWanDiT(get_config("tiny"), seed=0).to(dtype)


def run_reference(spec: dict[str, Any], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """All latent frames of ``spec`` from the reference executor."""
    schedule = build_schedule(CascadeSpec.from_dict(spec))
    return ReferenceExecutor().run(schedule, tiny_model(dtype), options()).stacked()


def run_specs_on_rank(specs: list[dict[str, Any]], rank: int, world: int) -> list[Any]:
    """Rank function: run every spec with the distributed executor; rank 0 returns the latents."""
    torch.set_num_threads(1)
    model = tiny_model()
    out = []
    for spec in specs:
        result = DistributedExecutor().run(build_schedule(CascadeSpec.from_dict(spec)), model, options())
        out.append(result.stacked().numpy() if rank == 0 else None)
    return out


def trace_events_on_rank(spec: dict[str, Any], rank: int, world: int) -> list[Any] | None:
    """Rank function: run ``spec`` with the distributed executor; rank 0 returns every rank's trace events."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    events = DistributedExecutor().run(build_schedule(CascadeSpec.from_dict(spec)), tiny_model(), options(),
                                       on_block=lambda b, x: None).events
    gathered: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(events, gathered, dst=0)
    return [e for evs in gathered for e in evs] if gathered is not None else None
