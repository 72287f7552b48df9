"""An endless stream's memory and per-block cost stay flat (never a timed test).

A ``tiny``-model stream of 20,000 blocks on the reference executor, the engine declaring each block as the
next tick needs it (``executors.feed.Stream``), one thread, a prompt switch every 500 blocks. It prints the
process's resident memory after 1,000 blocks and at the end, and the tick loop's own time per block (wall
time minus the time in model forwards) over blocks 1,000-2,000 and over the last 1,000. Targets: RSS growth
<= 5%, overhead within 10%.

    python benchmarks/bench_endless.py [--blocks 20000] [--window 7] [--lag 1]

``tests/executors/test_exec_endless.py`` runs the same stream for 3,000 blocks and asserts the memory bound
only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch

from apps.host import rss_bytes
from cascade_sched import CascadeSpec
from executors.base import RunOptions
from executors.feed import Declaration, Stream, StreamView
from executors.reference import ReferenceExecutor
from models import CausalWanDiT, get_config

SWITCH_EVERY = 500  # blocks between prompt switches (each registers a prompt; old ones are forgotten)


def endless(blocks: int, marks: tuple[int, ...], window: int = 7, lag: int = 1,
            model: str = "tiny") -> dict[int, tuple[float, float, int]]:
    """Stream ``blocks`` blocks; at each block of ``marks``: (perf_counter, seconds in model forwards so far,
    RSS bytes), taken as the block is handed over."""
    executor = ReferenceExecutor()
    options = RunOptions(prompts={}, history=64)
    seen: dict[int, tuple[float, float, int]] = {}

    def on_block(block: int, _: torch.Tensor) -> None:
        if block in marks:
            assert executor.loop is not None
            seen[block] = (time.perf_counter(), executor.loop.forward_s, rss_bytes())

    def hook(tick: int, view: StreamView) -> Declaration | None:
        pid = view.declared // SWITCH_EVERY
        if pid and pid not in options.prompts:
            options.prompts[pid] = f"prompt {pid}"
            return Declaration(switch=pid)
        return None

    spec = CascadeSpec(num_blocks=1, lag=lag, window=window)
    with torch.inference_mode():
        executor.run(Stream(spec, max_blocks=blocks), CausalWanDiT(get_config(model), seed=0), options, on_block, hook)
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=20_000)
    ap.add_argument("--window", type=int, default=7)
    ap.add_argument("--lag", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    n = args.blocks
    marks = (1_000, 2_000, n - 1_001, n - 1)
    t0 = time.perf_counter()
    seen = endless(n, marks, args.window, args.lag)
    wall = time.perf_counter() - t0

    def overhead(a: int, b: int) -> float:
        (ta, fa, _), (tb, fb, _) = seen[a], seen[b]
        return ((tb - ta) - (fb - fa)) / (b - a)

    early, late = overhead(1_000, 2_000), overhead(n - 1_001, n - 1)
    rss0, rss1 = seen[1_000][2], seen[n - 1][2]
    load = os.getloadavg()
    print(f"tiny, {n} blocks, lag {args.lag}, window {args.window}, 1 thread, {wall:.1f} s; load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    print(f"RSS after 1,000 blocks {rss0 / 2**20:.1f} MiB, at the end {rss1 / 2**20:.1f} MiB: "
          f"{(rss1 - rss0) / rss0:+.2%} (target <= +5%)")
    print(f"tick-loop overhead per block: blocks 1,000-2,000 {early * 1e3:.3f} ms, last 1,000 {late * 1e3:.3f} ms: "
          f"{(late - early) / early:+.1%} (target within 10%)")


if __name__ == "__main__":
    main()
