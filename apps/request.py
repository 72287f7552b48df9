"""One request, resolved once: what a job's flags ask for, as frozen values that every rank receives whole.

- :class:`ModelSource`: where the model comes from (its geometry, a published pipeline's preset, the
  checkpoint, its weights entry, a LoRA, the sampler shift), its text conditioning and its decoder, the
  devices each runs on, and the dtype;
- :class:`Outputs`: the files a generation writes;
- :class:`RunRequest`: the ``CascadeSpec``, the source, the prompts, the executor and its world, the
  outputs, and how a stream goes on.

:func:`resolve` builds a :class:`RunRequest` from the flags of ``cascade generate`` or ``cascade serve``:
a preset's schedule settings and the toy model's defaults apply where the user did not type the flag,
every flag and path is checked, and the notes to print come back with the request (the command prints
them once every check passed, so a refused command prints only its refusal). It writes and prints
nothing, and leaves the parsed flags as they were; nothing downstream reads a flag again.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from apps.flags import DEFAULT_PROMPT, MODEL_NAMES, model_folder, read_timeline
from cascade_sched.bounds import MAX_TIMEOUT_S, gib
from cascade_sched.cliargs import Invocation, check_outputs, spec_from_args
from cascade_sched.errors import ConfigError, check_float, check_range
from cascade_sched.outputs import check_output
from cascade_sched.spec import CascadeSpec
from executors.devices import check_device
from executors.torchrun import under_torchrun, world_size
from models.config import parse_resolution
from models.dtypes import check_dtype, dtype_bytes

if TYPE_CHECKING:
    from models.config import ModelConfig
    from models.presets import PipelinePreset

__all__ = ["DEFAULT_OUT", "ModelSource", "Outputs", "Resolved", "RunRequest", "Streaming", "resolve"]

DEFAULT_OUT = "cascade-out"  # where `cascade generate` writes when no --out is given
MAX_STREAM_BLOCKS = 10**8  # the longest bounded stream a request may ask for (--max-blocks; 0: unbounded)
EXECUTORS = ("reference", "distributed", "compiled")


@dataclass(frozen=True)
class ModelSource:
    """Where a run's model, text conditioning and decoder come from, and where they run."""

    model: str | None = "toy"  # the DiT geometry (models.config); None: the checkpoint's own shapes
    preset: str | None = None  # models/presets.py: sampler, weights entry, LoRA alpha
    checkpoint: str | None = None  # DiT weights, or a cascade model folder; None: toy's shipped, else random
    weights: str | None = None  # generator | ema: the checkpoint entry; None: the preset's, or the only one
    lora: str | None = None  # PEFT LoRA adapter merged at load
    shift: float | None = None  # sampler shift; None: the preset's, or the one saved with the weights
    model_dir: str | None = None  # diffusers-style Wan2.1 folder: text_encoder/, tokenizer/, vae/
    text_encoder: str | None = None  # umT5 folder (or Wan2.1 folder)
    text_encoder_device: str = "cpu"
    text_embeddings: str | None = None  # FILE of precomputed embeddings, or "stand-in"
    vae: str | None = None  # AutoencoderKLWan folder, or TAEHV weights file
    vae_device: str | None = None  # None: the denoising device
    device: str = "cpu"
    dtype: str = "float32"
    frames_per_block: int | None = None  # latent frames per block; None: the model's
    resolution: tuple[int, int] | None = None  # video (height, width) in pixels; None: the model's

    def config(self) -> ModelConfig | None:
        """The model's geometry at this source's block size and resolution; None when it comes from the
        checkpoint's own shapes (no ``model`` named)."""
        if self.model is None:
            return None
        from models.config import get_config

        return get_config(self.model, frames_per_block=self.frames_per_block, resolution=self.resolution)

    @property
    def decode_device(self) -> str:
        """Where decoding runs: ``vae_device``, else the denoising device."""
        return self.vae_device or self.device


@dataclass(frozen=True)
class Outputs:
    """The files a generation writes (None: not written)."""

    out: str | None = None  # the video, .mp4 or .gif
    save_latents: str | None = None  # .npz
    trace: str | None = None  # the measured Chrome trace, .json
    save_text_embeddings: str | None = None  # .safetensors
    made_folder: str | None = None  # the default --out folder this run creates (removed if it writes nothing)


