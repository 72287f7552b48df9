"""``cascade calibrate`` and ``cascade validate``: registered into the ``cascade`` command through
:func:`register`. Torch is imported inside the handlers, so ``cascade schedule`` stays light.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from typing import Any

from cascade_sched.cli import int_ranges, name_list
from cascade_sched.errors import ConfigError

Handler = Callable[[argparse.Namespace], int]


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _model_args(g: Any, kit: bool = False) -> None:
    more = "; wan2.1-1.3b with --gpu-kit" if kit else ""
    g.add_argument("--model", default=None, help=f"tiny | small | toy | wan2.1-1.3b | wan2.1-14b (default small{more})")
    g.add_argument("--checkpoint", default=None, help="model weights (default: seeded random weights)")
    g.add_argument("--device", default=None, help=f"cpu | cuda (default cpu{'; cuda with --gpu-kit' if kit else ''})")
    g.add_argument("--dtype", default=None,
                   help=f"float32 | bfloat16 (default float32{'; bfloat16 with --gpu-kit' if kit else ''})")


def _resolve(args: argparse.Namespace, kit: bool) -> None:
    """Fill the model flags' defaults, which differ for the GPU kit."""
    for name, cpu, gpu in (("model", "small", "wan2.1-1.3b"), ("device", "cpu", "cuda"), ("dtype", "float32", "bfloat16")):
        if getattr(args, name) is None:
            setattr(args, name, gpu if kit else cpu)


def register(subparsers: Any) -> dict[str, Handler]:
    """Add ``calibrate`` and ``validate`` to the ``cascade`` command; returns their handlers."""
    p = subparsers.add_parser("calibrate", help="profile the model, sampler, decoder and links on this machine")
    g = p.add_argument_group("calibration")
    _model_args(g, kit=True)
    g.add_argument("--out", default=None, help="profile file to write (default calib.json; gpu-profile.json with --gpu-kit)")
    g.add_argument("--gpu-kit", action="store_true",
                   help="the one-shot GPU calibration: forward vs batch 1-5 and context 1-11 blocks at 480x832 with "
                        "random weights, the Wan VAE decode, peak memory, the tick overhead; writes the profile and "
                        "prints measured vs predicted sequential FPS (a few minutes on one GPU)")
    g.add_argument("--no-vae", action="store_true", help="with --gpu-kit: skip the Wan VAE (needs diffusers)")
    g.add_argument("--threads", type=int, default=1,
                   help="intra-op threads, as the runs to predict use (default 1: one rank per core; 0 = torch's default)")
    g.add_argument("--batches", type=int_ranges, default=(1, 2, 3, 4, 5), help="local tasks per device (default 1-5)")
    g.add_argument("--context-blocks", type=int_ranges, default=None,
                   help="blocks each task attends to, its own included (default 1,2,3,4,6,8,12; 1-11 with --gpu-kit)")
    g.add_argument("--warmup", type=int, default=None, help="untimed runs per shape (default 2; 1 with --gpu-kit)")
    g.add_argument("--repeats", type=int, default=None,
                   help="timed runs per shape; the median is kept (default 5; 3 with --gpu-kit)")
    g.add_argument("--no-link", action="store_true", help="skip the two-rank collective measurement")
    g.add_argument("--notes", default="", help="free text kept in the provenance")

    q = subparsers.add_parser("validate", help="compare executor runs with simulator predictions")
    g = q.add_argument_group("matrix")
    _model_args(g)
    g.add_argument("--public", action="store_true",
                   help="print the table of public measurements the simulator reproduces (no runs; with --markdown "
                        "the table docs/validation.md carries)")
    g.add_argument("--profile", default=None, metavar="PATH",
                   help="a calibrated profile (default: calibrate now, one process, --threads threads)")
    g.add_argument("--threads", type=int, default=1, help="threads of the world-1 runs and of calibration (default 1)")
    g.add_argument("--blocks", type=int, default=16, help="blocks per run (default %(default)s)")
    g.add_argument("--window", type=int, default=4, help="attention window in blocks, 0 = unbounded (default 4)")
    g.add_argument("--lags", type=int_ranges, default=None, help="lags to run (default every lag 1..S)")
    g.add_argument("--attentions", type=name_list, default=("causal", "bidirectional", "stale"),
                   help="attention modes (default causal,bidirectional,stale)")
    g.add_argument("--worlds", type=int_ranges, default=None,
                   help="process counts (default 1,2 on a machine with 2+ cores, else 1)")
    g.add_argument("--repeats", type=int, default=1, help="runs per row; block times are medians (default 1)")
    g.add_argument("--timeout", type=float, default=120.0, help="seconds a rank waits on a peer (default 120)")
    g.add_argument("--quiet-wait", type=float, default=30.0, metavar="SECONDS",
                   help="before each run, wait up to this long for the machine's CPUs to be idle (default 30)")
    g.add_argument("--contention-model", default="sharing", choices=("sharing", "tick"),
                   help="how the prediction prices ranks sharing the CPU: sharing = processor sharing of the "
                        "host's cores with the measured background load (default); tick = one measured factor "
                        "per tick in which two ranks compute")
    g.add_argument("--json", action="store_true", help="print the rows as JSON instead of the table")
    g.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    g.add_argument("--traces", default=None, metavar="DIR", help="write each row's measured and predicted trace")
    g.add_argument("--save-profile", default=None, metavar="PATH", help="write the profile calibrated for this run")
    return {"calibrate": _cmd_calibrate, "validate": _cmd_validate}


