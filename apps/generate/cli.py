"""``cascade generate``: run a schedule for real and write the video, latents and a measured trace.

Imports torch only when the command runs, so ``cascade schedule`` stays light.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from collections.abc import Callable
from typing import Any

# models.presets.PRESETS, spelled here so that building the parser imports no torch (a test keeps them equal).
DEFAULT_PROMPT = "a red ball bouncing"
PRESET_NAMES = "self-forcing | causvid | causvid-warp4 | longlive | krea-14b"


def register(sub: Any) -> dict[str, Callable[[argparse.Namespace], int]]:
    from cascade_sched.cliargs import add_device_args, add_model_source_args, add_schedule_args, int_pair

    p = sub.add_parser("generate", help="generate a video by running the schedule with a model")
    add_schedule_args(p)
    add_model_source_args(p, preset_names=PRESET_NAMES)
    g = p.add_argument_group("generation")
    g.add_argument("--prompt", default=DEFAULT_PROMPT, help="the text prompt (the toy model, with none given: "
                   "its demo timeline, a switch from 'red green slow' to 'red green blue fast' at block 3)")
    g.add_argument("--prompts", default=None, metavar="PATH",
                   help="prompt timeline: a JSON or YAML list of {at_block, prompt} (switches mid-stream; "
                        "default none; examples/story.yaml)")
    g.add_argument("--save-text-embeddings", default=None, metavar="FILE.safetensors",
                   help="write the embeddings of every prompt of the run (default none)")
    g.add_argument("--interactive", action="store_true",
                   help="read new prompts from standard input while streaming; each applies from the first "
                        "block not yet started, and the stream goes on until input ends")
    g.add_argument("--realtime", action="store_true", help="with --interactive: hold the stream to the video's "
                   "frame rate (16 fps); the status shows when it falls behind")
    g.add_argument("--max-blocks", type=int, default=None,
                   help="with --interactive: stop growing here (default: the larger of --blocks and 1000)")
    g.add_argument("--executor", default="reference", choices=("reference", "distributed", "compiled"),
                   help="reference (one process), distributed (one rank per device) or compiled (graphs "
                   "compiled per forward shape; one process, or one rank per device with --nproc/torchrun)")
    g.add_argument("--backend", default=None, choices=("inductor", "tensorrt"),
                   help="compiled executor's backend (default inductor; tensorrt needs torch-tensorrt and CUDA)")
    g.add_argument("--engine-cache", default=None, metavar="DIR",
                   help="compiled executor: save compiled artifacts under DIR/rank{r}/, load them when present "
                        "(default none)")
    g.add_argument("--nproc", type=int, default=None,
                   help="ranks to spawn when not under torchrun (default and required: --devices)")
    add_device_args(g)
    g.add_argument("--out", default=None, metavar="PATH.mp4|PATH.gif",
                   help=f"video file to write, .mp4 or .gif, block by block (default {DEFAULT_OUT}/"
                        "<model>-<time>.mp4)")
    g.add_argument("--save-latents", default=None, metavar="PATH.npz", help="write every latent frame (default none)")
    g.add_argument("--trace", default=None, metavar="PATH.json", help="write the measured Chrome trace (default none)")
    g.add_argument("--timeout", type=float, default=60.0, help="seconds a rank waits on a peer (default 60)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--fail-at", type=int_pair("RANK:TICK"), default=None, help=argparse.SUPPRESS)  # tests: RANK:TICK
    return {"generate": _cmd_generate}


DEFAULT_OUT = "cascade-out"  # where `cascade generate` writes when no --out is given


def default_out(args: argparse.Namespace) -> str:
    """``cascade-out/<model>-<UTC time>.mp4``: the file a run with no ``--out`` writes (and says so)."""
    import time

    name = (args.model or args.preset or ("checkpoint" if args.checkpoint else "toy")).replace("/", "_")
    return f"{DEFAULT_OUT}/{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.mp4"


def _cmd_generate(args: argparse.Namespace) -> int:
    from apps.generate.run import GenerateJob, run_generate
    from cascade_sched.cliargs import spec_from_args
    from cascade_sched.errors import ConfigError

    preset = _apply_preset(args)
    demo = _apply_toy_defaults(args)
    made_out = _check_generate(args)
    spec = spec_from_args(args)
    _check_sources(args, preset)
    _check_memory(args, spec)
    from executors.launch import check_device

    for flag, device in (("device", args.device), ("text_encoder_device", args.text_encoder_device),
                         ("vae_device", args.vae_device)):
        if device is not None:
            try:
                check_device(device)
            except ConfigError as e:
                raise ConfigError(flag, str(e).replace("--device", f"--{flag.replace('_', '-')}")) from None
    prompts: tuple[tuple[int, str], ...] = ()
    if args.prompts:
        from apps.generate.interactive import read_timeline

        if args.switch:
            raise ConfigError("prompts", "give prompt switches either with `--prompts` or with `--switch`")
        texts, switches = read_timeline(args.prompts, args.prompt)
        spec = type(spec).from_dict({**spec.to_dict(), "switches": [list(sw) for sw in switches]})
        prompts = tuple((pid, text) for pid, text in texts.items() if pid)
    elif args.switch:
        prompts = tuple((pid, f"{args.prompt} (prompt {pid})") for _, pid in args.switch if pid)
    elif demo:
        spec = type(spec).from_dict({**spec.to_dict(), "switches": [[at, i] for i, (at, _) in enumerate(demo) if i]})
        prompts = tuple((i, text) for i, (_, text) in enumerate(demo) if i)
    job = GenerateJob(
        preset=args.preset, weights=args.weights, lora=args.lora, model_dir=args.model_dir,
        text_encoder=args.text_encoder, text_encoder_device=args.text_encoder_device,
        text_embeddings=args.text_embeddings, save_text_embeddings=args.save_text_embeddings, vae=args.vae,
        vae_device=args.vae_device,
        spec=spec.to_dict(), model=args.model, checkpoint=args.checkpoint, prompt=args.prompt,
        dtype=args.dtype, device=args.device, out=args.out, save_latents=args.save_latents,
        trace=args.trace, fail_at=args.fail_at, timeout_s=args.timeout, progress=not args.no_progress,
        executor=args.executor, prompts=prompts, interactive=args.interactive,
        max_blocks=args.max_blocks if args.max_blocks is not None else max(1000, spec.num_blocks),
        realtime=args.realtime,
        backend=args.backend or "inductor", engine_cache=args.engine_cache, shift=args.shift,
    )
    if args.out and not (args.vae or args.model_dir) and (args.model or args.checkpoint or args.preset) and \
            args.model != "toy":
        print("note: no --vae: decoding with the latent preview (a fixed projection, not the Wan VAE); pass "
              "--vae DIR or --model-dir DIR for the real video", file=sys.stderr)
    if made_out:  # removed again if the run is refused before it writes (the summary says where it went)
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
    try:
        summary = run_generate(job, args.nproc)
    except BaseException:
        if made_out:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(args.out))  # only if empty
        raise
    if summary:
        _print_summary(summary, args)
    return 0


def _check_generate(args: argparse.Namespace) -> bool:
    """The flags' ranges and every output path, before any work; True when ``--out`` was defaulted."""
    from cascade_sched.bounds import MAX_TIMEOUT_S, check_float, check_int, cpu_count
    from cascade_sched.cliargs import check_dtype, check_outputs
    from cascade_sched.errors import ConfigError
    from executors.launch import under_torchrun

    check_outputs(args, {"out": (".mp4", ".gif"), "save_latents": (".npz",), "trace": (".json",),
                         "save_text_embeddings": (".safetensors",), "engine_cache": None},
                  folders=("engine_cache",))
    check_dtype("--dtype", args.dtype)
    check_float("--shift", args.shift, 0, 1000, open_lo=True)
    check_float("--timeout", args.timeout, 0, MAX_TIMEOUT_S, open_lo=True, why=" seconds")
    check_int("--nproc", args.nproc, 1, max(64, 8 * cpu_count()))
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
        check_int("--max-blocks", args.max_blocks, max(1, args.blocks), 100_000,
                  f" (at least `--blocks` {args.blocks})")
    if under_torchrun() and int(os.environ.get("WORLD_SIZE", "1")) > 1 and args.executor == "reference":
        raise ConfigError("executor", "under torchrun, `cascade generate` needs `--executor distributed` or "
                                      "`--executor compiled` (with reference, every rank would write the same "
                                      "files)")
    if args.out is None and not (args.save_latents or args.trace or args.save_text_embeddings):
        from cascade_sched.outputs import check_output

        check_output("--out", DEFAULT_OUT, directory=True)
        args.out = default_out(args)
        return True
    return False


