"""The pictures and tables of docs/simulator.md, drawn by the simulator itself.

Run: ``.venv/bin/python benchmarks/simulator_figures.py [--out docs/img]``. Writes

- ``sim_decomposition.png``: one stacked bar per model and setting (sequential on one GPU; the paper's P4,
  lag 1 on 5 GPUs, causal and bidirectional, each with the decode inline, on a second stream and on a GPU of
  its own; TAEHV inline): the seconds of one delivered block by part (``SimResult.decomposition``);
- ``sim_intervals.png``: the interval between decoded blocks of a run whose median hides its stalls
  (1.3B at lag 1 on 4 GPUs, bidirectional, decoding on a second stream of GPU 0: five blocks in flight
  on four GPUs, so the GPU that holds two of them moves round, and it meets the decode's stream only some
  ticks);

and prints the decomposition as a Markdown table; with ``--placements`` (docs/placements.md) instead:

- ``place_block_grid.png``, ``place_ring_grid.png``, ``place_hybrid_grid.png``: the tick x device grids
  ``cascade schedule --png`` draws for block placement (lag 1 on 5 GPUs), a ring of 4 (stride 4) and 2
  rings of 2 (stride 2);
- ``place_block_gantt.png``, ``place_ring_gantt.png``: ``cascade simulate --gantt`` of 1.3B on H100s, block
  placement at lag 1 on 5 GPUs and a ring of 4 with the decoding device's layers balanced;
- Markdown tables of ``cascade simulate``: delivered FPS, the largest GPU's peak memory and the first frame,
  for 1.3B and 14B on H100 SXM and RTX 5090, 1-8 GPUs, block placement (lag 1, causal, decode inline on d0)
  against one layer ring of all the GPUs (stride W, stage context, decode inline on the last device with a
  balanced layer split, whose ``--layer-split`` each cell's command names), and the bytes each moves.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cascade_sched import CascadeSpec, build_schedule
from simulator import Cluster, get_gpu, get_model, make_cost, simulate
from simulator.result import PARTS, SimResult
from simulator.visual import draw_decomposition, draw_gantt, draw_intervals

SETTINGS = (
    ("seq, 1 GPU", {}, "inline", "vae"),
    ("P4 causal, inline", {"lag": 1, "num_devices": 5}, "inline", "vae"),
    ("P4 bidir, inline", {"lag": 1, "num_devices": 5, "attention": "bidirectional"}, "inline", "vae"),
    ("P4 bidir, stream", {"lag": 1, "num_devices": 5, "attention": "bidirectional"}, "stream", "vae"),
    ("P4 bidir, +decode GPU", {"lag": 1, "num_devices": 5, "attention": "bidirectional"}, "gpu", "vae"),
    ("P4 bidir, TAEHV", {"lag": 1, "num_devices": 5, "attention": "bidirectional"}, "inline", "taehv"),
)


def runs(model: str) -> list[tuple[str, SimResult]]:
    g = get_model(model)
    out = []
    for label, kw, decode, decoder in SETTINGS:
        spec = CascadeSpec(num_blocks=32, window=7, **kw)  # type: ignore[arg-type]
        cost = make_cost("parts", g, get_gpu("h100-sxm"), decoder)
        r = simulate(build_schedule(spec), Cluster.of("h100-sxm", spec.num_devices), cost, g, decode=decode)
        out.append((f"{model.removeprefix('wan2.1-')} {label}", r))
    return out


PLACE_BLOCKS = 80  # enough for a ring of 8's steady state (33 blocks in flight, a window of 7)


def _block_run(model: str, gpu: str, n: int) -> SimResult:
    g = get_model(model)
    spec = CascadeSpec(num_blocks=PLACE_BLOCKS, lag=1, num_devices=n, window=7)
    return simulate(build_schedule(spec), Cluster.of(gpu, n), make_cost("parts", g, get_gpu(gpu)), g,
                    check_memory=False)


def _ring_run(model: str, gpu: str, n: int, split: tuple[int, ...] | None = None) -> SimResult:
    g = get_model(model)
    spec = CascadeSpec(num_blocks=PLACE_BLOCKS, lag=1, num_devices=n, window=7, placement="layers", stage_stride=n,
                       num_layers=None if split else g.num_layers, layer_split=split, attention="stage")
    return simulate(build_schedule(spec), Cluster.of(gpu, n), make_cost("parts", g, get_gpu(gpu)), g,
                    check_memory=False)


def _balanced_ring(model: str, gpu: str, n: int) -> tuple[SimResult, tuple[int, ...] | None]:
    """A ring of ``n`` with the layer split that levels its devices (the planner's ``balanced_split``)."""
    from simulator.plan import balanced_split

    even = _ring_run(model, gpu, n)
    split = balanced_split(even) if n > 1 else None
    if split is None:
        return even, None
    other = _ring_run(model, gpu, n, split)
    return (other, split) if other.fps > even.fps else (even, None)


def _cell(r: SimResult, what: str) -> str:
    if what == "fps":
        return f"{r.fps:.1f}" if r.fits else f"({r.fps:.1f}) oom"
    if what == "memory":
        return f"{max(r.peak_memory_bytes) / 1e9:.1f}"
    if what == "first":
        return f"{r.first_frame_s:.2f}"
    return f"{r.bytes_total / len(r.block_decoded_s) / r.denoising_gpus / 1e9:.2f}"


def placements(out: str) -> None:
    """docs/placements.md's pictures and tables (see the module docstring)."""
    from apps.cli import main as cascade

    for name, argv in (
        ("block", ["--blocks", "6", "--lag", "1", "--devices", "5", "--attention", "causal"]),
        ("ring", ["--blocks", "6", "--lag", "1", "--devices", "4", "--placement", "layers", "--stage-stride", "4",
                  "--layers", "30", "--attention", "stage"]),
        ("hybrid", ["--blocks", "6", "--lag", "1", "--devices", "4", "--rings", "2", "--placement", "layers",
                    "--stage-stride", "2", "--layers", "30", "--attention", "stage"]),
    ):
        with contextlib.redirect_stdout(io.StringIO()):
            cascade(["schedule", *argv, "--png", os.path.join(out, f"place_{name}_grid.png")])
    g13 = "wan2.1-1.3b"
    draw_gantt(_block_run(g13, "h100-sxm", 5), os.path.join(out, "place_block_gantt.png"), 24)
    ring, split = _balanced_ring(g13, "h100-sxm", 4)
    draw_gantt(ring, os.path.join(out, "place_ring_gantt.png"), 24)
    print(f"gantts: block lag 1 on 5 H100s; a ring of 4, --layer-split {','.join(map(str, split or ()))}\n")
    for gpu in ("h100-sxm", "rtx5090"):
        rows: dict[tuple[str, str], list[SimResult]] = {}
        splits: dict[str, list[str]] = {}
        for model in (g13, "wan2.1-14b"):
            rows[(model, "block")] = [_block_run(model, gpu, n) for n in range(1, 9)]
            rings = [_balanced_ring(model, gpu, n) for n in range(1, 9)]
            rows[(model, "ring")] = [r for r, _ in rings]
            splits[model] = [",".join(map(str, s)) if s else "even" for _, s in rings]
        for what, title in (("fps", "delivered FPS"), ("memory", "peak memory of the fullest GPU, GB"),
                            ("first", "first frame, s"), ("bytes", "GB moved per delivered block per GPU")):
            print(f"{gpu}: {title}\n")
            print("| model | placement | " + " | ".join(f"{n} GPU" for n in range(1, 9)) + " |")
            print("|---|---|" + "---:|" * 8)
            for (model, kind), results in rows.items():
                label = "block, lag 1, causal" if kind == "block" else "one ring, stride W, stage"
                print(f"| {model} | {label} | " + " | ".join(_cell(r, what) for r in results) + " |")
            print()
        for model, sp in splits.items():
            print(f"{gpu} {model} ring layer splits (1-8 GPUs): {'; '.join(sp)}")
        print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/img", help="folder for the PNGs (default %(default)s)")
    ap.add_argument("--placements", action="store_true", help="docs/placements.md's pictures and tables instead")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.placements:
        placements(args.out)
        return
    rows = runs("wan2.1-1.3b") + runs("wan2.1-14b")
    draw_decomposition(rows, os.path.join(args.out, "sim_decomposition.png"),
                       "cascade simulate, 32 blocks on H100 SXM (cost parts, window 7): the time of one delivered "
                       "block by part, steady state; above each bar its delivered FPS and GPUs")
    print("| setting | GPUs | delivered FPS | denoise FPS | " + " | ".join(f"{p} ms" for p in PARTS) + " | bottleneck |")
    print("|---|---:|---:|---:|" + "---:|" * len(PARTS) + "---|")
    for label, r in rows:
        parts = r.decomposition()
        print(f"| {label} | {r.gpus} | {r.delivered_fps:.1f} | {r.denoise_fps:.1f} | "
              + " | ".join(f"{1e3 * parts[p]:.0f}" for p in PARTS) + f" | {r.bottleneck()[0]} |")
    spec = CascadeSpec(num_blocks=32, lag=1, num_devices=4, window=7, attention="bidirectional")
    g = get_model("wan2.1-1.3b")
    r = simulate(build_schedule(spec), Cluster.of("h100-sxm", 4), make_cost("parts", g, get_gpu("h100-sxm")), g,
                 decode="stream")
    draw_intervals(r, os.path.join(args.out, "sim_intervals.png"))
    print(f"\nintervals: 1.3B, 4 GPUs, lag 1, bidirectional, decode stream: denoise FPS {r.denoise_fps:.1f}, delivered "
          f"{r.delivered_fps:.1f}, p50 {r.interval_p50_s * 1e3:.0f} ms, p95 {r.interval_p95_s * 1e3:.0f} ms, "
          f"max {r.interval_max_s * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