@dataclass(frozen=True)
class Streaming:
    """A stream that goes on while it runs (``--interactive``, ``cascade serve``): prompts arrive, the engine
    declares blocks as it goes (``executors.feed.Stream``)."""

    realtime: bool = False  # hold the stream to the video's frame rate
    max_blocks: int | None = None  # stop here; None: until its input ends (or its client leaves)


@dataclass(frozen=True)
class RunRequest:
    """Everything every rank needs to run one job (frozen plain values: it pickles to spawned ranks)."""

    spec: CascadeSpec
    source: ModelSource = field(default_factory=ModelSource)
    prompt: str = DEFAULT_PROMPT  # prompt id 0
    prompts: tuple[tuple[int, str], ...] = ()  # (id, text) of the switches' prompts
    executor: str = "reference"  # reference | distributed | compiled
    nproc: int | None = None  # ranks to spawn when not under torchrun; None: one per device of the spec
    backend: str = "inductor"  # compiled executor: inductor | tensorrt
    engine_cache: str | None = None  # compiled executor: artifacts under DIR/rank{r}/, loaded when present
    timeout_s: float = 60.0  # how long a rank waits on a peer
    fail_at: tuple[int, int] | None = None  # tests: (rank, tick) fails
    outputs: Outputs = field(default_factory=Outputs)
    progress: bool = True
    streaming: Streaming | None = None  # a stream: --interactive (prompts from standard input), or served


class Resolved(NamedTuple):
    """A resolved request and the notes to print once every check has passed."""

    request: RunRequest
    notes: tuple[str, ...]


def resolve(run: Invocation) -> Resolved:
    """The request ``cascade generate``'s or ``cascade serve``'s flags describe (see the module docstring):
    one ``ConfigError`` naming the first bad flag, else the request and its notes."""
    args, typed = run.args, run.typed
    serve = args.command == "serve"
    notes: list[str] = []
    preset = _preset(args)
    defaults = _preset_defaults(args, typed, preset, notes)
    if _toy(args, preset):
        # The attention window the toy was trained for, as a preset's window.
        from models.weights import TOY_WINDOW

        defaults["window"] = TOY_WINDOW
    streaming: Streaming | None
    if serve:
        _check_stream_length(args, typed, defaults)
        defaults["num_blocks"] = 1  # a stream's first block: the engine declares the others as it goes
        outputs, streaming = Outputs(), Streaming(max_blocks=args.max_blocks or None)
    else:
        outputs, streaming = _check_generate(args, typed)
    check_dtype("--dtype", args.dtype)
    check_float("--shift", args.shift, 0, 1000, open_lo=True)
    check_float("--timeout", args.timeout, 0, MAX_TIMEOUT_S, open_lo=True, what=" seconds")
    source = _source(args, preset, notes)
    config = _check_geometry(args, source)
    spec: CascadeSpec = spec_from_args(args, run.machine, defaults, typed,
                                       model_layers=config.num_layers if config is not None else None)
    if config is not None:
        spec = spec.replace(frames_per_block=config.frames_per_block)
        if spec.placement == "layers" and spec.num_layers != config.num_layers:
            raise ConfigError("num_layers", f"`--layers` must be model {config.name}'s {config.num_layers} layers "
                                            f"(the ring splits those), got {spec.num_layers}")
    if not serve:
        _check_ranks(args, spec)
    _check_memory(spec, source, run.machine.memory_bytes)
    prompt: str = args.prompt
    prompts: tuple[tuple[int, str], ...] = ()
    if not serve:
        spec, prompt, prompts = _prompts(args, typed, spec, _toy(args, preset))
        if args.out and not (args.vae or args.model_dir) and (args.model or args.checkpoint or args.preset) and \
                args.model != "toy":
            notes.append("note: no --vae: decoding with the latent preview (a fixed projection, not the Wan VAE); "
                         "pass --vae DIR or --model-dir DIR for the real video")
    ranks: dict[str, Any] = {} if serve else {  # how generate runs its ranks (serve: one way, under torchrun)
        "nproc": args.nproc, "backend": args.backend or "inductor", "engine_cache": args.engine_cache,
        "progress": not args.no_progress}
    request = RunRequest(spec=spec, source=source, prompt=prompt, prompts=prompts, executor=args.executor,
                         timeout_s=args.timeout, fail_at=args.fail_at, outputs=outputs, streaming=streaming, **ranks)
    return Resolved(request, tuple(notes))


