"""Placements side by side in one run, measured and predicted (never a timed test).

On the CPU with the ``small`` model (4 layers), one thread per rank:

1. a ring of 2 ranks (``--placement layers``, stage stride 2, lag 1): each rank holds 2 of the 4 layers and
   hands its hidden states to the other;
2. a block placement on 2 ranks (the paper's cascade, lag 1): each rank holds the whole model;
3. the sequential schedule (lag S) on one rank.

For each it prints the measured wall FPS (video frames over the run's wall time) and denoise FPS (12 frames
over the median interval between blocks, cascade_sched.metrics), the simulator's prediction of both from the calibrated profile
(``cascade calibrate``: the same prediction ``cascade validate`` makes, :func:`apps.calibrate.matrix.predict`,
through ``simulator.simulate``), and the error. Target: the simulator within 15% of every row. The
machine's load is printed with the figures.

    python benchmarks/bench_placements.py --profile calib.json [--blocks 24] [--repeats 3]
    python benchmarks/bench_placements.py            # calibrates first (a few minutes), then runs

The context is ``--attention`` (default causal) on every row, so the rows differ in placement only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch

from apps.generate.run import run_generate
from apps.request import ModelSource, RunRequest
from cascade_sched import CascadeSpec, build_schedule
from cascade_sched.metrics import video_frames
from simulator.profile import Profile

TARGET = 0.15  # the simulator within 15% of each measured row


def rows(blocks: int, attention: str, layers: int) -> dict[str, tuple[CascadeSpec, str]]:
    """The three runs: name -> (spec, executor)."""
    return {
        "ring 2 ranks": (CascadeSpec(num_blocks=blocks, lag=1, attention=attention, num_devices=2, placement="layers",
                                     stage_stride=2, num_layers=layers), "distributed"),
        "block 2 ranks": (CascadeSpec(num_blocks=blocks, lag=1, attention=attention, num_devices=2), "distributed"),
        "sequential 1 rank": (CascadeSpec(num_blocks=blocks, attention=attention), "reference"),
    }


def measure(spec: CascadeSpec, executor: str, model: str) -> dict[str, float]:
    """One run through ``cascade generate``'s own path: its wall FPS and denoise FPS."""
    source = ModelSource(model=model, text_embeddings="stand-in")  # timing: any text will do
    summary = run_generate(RunRequest(spec=spec, source=source, executor=executor, progress=False))
    frames = sum(video_frames(b, spec.frames_per_block) for b in range(spec.num_blocks))
    return {"wall_fps": frames / summary["wall_s"], "denoise_fps": summary["denoise_fps"]}


def predict(spec: CascadeSpec, profile: Profile) -> tuple[dict[str, float], list[str]]:
    """The simulator's prediction of the same figures from the profile."""
    from apps.calibrate.matrix import predict as simulate_with

    result, extrapolated = simulate_with(build_schedule(spec), profile)
    frames = sum(video_frames(b, spec.frames_per_block) for b in range(spec.num_blocks))
    return {"wall_fps": frames / result.makespan_s, "denoise_fps": result.denoise_fps}, extrapolated


def load_profile(path: str | None, model: str) -> Profile:
    """The calibrated profile at ``path``, or one measured now (one thread, as the ranks run)."""
    if path is not None:
        return Profile.load(path)
    from apps.calibrate.calibrate import CalibrateOptions, calibrate

    print(f"no --profile: calibrating {model} now (1 thread; `cascade calibrate --model {model} --out PATH` "
          "writes one to reuse)", flush=True)
    profile = calibrate(CalibrateOptions(model=model, threads=1), progress=lambda m: print(f"  {m}", flush=True))
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        profile.save(f.name)
    print(f"  profile written to {f.name}", flush=True)
    return profile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=None, metavar="PATH.json", help="a `cascade calibrate` profile of the model "
                    "(default: calibrate now)")
    ap.add_argument("--blocks", type=int, default=24, help="blocks per run (default 24: a steady state at lag 1)")
    ap.add_argument("--model", default="small")
    ap.add_argument("--attention", default="causal")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from models.config import get_config

    profile = load_profile(args.profile, args.model)
    runs = rows(args.blocks, args.attention, get_config(args.model).num_layers)
    measured: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits every row alike
        for name, (spec, executor) in runs.items():
            measured[name].append(measure(spec, executor, args.model))
    load = os.getloadavg()
    print(f"model {args.model}, {args.blocks} blocks, attention {args.attention}, 1 thread per rank, median of "
          f"{args.repeats}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    print(f"{'run':<19}{'wall FPS':>10}{'predicted':>11}{'error':>8}{'denoise FPS':>13}{'predicted':>11}{'error':>8}")
    worst = 0.0
    for name, (spec, _) in runs.items():
        meas = {k: statistics.median(r[k] for r in measured[name]) for k in ("wall_fps", "denoise_fps")}
        pred, extrapolated = predict(spec, profile)
        errs = {k: (pred[k] - meas[k]) / meas[k] for k in meas}
        worst = max(worst, *map(abs, errs.values()))
        print(f"{name:<19}{meas['wall_fps']:>10.2f}{pred['wall_fps']:>11.2f}{errs['wall_fps']:>+8.1%}"
              f"{meas['denoise_fps']:>13.2f}{pred['denoise_fps']:>11.2f}{errs['denoise_fps']:>+8.1%}"
              + (f"  (extrapolated: {len(extrapolated)} shapes)" if extrapolated else ""))
    ring, block = (statistics.median(r["wall_fps"] for r in measured[n]) for n in ("ring 2 ranks", "block 2 ranks"))
    seq = statistics.median(r["wall_fps"] for r in measured["sequential 1 rank"])
    print(f"ring / block on 2 ranks: x{ring / block:.2f}; ring / sequential: x{ring / seq:.2f}; "
          f"block / sequential: x{block / seq:.2f}")
    print(f"worst simulator error {worst:.1%} (target within {TARGET:.0%})")


if __name__ == "__main__":
    main()
