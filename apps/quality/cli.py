"""``cascade quality``: what lag, attention and prompt switches do to the trained toy model's videos
(docs/quality.md).

Imports torch only when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from apps.flags import THREADS_HELP, add_matrix_args, check_input_file, check_matrix_args, check_names
from apps.host import check_threads
from cascade_sched.bounds import WORK_BUDGET_S
from cascade_sched.cliargs import (
    DEFAULT_BLOCKS,
    Handler,
    Invocation,
    check_outputs,
    name_list,
)
from cascade_sched.errors import ConfigError, check_float, check_range
from models.weights import TOY_WINDOW

MAX_SEEDS = 10_000  # videos per setting; the run's length is checked against the work bound too
TOY_BLOCK_S = 0.05  # one toy block through every stage on one core (measured, generous)
POLICIES = ("none", "recache")  # apps.quality.measure.POLICIES, spelled here so the parser imports no torch
VARIANTS = ("cascade", "sequential")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Handler]:
    """Add ``quality`` to the ``cascade`` command; returns its handler."""
    p = sub.add_parser("quality", help="measure physics error, missing balls, block jumps, distance to sequential "
                       "and prompt switches for every lag and attention mode, on the trained toy model")
    p.add_argument("--seeds", type=int, default=8, help="videos per setting, seeds 0..N-1 (default %(default)s; "
                   "docs/quality.md uses 16 x 8 blocks)")
    p.add_argument("--switch-seeds", type=int, default=4,
                   help="videos per switch setting (default %(default)s; 0: no switch rows)")
    p.add_argument("--blocks", type=int, default=DEFAULT_BLOCKS, help="blocks per video (default %(default)s; "
                   "docs/quality.md uses 8)")
    add_matrix_args(p, "measure")
    p.add_argument("--policies", type=name_list, default=POLICIES, help="switch policies (default none,recache)")
    p.add_argument("--variants", type=name_list, default=VARIANTS,
                   help="the shipped variants to measure: cascade (the default toy), sequential (default both)")
    p.add_argument("--checkpoint", default=None,
                   help="measure these toy weights (.safetensors with its .json) instead of the shipped variants "
                   "(default none: the shipped ones)")
    p.add_argument("--shift", type=float, default=None,
                   help="sampler shift (default: the one saved with the weights, 1 for the shipped toy)")
    p.add_argument("--frames", default=None, metavar="PATH.png",
                   help="also draw seed 0's frames: world, sequential, lag 1 of each context measured (default none)")
    p.add_argument("--switch-frames", default=None, metavar="PATH.png",
                   help="also draw seed 0's switch, lag 1 causal, under each policy (default none)")
    p.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    p.add_argument("--json", action="store_true", help="print the rows as JSON: {rows, switches}")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return {"quality": _cmd_quality}


def _check(args: argparse.Namespace, cores: int) -> None:
    """Every flag in its range, the run's size and the output paths, before the model loads."""
    check_outputs(args, {"frames": (".png",), "switch_frames": (".png",)})
    check_input_file("--checkpoint", args.checkpoint, folder_ok=True)
    check_range("--seeds", args.seeds, 1, MAX_SEEDS)
    check_range("--switch-seeds", args.switch_seeds, 0, MAX_SEEDS)
    check_range("--blocks", args.blocks, 2, 1000)
    check_threads("--threads", args.threads, cores)
    check_float("--shift", args.shift, 0, 1000, open_lo=True)
    stages = 5
    check_matrix_args(args, stages)
    check_names("--policies", args.policies, POLICIES)
    check_names("--variants", args.variants, VARIANTS)
    lags = args.lag or range(1, stages + 1)
    settings = 1 + len(lags) * len(args.attention)
    variants = 1 if args.checkpoint else len(args.variants)
    from apps.quality.measure import switch_settings

    switches = len(switch_settings(lags, args.attention, args.policies))
    videos = variants * (settings * args.seeds + switches * args.switch_seeds)
    seconds = videos * args.blocks * TOY_BLOCK_S
    if seconds > WORK_BUDGET_S:
        raise ConfigError("--seeds", f"`--seeds` {args.seeds} (+ `--switch-seeds` {args.switch_seeds}) x {settings} "
                                     f"settings x {variants} variant(s) x `--blocks` {args.blocks} is "
                                     f"~{seconds / 60:.0f} min of toy generation, past the bound of "
                                     f"{WORK_BUDGET_S / 60:.0f} min")


def _cmd_quality(run: Invocation) -> int:
    import torch

    from apps.quality import measure as q
    from apps.request import ModelSource
    from apps.sources import build_sampler
    from models.toy_world import make_clip

    args = run.args
    _check(args, run.machine.cores)
    atts, policies, variants = list(args.attention), list(args.policies), list(args.variants)
    lags = None if args.lag is None else list(args.lag)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint:
        models = {"checkpoint": q.toy_model(args.checkpoint)}
    else:
        shipped = q.variant_models()
        models = {v: shipped[v] for v in variants}
    sampler = build_sampler(ModelSource(checkpoint=args.checkpoint, shift=args.shift), "toy")
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
        picks = {"world (a data clip)": make_clip(10_000, q.PROMPTS[0], frames=3 * args.blocks).frames}
        for label, key in (("sequential (lag S)", (stages, "causal", 0)), ("lag 1 causal", (1, "causal", 0)),
                           ("lag 1 bidirectional", (1, "bidirectional", 0)), ("lag 1 stale", (1, "stale", 0)),
                           ("lag 1 stage", (1, "stage", 0))):
            if key in videos:
                picks[label] = videos[key]
        q.save_strip(picks, args.frames, title=f"cascade quality: seed 0, {args.blocks} blocks of "
                     f"'{q.PROMPTS[0]}' on the toy model ({next(iter(models))} weights, window {TOY_WINDOW}): the "
                     "world's own clip on top, then the video each schedule makes")
    if args.switch_frames and switch_videos:
        old, new = q.SWITCHES[0]
        at = min(q.SWITCH_AT, args.blocks - 1)
        picks = {f"world: '{old}' -> '{new}'": make_clip(10_000, [(0, old), (at, new)], frames=3 * args.blocks).frames}
        for (lag, att, pol, s), v in switch_videos.items():
            if s == 0 and lag in (1, stages) and att == "causal":
                picks[f"lag {lag} causal, {pol}"] = v
        q.save_strip(picks, args.switch_frames, switch_at=at, title=f"cascade quality: seed 0, {args.blocks} "
                     f"blocks on the toy model ({next(iter(models))} weights, window {TOY_WINDOW}), the prompt "
                     f"switching from '{old}' to '{new}' at block {at}: the world's clip on top, then each "
                     "schedule and switch policy (none: the cascade's; recache: the baseline's)")
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
