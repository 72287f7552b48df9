"""``cascade schedule``: build, validate and print a cascade schedule (registered into the ``cascade``
command, :mod:`apps.cli`, through :func:`register`).

``python -m cascade_sched.cli ...`` runs the ``cascade`` command itself, as installed (or, not installed, from
the project on PYTHONPATH): the documented entry module for torchrun. This module imports neither torch nor simpy, and names no package above it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cascade_sched.cliargs import Handler, Invocation, add_schedule_args, check_outputs, spec_from_args
from cascade_sched.errors import ConfigError

MAX_GRID_CELLS = 4_000_000  # about 40 MB of text or a 2000 x 2000 PNG: the grid printed or drawn


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Handler]:
    """Add ``schedule`` to the ``cascade`` command; returns its handler."""
    p = sub.add_parser("schedule", help="build, validate and print a cascade schedule")
    add_schedule_args(p)
    p.add_argument("--json", action="store_true", help="print the cascade-schedule/4 JSON to stdout")
    p.add_argument("--compact", action="store_true", help="with --json: one line, no indentation")
    p.add_argument("--png", metavar="PATH", help="draw the tick x device grid to a PNG (default none)")
    return {"schedule": _cmd_schedule}


def _cmd_schedule(run: Invocation) -> int:
    from cascade_sched.io import dumps
    from cascade_sched.render import draw_grid, render_grid
    from cascade_sched.schedule import build_schedule
    from cascade_sched.validate import validate

    args = run.args
    check_outputs(args, {"png": (".png",)})
    schedule = validate(build_schedule(spec_from_args(args, run.machine)))
    cells = schedule.num_ticks * schedule.num_devices
    if cells > MAX_GRID_CELLS and (args.png or not args.json):
        raise ConfigError("num_devices" if schedule.num_devices > schedule.num_ticks else "num_blocks",
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


def _lag_text(lags: tuple[int, ...]) -> str:
    if not lags:
        return "none (one block)"
    return str(lags[0]) if len(set(lags)) == 1 else ",".join(map(str, lags))


def main(argv: Sequence[str] | None = None) -> int:
    """The ``cascade`` command: the console script this distribution installs, found through its entry point,
    so that this module imports nothing above the core. Where the project runs from a folder on PYTHONPATH
    without being installed (the GPU kit on a machine without the index), the same command is found by its
    module, ``apps.cli``, at call time."""
    from importlib import import_module
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        (script,) = [ep for ep in distribution("cascade-sched").entry_points
                     if ep.group == "console_scripts" and ep.name == "cascade"]
        command = script.load()
    except PackageNotFoundError:
        command = import_module("apps.cli").main
    status: int = command(argv)
    return status


if __name__ == "__main__":
    sys.exit(main())
