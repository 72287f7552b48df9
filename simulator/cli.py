"""``cascade simulate`` and ``cascade plan``: registered into the ``cascade`` command by
``cascade_sched.cli`` through :func:`register`. SimPy and matplotlib are imported inside the handlers,
so ``cascade schedule`` stays light. Both commands share one set of defaults (``DEFAULTS``): a point of the
plan and ``simulate`` with the same flags are the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

from cascade_sched.bounds import MAX_LIST, PLAN_POINT_TASK_S, WORK_BUDGET_S, check_schedule_size
from cascade_sched.cliargs import (
    DEFAULT_BLOCKS,
    DEFAULT_WINDOW,
    Handler,
    Invocation,
    add_geometry_args,
    add_schedule_args,
    alias,
    check_outputs,
    int_ranges,
    name_list,
    num_stages,
    spec_from_args,
)
from cascade_sched.errors import ConfigError, check_float, check_range
from models.config import parse_resolution

DEFAULTS: dict[str, Any] = {
    "model": "wan2.1-1.3b", "gpu": "h100-sxm", "cost": "parts", "decode": "inline", "decoder": "vae",
    "blocks": DEFAULT_BLOCKS, "window": DEFAULT_WINDOW, "stream_contention": 1.67, "memory_margin": 1.5, "allocator_overhead": 0.05,
}


def model_geometry(args: argparse.Namespace, name: str) -> Any:
    """The model ``name`` at the flags' ``--frames-per-block`` and ``--resolution``; a bad value is one
    ConfigError naming the flag."""
    from simulator.catalog import get_model

    return get_model(name, args.frames_per_block, parse_resolution(args.resolution))


def _pairs(text: str) -> tuple[int, float]:
    device, sep, factor = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(device), float(factor)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected DEVICE:FACTOR such as 2:1.5, got {text!r}") from None


def _hardware_args(p: argparse.ArgumentParser, models_help: str, model_default: str, sweep: bool) -> None:
    g = p.add_argument_group("hardware and costs")
    g.add_argument("--model", default=model_default, help=models_help)
    g.add_argument("--gpu", default=DEFAULTS["gpu"],
                   help="h100-sxm | h100-pcie | h200 | a100-sxm | l40s | b200 | gb200 | rtx5090 (default %(default)s)")
    g.add_argument("--gpus-per-node", type=int, default=8, help="GPUs in one node (default %(default)s)")
    g.add_argument("--inter-node", default="ib-ndr", help="link between nodes (default %(default)s)")
    g.add_argument("--cost", default=DEFAULTS["cost"],
                   help="parts | baseline-fps[:FPS] | roofline | profile:PATH | uniform:SECONDS (default %(default)s: "
                        "every part priced from public measurements, the per-forward overhead fitted to the "
                        "paper's sequential baselines)")
    if not sweep:
        g.add_argument("--decode", default=DEFAULTS["decode"],
                       help="where blocks are decoded: inline (between ticks of a denoising GPU), stream (its "
                            "second stream), gpu (a GPU of its own, counted), or a device index for inline "
                            "(default %(default)s)")
        g.add_argument("--decoder", default=DEFAULTS["decoder"],
                       help="vae (the Wan2.1 VAE) | taehv (the tiny TAEHV decoder) (default %(default)s)")
    else:
        g.add_argument("--decode", dest="decodes", type=name_list, default=("inline", "stream", "gpu"),
                       help="decode placements to try (default inline,stream,gpu)")
        g.add_argument("--decoder", dest="decoders", type=name_list, default=(DEFAULTS["decoder"],),
                       help="decoders to try: vae, taehv (default vae)")
        alias(g, "--decodes", "decodes", type=name_list, default=("inline", "stream", "gpu"))
        alias(g, "--decoders", "decoders", type=name_list, default=(DEFAULTS["decoder"],))
    g.add_argument("--decode-device", type=int, default=None,
                   help="the denoising GPU that decodes (default: d0, or a ring's last device under --placement "
                        "layers)")
    g.add_argument("--stream-contention", type=float, default=DEFAULTS["stream_contention"], metavar="F",
                   help="with decode stream: how many times slower forwards and decode each run while both are "
                        "active (1 = free overlap, 2 = time slicing; default %(default)s, an estimate)")
    g.add_argument("--memory-margin", type=float, default=DEFAULTS["memory_margin"], metavar="GB",
                   help="GB reserved on every GPU for the CUDA context and library workspaces (default %(default)s)")
    g.add_argument("--allocator-overhead", type=float, default=DEFAULTS["allocator_overhead"], metavar="FRACTION",
                   help="share of the allocated bytes lost to the caching allocator (default %(default)s)")
    g.add_argument("--overlap", action="store_true",
                   help="overlap the joint-attention exchange with compute, and send ring hops on a second stream "
                        "(StreamDiffusionV2's) instead of on the compute stream")
    m = p.add_argument_group("model geometry and rings")
    add_geometry_args(m)
    m.add_argument("--weights", default="sharded", choices=("sharded", "replicated"),
                   help="--placement layers: each device holds its layers' weights (sharded) or all of them "
                        "(replicated, StreamDiffusionV2's choice) (default %(default)s)")
    m.add_argument("--input", default="text", choices=("text", "video"),
                   help="text (text-to-video) or video (video-to-video: each block's input frames are encoded on "
                        "its ring's first device first, as StreamDiffusionV2 does) (default %(default)s)")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Handler]:
    """Add ``simulate`` and ``plan`` to the ``cascade`` command; returns their handlers."""
    p = subparsers.add_parser("simulate", help="predict FPS, latency, stalls, memory and traffic of a schedule")
    add_schedule_args(p)
    _hardware_args(p, "model geometry: toy | tiny | small | wan2.1-1.3b | wan2.1-14b (default %(default)s)",
                   DEFAULTS["model"], sweep=False)
    p.add_argument("--interconnect", default=None,
                   help="GPU link: nvlink3|nvlink4|nvlink5|pcie4|pcie5|ideal, or profile (the profile's fitted "
                        "link) (default: the GPU's usual one)")
    p.add_argument("--straggler", type=_pairs, action="append", default=[], metavar="D:F",
                   help="what-if: device D computes F times slower (repeatable; default none)")
    p.add_argument("--degrade", type=_pairs, action="append", default=[], metavar="D:F",
                   help="what-if: device D's link has 1/F of its bandwidth (repeatable; default none)")
    p.add_argument("--host-cores", type=float, default=None, metavar="C",
                   help="CPU ranks: the devices are processes sharing one host of C cores (processor sharing; "
                        "use with --cost profile:PATH measured on that host; default: GPUs, no sharing)")
    p.add_argument("--threads-per-device", type=int, default=1, help="with --host-cores: threads per rank (default 1)")
    p.add_argument("--background-load", type=float, default=0.0, metavar="CORES",
                   help="with --host-cores: cores' worth of other work on the host (default 0)")
    p.add_argument("--contention", type=float, default=1.0,
                   help="slowdown while ranks compute at once beyond the share of cores (caches, memory "
                        "bandwidth; `cascade calibrate` measures it; default 1)")
    p.add_argument("--video-frames", type=int, default=None,
                   help="video frames per block (default 4 x the latent frames per block: 12)")
    p.add_argument("--first-block-frames", type=int, default=None,
                   help="video frames of block 0 (default 1 + 4 x (latent frames - 1): 9)")
    p.add_argument("--path", default="auto", choices=("auto", "event", "steady"),
                   help="auto: splice the repeats of a steady state where a run has one (simulator.steady), run the "
                        "event loop elsewhere; event: the event loop over every block; steady: the fast path or an "
                        "error (default %(default)s; --trace and --gantt run the event loop)")
    p.add_argument("--allow-oom", action="store_true",
                   help="simulate a plan that does not fit in memory anyway (the result says fits=false)")
    p.add_argument("--json", action="store_true", help="print the result as JSON (with a top-level `gpus`)")
    p.add_argument("--trace", metavar="PATH.json", help="write a Chrome trace JSON (open in Perfetto; default none)")
    p.add_argument("--gantt", metavar="PATH.png", help="write a Gantt chart PNG (default none)")
    p.add_argument("--gantt-ticks", type=int, default=60, help="ticks the Gantt chart shows, 0 = all (default 60)")
    p.add_argument("--intervals", metavar="PATH.png",
                   help="write a PNG of the interval between decoded blocks (default none)")

    q = subparsers.add_parser("plan", help="sweep placements (blocks per GPU, layer rings, G x W hybrids) x GPUs x "
                                           "context x lag x decode placement and recommend")
    _hardware_args(q, "model(s), comma-separated (default: wan2.1-1.3b,wan2.1-14b)", "", sweep=True)
    c = q.add_argument_group("sweep")
    c.add_argument("--gpu-counts", type=int_ranges, default=tuple(range(1, 9)),
                   help="GPUs in all, a decoder GPU included, e.g. 1-8 or 1,2,4 (default 1-8)")
    c.add_argument("--interconnect", dest="interconnects", type=name_list, default=None,
                   help="links to try, e.g. nvlink4,pcie5 (default: the GPU's usual one)")
    alias(c, "--interconnects", "interconnects", type=name_list, default=None)
    c.add_argument("--ring-sizes", type=int_ranges, default=None, metavar="W,...",
                   help="--placement layers: ring sizes W to try; every G x W that makes a GPU count is swept "
                        "(default: every W from 2 to the count)")
    add_schedule_args(q, sweep=True)
    _redefault(q, "placement", ("block", "layers"), name_list,
               "placements to try: block (one block per GPU, the paper's), layers (rings of GPUs each running a "
               "range of the layers, and G x W hybrids, stride W; StreamDiffusionV2's), stage (default block,layers)")
    _redefault(q, "attentions", ("causal", "bidirectional", "stale", "stage"), name_list,
               "contexts to try: the paper's causal and bidirectional, stale (an extension) and stage "
               "(StreamDiffusionV2's stream batch) (default: all four; their quality: docs/quality.md)")
    k = q.add_argument_group("constraints and output")
    k.add_argument("--target-fps", type=float, default=24.0, help="delivered FPS to reach, 0 = none (default 24)")
    k.add_argument("--max-first-frame", type=float, default=None, help="seconds to the first frame, at most (default: no bound)")
    k.add_argument("--max-jitter", type=float, default=None, help="p99 - p50 block interval, seconds, at most (default: no bound)")
    k.add_argument("--out", default="cascade-plan", help="folder for plan.csv, plan.json, plan.png (default %(default)s)")
    k.add_argument("--top", type=int, default=10, help="rows per model in the table, 0 = all (default 10)")
    k.add_argument("--json", action="store_true", help="print every point as JSON instead of the table")
    return {"simulate": _cmd_simulate, "plan": _cmd_plan}


def _redefault(p: argparse.ArgumentParser, dest: str, default: Any, kind: Any, text: str) -> None:
    """Give the shared flag that sets ``dest`` (and its hidden aliases) the planner's list type, default and
    help: ``cascade plan`` sweeps what ``simulate`` takes one of."""
    for action in p._actions:
        if action.dest == dest:
            action.default, action.type = default, kind
            if action.help != argparse.SUPPRESS:
                action.help = text


def _margin(args: argparse.Namespace) -> Any:
    from simulator.cluster import MemoryMargin

    for name, value in (("memory_margin", args.memory_margin), ("allocator_overhead", args.allocator_overhead),
                        ("stream_contention", args.stream_contention - 1.0)):
        if not (math.isfinite(value) and value >= 0):
            low = "1" if name == "stream_contention" else "0"
            raise ConfigError(name, f"`--{name.replace('_', '-')}` must be a finite number >= {low}")
    if args.allocator_overhead >= 1:
        raise ConfigError("allocator_overhead", "`--allocator-overhead` must be below 1")
    default = MemoryMargin()
    ctx = min(default.context_bytes, args.memory_margin * 1e9)
    return MemoryMargin(ctx, args.memory_margin * 1e9 - ctx, args.allocator_overhead,
                        f"{args.memory_margin:g} GB for the CUDA context and workspaces, allocator slack "
                        f"{args.allocator_overhead:.0%} ({default.source})")


def _cmd_simulate(run: Invocation) -> int:
    from cascade_sched.schedule import build_schedule
    from cascade_sched.validate import validate
    from simulator.catalog import get_gpu, get_link
    from simulator.cluster import Cluster
    from simulator.cost import make_cost
    from simulator.engine import simulate

    args = run.args
    _check_simulate(args)
    geometry = model_geometry(args, args.model)
    if args.num_layers is not None and args.num_layers != geometry.num_layers:
        raise ConfigError("num_layers", f"`--layers` must be {geometry.name}'s {geometry.num_layers} layers (or left "
                                        f"out), got {args.num_layers}")
    spec = spec_from_args(args, run.machine, model_layers=geometry.num_layers)
    schedule = validate(build_schedule(spec.replace(frames_per_block=geometry.frames_per_block)))
    gpu = get_gpu(args.gpu)
    cost = make_cost(args.cost, geometry, gpu, args.decoder)
    link_name = args.interconnect or gpu.default_link
    if link_name == "profile":
        link = getattr(getattr(cost, "profile", None), "link", lambda: None)()
        if link is None:
            raise ConfigError("interconnect", "`--interconnect profile` needs --cost profile:PATH with a `link` fit")
    else:
        link = get_link(link_name)
    if args.host_cores is None and (args.background_load or args.threads_per_device != 1):
        raise ConfigError("host_cores", "`--background-load` and `--threads-per-device` need `--host-cores`")
    cluster = Cluster(gpu, schedule.num_devices, args.gpus_per_node, link, get_link(args.inter_node, "inter_node"),
                      tuple(args.straggler), tuple(args.degrade), contention=args.contention,
                      host_cores=args.host_cores, threads_per_device=args.threads_per_device,
                      background_load=args.background_load, margin=_margin(args))
    result = simulate(schedule, cluster, cost, geometry, decode=args.decode, decode_device=args.decode_device,
                      stream_contention=args.stream_contention, overlap=args.overlap,
                      check_memory=not args.allow_oom, video_frames_per_block=args.video_frames,
                      first_block_frames=args.first_block_frames, weights=args.weights,
                      video_input=args.input == "video",
                      path="event" if (args.trace or args.gantt) and args.path == "auto" else args.path)
    if args.json:
        print(json.dumps(result.to_dict(), indent=1, default=_json_default))
    else:
        print(result.summary())
        if not result.fits:
            print("  WARNING: this plan does not fit in GPU memory (simulated because of --allow-oom)")
    from simulator import visual

    for path, draw in ((args.trace, visual.write_trace), (args.gantt, lambda r, p: visual.draw_gantt(
            r, p, args.gantt_ticks or None)), (args.intervals, visual.draw_intervals)):
        if path:
            draw(result, path)
            print(f"wrote {path}", file=sys.stderr)
    return 0


def _check_simulate(args: argparse.Namespace) -> None:
    """The flags' ranges and the output paths, before any work."""
    check_outputs(args, {"trace": (".json",), "gantt": (".png",), "intervals": (".png",)})
    check_range("--video-frames", args.video_frames, 1, 10_000)
    check_range("--first-block-frames", args.first_block_frames, 1, 10_000)
    check_range("--gantt-ticks", args.gantt_ticks, 0)
    check_range("--gpus-per-node", args.gpus_per_node, 1, 1024)
    check_range("--threads-per-device", args.threads_per_device, 1, 1024)
    check_float("--host-cores", args.host_cores, 0, 1 << 20, open_lo=True)
    check_float("--background-load", args.background_load, 0, 1 << 20)
    check_float("--contention", args.contention, 1, 1000)


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _check_plan(run: Invocation) -> None:
    """The flags' ranges, the sweep's size and the output folder, before any work."""
    args = run.args
    check_outputs(args, {"out": None}, folders=("out",))
    if min(args.windows) < 0:
        raise ConfigError("windows", f"`--window` must be at least 1 block, or 0 for unbounded, got "
                                     f"{min(args.windows)}")
    for flag, value in (("--target-fps", args.target_fps), ("--max-first-frame", args.max_first_frame),
                        ("--max-jitter", args.max_jitter)):
        check_float(flag, value, 0)
    check_range("--top", args.top, 0)
    check_range("sink", args.sink, 0)
    check_range("--gpus-per-node", args.gpus_per_node, 1, 1024)
    stages = num_stages(args)
    check_range("num_blocks", args.num_blocks, 1)
    for window in set(args.windows):
        check_schedule_size(args.num_blocks, stages, window or None, args.sink, run.machine)
    tasks = args.num_blocks * stages
    for count in args.gpu_counts:
        check_range("--gpu-counts", count, 1, tasks + 1,
                    f" (the {tasks} tasks of {args.num_blocks} blocks x {stages} stages, and a decoder GPU)")
    for name in args.placement:
        if name not in ("block", "stage", "layers"):
            raise ConfigError("placement", f"`--placement` takes block, stage, layers, got {name!r}")
    for w in args.ring_sizes or ():
        check_range("--ring-sizes", w, 2, max(args.gpu_counts), " (a ring of 1 is block placement)")
    from simulator.plan import sweep_size

    points, work = sweep_size(_space(args, run.machine))
    seconds = work * PLAN_POINT_TASK_S
    if points > MAX_LIST * 16 or seconds > WORK_BUDGET_S:
        raise ConfigError("--gpu-counts", f"the sweep has {points} points of {work // max(points, 1)} tasks each on "
                                          f"average: ~{seconds / 60:.0f} min to simulate, past the bound of "
                                          f"{WORK_BUDGET_S / 60:.0f} min; sweep fewer values or --blocks")


