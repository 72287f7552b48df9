"""Simulator speed: simulated tasks per second (end to end through ``simulate``) for a few cascades,
the engine alone, cost linearity in blocks, and the default ``cascade plan``'s wall time.

Run: ``.venv/bin/python benchmarks/bench_simulator.py``. Targets (CI, 2 cores): >= 100,000 simulated
tasks/s, the default plan under 30 s, time linear in blocks (the last column near 1.0).
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cascade_sched import CascadeSpec, build_schedule
from cascade_sched.cli import main
from simulator import Cluster, get_gpu, get_model, make_cost, simulate
from simulator.engine import _run
from simulator.workload import build_workload


def rate(spec: CascadeSpec, repeat: int = 3) -> tuple[float, float]:
    """(tasks/s end to end, tasks/s of the SimPy run alone), best of ``repeat``."""
    s = build_schedule(spec)
    g = get_model("wan2.1-1.3b")
    cost = make_cost("baseline-fps", g, get_gpu("h100-sxm"))
    cluster = Cluster.of("h100-sxm", spec.num_devices)
    best = engine = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        simulate(s, cluster, cost, check_memory=False)
        best = min(best, time.perf_counter() - t0)
        w = build_workload(s, g)
        t0 = time.perf_counter()
        _run(w, cluster, cost, False)
        engine = min(engine, time.perf_counter() - t0)
    return len(s.tasks) / best, len(s.tasks) / engine


def main_bench() -> None:
    print(f"{'cascade (1.3B, window 7)':<44} {'tasks':>7} {'tasks/s':>9} {'engine/s':>9}")
    cases = [
        ("sequential, 1 GPU", CascadeSpec(num_blocks=4000, window=7)),
        ("lag 1 causal (P4), 5 GPUs", CascadeSpec(num_blocks=4000, lag=1, num_devices=5, window=7)),
        ("lag 1 bidirectional, 5 GPUs", CascadeSpec(num_blocks=4000, lag=1, num_devices=5, window=7,
                                                    attention="bidirectional")),
        ("lag 1 stale, 5 GPUs", CascadeSpec(num_blocks=4000, lag=1, num_devices=5, window=7, attention="stale")),
        ("lag 2 causal, 3 GPUs", CascadeSpec(num_blocks=4000, lag=2, num_devices=3, window=7)),
    ]
    for name, spec in cases:
        total, engine = rate(spec)
        print(f"{name:<44} {spec.num_blocks * spec.num_stages:>7} {total:>9,.0f} {engine:>9,.0f}")
    print("\nlinearity in blocks (lag 1 causal, 5 GPUs): seconds per task relative to 500 blocks")
    base = None
    for blocks in (500, 2000, 8000):
        total, _ = rate(CascadeSpec(num_blocks=blocks, lag=1, num_devices=5, window=7), repeat=2)
        per_task = 1 / total
        base = base or per_task
        print(f"  {blocks:>5} blocks: {total:>9,.0f} tasks/s  ratio {per_task / base:.2f}")
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter()
        main(["plan", "--out", out])
        wall = time.perf_counter() - t0
    print(f"\ndefault `cascade plan` (2 models x 8 GPU counts x 5 lags x 3 attentions): {wall:.2f} s wall")


if __name__ == "__main__":
    main_bench()
