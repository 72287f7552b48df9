"""The GPU kit (``cascade calibrate --gpu-kit``, wrapped by ``benchmarks/gpu_check.sh``): one command, for a
GPU lent for minutes with no network, that measures what decides most first and stops cleanly at its
budget. Steps, in this order (:mod:`apps.calibrate.gpu_steps` has each):

1. *batching*: the sequential 1.3B schedule against lag 1, both on this one GPU (480x832, bf16, random
   weights, no decoding): measured FPS beside the simulator's predictions, and the ratio;
2. *forward grid*: the tick forward against batch 1-5 and context 1-11 blocks with peak memory, the sampler
   step and the tick loop's own time, written as the ``cascade-profile/2`` the simulator reads;
3. *decoders*: the Wan VAE (diffusers ``AutoencoderKLWan``, the published configuration, random weights)
   per block, first and later blocks, streaming; then TAEHV per block;
4. *decode overlap*: the sequential run with decoding on a second CUDA stream, and inline: delivered FPS
   against predicted;
5. *compiled*: the compiled executor (Inductor) against eager on the same schedule, then whether CUDA graphs
   can capture the tick;
6. *14B*: one forward at batch 1 and 5 with context 7 and its peak memory, where it fits.

Each step checks the budget left against its own estimate before it starts (skipped with the reason
otherwise) and stops its own loops at the budget's end (recorded ``cut``); an exception in one step is
recorded and the next step runs. After every step the report is written again, atomically
(:mod:`apps.calibrate.gpu_report`), and every figure is printed as it is measured. ``rehearsal_options``
gives the CPU rehearsal: every step at tiny geometries, one repeat.
"""

from __future__ import annotations

import dataclasses
import gc
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cascade_sched.errors import ConfigError
from models.config import get_config
from models.dit import CausalWanDiT
from models.dtypes import torch_dtype

__all__ = [
    "STEPS",
    "Cut",
    "Kit",
    "KitOptions",
    "Skip",
    "StepRecord",
    "catalog_gpu",
    "random_model",
    "random_vae",
    "rehearsal_options",
    "run_kit",
]

Progress = Callable[[str], None]

