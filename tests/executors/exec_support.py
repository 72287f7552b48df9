"""Helpers the executor tests share; module-level so spawned ranks can import them by name."""

from __future__ import annotations

from typing import Any

import torch

from cascade_sched import CascadeSpec, build_schedule
from executors.base import RunOptions
from executors.distributed import DistributedExecutor
from executors.reference import ReferenceExecutor
from models import CausalWanDiT, get_config
from models.config import ModelConfig

PROMPTS = {1: "a blue cube spinning", 2: "a green field at dusk", 3: "waves on a beach"}

# The promise of docs/executors.md ("The same numbers on every executor"): with a = the reference
# executor's latents and b = another executor's (distributed at any world size, or compiled), over every
# latent frame of the run, max|a - b| / max|a| stays within these bounds.
PROMISE = {torch.float32: 1e-4, torch.float64: 1e-12}


def rel_err(a: Any, b: Any) -> float:
    """max|a - b| / max|a| (numpy arrays or tensors of one shape): the norm of the promise."""
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max()) / max(float(a.abs().max()), 1e-300) if a.numel() else 0.0


def assert_promise(reference: Any, other: Any, dtype: torch.dtype = torch.float32) -> None:
    err = rel_err(reference, other)
    assert err <= PROMISE[dtype], f"max|a - b| / max|a| = {err:.3g} > {PROMISE[dtype]:g} ({dtype})"


def options() -> RunOptions:
    return RunOptions(prompts=PROMPTS)


def tiny_model(dtype: torch.dtype = torch.float32) -> CausalWanDiT:
    return CausalWanDiT(get_config("tiny"), seed=0).to(dtype)


def ring_config(spec: CascadeSpec) -> ModelConfig:
    """``tiny`` with the layers a spec splits over its rings (4 where it names none): rings of up to 4."""
    return get_config("tiny").replace(num_layers=spec.num_layers or 4)


def run_ring_reference(spec: dict[str, Any]) -> torch.Tensor:
    """All latent frames of ``spec`` from the reference executor, on the whole :func:`ring_config` model."""
    s = CascadeSpec.from_dict(spec)
    return ReferenceExecutor().run(build_schedule(s), CausalWanDiT(ring_config(s), seed=0), options()).stacked()


def run_ring_specs_on_rank(specs: list[dict[str, Any]], rank: int, world: int) -> list[Any]:
    """Rank function: run every spec with the distributed executor, each rank building only its slice of the
    :func:`ring_config` model (:func:`executors.distributed.rank_slice`) and counting the bytes it sends.
    Rank 0 returns, per spec, (latents, every rank's bytes sent per (tick, src, dst), every rank's
    parameter bytes)."""
    import torch.distributed as dist

    from executors.distributed import rank_slice
    from models.slices import parameter_bytes

    torch.set_num_threads(1)
    out = []
    for spec in specs:
        schedule = build_schedule(CascadeSpec.from_dict(spec))
        config = ring_config(schedule.spec)
        model = CausalWanDiT(config, seed=0, part=rank_slice(schedule.spec, config, rank))
        executor = DistributedExecutor(count_bytes=True)
        result = executor.run(schedule, model, options())
        mine = (executor.sent, parameter_bytes(model))
        gathered: list[Any] | None = [None] * world if rank == 0 else None
        dist.gather_object(mine, gathered, dst=0)
        out.append((result.stacked().numpy(), gathered) if rank == 0 else None)
    return out


def run_reference(spec: dict[str, Any], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """All latent frames of ``spec`` from the reference executor."""
    schedule = build_schedule(CascadeSpec.from_dict(spec))
    return ReferenceExecutor().run(schedule, tiny_model(dtype), options()).stacked()


def run_specs_on_rank(specs: list[dict[str, Any]], rank: int, world: int, dtype: str = "float32") -> list[Any]:
    """Rank function: run every spec with the distributed executor; rank 0 returns the latents."""
    torch.set_num_threads(1)
    model = tiny_model(getattr(torch, dtype))
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
