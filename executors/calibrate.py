"""``cascade calibrate``: measure the model and the links on the machine at hand and write a profile.

What is measured, each with warm-up runs and the median of repeats:

1. *The tick forward* (:func:`profile_forward`): ``CausalWanDiT.forward_tick`` exactly as the tick loop
   calls it (task inputs, a K/V lookup per read version, one joint forward), for every batch size (local
   tasks per device) and number of visible blocks in the grid. One entry per shape:
   ``batch``, ``query_tokens`` (one block), ``context_tokens`` (own + visible blocks), ``seconds``.
2. *The sampler step* (:func:`profile_sampler`): what the tick loop does after the forward for one
   denoise task: ``x0 = x - sigma v``, the fresh noise of ``(seed, block, stage + 1)`` and the re-noising,
   plus the stage-0 noise draw (1/K of the tasks). The K/V commit of a version is measured too and kept
   in the provenance (it is well under 1% of a forward for every preset).
3. *Decoding* (:func:`profile_decode`): the latent preview decoder's first block (9 frames) and later
   blocks (12 frames).
4. *The collectives* (:func:`measure_link`): on two spawned ranks of the backend the distributed executor
   uses (gloo on CPU, NCCL on GPU), the per-layer joint-attention exchange (``batch_isend_irecv`` of a
   stacked K/V both ways, then wait) and a point-to-point ping-pong (the committed-KV transfer), over a
   range of message sizes (per size the least of several timed bursts: other work on the machine only
   ever adds time); :func:`fit_alpha_beta` fits ``seconds = latency + bytes / bandwidth`` to each. The
   exchange fit becomes the profile's ``link`` (the simulator prices gangs and transfers with it).
5. *Contention* (:func:`measure_contention`): the same forward on two spawned ranks at once against rank
   0 alone, in alternating turns; the median ratio is the profile's ``provenance.contention.slowdown``.

Thread count matters on a CPU: calibrate with the thread count of the runs you will predict (the
distributed executor gives each rank ``cores // ranks`` threads; ``validate`` runs one process with the
profile's thread count). The provenance records device, torch version, dtype, threads and date.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from cascade_sched.errors import ConfigError
from models.dit import CausalWanDiT, KVPair, TaskInput
from simulator.catalog import HOST_CPU, Cluster
from simulator.profile import ForwardPoint, Profile

__all__ = [
    "DEFAULT_CONTEXT_BLOCKS",
    "DEFAULT_LINK_SIZES",
    "CalibrateOptions",
    "LinkFit",
    "calibrate",
    "fit_alpha_beta",
    "measure_link",
    "median_time",
    "profile_decode",
    "profile_forward",
    "profile_sampler",
    "wait_idle",
]

DEFAULT_CONTEXT_BLOCKS: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12)
DEFAULT_LINK_SIZES: tuple[int, ...] = (1 << 10, 1 << 13, 1 << 16, 1 << 18, 1 << 20, 1 << 22)

Progress = Callable[[str], None]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], Any], warmup: int, repeats: int, device: torch.device | None = None) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs.

    >>> median_time(lambda: None, 1, 3) >= 0.0
    True
    """
    if repeats < 1:
        raise ConfigError("repeats", f"`repeats` must be at least 1, got {repeats}")
    dev = device or torch.device("cpu")
    for _ in range(max(0, warmup)):
        fn()
    _sync(dev)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _cpu_times() -> tuple[float, float] | None:
    """(idle, total) jiffies of all CPUs from /proc/stat, or None where there is no such file."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return fields[3] + (fields[4] if len(fields) > 4 else 0.0), sum(fields)


def idle_share(window_s: float = 0.3) -> float:
    """The share of all CPUs left idle over the next ``window_s`` seconds (NaN where unknown)."""
    a = _cpu_times()
    time.sleep(window_s)
    b = _cpu_times()
    if a is None or b is None or b[1] <= a[1]:
        return math.nan
    return (b[0] - a[0]) / (b[1] - a[1])


def wait_idle(min_idle: float = 0.8, timeout_s: float = 20.0, window_s: float = 0.3) -> float:
    """Wait until at least ``min_idle`` of the machine's CPUs are idle (other work on a shared machine has
    paused), at most ``timeout_s``; returns the idle share last seen (NaN where it cannot be read).

    Measurements on a shared CI machine start only in quiet moments; a row measured after the timeout
    carries the low idle share so the table can say so.
    """
    end = time.perf_counter() + timeout_s
    share = idle_share(window_s)
    while not (math.isnan(share) or share >= min_idle) and time.perf_counter() < end:
        share = idle_share(window_s)
    return share


# -- the model ------------------------------------------------------------------------------------------
def _register_prompt(model: CausalWanDiT) -> None:
    from models.prompts import text_embedding

    model.register_prompt(0, text_embedding("calibration", model.config).to(model.device, model.dtype))


def _synthetic_tick(model: CausalWanDiT, batch: int, context_blocks: int) -> tuple[list[TaskInput], Any]:
    """``batch`` tasks, each attending to its own block and the same ``context_blocks - 1`` earlier blocks
    (as the tasks of one tick share the committed KV they read), and a K/V lookup for those blocks."""
    cfg = model.config
    g = torch.Generator().manual_seed(1234)
    act = torch.float64 if model.dtype == torch.float64 else torch.float32
    kv_shape = (cfg.tokens_per_block, cfg.num_heads, cfg.head_dim)
    visible = context_blocks - 1
    store: dict[tuple[int, int], list[KVPair]] = {}
    for j in range(visible):
        store[(j, 4)] = [
            (torch.randn(kv_shape, generator=g).to(model.device, model.dtype),
             torch.randn(kv_shape, generator=g).to(model.device, model.dtype))
            for _ in range(cfg.num_layers)
        ]
    reads = tuple(store)
    tasks = []
    for i in range(batch):
        b = visible + i
        latent = torch.randn(cfg.latent_shape(), generator=g).to(model.device, act)
        tasks.append(TaskInput(ref=(b, i % 5), latent=latent.to(model.dtype), timestep=900.0,
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
) -> list[ForwardPoint]:
    """Median seconds of one tick forward for every (batch, visible blocks) pair; see the module docstring.

    The shapes are measured in interleaved rounds (every shape once per round), so a burst of other work
    on the machine spoils one sample of many shapes, which the median drops, rather than every sample of one;
    with ``quiet`` a round starts only once the machine is idle (:func:`wait_idle`).
    """
    for name, values in (("batches", batches), ("context_blocks", context_blocks)):
        if not values or min(values) < 1:
            raise ConfigError(name, f"`{name}` must be positive integers, got {list(values)}")
    if repeats < 1:
        raise ConfigError("repeats", f"`repeats` must be at least 1, got {repeats}")
    _register_prompt(model)
    q = model.config.tokens_per_block
    shapes = [(n, c) for n in sorted(set(batches)) for c in sorted(set(context_blocks))]
    ticks = {shape: _synthetic_tick(model, *shape) for shape in shapes}
    samples: dict[tuple[int, int], list[float]] = {shape: [] for shape in shapes}
    with torch.inference_mode():
        for r in range(max(0, warmup) + repeats):
            if quiet and r >= warmup:
                wait_idle()
            for shape in shapes:
                tasks, lookup = ticks[shape]
                _sync(model.device)
                t0 = time.perf_counter()
                model.forward_tick(tasks, lookup)
                _sync(model.device)
                if r >= warmup:
                    samples[shape].append(time.perf_counter() - t0)
            if progress is not None and r >= warmup:
                progress(f"forward: round {r - warmup + 1} of {repeats} over {len(shapes)} shapes")
    points = []
    for (n, c), xs in samples.items():
        points.append(ForwardPoint(n, q, q * c, statistics.median(xs), len(xs)))
        if progress is not None:
            progress(f"forward batch {n} context {c} blocks: {points[-1].seconds * 1e3:.2f} ms")
    return points


def profile_sampler(model: CausalWanDiT, num_denoise: int = 4, warmup: int = 3, repeats: int = 21) -> tuple[float, float]:
    """(seconds per denoise task of the tick loop's sampler step, seconds to commit one version's K/V)."""
    from models.kv import KVPool
    from models.sampler import FlowMatchSampler, noise

    cfg = model.config
    shape = cfg.latent_shape()
    act = torch.float64 if model.dtype == torch.float64 else torch.float32
    sampler = FlowMatchSampler()
    x = torch.randn(shape).to(model.device, act)
    v = torch.randn(shape).to(model.device, act)
    counter = [0]

    def step() -> None:
        counter[0] += 1
        b = counter[0]
        eps = noise(0, b, 1, shape).to(x.device, act)
        sampler.step(x, v, 750, 500, eps)
        if b % num_denoise == 0:  # a block's stage-0 input noise, once per K denoise tasks
            noise(0, b, 0, shape).to(model.device, act)

    per_task = median_time(step, warmup, repeats, model.device)
    tokens = cfg.tokens_per_block
    batch_kv = [(torch.randn(2 * tokens, cfg.num_heads, cfg.head_dim).to(model.device, model.dtype),) * 2
                for _ in range(cfg.num_layers)]
    pool = KVPool()

    def commit() -> None:
        counter[0] += 1
        pool.commit((counter[0], 4), [(k[:tokens], w[:tokens]) for k, w in batch_kv], free_after_tick=0)
        pool.release_through(0)

    return per_task, median_time(commit, warmup, repeats, model.device)


def profile_decode(model: CausalWanDiT, warmup: int = 2, repeats: int = 9) -> tuple[float, float]:
    """(seconds to decode the first block, seconds per later block) with the latent preview decoder."""
    from models.decode import LatentPreviewDecoder

    x = torch.randn(model.config.latent_shape())
    dec = LatentPreviewDecoder(channels=model.config.in_channels)

    def first() -> None:
        dec.reset()
        dec.decode_block(x)

    first_s = median_time(first, warmup, repeats)
    dec.decode_block(x)
    return first_s, median_time(lambda: dec.decode_block(x), warmup, repeats)


# -- the links ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LinkFit:
    """``seconds = latency_s + bytes / bandwidth_Bps`` fitted to ``(bytes, median seconds)`` points."""

    latency_s: float
    bandwidth_Bps: float
    points: tuple[tuple[int, float], ...] = ()
    residual_pct: float = 0.0  # worst relative error of the fit over the points

    def predict(self, nbytes: float) -> float:
        return self.latency_s + nbytes / self.bandwidth_Bps

    def to_dict(self) -> dict[str, Any]:
        return {"latency_s": self.latency_s, "bandwidth_Bps": self.bandwidth_Bps,
                "worst_error_pct": round(self.residual_pct, 2),
                "points": [{"bytes": b, "seconds": s} for b, s in self.points]}


def fit_alpha_beta(sizes: Sequence[float], seconds: Sequence[float]) -> LinkFit:
    """Least-squares fit of latency and bandwidth, weighted by 1/seconds (relative error), latency >= 0.

    >>> f = fit_alpha_beta([1e3, 1e6, 1e7], [1e-5 + 1e3 / 2e9, 1e-5 + 1e6 / 2e9, 1e-5 + 1e7 / 2e9])
    >>> round(f.latency_s * 1e6, 3), round(f.bandwidth_Bps / 1e9, 3)
    (10.0, 2.0)
    """
    if len(sizes) != len(seconds) or len(sizes) < 2 or len(set(sizes)) < 2:
        raise ConfigError("link_sizes", "a latency + bandwidth fit needs at least two distinct message sizes")
    xs = [float(b) for b in sizes]
    ys = [float(s) for s in seconds]
    ws = [1.0 / max(y, 1e-12) ** 2 for y in ys]  # minimise the relative error: small messages count too

    def solve(free_latency: bool) -> tuple[float, float]:
        sw = sum(ws)
        if free_latency:
            mx = sum(w * x for w, x in zip(ws, xs, strict=True)) / sw
            my = sum(w * y for w, y in zip(ws, ys, strict=True)) / sw
            sxx = sum(w * (x - mx) ** 2 for w, x in zip(ws, xs, strict=True))
            sxy = sum(w * (x - mx) * (y - my) for w, x, y in zip(ws, xs, ys, strict=True))
            slope = sxy / sxx
            return my - slope * mx, slope
        slope = sum(w * x * y for w, x, y in zip(ws, xs, ys, strict=True)) / sum(w * x * x for w, x in zip(ws, xs, strict=True))
        return 0.0, slope

    lat, slope = solve(True)
    if lat < 0:
        lat, slope = solve(False)
    if not slope > 0:  # flat in size: the bandwidth is beyond what these sizes can show
        slope = 1e-15
    worst = max(abs(lat + x * slope - y) / y for x, y in zip(xs, ys, strict=True) if y > 0)
    return LinkFit(lat, 1.0 / slope, tuple(zip((int(x) for x in xs), ys, strict=True)), 100.0 * worst)


def _link_rank(payload: dict[str, Any], rank: int, world: int) -> dict[str, Any] | None:
    """Rank function of :func:`measure_link` (module level so spawned ranks can import it)."""
    import torch.distributed as dist

    sizes, warmup, repeats, rounds = payload["sizes"], payload["warmup"], payload["repeats"], payload["rounds"]
    device = torch.device(payload["device"])
    dtype = getattr(torch, payload["dtype"])
    peer = 1 - rank
    elem = torch.empty((), dtype=dtype).element_size()
    out: dict[str, dict[int, float]] = {"exchange": {}, "oneway": {}}
    big = torch.ones(max(sizes) // elem, dtype=dtype, device=device)
    for _ in range(10):  # the first messages set up the connection and buffers: keep them out
        dist.all_reduce(big)
    for nbytes in sizes:
        half = max(1, nbytes // elem // 2)
        k = torch.ones(half, dtype=dtype, device=device)
        v = torch.ones(half, dtype=dtype, device=device)
        recv = torch.empty(2 * half, dtype=dtype, device=device)

        buf = torch.ones(2 * half, dtype=dtype, device=device)

        def exchange(k: Tensor = k, v: Tensor = v, recv: Tensor = recv) -> None:
            # the per-layer joint-attention exchange: stack, post both ways, wait
            ops = [dist.P2POp(dist.isend, torch.stack((k, v)), peer), dist.P2POp(dist.irecv, recv, peer)]
            for w in dist.batch_isend_irecv(ops):
                w.wait()

        def pingpong(buf: Tensor = buf, recv: Tensor = recv) -> None:  # the committed-KV transfer, both ways
            if rank == 0:
                dist.send(buf, peer)
                dist.recv(recv, peer)
            else:
                dist.recv(recv, peer)
                dist.send(buf, peer)

        for name, fn, per in (("exchange", exchange, 1.0), ("oneway", pingpong, 0.5)):
            for _ in range(warmup):
                fn()
            if rank == 0:
                wait_idle(0.9, timeout_s=3.0)
            samples = []
            for _ in range(repeats):
                dist.barrier()
                _sync(device)
                t0 = time.perf_counter()
                for _ in range(rounds):  # back to back: each round waits for the peer, so they stay paired
                    fn()
                _sync(device)
                samples.append((time.perf_counter() - t0) / rounds * per)
            out[name][2 * half * elem] = min(samples)  # other work on the machine only ever adds time
    return {"rank": rank, **out} if rank == 0 else None


def measure_link(
    device: str = "cpu",
    dtype: str = "float32",
    sizes: Sequence[int] = DEFAULT_LINK_SIZES,
    warmup: int = 3,
    repeats: int = 9,
    rounds: int = 10,
    timeout_s: float = 120.0,
) -> dict[str, LinkFit]:
    """Spawn two ranks of the executor's backend and fit ``{"exchange": ..., "oneway": ...}``."""
    from executors.launch import spawn

    if device.startswith("cuda") and torch.cuda.device_count() < 2:
        raise ConfigError("device", "measuring NCCL links needs two CUDA devices; calibrate with --no-link")
    payload = {"sizes": list(sizes), "warmup": warmup, "repeats": repeats, "rounds": rounds,
               "device": device, "dtype": dtype}
    result = spawn(_link_rank, payload, 2, device, timeout_s)
    fits = {}
    for name in ("exchange", "oneway"):
        pts = sorted(result[name].items())
        fits[name] = fit_alpha_beta([b for b, _ in pts], [s for _, s in pts])
    return fits


