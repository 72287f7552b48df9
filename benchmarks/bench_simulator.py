"""Simulator speed: simulated tasks per second end to end (``simulate`` on a built schedule: the core's
transfer plan, the workload, the memory check, the prices and the SimPy run) for every attention mode at
20k tasks, the share of each phase, the per-task cost from 500 to 8000 blocks, and the default
``cascade plan``'s wall time.

Run: ``.venv/bin/python benchmarks/bench_simulator.py [--quick]``. Targets: >= 100,000 simulated tasks/s
end to end for every attention mode at 20k tasks; per-task cost within 1.15x from 500 to 8000 blocks; the
default plan under 10 s. Every figure is the best of several runs (other work on the machine only ever
adds time); the script prints the machine's load average so a loaded run says so.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apps.cli import main
from cascade_sched import CascadeSpec, build_schedule
from cascade_sched.transfers import plan_transfers
from simulator import Cluster, get_gpu, get_model, make_cost, simulate
from simulator.engine import Engine
from simulator.memory import memory_report
from simulator.prices import DecodePlan, Prices
from simulator.workload import build_workload

G = get_model("wan2.1-1.3b")
COST = make_cost("parts", G, get_gpu("h100-sxm"))


def best(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    out = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t0)
    return out


def phases(spec: CascadeSpec, repeat: int) -> dict[str, float]:
    """Seconds of each phase of one ``simulate`` (best of ``repeat``)."""
    s = build_schedule(spec)
    cluster = Cluster.of("h100-sxm", spec.num_devices)
    plan = DecodePlan("inline", 0)
    out = {"plan": best(lambda: plan_transfers(s), repeat)}
    p = plan_transfers(s)
    out["workload"] = best(lambda: build_workload(s, G, 0, 2, p), repeat)
    w = build_workload(s, G, 0, 2, p)
    out["memory"] = best(lambda: memory_report(w, cluster, plan), repeat)
    out["prices"] = best(lambda: Prices(w, cluster, COST, plan, False, 12, 9), repeat)
    pr = Prices(w, cluster, COST, plan, False, 12, 9)
    out["engine"] = best(lambda: Engine(w, cluster, pr, plan, 1.67).run(), repeat)
    out["simulate"] = best(lambda: simulate(s, cluster, COST, G), repeat)
    return out


def main_bench() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and a smaller linearity sweep")
    args = ap.parse_args()
    repeat = 2 if args.quick else 5
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (above ~0.5 per core: a loaded "
          "machine, figures are pessimistic)")
    print(f"{'cascade (1.3B, window 7, 4000 blocks)':<40} {'tasks':>6} {'tasks/s':>9}   plan workload memory prices engine (s)")
    simulate(build_schedule(CascadeSpec(num_blocks=8)), Cluster.of("h100-sxm", 1), COST, G)  # import simpy once
    for name, kw in (("sequential, 1 GPU", {}), ("lag 1 causal (P4), 5 GPUs", {"lag": 1, "num_devices": 5}),
                     ("lag 1 bidirectional, 5 GPUs", {"lag": 1, "num_devices": 5, "attention": "bidirectional"}),
                     ("lag 1 stale, 5 GPUs", {"lag": 1, "num_devices": 5, "attention": "stale"}),
                     ("lag 2 causal, 3 GPUs", {"lag": 2, "num_devices": 3})):
        spec = CascadeSpec(num_blocks=4000, window=7, **kw)  # type: ignore[arg-type]
        ph = phases(spec, repeat)
        tasks = spec.num_blocks * spec.num_stages
        print(f"{name:<40} {tasks:>6} {tasks / ph['simulate']:>9,.0f}   {ph['plan']:.3f} {ph['workload']:.3f} "
              f"{ph['memory']:.3f} {ph['prices']:.3f} {ph['engine']:.3f}")
    print("\nper-task cost (lag 1 causal, 5 GPUs), relative to 500 blocks")
    base = None
    for blocks in (500, 2000) if args.quick else (500, 2000, 8000):
        s = build_schedule(CascadeSpec(num_blocks=blocks, lag=1, num_devices=5, window=7))
        per = best(lambda s=s: simulate(s, Cluster.of("h100-sxm", 5), COST, G), repeat) / len(s.tasks)
        base = base or per
        print(f"  {blocks:>5} blocks: {1 / per:>9,.0f} tasks/s  ratio {per / base:.2f}")
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter()
        main(["plan", "--out", out])
        wall = time.perf_counter() - t0
    print(f"\ndefault `cascade plan` (2 models x 8 GPU counts x 5 lags x 2 attentions x 3 decode placements): "
          f"{wall:.2f} s wall")


if __name__ == "__main__":
    main_bench()
