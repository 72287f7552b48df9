"""The GPU calibration kit (``cascade calibrate --gpu-kit``, wrapped by ``benchmarks/gpu_check.sh``): one
command that, on one GPU with torch + CUDA and no network, in a few minutes:

1. measures the tick forward of the real 480x832 geometry with random bf16 weights against batch (1-5
   tasks) and context (1-11 blocks), with each shape's peak memory (:func:`apps.calibrate.profiling.profile_forward`);
2. measures the sampler step and the tick loop's own overhead (the reference executor);
3. measures the Wan VAE decode per block with diffusers' ``AutoencoderKLWan`` and random weights, first block
   and later blocks (streaming, as ``models.decode.WanVAEDecoder`` decodes);
4. writes a ``cascade-profile/2`` file the simulator reads (``--cost profile:PATH``);
5. runs the sequential schedule for real (the reference executor, no decoding: the paper's FPS) and prints
   the measured FPS beside the simulator's predictions from the new profile and from the catalog's
   ``parts`` model, and the measured decode and memory beside the catalog's.

Weights are random (no download): timing does not depend on their values. The model is built directly on
the GPU in bf16 (no CPU initialisation of billions of parameters). Every step prints as it goes, so a run
cut short still says what it measured; the report is also written as JSON next to the profile.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from apps.calibrate.calibrate import CalibrateOptions, device_name, provenance
from apps.calibrate.profiling import profile_decode, profile_forward, profile_sampler, profile_tick
from cascade_sched.errors import ConfigError
from models.config import get_config
from models.dit import CausalWanDiT
from models.dtypes import torch_dtype
from simulator.profile import Profile

__all__ = ["KitOptions", "catalog_gpu", "random_model", "random_vae", "run_kit"]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class KitOptions(CalibrateOptions):
    """What the kit measures: a calibration's forward grid on a GPU (the defaults: 1.3B at 480x832, bf16,
    batch 1-5, context 1-11), and the Wan VAE and the sequential schedule besides."""

    model: str = "wan2.1-1.3b"
    device: str = "cuda"
    dtype: str = "bfloat16"
    context_blocks: tuple[int, ...] = tuple(range(1, 12))
    warmup: int = 1
    repeats: int = 3
    vae: bool = True
    vae_config: dict[str, Any] = field(default_factory=dict)  # AutoencoderKLWan overrides (tests: a small VAE)
    sequential_blocks: int = 12
    window: int = 7
    out: str = "gpu-profile.json"
    quiet: bool = False  # wait for an idle CPU before each round (pointless on a GPU machine of one's own)


def random_model(name: str, device: str, dtype: str) -> CausalWanDiT:
    """The preset ``name`` with random weights, built on ``device`` in ``dtype`` (PyTorch's default
    initialisation runs there, not on the CPU)."""
    torch_type = torch_dtype(dtype)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", "the GPU kit needs a CUDA device, and torch sees none here")
    before = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch_type)
        with torch.device(device):
            model = CausalWanDiT(get_config(name), seed=None)
    finally:
        torch.set_default_dtype(before)
    return model.to(device=device, dtype=torch_type).eval()


def random_vae(device: str, dtype: str, overrides: dict[str, Any] | None = None) -> Any:
    """diffusers' ``AutoencoderKLWan`` (the Wan2.1 VAE configuration, or ``overrides``) with random weights,
    wrapped as a streaming ``WanVAEDecoder``."""
    try:
        from diffusers import AutoencoderKLWan
    except ImportError:
        raise ConfigError("vae", "the VAE measurement needs diffusers (pip install 'cascade-sched[vae]'); "
                                 "or run the kit with --no-vae") from None
    from models.decode import WanVAEDecoder

    with torch.device(device):
        vae = AutoencoderKLWan(**(overrides or {}))  # type: ignore[no-untyped-call]  # diffusers: the model classes are not annotated
    return WanVAEDecoder(vae, device=device, dtype=torch_dtype(dtype))


def catalog_gpu(name: str) -> str | None:
    """The simulator catalog's GPU for a CUDA device name (``NVIDIA H100 80GB HBM3`` -> ``h100-sxm``)."""
    n = name.lower()
    for key, gpu in (("h200", "h200"), ("gb200", "gb200"), ("b200", "b200"), ("h100 pcie", "h100-pcie"),
                     ("h100", "h100-sxm"), ("a100", "a100-sxm"), ("l40s", "l40s"), ("5090", "rtx5090")):
        if key in n:
            return gpu
    return None


def _sequential_fps(model: CausalWanDiT, blocks: int, window: int) -> tuple[float, list[float]]:
    """The paper's FPS of the sequential schedule run for real by the reference executor, no decoding."""
    from cascade_sched.metrics import stream_metrics
    from cascade_sched.schedule import build_schedule
    from cascade_sched.spec import CascadeSpec
    from executors.base import RunOptions
    from executors.reference import ReferenceExecutor

    schedule = build_schedule(CascadeSpec(num_blocks=blocks, window=window))
    with torch.inference_mode():
        ReferenceExecutor().run(build_schedule(CascadeSpec(num_blocks=2, window=window)), model, RunOptions())
        result = ReferenceExecutor().run(schedule, model, RunOptions())
    m = stream_metrics(result.block_done_s, None, max_in_flight=1, window=window)
    return m.paper_fps, list(result.block_done_s)


