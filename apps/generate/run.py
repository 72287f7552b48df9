"""``cascade generate`` as a function: one resolved :class:`~apps.request.RunRequest`, run in-process or on
every rank of a group (each rank receives the request whole)."""

from __future__ import annotations

import collections
import dataclasses
import math
import sys
import threading
from collections import deque
from contextlib import ExitStack
from functools import partial
from typing import Any

import torch

from apps.generate.npz import NpzWriter
from apps.progress import bar as progress_bar
from apps.progress import track
from apps.request import RunRequest, Streaming
from cascade_sched.errors import ConfigError, ExecutorError
from cascade_sched.metrics import stream_metrics, video_frames
from cascade_sched.placement import default_decode_device
from cascade_sched.schedule import Schedule, build_schedule
from cascade_sched.trace import write_chrome_trace
from cascade_sched.validate import validate
from executors.base import Executor, RunOptions, RunResult
from executors.feed import Declaration, Stream, StreamView
from models.dit import CausalWanDiT
from models.prompts import TextEncoder
from models.sampler import FlowMatchSampler

STREAM_HISTORY = 1000  # blocks whose times a stream keeps for its summary (and its trace's last events)


class _Pipeline:
    """Hand finished blocks to the decode thread, write them, and report (runs on the decode rank).

    The video and the latents are written under their partial names (``cascade_sched.outputs``), renamed
    into place by ``outputs`` when the run ends well; a run that stops keeps the blocks decoded and
    written so far, readable, under the partial names, and :meth:`kept` says so.
    """

    def __init__(self, request: RunRequest, schedule: Schedule, model: CausalWanDiT, outputs: ExitStack) -> None:
        import time

        from apps.generate.decode_thread import DecodeWorker
        from apps.generate.writers import VideoSink
        from apps.interrupts import on_interrupt
        from apps.sources import decoder_for
        from cascade_sched.outputs import committed

        self.request, self.schedule = request, schedule
        if request.source.model is None:
            check_latents_room(request, model.config)
        files = request.outputs
        self.video = outputs.enter_context(committed(files.out)) if files.out else None
        self.latents_path = outputs.enter_context(committed(files.save_latents)) if files.save_latents else None
        outputs.enter_context(on_interrupt(self.kept))
        self._lock = threading.Lock()
        self._closed = False
        device = request.source.vae_device or str(model.device)
        self.decoder: Any = decoder_for(request.source, model.config, device)
        self.sink = VideoSink(str(self.video), frames_per_block=schedule.spec.frames_per_block) if self.video else None
        if self.sink is not None:
            self.sink.open()  # start the encoder now, not inside the first block's timing
        history = None if request.streaming is None else STREAM_HISTORY  # a stream's state stays bounded
        self.worker = DecodeWorker(self.decoder, self._write, device, history=history)
        self.latents: NpzWriter | None = None  # opened with the first block: its rows' shape
        self._undecoded: deque[Any] = deque()  # latents handed over, written with their block's frames
        # block -> perf_counter when the tick loop handed it over (a stream's last ones)
        self.handed: collections.OrderedDict[int, float] = collections.OrderedDict()
        self._history = history
        terminal = request.streaming is not None and sys.stdin is not None and sys.stdin.isatty()
        # A stream on a terminal shows its status line instead.
        self.bar = progress_bar(schedule.num_blocks, "generate", "block", on=request.progress and not terminal)
        self._clock = time.perf_counter
        self._t0 = self._clock()

    def on_block(self, block: int, x0: torch.Tensor) -> None:
        self.handed[block] = self._clock()
        if self._history is not None and len(self.handed) > self._history:
            self.handed.popitem(last=False)
        if self.latents_path is not None:
            self._undecoded.append(x0.float().numpy().transpose(1, 0, 2, 3))  # (F, C, H, W): rows of frames
        self.worker.submit(block, x0)

    def _write(self, frames: Any) -> None:  # on the decode thread, in block order
        if self.sink is not None:
            self.sink.add_block(frames)
        if self.latents_path is not None:  # the latents of exactly the blocks in the video
            rows = self._undecoded.popleft()
            if self.latents is None:
                self.latents = NpzWriter(self.latents_path, "latents", rows.shape[1:])
            self.latents.append(rows)
        if self.bar is not None:
            self.bar.update(1)

    @property
    def finished(self) -> int:
        """Blocks decoded and written, all in order from block 0."""
        return self.worker.count

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
                if self.latents is not None:
                    self.latents.close()
                self._undecoded.clear()
                n = self.finished
                if n == 0:  # nothing finished: no empty file that a player would choke on
                    for path in (self.video, self.latents_path):
                        if path is not None:
                            path.unlink(missing_ok=True)

    def kept(self) -> str:
        """What a stopped run kept, for its one line: ``kept 3 of 8 blocks in x.partial.mp4``."""
        files = [str(p) for p in (self.video, self.latents_path) if p is not None and p.exists()]
        of = "" if self.request.streaming else f" of {self.schedule.num_blocks}"  # a stream has no planned end
        if not files:
            return f"{self.finished}{of} blocks finished, no file kept"
        return f"kept {self.finished}{of} blocks in {' and '.join(files)}"

    def clock_offset(self, result: RunResult) -> float:
        """perf_counter -> the run's clock: the tick loop stamps each block's time just before handing it over."""
        import statistics

        lo = result.blocks - len(result.block_done_s)
        pairs = [done - self.handed[b] for b, done in enumerate(result.block_done_s, lo) if b in self.handed]
        return statistics.median(pairs) if pairs else -self._t0

    def shown_s(self, offset: float, blocks: range) -> list[float]:
        """When each of ``blocks`` had its frames decoded and written, on the run's clock (those it knows)."""
        decoded = self.worker.decoded
        return [decoded[b][1] + offset for b in blocks if b in decoded]

    def first_shown_s(self, offset: float) -> float:
        """When block 0's frames were decoded and written, on the run's clock."""
        return self.worker.first[1] + offset if self.worker.first else math.nan


