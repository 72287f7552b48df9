"""Throughput of ``build_schedule`` and ``validate`` on long cascades, and how linear they are.

Run:  .venv/bin/python benchmarks/bench_schedule.py [--blocks 1000,10000,100000] [--repeats 3]

Spec: lag 1, S = 5 stages (4 denoise + cache), window 7, sink 1, 5 devices by block, causal attention.
For each size it prints tasks/s for build, validate and both (best of ``--repeats``), then the per-task
cost of the largest size relative to the smallest (1.00 = perfectly linear).
Target: 200,000 tasks/s for build + validate at 10k blocks on a 2-core machine.
Prints figures only; nothing here is a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cascade_sched import CascadeSpec, build_schedule, validate

TARGET_TASKS_PER_S = 200_000


def measure(num_blocks: int, repeats: int) -> tuple[int, float, float]:
    """(tasks, best build seconds, best validate seconds) over ``repeats`` runs."""
    spec = CascadeSpec(num_blocks=num_blocks, lag=1, window=7, sink=1, num_devices=5)
    best_build = best_validate = float("inf")
    tasks = 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        schedule = build_schedule(spec)
        t1 = time.perf_counter()
        validate(schedule)
        t2 = time.perf_counter()
        best_build, best_validate = min(best_build, t1 - t0), min(best_validate, t2 - t1)
        tasks = len(schedule.tasks)
        del schedule
    return tasks, best_build, best_validate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", default="1000,10000,100000", help="comma-separated block counts")
    parser.add_argument("--repeats", type=int, default=3, help="runs per size; the best is reported")
    args = parser.parse_args()
    sizes = [int(x) for x in args.blocks.split(",")]

    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPU(s)")
    print("spec: lag 1, S=5, window 7, sink 1, 5 devices, causal; best of", args.repeats)
    print(
        f"{'blocks':>8} {'tasks':>9} | {'build t/s':>11} {'validate t/s':>13} {'both t/s':>11} | {'both s':>8}"
    )
    rows = []
    for n in sizes:
        tasks, tb, tv = measure(n, args.repeats)
        rows.append((n, tasks, tb + tv))
        print(
            f"{n:>8,} {tasks:>9,} | {tasks / tb:>11,.0f} {tasks / tv:>13,.0f} {tasks / (tb + tv):>11,.0f} |"
            f" {tb + tv:>8.3f}"
        )
    for n, tasks, both in rows:
        if n == 10_000:
            rate = tasks / both
            verdict = "meets" if rate >= TARGET_TASKS_PER_S else "below"
            print(
                f"build+validate at 10k blocks: {rate:,.0f} tasks/s ({verdict} the {TARGET_TASKS_PER_S:,} target)"
            )
    if len(rows) >= 2:
        (n0, k0, s0), (n1, k1, s1) = rows[0], rows[-1]
        ratio = (s1 / k1) / (s0 / k0)
        print(f"per-task cost at {n1:,} blocks / at {n0:,} blocks: {ratio:.2f} (1.00 = linear)")


if __name__ == "__main__":
    main()
