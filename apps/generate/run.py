"""``cascade generate`` as a function: one picklable job, run in-process or on every rank of a group."""

from __future__ import annotations

import sys
import threading
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from apps.progress import bar as progress_bar
from apps.progress import track
from cascade_sched.errors import ConfigError, ExecutorError
from cascade_sched.metrics import stream_metrics, video_frames
from cascade_sched.schedule import Schedule, build_schedule
from cascade_sched.spec import CascadeSpec
from cascade_sched.trace import write_chrome_trace
from cascade_sched.validate import validate
from executors.base import RunOptions, RunResult
from models.dit import CausalWanDiT
from models.prompts import TextEncoder
from models.sampler import FlowMatchSampler

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


@dataclass(frozen=True)
class GenerateJob:
    """Everything a rank needs to run one generation (plain values, so it pickles to spawned ranks)."""

    spec: dict[str, Any]
    model: str | None = "tiny"  # None: the preset's, else the checkpoint's shapes, else toy
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
    realtime: bool = False  # with interactive: hold the stream to the video's frame rate
    max_blocks: int = 1000  # an interactive stream stops growing here
    backend: str = "inductor"  # compiled executor: inductor | tensorrt
    engine_cache: str | None = None  # compiled executor: artifacts under DIR/rank{r}/, loaded when present
    shift: float | None = None  # sampler shift; None: the preset's, or the one the weights were trained for
    preset: str | None = None  # models/presets.py: sampler, weights entry, LoRA alpha (the spec is set by the CLI)
    weights: str | None = None  # generator | ema: the checkpoint entry; None: the preset's, or the only one
    lora: str | None = None  # PEFT LoRA adapter merged at load
    model_dir: str | None = None  # diffusers-style Wan2.1 folder: text_encoder/, tokenizer/, vae/
    text_encoder: str | None = None  # umT5 folder (or Wan2.1 folder)
    text_encoder_device: str = "cpu"
    text_embeddings: str | None = None  # FILE of precomputed embeddings, or "stand-in"
    save_text_embeddings: str | None = None
    vae: str | None = None  # AutoencoderKLWan folder, or TAEHV weights file
    vae_device: str | None = None  # None: the denoising device

    def schedule(self) -> Schedule:
        return validate(build_schedule(CascadeSpec.from_dict(self.spec)))


WEIGHT_ENTRIES = {"generator": "generator", "ema": "generator_ema"}


def model_name(job: GenerateJob) -> str | None:
    """The geometry a job names: ``--model``, else the preset's, else None (the checkpoint's own shapes),
    and ``toy`` when nothing at all is given."""
    if job.model is not None:
        return job.model
    if job.preset is not None:
        from models.presets import get_preset

        return get_preset(job.preset).model
    return None if job.checkpoint else "toy"


def load_job_model(job: GenerateJob) -> tuple[CausalWanDiT, str]:
    """The job's model on its device and dtype, and a line saying which weights it has."""
    from models.lora import load_lora

    name = model_name(job)
    key = WEIGHT_ENTRIES[job.weights] if job.weights else None
    alpha = None
    if job.preset is not None:
        from models.presets import get_preset

        preset = get_preset(job.preset)
        key = key or preset.weights_entry
        alpha = preset.lora.alpha if preset.lora else None
    lora = load_lora(job.lora, alpha=alpha) if job.lora else None
    return _build(name, job.checkpoint, job.dtype, job.device, key=key, lora=lora)


def build_model(name: str, checkpoint: str | None, dtype: str, device: str) -> CausalWanDiT:
    """The model a job names: a checkpoint when given, the shipped trained weights for ``toy``, else the
    preset with seeded random weights."""
    return _build(name, checkpoint, dtype, device)[0]


def _build(name: str | None, checkpoint: str | None, dtype: str, device: str, *, key: str | None = None,
           lora: Any = None) -> tuple[CausalWanDiT, str]:
    from executors.launch import check_device
    from models.checkpoints import load_dit
    from models.config import get_config

    if dtype not in DTYPES:
        raise ConfigError("dtype", f"`--dtype` must be one of {', '.join(DTYPES)}, got {dtype!r}")
    check_device(device)
    if checkpoint:
        model, report = load_dit(checkpoint, get_config(name) if name else None, key=key, lora=lora)
        what = report.describe()
    elif name == "toy":  # the trained toy model ships its weights (models/weights/toy.safetensors)
        from models.checkpoints import load_model
        from models.weights import TOY_WEIGHTS

        model, what = load_model(TOY_WEIGHTS), f"the shipped toy weights ({TOY_WEIGHTS})"
    else:
        if lora is not None:
            raise ConfigError("lora", "`--lora` needs `--checkpoint` (the base weights it adapts)")
        model, what = CausalWanDiT(get_config(name or "toy"), seed=0), "seeded random weights (seed 0)"
    return model.to(device=device, dtype=DTYPES[dtype]).eval(), what  # same seed on every rank: same weights


