"""``cascade generate`` as a function: one picklable job, run in-process or on every rank of a group."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch

from cascade_sched.errors import ConfigError, ExecutorError
from cascade_sched.metrics import stream_metrics, video_frames
from cascade_sched.schedule import Schedule, build_schedule
from cascade_sched.spec import CascadeSpec
from cascade_sched.trace import write_chrome_trace
from cascade_sched.validate import validate
from executors.base import RunOptions, RunResult
from models.dit import CausalWanDiT
from models.sampler import FlowMatchSampler

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


@dataclass(frozen=True)
class GenerateJob:
    """Everything a rank needs to run one generation (plain values, so it pickles to spawned ranks)."""

    spec: dict[str, Any]
    model: str = "tiny"
    checkpoint: str | None = None
    prompt: str = "a red ball bouncing"
    dtype: str = "float32"
    device: str = "cpu"
    out: str | None = None
    save_latents: str | None = None
    trace: str | None = None
    fail_at: tuple[int, int] | None = None
    timeout_s: float = 60.0
    progress: bool = True
    executor: str = "reference"
    return_latents: bool = False
    prompts: tuple[tuple[int, str], ...] = ()  # (id, text) of the switches' prompts; id 0 is `prompt`
    interactive: bool = False  # read new prompts from standard input while streaming
    max_blocks: int = 1000  # an interactive stream stops growing here
    backend: str = "inductor"  # compiled executor: inductor | tensorrt
    engine_cache: str | None = None  # compiled executor: artifacts under DIR/rank{r}/, loaded when present
    shift: float | None = None  # sampler shift; None: the one the weights were trained for (toy: 1), else 5

    def schedule(self) -> Schedule:
        return validate(build_schedule(CascadeSpec.from_dict(self.spec)))


def build_model(name: str, checkpoint: str | None, dtype: str, device: str) -> CausalWanDiT:
    """The model a job names: a checkpoint when given, the shipped trained weights for ``toy``, else the
    preset with seeded random weights."""
    from models.checkpoints import load_checkpoint
    from models.config import get_config

    if dtype not in DTYPES:
        raise ConfigError("dtype", f"`--dtype` must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", "`--device cuda` was asked for, but torch sees no CUDA device here")
    if checkpoint:
        model = load_checkpoint(checkpoint, get_config(name))
    elif name == "toy":  # the trained toy model ships its weights (models/weights/toy.safetensors)
        from models.checkpoints import load_model
        from models.train_toy import WEIGHTS

        model = load_model(WEIGHTS)
    else:
        model = CausalWanDiT(get_config(name), seed=0)  # same seed on every rank: identical weights
    return model.to(device=device, dtype=DTYPES[dtype]).eval()


def build_sampler(name: str, checkpoint: str | None, shift: float | None) -> FlowMatchSampler:
    """The job's sampler: `shift` when given, else the one saved with the weights (the shipped toy model,
    or a cascade model folder), else the Self-Forcing default (shift 5)."""
    from models.checkpoints import load_sampler

    if shift is not None:
        return FlowMatchSampler(shift=shift)
    saved = None
    if checkpoint:
        saved = load_sampler(checkpoint)
    elif name == "toy":
        from models.train_toy import WEIGHTS

        saved = load_sampler(WEIGHTS)
    return saved or FlowMatchSampler()


def build_decoder(model: CausalWanDiT) -> Any:
    """The decoder of a model's latents: the toy's latent is its pixels, every other model gets the latent
    preview (uint8 frames (T, H, W, 3) per block, in block order)."""
    from models.decode import LatentPreviewDecoder, PixelDecoder

    if model.config.name == "toy":
        return PixelDecoder()
    return LatentPreviewDecoder(channels=model.config.in_channels)


class _Pipeline:
    """Decode, write and report blocks as they finish (runs on the decode rank)."""

    def __init__(self, job: GenerateJob, schedule: Schedule, model: CausalWanDiT) -> None:
        from executors.output import VideoSink

        self.job, self.schedule = job, schedule
        self.decoder = build_decoder(model)
        self.sink = VideoSink(job.out, frames_per_block=schedule.spec.frames_per_block) if job.out else None
        if self.sink is not None:
            self.sink.open()  # start the encoder now, not inside the first block's timing
        self.latents: list[Any] = []
        self.shown_s: list[float] = []
        self.bar: Any = None
        if job.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=schedule.num_blocks, unit="block", desc="generate", file=sys.stderr,
                            dynamic_ncols=True)
        import time

        self._clock = time.perf_counter
        self._t0 = self._clock()

    def on_block(self, block: int, x0: torch.Tensor) -> None:
        self.latents.append(x0.float().numpy())
        if self.sink is not None:
            self.sink.add_block(self.decoder.decode_block(x0))
        self.shown_s.append(self._clock() - self._t0)
        if self.bar is not None:
            fpb = self.schedule.spec.frames_per_block
            frames = sum(video_frames(b, fpb) for b in range(block + 1))
            self.bar.set_postfix(fps=f"{frames / max(self.shown_s[-1], 1e-9):.1f}")
            self.bar.update(1)

    def close(self) -> None:
        """Make everything written durable: the video, the latents so far. Safe to call twice."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.sink is not None:
            self.sink.close()
        if self.job.save_latents and self.latents:
            from executors.output import save_latents

            save_latents(self.job.save_latents, self.latents)