# -- the joint-attention exchange inside a forward ------------------------------------------------------
def _gang_rank(payload: dict[str, Any], rank: int, world: int) -> list[tuple[int, float, float]] | None:
    """Rank function of :func:`measure_gang_exchange`: per batch size, the tick forward of every rank at
    once without and with the executor's per-layer K/V exchange."""
    import torch.distributed as dist

    from executors.generate import build_model

    model = build_model(payload["model"], payload["checkpoint"], payload["dtype"], payload["device"])
    _register_prompt(model)
    cfg = model.config
    kv_shape = (2, cfg.tokens_per_block, cfg.num_heads, cfg.head_dim)
    peers = [p for p in range(world) if p != rank]
    reps = payload["repeats"]
    out = []
    with torch.inference_mode():
        for n in payload["batches"]:
            tasks, lookup = _synthetic_tick(model, n, payload["context_blocks"])

            def exchange(layer: int, local: dict[Any, KVPair], n: int = n) -> dict[Any, KVPair]:
                # As DistributedTransport.exchange: one stacked (K, V) message per local task to every peer,
                # a fresh buffer per message received, post all, wait all.
                ops = []
                for peer in peers:
                    for k, v in local.values():
                        ops.append(dist.P2POp(dist.isend, torch.stack((k, v)), peer))
                    for _ in range(n):
                        buf = torch.empty(kv_shape, dtype=model.dtype, device=model.device)
                        ops.append(dist.P2POp(dist.irecv, buf, peer))
                for w in dist.batch_isend_irecv(ops):
                    w.wait()
                return {}

            for _ in range(payload["warmup"]):
                model.forward_tick(tasks, lookup, exchange)
            for _ in range(payload["turns"]):
                if rank == 0:
                    wait_idle(0.9, timeout_s=5.0)
                dist.barrier()
                plain = median_time(lambda t=tasks, lk=lookup: model.forward_tick(t, lk), 0, reps)
                dist.barrier()
                joint = median_time(lambda t=tasks, lk=lookup, ex=exchange: model.forward_tick(t, lk, ex), 0, reps)
                out.append((n, plain, joint))
    return out if rank == 0 else None


