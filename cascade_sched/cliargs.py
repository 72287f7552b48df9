"""The command line's shared vocabulary: the parser, argument types, the flags that build a
``CascadeSpec``, their defaults and bounds (from :mod:`cascade_sched.bounds`), and output path checks.

Every subcommand that takes a cascade setting (schedule, simulate, plan, generate, serve) takes these
flags from here, so a flag has one name, one meaning, one list syntax and one default everywhere. A
sweeping subcommand takes lists in the same flags (``--lag 1,2,3``, ``--attention causal,stale``). The
spec flags' ``dest`` is the spec's own parameter name (``--blocks`` sets ``num_blocks``), so an error that
names a parameter names the flag the user typed (:meth:`ArgumentParser.refusal`). Nothing here imports
torch or simpy, or reads the machine.

Bounds are derived from what a run must hold or finish, and a request past one is refused before any work
with one line naming the flag as typed, the bound and why.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from cascade_sched.bounds import MAX_LIST, MAX_SEED, MAX_STRIDE, Machine, check_schedule_size
from cascade_sched.errors import ConfigError, check_range
from cascade_sched.outputs import check_output

# --- the shared defaults -------------------------------------------------------------------------------
DEFAULT_BLOCKS = 16  # every subcommand that takes --blocks (serve streams to --max-blocks instead)
DEFAULT_WINDOW = 7  # Self-Forcing's 21-frame cache, the paper's setting; 0 = unbounded
DEFAULT_TIMESTEPS = (1000, 750, 500, 250)
DEFAULT_LAYERS = 30  # Wan2.1 1.3B's transformer layers: what placement layers splits unless told

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

    def _setting(self, name: str) -> list[argparse.Action]:
        """The actions that set ``name`` (a dest, or one of the option strings of its actions): a flag and
        its hidden aliases."""
        dest = next((a.dest for a in self._actions if name == a.dest or name in a.option_strings), None)
        return [a for a in self._actions if a.option_strings and a.dest == dest]

    def typed(self, argv: Sequence[str]) -> frozenset[str]:
        """The dests whose flags ``argv`` gives (in any spelling): what the user set, whatever the value."""
        given = {a.split("=", 1)[0] for a in argv if a.startswith("-")}
        return frozenset(a.dest for a in self._actions if given.intersection(a.option_strings))

    def flag(self, name: str, argv: Sequence[str] = ()) -> str:
        """The flag that sets ``name`` (a dest such as ``num_blocks``, or a flag), spelled as ``argv`` spells
        it (a deprecated alias included), else as its help shows it.

        >>> p = ArgumentParser()
        >>> add_schedule_args(p)
        >>> p.flag("num_blocks"), p.flag("--lag"), p.flag("frames_per_block")
        ('--blocks', '--lag', '--frames-per-block')
        """
        given = {a.split("=", 1)[0] for a in argv if a.startswith("-")}
        spellings = [s for a in self._setting(name) for s in a.option_strings]
        typed = [s for s in spellings if s in given]
        if typed or spellings:
            return (typed or spellings)[0]
        return name if name.startswith("-") else "--" + name.replace("_", "-")

    def refusal(self, error: ConfigError, argv: Sequence[str] = ()) -> str:
        """``FLAG: message`` for a ``ConfigError``: the flag that sets the bad parameter, as typed, and the
        message naming that flag wherever it named the parameter (or the flag's other spellings)."""
        name = error.part_of or error.param
        flag = self.flag(name, argv)
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        names = {error.param, name, *(s for a in self._setting(name) for s in a.option_strings)}
        for other in names - {flag}:
            text = text.replace(f"`{other}`", f"`{flag}`")
        return f"{flag}: {text}"


@dataclass(frozen=True)
class Invocation:
    """One command line, parsed: the flags' values, which of them the user typed (their dests), and the
    machine the command runs on. What a subcommand's handler is given."""

    args: argparse.Namespace
    typed: frozenset[str]
    machine: Machine


Handler = Callable[[Invocation], int]
"""A subcommand: runs one invocation, returns the exit status."""


def alias(p: Any, old: str, dest: str, **kwargs: Any) -> None:
    """A hidden, deprecated spelling ``old`` of the flag that sets ``dest`` (same type and default)."""
    p.add_argument(old, dest=dest, help=argparse.SUPPRESS, **kwargs)


# --- the shared flags -----------------------------------------------------------------------------------
def add_schedule_args(p: argparse.ArgumentParser, *, sweep: bool = False) -> None:
    """The flags that define a ``CascadeSpec``; shared by schedule, simulate, generate and serve. With
    ``sweep`` (plan), ``--lag``, ``--attention`` and ``--window`` take lists of values to try."""
    g = p.add_argument_group("cascade")
    g.add_argument(
        "--blocks", dest="num_blocks", type=int, default=DEFAULT_BLOCKS, help="number of blocks (default %(default)s)"
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
            dest="lags",
            type=int_ranges,
            default=None,
            help="lags to try, e.g. 1,2 or 1-5 (default every lag 1..S)",
        )
        g.add_argument(
            "--attention",
            dest="attentions",
            type=name_list,
            default=("causal", "bidirectional"),
            help="attention modes to try: the paper's causal,bidirectional (default); add stale for "
            "the extension",
        )
        g.add_argument(
            "--window",
            dest="windows",
            type=int_ranges,
            default=(DEFAULT_WINDOW,),
            help=f"attention windows in blocks to try, 0 = unbounded (default {DEFAULT_WINDOW}: "
            "Self-Forcing's 21 frames)",
        )
        alias(g, "--lags", "lags", type=int_ranges, default=None)
        alias(g, "--attentions", "attentions", type=name_list, default=("causal", "bidirectional"))
        alias(g, "--windows", "windows", type=int_ranges, default=(DEFAULT_WINDOW,))
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
        g.add_argument("--devices", dest="num_devices", type=int, default=1, help="number of devices (default 1)")
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
            dest="num_layers",
            type=int,
            default=None,
            metavar="N",
            help=f"the model's layer count, which the segments name (default: the model's; for cascade "
            f"schedule {DEFAULT_LAYERS} = Wan2.1 1.3B under --placement layers, else unnamed)",
        )
        g.add_argument("--seed", type=int, default=0, help="seed of all noise (default 0)")
        g.add_argument(
            "--switch",
            dest="switches",
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


def add_geometry_args(g: Any) -> None:
    """``--frames-per-block`` and ``--resolution``: the model's block and frame size, for every command that
    builds a model (generate, serve, simulate, plan). The resolution stays text here; the model's config
    parses and bounds it (``models.config.parse_resolution``), so one refusal names the flag everywhere."""
    g.add_argument(
        "--frames-per-block",
        type=int,
        default=None,
        metavar="N",
        help="latent frames per block (StreamDiffusionV2 uses 1; default: the model's, 3 for the Wan models)",
    )
    g.add_argument(
        "--resolution",
        default=None,
        metavar="HxW",
        help="video height x width in pixels, each a multiple of 16 for the Wan VAE (default: the model's, "
        "480x832 for the Wan models)",
    )


def num_stages(args: argparse.Namespace) -> int:
    """S of the flags' sampler: the denoise steps, and the cache pass when on."""
    return len(args.timesteps) + (1 if args.cache_pass else 0)


def spec_from_args(
    args: argparse.Namespace,
    machine: Machine,
    defaults: Mapping[str, Any] | None = None,
    typed: frozenset[str] = frozenset(),
    model_layers: int | None = None,
) -> Any:
    """Build the validated ``CascadeSpec`` the flags describe (``ConfigError`` names the bad one), after
    checking that its schedule can be held and built on ``machine``. A spec flag the user did not type
    (its dest is not in ``typed``) takes its value from ``defaults`` when that has one (a preset's or the
    toy's setting, in the flags' units: ``window`` 0 is unbounded), else its own default.
    ``model_layers`` is the model's layer count where the command knows its model; ``--layers`` overrides
    it, and without either, placement layers splits ``DEFAULT_LAYERS`` unless ``--layer-split`` gives the
    layers."""
    from cascade_sched.spec import CascadeSpec, paper_level

    given = dict(vars(args))
    given.update({k: v for k, v in (defaults or {}).items() if k not in typed})
    window, sink, timesteps = given["window"], given["sink"], tuple(given["timesteps"])
    stages = len(timesteps) + (1 if given["cache_pass"] else 0)
    check_range("window", window, 0, None, " block(s), or 0 for unbounded")
    check_range("seed", given["seed"], 0, MAX_SEED)
    check_range("sink", sink, 0)
    if len(timesteps) > 1000:
        raise ConfigError("timesteps", f"`--timesteps` takes at most 1000 steps, got {len(timesteps)}")
    blocks = given["num_blocks"]
    placement = given["placement"]
    if blocks >= 1:
        check_schedule_size(blocks, stages, window or None, max(0, sink), machine)
        if placement == "layers":  # every device of a ring runs a layer range of each of its tasks
            check_range("rings", given["rings"], 1, blocks, " (more rings than blocks leaves some idle)")
        else:
            check_range(
                "num_devices",
                given["num_devices"],
                1,
                blocks * stages,
                " (more devices than the schedule's blocks x stages tasks leaves some with nothing to do)",
            )
    lag: int | tuple[int, ...] | None = None
    if given["lag"] is not None:
        lag = given["lag"][0] if len(given["lag"]) == 1 else tuple(given["lag"])
    check_range("stage_stride", given["stage_stride"], 1, MAX_STRIDE)
    num_layers = given["num_layers"] if given["num_layers"] is not None else model_layers
    if num_layers is None and placement == "layers" and given["layer_split"] is None:
        num_layers = DEFAULT_LAYERS
    spec = CascadeSpec(
        num_blocks=blocks,
        timesteps=timesteps,
        cache_pass=given["cache_pass"],
        lag=lag,
        attention=given["attention"],
        window=window or None,
        sink=sink,
        num_devices=given["num_devices"],
        placement=placement,
        seed=given["seed"],
        switches=tuple(given["switches"]),
        switch_policy=given["switch_policy"],
        stage_stride=given["stage_stride"],
        rings=given["rings"],
        layer_split=given["layer_split"],
        num_layers=num_layers,
    )
    if given["level"] is not None:
        spec = spec.replace(lag=paper_level(given["level"], spec.num_stages))
    return spec


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
