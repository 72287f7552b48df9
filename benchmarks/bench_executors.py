"""Executor speed, measured side by side in one run (never a timed test).

1. The fully parallel cascade (lag 1) on 2 gloo ranks against the sequential schedule (lag = S) on one
   rank, `small` model, one thread per rank. Target on the 2-core CI machine: >= 1.5x (2x is the ceiling).
2. The reference executor's wall time over the sum of its model forward times: the tick loop's own cost
   (noise, sampler, KV bookkeeping). Target: <= 1.05.

    python benchmarks/bench_executors.py [--blocks 12] [--model small] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch

from apps.generate.run import run_generate
from apps.request import ModelSource, RunRequest
from cascade_sched import CascadeSpec


def run(spec: CascadeSpec, model: str, executor: str) -> dict:
    source = ModelSource(model=model, text_embeddings="stand-in")  # timing: any text will do
    return run_generate(RunRequest(spec=spec, source=source, executor=executor, progress=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=12)
    ap.add_argument("--model", default="small")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    seq = CascadeSpec(num_blocks=args.blocks)  # lag = S = 5, one device
    par = CascadeSpec(num_blocks=args.blocks, lag=1, num_devices=2)
    rows: dict[str, list[dict]] = {"seq-1rank": [], "lag1-2ranks": []}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
        rows["seq-1rank"].append(run(seq, args.model, "reference"))
        rows["lag1-2ranks"].append(run(par, args.model, "distributed"))
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("wall_s", "denoise_fps", "delivered_fps", "forward_s")}
           for k, v in rows.items()}
    print(f"model {args.model}, {args.blocks} blocks, 1 thread per rank, median of {args.repeats}")
    print(f"{'run':<14}{'wall s':>9}{'denoise FPS':>13}{'delivered FPS':>15}{'forward s':>11}")
    for k, m in med.items():
        print(f"{k:<14}{m['wall_s']:>9.3f}{m['denoise_fps']:>13.2f}{m['delivered_fps']:>15.2f}{m['forward_s']:>11.3f}")
    s, p = med["seq-1rank"], med["lag1-2ranks"]
    print(f"cascade on 2 ranks vs sequential on 1: denoise FPS x{p['denoise_fps'] / s['denoise_fps']:.2f}, "
          f"wall-time x{s['wall_s'] / p['wall_s']:.2f} (target >= 1.5, ceiling 2 on 2 cores)")
    overhead = [r["wall_s"] / r["forward_s"] for r in rows["seq-1rank"]]
    print(f"reference executor wall / model forward time: {statistics.median(overhead):.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
