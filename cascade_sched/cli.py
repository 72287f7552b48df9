"""The ``cascade`` command line: ``schedule`` here; ``simulate``/``plan`` and ``generate`` from their packages.

Every ``CascadeError`` (and every argument error) becomes one line on stderr and exit status 2.
Subcommands of other packages register lazily, so ``cascade schedule`` never imports torch or simpy.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from cascade_sched.cliargs import (  # noqa: F401  (re-exported: the subcommands' historical import path)
    ArgumentParser,
    add_schedule_args,
    check_outputs,
    int_pair,
    int_ranges,
    name_list,
    spec_from_args,
)
from cascade_sched.errors import CascadeError, ConfigError

# Spec parameter -> the flag a user typed, so errors name what the user can change.
FLAG_OF = {
    "num_blocks": "--blocks",
    "timesteps": "--timesteps",
    "lag": "--lag",
    "lags": "--lag",
    "level": "--level",
    "attention": "--attention",
    "attentions": "--attention",
    "window": "--window",
    "windows": "--window",
    "decodes": "--decode",
    "decoders": "--decoder",
    "interconnects": "--interconnect",
    "sink": "--sink",
    "num_devices": "--devices",
    "placement": "--placement",
    "frames_per_block": "--frames-per-block",
    "seed": "--seed",
    "switches": "--switch",
    "at_block": "--switch",
    "prompt": "--switch",
    "switch_policy": "--switch-policy",
    "stage_stride": "--stage-stride",
    "rings": "--rings",
    "layer_split": "--layer-split",
    "num_layers": "--layers",
}

# Modules that add subcommands through `register(subparsers) -> {name: handler}`.
PLUGINS = ("simulator.cli", "executors.cli", "executors.calibrate_cli", "executors.quality_cli", "executors.serve_cli")


def _cmd_schedule(args: argparse.Namespace) -> int:
    from cascade_sched.io import dumps
    from cascade_sched.render import draw_grid, render_grid
    from cascade_sched.schedule import build_schedule
    from cascade_sched.validate import validate

    check_outputs(args, {"png": (".png",)})
    schedule = validate(build_schedule(spec_from_args(args)))
    cells = schedule.num_ticks * schedule.num_devices
    if cells > MAX_GRID_CELLS and (args.png or not args.json):
        raise ConfigError("--devices" if schedule.num_devices > schedule.num_ticks else "--blocks",
                          f"the tick x device grid would have {cells:,} cells ({schedule.num_ticks} ticks x "
                          f"{schedule.num_devices} devices), past the {MAX_GRID_CELLS:,} a grid can show: use "
                          "--json, fewer blocks or fewer devices")
    if args.json:
        print(dumps(schedule, indent=None if args.compact else 1))
    else:
        spec = schedule.spec
        where = f"{spec.num_devices} device(s) by {spec.placement}"
        if spec.placement == "layers":
            split = "+".join(str(end - first) for first, end in spec.layer_ranges if end is not None)
            where += f" ({spec.rings} ring(s) of {spec.ring_size}, {split} layers)"
        stride = f", stage stride {spec.stage_stride}" if spec.stage_stride > 1 else ""
        print(
            f"{spec.num_blocks} blocks x {schedule.num_stages} stages, lags {_lag_text(spec.lags)}{stride}, "
            f"{spec.attention} attention, window={spec.window or 'unbounded'}, sink={spec.sink}, "
            f"{where}: {schedule.num_ticks} ticks, up to {schedule.max_in_flight()} blocks in flight"
        )
        print(render_grid(schedule))
    if args.png:
        draw_grid(schedule, args.png)
        print(f"wrote {args.png}", file=sys.stderr)
    return 0


MAX_GRID_CELLS = 4_000_000  # about 40 MB of text or a 2000 x 2000 PNG: the grid printed or drawn


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
    p.add_argument("--json", action="store_true", help="print the cascade-schedule/4 JSON to stdout")
    p.add_argument("--compact", action="store_true", help="with --json: one line, no indentation")
    p.add_argument("--png", metavar="PATH", help="draw the tick x device grid to a PNG (default none)")
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


def flag_of(param: str, argv: Sequence[str] = (), parser: argparse.ArgumentParser | None = None) -> str:
    """The flag a ``ConfigError`` parameter names: as given when it is already a flag (``--out``). With the
    command line and its parser, the spelling the user typed (a deprecated alias such as ``--lags``)."""
    flag = param if param.startswith("-") else FLAG_OF.get(param, f"--{param.replace('_', '-')}")
    if parser is None:
        return flag
    typed = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    if flag in typed:
        return flag
    for action in _all_actions(parser):
        if flag in action.option_strings:
            dest = action.dest
            for other in _all_actions(parser):
                if other.dest == dest:
                    for spelling in other.option_strings:
                        if spelling in typed:
                            return spelling
    return flag


def _all_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    actions = list(parser._actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                actions.extend(sub._actions)
    return actions


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cascade`` console script."""
    from cascade_sched import interrupts

    interrupts.install()
    # c10's own warnings print C++ stack traces (a rank's store poll racing the store host's exit while a
    # stopped group shuts down); read once when torch loads, which no subcommand has done yet. A user's
    # own setting wins.
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    command = "cascade"
    parser: argparse.ArgumentParser | None = None
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser, handlers = build_parser()
        for arg in argv:  # only possible in-process (exec cannot pass one); paths would fail deep inside
            if "\x00" in arg:
                raise CascadeError(f"argument {arg!r} contains a NUL byte")
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
        flag = flag_of(e.param, argv, _subparser(parser, command))
        text = str(e)  # the message names the parameter (`num_blocks`) or its flag: name the flag as typed
        for name in {e.param, flag_of(e.param)} - {flag}:
            text = text.replace(f"`{name}`", f"`{flag}`")
        _refuse(f"{command}: error: {flag}: {text.splitlines()[0] if text else type(e).__name__}")
        return 2
    except CascadeError as e:
        kept = interrupts.what_was_kept()  # a run that failed half-way keeps its finished part
        _refuse(f"{command}: error: {e}" + (f"; {kept}" if kept else ""))
        return 2
    except BrokenPipeError:
        return 0


def _refuse(line: str) -> None:
    """Print a refusal once: under torchrun every rank refuses the same flags, and rank 0 says so."""
    if os.environ.get("RANK", "0") == "0" or "MASTER_ADDR" not in os.environ:
        print(line, file=sys.stderr)


def _subparser(parser: argparse.ArgumentParser | None, command: str) -> argparse.ArgumentParser | None:
    """The subcommand's parser (``cascade plan`` -> plan's), so an alias is found among its flags only."""
    name = command.partition(" ")[2]
    for action in parser._actions if parser is not None else ():
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            sub: argparse.ArgumentParser = action.choices[name]
            return sub
    return parser


if __name__ == "__main__":
    sys.exit(main())