def _options(args: argparse.Namespace, link: bool) -> Any:
    from executors.calibrate import DEFAULT_CONTEXT_BLOCKS, CalibrateOptions

    if hasattr(args, "batches"):
        args.warmup = 2 if args.warmup is None else args.warmup
        args.repeats = 5 if args.repeats is None else args.repeats
    if hasattr(args, "context_blocks") and args.context_blocks is None:
        args.context_blocks = DEFAULT_CONTEXT_BLOCKS
    for name in ("warmup", "repeats"):
        value = getattr(args, name, 1)
        if value < (0 if name == "warmup" else 1):
            raise ConfigError(name, f"`--{name}` must be at least {0 if name == 'warmup' else 1}, got {value}")
    if args.threads < 0:
        raise ConfigError("threads", f"`--threads` must be 0 (torch's default) or more, got {args.threads}")
    return CalibrateOptions(
        model=args.model, device=args.device, dtype=args.dtype, threads=args.threads or None,
        checkpoint=args.checkpoint, link=link, notes=getattr(args, "notes", ""),
        **({"batches": args.batches, "context_blocks": args.context_blocks, "warmup": args.warmup,
            "repeats": args.repeats} if hasattr(args, "batches") else {}),
    )


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from executors.calibrate import calibrate

    _resolve(args, args.gpu_kit)
    args.out = args.out or ("gpu-profile.json" if args.gpu_kit else "calib.json")
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder) or os.path.isdir(args.out):
        raise ConfigError("out", f"`--out` {args.out!r} must be a file in an existing folder")
    if args.gpu_kit:
        return _cmd_kit(args)
    profile = calibrate(_options(args, link=not args.no_link), _say)
    profile.save(args.out)
    prov = profile.provenance
    print(f"wrote {args.out}: {len(profile.forward)} forward shapes of {profile.model} on {prov['device']}, "
          f"{prov['dtype']}, {prov['threads']} thread(s), torch {prov['torch']}"
          + (", with a link fit" if profile.link_fit else ""))
    return 0


def _cmd_kit(args: argparse.Namespace) -> int:
    from executors.gpu_check import KitOptions, run_kit

    for name in ("warmup", "repeats"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            raise ConfigError(name, f"`--{name}` must be at least {0 if name == 'warmup' else 1}, got {value}")
    options = KitOptions(model=args.model, device=args.device, dtype=args.dtype, batches=tuple(args.batches),
                         context_blocks=tuple(args.context_blocks or range(1, 12)),
                         warmup=1 if args.warmup is None else args.warmup,
                         repeats=3 if args.repeats is None else args.repeats, vae=not args.no_vae,
                         out=args.out)
    run_kit(options, _say)
    return 0


def _default_worlds(device: str) -> tuple[int, ...]:
    import os

    if device.startswith("cuda"):
        import torch

        n = torch.cuda.device_count()
        return tuple(w for w in (1, 2, 4, 8) if w <= n) or (1,)
    return (1, 2) if (os.cpu_count() or 1) >= 2 else (1,)


def _cmd_validate(args: argparse.Namespace) -> int:
    if args.public:
        from simulator.reproduce import format_public, public_rows

        print(format_public(public_rows(), markdown=args.markdown))
        return 0
    from executors.calibrate import calibrate
    from executors.validation import MatrixOptions, format_markdown, format_table, run_matrix
    from simulator.profile import Profile

    _resolve(args, False)

    if args.window < 0:
        raise ConfigError("window", f"`--window` must be at least 1 block, or 0 for unbounded, got {args.window}")
    if args.repeats < 1:
        raise ConfigError("repeats", f"`--repeats` must be at least 1, got {args.repeats}")
    worlds = args.worlds or _default_worlds(args.device)
    options = MatrixOptions(
        model=args.model, blocks=args.blocks, window=args.window or None, lags=args.lags,
        attentions=tuple(args.attentions), worlds=tuple(worlds), repeats=args.repeats, device=args.device,
        dtype=args.dtype, threads=args.threads or None, checkpoint=args.checkpoint, timeout_s=args.timeout,
        traces=args.traces, quiet_s=max(0.0, args.quiet_wait), sharing=args.contention_model == "sharing",
    )
    if args.profile:
        profile = Profile.load(args.profile)
    else:
        _say(f"calibrating {args.model} in one process ({args.threads or 'default'} thread(s)) ...")
        profile = calibrate(_options(args, link=max(worlds) > 1), _say)
        if args.save_profile:
            profile.save(args.save_profile)
    rows = run_matrix(options, profile, _say)
    if args.json:
        doc = {"format": "cascade-validate/1", "profile": profile.path or "calibrated in this run",
               "provenance": dict(profile.provenance), "rows": [r.to_dict() for r in rows]}
        print(json.dumps(_finite(doc), indent=1))
    else:
        prov = profile.provenance
        print(f"profile: {profile.path or 'calibrated in this run'} ({prov.get('device')}, {prov.get('threads')} "
              f"thread(s), torch {prov.get('torch')}, {prov.get('date')})")
        print(format_markdown(rows) if args.markdown else format_table(rows))
    return 0


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