def _check_memory(args: argparse.Namespace, spec: Any) -> None:
    """Refuse a run whose latents and K/V cache alone would not fit in half the available memory."""
    from cascade_sched.bounds import available_memory
    from cascade_sched.bounds import gib as _gib
    from cascade_sched.cliargs import DTYPE_BYTES
    from cascade_sched.errors import ConfigError
    from models.config import get_config

    name = args.model or getattr(args, "_preset_model", None) or (None if args.checkpoint else "toy")
    if name is None:
        return  # the checkpoint's own shapes: known once it is read
    try:
        config = get_config(name)
    except ConfigError:
        return  # an unknown name is refused, with the valid ones, where the model is built
    latents = spec.num_blocks * math.prod(config.latent_shape()) * 4  # float32 latents
    cached = min(spec.num_blocks, (spec.window or spec.num_blocks) + spec.sink)
    kv = cached * config.kv_bytes_per_block(DTYPE_BYTES[args.dtype])
    need = latents + kv
    have = available_memory()
    if args.device == "cpu" and need > 0.9 * have:
        raise ConfigError("blocks", f"`--blocks` {spec.num_blocks} of {name} holds ~{_gib(latents)} of latents "
                                    f"and ~{_gib(kv)} of K/V cache, more than the {_gib(have)} available"
                                    + ("" if spec.window else "; give `--window`"))