def _preset(args: argparse.Namespace) -> PipelinePreset | None:
    if args.preset is None:
        return None
    from models.presets import get_preset

    preset = get_preset(args.preset)
    if preset.lora is not None and not args.lora:
        raise ConfigError("lora", f"preset {preset.name} merges a LoRA (rank {preset.lora.rank}): pass --lora PATH "
                                  "(its lora.pt)")
    return preset


def _preset_defaults(args: argparse.Namespace, typed: frozenset[str], preset: PipelinePreset | None,
                     notes: list[str]) -> dict[str, Any]:
    """The spec settings a preset names (timesteps, window, sink, switch policy), in the flags' units, for
    the flags the user did not type; a flag the user typed wins, with a note where it differs."""
    if preset is None:
        return {}
    out: dict[str, Any] = {}
    for name, value in preset.spec_fields().items():
        value = tuple(value) if name == "timesteps" else (value or 0) if name == "window" else value
        if name not in typed:
            out[name] = value
            continue
        current = tuple(getattr(args, name)) if name == "timesteps" else getattr(args, name)
        if current != value:
            notes.append(f"note: --{name.replace('_', '-')} {current} overrides preset {preset.name}'s {value}")
    return out


def _toy(args: argparse.Namespace, preset: PipelinePreset | None) -> bool:
    """Whether the run is the shipped toy model's (no other model, model folder, checkpoint or preset named)."""
    return (args.model or ("toy" if args.model_dir is None else None)) == "toy" and not args.checkpoint and \
        preset is None


def _check_stream_length(args: argparse.Namespace, typed: frozenset[str], defaults: dict[str, Any]) -> None:
    """``cascade serve``: a stream's length is ``--max-blocks``, and its prompts come from the clients."""
    if "num_blocks" in typed:
        raise ConfigError("num_blocks", "`cascade serve` streams until `--max-blocks`; give that instead of `--blocks`")
    if "switches" in typed:
        raise ConfigError("switches", "prompt switches come from the clients of `cascade serve`, not `--switch`")
    check_range("--max-blocks", args.max_blocks, 0, MAX_STREAM_BLOCKS, " (0: until the client leaves)")
    window = defaults["window"] if "window" in defaults and "window" not in typed else args.window
    if not window and not 0 < args.max_blocks <= 64:
        raise ConfigError("window", "an unbounded `--window` keeps every block's K/V and attends to all of it; "
                                    "give `--window` (default 7) or `--max-blocks` 1..64")


def _check_generate(args: argparse.Namespace, typed: frozenset[str]) -> tuple[Outputs, Streaming | None]:
    """``cascade generate``'s own flags, and every output path, before any work."""
    from apps.host import cpu_count

    check_outputs(args, {"out": (".mp4", ".gif"), "save_latents": (".npz",), "trace": (".json",),
                         "save_text_embeddings": (".safetensors",), "engine_cache": None},
                  folders=("engine_cache",))
    check_range("--nproc", args.nproc, 1, max(64, 8 * cpu_count()))
    if args.nproc is not None and args.executor == "reference":
        raise ConfigError("nproc", "`--nproc` needs `--executor distributed` or `--executor compiled`")
    for flag, value in (("backend", args.backend), ("engine_cache", args.engine_cache)):
        if value is not None and args.executor != "compiled":
            raise ConfigError(flag, f"`--{flag.replace('_', '-')}` needs `--executor compiled`")
    if args.interactive and args.executor != "reference":
        raise ConfigError("interactive", "`--interactive` runs with `--executor reference` only")
    if args.realtime and not args.interactive:
        raise ConfigError("realtime", "`--realtime` paces an `--interactive` stream; add `--interactive`")
    if args.max_blocks is not None:
        if not args.interactive:
            raise ConfigError("max_blocks", "`--max-blocks` bounds an `--interactive` stream; give `--blocks` "
                                            "otherwise")
        if args.max_blocks:
            check_range("--max-blocks", args.max_blocks, max(1, args.num_blocks), MAX_STREAM_BLOCKS,
                        f" (at least `--blocks` {args.num_blocks}), or 0: until input ends")
        check_range("--max-blocks", args.max_blocks, 0, MAX_STREAM_BLOCKS)
    if under_torchrun() and world_size() > 1 and args.executor == "reference":
        raise ConfigError("executor", "under torchrun, `cascade generate` needs `--executor distributed` or "
                                      "`--executor compiled` (with reference, every rank would write the same "
                                      "files)")
    streaming = None
    if args.interactive:
        streaming = Streaming(args.realtime, args.max_blocks or None)
    out, made = args.out, None
    if out is None and not (args.save_latents or args.trace or args.save_text_embeddings):
        check_output("--out", DEFAULT_OUT, directory=True)
        out, made = default_out(args), DEFAULT_OUT
    return Outputs(out, args.save_latents, args.trace, args.save_text_embeddings, made), streaming