def _conditioning(request: RunRequest, texts: dict[int, str], config: Any, rank: int, world: int,
                  ) -> tuple[dict[int, torch.Tensor], TextEncoder | None, str, float]:
    """Rank 0 encodes every prompt of the timeline (each text once), frees the encoder unless prompts may
    still arrive, and shares the embeddings with the other ranks. Returns (embeddings by prompt id, the
    encoder kept for streaming or None, its name, the seconds rank 0 took to encode the first prompt: the
    part of the first-frame latency before the tick loop starts)."""
    import time

    from apps.sources import encode_prompts, share_from_rank0, text_source
    from models.prompts import save_embeddings

    encoder: TextEncoder | None = None
    payload: tuple[dict[int, torch.Tensor], str] | None = None
    first_s = 0.0
    if rank == 0:
        encoder = text_source(request.source, config, list(texts.values()))
        name = encoder.name
        t = time.perf_counter()
        embeddings = encode_prompts(encoder, {0: texts[0]}, config)
        first_s = time.perf_counter() - t
        embeddings.update(encode_prompts(encoder, {p: x for p, x in texts.items() if p}, config))
        if request.outputs.save_text_embeddings:
            save_embeddings(request.outputs.save_text_embeddings, {texts[p]: e for p, e in embeddings.items()})
        if request.streaming is None:
            encoder.close()  # every prompt is encoded: free the weights before the DiT loads
            encoder = None
        payload = (embeddings, name)
    embeddings, name = share_from_rank0(payload, rank, world)
    return embeddings, encoder, name, first_s


