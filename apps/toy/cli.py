"""``python -m apps.toy``: train the toy model's two variants and write the shipped weights
(:mod:`apps.toy.train`; docs/quality.md has the recipe and its figures)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from apps.toy.targets import SHIFT, VARIANTS
from apps.toy.train import OUTS, plot_losses, train_variant
from models.checkpoints import load_model, save_model
from models.weights import TOY_WINDOW


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m apps.toy", description=__doc__.split("\n")[0])
    p.add_argument("--variant", choices=[*VARIANTS, "both"], default="both", help="which to train (default both)")
    p.add_argument("--steps", type=int, default=1600, help="optimizer steps per variant (default %(default)s)")
    p.add_argument("--batch", type=int, default=16, help="clips per step (default %(default)s)")
    p.add_argument("--blocks", type=int, default=TOY_WINDOW, help="blocks per clip (default %(default)s)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seeds the data, noise and init (default 0)")
    p.add_argument("--init", default=None,
                   help="start from these weights (a second round) instead of a fresh model; one --variant")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    p.add_argument("--out", default=None,
                   help="weights path (.safetensors; .json beside it) of a single --variant (default: the shipped)")
    p.add_argument("--plot", default="docs/img/toy_loss.png", help="loss-curve picture")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    for name in ("steps", "batch", "blocks", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name} must be a positive integer, got {value}")
    if args.blocks < 2:
        p.error(f"--blocks must be at least 2 (a switch needs a second block), got {args.blocks}")
    if (args.out is not None or args.init is not None) and args.variant == "both":
        p.error("--out and --init name one variant's weights: give --variant cascade or --variant sequential")
    from cascade_sched.errors import ConfigError
    from executors.devices import check_device

    try:
        check_device(args.device)
    except ConfigError as exc:
        p.error(str(exc))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    variants = list(VARIANTS) if args.variant == "both" else [args.variant]
    stages = []
    for variant in variants:
        init = load_model(args.init).float() if args.init else None
        model, st = train_variant(variant, args.steps, args.batch, args.blocks, args.lr, args.seed, args.device,
                                  not args.no_progress, init)
        stages.append(st)
        out = Path(args.out) if args.out else OUTS[variant]
        if variant == "sequential" and args.out is None:
            model = model.half()  # the second variant ships at half the size
        path = save_model(model, out, sampler={"shift": SHIFT})
        tail = st.losses[-100:]
        print(f"{variant}: {st.wall_s:.0f} s; final loss (mean of last {len(tail)}) {sum(tail) / len(tail):.4f}; "
              f"wrote {path}")
    if not args.no_plot:
        plot_losses(stages, args.plot, f"{args.batch} clips x {args.blocks} blocks per step, lr {args.lr:g}, "
                    f"seed {args.seed}")
    print(f"total {sum(st.wall_s for st in stages):.0f} s on {torch.get_num_threads()} thread(s)")
    return 0