def _apply_toy_defaults(args: argparse.Namespace) -> tuple[tuple[int, str], ...]:
    """The trained toy model's defaults where the user left the flags alone: the attention window it was
    trained for (`models.weights.TOY_WINDOW`), and with no prompt given, the demo timeline (a prompt switch,
    `models.toy_world.DEMO`), returned so the caller registers its prompts. Other models: nothing."""
    if (args.model or "toy") != "toy" or args.checkpoint or args.preset:
        return ()
    from cascade_sched.cliargs import DEFAULT_WINDOW
    from models.toy_world import DEMO
    from models.weights import TOY_WINDOW

    if args.window == DEFAULT_WINDOW:  # the flag's default, as for a preset's window
        args.window = TOY_WINDOW
    if args.prompt != DEFAULT_PROMPT or args.prompts or args.switch or args.interactive:
        return ()
    args.prompt = DEMO[0][1]
    if args.blocks <= DEMO[-1][0]:
        return ()
    return DEMO


def _apply_preset(args: argparse.Namespace) -> Any:
    """Set the schedule flags a preset names (timesteps, window, sink) where the user left the defaults;
    a flag the user set wins, with a note."""
    if args.preset is None:
        return None
    from cascade_sched.cliargs import DEFAULT_TIMESTEPS, DEFAULT_WINDOW
    from cascade_sched.errors import ConfigError
    from models.presets import get_preset

    preset = get_preset(args.preset)
    args._preset_model = preset.model
    defaults = {"timesteps": DEFAULT_TIMESTEPS, "window": DEFAULT_WINDOW, "sink": 0, "switch_policy": "none"}  # the flags'
    for name, value in preset.spec_fields().items():
        value = tuple(value) if name == "timesteps" else (value or 0) if name == "window" else value
        current = tuple(getattr(args, name)) if name == "timesteps" else getattr(args, name)
        if current == defaults[name]:
            setattr(args, name, value)
        elif current != value:
            print(f"note: --{name.replace('_', '-')} {current} overrides preset {preset.name}'s {value}",
                  file=sys.stderr)
    if preset.lora is not None and not args.lora:
        raise ConfigError("lora", f"preset {preset.name} merges a LoRA (rank {preset.lora.rank}): pass --lora PATH "
                                  "(its lora.pt)")
    return preset


