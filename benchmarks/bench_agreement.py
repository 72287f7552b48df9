"""How close the distributed executor's latents are to the reference's: the figures behind the promise
in docs/executors.md ("The same numbers on every executor").

Random small specs (1..BLOCKS blocks, 1..4 steps, every attention mode, window, sink and placement) run on
gloo ranks of each world size and on the reference executor; prints max|a - b| / max|a| per world size
and dtype (max, median, p90, and how many runs were bit-identical).

    python benchmarks/bench_agreement.py [--specs 30] [--model toy] [--blocks 12] [--ref-threads 2]
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np
import torch

from apps.request import ModelSource
from apps.sources import load_model
from cascade_sched import CascadeSpec, build_schedule
from executors.base import RunOptions
from executors.distributed import DistributedExecutor
from executors.launch import spawn
from executors.reference import ReferenceExecutor

PROMPTS = {1: "a blue cube spinning"}


def rank_fn(specs: list[dict], rank: int, world: int, model: str, dtype: str) -> list:  # type: ignore[type-arg]
    torch.set_num_threads(1)
    m, _ = load_model(ModelSource(model=model, dtype=dtype))
    out = []
    for spec in specs:
        r = DistributedExecutor().run(
            build_schedule(CascadeSpec.from_dict(spec)), m, RunOptions(prompts=PROMPTS)
        )
        out.append(r.stacked().numpy() if rank == 0 else None)
    return out


def draw(rng: random.Random, devices: int, blocks: int) -> dict:  # type: ignore[type-arg]
    k = rng.randint(1, 4)
    cache = rng.random() < 0.5
    return CascadeSpec(
        num_blocks=rng.randint(1, blocks),
        timesteps=(1000, 750, 500, 250)[:k],
        cache_pass=cache,
        lag=rng.randint(1, k + cache),
        attention=rng.choice(["causal", "bidirectional", "stale"]),
        window=rng.choice([None, 1, 2, 3]),
        sink=rng.randint(0, 2),
        num_devices=devices,
        placement=rng.choice(["block", "stage"]),
        seed=rng.randint(0, 3),
    ).to_dict()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--specs", type=int, default=30)
    ap.add_argument("--model", default="toy")
    ap.add_argument("--blocks", type=int, default=12)
    ap.add_argument("--ref-threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.ref_threads)
    for dtype in ("float32", "float64"):
        model, _ = load_model(ModelSource(model=args.model, dtype=dtype))
        for world in (2, 3):
            rng = random.Random(world)
            specs = [draw(rng, world, args.blocks) for _ in range(args.specs)]
            start = time.perf_counter()
            fn = functools.partial(rank_fn, model=args.model, dtype=dtype)
            got = spawn(fn, specs, world, timeout_s=300, threads=1)
            errs = []
            for spec, latents in zip(specs, got, strict=True):
                ref = (
                    ReferenceExecutor()
                    .run(build_schedule(CascadeSpec.from_dict(spec)), model, RunOptions(prompts=PROMPTS))
                    .stacked()
                    .numpy()
                )
                errs.append(float(np.abs(ref - latents).max()) / max(float(np.abs(ref).max()), 1e-300))
            e = np.array(errs)
            print(
                f"{args.model} {dtype} world {world}: {len(e)} specs, max {e.max():.3g}, median "
                f"{np.median(e):.3g}, p90 {np.quantile(e, 0.9):.3g}, bit-identical {int((e == 0).sum())}/{len(e)} "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
