"""Profiling the model's parts on the machine at hand: the tick forward, the sampler step, the decoder, and
the tick loop's own overhead. Each measures exactly what the executors run:

- *the tick forward* (:func:`profile_forward`): ``CausalWanDiT.forward_tick`` as the tick loop calls it
  (task inputs, a K/V lookup per read version, one joint forward), for every batch size and number of
  visible blocks of a grid, in interleaved rounds (a burst of other work spoils one sample of many
  shapes, which the median drops); on a GPU also each shape's peak memory;
- *the sampler step* (:func:`profile_sampler`): ``FlowMatchSampler.step`` after one denoise task, the
  fresh noise of ``(seed, block, stage + 1)`` and the stage-0 noise draw (1/K of the tasks), as
  ``TickLoop._advance`` does; and one version's K/V commit to the pool;
- *the decoder* (:func:`profile_decode`): any decoder with ``reset()`` and ``decode_block(latent)`` (the
  latent preview on a CPU, the Wan VAE on a GPU), first block and later blocks;
- *the tick overhead* (:func:`profile_tick`): the reference executor's own time per tick, beyond its
  forwards and sampler steps (task inputs, noise, K/V bookkeeping, hand-over).

The number of stages ``S`` comes from the schedule the options describe (``CascadeSpec``), never a
constant.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, TypedDict

import torch

from apps.calibrate.timing import median_time, sync, wait_idle
from cascade_sched.errors import ConfigError
from cascade_sched.schedule import build_schedule
from cascade_sched.spec import CascadeSpec
from models.dit import CausalWanDiT, KVPair, TaskInput
from simulator.profile import ForwardPoint

__all__ = ["profile_decode", "profile_forward", "profile_sampler", "profile_tick", "register_prompt",
           "synthetic_tick"]

Progress = Callable[[str], None]
NOMINAL = (1000.0, 750.0, 500.0, 250.0)


def register_prompt(model: CausalWanDiT) -> None:
    """Register the calibration prompt (id 0) the synthetic tasks use."""
    from models.prompts import text_embedding

    model.register_prompt(0, text_embedding("calibration", model.config).to(model.device, model.dtype))


def synthetic_tick(model: CausalWanDiT, batch: int, context_blocks: int,
                   timesteps: Sequence[float] = NOMINAL) -> tuple[list[TaskInput], Any]:
    """``batch`` tasks, each attending to its own block and the same ``context_blocks - 1`` committed
    blocks (the tasks of one tick share the committed KV they read), and a K/V lookup for those blocks.
    The committed versions are stage S - 1 of the schedule ``timesteps`` describe. The random values are
    drawn on the model's device (a full-size context is gigabytes: drawing it on a CPU would take longer
    than the forward), seeded where the device has a generator (not on ``meta``)."""
    cfg = model.config
    last = CascadeSpec(num_blocks=1, timesteps=tuple(timesteps)).num_stages - 1
    dev = model.device
    g = torch.Generator(dev).manual_seed(1234) if dev.type in ("cpu", "cuda") else None
    act = torch.float64 if model.dtype == torch.float64 else torch.float32

    def randn(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.randn(shape, generator=g, device=dev, dtype=dtype)

    kv_shape = (cfg.tokens_per_block, cfg.num_heads, cfg.head_dim)
    visible = context_blocks - 1
    store: dict[tuple[int, int], list[KVPair]] = {}
    for j in range(visible):
        store[(j, last)] = [(randn(kv_shape, model.dtype), randn(kv_shape, model.dtype)) for _ in range(cfg.num_layers)]
    reads = tuple(store)
    tasks = []
    for i in range(batch):
        b = visible + i
        latent = randn(cfg.latent_shape(), act)
        tasks.append(TaskInput(ref=(b, 0), latent=latent.to(model.dtype), timestep=900.0,
                               frame_offset=b * cfg.frames_per_block, prompt=0, reads=reads))

    def lookup(ref: tuple[int, int], layer: int) -> KVPair:
        return store[ref][layer]

    return tasks, lookup


def profile_forward(
    model: CausalWanDiT,
    batches: Sequence[int],
    context_blocks: Sequence[int],
    warmup: int = 2,
    repeats: int = 5,
    progress: Progress | None = None,
    quiet: bool = True,
    timesteps: Sequence[float] = NOMINAL,
    deadline: float | None = None,
) -> list[ForwardPoint]:
    """Median seconds of one tick forward for every (batch, visible blocks) pair (the module docstring);
    with ``quiet`` a round starts only once the machine is idle (:func:`~apps.calibrate.timing.wait_idle`).
    With ``deadline`` (``time.perf_counter`` seconds) no shape starts after it: the shapes measured so far
    are returned, each with its own number of samples, and a shape never measured is left out."""
    for name, values in (("batches", batches), ("context_blocks", context_blocks)):
        if not values or min(values) < 1:
            raise ConfigError(name, f"`{name}` must be positive integers, got {list(values)}")
    if repeats < 1:
        raise ConfigError("repeats", f"`repeats` must be at least 1, got {repeats}")
    register_prompt(model)
    q = model.config.tokens_per_block
    cuda = model.device.type == "cuda"
    shapes = [(n, c) for n in sorted(set(batches)) for c in sorted(set(context_blocks))]
    samples: dict[tuple[int, int], list[float]] = {shape: [] for shape in shapes}
    peaks: dict[tuple[int, int], int] = dict.fromkeys(shapes, 0)
    with torch.inference_mode():
        for r in range(max(0, warmup) + repeats):
            if quiet and r >= warmup:
                wait_idle()
            for shape in shapes:  # built per use: holding every shape's context at once would not fit a GPU
                if deadline is not None and time.perf_counter() > deadline:
                    break
                tasks, lookup = synthetic_tick(model, *shape, timesteps=timesteps)
                if cuda:
                    torch.cuda.reset_peak_memory_stats(model.device)
                sync(model.device)
                t0 = time.perf_counter()
                model.forward_tick(tasks, lookup)
                sync(model.device)
                if r >= warmup:
                    samples[shape].append(time.perf_counter() - t0)
                if cuda:
                    peaks[shape] = max(peaks[shape], torch.cuda.max_memory_allocated(model.device))
                del tasks, lookup
            else:
                if progress is not None and r >= warmup:
                    progress(f"forward: round {r - warmup + 1} of {repeats} over {len(shapes)} shapes")
                continue
            if progress is not None:
                progress(f"forward: stopped at the deadline in round {r + 1}")
            break
    points = []
    for (n, c), xs in samples.items():
        if not xs:
            continue
        points.append(ForwardPoint(n, q, q * c, statistics.median(xs), len(xs), peaks[(n, c)]))
        if progress is not None:
            progress(f"forward batch {n} context {c} blocks: {points[-1].seconds * 1e3:.2f} ms"
                     + (f", peak {peaks[(n, c)] / 1e9:.2f} GB" if cuda else ""))
    return points


def profile_sampler(model: CausalWanDiT, num_denoise: int | None = None, warmup: int = 3, repeats: int = 21,
                    timesteps: Sequence[float] = NOMINAL) -> tuple[float, float]:
    """(seconds per denoise task of the tick loop's sampler step, seconds to commit one version's K/V).
    ``num_denoise`` defaults to the schedule's (the denoise steps of ``timesteps``)."""
    from models.kv import KVPool
    from models.sampler import FlowMatchSampler, noise

    spec = CascadeSpec(num_blocks=1, timesteps=tuple(timesteps))
    k = num_denoise or spec.num_denoise
    steps = spec.timesteps
    cfg = model.config
    shape = cfg.latent_shape()
    act = torch.float64 if model.dtype == torch.float64 else torch.float32
    sampler = FlowMatchSampler()
    x = torch.randn(shape).to(model.device, act)
    v = torch.randn(shape).to(model.device, act)
    counter = [0]

    def step() -> None:  # what TickLoop._advance does after one denoise task
        counter[0] += 1
        b = counter[0]
        s = b % max(1, k - 1) if k > 1 else 0
        eps = noise(0, b, s + 1, shape).to(x.device, act)
        sampler.step(x, v, steps[s], steps[s + 1] if s + 1 < k else None, eps)
        if b % k == 0:  # a block's stage-0 input noise, once per K denoise tasks
            noise(0, b, 0, shape).to(model.device, act)

    per_task = median_time(step, warmup, repeats, model.device)
    tokens = cfg.tokens_per_block
    batch_kv = [(torch.randn(2 * tokens, cfg.num_heads, cfg.head_dim).to(model.device, model.dtype),) * 2
                for _ in range(cfg.num_layers)]
    pool = KVPool()

    def commit() -> None:
        counter[0] += 1
        pool.commit((counter[0], spec.num_stages - 1), [(a[:tokens], w[:tokens]) for a, w in batch_kv],
                    free_after_tick=0)
        pool.release_through(0)

    return per_task, median_time(commit, warmup, repeats, model.device)


