"""``cascade calibrate``: measure the model, the tick loop and the links on the machine at hand and write a
``cascade-profile/2`` file the simulator reads (``--cost profile:PATH``).

The measurements live in three modules, one job each: :mod:`apps.calibrate.profiling` (the tick forward, the
sampler step, the decoder, the tick loop's own overhead), :mod:`apps.calibrate.links` (the exchange through
the distributed executor's transport, the idle-link fits, contention between ranks) and
:mod:`apps.calibrate.timing` (medians and quiet moments). This module runs them in order and assembles the
profile; :mod:`apps.calibrate.gpu_kit` is the one-shot GPU kit built on the same pieces.

Thread count matters on a CPU: calibrate with the thread count of the runs you will predict (the
distributed executor gives each rank ``cores // ranks`` threads; ``validate`` runs one process with the
profile's thread count). The provenance records device, torch version, dtype, threads and date.
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from apps.calibrate.links import (
    DEFAULT_LINK_SIZES,
    LinkFit,
    fit_alpha_beta,
    measure_contention,
    measure_exchange,
    measure_link,
)
from apps.calibrate.profiling import profile_decode, profile_forward, profile_sampler, profile_tick
from apps.calibrate.timing import median_time, wait_idle
from apps.request import ModelSource
from cascade_sched.errors import ConfigError
from simulator.profile import Profile

__all__ = [
    "DEFAULT_CONTEXT_BLOCKS",
    "DEFAULT_LINK_SIZES",
    "CalibrateOptions",
    "LinkFit",
    "calibrate",
    "device_name",
    "fit_alpha_beta",
    "measure_contention",
    "measure_exchange",
    "measure_link",
    "median_time",
    "profile_decode",
    "profile_forward",
    "profile_sampler",
    "profile_tick",
    "wait_idle",
]

DEFAULT_CONTEXT_BLOCKS: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12)

Progress = Callable[[str], None]


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
    gang: bool = True  # with ``link``: measure the exchange inside the executor's runs (the profile's link)
    tick: bool = True  # measure the tick loop's own overhead with the reference executor
    link_sizes: tuple[int, ...] = DEFAULT_LINK_SIZES
    timesteps: tuple[float, ...] = (1000, 750, 500, 250)
    checkpoint: str | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> ModelSource:
        """The model measured."""
        return ModelSource(model=self.model, checkpoint=self.checkpoint, device=self.device, dtype=self.dtype)


def device_name(device: str) -> str:
    """The device's name for the provenance (the GPU's own name, or the CPU and its cores)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def provenance(options: CalibrateOptions) -> dict[str, Any]:
    """The fields every profile records about where and how it was measured."""
    return {
        "device": device_name(options.device),
        "torch": torch.__version__,
        "dtype": options.dtype,
        "threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "warmup": options.warmup,
        "repeats": options.repeats,
        "statistic": "median",
        "cores": os.cpu_count() or 1,
    }


def calibrate(options: CalibrateOptions, progress: Progress | None = None, quiet: bool = True) -> Profile:
    """Measure everything in the module docstring and return the profile (``Profile.save`` writes it).

    With ``quiet``, every round of forward shapes starts once the machine is idle
    (:func:`~apps.calibrate.timing.wait_idle`).
    """
    from apps.sources import load_model
    from executors.devices import backend_for

    if options.threads is not None:
        if options.threads < 1:
            raise ConfigError("threads", f"`threads` must be at least 1, got {options.threads}")
        torch.set_num_threads(options.threads)
    model, _ = load_model(options.source)
    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    points = profile_forward(model, options.batches, options.context_blocks, options.warmup, options.repeats, say,
                             quiet=quiet, timesteps=options.timesteps)
    sample_s, commit_s = profile_sampler(model, timesteps=options.timesteps)
    say(f"sampler step {sample_s * 1e6:.0f} us per denoise task; K/V commit {commit_s * 1e6:.0f} us per version")
    decode_first, decode_rest = profile_decode(model)
    say(f"preview decode {decode_first * 1e3:.2f} ms (first block), {decode_rest * 1e3:.2f} ms per later block")
    prov = provenance(options)
    prov.update(commit_s_per_version=commit_s, decoder="latent preview")
    tick_s = 0.0
    if options.tick:
        tick = profile_tick(model, options.timesteps)
        tick_s = tick["tick_overhead_s"]
        prov["tick"] = tick
        say(f"tick loop overhead {tick_s * 1e3:.3f} ms per tick (reference executor, {tick['ticks']} ticks)")
    link = None
    backend = backend_for(options.device)
    if options.link:
        fits = measure_link(options.device, options.dtype, options.link_sizes)
        ex = fits["exchange"]
        link = (ex.latency_s, ex.bandwidth_Bps)
        prov["link_backend"] = backend
        prov["link_fits"] = {k: f.to_dict() for k, f in fits.items()}
        say(f"{backend} exchange between idle ranks: {ex.latency_s * 1e6:.1f} us + bytes / "
            f"{ex.bandwidth_Bps / 1e9:.2f} GB/s (worst point off by {ex.residual_pct:.1f}%)")
    if options.link and options.gang:
        prov["gang_exchange"] = g = measure_exchange(options.model, options.device, options.dtype,
                                                     options.checkpoint, timesteps=options.timesteps)
        link = (g["latency_s"], g["bandwidth_Bps"])  # what the simulator prices an exchange with
        prov["link_source"] = "gang_exchange"
        say(f"exchange inside the distributed executor's runs: {g['latency_s'] * 1e6:.1f} us + bytes / "
            f"{g['bandwidth_Bps'] / 1e9:.2f} GB/s per layer (worst point off by {g['fit']['worst_error_pct']:.1f}%)")
    if options.link and options.contention and not options.device.startswith("cuda"):
        prov["contention"] = c = measure_contention(options.model, options.device, options.dtype, options.checkpoint,
                                                    options.warmup, options.repeats)
        say(f"contention: a forward takes {c['together_s'] * 1e3:.2f} ms with {c['processes']} processes at once, "
            f"{c['alone_s'] * 1e3:.2f} ms alone (x{c['slowdown']:.3f}); interference by batch: "
            + ", ".join(f"{n}: x{f:.3f}" for n, f in c["interference_by_batch"]))
    prov["calibration_s"] = round(time.perf_counter() - t0, 1)
    if options.notes:
        prov["notes"] = options.notes
    prov.update(options.extra)
    return Profile(model=options.model, forward=tuple(points), sample_s_per_task=sample_s,
                   decode_s_per_block=decode_rest, decode_first_block_s=decode_first, link_fit=link,
                   provenance=prov, tick_overhead_s=tick_s)
