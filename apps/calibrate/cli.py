"""``cascade calibrate`` and ``cascade validate``: registered into the ``cascade`` command through
:func:`register`. Torch is imported inside the handlers, so ``cascade schedule`` stays light.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from apps.flags import (
    MODEL_NAMES,
    THREADS_HELP,
    add_device_args,
    add_matrix_args,
    check_input_file,
    check_matrix_args,
)
from apps.host import check_threads
from apps.request import ModelSource
from cascade_sched.bounds import MAX_REPEATS, MAX_TIMEOUT_S, check_schedule_size
from cascade_sched.cliargs import (
    DEFAULT_BLOCKS,
    DEFAULT_WINDOW,
    Handler,
    Invocation,
    check_outputs,
    int_ranges,
)
from cascade_sched.errors import ConfigError, check_float, check_range
from cascade_sched.outputs import check_output
from executors.devices import check_device
from models.dtypes import check_dtype


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


DEFAULT_BUDGET_S = 540.0  # a 10-minute lease, start-up and the wheels' install left over
MAX_BUDGET_S = 86_400.0
MAX_BATCH = 64  # a tick batches at most one task per stage of a device: 64 covers any sampler here
MAX_CONTEXT = 1024  # blocks a task attends to (window + sink; an unbounded window is bounded by --blocks)


def _model_args(g: Any, kit: bool = False) -> None:
    more = "; wan2.1-1.3b with --gpu-kit" if kit else ""
    g.add_argument("--model", default=None, help=f"{MODEL_NAMES} (default small{more})")
    g.add_argument("--checkpoint", default=None, help="model weights (default: seeded random weights)")
    note = "; cuda / bfloat16 with --gpu-kit" if kit else ""
    add_device_args(g, device=None, dtype=None, note=note)


def _source(args: argparse.Namespace, kit: bool) -> ModelSource:
    """The model the flags name, with the defaults that differ for the GPU kit, each part checked before
    any calibration (an unknown name, a device this machine lacks, a missing checkpoint)."""
    from models.config import get_config

    cpu, gpu = ModelSource(model="small"), ModelSource(model="wan2.1-1.3b", device="cuda", dtype="bfloat16")
    default = gpu if kit else cpu
    source = ModelSource(model=args.model or default.model, checkpoint=args.checkpoint,
                         device=args.device or default.device, dtype=args.dtype or default.dtype)
    check_dtype("--dtype", source.dtype)
    get_config(source.model or "small")  # unknown names refused here, with the valid ones
    check_device(source.device)  # CUDA asked for where there is none: refused before any calibration
    check_input_file("--checkpoint", source.checkpoint, folder_ok=True)
    return source


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Handler]:
    """Add ``calibrate`` and ``validate`` to the ``cascade`` command; returns their handlers."""
    p = subparsers.add_parser("calibrate", help="profile the model, sampler, decoder and links on this machine")
    g = p.add_argument_group("calibration")
    _model_args(g, kit=True)
    g.add_argument("--out", default=None, metavar="PATH.json",
                   help="profile file to write (default calib.json; gpu-profile.json with --gpu-kit)")
    g.add_argument("--gpu-kit", action="store_true",
                   help="the one-shot GPU kit (benchmarks/gpu_check.sh): 1.3B sequential vs lag 1, the forward grid "
                        "(the profile), the Wan VAE and TAEHV, decoding on a second stream, the compiled executor, "
                        "14B; measured beside predicted, under --budget-s (random weights, no network)")
    g.add_argument("--no-vae", action="store_true", help="with --gpu-kit: skip the Wan VAE (needs diffusers)")
    g.add_argument("--budget-s", type=float, default=None, metavar="SECONDS",
                   help="with --gpu-kit: seconds the kit may take; a step that would not fit is skipped "
                        f"(default {DEFAULT_BUDGET_S:.0f})")
    g.add_argument("--rehearse", action="store_true",
                   help="with --gpu-kit: rehearse every step on the CPU at tiny geometries, one repeat")
    g.add_argument("--report", default=None, metavar="PATH.json",
                   help="with --gpu-kit: the report, rewritten after every step (default gpu-report.json beside "
                        "--out)")
    g.add_argument("--steps", type=int_ranges, default=None,
                   help="with --gpu-kit: which steps to run, of 1-6 (default all, in order)")
    g.add_argument("--threads", type=int, default=1, help=THREADS_HELP + "; 1 as one rank per core runs")
    g.add_argument("--batches", type=int_ranges, default=(1, 2, 3, 4, 5),
                   help=f"local tasks per device, 1..{MAX_BATCH} (default 1-5)")
    g.add_argument("--context-blocks", type=int_ranges, default=None,
                   help="blocks each task attends to, its own included (default 1,2,3,4,6,8,12; 1-11 with --gpu-kit)")
    g.add_argument("--warmup", type=int, default=None, help="untimed runs per shape (default 2; 1 with --gpu-kit)")
    g.add_argument("--repeats", type=int, default=None,
                   help="timed runs per shape; the median is kept (default 5; 3 with --gpu-kit)")
    g.add_argument("--no-link", action="store_true", help="skip the two-rank collective measurement")
    g.add_argument("--notes", default="", help="free text kept in the provenance (default none)")

    q = subparsers.add_parser("validate", help="compare executor runs with simulator predictions")
    g = q.add_argument_group("matrix")
    _model_args(g)
    g.add_argument("--public", action="store_true",
                   help="print the table of public measurements the simulator reproduces (no runs; with --markdown "
                        "the table docs/validation.md carries)")
    g.add_argument("--gpu-report", default=None, metavar="PATH.json",
                   help="print the markdown table of a GPU kit report (benchmarks/gpu_check.sh's OUT/gpu-report.json: "
                        "measured, predicted, error, card, driver, torch) and run nothing (default none)")
    g.add_argument("--profile", default=None, metavar="PATH",
                   help="a calibrated profile (default: calibrate now, one process, --threads threads)")
    g.add_argument("--threads", type=int, default=1, help=THREADS_HELP + "; of the world-1 runs and of calibration")
    g.add_argument("--blocks", type=int, default=DEFAULT_BLOCKS, help="blocks per run (default %(default)s)")
    g.add_argument("--window", type=int, default=DEFAULT_WINDOW,
                   help="attention window in blocks, 0 = unbounded (default %(default)s)")
    add_matrix_args(g, "run")
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
    g.add_argument("--traces", default=None, metavar="DIR",
                   help="write each row's measured and predicted trace into DIR (created; default none)")
    g.add_argument("--save-profile", default=None, metavar="PATH.json",
                   help="write the profile calibrated for this run (not with --profile; default none)")
    return {"calibrate": _cmd_calibrate, "validate": _cmd_validate}


def _check_counts(args: argparse.Namespace, machine_cores: int) -> None:
    """Every count flag in its range, before any work."""
    for name, lo in (("warmup", 0), ("repeats", 1)):
        check_range(f"--{name}", getattr(args, name, None), lo, MAX_REPEATS)
    check_threads("--threads", args.threads, machine_cores)
    for flag, values, hi in (("--batches", getattr(args, "batches", None), MAX_BATCH),
                             ("--context-blocks", getattr(args, "context_blocks", None), MAX_CONTEXT)):
        for value in values or ():
            check_range(flag, value, 1, hi)


def _calibrate_options(source: ModelSource, args: argparse.Namespace, link: bool, **grid: Any) -> Any:
    """What ``calibrate`` measures for ``source``: the grid the flags give (``grid``: calibrate's own), the
    rest at its defaults."""
    from apps.calibrate.calibrate import CalibrateOptions

    return CalibrateOptions(model=source.model or "small", device=source.device, dtype=source.dtype,
                            threads=args.threads or None, checkpoint=source.checkpoint, link=link, **grid)


def _cmd_calibrate(run: Invocation) -> int:
    from apps.calibrate.calibrate import DEFAULT_CONTEXT_BLOCKS, calibrate

    args = run.args
    _check_kit_flags(args)
    source = _source(args, args.gpu_kit and not args.rehearse)
    out = args.out or ("gpu-profile.json" if args.gpu_kit else "calib.json")
    check_output("--out", out, (".json",))
    _check_counts(args, run.machine.cores)
    if args.gpu_kit:
        return _cmd_kit(args, source, out)
    options = _calibrate_options(
        source, args, not args.no_link, batches=args.batches, notes=args.notes, warmup=2 if args.warmup is None
        else args.warmup, repeats=5 if args.repeats is None else args.repeats,
        context_blocks=args.context_blocks or DEFAULT_CONTEXT_BLOCKS)
    profile = calibrate(options, _say)
    profile.save(out)
    prov = profile.provenance
    print(f"wrote {out}: {len(profile.forward)} forward shapes of {profile.model} on {prov['device']}, "
          f"{prov['dtype']}, {prov['threads']} thread(s), torch {prov['torch']}"
          + (", with a link fit" if profile.link_fit else ""))
    return 0


def _check_kit_flags(args: argparse.Namespace) -> None:
    """The kit's own flags: with ``--gpu-kit`` only, each in its range; ``--rehearse`` fixes the model and
    device itself."""
    kit_only = {"--no-vae": args.no_vae, "--budget-s": args.budget_s is not None, "--rehearse": args.rehearse,
                "--report": args.report is not None, "--steps": args.steps is not None}
    for flag, given in kit_only.items():
        if given and not args.gpu_kit:
            raise ConfigError(flag, f"`{flag}` applies to `--gpu-kit` only")
    check_float("--budget-s", args.budget_s, 0, MAX_BUDGET_S, open_lo=True, what=" seconds")
    from apps.calibrate.gpu_kit import STEPS

    for step in args.steps or ():
        check_range("--steps", step, STEPS[0], STEPS[-1], " (the kit's steps)")
    if args.rehearse:
        for flag in ("model", "device", "dtype", "checkpoint"):
            if getattr(args, flag) is not None:
                raise ConfigError(f"--{flag}", f"`--rehearse` runs the tiny geometries on the CPU: drop `--{flag}`")
    if args.report is not None:
        check_output("--report", args.report, (".json",))


def _cmd_kit(args: argparse.Namespace, source: ModelSource, out: str) -> int:
    import dataclasses
    from pathlib import Path

    from apps.calibrate.gpu_kit import STEPS, KitOptions, rehearsal_options, run_kit
    from apps.calibrate.gpu_report import format_gpu_table

    report = args.report or str(Path(out).parent / "gpu-report.json")
    grid: dict[str, Any] = {"batches": tuple(args.batches), "vae": not args.no_vae, "out": out, "report": report,
                            "budget_s": args.budget_s or DEFAULT_BUDGET_S,
                            "steps": tuple(args.steps or STEPS), "wheels": os.environ.get("CASCADE_GPU_WHEELS", "")}
    for name in ("context_blocks", "warmup", "repeats"):
        if getattr(args, name) is not None:
            grid[name] = tuple(args.context_blocks) if name == "context_blocks" else getattr(args, name)
    if args.rehearse:
        options = dataclasses.replace(rehearsal_options(str(Path(out).parent)), **grid)
    else:
        options = KitOptions(model=source.model or "wan2.1-1.3b", device=source.device, dtype=source.dtype, **grid)
    doc = run_kit(options, _say)
    print(format_gpu_table(doc))
    failed = [f"{s['id']}. {s['name']}" for s in doc["steps"] if s["status"] == "failed"]
    if failed:
        _say(f"gpu kit: {len(failed)} step(s) failed ({', '.join(failed)}): the report says why")
    return 1 if failed else 0


def _default_worlds(device: str) -> tuple[int, ...]:

    if device.startswith("cuda"):
        import torch

        n = torch.cuda.device_count()
        return tuple(w for w in (1, 2, 4, 8) if w <= n) or (1,)
    return (1, 2) if (os.cpu_count() or 1) >= 2 else (1,)


def _cmd_validate(run: Invocation) -> int:
    args = run.args
    if args.gpu_report:
        from apps.calibrate.gpu_report import format_gpu_table, load_report

        print(format_gpu_table(load_report(args.gpu_report)))
        return 0
    if args.public:
        from simulator.reproduce import format_public, public_rows

        print(format_public(public_rows(), markdown=args.markdown))
        return 0
    from apps.calibrate.calibrate import calibrate
    from apps.calibrate.matrix import MatrixOptions, format_markdown, format_table, run_matrix
    from simulator.profile import Profile

    source = _source(args, False)
    _check_validate(run)
    worlds = args.worlds or _default_worlds(source.device)
    options = MatrixOptions(
        model=source.model or "small", blocks=args.blocks, window=args.window or None, lags=args.lag,
        attentions=tuple(args.attention), worlds=tuple(worlds), repeats=args.repeats, device=source.device,
        dtype=source.dtype, threads=args.threads or None, checkpoint=source.checkpoint, timeout_s=args.timeout,
        traces=args.traces, quiet_s=max(0.0, args.quiet_wait), sharing=args.contention_model == "sharing",
    )
    if args.profile:
        profile = Profile.load(args.profile)
    else:
        _say(f"calibrating {options.model} in one process ({args.threads or 'default'} thread(s)) ...")
        profile = calibrate(_calibrate_options(source, args, max(worlds) > 1), _say)
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


def _check_validate(run: Invocation) -> None:
    """Every flag of ``cascade validate`` in its range, and its paths, before any calibration or run."""

    args = run.args
    check_outputs(args, {"traces": None, "save_profile": (".json",)}, folders=("traces",))
    check_input_file("--profile", args.profile)
    if args.profile and args.save_profile:
        raise ConfigError("--save-profile", "`--save-profile` writes the profile calibrated in this run; with "
                                            "`--profile` nothing is calibrated (copy that file instead)")
    check_range("--window", args.window, 0, None, " block(s), or 0 for unbounded")
    check_range("--repeats", args.repeats, 1, MAX_REPEATS)
    check_threads("--threads", args.threads, run.machine.cores)
    check_float("--timeout", args.timeout, 0, MAX_TIMEOUT_S, open_lo=True, what=" seconds")
    check_float("--quiet-wait", args.quiet_wait, 0, 3600, what=" seconds")
    check_range("--blocks", args.blocks, 2, None)
    stages = 5  # the calibrated sampler's 4 steps and the cache pass
    check_schedule_size(args.blocks, stages, args.window or None, 0, run.machine, flag="--blocks")
    check_matrix_args(args, stages)
    cpu = (args.device or "cpu") == "cpu"
    for world in args.worlds or ():
        check_range("--worlds", world, 1, run.machine.cores if cpu else 64, " (one rank per core here)" if cpu else "")


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
