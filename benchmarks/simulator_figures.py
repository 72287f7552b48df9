"""The pictures and tables of docs/simulator.md, drawn by the simulator itself.

Run: ``.venv/bin/python benchmarks/simulator_figures.py [--out docs/img]``. Writes

- ``sim_decomposition.png``: one stacked bar per model and setting (sequential on one GPU; the paper's P4,
  lag 1 on 5 GPUs, causal and bidirectional, each with the decode inline, on a second stream and on a GPU of
  its own; TAEHV inline): the seconds of one delivered block by part (``SimResult.decomposition``);
- ``sim_intervals.png``: the interval between decoded blocks of a run whose median hides its stalls
  (1.3B at lag 1 on 4 GPUs, bidirectional, decoding on a second stream of GPU 0: five blocks in flight
  on four GPUs, so the GPU that holds two of them moves round, and it meets the decode's stream only some
  ticks);

and prints the decomposition as a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cascade_sched import CascadeSpec, build_schedule
from simulator import Cluster, get_gpu, get_model, make_cost, simulate
from simulator.result import PARTS, SimResult
from simulator.visual import draw_decomposition, draw_intervals

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/img", help="folder for the PNGs (default %(default)s)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rows = runs("wan2.1-1.3b") + runs("wan2.1-14b")
    draw_decomposition(rows, os.path.join(args.out, "sim_decomposition.png"),
                       "one delivered block on H100 SXM (cost parts, window 7): where its time goes")
    print("| setting | GPUs | delivered FPS | paper-style FPS | " + " | ".join(f"{p} ms" for p in PARTS) + " | bottleneck |")
    print("|---|---:|---:|---:|" + "---:|" * len(PARTS) + "---|")
    for label, r in rows:
        parts = r.decomposition()
        print(f"| {label} | {r.gpus} | {r.fps:.1f} | {r.paper_fps:.1f} | "
              + " | ".join(f"{1e3 * parts[p]:.0f}" for p in PARTS) + f" | {r.bottleneck()[0]} |")
    spec = CascadeSpec(num_blocks=32, lag=1, num_devices=4, window=7, attention="bidirectional")
    g = get_model("wan2.1-1.3b")
    r = simulate(build_schedule(spec), Cluster.of("h100-sxm", 4), make_cost("parts", g, get_gpu("h100-sxm")), g,
                 decode="stream")
    draw_intervals(r, os.path.join(args.out, "sim_intervals.png"))
    print(f"\nintervals: 1.3B, 4 GPUs, lag 1, bidirectional, decode stream: paper-style {r.paper_fps:.1f} FPS, delivered "
          f"{r.fps:.1f}, p50 {r.interval_p50_s * 1e3:.0f} ms, p95 {r.interval_p95_s * 1e3:.0f} ms, "
          f"max {r.interval_max_s * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
