"""The ``cascade`` command: every subcommand, and how each one ends.

Each level registers its own subcommands (``register(sub) -> {name: handler}``): the core's ``schedule``,
the simulator's ``simulate`` and ``plan``, and each app's. Every ``CascadeError`` (and every argument
error) becomes one line on stderr and exit status 2, naming the flag as the user typed it; Ctrl-C and
SIGTERM one line saying what was kept, and exit 130 or 143. Building the parser imports neither torch nor
simpy, so ``cascade schedule`` stays light.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from apps import interrupts
from apps.host import machine
from cascade_sched.cliargs import ArgumentParser, Handler, Invocation
from cascade_sched.errors import CascadeError, ConfigError
from executors.torchrun import rank, under_torchrun

__all__ = ["build_parser", "main"]


def build_parser() -> tuple[ArgumentParser, dict[str, Handler]]:
    """The ``cascade`` parser, and each subcommand's handler."""
    from apps import tiny_folder
    from apps.calibrate import cli as calibrate
    from apps.generate import cli as generate
    from apps.quality import cli as quality
    from apps.serve import cli as serve
    from cascade_sched import __version__
    from cascade_sched import cli as schedule
    from simulator import cli as simulator

    parser = ArgumentParser(prog="cascade", description="Block Cascading: schedules, simulation, generation.")
    parser.add_argument("--version", action="version", version=f"cascade-sched {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    handlers: dict[str, Handler] = {}
    for level in (schedule, simulator, generate, calibrate, quality, serve, tiny_folder):
        handlers.update(level.register(sub))
    return parser, handlers


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cascade`` console script."""
    interrupts.install()
    # c10's own warnings print C++ stack traces (a rank's store poll racing the store host's exit while a
    # stopped group shuts down); read once when torch loads, which no subcommand has done yet. A user's
    # own setting wins.
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    command = "cascade"
    sub: ArgumentParser | None = None
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser, handlers = build_parser()
        for arg in argv:  # only possible in-process (exec cannot pass one); paths would fail deep inside
            if "\x00" in arg:
                raise CascadeError(f"argument {arg!r} contains a NUL byte")
        args = parser.parse_args(argv)
        if args.command is None:
            # The main job on a built-in default: the planner.
            return main(["plan"])
        command = f"cascade {args.command}"
        sub = subparser(parser, args.command)
        return handlers[args.command](Invocation(args, sub.typed(argv), machine()))
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (apps.interrupts)
        interrupts.handled()
        code = interrupts.exit_code(e)
        print(interrupts.line(command, code - 128, interrupts.what_was_kept(e)), file=sys.stderr, flush=True)
        return code
    except ConfigError as e:
        _refuse(f"{command}: error: {(sub or ArgumentParser()).refusal(e, argv)}")
        return 2
    except CascadeError as e:
        kept = interrupts.what_was_kept()  # a run that failed half-way keeps its finished part
        _refuse(f"{command}: error: {e}" + (f"; {kept}" if kept else ""))
        return 2
    except BrokenPipeError:
        return 0


def _refuse(line: str) -> None:
    """Print a refusal once: under torchrun every rank refuses the same flags, and rank 0 says so."""
    if not under_torchrun() or rank() == 0:
        print(line, file=sys.stderr)


def subparser(parser: argparse.ArgumentParser, name: str) -> ArgumentParser:
    """The subcommand's parser (``plan`` -> plan's), so a flag is looked up among its own flags only."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            sub: ArgumentParser = action.choices[name]
            return sub
    raise KeyError(name)


if __name__ == "__main__":
    sys.exit(main())