def build_sampler(name: str, checkpoint: str | None, shift: float | None,
                  preset: str | None = None) -> FlowMatchSampler:
    """The job's sampler: the preset's (with `shift` overriding its shift), else `shift`, else the one
    saved with the weights (the shipped toy model, or a cascade model folder), else Self-Forcing's."""
    from models.checkpoints import load_sampler

    if preset is not None:
        from models.presets import get_preset

        p = get_preset(preset)
        return FlowMatchSampler(shift=p.shift if shift is None else shift, steps=p.steps, warp=p.warp)
    if shift is not None:
        return FlowMatchSampler(shift=shift)
    saved = None
    if checkpoint:
        saved = load_sampler(checkpoint)
    elif name == "toy":
        from models.weights import TOY_WEIGHTS

        saved = load_sampler(TOY_WEIGHTS)
    return saved or FlowMatchSampler()


class _Pipeline:
    """Hand finished blocks to the decode thread, write them, and report (runs on the decode rank).

    The video and the latents are written under their partial names (``cascade_sched.outputs``), renamed
    into place by ``outputs`` when the run ends well; a run that stops keeps the blocks decoded and
    written so far, readable, under the partial names, and :meth:`kept` says so.
    """

    def __init__(self, job: GenerateJob, schedule: Schedule, model: CausalWanDiT, outputs: ExitStack) -> None:
        import time

        from apps.generate.decode_thread import DecodeWorker
        from apps.generate.writers import VideoSink
        from apps.sources import decoder_for
        from cascade_sched.interrupts import on_interrupt
        from cascade_sched.outputs import committed

        self.job, self.schedule = job, schedule
        self.video = outputs.enter_context(committed(job.out)) if job.out else None
        self.latents_path = outputs.enter_context(committed(job.save_latents)) if job.save_latents else None
        outputs.enter_context(on_interrupt(self.kept))
        self._lock = threading.Lock()
        self._closed = False
        device = job.vae_device or str(model.device)
        self.decoder: Any = decoder_for(job, model.config, device)
        self.sink = VideoSink(str(self.video), frames_per_block=schedule.spec.frames_per_block) if self.video else None
        if self.sink is not None:
            self.sink.open()  # start the encoder now, not inside the first block's timing
        self.worker = DecodeWorker(self.decoder, self._write, device)
        self.latents: list[Any] = []
        self.handed: dict[int, float] = {}  # block -> perf_counter when the tick loop handed it over
        terminal = job.interactive and sys.stdin is not None and sys.stdin.isatty()
        # A stream on a terminal shows its status line instead.
        self.bar = progress_bar(schedule.num_blocks, "generate", "block", on=job.progress and not terminal)
        self._clock = time.perf_counter
        self._t0 = self._clock()

    def on_block(self, block: int, x0: torch.Tensor) -> None:
        self.handed[block] = self._clock()
        self.latents.append(x0.float().numpy())
        self.worker.submit(block, x0)

    def _write(self, frames: Any) -> None:  # on the decode thread, in block order
        if self.sink is not None:
            self.sink.add_block(frames)
        if self.bar is not None:
            self.bar.update(1)

    @property
    def finished(self) -> int:
        """Blocks decoded and written, all in order from block 0."""
        return len(self.worker.decoded)

    def close(self, drain: bool = True) -> None:
        """Decode what is queued (``drain=False``, when interrupted: only the block being decoded) and make
        everything written durable: the video, and the latents of the same finished blocks. Safe to call
        twice, and from another thread (a rank stopped by its peers)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self.worker.close(drain)
            finally:
                if self.bar is not None:
                    self.bar.close()
                    self.bar = None
                if self.sink is not None:
                    self.sink.close()
                n = self.finished
                if self.latents_path is not None and n:
                    from apps.generate.writers import save_latents

                    save_latents(str(self.latents_path), self.latents[:n])
                if n == 0:  # nothing finished: no empty file that a player would choke on
                    for path in (self.video, self.latents_path):
                        if path is not None:
                            path.unlink(missing_ok=True)

    def kept(self) -> str:
        """What a stopped run kept, for its one line: ``kept 3 of 8 blocks in x.partial.mp4``."""
        files = [str(p) for p in (self.video, self.latents_path) if p is not None and p.exists()]
        of = "" if self.job.interactive else f" of {self.schedule.num_blocks}"  # a stream has no planned end
        if not files:
            return f"{self.finished}{of} blocks finished, no file kept"
        return f"kept {self.finished}{of} blocks in {' and '.join(files)}"

    def clock_offset(self, block_done_s: list[float]) -> float:
        """perf_counter -> the run's clock: the tick loop stamps block_done_s[b] just before handing b over."""
        import statistics

        pairs = [done - self.handed[b] for b, done in enumerate(block_done_s) if b in self.handed]
        return statistics.median(pairs) if pairs else -self._t0

    def shown_s(self, offset: float) -> list[float]:
        """When each block's frames were decoded and written, on the run's clock."""
        return [self.worker.decoded[b][1] + offset for b in sorted(self.worker.decoded)]


