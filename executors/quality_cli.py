"""``cascade quality``: what lag, attention and prompt switches do to the trained toy model's videos
(docs/quality.md).

Imports torch only when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any


def register(sub: Any) -> dict[str, Callable[[argparse.Namespace], int]]:
    p = sub.add_parser("quality", help="measure physics error, missing balls, block jumps, distance to sequential "
                       "and prompt switches for every lag and attention mode, on the trained toy model")
    p.add_argument("--seeds", type=int, default=16, help="videos per setting, seeds 0..N-1 (default 16)")
    p.add_argument("--switch-seeds", type=int, default=4,
                   help="videos per switch setting (default 4; 0: no switch rows)")
    p.add_argument("--blocks", type=int, default=8, help="blocks per video (default 8)")
    p.add_argument("--lags", default=None, help="comma-separated lags (default 1..S)")
    p.add_argument("--attention", default="causal,bidirectional,stale",
                   help="comma-separated attention modes (default causal,bidirectional,stale)")
    p.add_argument("--policies", default="none,recache", help="switch policies (default none,recache)")
    p.add_argument("--variants", default="cascade,sequential",
                   help="the shipped variants to measure: cascade (the default toy), sequential (default both)")
    p.add_argument("--checkpoint", default=None,
                   help="measure these toy weights (.safetensors with its .json) instead of the shipped variants")
    p.add_argument("--shift", type=float, default=None,
                   help="sampler shift (default: the one saved with the weights, 1 for the shipped toy)")
    p.add_argument("--frames", default=None, metavar="PATH.png",
                   help="also draw seed 0's frames: world, sequential, lag 1 causal/bidirectional/stale")
    p.add_argument("--switch-frames", default=None, metavar="PATH.png",
                   help="also draw seed 0's switch, lag 1 causal, under each policy")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON: {rows, switches}")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return {"quality": _cmd_quality}


def _list(text: str, valid: tuple[str, ...], flag: str) -> list[str]:
    from cascade_sched.errors import ConfigError

    items = [a.strip() for a in text.split(",") if a.strip()]
    if not items or any(a not in valid for a in items):
        raise ConfigError(flag, f"`--{flag}` must list {', '.join(valid)}, got {text!r}")
    return items


def _cmd_quality(args: argparse.Namespace) -> int:
    import torch

    from cascade_sched.errors import ConfigError
    from executors import quality as q
    from models.sampler import FlowMatchSampler

    if args.seeds < 1 or args.blocks < 2 or args.switch_seeds < 0:
        raise ConfigError("seeds", f"need `--seeds` >= 1, `--switch-seeds` >= 0 and `--blocks` >= 2, got "
                          f"{args.seeds}, {args.switch_seeds}, {args.blocks}")
    atts = _list(args.attention, q.ATTENTIONS, "attention")
    policies = _list(args.policies, q.POLICIES, "policies")
    variants = _list(args.variants, ("cascade", "sequential"), "variants")
    try:
        lags = None if args.lags is None else [int(x) for x in args.lags.split(",") if x.strip()]
    except ValueError:
        raise ConfigError("lag", f"`--lags` must be comma-separated integers, got {args.lags!r}") from None
    if args.shift is not None and not args.shift > 0:
        raise ConfigError("shift", f"`--shift` must be positive, got {args.shift}")
    torch.set_num_threads(max(1, args.threads))
    if args.checkpoint:
        models = {"checkpoint": q.toy_model(args.checkpoint)}
    else:
        shipped = q.variant_models()
        models = {v: shipped[v] for v in variants}
    sampler = FlowMatchSampler(shift=args.shift) if args.shift is not None else q.toy_sampler(args.checkpoint)
    rows, switches = [q.data_row(args.seeds, args.blocks)], []
    if args.switch_seeds:
        switches.append(q.data_switch_row(args.switch_seeds, args.blocks))
    videos: dict[tuple[int, str, int], Any] = {}
    switch_videos: dict[tuple[int, str, str, int], Any] = {}
    for i, (name, model) in enumerate(models.items()):
        rows += q.measure(model, seeds=args.seeds, blocks=args.blocks, lags=lags, attentions=atts,
                          progress=not args.no_progress, videos=videos if i == 0 else None, sampler=sampler,
                          variant=name)
        if args.switch_seeds:
            switches += q.measure_switches(model, seeds=args.switch_seeds, blocks=args.blocks, lags=lags,
                                           attentions=atts, policies=policies, progress=not args.no_progress,
                                           videos=switch_videos if i == 0 else None, sampler=sampler, variant=name)
    stages = max(r.lag for r in rows)
    if args.frames:
        picks = {"world (a data clip)": q.make_clip(10_000, q.PROMPTS[0], frames=3 * args.blocks).frames}
        for label, key in (("sequential (lag S)", (stages, "causal", 0)), ("lag 1 causal", (1, "causal", 0)),
                           ("lag 1 bidirectional", (1, "bidirectional", 0)), ("lag 1 stale", (1, "stale", 0))):
            if key in videos:
                picks[label] = videos[key]
        q.save_strip(picks, args.frames)
    if args.switch_frames and switch_videos:
        old, new = q.SWITCHES[0]
        at = min(q.SWITCH_AT, args.blocks - 1)
        picks = {f"world: '{old}' -> '{new}'": q.make_clip(10_000, [(0, old), (at, new)], frames=3 * args.blocks).frames}
        for (lag, att, pol, s), v in switch_videos.items():
            if s == 0 and lag in (1, stages) and att == "causal":
                picks[f"lag {lag} causal, {pol}"] = v
        q.save_strip(picks, args.switch_frames)
    if args.json:
        print(json.dumps({"rows": q.rows_json(rows), "switches": q.rows_json(switches)}, indent=1))
    else:
        print(f"toy model (sampler shift {sampler.shift:g}), {args.seeds} seed(s) x {args.blocks} blocks per setting; "
              "physics err: mean constant-velocity(+bounce) residual of ball centroids; missing/extra: (frame, "
              "ball) pairs of the prompt's balls not drawn / of the other channels drawn; jump ratio: frame "
              "difference across block boundaries / inside blocks; dist to seq: mean |pixel difference| to lag S")
        print(q.format_table(rows))
        if switches:
            print(f"\nprompt switches at block {min(q.SWITCH_AT, args.blocks - 1)}, {args.switch_seeds} seed(s) per "
                  "setting; frames to follow: until the video follows the new prompt for good; switch jump: jump "
                  "ratio at the switch boundary over the balls both prompts name; stall: measured by the executor")
            print(q.format_switch_table(switches))
        for flag, path in (("frames", args.frames), ("switch frames", args.switch_frames)):
            if path:
                print(f"wrote {flag}: {path}")
    sys.stdout.flush()
    return 0
