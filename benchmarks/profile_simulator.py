"""Where a simulation's time goes: cProfile of each phase of ``simulate`` (the transfer plan, the workload,
the memory check, the prices, the engine, the result), top entries by own time.

Run: ``.venv/bin/python benchmarks/profile_simulator.py [--blocks 4000] [--top 5] [--mode ring]``. Prints,
per phase, its seconds and its top entries (function, calls, own seconds), for one mode of
``bench_simulator.py``. docs/simulator.md ("Speed") quotes the output before and after the redesign.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_simulator import MODES, cluster_for, geometry_for

from cascade_sched import CascadeSpec, build_schedule
from simulator import make_cost, simulate
from simulator.catalog import get_gpu


def profile(name: str, fn: Callable[[], Any], top: int) -> Any:
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    out = fn()
    prof.disable()
    wall = time.perf_counter() - t0
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("tottime").print_stats(top)
    text = buf.getvalue().split("ncalls", 1)[-1].splitlines()[1:]
    lines = [x.strip() for x in text if x.strip()]
    print(f"\n== {name}: {wall:.3f} s (under the profiler); top {top} by own time: ncalls tottime percall cumtime "
          "percall function")
    for line in lines[:top]:
        print("   " + line.replace(str(Path(__file__).resolve().parents[1]) + "/", "")[:150])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=4000)
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--mode", default="lag 1 causal, 5 GPUs", help=f"one of: {'; '.join(MODES)}")
    args = ap.parse_args()
    kw = MODES[args.mode]
    spec = CascadeSpec(num_blocks=args.blocks, window=7, **kw)
    g = geometry_for(spec)
    cost = make_cost("parts", g, get_gpu("h100-sxm"))
    schedule = build_schedule(spec)
    print(f"{args.mode}: {len(schedule.tasks)} tasks")
    profile("simulate, end to end", lambda: simulate(schedule, cluster_for(spec), cost, g), args.top)
    for name, fn in phases(schedule, cluster_for(spec), cost, g):
        profile(name, fn, args.top)


def phases(schedule: Any, cluster: Any, cost: Any, g: Any) -> list[tuple[str, Callable[[], Any]]]:
    """The phases of the event loop's ``simulate`` one by one, each run on the previous one's output."""
    from cascade_sched.placement import default_decode_device
    from cascade_sched.transfers import plan_transfers
    from simulator.engine import Engine
    from simulator.memory import memory_report
    from simulator.prices import DecodePlan, Prices
    from simulator.workload import build_workload

    dd = default_decode_device(schedule.spec)
    plan = DecodePlan("inline", dd)
    state: dict[str, Any] = {}
    return [
        ("plan (cascade_sched.transfers.plan_transfers)", lambda: state.setdefault("p", plan_transfers(schedule, dd))),
        ("workload", lambda: state.setdefault("w", build_workload(schedule, g, dd, 2, state["p"]))),
        ("memory", lambda: memory_report(state["w"], cluster, plan)),
        ("prices", lambda: state.setdefault("pr", Prices(state["w"], cluster, cost, plan, False, 12, 9))),
        ("engine", lambda: Engine(state["w"], cluster, state["pr"], plan, 1.67).run()),
    ]


if __name__ == "__main__":
    main()