def _conditioning(job: GenerateJob, texts: dict[int, str], config: Any, rank: int, world: int,
                  ) -> tuple[dict[int, torch.Tensor], TextEncoder | None, str]:
    """Rank 0 encodes every prompt of the timeline (each text once), frees the encoder unless prompts may
    still arrive, and shares the embeddings with the other ranks. Returns (embeddings by prompt id, the
    encoder kept for streaming or None, its name)."""
    from apps.sources import encode_prompts, share_from_rank0, text_source
    from models.prompts import save_embeddings

    encoder: TextEncoder | None = None
    payload: tuple[dict[int, torch.Tensor], str] | None = None
    if rank == 0:
        encoder = text_source(job, config, list(texts.values()))
        name = encoder.name
        embeddings = encode_prompts(encoder, texts, config)
        if job.save_text_embeddings:
            save_embeddings(job.save_text_embeddings, {texts[p]: e for p, e in embeddings.items()})
        if not job.interactive:
            encoder.close()  # every prompt is encoded: free the weights before the DiT loads
            encoder = None
        payload = (embeddings, name)
    embeddings, name = share_from_rank0(payload, rank, world)
    return embeddings, encoder, name


def run_job(job: GenerateJob, rank: int = 0, world: int = 1) -> dict[str, Any] | None:
    """Run ``job``: in-process (reference, world 1) or as this rank of an initialised group.

    Returns the summary on the decode rank (0), None elsewhere.
    """
    import torch.distributed as dist

    from executors.distributed import DistributedExecutor
    from executors.reference import ReferenceExecutor
    from models.config import get_config

    schedule = job.schedule()
    distributed = dist.is_initialized()
    if distributed and world != schedule.num_devices:
        raise ConfigError("nproc", f"the world size {world} must equal `--devices` {schedule.num_devices}")
    texts = {0: job.prompt, **dict(job.prompts)}
    name = model_name(job)
    if name is None:  # the geometry comes from the checkpoint's shapes: load first, then encode
        model, weights = load_job_model(job)
        embeddings, encoder, text_name = _conditioning(job, texts, model.config, rank, world)
    else:  # encode first, so the text encoder's memory is free before the DiT loads
        embeddings, encoder, text_name = _conditioning(job, texts, get_config(name), rank, world)
        model, weights = load_job_model(job)
    options = RunOptions(prompt=job.prompt, prompts=dict(job.prompts), embeddings=embeddings, text_encoder=encoder,
                         fail_at=job.fail_at, timeout_s=job.timeout_s,
                         sampler=build_sampler(model.config.name, job.checkpoint, job.shift, job.preset))
    executor: Any = DistributedExecutor() if distributed else ReferenceExecutor()
    if job.executor == "compiled":  # in-process, or this rank's share: each rank compiles its own graphs
        from executors.compiled import CompiledExecutor

        executor = CompiledExecutor(job.backend, job.engine_cache,
                                    progress=partial(track, unit="bucket") if job.progress and rank == 0 else None)
        with torch.inference_mode():
            executor.prepare(schedule, model)  # compile before the stream's clock starts
    with ExitStack() as outputs:  # rank 0's files: renamed into place when the run ends well
        pipeline = _Pipeline(job, schedule, model, outputs) if rank == 0 else None
        _ABORT_HOOK[0] = pipeline
        stream = _Stream(job, options, pipeline) if job.interactive and pipeline is not None else None
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
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: stop now, keep the blocks already written
            if pipeline is not None:
                pipeline.close(drain=False)
            raise
        finally:
            if stream is not None:
                stream.console.end()
            if pipeline is not None:
                pipeline.close()
            if encoder is not None:
                encoder.close()
        events = result.events
        if pipeline is not None:  # the decodes ran on their own thread: their events replace the hand-offs
            offset = pipeline.clock_offset(result.block_done_s)
            events = [e for e in events if e.track != "decode"] + pipeline.worker.events(offset, 0)
        if distributed:
            gathered: list[Any] | None = [None] * world if rank == 0 else None
            dist.gather_object(events, gathered, dst=0)
            if gathered is not None:
                events = [e for evs in gathered for e in evs]
        if pipeline is None:
            return None
        summary = _summary(job, schedule, result, pipeline.shown_s(offset), pipeline.decoder)
        summary["model"] = model.config.name
        all_texts = {0: job.prompt, **options.prompts}
        summary["switches"] = [(at, all_texts[pid]) for at, pid in schedule.spec.switches]
        summary["sources"] = {"weights": weights, "text": text_name, "decoder": _decoder_line(pipeline),
                              "sampler": _sampler_line(options.sampler, schedule.spec.timesteps)}
        if job.trace:  # under its partial name until complete, like every output
            write_chrome_trace(job.trace, events, metadata={"source": "measured", **summary})
        return summary


