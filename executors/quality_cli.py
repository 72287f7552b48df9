"""``cascade quality``: what lag and attention do to the trained toy model's videos (docs/quality.md).

Imports torch only when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any


def register(sub: Any) -> dict[str, Callable[[argparse.Namespace], int]]:
    p = sub.add_parser("quality", help="measure physics error, block jumps and distance to sequential for "
                       "every lag and attention mode, on the trained toy model")
    p.add_argument("--seeds", type=int, default=8, help="videos per setting, seeds 0..N-1 (default 8)")
    p.add_argument("--blocks", type=int, default=6, help="blocks per video (default 6)")
    p.add_argument("--lags", default=None, help="comma-separated lags (default 1..S)")
    p.add_argument("--attention", default="causal,bidirectional,stale",
                   help="comma-separated attention modes (default causal,bidirectional,stale)")
    p.add_argument("--checkpoint", default=None, help="toy weights (.safetensors with its .json); default: shipped")
    p.add_argument("--shift", type=float, default=None,
                   help="sampler shift (default: the one saved with the weights, 1 for the shipped toy)")
    p.add_argument("--frames", default=None, metavar="PATH.png",
                   help="also draw seed 0's frames: sequential, lag 1 causal, lag 1 bidirectional")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return {"quality": _cmd_quality}


def _cmd_quality(args: argparse.Namespace) -> int:
    import torch

    from cascade_sched.errors import ConfigError
    from executors.quality import (
        ATTENTIONS,
        data_row,
        format_table,
        measure,
        rows_json,
        save_strip,
        toy_model,
        toy_sampler,
    )
    from models.sampler import FlowMatchSampler

    if args.seeds < 1 or args.blocks < 2:
        raise ConfigError("seeds", f"need `--seeds` >= 1 and `--blocks` >= 2, got {args.seeds}, {args.blocks}")
    atts = [a.strip() for a in args.attention.split(",") if a.strip()]
    bad = [a for a in atts if a not in ATTENTIONS]
    if bad or not atts:
        raise ConfigError("attention", f"`--attention` must list {', '.join(ATTENTIONS)}, got {args.attention!r}")
    try:
        lags = None if args.lags is None else [int(x) for x in args.lags.split(",") if x.strip()]
    except ValueError:
        raise ConfigError("lag", f"`--lags` must be comma-separated integers, got {args.lags!r}") from None
    if args.shift is not None and not args.shift > 0:
        raise ConfigError("shift", f"`--shift` must be positive, got {args.shift}")
    torch.set_num_threads(max(1, args.threads))
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