def _check_geometry(args: argparse.Namespace, source: ModelSource) -> ModelConfig | None:
    """The model's geometry at ``--frames-per-block`` and ``--resolution`` (each checked against the model, one
    line naming the flag), or None when it comes from a ``--checkpoint``'s shapes, which those flags and
    ``--placement layers`` (without ``--layers``) cannot know before the weights are read."""
    if source.model is not None:
        return source.config()
    for flag, given in (("frames_per_block", source.frames_per_block is not None),
                        ("resolution", source.resolution is not None),
                        ("placement", args.placement == "layers" and args.num_layers is None)):
        if given:
            raise ConfigError(flag, f"`--{flag.replace('_', '-')}` needs the model's geometry: give `--model` (or "
                                    "`--preset`) with `--checkpoint`")
    return None


def _check_ranks(args: argparse.Namespace, spec: CascadeSpec) -> None:
    """The ranks ``cascade generate`` would spawn, and the compiled executor's backend, before any starts."""
    if args.nproc is not None and args.nproc != spec.num_devices:
        raise ConfigError("nproc", f"`--nproc` {args.nproc} must equal `--devices` {spec.num_devices} (one rank per "
                                   "device of the schedule)")
    if args.executor == "compiled" and spec.placement == "layers":
        from executors.compiled import refuse_layers

        refuse_layers()
    if args.executor == "compiled":
        from executors.compiled import check_backend

        check_backend(args.backend or "inductor", args.device)


def default_out(args: argparse.Namespace) -> str:
    """``cascade-out/<model>-<UTC time>.mp4``: the file a run with no ``--out`` writes (and says so)."""
    folder = Path(args.model_dir).resolve().name if args.model_dir else None
    name = (args.model or args.preset or folder or ("checkpoint" if args.checkpoint else "toy")).replace("/", "_")
    return f"{DEFAULT_OUT}/{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.mp4"


