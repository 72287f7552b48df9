"""The SimPy model of time: ``simulate(schedule, cluster, cost, model) -> SimResult``.

One fresh ``simpy.Environment`` per run, one process per device plus one for the decoder, and SimPy
events as the calendar; every cost is computed once in plain Python before the run (see
:mod:`simulator.workload` for what moves where). The rules:

1. A device runs its batches (its tasks of one tick) in tick order, one at a time.
2. A batch starts when the device is free, every batch it depends on has finished, and every transfer it
   waits for has arrived.
3. Joint attention (``causal``/``bidirectional``) with peers on other devices: the tick's gang starts when
   its last member is ready and every member ends together, after the slowest member's forward plus the
   per-layer K/V exchange (``bytes / bandwidth`` per port, in and out, plus one latency per layer). With
   ``overlap`` the exchange hides behind compute: ``max(compute, exchange) + exchange / layers``.
4. The sampler steps follow the forward on the same device.
5. Asynchronous transfers (committed KV to its readers, ``stale`` last-tick KV, latents between devices
   and to the decoder) leave the sender's port one after another in the sender's batch order. KV
   streams layer by layer while the producer computes (it cannot finish before the producer's last
   layer plus one layer's worth of bytes); a latent leaves after the sampler step. Arrival adds the
   link's latency once.
6. The decoder takes blocks in order as their clean latent arrives; on a denoising device it holds that
   device between batches (it goes first when both are ready), and that device receives a clean latent
   at the end of the tick that made it, as the executors' tick loop does: its first batch after that
   tick waits for the latent's arrival.
7. A straggler's forward, sampler and decode times are multiplied by its factor; a degraded port divides
   the bandwidth of every transfer touching it. With ``cluster.contention`` > 1 (devices sharing one
   host, e.g. CPU ranks), a batch's forward and sampler times are multiplied by it when another device
   has a batch in the same tick.
8. With ``cluster.host_cores`` set, compute is processor-shared instead (:mod:`simulator.sharing`): a
   forward, a sampler step or a decode is work that advances at the speed the host gives the devices
   computing at that instant. A gang's members then compute at their own pace; the gang ends when the
   last member's forward is done plus the exchange that compute did not hide.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Generator
from typing import Any

from cascade_sched.errors import ConfigError, SimulationError
from cascade_sched.metrics import stream_metrics, switch_stalls
from cascade_sched.schedule import KVRef, Schedule, gc_paused
from simulator.catalog import Cluster, ModelGeometry, get_model
from simulator.cost import CostModel
from simulator.memory import memory_report
from simulator.result import SimResult, Timeline
from simulator.sharing import SharedHost
from simulator.workload import KV, Workload, build_workload

Proc = Generator[Any, Any, None]


def _decode_index(decode: str | int, n_dev: int) -> int | None:
    if decode == "own":
        return None
    if isinstance(decode, str):
        text = decode.removeprefix("d")
        if not text.isdigit():
            raise ConfigError("decode", f"`decode` must be 'own' or a device index, got {decode!r}")
        decode = int(text)
    if not 0 <= decode < n_dev:
        raise ConfigError("decode", f"`decode` device must be between 0 and {n_dev - 1}, got {decode}")
    return decode


def simulate(
    schedule: Schedule,
    cluster: Cluster,
    cost: CostModel,
    model: ModelGeometry | str | None = None,
    *,
    decode: str | int = "own",
    overlap: bool = False,
    check_memory: bool = True,
    video_frames: int | None = None,
    first_block_frames: int | None = None,
    dtype_bytes: int = 2,
) -> SimResult:
    """Simulate ``schedule`` on ``cluster`` with ``cost``; see the module docstring for the rules and
    :mod:`simulator.result` for the metrics.

    ``model`` is a geometry or its name (default: the cost model's own geometry when it has one).
    ``decode`` is ``"own"`` (a decoder GPU of its own, index ``num_devices``) or a denoising device.
    ``check_memory`` raises ``SimulationError`` naming the device, needed and available bytes when the
    plan does not fit; with False the run goes on and ``result.fits`` says so.
    ``video_frames`` (default 4 x frames per block = 12) and ``first_block_frames`` (default 9) are the
    video frames a decoded block yields.

    >>> from cascade_sched import CascadeSpec, build_schedule
    >>> from simulator.catalog import Cluster
    >>> from simulator.cost import UniformCost
    >>> s = build_schedule(CascadeSpec(num_blocks=6, lag=1, num_devices=5))
    >>> r = simulate(s, Cluster.of("h100-sxm", 5, interconnect="ideal"), UniformCost(0.1), "tiny")
    >>> round(r.makespan_s, 6), round(r.paper_fps, 6)  # (start(B-1) + S) x t; 12 frames per tick
    (1.0, 120.0)
    """
    geometry = _geometry(model, cost)
    spec = schedule.spec
    n_dev = spec.num_devices
    if cluster.num_gpus != n_dev:
        raise ConfigError("num_devices", f"the schedule has {n_dev} devices but the cluster {cluster.num_gpus} GPUs")
    dec = _decode_index(decode, n_dev)
    with gc_paused():  # many small acyclic tuples: the cyclic collector would only slow the run down
        workload = build_workload(schedule, geometry, dec, dtype_bytes)
        report = memory_report(workload, cluster, overlap, dtype_bytes)
        if check_memory and not report.fits:
            raise report.error(cluster.gpu.name)
        check = getattr(cost, "check_shapes", None)
        if check is not None:
            check(geometry.tokens_per_block, {len(b.contexts) for b in workload.batches if b.contexts})
        timeline, busy, comm, executed = _run(workload, cluster, cost, overlap)
    F = spec.frames_per_block
    frames = video_frames if video_frames is not None else 4 * F
    first_frames = first_block_frames if first_block_frames is not None else 4 * (F - 1) + 1
    return _result(workload, cluster, cost, timeline, busy, comm, executed, report, dec, overlap,
                   frames, first_frames)


def _geometry(model: ModelGeometry | str | None, cost: CostModel) -> ModelGeometry:
    if isinstance(model, ModelGeometry):
        return model
    if isinstance(model, str):
        return get_model(model)
    g = getattr(cost, "geometry", None)
    if isinstance(g, ModelGeometry):
        return g
    raise ConfigError("model", "`model` is needed with this cost model (a name such as wan2.1-1.3b)")


def _run(
    w: Workload, cluster: Cluster, cost: CostModel, overlap: bool
) -> tuple[Timeline, list[float], list[float], list[KVRef]]:
    import simpy

    sched = w.schedule
    n_dev = sched.num_devices
    batches = w.batches
    nb = len(batches)
    q = w.geometry.tokens_per_block
    layers = w.geometry.num_layers
    slow = [cluster.slowdown(d) for d in range(n_dev)] + [1.0]
    sharing = cluster.host_cores is not None  # rule 8: processor sharing replaces the per-tick factor
    shared = 1.0 if sharing else cluster.contention

    # 1. Costs, once per distinct shape.
    fwd_cache: dict[tuple[int, ...], float] = {}
    smp_cache: dict[int, float] = {}
    dur = [0.0] * nb
    smp = [0.0] * nb
    for i, b in enumerate(batches):
        key = b.contexts if len(b.contexts) == 1 else tuple(sorted(b.contexts))
        f = fwd_cache.get(key)
        if f is None:  # a recache task with nothing to re-encode, alone on its device, costs nothing
            f = fwd_cache[key] = cost.forward_s(q, key) if key else 0.0
        s = smp_cache.get(b.n_denoise)
        if s is None:
            s = smp_cache[b.n_denoise] = cost.sample_s(b.n_denoise) if b.n_denoise else 0.0
        factor = slow[b.device]
        if shared > 1.0 and len(w.tick_batches[b.tick]) > 1:  # another device computes this tick too
            factor *= shared
        dur[i] = f * factor
        smp[i] = s * factor

    # Bandwidth and latency between every pair of devices (the decoder's included).
    pair_bw = [[cluster.bandwidth(a, b) for b in range(n_dev + 1)] for a in range(n_dev + 1)]
    pair_lat = [[cluster.link(a, b).latency_s for b in range(n_dev + 1)] for a in range(n_dev + 1)]

    # 2. Gangs: per tick, whether members synchronise, the exchange time and the gang's forward length.
    n_ticks = sched.num_ticks
    joint = [False] * n_ticks
    gang_len = [0.0] * n_ticks
    gang_comm = [0.0] * n_ticks
    exposed = [0.0] * n_ticks
    joint_mode = sched.spec.attention != "stale"
    for n in range(n_ticks):
        ex = w.exchanges[n]
        if not ex or not joint_mode:
            continue
        t_in = [0.0] * n_dev
        t_out = [0.0] * n_dev
        lat = 0.0
        for src, dst, nbytes in ex:
            bw = pair_bw[src][dst]
            t = nbytes / bw if bw != math.inf else 0.0
            t_in[dst] += t
            t_out[src] += t
            if pair_lat[src][dst] > lat:
                lat = pair_lat[src][dst]
        c = max(max(t_in), max(t_out)) + layers * lat
        compute = max(dur[i] for i in w.tick_batches[n])
        joint[n] = True
        gang_comm[n] = c
        gang_len[n] = max(compute, c) + c / layers if overlap else compute + c
        exposed[n] = gang_len[n] - compute

    # 3. Transfers: seconds on the wire and latency per transfer, fixed before the run.
    tr_time = []
    tr_lat = []
    for tr in w.transfers:
        bw = pair_bw[tr.src][tr.dst]
        tr_time.append(tr.nbytes / bw if bw != math.inf else 0.0)
        tr_lat.append(pair_lat[tr.src][tr.dst])

    env = simpy.Environment()
    host = SharedHost(env, cluster) if sharing else None
    gang_left = [len(w.tick_batches[n]) for n in range(n_ticks)]  # rule 8: members still computing
    gang_done: dict[int, Any] = {}
    end = [-1.0] * nb
    start = [0.0] * nb
    fwd_end = [0.0] * nb
    waiters: dict[int, Any] = {}
    gang_wait = [len(w.tick_batches[n]) for n in range(n_ticks)]
    gang_ev: dict[int, Any] = {}
    gang_span: dict[int, tuple[float, float]] = {}
    arrival = [0.0] * len(w.transfers)
    tr_span = [(0.0, 0.0)] * len(w.transfers)
    egress = [0.0] * (n_dev + 1)
    busy = [0.0] * (n_dev + 1)
    comm = [0.0] * (n_dev + 1)
    executed: list[KVRef] = []
    dec = w.decode_device
    lock = simpy.PriorityResource(env, capacity=1) if dec < n_dev else None
    transfers = w.transfers

    # A clean latent bound for a denoising decode device is received there at the end of the tick that
    # made it (the executors' tick loop waits for a tick's latents before its next tick, rule 6): the
    # decode device's first batch after that tick waits for the producer and the latent's arrival.
    late_deps: dict[int, list[int]] = {}
    late_inputs: dict[int, list[int]] = {}
    if dec < n_dev:
        own = w.device_batches[dec]
        own_ticks = [batches[bi].tick for bi in own]
        for ti in w.decode_inputs:
            if ti < 0:
                continue
            pb = transfers[ti].producer
            j = bisect.bisect_right(own_ticks, batches[pb].tick)
            if j < len(own):
                late_deps.setdefault(own[j], []).append(pb)
                late_inputs.setdefault(own[j], []).append(ti)

    def device(d: int) -> Proc:
        for bi in w.device_batches[d]:
            b = batches[bi]
            deps = (*b.deps, *late_deps[bi]) if bi in late_deps else b.deps
            for p in deps:
                if end[p] < 0:
                    ev = waiters.get(p)
                    if ev is None:
                        ev = waiters[p] = env.event()
                    yield ev
            now = env.now
            ready = now
            for ti in (*b.inputs, *late_inputs[bi]) if bi in late_inputs else b.inputs:
                if arrival[ti] > ready:
                    ready = arrival[ti]
            if ready > now:
                yield env.timeout(ready - now)
            req = None
            if lock is not None and d == dec:
                # Let a decode made ready by the batch that just ended ask for the device first (rule 6):
                # its request is queued behind this instant's earlier events, so step aside once.
                yield env.timeout(0)
                req = lock.request(priority=1)
                yield req
            n = b.tick
            if joint[n]:
                gang_wait[n] -= 1
                if gang_wait[n] == 0:
                    ev = gang_ev.pop(n, None)
                    if ev is not None:
                        ev.succeed()
                else:
                    ev = gang_ev.get(n)
                    if ev is None:
                        ev = gang_ev[n] = env.event()
                    yield ev
                t0 = env.now
                if host is None:
                    f_end = t0 + gang_len[n]
                    if n not in gang_span:
                        gang_span[n] = (t0 + gang_len[n] - exposed[n], exposed[n])
                    comm[d] += exposed[n]
            else:
                t0 = env.now
                f_end = t0 + dur[bi]
            start[bi] = t0
            if host is None:
                fwd_end[bi] = t0 + dur[bi]
                t_end = f_end + smp[bi]
                busy[d] += dur[bi] + smp[bi]
                yield env.timeout(t_end - t0)
            else:  # rule 8: processor-shared compute
                yield host.run(dur[bi], len(b.contexts))
                fwd_end[bi] = env.now
                busy[d] += env.now - t0
                if joint[n]:
                    gang_left[n] -= 1
                    if gang_left[n]:
                        ev = gang_done.get(n)
                        if ev is None:
                            ev = gang_done[n] = env.event()
                        yield ev
                    else:
                        compute = env.now - t0
                        c = gang_comm[n]
                        extra = max(compute, c) + c / layers - compute if overlap else c
                        gang_span[n] = (env.now, extra)
                        ev = gang_done.pop(n, None)
                        if ev is not None:
                            ev.succeed()
                    extra = gang_span[n][1]
                    comm[d] += extra
                    yield env.timeout(extra)
                t1 = env.now
                yield host.run(smp[bi], len(b.contexts))
                t_end = env.now
                busy[d] += t_end - t1
            for ti in b.sends:
                tr = transfers[ti]
                if tr.kind == KV:  # streamed layer by layer as the producer computes
                    s0 = max(t0, egress[d])
                    done = max(s0 + tr_time[ti], fwd_end[bi] + tr_time[ti] / layers)
                else:
                    s0 = max(t_end, egress[d])
                    done = s0 + tr_time[ti]
                egress[d] = done
                arrival[ti] = done + tr_lat[ti]
                tr_span[ti] = (s0, done - s0)
            executed.extend(b.refs)
            end[bi] = t_end
            ev = waiters.pop(bi, None)
            if ev is not None:
                ev.succeed()
            if req is not None and lock is not None:
                lock.release(req)

    K = sched.spec.num_denoise
    decode_span = [(0.0, 0.0)] * sched.num_blocks
    F = sched.spec.frames_per_block
    dec_slow = slow[dec] if dec < n_dev else 1.0

    def decoder() -> Proc:
        for blk in range(sched.num_blocks):
            pb = w.batch_of(blk, K - 1)
            if end[pb] < 0:
                ev = waiters.get(pb)
                if ev is None:
                    ev = waiters[pb] = env.event()
                yield ev
            ti = w.decode_inputs[blk]
            ready = arrival[ti] if ti >= 0 else end[pb]
            if ready > env.now:
                yield env.timeout(ready - env.now)
            req = None
            if lock is not None:
                req = lock.request(priority=0)
                yield req
            frames = 4 * (F - 1) + 1 if blk == 0 else 4 * F
            t = cost.decode_s(blk, frames) * dec_slow
            t0 = env.now
            if host is not None and dec < n_dev:  # rule 8: decoding on a host device shares its cores
                yield host.run(t)
                t = env.now - t0
            else:
                yield env.timeout(t)
            busy[dec] += t
            decode_span[blk] = (t0, t)
            if req is not None and lock is not None:
                lock.release(req)

    for d in range(n_dev):
        env.process(device(d))
    env.process(decoder())
    env.run()
    if len(executed) != len(sched.tasks):
        raise SimulationError(f"simulation stalled after {len(executed)} of {len(sched.tasks)} tasks")
    timeline = Timeline(w, start, fwd_end, end, {n: gang_span[n] for n in sorted(gang_span)}, tr_span, decode_span)
    return timeline, busy, comm, executed


def _result(
    w: Workload,
    cluster: Cluster,
    cost: CostModel,
    tl: Timeline,
    busy: list[float],
    comm: list[float],
    executed: list[KVRef],
    report: Any,
    dec: int | None,
    overlap: bool,
    frames: int,
    first_frames: int,
) -> SimResult:
    sched = w.schedule
    B, S, K = sched.num_blocks, sched.num_stages, sched.spec.num_denoise
    bo = w.batch_of
    started = tuple(tl.batch_start[bo(b, 0)] for b in range(B))
    denoised = tuple(tl.batch_end[bo(b, K - 1)] for b in range(B))
    committed = tuple(tl.batch_end[bo(b, S - 1)] for b in range(B))
    decoded = tuple(s + d for s, d in tl.decode_span)
    makespan = max(max(tl.batch_end), max(decoded))
    m = stream_metrics(denoised, decoded, max_in_flight=sched.max_in_flight(), window=sched.spec.window,
                       frames=frames, first_frames=first_frames, makespan_s=makespan)
    stalls = switch_stalls(denoised, decoded, [at for at, _ in sched.spec.switches],
                           max_in_flight=sched.max_in_flight(), window=sched.spec.window)
    n_dev = sched.num_devices
    by_link: dict[str, int] = {}
    by_kind: dict[str, int] = {"kv": 0, "exchange": 0, "latent": 0}
    for tr in w.transfers:
        key = f"d{tr.src}->d{tr.dst}"
        by_link[key] = by_link.get(key, 0) + tr.nbytes
        by_kind[tr.kind] += tr.nbytes
    for ex in w.exchanges:
        for src, dst, nbytes in ex:
            key = f"d{src}->d{dst}"
            by_link[key] = by_link.get(key, 0) + nbytes
            by_kind["exchange"] += nbytes
    n_rows = n_dev + (1 if dec is None else 0)
    return SimResult(
        model=w.geometry.name,
        cluster=cluster.describe(),
        cost=cost.name,
        cost_source=cost.source,
        spec=sched.spec.to_dict(),
        decode_device=f"own GPU (d{n_dev})" if dec is None else f"d{dec} (shared)",
        overlap=overlap,
        fits=report.fits,
        makespan_s=m.makespan_s,
        fps=m.fps,
        paper_fps=m.paper_fps,
        first_frame_s=m.first_frame_s,
        interval_p50_s=m.interval_p50_s,
        interval_p95_s=m.interval_p95_s,
        interval_p99_s=m.interval_p99_s,
        steady_blocks=m.steady_blocks,
        switch_stalls=tuple(stalls),
        block_started_s=started,
        block_denoised_s=denoised,
        block_committed_s=committed,
        block_decoded_s=decoded,
        device_busy_s=tuple(busy[:n_rows]),
        device_comm_s=tuple(comm[:n_rows]),
        bytes_by_link=dict(sorted(by_link.items())),
        bytes_by_kind=by_kind,
        peak_memory_bytes=tuple(d.peak_bytes for d in report.devices),
        memory_capacity_bytes=report.capacity_bytes,
        num_tasks=len(sched.tasks),
        executed=tuple(executed),
        memory=report,
        timeline=tl,
    )