def run_job(job: GenerateJob, rank: int = 0, world: int = 1) -> dict[str, Any] | None:
    """Run ``job``: in-process (reference, world 1) or as this rank of an initialised group.

    Returns the summary on the decode rank (0), None elsewhere.
    """
    import torch.distributed as dist

    from executors.distributed import DistributedExecutor
    from executors.reference import ReferenceExecutor

    schedule = job.schedule()
    model = build_model(job.model, job.checkpoint, job.dtype, job.device)
    options = RunOptions(prompt=job.prompt, prompts=dict(job.prompts), fail_at=job.fail_at,
                         timeout_s=job.timeout_s, sampler=build_sampler(job.model, job.checkpoint, job.shift))
    distributed = dist.is_initialized()
    if distributed and world != schedule.num_devices:
        raise ConfigError("nproc", f"the world size {world} must equal `--devices` {schedule.num_devices}")
    executor: Any = DistributedExecutor() if distributed else ReferenceExecutor()
    if job.executor == "compiled":  # in-process, or this rank's share: each rank compiles its own graphs
        from executors.compiled import CompiledExecutor

        executor = CompiledExecutor(job.backend, job.engine_cache, progress=job.progress and rank == 0)
        with torch.inference_mode():
            executor.prepare(schedule, model)  # compile before the stream's clock starts
    pipeline = _Pipeline(job, schedule, model) if rank == 0 else None
    _ABORT_HOOK[0] = pipeline.close if pipeline is not None else None
    stream = _Stream(job, options) if job.interactive else None
    try:
        with torch.inference_mode():
            if stream is not None:
                if distributed:
                    raise ConfigError("interactive", "`--interactive` runs with the reference executor only")
                result = ReferenceExecutor().run(schedule, model, options, pipeline.on_block if pipeline else None,
                                                 extend=stream.extend)
                schedule = stream.schedule or schedule
            else:
                result = executor.run(schedule, model, options, pipeline.on_block if pipeline else None)
    finally:
        if pipeline is not None:
            pipeline.close()
    events = result.events
    if distributed:
        gathered: list[Any] | None = [None] * world if rank == 0 else None
        dist.gather_object(events, gathered, dst=0)
        if gathered is not None:
            events = [e for evs in gathered for e in evs]
    if pipeline is None:
        return None
    summary = _summary(job, schedule, result, pipeline.shown_s)
    texts = {0: job.prompt, **options.prompts}
    summary["switches"] = [(at, texts[pid]) for at, pid in schedule.spec.switches]
    if job.trace:
        write_chrome_trace(job.trace, events, metadata={"source": "measured", **summary})
    return summary