def _source(args: argparse.Namespace, preset: PipelinePreset | None, notes: list[str]) -> ModelSource:
    """The model source the flags name, each path checked before any work (one line naming its flag)."""
    for flag in ("checkpoint", "lora", "text_encoder", "vae"):
        value = getattr(args, flag)
        if value is not None and not Path(value).exists():
            raise ConfigError(flag, f"`--{flag.replace('_', '-')}` {value!r} does not exist")
    emb = args.text_embeddings
    if emb is not None and emb != "stand-in" and not Path(emb).is_file():
        raise ConfigError("text_embeddings", f"`--text-embeddings` {emb!r} is neither a file nor 'stand-in'")
    if emb is not None and args.text_encoder is not None:
        raise ConfigError("text_embeddings", "give either `--text-embeddings` or `--text-encoder`, not both")
    name = args.model or (preset.model if preset is not None else None)
    folder = model_folder(args.model_dir, need_text=emb is None and args.text_encoder is None,
                          need_vae=args.vae is None, need_dit=name is None and not args.checkpoint)
    checkpoint = args.checkpoint
    if folder is not None and checkpoint is None and folder.transformer is not None:
        checkpoint = str(folder.transformer)  # the folder's own DiT; its config names the geometry
        if name is None:
            from models.folders import transformer_config

            geometry = transformer_config(folder.transformer).name
            name = geometry if geometry in MODEL_NAMES.split(" | ") else None
    if args.weights and not args.checkpoint:
        raise ConfigError("weights", "`--weights` picks an entry of `--checkpoint`, and none was given")
    if args.lora and not args.checkpoint:
        raise ConfigError("lora", "`--lora` needs `--checkpoint` (the base weights it adapts)")
    if name is not None and emb is None and args.text_encoder is None and args.model_dir is None:
        from models.config import get_config
        from models.prompts import default_text_encoder

        default_text_encoder(get_config(name))  # refused here, before any rank starts, unless a test model
    if preset is not None and args.model is not None and args.model != preset.model:
        notes.append(f"note: --model {args.model} overrides preset {preset.name}'s {preset.model}")
    for flag in ("--device", "--text-encoder-device", "--vae-device"):
        device = getattr(args, flag[2:].replace("-", "_"))
        if device is not None:
            check_device(device, flag=flag)
    return ModelSource(
        model=name if name is not None else (None if checkpoint else "toy"), preset=args.preset,
        checkpoint=checkpoint, weights=args.weights, lora=args.lora, shift=args.shift,
        model_dir=args.model_dir, text_encoder=args.text_encoder, text_encoder_device=args.text_encoder_device,
        text_embeddings=emb, vae=args.vae, vae_device=args.vae_device, device=args.device, dtype=args.dtype,
        frames_per_block=args.frames_per_block, resolution=parse_resolution(args.resolution),
    )


def _check_memory(spec: CascadeSpec, source: ModelSource, available: int) -> None:
    """Refuse a run on the CPU whose memory, as the simulator's memory model prices one process holding the
    whole schedule (weights, K/V at its peak, activations), plus the latents it returns, would not fit in
    90% of the ``available`` bytes."""
    if source.device != "cpu" or source.model is None:
        return  # a GPU's memory is the simulator's to plan; a checkpoint's own shapes are known once read
    from simulator.memory import process_memory

    try:  # one process holds every layer of every device: the same pool as one device running it all
        whole = spec.replace(placement="block", rings=1, layer_split=None) if spec.placement == "layers" else spec
        need = process_memory(whole, source.model, dtype_bytes(source.dtype))
    except ConfigError:
        return  # an unknown name is refused, with the valid ones, where the model is built
    latents = spec.num_blocks * need.latent_bytes_per_block
    if need.peak_bytes + latents > 0.9 * available:
        raise ConfigError("num_blocks", f"`--blocks` {spec.num_blocks} of {source.model} holds ~{gib(latents)} of "
                                        f"latents and ~{gib(need.peak_bytes)} of weights, K/V cache and "
                                        f"activations at its peak, more than the {gib(available)} available"
                                        + ("" if spec.window else "; give `--window`"))


def _prompts(args: argparse.Namespace, typed: frozenset[str], spec: CascadeSpec, toy: bool,
             ) -> tuple[CascadeSpec, str, tuple[tuple[int, str], ...]]:
    """The prompt timeline: ``--prompts``, ``--switch`` with numbered stand-ins of ``--prompt``, or, for the
    toy with no prompt typed, its demo (a switch, ``models.toy_world.DEMO``) when the run reaches it."""
    if args.prompts:
        if args.switches:
            raise ConfigError("prompts", "give prompt switches either with `--prompts` or with `--switch`")
        texts, switches = read_timeline(args.prompts, args.prompt, num_blocks=spec.num_blocks)
        return spec.replace(switches=switches), args.prompt, tuple((p, t) for p, t in texts.items() if p)
    if args.switches:
        return spec, args.prompt, tuple((pid, f"{args.prompt} (prompt {pid})") for _, pid in args.switches if pid)
    if not toy or "prompt" in typed or args.interactive:
        return spec, args.prompt, ()
    from models.toy_world import DEMO

    if spec.num_blocks <= DEMO[-1][0]:
        return spec, DEMO[0][1], ()
    switches = tuple((at, i) for i, (at, _) in enumerate(DEMO) if i)
    return spec.replace(switches=switches), DEMO[0][1], tuple((i, text) for i, (_, text) in enumerate(DEMO) if i)
