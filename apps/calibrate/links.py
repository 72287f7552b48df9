"""Measuring the links and the sharing of a host: what moving K/V between ranks costs, measured with the
distributed executor's own transport and backend (gloo on CPU, NCCL on GPU).

- :func:`measure_exchange`: the per-layer joint-attention exchange *as the executor meets it*: two spawned
  ranks run ``DistributedExecutor`` on schedules whose ticks exchange different numbers of versions, and
  the time ``DistributedTransport.exchange`` spends per layer (its trace events' ``busy_s``; of the two
  ranks, the one that waited least, so a peer's slower compute is not counted) is fitted to ``latency +
  bytes / bandwidth`` against the bytes the busier port moves per layer (the plan's gang sends). This is
  the profile's ``link``.
- :func:`measure_link`: the same backend between idle ranks, over message sizes: the stacked-K/V exchange
  (``batch_isend_irecv`` both ways) and a ping-pong; per size the least of several timed bursts (other work
  only ever adds time); kept in the provenance for comparison.
- :func:`measure_contention`: how much slower a forward runs on two ranks at once than alone, per batch
  size (``Cluster.contention_by_batch``).
"""

from __future__ import annotations

import functools
import math
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from apps.calibrate.timing import median_time, sync, wait_idle
from apps.request import ModelSource
from cascade_sched.errors import ConfigError
from models.dtypes import dtype_bytes, torch_dtype

__all__ = ["DEFAULT_LINK_SIZES", "LinkFit", "fit_alpha_beta", "measure_contention", "measure_exchange",
           "measure_link"]

DEFAULT_LINK_SIZES: tuple[int, ...] = (1 << 10, 1 << 13, 1 << 16, 1 << 18, 1 << 20, 1 << 22)


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
        raise ConfigError("--no-link", "the link fit needs at least two distinct message sizes (or skip it: `--no-link`)")
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
    dtype = torch_dtype(payload["dtype"])
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
                sync(device)
                t0 = time.perf_counter()
                for _ in range(rounds):  # back to back: each round waits for the peer, so they stay paired
                    fn()
                sync(device)
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



# -- the joint-attention exchange, through the executor's own transport ---------------------------------
EXCHANGE_SPECS: tuple[dict[str, Any], ...] = (
    {"lag": 1, "attention": "causal"},
    {"lag": 1, "attention": "bidirectional"},
    {"lag": 2, "attention": "bidirectional"},
)
"""Schedules whose gangs exchange different numbers of versions per tick (two ranks, block placement)."""


def _exchange_rank(payload: dict[str, Any], rank: int, world: int) -> list[Any] | None:
    """Rank function of :func:`measure_exchange`: run the distributed executor on each schedule twice (the
    first run warms up); rank 0 returns every rank's exchange events of the second run."""
    import torch.distributed as dist

    from apps.sources import load_model
    from cascade_sched.schedule import build_schedule
    from cascade_sched.trace import COMM
    from executors.base import RunOptions
    from executors.distributed import DistributedExecutor

    if payload["threads"]:
        torch.set_num_threads(payload["threads"])
    model, _ = load_model(payload["source"])
    out = []
    with torch.inference_mode():
        for spec in payload["specs"]:
            schedule = build_schedule(spec)
            for run in range(2):
                if rank == 0 and run:
                    wait_idle(0.9, timeout_s=5.0)
                dist.barrier()
                result = DistributedExecutor().run(schedule, model, RunOptions(timeout_s=payload["timeout_s"]))
            events = [(e.args["tick"], rank, e.args["busy_s"]) for e in result.events
                      if e.track == COMM and e.name.startswith("exchange")]
            gathered: list[Any] | None = [None] * world if rank == 0 else None
            dist.gather_object(events, gathered, dst=0)
            if gathered is not None:
                out.append([ev for evs in gathered for ev in evs])
    return out if rank == 0 else None