def _predicted(profile: Profile, model: str, gpu: str | None, blocks: int, window: int) -> dict[str, float]:
    from cascade_sched.schedule import build_schedule
    from cascade_sched.spec import CascadeSpec
    from simulator.catalog import get_gpu, get_model
    from simulator.cluster import Cluster
    from simulator.cost import make_cost
    from simulator.engine import simulate
    from simulator.profile import ProfileCost

    g = get_model(model)
    s = build_schedule(CascadeSpec(num_blocks=blocks, window=window))
    cluster = Cluster.of(gpu or "h100-sxm", 1)
    out = {"profile": simulate(s, cluster, ProfileCost(profile, g), g, decode="gpu", check_memory=False).paper_fps}
    if gpu is not None and g.baseline is not None:
        parts = make_cost("parts", g, get_gpu(gpu))
        out["catalog"] = simulate(s, cluster, parts, g, decode="gpu", check_memory=False).paper_fps
        out["catalog_decode_s"] = parts.decode_s(1, 12)
    return out


def run_kit(options: KitOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Run the kit (see the module docstring); writes ``options.out`` and ``<out>.report.json``; returns the
    report."""
    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    say(f"gpu kit: {options.model} ({options.dtype}, random weights) on {device_name(options.device)}")
    model = random_model(options.model, options.device, options.dtype)
    cuda = options.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    say(f"  model built in {time.perf_counter() - t0:.1f} s")
    points = profile_forward(model, options.batches, options.context_blocks, options.warmup, options.repeats, say,
                             quiet=options.quiet)
    sample_s, commit_s = profile_sampler(model)
    tick = profile_tick(model, repeats=2, window=min(options.context_blocks[-1], 7))
    say(f"  sampler {sample_s * 1e6:.0f} us per task; tick overhead {tick['tick_overhead_s'] * 1e3:.2f} ms")
    decode_first = decode_rest = 0.0
    decoder = "none"
    if options.vae:
        t1 = time.perf_counter()
        dec = random_vae(options.device, options.dtype, options.vae_config)
        decode_first, decode_rest = profile_decode(model, dec, warmup=1, repeats=3)
        decoder = "wan-vae (diffusers AutoencoderKLWan, random weights)"
        say(f"  Wan VAE decode {decode_first * 1e3:.1f} ms (first block), {decode_rest * 1e3:.1f} ms per later "
            f"block ({time.perf_counter() - t1:.1f} s)")
        del dec
    peak = torch.cuda.max_memory_allocated() if cuda else 0
    prov = provenance(options)
    prov.update(decoder=decoder, kit="cascade calibrate --gpu-kit", commit_s_per_version=commit_s, tick=tick,
                weights="random")
    profile = Profile(model=options.model, forward=tuple(points), sample_s_per_task=sample_s,
                      decode_s_per_block=decode_rest, decode_first_block_s=decode_first, provenance=prov,
                      tick_overhead_s=tick["tick_overhead_s"], peak_memory_bytes=int(peak), path=options.out)
    profile.save(options.out)
    say(f"  wrote {options.out}")
    measured, series = _sequential_fps(model, options.sequential_blocks, options.window)
    gpu = catalog_gpu(prov["device"]) if cuda else None
    predicted = _predicted(profile, options.model, gpu, options.sequential_blocks, options.window)
    report = {"device": prov["device"], "catalog_gpu": gpu, "model": options.model, "profile": options.out,
              "window": options.window, "blocks": options.sequential_blocks,
              "sequential_fps": {"measured": measured, **predicted}, "block_done_s": series,
              "decode_s": {"measured_first": decode_first, "measured_later": decode_rest,
                           "catalog_later": predicted.get("catalog_decode_s", math.nan)},
              "peak_memory_bytes": peak, "wall_s": round(time.perf_counter() - t0, 1)}
    with open(options.out + ".report.json", "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, default=lambda v: None)
    say(format_report(report))
    return report


def format_report(report: dict[str, Any]) -> str:
    """The side-by-side lines the kit prints."""
    fps = report["sequential_fps"]
    lines = [f"sequential FPS ({report['blocks']} blocks, window {report['window']}, no decoding) on "
             f"{report['device']}:",
             f"  measured (reference executor, this repo's model): {fps['measured']:.2f}",
             f"  predicted from the profile just measured:         {fps['profile']:.2f}"]
    if "catalog" in fps:
        lines.append(f"  predicted by the catalog's parts model ({report['catalog_gpu']}): {fps['catalog']:.2f} "
                     "(the paper's implementation, fitted to its published baselines)")
    d = report["decode_s"]
    if d["measured_later"]:
        catalog = "" if math.isnan(d["catalog_later"]) else f", catalog {d['catalog_later'] * 1e3:.1f} ms"
        lines.append(f"Wan VAE decode per later block: measured {d['measured_later'] * 1e3:.1f} ms{catalog}")
    if report["peak_memory_bytes"]:
        lines.append(f"peak memory over the run: {report['peak_memory_bytes'] / 1e9:.2f} GB")
    lines.append(f"kit wall time {report['wall_s']:.0f} s")
    return "\n".join(lines)