def _space(args: argparse.Namespace, machine: Any) -> Any:
    """The planner's sweep space from its flags."""
    from simulator.plan import SweepSpace

    return SweepSpace(
        models=name_list(args.model) if args.model else ("wan2.1-1.3b", "wan2.1-14b"),
        gpu=args.gpu, gpu_counts=tuple(args.gpu_counts), lags=args.lags, attentions=tuple(args.attentions),
        decodes=tuple(args.decodes), decoders=tuple(args.decoders),
        windows=tuple(w or None for w in args.windows), interconnects=args.interconnects,
        gpus_per_node=args.gpus_per_node, blocks=args.num_blocks, sink=args.sink, timesteps=tuple(args.timesteps),
        cache_pass=args.cache_pass, placements=tuple(args.placement), cost=args.cost, overlap=args.overlap,
        stream_contention=args.stream_contention, margin=_margin(args), weights=args.weights,
        frames_per_block=args.frames_per_block, resolution=parse_resolution(args.resolution), video_input=args.input == "video",
        ring_sizes=tuple(args.ring_sizes) if args.ring_sizes else None,
    )


def _cmd_plan(run: Invocation) -> int:
    from simulator.plan import Constraints, format_table, recommendation_text, sweep, write_points
    from simulator.visual import draw_plan

    t0 = time.perf_counter()
    args = run.args
    _check_plan(run)
    space = _space(args, run.machine)
    constraints = Constraints(args.target_fps or None, args.max_first_frame, args.max_jitter)
    points = sweep(space, constraints)
    os.makedirs(args.out, exist_ok=True)
    csv_path, json_path, png_path = (os.path.join(args.out, f"plan.{ext}") for ext in ("csv", "json", "png"))
    meta = {"space": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(space).items() if k != "margin"},
            "memory_margin": space.margin.source, "constraints": vars(constraints),
            "cost_sources": sorted({p.cost for p in points})}
    write_points(points, csv_path, json_path, meta)
    draw_plan(points, png_path, constraints.target_fps, space)
    if args.json:
        with open(json_path, encoding="utf-8") as f:
            print(f.read())
        return 0
    wall = time.perf_counter() - t0
    links = ", ".join(space.interconnects or ("the GPU's usual link",))
    print(f"cascade plan: {', '.join(space.models)} on {space.gpu} ({links}); {len(points)} points "
          f"(placements {', '.join(space.placements)}), {space.blocks} blocks each or more (enough for a ring's "
          f"steady state), windows {', '.join(str(w or 'unbounded') for w in space.windows)}, cost {space.cost}; "
          "GPUs counted in all (a decoder GPU included)")
    print(format_table(points, args.top or None))
    print()
    target = [f"delivered FPS >= {constraints.target_fps:g}" if constraints.target_fps else "",
              f"first frame <= {constraints.max_first_frame_s:g} s" if constraints.max_first_frame_s else "",
              f"jitter <= {constraints.max_jitter_s:g} s" if constraints.max_jitter_s else ""]
    print(f"recommendation ({', '.join(t for t in target if t) or 'no constraints'}):")
    for line in recommendation_text(points, constraints):
        print(f"  {line}")
    print(f"wrote {csv_path}, {json_path}, {png_path} in {wall:.1f} s")
    return 0