def measure_exchange(model: str, device: str = "cpu", dtype: str = "float32", checkpoint: str | None = None,
                     blocks: int = 6, window: int | None = 3, timesteps: Sequence[float] = (1000, 750, 500, 250),
                     threads: int | None = None, timeout_s: float = 300.0) -> dict[str, Any]:
    """The per-layer exchange of ``DistributedTransport`` inside real runs of the distributed executor (see
    the module docstring): ``{"latency_s", "bandwidth_Bps", "fit", "points"}``."""
    from cascade_sched.schedule import build_schedule
    from cascade_sched.spec import CascadeSpec
    from cascade_sched.transfers import plan_transfers
    from executors.launch import spawn
    from models.config import get_config

    cfg = get_config(model)
    layer_bytes = cfg.kv_bytes_per_block_layer(dtype_bytes(dtype))
    specs = [CascadeSpec(num_blocks=blocks, timesteps=tuple(timesteps), window=window, num_devices=2, **kw)
             for kw in EXCHANGE_SPECS]
    payload = {"specs": specs, "source": ModelSource(model=model, checkpoint=checkpoint, device=device, dtype=dtype),
               "threads": threads, "timeout_s": timeout_s}
    runs = spawn(_exchange_rank, payload, 2, device, timeout_s * len(specs))
    by_bytes: dict[int, list[float]] = {}
    for spec, events in zip(specs, runs, strict=True):
        plan = plan_transfers(build_schedule(spec))
        busy: dict[int, list[float]] = {}
        for tick, _rank, seconds in events:
            busy.setdefault(tick, []).append(seconds)
        for tick, per_rank in busy.items():
            sends = plan.gang_sends(tick)
            if len(per_rank) < 2 or not sends:
                continue
            port = max(sum(1 for m in sends if m.src == d) for d in (0, 1))
            port = max(port, max(sum(1 for m in sends if m.dst == d) for d in (0, 1)))
            by_bytes.setdefault(port * layer_bytes, []).append(min(per_rank) / cfg.num_layers)
    points = sorted((b, statistics.median(v)) for b, v in by_bytes.items())
    if len(points) < 2:
        raise ConfigError("model", "the exchange runs gave fewer than two message sizes to fit")
    fit = fit_alpha_beta([b for b, _ in points], [s for _, s in points])
    return {"latency_s": fit.latency_s, "bandwidth_Bps": fit.bandwidth_Bps, "fit": fit.to_dict(),
            "schedules": [dict(kw) for kw in EXCHANGE_SPECS], "blocks": blocks, "window": window,
            "method": "DistributedTransport.exchange inside DistributedExecutor runs, per layer, the less-waiting "
                      "rank"}


# -- contention between processes ---------------------------------------------------------------------
def _contention_rank(payload: dict[str, Any], rank: int, world: int) -> list[tuple[int, float, float, float]] | None:
    """Rank function of :func:`measure_contention`: per turn and batch size, rank 0 alone, then every rank
    at once."""
    import torch.distributed as dist

    from apps.calibrate.profiling import register_prompt, synthetic_tick
    from apps.sources import load_model

    model, _ = load_model(payload["source"])
    register_prompt(model)
    ticks = {n: synthetic_tick(model, n, payload["context_blocks"]) for n in payload["batches"]}
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
                forward = functools.partial(model.forward_tick, tasks, lookup)
                alone = median_time(forward, 0, reps) if rank == 0 else 0.0
                dist.barrier()
                together = median_time(forward, 0, reps)
                out.append((n, alone, together, idle))
    return out if rank == 0 else None


def measure_contention(model: str, device: str = "cpu", dtype: str = "float32", checkpoint: str | None = None,
                       warmup: int = 2, repeats: int = 5, processes: int = 2, context_blocks: int = 4,
                       turns: int = 5, batches: Sequence[int] = (1, 3, 5)) -> dict[str, Any]:
    """How much slower a forward runs when ``processes`` ranks (spawned as the distributed executor spawns
    them, ``cores // processes`` threads each) run it at the same time than when rank 0 runs it alone,
    per batch size (larger batches touch more memory), in alternating turns; per batch the median turn.

    The share of cores explains part of a slowdown (processor sharing, :mod:`simulator.sharing`, with the
    idle share seen before the turn as background load); what it leaves is the interference of caches and
    memory bandwidth, recorded per batch (``interference_by_batch``) for ``Cluster.contention_by_batch``.
    ``slowdown`` (batch 1, the whole ratio) is the per-tick factor of ``Cluster.contention``.
    """
    from executors.launch import spawn
    from simulator.catalog import HOST_CPU
    from simulator.cluster import Cluster

    payload = {"source": ModelSource(model=model, checkpoint=checkpoint, device=device, dtype=dtype),
               "context_blocks": context_blocks, "warmup": warmup + 2, "repeats": max(5, repeats), "turns": turns,
               "batches": list(batches)}
    rows = spawn(_contention_rank, payload, processes, device, 600.0)
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