class _Stream:
    """The extend hook of an interactive run: prompts typed on standard input switch the stream."""

    def __init__(self, job: GenerateJob, options: RunOptions) -> None:
        from executors.interactive import PromptFeed

        self.job, self.options = job, options
        self.feed = PromptFeed(sys.stdin)
        self.schedule: Schedule | None = None

    def extend(self, tick: int, schedule: Schedule) -> Schedule | None:
        from executors.interactive import next_schedule

        ids = []
        for text in self.feed.poll():
            pid = max(self.options.prompts, default=0) + 1
            self.options.prompts[pid] = text
            ids.append(pid)
        new = next_schedule(schedule, tick, ids, streaming=self.feed.open, max_blocks=self.job.max_blocks)
        if new is not None:
            self.schedule = new
        return new


# The decode rank's close(), for the launcher to call when another rank's failure stops this one.
_ABORT_HOOK: list[Any] = [None]


def abort_hook() -> None:
    if _ABORT_HOOK[0] is not None:
        _ABORT_HOOK[0]()


def _summary(job: GenerateJob, schedule: Schedule, result: RunResult, shown_s: list[float]) -> dict[str, Any]:
    spec = schedule.spec
    F = spec.frames_per_block
    # Wan's VAE makes 4 video frames of a latent frame (the first block: 1 + 4 (F - 1)); the toy's latent
    # is the pixels, one video frame per latent frame.
    frames, first = (F, F) if job.model == "toy" else (video_frames(1, F), video_frames(0, F))
    metrics = stream_metrics(result.block_done_s, shown_s or None, max_in_flight=schedule.max_in_flight(),
                             window=spec.window, frames=frames, first_frames=first, makespan_s=result.wall_s)
    return {
        "executor": job.executor,
        "model": job.model,
        "blocks": schedule.num_blocks,
        "devices": schedule.num_devices,
        "video_frames_per_block": frames,
        **metrics.to_dict(),
        "block_done_s": result.block_done_s,
        "forward_s": result.forward_s,
        "wall_s": result.wall_s,
        "peak_kv_bytes": result.peak_kv_bytes,
        "latents": result.stacked().float().numpy() if job.return_latents else None,
    }


def run_generate(job: GenerateJob, nproc: int | None = None) -> dict[str, Any]:
    """Run ``job``: the reference executor in-process, or the distributed one under torchrun or on
    ``nproc`` spawned local ranks (default: the schedule's device count). The compiled executor runs
    in-process, or like the distributed one under torchrun or with ``nproc``."""
    from executors.launch import run_rank, spawn, under_torchrun

    devices = int(job.spec.get("num_devices", 1))
    if job.executor == "compiled":
        from executors.compiled import check_backend

        check_backend(job.backend, job.device)  # one clear line before any rank starts
    if job.executor == "reference" or (job.executor == "compiled" and nproc is None and not under_torchrun()):
        summary = run_job(job)
        if summary is None:
            raise ExecutorError(f"the {job.executor} run returned no summary")
        return summary
    if job.executor not in ("distributed", "compiled"):
        raise ConfigError("executor",
                          f"`--executor` must be reference, distributed or compiled, got {job.executor!r}")
    if under_torchrun():
        result = run_rank(_rank_entry, job, job.device, job.timeout_s, on_abort=abort_hook)
        return result if result is not None else {}
    nproc = devices if nproc is None else nproc
    if nproc != devices:
        raise ConfigError(
            "nproc", f"`--nproc` {nproc} must equal `--devices` {devices} (device d of the schedule runs on rank d)"
        )
    result = spawn(_rank_entry, job, nproc, job.device, job.timeout_s, on_abort=abort_hook)
    if not isinstance(result, dict):
        raise ExecutorError("rank 0 returned no summary")
    return result


def _rank_entry(job: GenerateJob, rank: int, world: int) -> dict[str, Any] | None:
    _ABORT_HOOK[0] = None
    return run_job(job, rank, world)