def _executor(request: RunRequest, schedule: Schedule, model: CausalWanDiT, rank: int) -> Executor:
    """The request's executor for this process: the reference one in-process, the distributed one on a
    rank of a group, or the compiled one (in-process or this rank's share) with its graphs compiled now,
    before the stream's clock starts."""
    import torch.distributed as dist

    if request.executor == "compiled":
        from executors.compiled import CompiledExecutor

        compiled = CompiledExecutor(request.backend, request.engine_cache,
                                    progress=partial(track, unit="bucket") if request.progress and rank == 0 else None)
        with torch.inference_mode():
            compiled.prepare(schedule, model)
        return compiled
    if dist.is_initialized():
        from executors.distributed import DistributedExecutor

        return DistributedExecutor()
    from executors.reference import ReferenceExecutor

    return ReferenceExecutor()


def run_job(request: RunRequest, rank: int = 0, world: int = 1, notes: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """Run ``request``: in-process (world 1) or as this rank of an initialised group.

    ``notes`` (what :func:`apps.request.resolve` had to say) are printed by the decode rank once
    everything has loaded: a run refused while loading (a checkpoint, embeddings or decoder that does not
    fit) prints its refusal alone. Returns the summary on the decode rank (0), None elsewhere.
    """
    import torch.distributed as dist

    from apps.sources import build_sampler, load_model
    from executors.distributed import rank_slice

    schedule = validate(build_schedule(request.spec))
    distributed = dist.is_initialized()
    if distributed and world != schedule.num_devices:
        raise ConfigError("nproc", f"the world size {world} must equal `--devices` {schedule.num_devices}")
    texts = {0: request.prompt, **dict(request.prompts)}
    config = request.source.config()
    if config is None:  # the geometry comes from the checkpoint's shapes: load first, then encode
        model, weights = load_model(request.source)
        embeddings, encoder, text_name, prompt_s = _conditioning(request, texts, model.config, rank, world)
    else:  # encode first, so the text encoder's memory is free before the DiT loads (this rank's layers only)
        embeddings, encoder, text_name, prompt_s = _conditioning(request, texts, config, rank, world)
        part = rank_slice(schedule.spec, config, rank) if distributed else None
        model, weights = load_model(request.source, part)
    streaming = request.streaming
    options = RunOptions(prompt=request.prompt, prompts=dict(request.prompts), embeddings=embeddings,
                         text_encoder=encoder, fail_at=request.fail_at, timeout_s=request.timeout_s,
                         sampler=build_sampler(request.source, model.config.name),
                         history=None if streaming is None else STREAM_HISTORY)
    executor = _executor(request, schedule, model, rank)
    # A stream runs until its input ends (or --max-blocks): the engine declares its blocks as it goes.
    work: Schedule | Stream = schedule
    if streaming is not None:
        from apps.streams import first_declaration

        work = Stream(first_declaration(request.spec), streaming.max_blocks)
    with ExitStack() as outputs:  # rank 0's files: renamed into place when the run ends well
        pipeline = _Pipeline(request, schedule, model, outputs) if rank == 0 else None
        _ABORT_HOOK[0] = pipeline
        stream = _Stream(request, options, pipeline) if streaming and pipeline is not None else None
        for note in notes if rank == 0 else ():
            print(note, file=sys.stderr, flush=True)
        try:
            with torch.inference_mode():
                result = executor.run(work, model, options, pipeline.on_block if pipeline else None,
                                      hook=stream.hook if stream is not None else None)
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
            offset = pipeline.clock_offset(result)
            events = [e for e in events if e.track != "decode"] + pipeline.worker.events(
                offset, default_decode_device(request.spec))
        if distributed:
            gathered: list[Any] | None = [None] * world if rank == 0 else None
            dist.gather_object(events, gathered, dst=0)
            if gathered is not None:
                events = [e for evs in gathered for e in evs]
        if pipeline is None:
            return None
        summary = _summary(request, result, pipeline, offset, prompt_s)
        summary["model"] = model.config.name
        all_texts = {0: request.prompt, **options.prompts}
        switches = schedule.spec.switches if stream is None else stream.switches
        summary["switches"] = [(at, all_texts[pid]) for at, pid in switches]
        summary["sources"] = {"weights": weights, "text": text_name, "decoder": _decoder_line(pipeline),
                              "sampler": _sampler_line(options.sampler, schedule.spec.timesteps)}
        if request.outputs.trace:  # under its partial name until complete, like every output
            write_chrome_trace(request.outputs.trace, events, metadata={"source": "measured", **summary})
        return summary


def _sampler_line(sampler: FlowMatchSampler, steps: tuple[float, ...]) -> str:
    eff = ", ".join(f"{t:g}" for t in (round(x, 1) for x in sampler.effective_timesteps(steps)))
    how = "warped" if sampler.warp else "not warped"
    return f"shift {sampler.shift:g}, steps {', '.join(f'{t:g}' for t in steps)} {how}: the model sees t = {eff}"


def _decoder_line(pipeline: _Pipeline) -> str:
    return f"{getattr(pipeline.decoder, 'name', type(pipeline.decoder).__name__)} on {pipeline.worker.device}"


class _Stream:
    """The hook of an interactive stream: prompts typed on standard input switch it at the first block not
    declared yet, the end of input ends it, and the status shows how far it got (and, with ``realtime``,
    how far behind real time it runs)."""

    def __init__(self, request: RunRequest, options: RunOptions, pipeline: _Pipeline) -> None:
        from apps.generate.interactive import Console, Pace, PromptFeed
        from apps.generate.writers import VIDEO_FPS
        from apps.streams import Timeline

        self.settings = request.streaming or Streaming()
        self.prompt, self.options, self.pipeline, self.source = request.prompt, options, pipeline, request.source
        self.console = Console(sys.stdin, sys.stderr)
        self.feed = PromptFeed(sys.stdin, self.console)
        self.pace = Pace(VIDEO_FPS) if self.settings.realtime else None
        self.timeline = Timeline(request.spec)
        self.switches: list[tuple[int, int]] = list(request.spec.switches)  # for the summary: one per prompt typed
        self.ended = False
        self.min_blocks = request.spec.num_blocks
        self._shown = -1

    def unknown(self, prompt: str) -> str:
        """``" (the toy ignores 'purple')"`` for a typed prompt with words the toy does not know."""
        from apps.sources import prompt_notes

        if not prompt_notes(self.source, [prompt]):
            return ""
        from models.toy_text import unknown_words

        return f" (the toy ignores {', '.join(map(repr, unknown_words(prompt)))})"

    def hook(self, tick: int, view: StreamView) -> Declaration | None:
        from apps.generate.writers import VIDEO_FPS

        declaration: Declaration | None = None
        for text in self.feed.poll():  # the newest prompt wins the next block
            pid = max(self.options.prompts, default=0) + 1
            self.options.prompts[pid] = text
            declaration, at = self.timeline.switch(view, pid)
            if at is not None:
                if self.switches and self.switches[-1][0] == at:
                    self.switches[-1] = (at, pid)
                else:
                    self.switches.append((at, pid))
        # Ctrl-D: the blocks declared finish (at least --blocks), no new one starts
        if not self.feed.open and not self.ended and view.declared >= self.min_blocks:
            self.ended = True
            declaration = Declaration(switch=declaration.switch if declaration else None, end=True)
        frames = self.pipeline.worker.frames_total
        behind = self.pace.wait(frames) if self.pace is not None else None
        if frames != self._shown:
            self._shown = frames
            pace = "" if behind is None else (f", {behind:.1f} s behind real time" if behind > 0 else
                                              f", {-behind:.1f} s ahead of real time")
            prompt = self.options.prompts.get(self.timeline.latest, self.prompt)
            unknown = self.unknown(prompt)
            self.console.status(f"block {self.pipeline.finished}: {frames / VIDEO_FPS:.1f} s of video{pace}; "
                                f"prompt {prompt!r}{unknown}; type a prompt and Enter to switch, Ctrl-D to end",
                                behind)
        return declaration


def check_latents_room(request: RunRequest, config: Any) -> None:
    """The whole latents file of a planned run (a stream has no planned length) must fit on its disk."""
    path = request.outputs.save_latents
    if path is None or request.streaming is not None:
        return
    from apps.generate.npz import NPY_HEADER
    from apps.generate.writers import check_room

    float32 = 4
    need = request.spec.num_blocks * math.prod(config.latent_shape()) * float32 + NPY_HEADER + 512  # + zip records
    check_room("--save-latents", path, need)


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


def _summary(request: RunRequest, result: RunResult, pipeline: _Pipeline, offset: float,
             prompt_s: float) -> dict[str, Any]:
    """The run's figures (``cascade_sched.metrics``), every time in seconds from the request: the tick loop
    starts ``prompt_s`` after it (the first prompt's encoding; loading the weights came before). A stream's
    cover the blocks of its bounded history (its first frame is block 0's)."""
    spec = request.spec
    F = spec.frames_per_block
    # Wan's VAE makes 4 video frames of a latent frame (the first block: 1 + 4 (F - 1)); the toy's latent
    # is the pixels, one video frame per latent frame.
    from models.decode import PixelDecoder

    frames, first = (F, F) if isinstance(pipeline.decoder, PixelDecoder) else (video_frames(1, F), video_frames(0, F))
    lo = result.blocks - len(result.block_done_s)
    done = [prompt_s + t for t in result.block_done_s]
    shown = [prompt_s + t for t in pipeline.shown_s(offset, range(lo, result.blocks))]
    in_flight = build_schedule(spec.replace(num_blocks=min(result.blocks, 2 * spec.tick_span) or 1, switches=(),
                                            lag=spec.lags[-1] if spec.lags else None)).max_in_flight()
    metrics = stream_metrics(done, shown if len(shown) == len(done) else None, max_in_flight=in_flight,
                             window=spec.window, frames=frames, end_s=prompt_s + result.wall_s)
    if lo:  # the window starts mid-stream: the first frame is block 0's, kept apart
        metrics = dataclasses.replace(metrics, first_frame_s=prompt_s + pipeline.first_shown_s(offset))
    return {
        "executor": request.executor,
        "blocks": result.blocks,
        "devices": spec.num_devices,
        "video_frames_per_block": frames,
        "video_frames": first + frames * (result.blocks - 1),
        **metrics.to_dict(),
        "prompt_encode_s": prompt_s,
        "block_done_s": done,
        "shown_s": shown,
        "forward_s": result.forward_s,
        "wall_s": metrics.end_s,
        "peak_kv_bytes": result.peak_kv_bytes,
    }


def run_generate(request: RunRequest, notes: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run ``request``: in this process (the reference executor, or the compiled one without ranks), or on
    every rank (the distributed executor, or the compiled one with ``nproc`` or under torchrun): joining
    torchrun's group, or spawning ``nproc`` local ranks (default: one per device of the spec). ``notes``:
    see :func:`run_job`."""
    from apps.interrupts import say
    from executors.launch import run_rank, spawn
    from executors.torchrun import under_torchrun

    if request.source.model is not None:  # else its geometry is the checkpoint's: checked once it is read
        from models.config import get_config

        check_latents_room(request, get_config(request.source.model))
    ranks = request.executor == "distributed" or (request.executor == "compiled" and (
        request.nproc is not None or under_torchrun()))
    if not ranks:
        summary = run_job(request, notes=notes)
        if summary is None:
            raise ExecutorError(f"the {request.executor} run returned no summary")
        return summary
    device = request.source.device
    if under_torchrun():
        result = run_rank(_rank_entry, (request, notes), device, request.timeout_s,
                          partial(say, "cascade generate"), on_abort=abort_hook)
        return result if result is not None else {}
    result = spawn(_rank_entry, (request, notes), request.nproc or request.spec.num_devices, device,
                   request.timeout_s, on_abort=abort_hook)
    if not isinstance(result, dict):
        raise ExecutorError("rank 0 returned no summary")
    return result


def _rank_entry(payload: tuple[RunRequest, tuple[str, ...]], rank: int, world: int) -> dict[str, Any] | None:
    _ABORT_HOOK[0] = None
    request, notes = payload
    return run_job(request, rank, world, notes)
