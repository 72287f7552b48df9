"""Forward time per block of the `small` model on CPU, and the share of time outside attention and matmuls.

Run:  .venv/bin/python benchmarks/bench_model.py [--model small] [--threads 1] [--repeats 20]

Scenarios (one tick each):
  seq-0      block 0, no visible blocks (the first block of a sequential run)
  seq-3      one block reading 3 committed blocks (a sequential run in steady state)
  gang-5     5 tasks of a P4 bidirectional gang, each reading 2 committed blocks and the 4 others
The overhead share is (wall time - time inside F.linear and SDPA) / wall time, both timed on the same
unprofiled runs. Target: under 10%.
Prints figures only; nothing here is a test.
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
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from models import CausalWanDiT, TaskInput, get_config, text_embedding
from models.dit import KVPair, KVRef

# Top-level ops whose whole time (children included: addmm's bias copy, SDPA's internals) is "compute".
CORE_OPS = ("aten::linear", "aten::scaled_dot_product_attention", "aten::matmul", "aten::conv3d")
# Elementwise work the model itself needs (norms, activation, RoPE, adaLN); the rest is framework overhead.
MODEL_ELEMENTWISE = ("norm", "gelu", "silu", "mul", "add", "addcmul", "pow", "rsqrt", "mean", "sum", "div",
                     "polar", "cos", "sin", "view_as", "sub")


def _scenarios(model: CausalWanDiT) -> dict[str, tuple[list[TaskInput], Callable[[KVRef, int], KVPair]]]:
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    shape = (cfg.tokens_per_block, cfg.num_heads, cfg.head_dim)
    store = {(b, 4): [(torch.randn(shape, generator=g), torch.randn(shape, generator=g))
                      for _ in range(cfg.num_layers)] for b in range(3)}

    def kv(ref: KVRef, layer: int) -> KVPair:
        return store[ref][layer]

    def task(block: int, stage: int, reads: list[KVRef]) -> TaskInput:
        return TaskInput(ref=(block, stage), latent=torch.randn(cfg.latent_shape(), generator=g),
                         timestep=1000.0 - 200 * stage, frame_offset=block * cfg.frames_per_block,
                         prompt="p", reads=reads)

    gang_blocks = list(range(3, 8))  # blocks 3..7 in flight at stages 4..0; 1 and 2 committed
    gang = [task(b, 7 - b, [(1, 4), (2, 4)] + [(o, 7 - o) for o in gang_blocks if o != b]) for b in gang_blocks]
    return {
        "seq-0": ([task(0, 0, [])], kv),
        "seq-3": ([task(3, 0, [(0, 4), (1, 4), (2, 4)])], kv),
        "gang-5": (gang, kv),
    }


def _time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def _core_time(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median wall, median time inside F.linear + SDPA) of `fn`, timed by wrapping those two functions
    (a perf_counter pair per call, about a microsecond), so no profiler distorts the small ops."""
    linear, sdpa = F.linear, F.scaled_dot_product_attention
    spent = [0.0]

    def timed(op: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def wrapper(*args: object, **kwargs: object) -> torch.Tensor:
            t0 = time.perf_counter()
            out = op(*args, **kwargs)
            spent[0] += time.perf_counter() - t0
            return out
        return wrapper

    F.linear, F.scaled_dot_product_attention = timed(linear), timed(sdpa)  # type: ignore[assignment]
    try:
        fn()
        walls, cores = [], []
        for _ in range(repeats):
            spent[0] = 0.0
            t0 = time.perf_counter()
            fn()
            walls.append(time.perf_counter() - t0)
            cores.append(spent[0])
    finally:
        F.linear, F.scaled_dot_product_attention = linear, sdpa  # type: ignore[assignment]
    return statistics.median(walls), statistics.median(cores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float64"])
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = get_config(args.model)
    model = CausalWanDiT(cfg).to(getattr(torch, args.dtype))
    model.register_prompt("p", text_embedding("a fox running through snow", cfg))
    print(f"model {cfg.name}: dim {cfg.dim}, {cfg.num_layers} layers x {cfg.num_heads} heads, "
          f"{cfg.tokens_per_block} tokens/block, {args.dtype}, {torch.get_num_threads()} thread(s), "
          f"torch {torch.__version__}")
    print(f"{'scenario':<8} {'tasks':>5} {'ms/tick':>9} {'ms/block':>9} {'outside':>9} {'  of: model':>11} "
          f"{'rest':>9}  top ops outside")
    for name, (tasks, kv) in _scenarios(model).items():
        def run(tasks: list[TaskInput] = tasks, kv: Callable[[KVRef, int], KVPair] = kv) -> None:
            model.forward_tick(tasks, kv)

        wall = _time(run, args.repeats)
        wall_timed, core_timed = _core_time(run, args.repeats)
        share = max(0.0, wall_timed - core_timed) / wall_timed
        reps = 5
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(reps):
                run()
        elementwise = total = 0.0
        others: dict[str, float] = {}
        for ev in prof.events():  # self time of every op not inside a core op
            parent, inside = ev.cpu_parent, False
            while parent is not None and not inside:
                inside = parent.name in CORE_OPS
                parent = parent.cpu_parent
            if inside or ev.name in CORE_OPS:
                continue
            t = ev.self_cpu_time_total / 1e6 / reps
            others[ev.name] = others.get(ev.name, 0.0) + t
            total += t
            if any(k in ev.name for k in MODEL_ELEMENTWISE):
                elementwise += t
        model_part = share * elementwise / total if total else 0.0  # split the measured share by profile
        top = ", ".join(f"{k.removeprefix('aten::')} {v / total:.0%}"
                        for k, v in sorted(others.items(), key=lambda kv_: -kv_[1])[:3])
        print(f"{name:<8} {len(tasks):>5} {wall * 1e3:>9.1f} {wall * 1e3 / len(tasks):>9.1f} {share:>9.1%} "
              f"{model_part:>11.1%} {share - model_part:>9.1%}  {top}")
    print("outside: share of wall time outside matmuls and attention (target < 10%); of it, model: norms, GELU,")
    print("RoPE, adaLN (elementwise work any implementation does); rest: copies, gathers and Python overhead.")
    print("The share is timed directly (wrapping F.linear and SDPA); its split and the top ops (as shares of")
    print("the outside op time) come from torch.profiler, which inflates small ops.")

if __name__ == "__main__":
    main()
