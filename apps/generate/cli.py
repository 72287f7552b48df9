"""``cascade generate``: run a schedule for real and write the video, latents and a measured trace.

Imports torch only when the command runs, so ``cascade schedule`` stays light.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any

from apps.flags import DEFAULT_PROMPT, add_device_args, add_model_source_args
from apps.request import DEFAULT_OUT, EXECUTORS, Outputs, resolve
from cascade_sched.cliargs import Handler, Invocation, add_schedule_args, int_pair


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Handler]:
    """Add ``generate`` to the ``cascade`` command; returns its handler."""
    p = sub.add_parser("generate", help="generate a video by running the schedule with a model")
    add_schedule_args(p)
    add_model_source_args(p)
    g = p.add_argument_group("generation")
    g.add_argument("--prompt", default=DEFAULT_PROMPT, help="the text prompt (the toy model, with none given: "
                   "its demo timeline, a switch from 'red green slow' to 'red green blue fast' at block 3)")
    g.add_argument("--prompts", default=None, metavar="PATH",
                   help="prompt timeline: a JSON or YAML list of {at_block, prompt} (switches mid-stream; "
                        "default none; examples/story.yaml)")
    g.add_argument("--save-text-embeddings", default=None, metavar="FILE.safetensors",
                   help="write the embeddings of every prompt of the run (default none)")
    g.add_argument("--interactive", action="store_true",
                   help="read new prompts from standard input while streaming; each applies from the first "
                        "block not yet started, and the stream goes on until input ends (Ctrl-D)")
    g.add_argument("--realtime", action="store_true", help="with --interactive: hold the stream to the video's "
                   "frame rate (16 fps); the status shows when it falls behind")
    g.add_argument("--max-blocks", type=int, default=None,
                   help="with --interactive: end the stream here, 0 = never (default: until input ends, at least "
                        "--blocks)")
    g.add_argument("--executor", default="reference", choices=EXECUTORS,
                   help="reference (one process), distributed (one rank per device) or compiled (graphs "
                   "compiled per forward shape; one process, or one rank per device with --nproc/torchrun)")
    g.add_argument("--backend", default=None, choices=("inductor", "tensorrt"),
                   help="compiled executor's backend (default inductor; tensorrt needs torch-tensorrt and CUDA)")
    g.add_argument("--engine-cache", default=None, metavar="DIR",
                   help="compiled executor: save compiled artifacts under DIR/rank{r}/, load them when present "
                        "(default none)")
    g.add_argument("--nproc", type=int, default=None,
                   help="ranks to spawn when not under torchrun (default and required: --devices)")
    add_device_args(g)
    g.add_argument("--out", default=None, metavar="PATH.mp4|PATH.gif",
                   help=f"video file to write, .mp4 or .gif, block by block (default {DEFAULT_OUT}/"
                        "<model>-<time>.mp4)")
    g.add_argument("--save-latents", default=None, metavar="PATH.npz", help="write every latent frame (default none)")
    g.add_argument("--trace", default=None, metavar="PATH.json", help="write the measured Chrome trace (default none)")
    g.add_argument("--timeout", type=float, default=60.0, help="seconds a rank waits on a peer (default 60)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--fail-at", type=int_pair("RANK:TICK"), default=None, help=argparse.SUPPRESS)  # tests: RANK:TICK
    return {"generate": _cmd_generate}


def _cmd_generate(run: Invocation) -> int:
    from apps.generate.run import run_generate
    from apps.sources import prompt_notes

    request, notes = resolve(run)
    switches = request.spec.switches  # the prompts some block is conditioned on: those worth a note
    shown = {pid for _, pid in switches} | ({0} if not switches or switches[0][0] > 0 else set())
    texts = [text for pid, text in ((0, request.prompt), *request.prompts) if pid in shown]
    notes = (*notes, *prompt_notes(request.source, texts))
    made = request.outputs.made_folder
    if made:  # removed again if the run is refused before it writes (the summary says where it went)
        os.makedirs(made, exist_ok=True)
    try:
        summary = run_generate(request, notes)  # says the notes once everything has loaded
    except BaseException:
        if made:
            with contextlib.suppress(OSError):
                os.rmdir(made)  # only if empty
        raise
    if summary:
        _print_summary(summary, request.outputs)
    return 0


def _print_summary(s: dict[str, Any], outputs: Outputs) -> None:
    """The summary: every figure named as ``cascade_sched.metrics`` defines it, times from the request."""
    from cascade_sched.metrics import StreamMetrics

    metrics = StreamMetrics.from_dict(s)
    times = ", ".join(f"{t:.3f}" for t in s["block_done_s"][:12])
    more = " ..." if len(s["block_done_s"]) > 12 else ""
    lines = [
        f"{s['executor']} executor, model {s['model']}, {s['blocks']} blocks on {s['devices']} device(s), "
        f"{s['video_frames']} video frames",
        *metrics.summary_lines(),
        f"  time in model forwards {s['forward_s']:.3f} s; first prompt encoded in {s['prompt_encode_s']:.3f} s",
        f"  blocks denoised at (s from the request): {times}{more}",
    ]
    lines += [f"  prompt switch at block {at}: {text!r}" for at, text in s.get("switches", [])]
    lines += [f"  {what}: {line}" for what, line in s.get("sources", {}).items()]
    for path, what in ((outputs.out, "video"), (outputs.save_latents, "latents"), (outputs.trace, "trace")):
        if path:
            lines.append(f"  wrote {what}: {path}")
    print("\n".join(lines))
    sys.stdout.flush()
