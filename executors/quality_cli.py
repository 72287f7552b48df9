"""``cascade quality``: what lag and attention do to the trained toy model's videos (docs/quality.md).

Imports torch only when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

MAX_SEEDS = 10_000  # videos per setting; the run's length is checked against the work bound too
TOY_BLOCK_S = 0.05  # one toy block through every stage on one core (measured, generous)


def register(sub: Any) -> dict[str, Callable[[argparse.Namespace], int]]:
    from cascade_sched.cliargs import DEFAULT_BLOCKS, THREADS_HELP, alias, int_ranges, name_list

    p = sub.add_parser("quality", help="measure physics error, block jumps and distance to sequential for "
                       "every lag and attention mode, on the trained toy model")
    p.add_argument("--seeds", type=int, default=8, help="videos per setting, seeds 0..N-1 (default 8)")
    p.add_argument("--blocks", type=int, default=DEFAULT_BLOCKS, help="blocks per video (default %(default)s)")
    p.add_argument("--lag", type=int_ranges, default=None, help="lags to measure, e.g. 1,5 or 1-5 (default 1..S)")
    p.add_argument("--attention", type=name_list, default=("causal", "bidirectional", "stale"),
                   help="attention modes to measure (default causal,bidirectional,stale)")
    alias(p, "--lags", "--lag", type=int_ranges, default=None)
    p.add_argument("--checkpoint", default=None, help="toy weights (.safetensors with its .json); default: shipped")
    p.add_argument("--shift", type=float, default=None,
                   help="sampler shift (default: the one saved with the weights, 1 for the shipped toy)")
    p.add_argument("--frames", default=None, metavar="PATH.png",
                   help="also draw seed 0's frames: sequential, lag 1 causal, lag 1 bidirectional (default none)")
    p.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return {"quality": _cmd_quality}


def _check(args: argparse.Namespace) -> None:
    """Every flag in its range, the run's size and the output path, before the model loads."""
    from cascade_sched.cliargs import (
        WORK_BUDGET_S,
        check_float,
        check_input_file,
        check_int,
        check_outputs,
        check_threads,
    )
    from cascade_sched.errors import ConfigError
    from cascade_sched.spec import ATTENTION_MODES

    check_outputs(args, {"frames": (".png",)})
    check_input_file("--checkpoint", args.checkpoint, folder_ok=True)
    check_int("--seeds", args.seeds, 1, MAX_SEEDS)
    check_int("--blocks", args.blocks, 2, 1000)
    check_threads("--threads", args.threads)
    check_float("--shift", args.shift, 0, 1000, open_lo=True)
    stages = 5
    for lag in args.lag or ():
        check_int("--lag", lag, 1, stages, f" (S={stages} stages)")
    bad = [a for a in args.attention if a not in ATTENTION_MODES]
    if bad:
        raise ConfigError("--attention", f"`--attention` must list {', '.join(ATTENTION_MODES)}, got {bad[0]!r}")
    settings = 1 + len(args.lag or range(stages)) * len(args.attention)
    seconds = args.seeds * settings * args.blocks * TOY_BLOCK_S
    if seconds > WORK_BUDGET_S:
        raise ConfigError("--seeds", f"`--seeds` {args.seeds} x {settings} settings x `--blocks` {args.blocks} is "
                                     f"~{seconds / 60:.0f} min of toy generation, past the bound of "
                                     f"{WORK_BUDGET_S / 60:.0f} min")


def _cmd_quality(args: argparse.Namespace) -> int:
    import torch

    from executors.quality import (
        data_row,
        format_table,
        measure,
        rows_json,
        save_strip,
        toy_model,
        toy_sampler,
    )
    from models.sampler import FlowMatchSampler

    _check(args)
    atts = list(args.attention)
    lags = None if args.lag is None else list(args.lag)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = toy_model(args.checkpoint)
    sampler = FlowMatchSampler(shift=args.shift) if args.shift is not None else toy_sampler(args.checkpoint)
    videos: dict[tuple[int, str, int], Any] = {}
    rows = measure(model, seeds=args.seeds, blocks=args.blocks, lags=lags, attentions=atts,
                   progress=not args.no_progress, videos=videos, sampler=sampler)
    rows.insert(0, data_row(args.seeds, args.blocks))
    if args.frames:
        from models.toy_world import make_clip

        stages = max(r.lag for r in rows)
        picks = {"ground truth (a data clip)": make_clip(10_000, frames=3 * args.blocks).frames}
        for label, key in (("sequential (lag S)", (stages, "causal", 0)), ("lag 1 causal", (1, "causal", 0)),
                           ("lag 1 bidirectional", (1, "bidirectional", 0)), ("lag 1 stale", (1, "stale", 0))):
            if key in videos:
                picks[label] = videos[key]
        save_strip(picks, args.frames)
    if args.json:
        print(json.dumps(rows_json(rows), indent=1))
    else:
        print(f"toy model (sampler shift {sampler.shift:g}), {args.seeds} seed(s) x {args.blocks} blocks per setting; physics err: mean "
              "constant-velocity(+bounce) residual of ball centroids; jump ratio: frame difference across "
              "block boundaries / inside blocks; dist to seq: mean |pixel difference| to lag S, same seed")
        print(format_table(rows))
        if args.frames:
            print(f"wrote frames: {args.frames}")
    sys.stdout.flush()
    return 0
