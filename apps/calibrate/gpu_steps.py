"""The GPU kit's six steps (:mod:`apps.calibrate.gpu_kit` runs them in order under its budget). Each prints
its figures as it measures them and puts them in its :class:`~apps.calibrate.gpu_kit.StepRecord`: rows of
measured against predicted, and the rest under ``figures``. Predictions are the simulator's: the catalog's
``parts`` cost on the card's catalog GPU, and from step 2 on, the profile this run measured.

What a CPU cannot run is said in the record, never skipped in silence: a second CUDA stream (the decode
worker runs on its own thread there) and CUDA graphs (:mod:`apps.calibrate.graph_probe` says it needs a CUDA
device).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch

from apps.calibrate.gpu_kit import Cut, Kit, Skip, StepRecord, random_model, random_vae
from apps.calibrate.profiling import (
    profile_decode,
    profile_forward,
    profile_sampler,
    profile_tick,
    register_prompt,
    synthetic_tick,
)
from apps.calibrate.timing import median_time, sync
from cascade_sched.metrics import stream_metrics
from cascade_sched.schedule import Schedule, build_schedule
from cascade_sched.spec import CascadeSpec
from executors.base import RunOptions, RunResult
from models.dit import CausalWanDiT

__all__ = ["step_batching", "step_big", "step_compiled", "step_decode_overlap", "step_decoders", "step_grid"]


# -- shared pieces --------------------------------------------------------------------------------------------
def _spec(kit: Kit, lag: int | None = None, blocks: int | None = None) -> CascadeSpec:
    return CascadeSpec(num_blocks=blocks or kit.options.blocks, window=kit.options.window, lag=lag)


def _run(kit: Kit, spec: CascadeSpec, executor: Any = None, on_block: Any = None) -> tuple[Schedule, RunResult]:
    """One run of ``spec`` on the kit's model (the reference executor unless ``executor``), no decoding
    unless ``on_block``; prompts conditioned by the stand-in encoder (random weights have no text encoder)."""
    from executors.reference import ReferenceExecutor
    from models.prompts import StandInEncoder

    model = kit.model()
    schedule = build_schedule(spec)
    with torch.inference_mode():
        result = (executor or ReferenceExecutor()).run(schedule, model, RunOptions(text_encoder=StandInEncoder(
            model.config)), on_block)
    kit.sync()
    return schedule, result


def _warm_run(kit: Kit, spec: CascadeSpec, what: str, executor: Any = None) -> float:
    """A 2-block run of ``spec`` (warm-up); returns its seconds per block, and checks the budget for the whole
    run of ``what`` from it."""
    t = time.perf_counter()
    _run(kit, spec.replace(num_blocks=2), executor)
    per_block = (time.perf_counter() - t) / 2
    kit.check(per_block * spec.num_blocks * 1.2, what)
    return per_block


def _fps(schedule: Schedule, result: RunResult, shown: Sequence[float] | None = None) -> Any:
    return stream_metrics(result.block_done_s, shown, max_in_flight=schedule.max_in_flight(),
                          window=schedule.spec.window)


def _simulate(kit: Kit, spec: CascadeSpec, decode: str, cost: Any = None, model: str | None = None) -> Any:
    """The simulator's run of ``spec`` on one catalog GPU: the catalog's ``parts`` cost, or ``cost``."""
    from simulator.catalog import get_gpu, get_model
    from simulator.cluster import Cluster
    from simulator.cost import make_cost
    from simulator.engine import simulate

    g = get_model(model or kit.options.model)
    gpu = kit.gpu_name()
    return simulate(build_schedule(spec), Cluster.of(gpu, 1), cost or make_cost("parts", g, get_gpu(gpu)), g,
                    decode=decode, check_memory=False)


def _parts(kit: Kit, model: str | None = None, decoder: str = "vae") -> Any:
    from simulator.catalog import get_gpu, get_model
    from simulator.cost import make_cost

    return make_cost("parts", get_model(model or kit.options.model), get_gpu(kit.gpu_name()), decoder)


def _profile_cost(kit: Kit) -> Any:
    from simulator.catalog import get_model
    from simulator.profile import ProfileCost

    return ProfileCost(kit.profile, get_model(kit.options.model))


def _from_profile(kit: Kit, spec: CascadeSpec, decode: str, metric: str) -> tuple[float | None, str]:
    """``metric`` of the simulator's run of ``spec`` priced by this run's profile, or None and why (a profile
    cut short can lack a shape)."""
    from cascade_sched.errors import SimulationError

    try:
        return float(getattr(_simulate(kit, spec, decode, _profile_cost(kit)), metric)), ""
    except SimulationError as e:
        return None, f"; not predicted: {e}"


def _catalog_note(kit: Kit) -> str:
    return f"catalog parts cost on {kit.gpu_name()}" + (" (rehearsal: tiny geometry)" if kit.options.rehearsal else "")


# -- 1. batching ----------------------------------------------------------------------------------------------
def step_batching(kit: Kit, rec: StepRecord) -> None:
    """Sequential against lag 1 on one device, no decoding: measured denoise FPS beside the catalog's."""
    measured: dict[str, float] = {}
    for name, lag in (("sequential", None), ("lag 1", 1)):
        spec = _spec(kit, lag)
        _warm_run(kit, spec, f"the {name} run")
        schedule, result = _run(kit, spec)
        m = _fps(schedule, result)
        measured[name] = m.denoise_fps
        predicted = _simulate(kit, spec, "gpu").denoise_fps
        rec.figures[name] = {"block_done_s": result.block_done_s, "wall_s": result.wall_s, "metrics": m.to_dict(),
                             "predicted_denoise_fps": predicted}
        rec.row(f"{name} denoise FPS ({spec.num_blocks} blocks, window {spec.window}, no decoding)", m.denoise_fps,
                predicted,
                "FPS", _catalog_note(kit) + ", decoding elsewhere")
        kit.say(f"  {name}: {m.denoise_fps:.2f} denoise FPS measured, {predicted:.2f} predicted ({_catalog_note(kit)})")
    pred = [r["predicted"] for r in rec.rows]
    ratio = measured["lag 1"] / measured["sequential"]
    rec.row("lag 1 / sequential denoise FPS (the batching claim)", ratio, pred[1] / pred[0], "x",
            "5 tasks in one forward against one")
    kit.say(f"  lag 1 / sequential: {ratio:.3f} measured, {pred[1] / pred[0]:.3f} predicted")


