"""The ``cascade`` command line: ``schedule`` here; ``simulate``/``plan`` and ``generate`` from their packages.

Every ``CascadeError`` (and every argument error) becomes one line on stderr and exit status 2.
Subcommands of other packages register lazily, so ``cascade schedule`` never imports torch or simpy.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from cascade_sched.errors import CascadeError, ConfigError

# Spec parameter -> the flag a user typed, so errors name what the user can change.
FLAG_OF = {
    "num_blocks": "--blocks",
    "timesteps": "--timesteps",
    "lag": "--lag",
    "level": "--level",
    "attention": "--attention",
    "window": "--window",
    "sink": "--sink",
    "num_devices": "--devices",
    "placement": "--placement",
    "frames_per_block": "--frames-per-block",
    "seed": "--seed",
    "switches": "--switch",
    "at_block": "--switch",
    "prompt": "--switch",
    "switch_policy": "--switch-policy",
}

# Modules that add subcommands through `register(subparsers) -> {name: handler}`.
PLUGINS = ("simulator.cli", "executors.cli", "executors.calibrate_cli", "executors.quality_cli", "executors.serve_cli")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line and exit 2 instead of usage plus a line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def int_ranges(text: str) -> tuple[int, ...]:
    """An argparse type for ``1,2,4`` or ``1-8`` (or a mix: ``1-4,8``)."""
    out: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            lo, sep, hi = part.partition("-")
            out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,2,4 or 1-8, got {text!r}") from None
    return tuple(out)


def name_list(text: str) -> tuple[str, ...]:
    """An argparse type for comma-separated names, lower-cased."""
    return tuple(x.strip().lower() for x in text.split(",") if x.strip())


def _num_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    return tuple(int(v) if v.is_integer() else v for v in values)


def int_pair(form: str) -> Callable[[str], tuple[int, int]]:
    """An argparse type for two integers ``A:B``; ``form`` names them in the error (``RANK:TICK``)."""

    def parse(text: str) -> tuple[int, int]:
        try:
            a, b = (int(x) for x in text.split(":"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {form}, got {text!r}") from None
        return a, b

    return parse


def add_schedule_args(p: argparse.ArgumentParser, default_blocks: int = 8, default_window: int = 0) -> None:
    """The flags that define a ``CascadeSpec``; shared by schedule, simulate, plan and generate."""
    g = p.add_argument_group("cascade")
    g.add_argument("--blocks", type=int, default=default_blocks, help="number of blocks (default %(default)s)")
    g.add_argument("--timesteps", type=_num_list, default=(1000, 750, 500, 250),
                   help="nominal denoise timesteps, strictly decreasing (default 1000,750,500,250)")
    g.add_argument("--cache-pass", action=argparse.BooleanOptionalAction, default=True,
                   help="add the t=0 cache (commit) stage (default on)")
    lag = g.add_mutually_exclusive_group()
    lag.add_argument("--lag", type=_int_list, default=None,
                     help="uniform lag L (1..S), or comma-separated per-block lags; default S (sequential)")
    lag.add_argument("--level", type=int, default=None,
                     help="the paper's parallelism level P(k): lag = S - k (0 = sequential, S-1 = fully parallel)")
    g.add_argument("--attention", default="causal", help="causal | bidirectional | stale (default causal)")
    g.add_argument("--window", type=int, default=default_window,
                   help="attention window in blocks incl. itself, 0 = unbounded (default %(default)s)")
    g.add_argument("--sink", type=int, default=0, help="sink blocks always visible (default 0)")
    g.add_argument("--devices", type=int, default=1, help="number of devices (default 1)")
    g.add_argument("--placement", default="block", help="block | stage (default block)")
    g.add_argument("--seed", type=int, default=0, help="seed of all noise (default 0)")
    g.add_argument("--switch", type=int_pair("AT_BLOCK:PROMPT_ID"), action="append", default=[], metavar="AT:PROMPT",
                   help="prompt switch: blocks from AT on use prompt id PROMPT (repeatable)")
    g.add_argument("--switch-policy", default="none",
                   help="none (the cascade: nothing added) | recache (the baseline: re-encode the context)")


def spec_from_args(args: argparse.Namespace) -> Any:
    """Build the validated ``CascadeSpec`` the flags describe (``ConfigError`` names the bad one)."""
    from cascade_sched.spec import CascadeSpec, paper_level

    if args.window is not None and args.window < 0:
        raise ConfigError("window", f"`window` must be at least 1 block, or 0 for unbounded, got {args.window}")
    lag: int | tuple[int, ...] | None = None
    if args.lag is not None:
        lag = args.lag[0] if len(args.lag) == 1 else args.lag
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
    )
    if args.level is not None:
        spec = CascadeSpec.from_dict({**spec.to_dict(), "lag": paper_level(args.level, spec.num_stages)})
    return spec


def _cmd_schedule(args: argparse.Namespace) -> int:
    from cascade_sched.io import dumps
    from cascade_sched.render import draw_grid, render_grid
    from cascade_sched.schedule import build_schedule
    from cascade_sched.validate import validate

    schedule = validate(build_schedule(spec_from_args(args)))
    if args.json:
        print(dumps(schedule, indent=None if args.compact else 1))
    else:
        spec = schedule.spec
        print(
            f"{spec.num_blocks} blocks x {schedule.num_stages} stages, lags {_lag_text(spec.lags)}, "
            f"{spec.attention} attention, window={spec.window or 'unbounded'}, sink={spec.sink}, "
            f"{spec.num_devices} device(s) by {spec.placement}: {schedule.num_ticks} ticks, "
            f"up to {schedule.max_in_flight()} blocks in flight"
        )
        print(render_grid(schedule))
    if args.png:
        draw_grid(schedule, args.png)
        print(f"wrote {args.png}", file=sys.stderr)
    return 0


def _lag_text(lags: tuple[int, ...]) -> str:
    if not lags:
        return "none (one block)"
    return str(lags[0]) if len(set(lags)) == 1 else ",".join(map(str, lags))


def build_parser() -> tuple[ArgumentParser, dict[str, Callable[[argparse.Namespace], int]]]:
    from cascade_sched import __version__

    parser = ArgumentParser(prog="cascade", description="Block Cascading: schedules, simulation, generation.")
    parser.add_argument("--version", action="version", version=f"cascade-sched {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {}
    p = sub.add_parser("schedule", help="build, validate and print a cascade schedule")
    add_schedule_args(p)
    p.add_argument("--json", action="store_true", help="print the cascade-schedule/3 JSON to stdout")
    p.add_argument("--compact", action="store_true", help="with --json: one line, no indentation")
    p.add_argument("--png", metavar="PATH", help="draw the tick x device grid to a PNG")
    handlers["schedule"] = _cmd_schedule
    for module in PLUGINS:
        try:
            plugin = importlib.import_module(module)
        except ImportError as e:  # a core-only install: the subcommand is simply absent
            if e.name is not None and module.startswith(e.name):
                continue
            raise
        handlers.update(plugin.register(sub))
    return parser, handlers


def flag_of(param: str) -> str:
    """The flag a ``ConfigError`` parameter names: as given when it is already a flag (``--out``)."""
    if param.startswith("-"):
        return param
    return FLAG_OF.get(param, f"--{param.replace('_', '-')}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cascade`` console script."""
    from cascade_sched import interrupts

    interrupts.install()
    command = "cascade"
    try:
        parser, handlers = build_parser()
        argv = list(sys.argv[1:] if argv is None else argv)
        args = parser.parse_args(argv)
        if args.command is None:
            # The main job on a built-in default: the planner where it is installed, else a schedule.
            return main(["plan"] if "plan" in handlers else ["schedule"])
        command = f"cascade {args.command}"
        return handlers[args.command](args)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (cascade_sched.interrupts)
        print(interrupts.line(command, interrupts.exit_code(e) - 128, interrupts.what_was_kept()),
              file=sys.stderr, flush=True)
        return interrupts.exit_code(e)
    except ConfigError as e:
        flag = flag_of(e.param)
        print(f"{command}: error: {flag}: {e}", file=sys.stderr)
        return 2
    except CascadeError as e:
        kept = interrupts.what_was_kept()  # a run that failed half-way keeps its finished part
        print(f"{command}: error: {e}" + (f"; {kept}" if kept else ""), file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
