"""Whether a CUDA graph can capture the tick forward (the GPU kit's step 5): one tick forward captured with
``torch.cuda.graph`` and replayed against eager, or the exception that stopped the capture.

The kit runs it in a process of its own (``python -m apps.calibrate.graph_probe``; a failed capture must not
poison the kit's CUDA context), which prints one JSON line. On a CPU it says that CUDA graphs need a CUDA
device.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import torch

from apps.calibrate.gpu_kit import Kit, random_model
from apps.calibrate.profiling import register_prompt, synthetic_tick
from apps.calibrate.timing import median_time

__all__ = ["cuda_graph_probe", "main"]


def cuda_graph_probe(kit: Kit) -> dict[str, Any]:
    """Run the CUDA-graph probe (:func:`_probe`) in a process of its own, within the budget."""
    o = kit.options
    timeout = max(5.0, min(180.0, kit.left_s() - 5.0))
    cmd = [sys.executable, "-m", "apps.calibrate.graph_probe", "--model", o.model, "--device", o.device,
           "--dtype", o.dtype, "--context", str(o.window)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"captured": False, "why": f"the probe did not finish within {timeout:.0f} s"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"captured": False, "why": f"the probe exited {done.returncode}: {done.stderr.strip()[-300:]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _probe(model_name: str, device: str, dtype: str, context: int) -> dict[str, Any]:
    """Capture one tick forward (batch 1, ``context`` blocks) in a CUDA graph and replay it against eager."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return {"captured": False, "why": "CUDA graphs need a CUDA device: not run on a CPU"}
    model = random_model(model_name, device, dtype)
    what = f"{model_name} tick forward, batch 1, context {context} blocks, eager kernels"
    register_prompt(model)
    with torch.inference_mode():
        tasks, lookup = synthetic_tick(model, 1, context)
        eager = median_time(lambda: model.forward_tick(tasks, lookup), 2, 5, model.device)
        stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]  # torch: Stream() is not annotated
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            model.forward_tick(tasks, lookup)  # warm-up on the capturing stream, as torch.cuda.graphs asks
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                model.forward_tick(tasks, lookup)
        except Exception as e:
            return {"captured": False, "what": what, "eager_s": eager,
                    "why": f"the tick forward cannot be captured: {type(e).__name__}: {str(e).splitlines()[0]}"}
        replay = median_time(graph.replay, 2, 5, model.device)
    return {"captured": True, "what": what, "eager_s": eager, "graph_s": replay}


def main(argv: Sequence[str] | None = None) -> int:
    """The CUDA-graph probe: prints one JSON line."""
    p = argparse.ArgumentParser(prog="python -m apps.calibrate.graph_probe")
    p.add_argument("--model", default="wan2.1-1.3b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--context", type=int, default=7)
    args = p.parse_args(argv)
    print(json.dumps(_probe(args.model, args.device, args.dtype, args.context)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