def measure_gang_exchange(options: CalibrateOptions, processes: int = 2, context_blocks: int = 4,
                          turns: int = 3) -> dict[str, Any]:
    """The per-layer joint-attention exchange as the executor meets it: two spawned ranks run the same
    tick forward at once, without and with the exchange (one message per task and peer each way, every
    layer); ``(with - without) / layers`` against the bytes each rank sends per layer, over batch sizes
    ``options.batches``, fitted to ``latency + bytes / bandwidth``. Inside a forward the exchange costs
    more than between idle ranks (``measure_link``): the ranks arrive a little apart at every layer, and
    the messages contend with the peer's compute for the cores."""
    from executors.launch import spawn
    from models.config import get_config

    model_cfg = get_config(options.model)
    kv_bytes = model_cfg.kv_bytes_per_block_layer(torch.empty((), dtype=getattr(torch, options.dtype)).element_size())
    payload = {"model": options.model, "checkpoint": options.checkpoint, "dtype": options.dtype,
               "device": options.device, "context_blocks": context_blocks, "warmup": options.warmup + 1,
               "repeats": max(5, options.repeats), "turns": turns, "batches": list(options.batches)}
    rows = spawn(_gang_rank, payload, processes, options.device, 600.0)
    points = []
    for n in options.batches:
        extra = sorted((j - p) / model_cfg.num_layers for m, p, j in rows if m == n)
        points.append((n * kv_bytes * (processes - 1), max(1e-7, extra[len(extra) // 2])))
    fit = fit_alpha_beta([b for b, _ in points], [t for _, t in points])
    return {"processes": processes, "context_blocks": context_blocks, "fit": fit.to_dict(),
            "latency_s": fit.latency_s, "bandwidth_Bps": fit.bandwidth_Bps}


# -- contention between processes ---------------------------------------------------------------------
def _contention_rank(payload: dict[str, Any], rank: int, world: int) -> list[tuple[int, float, float, float]] | None:
    """Rank function of :func:`measure_contention`: per turn and batch size, rank 0 alone, then every rank
    at once."""
    import torch.distributed as dist

    from executors.generate import build_model

    model = build_model(payload["model"], payload["checkpoint"], payload["dtype"], payload["device"])
    _register_prompt(model)
    ticks = {n: _synthetic_tick(model, n, payload["context_blocks"]) for n in payload["batches"]}
    reps = payload["repeats"]
    out = []
    with torch.inference_mode():
        for tasks, lookup in ticks.values():
            for _ in range(payload["warmup"]):
                model.forward_tick(tasks, lookup)
        for _ in range(payload["turns"]):
            for n, (tasks, lookup) in ticks.items():
                idle = math.nan
                if rank == 0:  # rank 1 sleeps in the barrier: the machine should be all but idle
                    idle = wait_idle(0.9, timeout_s=5.0)
                dist.barrier()
                alone = (median_time(lambda t=tasks, lk=lookup: model.forward_tick(t, lk), 0, reps)
                         if rank == 0 else 0.0)
                dist.barrier()
                together = median_time(lambda t=tasks, lk=lookup: model.forward_tick(t, lk), 0, reps)
                out.append((n, alone, together, idle))
    return out if rank == 0 else None


def measure_contention(options: CalibrateOptions, processes: int = 2, context_blocks: int = 4,
                       turns: int = 5, batches: Sequence[int] = (1, 3, 5)) -> dict[str, Any]:
    """How much slower a forward runs when ``processes`` ranks (spawned as the distributed executor spawns
    them, ``cores // processes`` threads each) run it at the same time than when rank 0 runs it alone,
    per batch size (larger batches touch more memory), in alternating turns (each measures both sides
    within a second); per batch the median turn is kept.

    The share of cores explains part of a slowdown (processor sharing, :mod:`simulator.sharing`, with the
    idle share seen before the turn as background load); what it leaves is the interference of caches
    and memory bandwidth, recorded per batch (``interference_by_batch``) for ``Cluster.contention_by_batch``.
    ``slowdown`` (batch 1, the whole ratio) is the per-tick factor of ``Cluster.contention``.
    """
    from executors.launch import spawn

    payload = {"model": options.model, "checkpoint": options.checkpoint, "dtype": options.dtype,
               "device": options.device, "context_blocks": context_blocks, "warmup": options.warmup + 2,
               "repeats": max(5, options.repeats), "turns": turns, "batches": list(batches)}
    rows = spawn(_contention_rank, payload, processes, options.device, 600.0)
    cores = os.cpu_count() or 1
    threads = max(1, cores // processes)
    per_batch: dict[int, dict[str, Any]] = {}
    for n in batches:
        turns_n = [r for r in rows if r[0] == n]
        ratios = [t / a for _, a, t, _ in turns_n]
        mid = sorted(range(len(ratios)), key=ratios.__getitem__)[len(ratios) // 2]  # the median turn
        idle = turns_n[mid][3]
        background = 0.0 if math.isnan(idle) else max(0.0, cores * (1.0 - idle))
        host = Cluster(HOST_CPU, processes, host_cores=cores, threads_per_device=threads,
                       background_load=background)
        shared = host.host_share(processes) / host.host_share(1)
        per_batch[n] = {"ratio": ratios[mid], "ratios": [round(r, 4) for r in ratios], "alone_s": turns_n[mid][1],
                        "together_s": turns_n[mid][2], "idle": idle, "interference": max(1.0, ratios[mid] / shared)}
    first = per_batch[min(batches)]
    return {"processes": processes, "slowdown": max(1.0, first["ratio"]), "alone_s": first["alone_s"],
            "together_s": first["together_s"], "ratios": first["ratios"], "threads_per_process": threads,
            "cores": cores, "context_blocks": context_blocks, "interference": first["interference"],
            "interference_by_batch": [[n, per_batch[n]["interference"]] for n in batches],
            "by_batch": {str(n): v for n, v in per_batch.items()}}


# -- the whole calibration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CalibrateOptions:
    """What ``cascade calibrate`` measures (see the module docstring)."""

    model: str = "small"
    device: str = "cpu"
    dtype: str = "float32"
    threads: int | None = 1  # intra-op threads of the measuring process (None: leave torch's default)
    batches: tuple[int, ...] = (1, 2, 3, 4, 5)
    context_blocks: tuple[int, ...] = DEFAULT_CONTEXT_BLOCKS
    warmup: int = 2
    repeats: int = 5
    link: bool = True
    contention: bool = True  # with ``link``: also measure two ranks computing at once
    gang: bool = True  # with ``link``: measure the exchange inside a two-rank forward (the profile's link)
    link_sizes: tuple[int, ...] = DEFAULT_LINK_SIZES
    checkpoint: str | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def calibrate(options: CalibrateOptions, progress: Progress | None = None, quiet: bool = True) -> Profile:
    """Measure everything in the module docstring and return the profile (``Profile.save`` writes it).

    With ``quiet``, every round of forward shapes starts once the machine is idle (:func:`wait_idle`).
    """
    from executors.generate import build_model

    if options.threads is not None:
        if options.threads < 1:
            raise ConfigError("threads", f"`threads` must be at least 1, got {options.threads}")
        torch.set_num_threads(options.threads)
    model = build_model(options.model, options.checkpoint, options.dtype, options.device)
    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    points = profile_forward(model, options.batches, options.context_blocks, options.warmup, options.repeats, say,
                             quiet=quiet)
    sample_s, commit_s = profile_sampler(model)
    say(f"sampler step {sample_s * 1e6:.0f} us per denoise task; K/V commit {commit_s * 1e6:.0f} us per version")
    decode_first, decode_rest = profile_decode(model)
    say(f"preview decode {decode_first * 1e3:.2f} ms (first block), {decode_rest * 1e3:.2f} ms per later block")
    link = None
    prov: dict[str, Any] = {
        "device": _device_name(options.device),
        "torch": torch.__version__,
        "dtype": options.dtype,
        "threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "warmup": options.warmup,
        "repeats": options.repeats,
        "statistic": "median",
        "commit_s_per_version": commit_s,
        "decoder": "latent preview",
        "cores": os.cpu_count() or 1,
    }
    if options.link:
        fits = measure_link(options.device, options.dtype, options.link_sizes)
        ex = fits["exchange"]
        link = (ex.latency_s, ex.bandwidth_Bps)
        backend = "nccl" if options.device.startswith("cuda") else "gloo"
        prov["link_backend"] = backend
        prov["link_fits"] = {k: f.to_dict() for k, f in fits.items()}
        say(f"{backend} exchange: {ex.latency_s * 1e6:.1f} us + bytes / {ex.bandwidth_Bps / 1e9:.2f} GB/s "
            f"(worst point off by {ex.residual_pct:.1f}%); one-way: {fits['oneway'].latency_s * 1e6:.1f} us + "
            f"bytes / {fits['oneway'].bandwidth_Bps / 1e9:.2f} GB/s")
    if options.link and options.gang:
        prov["gang_exchange"] = g = measure_gang_exchange(options)
        link = (g["latency_s"], g["bandwidth_Bps"])  # what the simulator prices an exchange with
        prov["link_source"] = "gang_exchange"
        say(f"exchange inside a two-rank forward: {g['latency_s'] * 1e6:.1f} us + bytes / "
            f"{g['bandwidth_Bps'] / 1e9:.2f} GB/s per layer (worst point off by {g['fit']['worst_error_pct']:.1f}%)")
    if options.link and options.contention and not options.device.startswith("cuda"):
        prov["contention"] = c = measure_contention(options)
        say(f"contention: a forward takes {c['together_s'] * 1e3:.2f} ms with {c['processes']} processes at once, "
            f"{c['alone_s'] * 1e3:.2f} ms alone (x{c['slowdown']:.3f}); interference by batch: "
            + ", ".join(f"{n}: x{f:.3f}" for n, f in c["interference_by_batch"]))
    prov["calibration_s"] = round(time.perf_counter() - t0, 1)
    if options.notes:
        prov["notes"] = options.notes
    prov.update(options.extra)
    return Profile(model=options.model, forward=tuple(points), sample_s_per_task=sample_s,
                   decode_s_per_block=decode_rest, decode_first_block_s=decode_first, link_fit=link,
                   provenance=prov)