# The Wan2.1 VAE as published: diffusers' AutoencoderKLWan for Wan-AI/Wan2.1-T2V-1.3B-Diffusers (vae/), the
# same numbers as Wan-AI/Wan2.1 wan/modules/vae.py `_video_vae` (docs/references.md).
WAN21_VAE: dict[str, Any] = {"base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                             "attn_scales": [], "temperal_downsample": [False, True, True], "dropout": 0.0}
SMALL_VAE: dict[str, Any] = {**WAN21_VAE, "base_dim": 8, "num_res_blocks": 1}  # the rehearsal's
TAEHV_WIDTH = (256, 128, 64, 64)  # taew2_1's decoder (madebyollin/taehv)


@dataclass(frozen=True)
class KitOptions:
    """What the kit measures. The defaults are the GPU run's: Wan2.1 1.3B and 14B at 480x832 in bf16."""

    model: str = "wan2.1-1.3b"
    big_model: str = "wan2.1-14b"  # step 6
    device: str = "cuda"
    dtype: str = "bfloat16"
    batches: tuple[int, ...] = (1, 2, 3, 4, 5)
    context_blocks: tuple[int, ...] = tuple(range(1, 12))
    warmup: int = 1
    repeats: int = 3
    blocks: int = 16  # the runs of steps 1, 4 and 5 (lag 1 keeps 5 blocks in flight: 5 steady intervals)
    window: int = 7
    big_context: int = 7  # step 6's context, blocks
    vae: bool = True
    vae_config: dict[str, Any] = field(default_factory=lambda: dict(WAN21_VAE))
    taehv_width: tuple[int, int, int, int] = TAEHV_WIDTH
    budget_s: float = 540.0
    out: str = "gpu-profile.json"  # the profile step 2 writes (step 3 adds the decoder to it)
    report: str = "gpu-report.json"
    steps: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
    rehearsal: bool = False
    wheels: str = ""  # what gpu_check.sh installed, for the report

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def rehearsal_options(out_dir: str, budget_s: float = 540.0, **changes: Any) -> KitOptions:
    """The CPU rehearsal of the kit: every step, the same code, tiny geometries (``tiny`` for 1.3B,
    ``small`` for 14B, a small Wan VAE and TAEHV), one repeat, bf16 as on the GPU."""
    base = KitOptions(model="tiny", big_model="small", device="cpu", dtype="bfloat16", warmup=1, repeats=1,
                      blocks=12, window=3, big_context=7, vae_config=dict(SMALL_VAE), taehv_width=(8, 8, 8, 8),
                      budget_s=budget_s, out=f"{out_dir}/gpu-profile.json", report=f"{out_dir}/gpu-report.json",
                      rehearsal=True)
    return dataclasses.replace(base, **changes)


class Cut(Exception):
    """A step's loop reached the budget's end: what it measured so far is kept, the step is marked cut."""


class Skip(Exception):
    """A step that cannot run here (it does not fit): recorded ``skipped`` with the reason."""


@dataclass
class StepRecord:
    """One step in the report (:mod:`apps.calibrate.gpu_report` documents the fields)."""

    id: int
    name: str
    title: str
    estimate_s: float
    status: str = "running"
    why: str = ""
    wall_s: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def row(self, figure: str, measured: float | None, predicted: float | None, unit: str, note: str = "") -> None:
        self.rows.append({"figure": figure, "measured": measured, "predicted": predicted, "unit": unit,
                          "note": note})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def catalog_gpu(name: str) -> str | None:
    """The simulator catalog's GPU for a CUDA device name (``NVIDIA H100 80GB HBM3`` -> ``h100-sxm``)."""
    n = name.lower()
    for key, gpu in (("h200", "h200"), ("gb200", "gb200"), ("b200", "b200"), ("h100 pcie", "h100-pcie"),
                     ("h100", "h100-sxm"), ("a100", "a100-sxm"), ("l40s", "l40s"), ("5090", "rtx5090")):
        if key in n:
            return gpu
    return None


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


def random_vae(device: str, dtype: str, config: dict[str, Any] | None = None) -> Any:
    """diffusers' ``AutoencoderKLWan`` (``config``: its constructor's arguments; default the published
    Wan2.1 VAE) with random weights, wrapped as a streaming ``WanVAEDecoder``."""
    try:
        from diffusers import AutoencoderKLWan
    except ImportError:
        raise ConfigError("vae", "the Wan VAE steps need diffusers: carry its wheel (benchmarks/gpu_wheels.sh) "
                                 "or pip install 'cascade-sched[vae]'") from None
    from models.decode import WanVAEDecoder

    with torch.device(device):
        vae = AutoencoderKLWan(**(config if config is not None else WAN21_VAE))  # type: ignore[no-untyped-call]  # diffusers: the model classes are not annotated
    return WanVAEDecoder(vae, device=device, dtype=torch_dtype(dtype))


class Kit:
    """One run of the kit: its options, budget, report, and what steps share (the 1.3B model, the profile)."""

    def __init__(self, options: KitOptions, say: Progress) -> None:
        from apps.calibrate.gpu_report import card_info, now

        self.options, self.say = options, say
        self.t0 = time.perf_counter()
        self.device = torch.device(options.device)
        self.cuda = self.device.type == "cuda"
        self.card = card_info(options.device)
        self.gpu = catalog_gpu(self.card["name"]) if self.cuda else None
        self.card["catalog_gpu"] = self.gpu or "none: predictions are for an h100-sxm"
        self.steps: list[StepRecord] = []
        self.started = now()
        self._model: CausalWanDiT | None = None
        self.profile: Any = None  # the profile of step 2 (and 3), once written

    # -- the budget --------------------------------------------------------------------------------------
    def left_s(self) -> float:
        return self.options.budget_s - (time.perf_counter() - self.t0)

    def check(self, need_s: float, what: str) -> None:
        """Raise :class:`Cut` unless ``need_s`` seconds are left for ``what``."""
        if self.left_s() < need_s:
            raise Cut(f"budget: {max(0.0, self.left_s()):.0f} s left before {what} (about {need_s:.0f} s)")

    @property
    def deadline(self) -> float:
        """The budget's end on ``time.perf_counter``'s clock."""
        return self.t0 + self.options.budget_s

    # -- what steps share ----------------------------------------------------------------------------------
    def model(self) -> CausalWanDiT:
        """The 1.3B model (random weights), built once and kept for steps 1, 2, 4 and 5."""
        if self._model is None:
            t = time.perf_counter()
            self._model = random_model(self.options.model, self.options.device, self.options.dtype)
            self.say(f"  built {self.options.model} ({self.options.dtype}, random weights) on {self.card['name']} "
                     f"in {time.perf_counter() - t:.1f} s")
        return self._model

    def release_model(self) -> None:
        """Drop the 1.3B model (step 6 needs the memory)."""
        self._model = None
        self.free()

    def figures(self, step: int) -> dict[str, Any]:
        """The figures of step ``step`` in this run (empty if it did not run)."""
        return next((s.figures for s in self.steps if s.id == step), {})

    def gpu_name(self) -> str:
        """The catalog GPU the simulator predicts for (an h100-sxm where the card is not in the catalog)."""
        return self.gpu or "h100-sxm"

    def free(self) -> None:
        """Release what a failed or finished step left on the device."""
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    # -- the report ----------------------------------------------------------------------------------------
    def doc(self) -> dict[str, Any]:
        from apps.calibrate.gpu_report import FORMAT

        o = self.options
        return {"format": FORMAT, "rehearsal": o.rehearsal, "card": self.card, "budget_s": o.budget_s,
                "started": self.started, "wall_s": round(time.perf_counter() - self.t0, 1), "wheels": o.wheels,
                "options": o.to_dict(), "steps": [s.to_dict() for s in self.steps]}

    def write(self) -> None:
        from apps.calibrate.gpu_report import write_report

        write_report(self.options.report, self.doc())


StepFn = Callable[[Kit, StepRecord], None]


def _steps() -> tuple[tuple[int, str, str, tuple[float, float], StepFn], ...]:
    from apps.calibrate import gpu_steps as s

    # (id, name, title, estimated seconds (GPU, CPU rehearsal), the step): the GPU figures are estimates for an
    # H100 (eager bf16, model builds included; no GPU has run the kit yet), the CPU ones the most the rehearsal
    # took on a 2-core machine shared with other work.
    return (
        (1, "batching", "sequential 1.3B vs lag 1 on one GPU, no decoding", (60, 10), s.step_batching),
        (2, "forward grid", "tick forward vs batch and context, peak memory; the profile", (100, 15), s.step_grid),
        (3, "decoders", "Wan VAE per block (first, later; streaming), then TAEHV", (45, 15), s.step_decoders),
        (4, "decode overlap", "sequential with decoding on a second stream and inline", (50, 45), s.step_decode_overlap),
        (5, "compiled", "compiled executor (Inductor) vs eager; CUDA graphs", (150, 60), s.step_compiled),
        (6, "14B", "14B forward at batch 1 and 5, context 7, peak memory", (45, 15), s.step_big),
    )


STEPS = tuple(range(1, 7))


def run_kit(options: KitOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Run the kit's steps (module docstring) under ``options.budget_s``; writes ``options.report`` after
    every step and returns the report."""
    say = progress or (lambda _m: None)
    for path in (options.report, options.out):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    kit = Kit(options, say)
    say(f"gpu kit{' (rehearsal)' if options.rehearsal else ''}: {kit.card['name']}, driver {kit.card['driver']}, "
        f"torch {kit.card['torch']}; budget {options.budget_s:.0f} s")
    kit.write()
    for sid, name, title, estimates, fn in _steps():
        if sid not in options.steps:
            continue
        estimate = estimates[0 if kit.cuda else 1]
        rec = StepRecord(sid, name, title, estimate)
        kit.steps.append(rec)
        left = kit.left_s()
        if left < estimate:
            rec.status, rec.why = "skipped", f"budget: {max(0.0, left):.0f} s left, the step needs about {estimate:.0f} s"
            say(f"step {sid} ({name}): skipped, {rec.why}")
            kit.write()
            continue
        say(f"step {sid} ({name}): {title}")
        kit.write()
        t = time.perf_counter()
        try:
            fn(kit, rec)
            rec.status = "ok"
        except Cut as e:
            rec.status, rec.why = "cut", str(e)
        except Skip as e:
            rec.status, rec.why = "skipped", str(e)
        except Exception as e:  # recorded; the next step runs
            rec.status = "failed"
            rec.why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            rec.figures["traceback"] = traceback.format_exc(limit=8).splitlines()[-12:]
        rec.wall_s = round(time.perf_counter() - t, 1)
        say(f"step {sid} ({name}): {rec.status} in {rec.wall_s:.1f} s" + (f" ({rec.why})" if rec.why else ""))
        kit.free()
        kit.write()
    say(f"gpu kit: done in {time.perf_counter() - kit.t0:.0f} s; report {options.report}")
    return kit.doc()