def _sampler_line(sampler: FlowMatchSampler, steps: tuple[float, ...]) -> str:
    eff = ", ".join(f"{t:g}" for t in (round(x, 1) for x in sampler.effective_timesteps(steps)))
    how = "warped" if sampler.warp else "not warped"
    return f"shift {sampler.shift:g}, steps {', '.join(f'{t:g}' for t in steps)} {how}: the model sees t = {eff}"


def _decoder_line(pipeline: _Pipeline) -> str:
    return f"{getattr(pipeline.decoder, 'name', type(pipeline.decoder).__name__)} on {pipeline.worker.device}"


class _Stream:
    """The extend hook of an interactive run: prompts typed on standard input switch the stream, the
    status shows how far it got (and, with ``realtime``, how far behind real time it runs)."""

    def __init__(self, job: GenerateJob, options: RunOptions, pipeline: _Pipeline) -> None:
        from apps.generate.interactive import Console, Pace, PromptFeed
        from apps.generate.writers import VIDEO_FPS

        self.job, self.options, self.pipeline = job, options, pipeline
        self.console = Console(sys.stdin, sys.stderr)
        self.feed = PromptFeed(sys.stdin, self.console)
        self.pace = Pace(VIDEO_FPS) if job.realtime else None
        self.schedule: Schedule | None = None
        self._shown = -1

    def extend(self, tick: int, schedule: Schedule) -> Schedule | None:
        from apps.generate.interactive import next_schedule
        from apps.generate.writers import VIDEO_FPS

        ids = []
        for text in self.feed.poll():
            pid = max(self.options.prompts, default=0) + 1
            self.options.prompts[pid] = text
            ids.append(pid)
        new = next_schedule(schedule, tick, ids, streaming=self.feed.open, max_blocks=self.job.max_blocks)
        if new is not None:
            self.schedule = new
        frames = sum(self.pipeline.worker.frames.values())
        behind = self.pace.wait(frames) if self.pace is not None else None
        if frames != self._shown:
            self._shown = frames
            pace = "" if behind is None else (f", {behind:.1f} s behind real time" if behind > 0 else
                                              f", {-behind:.1f} s ahead of real time")
            prompt = self.options.prompts.get(max(self.options.prompts, default=0), self.job.prompt)
            self.console.status(f"block {self.pipeline.finished}: {frames / VIDEO_FPS:.1f} s of video{pace}; "
                                f"prompt {prompt!r}; type a prompt and Enter to switch, Ctrl-D to end", behind)
        return new


# The decode rank's pipeline, for the launcher to close when another rank's failure stops this one.
_ABORT_HOOK: list[_Pipeline | None] = [None]


def abort_hook(drain: bool = False) -> str | None:
    """Close the decode rank's files, keeping the finished blocks (``drain``: decoding what is queued
    first, as a failure does); returns what was kept, or None on a rank that writes nothing."""
    pipeline = _ABORT_HOOK[0]
    if pipeline is None:
        return None
    pipeline.close(drain=drain)
    return pipeline.kept()


def _summary(job: GenerateJob, schedule: Schedule, result: RunResult, shown_s: list[float],
             decoder: Any) -> dict[str, Any]:
    spec = schedule.spec
    F = spec.frames_per_block
    # Wan's VAE makes 4 video frames of a latent frame (the first block: 1 + 4 (F - 1)); the toy's latent
    # is the pixels, one video frame per latent frame.
    from models.decode import PixelDecoder

    frames, first = (F, F) if isinstance(decoder, PixelDecoder) else (video_frames(1, F), video_frames(0, F))
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
        "shown_s": shown_s,
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
        result = run_rank(_rank_entry, job, job.device, job.timeout_s, on_abort=abort_hook,
                          command="cascade generate")
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
