"""End-to-end generation at a real geometry with random weights: DiT, text conditioning, the Wan VAE.

The GPU check of real generation: the 1.3B geometry at 480x832 in bf16 with random DiT weights and a random
full-size Wan2.1 VAE (diffusers' ``AutoencoderKLWan`` default config, the published architecture),
sequential (lag = S), decoding on its own thread and CUDA stream. Prints the card, the delivered FPS (decode
included), the denoise FPS (the paper's) and the first frame, the decode time per block (first block and later ones, from
the trace's decode events), and the peak GPU memory. Nothing is downloaded: the VAE is built here.

    python benchmarks/bench_generate_real.py --device cuda                 # the GPU check (~1-2 min)
    python benchmarks/bench_generate_real.py --device cpu --model small --blocks 2   # a CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch

from apps.generate.run import run_generate
from apps.request import ModelSource, Outputs, RunRequest
from cascade_sched import CascadeSpec
from cascade_sched.metrics import StreamMetrics


def random_wan_vae(folder: Path) -> Path:
    """The published Wan2.1 VAE architecture (diffusers' defaults), random weights, saved as a folder."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    AutoencoderKLWan().save_pretrained(str(folder / "vae"))
    return folder / "vae"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="wan2.1-1.3b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default=None, help="default bfloat16 on cuda, float32 on cpu")
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--out", default=None, help="also write the video (.mp4)")
    args = ap.parse_args()
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    cuda = args.device.startswith("cuda")
    with tempfile.TemporaryDirectory(prefix="cascade-bench-") as tmp:
        vae = random_wan_vae(Path(tmp))
        trace = Path(tmp) / "trace.json"
        source = ModelSource(model=args.model, device=args.device, dtype=dtype, text_embeddings="stand-in",
                             vae=str(vae))
        job = RunRequest(spec=CascadeSpec(num_blocks=args.blocks), source=source,
                         outputs=Outputs(out=args.out, trace=str(trace)), progress=False)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        s = run_generate(job)
        events = [e for e in json.loads(trace.read_text())["traceEvents"] if e.get("cat") == "decode"]
    decode_ms = [e["dur"] / 1e3 for e in sorted(events, key=lambda e: e["args"]["block"])]
    card = torch.cuda.get_device_name(torch.device(args.device)) if cuda else "CPU"
    print(f"{card}: {args.model} at {s['video_frames_per_block']} frames/block, {dtype}, {args.blocks} blocks, "
          f"sequential; decoder {s['sources']['decoder']}")
    print("\n".join(StreamMetrics.from_dict(s).summary_lines()))
    later = f"{statistics.median(decode_ms[1:]):.1f} ms median of the later blocks" if len(decode_ms) > 1 else "-"
    print(f"  decode per block: first {decode_ms[0]:.1f} ms (9 frames), {later} (12 frames)")
    print(f"  time in model forwards {s['forward_s']:.3f} s")
    if cuda:
        print(f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB allocated, "
              f"{torch.cuda.max_memory_reserved() / 2**30:.2f} GiB reserved")


if __name__ == "__main__":
    main()
