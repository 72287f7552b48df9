"""The command line's one vocabulary: argument types, shared flags, defaults, bounds (from
:mod:`cascade_sched.bounds`) and path checks.

Every subcommand (schedule, simulate, plan, generate, calibrate, validate, quality, serve) takes its
shared flags from here, so a flag has one name, one meaning, one list syntax and one default everywhere.
A sweeping subcommand takes lists in the same flags (``--lag 1,2,3``, ``--attention causal,stale``).
Nothing here imports torch or simpy.

Bounds are derived from what a run must hold or finish, and a request past one is refused before any work
with one line naming the flag as typed, the bound and why.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from cascade_sched.bounds import MAX_LIST, MAX_SEED, MAX_STRIDE, check_int, check_schedule_size
from cascade_sched.errors import ConfigError
from cascade_sched.outputs import check_output

# --- the shared defaults -------------------------------------------------------------------------------
DEFAULT_BLOCKS = 16  # every subcommand that takes --blocks (serve streams to --max-blocks instead)
DEFAULT_WINDOW = 7  # Self-Forcing's 21-frame cache, the paper's setting; 0 = unbounded
DEFAULT_TIMESTEPS = (1000, 750, 500, 250)
DEFAULT_LAYERS = 30  # Wan2.1 1.3B's transformer layers: what placement layers splits unless told
THREADS_HELP = "intra-op torch threads, 0 = torch's default (default %(default)s)"

# --- argument types -------------------------------------------------------------------------------------
def _checked(values: list[Any], text: str) -> tuple[Any, ...]:
    if len(values) > MAX_LIST:
        raise argparse.ArgumentTypeError(f"at most {MAX_LIST} values, got {len(values)} from {text!r}")
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one value, got {text!r}")
    return tuple(values)


def int_list(text: str) -> tuple[int, ...]:
    """An argparse type for comma-separated integers: ``1,2,1``."""
    try:
        return _checked([int(x) for x in text.split(",") if x.strip()], text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def int_ranges(text: str) -> tuple[int, ...]:
    """An argparse type for ``1,2,4`` or ``1-8`` (or a mix: ``1-4,8``), at most ``MAX_LIST`` values."""
    out: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            lo, sep, hi = part.partition("-")
            if sep and int(hi) - int(lo) >= MAX_LIST:
                raise argparse.ArgumentTypeError(f"at most {MAX_LIST} values, got {part!r}")
            out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
            if len(out) > MAX_LIST:
                break
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,2,4 or 1-8, got {text!r}") from None
    return _checked(out, text)


def name_list(text: str) -> tuple[str, ...]:
    """An argparse type for comma-separated names, lower-cased."""
    return _checked([x.strip().lower() for x in text.split(",") if x.strip()], text)


def num_list(text: str) -> tuple[float, ...]:
    """An argparse type for comma-separated numbers (integral ones kept as int)."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    return _checked([int(v) if v.is_integer() else v for v in values], text)


