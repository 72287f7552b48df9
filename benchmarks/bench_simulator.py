"""Simulator speed, every figure beside its target, side by side in one run (issue 27).

Run: ``.venv/bin/python benchmarks/bench_simulator.py [--quick]``. Prints, with the machine's load average
before and after (figures taken on a loaded machine are pessimistic: say so when quoting them):

- simulated tasks per second end to end (``simulate`` on a built schedule: the transfer plan, the workload,
  the memory check, the prices, the run and the result) for every mode and placement at 4000 blocks (the
  layer ring and a hybrid included), and which path ran; target >= 100,000 tasks/s each;
- the per-task cost from 500 to 8000 blocks; target <= 1.15x;
- ``cascade schedule``'s build plus validate in tasks per second at 10k and 100k blocks, and its growth;
  target >= 500,000 tasks/s, linear;
- the default ``cascade plan`` (every placement swept) wall time; target < 5 s;
- a 100,000-block simulation: wall time and peak traced memory against the schedule's own bound
  (``cascade_sched.bounds``: ~400 B per task); target: it completes within that bound.

Every figure is the best of several runs (other work on the machine only ever adds time).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import os
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apps.cli import main as cascade
from cascade_sched import CascadeSpec, build_schedule, validate
from cascade_sched.bounds import TASK_BYTES
from simulator import Cluster, get_gpu, get_model, make_cost, simulate
from simulator.catalog import ModelGeometry

G13 = get_model("wan2.1-1.3b")
COST = make_cost("parts", G13, get_gpu("h100-sxm"))
MODES: dict[str, dict[str, Any]] = {
    "sequential, 1 GPU": {},
    "lag 1 causal, 5 GPUs": {"lag": 1, "num_devices": 5},
    "lag 1 bidirectional, 5 GPUs": {"lag": 1, "num_devices": 5, "attention": "bidirectional"},
    "lag 1 stale, 5 GPUs": {"lag": 1, "num_devices": 5, "attention": "stale"},
    "lag 1 stage, 5 GPUs": {"lag": 1, "num_devices": 5, "attention": "stage"},
    "lag 2 causal, 3 GPUs": {"lag": 2, "num_devices": 3},
    "ring of 4, stage": {"lag": 1, "num_devices": 4, "placement": "layers", "stage_stride": 4, "num_layers": 30,
                         "attention": "stage"},
    "2 x 2 hybrid, causal": {"lag": 1, "num_devices": 4, "rings": 2, "placement": "layers", "stage_stride": 2,
                             "num_layers": 30},
}
TARGET_TASKS_S, TARGET_GROWTH, TARGET_SCHEDULE_S, TARGET_PLAN_S = 100_000, 1.15, 500_000, 5.0


def geometry_for(spec: CascadeSpec) -> ModelGeometry:
    return G13


def cluster_for(spec: CascadeSpec) -> Cluster:
    return Cluster.of("h100-sxm", spec.num_devices)


def best(fn: Callable[[], Any], repeat: int) -> float:
    out = float("inf")
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t0)
    return out


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (5 min {five:.2f}) on {os.cpu_count()} cores"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def run(spec: CascadeSpec) -> Any:
    return simulate(build_schedule(spec), cluster_for(spec), COST, G13)


def main_bench() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, smaller sizes")
    args = ap.parse_args()
    repeat = 2 if args.quick else 5
    blocks = 1000 if args.quick else 4000
    print(f"start: {load()}")
    run(CascadeSpec(num_blocks=8))  # import simpy and fill the price memos once

    print(f"\n1. simulated tasks/s end to end ({blocks} blocks, window 7; target >= {TARGET_TASKS_S:,}), and the event "
          "loop alone over every block (path=event, the general path: reported)")
    for name, kw in MODES.items():
        spec = CascadeSpec(num_blocks=blocks, window=7, **kw)
        schedule = build_schedule(spec)
        result = simulate(schedule, cluster_for(spec), COST, G13)
        seconds = best(lambda s=schedule, c=spec: simulate(s, cluster_for(c), COST, G13), repeat)
        event = best(lambda s=schedule, c=spec: simulate(s, cluster_for(c), COST, G13, path="event"), min(repeat, 3))
        rate = len(schedule.tasks) / seconds
        print(f"   {name:<30} {len(schedule.tasks):>7} tasks {rate:>10,.0f} tasks/s  {verdict(rate >= TARGET_TASKS_S)}"
              f"  (event loop {len(schedule.tasks) / event:>8,.0f})  path: {result.path.split(';')[0]}")

    sizes = (500, 2000) if args.quick else (500, 2000, 8000)
    print(f"\n2. per-task cost against 500 blocks (target <= {TARGET_GROWTH}x), end to end and the event loop alone")
    for name in ("lag 1 causal, 5 GPUs", "ring of 4, stage", "lag 1 stale, 5 GPUs"):
        base = base_event = 0.0
        for n in sizes:
            spec = CascadeSpec(num_blocks=n, window=7, **MODES[name])
            s = build_schedule(spec)
            per = best(lambda s=s, c=spec: simulate(s, cluster_for(c), COST, G13), repeat) / len(s.tasks)
            per_event = best(lambda s=s, c=spec: simulate(s, cluster_for(c), COST, G13, path="event"),
                             min(repeat, 3)) / len(s.tasks)
            base, base_event = base or per, base_event or per_event
            ratio = per / base
            print(f"   {name:<30} {n:>5} blocks {1 / per:>10,.0f} tasks/s  ratio {ratio:.2f}"
                  + (f"  {verdict(ratio <= TARGET_GROWTH)}" if n == sizes[-1] else "")
                  + f"  (event loop {1 / per_event:>8,.0f} tasks/s, ratio {per_event / base_event:.2f})")

    print(f"\n3. cascade schedule: build + validate (lag 1, window 7, sink 1, 5 devices; target >= "
          f"{TARGET_SCHEDULE_S:,} tasks/s, linear)")
    per_task = []
    for n in (10_000, 100_000) if not args.quick else (2_000, 20_000):
        spec = CascadeSpec(num_blocks=n, lag=1, window=7, sink=1, num_devices=5)
        seconds = best(lambda spec=spec: validate(build_schedule(spec)), 2 if n >= 100_000 else repeat)
        tasks = n * spec.num_stages
        per_task.append(seconds / tasks)
        print(f"   {n:>7} blocks {tasks / seconds:>12,.0f} tasks/s  {verdict(tasks / seconds >= TARGET_SCHEDULE_S)}")
    print(f"   growth 10x the blocks: per-task cost x{per_task[1] / per_task[0]:.2f} "
          f"{verdict(per_task[1] / per_task[0] <= TARGET_GROWTH)}")

    print(f"\n4. the default `cascade plan` (every placement swept; target < {TARGET_PLAN_S:g} s)")
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
        wall = best(lambda: cascade(["plan", "--out", out]), 1 if args.quick else 2)
    print(f"   {wall:.2f} s wall  {verdict(wall < TARGET_PLAN_S)}")

    n = 20_000 if args.quick else 100_000
    print(f"\n5. a {n:,}-block simulation (lag 1 causal, 5 GPUs, window 7): completes within the schedule's "
          f"bound of {TASK_BYTES} B per task")
    spec = CascadeSpec(num_blocks=n, lag=1, window=7, num_devices=5)
    gc.collect()
    tracemalloc.start()
    t0 = time.perf_counter()
    schedule = build_schedule(spec)
    built = tracemalloc.get_traced_memory()[0]
    result = simulate(schedule, cluster_for(spec), COST, G13)
    wall = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    tasks = len(schedule.tasks)
    extra = (peak - built) / tasks
    print(f"   {tasks:,} tasks in {wall:.1f} s (under tracemalloc), {result.fps:.1f} FPS; schedule {built / tasks:.0f} "
          f"B per task, the simulation {extra:.0f} B per task more  {verdict(extra <= TASK_BYTES)}")
    print(f"\nend: {load()}")


if __name__ == "__main__":
    main_bench()