# -- 2. the forward grid and the profile -----------------------------------------------------------------------
def step_grid(kit: Kit, rec: StepRecord) -> None:
    """The tick forward over the grid with peak memory, the sampler and the tick overhead; the profile."""
    from apps.calibrate.calibrate import provenance
    from apps.calibrate.dryrun import forward_bytes
    from simulator.profile import Profile

    o, model = kit.options, kit.model()
    reserve = 30.0 if kit.cuda else 5.0  # the sampler and the tick overhead after the grid
    points = profile_forward(model, o.batches, o.context_blocks, o.warmup, o.repeats, kit.say, quiet=False,
                             deadline=kit.deadline - reserve)
    shapes = len(set(o.batches)) * len(set(o.context_blocks))
    complete = len(points) == shapes and all(p.samples >= o.repeats for p in points)
    if not points:
        raise Cut("budget: no forward shape was measured")
    sample_s, commit_s = profile_sampler(model)
    tick = profile_tick(model, repeats=2, window=min(max(o.context_blocks), o.window))
    kit.say(f"  sampler {sample_s * 1e6:.0f} us per task; tick overhead {tick['tick_overhead_s'] * 1e3:.2f} ms")
    prov = provenance(_calibrate_options(kit))
    prov.update(kit="cascade calibrate --gpu-kit", commit_s_per_version=commit_s, tick=tick, weights="random",
                decoder="not measured (step 3 adds it)", card=kit.card, rehearsal=o.rehearsal)
    peak = max(p.peak_bytes for p in points)
    kit.profile = Profile(model=o.model, forward=tuple(points), sample_s_per_task=sample_s, provenance=prov,
                          tick_overhead_s=tick["tick_overhead_s"], peak_memory_bytes=peak, path=o.out)
    kit.profile.save(o.out)
    kit.say(f"  wrote {o.out} ({len(points)} of {shapes} shapes)")
    rec.figures.update(profile=o.out, shapes=len(points), sample_s_per_task=sample_s, tick=dict(tick),
                       forward={f"{p.batch}x{p.context_tokens // p.query_tokens}": [p.seconds, p.peak_bytes]
                                for p in points})
    tpb = model.config.tokens_per_block
    parts = _parts(kit)
    by = {(p.batch, p.context_tokens // tpb): p for p in points}
    c = o.window if any(k[1] == o.window for k in by) else max(k[1] for k in by)
    for n in sorted({1, max(o.batches)}):
        if (n, c) in by:
            rec.row(f"tick forward, batch {n}, context {c} blocks", by[(n, c)].seconds * 1e3,
                    parts.forward_s(tpb, (c * tpb,) * n) * 1e3, "ms", _catalog_note(kit))
    n = max(o.batches)
    if (1, c) in by and (n, c) in by:
        rec.row(f"batch {n} forward / {n} batch-1 forwards, context {c}", by[(n, c)].seconds / (n * by[(1, c)].seconds),
                parts.forward_s(tpb, (c * tpb,) * n) / (n * parts.forward_s(tpb, (c * tpb,))), "x",
                "below 1: batching saves time")
    big = max(by)
    if kit.cuda:
        need = forward_bytes(o.model, o.dtype, *big)
        rec.row(f"peak memory, batch {big[0]}, context {big[1]}", by[big].peak_bytes / 1e9, need / 1e9, "GB",
                "predicted: the same forward dry-run on the meta device (apps.calibrate.dryrun)")
    else:
        rec.figures["peak_memory"] = "not measured on a CPU (no CUDA allocator)"
    for name, lag in (("sequential", None), ("lag 1", 1)):
        got = kit.figures(1).get(name, {}).get("metrics", {}).get("denoise_fps")
        pred, why = _from_profile(kit, _spec(kit, lag), "gpu", "denoise_fps")
        rec.row(f"{name} denoise FPS, predicted from this profile", got, pred, "FPS", "measured: step 1" + why)
    if not complete:
        raise Cut(f"budget: {len(points)} of {shapes} shapes, fewer than {o.repeats} repeats for some; the profile "
                  "holds what was measured")


def _calibrate_options(kit: Kit) -> Any:
    from apps.calibrate.calibrate import CalibrateOptions

    o = kit.options
    return CalibrateOptions(model=o.model, device=o.device, dtype=o.dtype, threads=None, batches=o.batches,
                            context_blocks=o.context_blocks, warmup=o.warmup, repeats=o.repeats, link=False)


# -- 3. decoders ----------------------------------------------------------------------------------------------
def step_decoders(kit: Kit, rec: StepRecord) -> None:
    """The Wan VAE per block (first, later; streaming), then TAEHV; the profile gets the decoder's figures
    (the Wan VAE's; TAEHV's where diffusers is missing)."""
    import dataclasses

    o, model = kit.options, kit.model()
    repeats = max(1, o.repeats)
    decoded: tuple[str, float, float] | None = None
    if o.vae:
        first, later = _wan_vae(kit, rec, model, repeats)
        decoded = ("wan-vae (diffusers AutoencoderKLWan, the Wan2.1 configuration, random weights)", first, later)
    else:
        rec.why = "--no-vae (diffusers does not import): the Wan VAE is not measured"
    t = _taehv(kit, model)
    t_first, t_later = profile_decode(model, t, warmup=1, repeats=repeats)
    x6 = torch.randn(model.config.in_channels, 6, *model.config.latent_shape()[2:])

    def redecode() -> None:  # the official Self-Forcing demo's TAEHV use: each block re-decodes 6 latent frames
        t.reset()
        t.decode_block(x6)

    six = median_time(redecode, 1, repeats, kit.device)
    tnote = f"TAEHV ({str(t.dtype).removeprefix('torch.')}), random weights"
    rec.row("TAEHV decode, later block (12 frames), streaming", t_later * 1e3,
            _decode_ms(_parts(kit, decoder="taehv"), 1, 12), "ms", tnote)
    rec.row("TAEHV re-decode of 6 latent frames (the official demo's way)", six * 1e3, None, "ms",
            tnote + "; FlashDreams' official Self-Forcing row: 30 ms on an H100 (taew2_1, fp16, frame by frame)")
    kit.say(f"  TAEHV: later block {t_later * 1e3:.2f} ms, 6-frame re-decode {six * 1e3:.2f} ms")
    rec.figures["taehv"] = {"first_s": t_first, "later_s": t_later, "redecode6_s": six, "width": list(o.taehv_width)}
    decoded = decoded or (f"taehv (random weights, width {list(o.taehv_width)})", t_first, t_later)
    if kit.profile is not None:
        prov = dict(kit.profile.provenance)
        prov["decoder"] = decoded[0]
        kit.profile = dataclasses.replace(kit.profile, decode_first_block_s=decoded[1], decode_s_per_block=decoded[2],
                                          provenance=prov)
        kit.profile.save(o.out)
        kit.say(f"  {o.out}: decode figures added ({decoded[0].split(' ')[0]})")


def _wan_vae(kit: Kit, rec: StepRecord, model: CausalWanDiT, repeats: int) -> tuple[float, float]:
    """The Wan VAE's rows: first and later block, and its memory on a GPU; returns (first, later) seconds."""
    o = kit.options
    if kit.cuda:
        torch.cuda.reset_peak_memory_stats(kit.device)
    before = torch.cuda.memory_allocated(kit.device) if kit.cuda else 0
    vae = random_vae(o.device, o.dtype, o.vae_config)
    first, later = profile_decode(model, vae, warmup=1, repeats=repeats)
    vae_bytes = (torch.cuda.max_memory_allocated(kit.device) - before) if kit.cuda else 0
    del vae
    kit.free()
    parts = _parts(kit)
    note = f"{o.dtype}, streaming (models.decode.WanVAEDecoder), random weights"
    rec.row("Wan VAE decode, first block (9 frames)", first * 1e3, _decode_ms(parts, 0, 9), "ms", note)
    rec.row("Wan VAE decode, later block (12 frames)", later * 1e3, _decode_ms(parts, 1, 12), "ms", note)
    kit.say(f"  Wan VAE: first block {first * 1e3:.1f} ms, later {later * 1e3:.1f} ms (catalog "
            f"{_decode_ms(parts, 1, 12) or 0:.1f} ms)")
    dec = parts.decoder
    if kit.cuda and dec is not None:
        rec.row("Wan VAE memory while decoding (weights + streaming cache + work)", vae_bytes / 1e9,
                (dec.weight_bytes + dec.cache_bytes) / 1e9, "GB", "catalog: weights + streaming cache")
    else:
        rec.figures["vae_memory"] = "not measured on a CPU (no CUDA allocator)"
    rec.figures["wan_vae"] = {"first_s": first, "later_s": later, "config": o.vae_config, "bytes": vae_bytes}
    return first, later


def _taehv(kit: Kit, model: CausalWanDiT) -> Any:
    """TAEHV (taew2_1's decoder) with random weights: fp16 on a GPU, as the official demo runs it."""
    from models.taehv import TAEHVDecoder

    return TAEHVDecoder(width=kit.options.taehv_width, device=kit.options.device,
                        dtype=torch.float16 if kit.cuda else model.dtype)


def _decode_ms(cost: Any, block: int, frames: int) -> float | None:
    """The catalog's price of decoding a block, ms (None: the catalog prices no decoder for this model)."""
    return cost.decode_s(block, frames) * 1e3 if cost.decoder is not None else None


# -- 4. decoding on a second stream, and inline ----------------------------------------------------------------
def step_decode_overlap(kit: Kit, rec: StepRecord) -> None:
    """The sequential run decoding every block with the Wan VAE: inline, then on the decode worker (its own
    CUDA stream; a thread on a CPU). Delivered FPS against the simulator's inline and stream placements."""
    o = kit.options
    vae = random_vae(o.device, o.dtype, o.vae_config) if o.vae else _taehv(kit, kit.model())
    if not o.vae:
        rec.why = "--no-vae (diffusers does not import): decoding with TAEHV instead of the Wan VAE"
    spec = _spec(kit)
    latent = torch.randn(kit.model().config.latent_shape())
    with torch.inference_mode():
        for _ in range(3):  # the decoder's first calls (kernel selection; the first chunk, then the cache filling)
            vae.decode_block(latent)
    per_block = _warm_run(kit, spec, "the decoding runs")
    kit.check(per_block * spec.num_blocks * 2.5, "two runs with decoding")
    worker_note = "its own CUDA stream" if kit.cuda else "a thread (no CUDA stream on a CPU)"
    for name, decode in (("inline", "inline"), ("second stream", "stream")):
        schedule, result, shown = _decoding_run(kit, spec, vae, decode == "stream")
        m = _fps(schedule, result, shown)
        pred = [_simulate(kit, spec, decode).delivered_fps]
        if kit.profile is not None and kit.profile.decode_s_per_block:
            pred.append(_from_profile(kit, spec, decode, "delivered_fps")[0])
        rec.figures[name] = {"metrics": m.to_dict(), "shown_s": shown, "predicted_delivered_fps": pred}
        rec.row(f"delivered FPS, sequential, decoding {name}", m.delivered_fps, pred[0], "FPS",
                _catalog_note(kit) + (f"; {worker_note}" if decode == "stream" else ""))
        if len(pred) > 1:
            rec.row(f"delivered FPS, sequential, decoding {name} (from this run's profile)", m.delivered_fps, pred[1], "FPS",
                    "the profile of steps 2 and 3")
        kit.say(f"  decoding {name}: {m.delivered_fps:.2f} FPS delivered, {pred[0]:.2f} predicted")
    if not kit.cuda:
        rec.why = "; ".join(filter(None, (rec.why, "a CPU has no CUDA stream: the second-stream run decoded on the "
                                                   "worker's thread")))


def _decoding_run(kit: Kit, spec: CascadeSpec, decoder: Any, worker: bool) -> tuple[Schedule, RunResult, list[float]]:
    """One run of ``spec`` decoding every block: inline (in the tick loop) or on the decode worker
    (``apps.generate.decode_thread``: its own thread and, on a GPU, its own CUDA stream). Returns the
    schedule, the run and when each block was decoded, on the run's clock."""
    from apps.generate.decode_thread import DecodeWorker

    decoder.reset()
    handed: dict[int, float] = {}
    ends: dict[int, float] = {}
    on = DecodeWorker(decoder, None, kit.options.device) if worker else None

    def on_block(b: int, x: torch.Tensor) -> None:
        handed[b] = time.perf_counter()
        if on is not None:
            on.submit(b, x)
        else:
            decoder.decode_block(x)  # ends in a host copy: synchronous
            ends[b] = time.perf_counter()

    try:
        schedule, result = _run(kit, spec, on_block=on_block)
    finally:
        if on is not None:
            on.close()
    if on is not None:
        ends = {b: end for b, (_, end) in on.decoded.items()}
    offset = statistics.median(result.block_done_s[b] - handed[b] for b in handed)  # perf_counter -> the run's
    return schedule, result, [ends[b] + offset for b in range(len(result.block_done_s))]


# -- 5. the compiled executor, and CUDA graphs ----------------------------------------------------------------
def step_compiled(kit: Kit, rec: StepRecord) -> None:
    """The compiled executor (Inductor, torch.compile's default mode) against eager on the sequential schedule;
    then the CUDA-graph probe in a process of its own."""
    from executors.compiled import CompiledExecutor

    model, spec = kit.model(), _spec(kit)
    ex = CompiledExecutor("inductor")
    t = time.perf_counter()
    with torch.inference_mode():  # as the runs: the graphs are guarded on it (a change would recompile)
        ex.prepare(build_schedule(spec), model)
    compile_s = time.perf_counter() - t
    kit.say(f"  compiled {len(ex.compile_s)} buckets in {compile_s:.1f} s")
    _warm_run(kit, spec, "the eager and compiled runs", ex)
    runs: dict[str, tuple[Schedule, RunResult]] = {}
    for name, executor in (("eager", None), ("compiled", ex)):
        kit.check(2.0, f"the {name} run")
        runs[name] = _run(kit, spec, executor)
    fps = {k: _fps(*v).denoise_fps for k, v in runs.items()}
    a, b = runs["eager"][1].latents, runs["compiled"][1].latents
    diff = max(float((x.float() - y.float()).abs().max() / x.float().abs().max().clamp_min(1e-30))
               for x, y in zip(a, b, strict=True))
    mode = "Inductor, torch.compile default mode (no CUDA graphs, no max-autotune), per piece and bucket"
    rec.row("eager denoise FPS (sequential, no decoding)", fps["eager"], None, "FPS", "reference executor")
    rec.row("compiled denoise FPS", fps["compiled"], None, "FPS", mode)
    rec.row("compiled / eager denoise FPS", fps["compiled"] / fps["eager"], None, "x", "the speed-up")
    rec.row("largest latent difference (max abs difference / max abs, per block)", diff, None, "relative",
            f"{kit.options.dtype}; same schedule and seed")
    rec.figures.update(compile_s=compile_s, buckets=len(ex.compile_s), mode=mode,
                       forward_s={k: v[1].forward_s for k, v in runs.items()})
    kit.say(f"  eager {fps['eager']:.2f} FPS, compiled {fps['compiled']:.2f} FPS (x{fps['compiled'] / fps['eager']:.3f}); "
            f"largest latent difference {diff:.2e}")
    from apps.calibrate.graph_probe import cuda_graph_probe

    probe = cuda_graph_probe(kit)
    rec.figures["cuda_graphs"] = probe
    if probe.get("captured"):
        rec.row("tick forward in a CUDA graph / eager", probe["graph_s"] / probe["eager_s"], None, "x", probe["what"])
    else:
        rec.why = f"CUDA graphs: {probe.get('why', 'not captured')}"
    kit.say(f"  CUDA graphs: {'captured' if probe.get('captured') else probe.get('why')}")


# -- 6. the 14B model -----------------------------------------------------------------------------------------
def _free_bytes(kit: Kit) -> int:
    if kit.cuda:
        return int(torch.cuda.mem_get_info(kit.device)[0])
    with open("/proc/meminfo", encoding="ascii") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


def step_big(kit: Kit, rec: StepRecord) -> None:
    """One forward of the 14B model at batch 1 and 5 with context 7 blocks, where it fits (the need is the
    same forward dry-run on the meta device, against the device's free memory)."""
    from apps.calibrate.dryrun import forward_bytes

    o = kit.options
    kit.release_model()
    free = _free_bytes(kit)
    need = {n: forward_bytes(o.big_model, o.dtype, n, o.big_context) for n in (1, 5)}
    fits = [n for n in (1, 5) if need[n] <= 0.92 * free]
    rec.figures.update(free_bytes=free, need_bytes=need)
    for n in (1, 5):
        kit.say(f"  batch {n}: needs {need[n] / 1e9:.1f} GB (dry run), {free / 1e9:.1f} GB free"
                + ("" if n in fits else ": does not fit"))
    if not fits:
        raise Skip(f"{o.big_model} at batch 1 needs {need[1] / 1e9:.1f} GB, {free / 1e9:.1f} GB free here")
    model = random_model(o.big_model, o.device, o.dtype)
    parts, tpb = _parts(kit, o.big_model), model.config.tokens_per_block
    try:
        for n in fits:
            kit.check(5.0, f"the batch-{n} forward")
            seconds, peak = _one_forward(kit, model, n, o.big_context)
            rec.row(f"{o.big_model} forward, batch {n}, context {o.big_context} blocks", seconds * 1e3,
                    parts.forward_s(tpb, (o.big_context * tpb,) * n) * 1e3, "ms", _catalog_note(kit))
            if kit.cuda:
                rec.row(f"{o.big_model} peak memory, batch {n}", peak / 1e9, need[n] / 1e9, "GB",
                        "predicted: the same forward dry-run on the meta device")
            kit.say(f"  batch {n}: {seconds * 1e3:.1f} ms" + (f", peak {peak / 1e9:.2f} GB" if kit.cuda else ""))
    finally:
        del model
        kit.free()
    if len(fits) < 2:
        raise Cut(f"batch 5 needs {need[5] / 1e9:.1f} GB, {free / 1e9:.1f} GB free: measured batch 1 only")
    if not kit.cuda:
        rec.why = "peak memory not measured on a CPU (no CUDA allocator)"


def _one_forward(kit: Kit, model: CausalWanDiT, batch: int, context: int) -> tuple[float, int]:
    register_prompt(model)
    with torch.inference_mode():
        tasks, lookup = synthetic_tick(model, batch, context)
        if kit.cuda:
            torch.cuda.reset_peak_memory_stats(kit.device)
        seconds = median_time(lambda: model.forward_tick(tasks, lookup), 1, max(1, kit.options.repeats), kit.device)
        sync(kit.device)
        peak = torch.cuda.max_memory_allocated(kit.device) if kit.cuda else 0
    return seconds, peak