def int_pair(form: str) -> Callable[[str], tuple[int, int]]:
    """An argparse type for two integers ``A:B``; ``form`` names them in the error (``RANK:TICK``)."""

    def parse(text: str) -> tuple[int, int]:
        try:
            a, b = (int(x) for x in text.split(":"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {form}, got {text!r}") from None
        return a, b

    return parse


def one(values: Sequence[Any]) -> Any:
    """The single value of a list flag, for a subcommand that does not sweep it."""
    return values[0] if len(values) == 1 else tuple(values)


# --- the parser ------------------------------------------------------------------------------------------
class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every flag that takes a value shows its default: appended unless the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "default" in text
            or action.default in (None, argparse.SUPPRESS)
            or action.nargs == 0
            or not action.option_strings
            or action.default == []
        ):
            return text
        default = action.default
        if isinstance(default, (tuple, list)):
            default = ",".join(map(str, default))
        return f"{text} (default {str(default).replace('%', '%%')})"


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line and exit 2 instead of usage plus a line; flags are never
    abbreviated (an error names the flag as typed) and every help text shows the defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def alias(p: Any, old: str, new: str, **kwargs: Any) -> None:
    """A hidden, deprecated spelling ``old`` of flag ``new`` (same dest, type and default)."""
    dest = new.lstrip("-").replace("-", "_")
    p.add_argument(old, dest=dest, help=argparse.SUPPRESS, **kwargs)


# --- the shared flags -----------------------------------------------------------------------------------
def add_schedule_args(p: argparse.ArgumentParser, *, sweep: bool = False) -> None:
    """The flags that define a ``CascadeSpec``; shared by schedule, simulate, generate and serve. With
    ``sweep`` (plan), ``--lag``, ``--attention`` and ``--window`` take lists of values to try."""
    g = p.add_argument_group("cascade")
    g.add_argument(
        "--blocks", type=int, default=DEFAULT_BLOCKS, help="number of blocks (default %(default)s)"
    )
    g.add_argument(
        "--timesteps",
        type=num_list,
        default=DEFAULT_TIMESTEPS,
        help="nominal denoise timesteps, strictly decreasing (default 1000,750,500,250)",
    )
    g.add_argument(
        "--cache-pass",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add the t=0 cache (commit) stage (default on)",
    )
    if sweep:
        g.add_argument(
            "--lag",
            type=int_ranges,
            default=None,
            help="lags to try, e.g. 1,2 or 1-5 (default every lag 1..S)",
        )
        g.add_argument(
            "--attention",
            type=name_list,
            default=("causal", "bidirectional"),
            help="attention modes to try: the paper's causal,bidirectional (default); add stale for "
            "the extension",
        )
        g.add_argument(
            "--window",
            type=int_ranges,
            default=(DEFAULT_WINDOW,),
            help=f"attention windows in blocks to try, 0 = unbounded (default {DEFAULT_WINDOW}: "
            "Self-Forcing's 21 frames)",
        )
        alias(g, "--lags", "--lag", type=int_ranges, default=None)
        alias(g, "--attentions", "--attention", type=name_list, default=("causal", "bidirectional"))
        alias(g, "--windows", "--window", type=int_ranges, default=(DEFAULT_WINDOW,))
    else:
        lag = g.add_mutually_exclusive_group()
        lag.add_argument(
            "--lag",
            type=int_list,
            default=None,
            help="uniform lag L (1..S), or comma-separated per-block lags (default S: sequential)",
        )
        lag.add_argument(
            "--level",
            type=int,
            default=None,
            help="the paper's parallelism level P(k): lag = S - k (0 = sequential, S-1 = fully "
            "parallel; default: --lag's)",
        )
        g.add_argument(
            "--attention",
            default="causal",
            help="causal | bidirectional | stale | stage (stage: each stage reads its predecessors' K/V of "
            "the same stage, StreamDiffusionV2's stream batch; default causal)",
        )
        g.add_argument(
            "--window",
            type=int,
            default=DEFAULT_WINDOW,
            help="attention window in blocks incl. itself, 0 = unbounded (default %(default)s: "
            "Self-Forcing's 21 frames)",
        )
    g.add_argument("--sink", type=int, default=0, help="sink blocks always visible (default 0)")
    if not sweep:
        g.add_argument("--devices", type=int, default=1, help="number of devices (default 1)")
    g.add_argument(
        "--placement",
        default="block",
        help="block | stage | layers (layers: rings of devices, each device running a range of the "
        "model's layers; default block)",
    )
    if not sweep:
        g.add_argument(
            "--stage-stride",
            type=int,
            default=1,
            metavar="K",
            help="ticks between a block's stages; at least the ring size under --placement layers "
            "(default 1)",
        )
        g.add_argument(
            "--rings",
            type=int,
            default=1,
            metavar="G",
            help="--placement layers: G rings of devices/G devices each, blocks round robin (default 1)",
        )
        g.add_argument(
            "--layer-split",
            type=int_list,
            default=None,
            metavar="8,8,7,7",
            help="--placement layers: the layers each device of a ring runs (default: an even split, the "
            "remainder to the first devices)",
        )
        g.add_argument(
            "--layers",
            type=int,
            default=None,
            metavar="N",
            help=f"the model's layer count, which the segments name (default: the model's; for cascade "
            f"schedule {DEFAULT_LAYERS} = Wan2.1 1.3B under --placement layers, else unnamed)",
        )
        g.add_argument("--seed", type=int, default=0, help="seed of all noise (default 0)")
        g.add_argument(
            "--switch",
            type=int_pair("AT_BLOCK:PROMPT_ID"),
            action="append",
            default=[],
            metavar="AT:PROMPT",
            help="prompt switch: blocks from AT on use prompt id PROMPT (repeatable; default none)",
        )
        g.add_argument(
            "--switch-policy",
            default="none",
            help="none (the cascade: nothing added) | recache (the baseline: re-encode the context) "
            "(default none)",
        )


def num_stages(args: argparse.Namespace) -> int:
    return len(args.timesteps) + (1 if args.cache_pass else 0)


def spec_from_args(args: argparse.Namespace, model_layers: int | None = None) -> Any:
    """Build the validated ``CascadeSpec`` the flags describe (``ConfigError`` names the bad one), after
    checking that its schedule can be held and built on this machine. ``model_layers`` is the model's
    layer count where the command knows its model; ``--layers`` overrides it, and without either,
    placement layers splits ``DEFAULT_LAYERS`` unless ``--layer-split`` gives the layers."""
    from cascade_sched.spec import CascadeSpec, paper_level

    check_int("--window", args.window, 0, None, " block(s), or 0 for unbounded")
    check_int("--seed", args.seed, 0, MAX_SEED)
    check_int("--sink", args.sink, 0)
    if len(args.timesteps) > 1000:
        raise ConfigError("timesteps", f"`--timesteps` takes at most 1000 steps, got {len(args.timesteps)}")
    if args.blocks >= 1:
        check_schedule_size(args.blocks, num_stages(args), args.window or None, max(0, args.sink))
        if args.placement == "layers":  # every device of a ring runs a layer range of each of its tasks
            check_int("--rings", args.rings, 1, args.blocks, " (more rings than blocks leaves some idle)")
        else:
            check_int(
                "--devices",
                args.devices,
                1,
                args.blocks * num_stages(args),
                " (more devices than the schedule's blocks x stages tasks leaves some with nothing to do)",
            )
    lag: int | tuple[int, ...] | None = None
    if args.lag is not None:
        lag = args.lag[0] if len(args.lag) == 1 else args.lag
    check_int("--stage-stride", args.stage_stride, 1, MAX_STRIDE)
    num_layers = args.layers if args.layers is not None else model_layers
    if num_layers is None and args.placement == "layers" and args.layer_split is None:
        num_layers = DEFAULT_LAYERS
    spec = CascadeSpec(
        num_blocks=args.blocks,
        timesteps=args.timesteps,
        cache_pass=args.cache_pass,
        lag=lag,
        attention=args.attention,
        window=args.window or None,
        sink=args.sink,
        num_devices=args.devices,
        placement=args.placement,
        seed=args.seed,
        switches=tuple(args.switch),
        switch_policy=args.switch_policy,
        stage_stride=args.stage_stride,
        rings=args.rings,
        layer_split=args.layer_split,
        num_layers=num_layers,
    )
    if args.level is not None:
        spec = CascadeSpec.from_dict({**spec.to_dict(), "lag": paper_level(args.level, spec.num_stages)})
    return spec


MODEL_NAMES = "toy | tiny | small | wan2.1-1.3b | wan2.1-14b"
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float64": 8}  # the dtypes --dtype takes, and their sizes
DTYPES = tuple(DTYPE_BYTES)


def add_device_args(
    g: Any, *, device: str | None = "cpu", dtype: str | None = "float32", note: str = ""
) -> None:
    """``--device`` and ``--dtype``, one wording everywhere (``None`` defaults are resolved by the caller)."""
    g.add_argument("--device", default=device, help=f"cpu | cuda | cuda:N (default {device or 'cpu'}{note})")
    g.add_argument(
        "--dtype", default=dtype, help=f"{' | '.join(DTYPES)} (default {dtype or 'float32'}{note})"
    )


def check_dtype(flag: str, dtype: str) -> None:
    """``--dtype``: one of :data:`DTYPES`."""
    if dtype not in DTYPES:
        raise ConfigError(flag, f"`{flag}` must be one of {', '.join(DTYPES)}, got {dtype!r}")


def check_device_name(flag: str, device: str | None) -> None:
    """A device name this project knows (cpu, cuda, cuda:N); whether the machine has it is checked where
    torch is (``executors.launch.check_device``)."""
    if device is None:
        return
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise ConfigError(flag, f"`{flag}` must be cpu, cuda or cuda:N, got {device!r}")


def add_model_source_args(p: argparse.ArgumentParser, *, preset_names: str) -> argparse._ArgumentGroup:
    """Where the model's weights, text encoder and decoder come from; shared by generate and serve."""
    g = p.add_argument_group("model sources")
    g.add_argument(
        "--model",
        default=None,
        help=f"{MODEL_NAMES} (default: the preset's, else the --checkpoint's "
        "own shapes, else toy: the shipped trained weights, bouncing balls, see docs/quality.md; "
        "without --checkpoint the others take seeded random weights)",
    )
    g.add_argument(
        "--checkpoint",
        default=None,
        help="Wan2.1-family DiT weights (.safetensors/.pt: Self-Forcing, "
        "CausVid, LongLive, Krea) or a cascade model folder (default: the toy's shipped weights for "
        "toy, else seeded random weights)",
    )
    g.add_argument(
        "--preset",
        default=None,
        help=f"a published pipeline's settings: {preset_names} (sampler, "
        "steps, window, sink, weights entry, LoRA alpha; see docs/models.md; default none)",
    )
    g.add_argument(
        "--weights",
        default=None,
        choices=("generator", "ema"),
        help="checkpoint entry to load: generator | ema (generator_ema) (default: the preset's, or the "
        "file's only one; a file with both needs this or --preset)",
    )
    g.add_argument(
        "--lora",
        default=None,
        metavar="PATH",
        help="PEFT LoRA adapter merged into the weights at load "
        "(a save_pretrained folder, .safetensors, or LongLive's lora.pt; default none)",
    )
    g.add_argument(
        "--shift",
        type=float,
        default=None,
        help="sampler shift (default: the preset's, else the one saved with the weights: toy 1, else 5)",
    )
    g.add_argument(
        "--model-dir",
        default=None,
        metavar="DIR",
        help="a diffusers-style Wan2.1 folder: its "
        "text_encoder/ + tokenizer/ condition the model and its vae/ decodes (the DiT weights come "
        "from --checkpoint; default none)",
    )
    g.add_argument(
        "--text-encoder",
        default=None,
        metavar="DIR",
        help="umT5 encoder folder (or a Wan2.1 folder), run through transformers (default: --model-dir's)",
    )
    g.add_argument(
        "--text-encoder-device",
        default="cpu",
        help="where the text encoder runs (default cpu: umT5-XXL alone is ~11 GB); freed after encoding",
    )
    g.add_argument(
        "--text-embeddings",
        default=None,
        metavar="FILE|stand-in",
        help="precomputed embeddings, one per prompt text (as --save-text-embeddings writes them), or "
        "'stand-in' for hashed-noise prompts (default: the stand-in only for toy/tiny/small)",
    )
    g.add_argument(
        "--vae",
        default=None,
        metavar="PATH",
        help="decoder: an AutoencoderKLWan folder (the Wan VAE, "
        "streaming) or TAEHV weights (taew2_1.pth, the fast tiny decoder); default: --model-dir's vae/, "
        "else the latent preview",
    )
    g.add_argument(
        "--vae-device",
        default=None,
        help="where decoding runs, on its own thread and CUDA stream (default: the denoising device)",
    )
    return g


# --- paths ----------------------------------------------------------------------------------------------
def check_outputs(
    args: argparse.Namespace, outputs: dict[str, Sequence[str] | None], *, folders: Iterable[str] = ()
) -> None:
    """Check every output path the flags name before any work (``cascade_sched.outputs.check_output``):
    ``outputs`` maps a dest (``png``) to the extensions its writer knows; ``folders`` are dests naming a
    folder to create. Two flags naming the same file are refused too."""
    seen: dict[str, str] = {}
    for dest, suffixes in outputs.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        flag = "--" + dest.replace("_", "-")
        path = check_output(flag, value, tuple(suffixes) if suffixes else None, directory=dest in folders)
        key = str(path.resolve())
        if key in seen:
            raise ConfigError(flag, f"`{flag}` and `{seen[key]}` name the same file {value!r}")
        seen[key] = flag


def check_input_file(flag: str, path: str | None, *, folder_ok: bool = False) -> None:
    """An input path that must exist (a file, or a folder with ``folder_ok``): one line naming ``flag``."""
    if path is None:
        return
    p = Path(path)
    if not p.exists():
        raise ConfigError(flag, f"`{flag}` {path!r} does not exist")
    if p.is_dir() and not folder_ok:
        raise ConfigError(flag, f"`{flag}` {path!r} is a folder; give a file")
    if not os.access(p, os.R_OK):
        raise ConfigError(flag, f"`{flag}` {path!r} is not readable")


def read_text(flag: str, path: str) -> str:
    """An input file's text, as UTF-8: a missing, unreadable or binary file is one line naming ``flag``."""
    check_input_file(flag, path)
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(flag, f"`{flag}` {path!r} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise ConfigError(flag, f"`{flag}` {path!r} cannot be read: {e.strerror}") from None