def _check_sources(args: argparse.Namespace, preset: Any) -> None:
    """Paths checked before any work, each problem in one line naming its flag."""
    from pathlib import Path

    from apps.sources import model_folder
    from cascade_sched.errors import ConfigError

    for flag in ("checkpoint", "lora", "text_encoder", "vae"):
        value = getattr(args, flag)
        if value is not None and not Path(value).exists():
            raise ConfigError(flag, f"`--{flag.replace('_', '-')}` {value!r} does not exist")
    emb = args.text_embeddings
    if emb is not None and emb != "stand-in" and not Path(emb).is_file():
        raise ConfigError("text_embeddings", f"`--text-embeddings` {emb!r} is neither a file nor 'stand-in'")
    if emb is not None and args.text_encoder is not None:
        raise ConfigError("text_embeddings", "give either `--text-embeddings` or `--text-encoder`, not both")
    model_folder(args.model_dir, need_text=emb is None and args.text_encoder is None, need_vae=args.vae is None)
    if args.weights and not args.checkpoint:
        raise ConfigError("weights", "`--weights` picks an entry of `--checkpoint`, and none was given")
    if args.lora and not args.checkpoint:
        raise ConfigError("lora", "`--lora` needs `--checkpoint` (the base weights it adapts)")
    name = args.model or (preset.model if preset is not None else None)
    if name is not None and emb is None and args.text_encoder is None and args.model_dir is None:
        from models.config import get_config
        from models.prompts import default_text_encoder

        default_text_encoder(get_config(name))  # refused here, before any rank starts, unless a test model
    if preset is not None and args.model is not None and args.model != preset.model:
        print(f"note: --model {args.model} overrides preset {preset.name}'s {preset.model}", file=sys.stderr)


def _print_summary(s: dict[str, Any], args: argparse.Namespace) -> None:
    times = ", ".join(f"{t:.3f}" for t in s["block_done_s"][:12])
    more = " ..." if len(s["block_done_s"]) > 12 else ""
    lines = [
        f"{s['executor']} executor, model {s['model']}, {s['blocks']} blocks on {s['devices']} device(s)",
        f"  FPS {s['fps']:.2f} (video frames shown per second, steady state, decoding included)",
        f"  paper FPS {s['paper_fps']:.2f} ({s['video_frames_per_block']} frames over the median interval between "
        "blocks denoised)",
        f"  first frame {s['first_frame_s']:.3f} s, wall {s['wall_s']:.3f} s, in model forwards "
        f"{s['forward_s']:.3f} s, interval p50/p95/p99 {s['interval_p50_s']:.3f}/{s['interval_p95_s']:.3f}/"
        f"{s['interval_p99_s']:.3f} s",
        f"  blocks ready at (s): {times}{more}",
    ]
    lines += [f"  prompt switch at block {at}: {text!r}" for at, text in s.get("switches", [])]
    lines += [f"  {what}: {line}" for what, line in s.get("sources", {}).items()]
    for path, what in ((args.out, "video"), (args.save_latents, "latents"), (args.trace, "trace")):
        if path:
            lines.append(f"  wrote {what}: {path}")
    print("\n".join(lines))
    sys.stdout.flush()