def profile_decode(model: CausalWanDiT, decoder: Any = None, warmup: int = 2, repeats: int = 9) -> tuple[float, float]:
    """(seconds to decode the first block, seconds per later block) with ``decoder`` (default: the latent
    preview decoder, what the CPU runs use)."""
    from models.decode import LatentPreviewDecoder

    x = torch.randn(model.config.latent_shape())
    dec = decoder if decoder is not None else LatentPreviewDecoder(channels=model.config.in_channels)
    device = getattr(dec, "device", torch.device("cpu"))

    def first() -> None:
        dec.reset()
        dec.decode_block(x)

    first_s = median_time(first, warmup, repeats, torch.device(device))
    dec.decode_block(x)
    return first_s, median_time(lambda: dec.decode_block(x), warmup, repeats, torch.device(device))


class TickOverhead(TypedDict):
    """What :func:`profile_tick` measured (seconds), recorded in a profile's provenance."""

    tick_overhead_s: float
    ticks: int
    wall_s: float
    forwards_s: float
    sample_s: float
    blocks: int
    window: int
    statistic: str


def profile_tick(model: CausalWanDiT, timesteps: Sequence[float] = NOMINAL, blocks: int = 6, window: int = 2,
                 repeats: int = 5) -> TickOverhead:
    """The reference executor's own seconds per tick beyond its forwards and sampler steps.

    A short sequential schedule runs for real, and, interleaved with its runs, the same forwards alone
    (``forward_tick`` of each of its batch shapes, :func:`synthetic_tick`). Other work on the machine only
    ever adds time, so the least wall time of the runs is set against the least time of each forward and
    the least sampler time of the runs; what is left, spread over the ticks, is the tick loop's own work:
    task inputs and their noise, K/V bookkeeping, hand-over."""
    from cascade_sched.trace import SAMPLE
    from executors.base import RunOptions
    from executors.reference import ReferenceExecutor
    from models.prompts import StandInEncoder

    spec = CascadeSpec(num_blocks=blocks, timesteps=tuple(timesteps), window=window)
    schedule = build_schedule(spec)
    shapes: dict[int, int] = {}  # visible blocks -> how many batches have that context
    for t in schedule.tasks:
        c = 1 + len(t.reads)
        shapes[c] = shapes.get(c, 0) + 1
    register_prompt(model)
    ticks = {c: synthetic_tick(model, 1, c, timesteps) for c in shapes}
    opts = RunOptions(text_encoder=StandInEncoder(model.config))  # the calibration prompt, as synthetic_tick's
    walls, samples = [], []
    alone: dict[int, float] = dict.fromkeys(shapes, float("inf"))
    with torch.inference_mode():
        ReferenceExecutor().run(schedule, model, opts)  # warm-up
        for _ in range(repeats):
            result = ReferenceExecutor().run(schedule, model, opts)
            walls.append(result.wall_s)
            samples.append(sum(e.duration_s for e in result.events if e.track == SAMPLE))
            for c, (tasks, lookup) in ticks.items():
                sync(model.device)
                t0 = time.perf_counter()
                model.forward_tick(tasks, lookup)
                sync(model.device)
                alone[c] = min(alone[c], time.perf_counter() - t0)
    forwards = sum(n * alone[c] for c, n in shapes.items())
    wall, sample = min(walls), min(samples)
    return TickOverhead(tick_overhead_s=max(0.0, wall - forwards - sample) / schedule.num_ticks,
                        ticks=schedule.num_ticks, wall_s=wall, forwards_s=forwards, sample_s=sample, blocks=blocks,
                        window=window, statistic=f"least of {repeats} runs and of {repeats} forwards per shape")
