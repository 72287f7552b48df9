"""Compiled against eager: the same schedule through the reference executor and the compiled executor.

Run:  .venv/bin/python benchmarks/bench_compiled.py [--model small] [--blocks 4] [--lag 1]
          [--timesteps 1000,500] [--attention bidirectional] [--window 2] [--repeats 5] [--threads 2]

Prints, for the CPU (float32, Inductor):
  compile seconds per bucket (export + Inductor compile of the bucket's graphs, before the first tick),
  the time inside model forwards per run (best and median of interleaved runs), eager and compiled, and
  their ratio (eager / compiled),
  and the largest relative difference of the latents.
GPU part (bf16: Inductor, and TensorRT where torch-tensorrt loads) runs only where CUDA is present;
otherwise it says it was skipped. Prints figures only; nothing here is a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from cascade_sched import CascadeSpec, build_schedule
from cascade_sched.errors import ConfigError
from executors.base import RunOptions, RunResult
from executors.buckets import forward_buckets
from executors.compiled import CompiledExecutor, load_tensorrt
from executors.reference import ReferenceExecutor
from models import CausalWanDiT, get_config
from models.prompts import StandInEncoder


def _interleaved(fns: dict[str, Callable[[], RunResult]], repeats: int) -> dict[str, tuple[float, float, RunResult]]:
    """Per variant: (best, median) seconds inside model forwards over ``repeats`` runs, and the last result.

    Variants alternate run by run after one warm-up each, so load from other processes on the machine
    hits both alike; the best run is the least disturbed one.
    """
    last = {k: fn() for k, fn in fns.items()}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            last[k] = fn()
            times[k].append(last[k].forward_s)
    return {k: (min(v), statistics.median(v), last[k]) for k, v in times.items()}


def bench(model: CausalWanDiT, spec: CascadeSpec, backend: str, repeats: int, label: str) -> None:
    schedule = build_schedule(spec)
    buckets = forward_buckets(schedule, range(spec.num_devices), model.config.tokens_per_block)
    print(f"\n[{label}] {model.config.name} {str(model.dtype).removeprefix('torch.')} on {model.device}, "
          f"{spec.num_blocks} blocks, lag {spec.lag}, S={spec.num_stages}, {spec.attention}, window {spec.window}: "
          f"{schedule.num_ticks} ticks, {len(buckets)} buckets")
    ex = CompiledExecutor(backend)
    with torch.inference_mode():
        start = time.perf_counter()
        ex.prepare(schedule, model)
        total = time.perf_counter() - start
        for bucket, secs in sorted(ex.compile_s.items(), key=lambda kv: (kv[0].kind, kv[0].queries, kv[0].keys)):
            graphs = 4 if bucket.kind == "tokens" else 1
            print(f"  compile {bucket!s:>12}: {secs:6.2f} s ({graphs} graph{'s' if graphs > 1 else ''})")
        print(f"  compile total: {total:.1f} s")
        opts = RunOptions(text_encoder=StandInEncoder(model.config))  # timing: the stand-in for any geometry
        res = _interleaved({"eager": lambda: ReferenceExecutor().run(schedule, model, opts),
                            backend: lambda: ex.run(schedule, model, opts)}, repeats)
    (e_best, e_med, e_res), (c_best, c_med, c_res) = res["eager"], res[backend]
    a, b = e_res.stacked().float(), c_res.stacked().float()
    err = float((a - b).abs().max()) / max(float(a.abs().max()), 1e-30)
    for name, best, med in (("eager", e_best, e_med), (backend, c_best, c_med)):
        print(f"  {name:<8} forward best {best * 1e3:8.1f} ms, median {med * 1e3:8.1f} ms "
              f"({best / schedule.num_ticks * 1e3:.2f} ms/tick best)")
    print(f"  speed-up (eager / compiled, forward, best): {e_best / c_best:.2f}x   "
          f"(median: {e_med / c_med:.2f}x)   latents max rel diff {err:.1e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="small")
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--lag", type=int, default=1)
    p.add_argument("--timesteps", default="1000,500")
    p.add_argument("--attention", default="bidirectional")
    p.add_argument("--window", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    spec = CascadeSpec(num_blocks=args.blocks, lag=args.lag, timesteps=tuple(float(t) for t in args.timesteps.split(",")),
                       attention=args.attention, window=args.window)
    seq = CascadeSpec(num_blocks=args.blocks, timesteps=spec.timesteps, attention=args.attention, window=args.window)
    print(f"torch {torch.__version__}, {args.threads} CPU threads")
    model = CausalWanDiT(get_config(args.model), seed=0).eval()
    bench(model, spec, "inductor", args.repeats, "CPU cascade")
    bench(model, seq, "inductor", args.repeats, "CPU sequential")

    if not torch.cuda.is_available():
        print("\n[GPU] skipped: torch sees no CUDA device here (no GPU was lent to this run)")
        return
    gpu = CausalWanDiT(get_config(args.model), seed=0).to("cuda", torch.bfloat16).eval()
    bench(gpu, spec, "inductor", args.repeats, "GPU cascade, Inductor")
    try:
        load_tensorrt()
    except ConfigError as e:
        print(f"\n[GPU TensorRT] skipped: {e}")
        return
    bench(gpu, spec, "tensorrt", args.repeats, "GPU cascade, TensorRT")


if __name__ == "__main__":
    main()
