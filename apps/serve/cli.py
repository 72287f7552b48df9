"""``cascade serve``: registered into the ``cascade`` command through :func:`register`.

Starlette, uvicorn and prometheus_client come with the ``serve`` extra; torch is imported only when the
command runs. Under torchrun (``--executor distributed``) rank 0 serves and the other ranks follow it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from typing import Any

from cascade_sched.bounds import check_int
from cascade_sched.errors import CascadeError, ConfigError

Handler = Callable[[argparse.Namespace], int]

def register(sub: Any) -> dict[str, Handler]:
    """Add ``serve`` to the ``cascade`` command; returns its handler."""
    from apps.generate.cli import PRESET_NAMES
    from cascade_sched.cliargs import add_device_args, add_model_source_args, add_schedule_args, int_pair

    p = sub.add_parser("serve", help="serve a live stream to a browser, with prompt switches (needs the serve extra)",
                       description="Serve one live stream at a time over HTTP and a websocket; open the printed "
                                   "URL in a browser. See docs/serve.md.")
    add_schedule_args(p)
    for action in p._actions:  # the stream's length is --max-blocks, its prompts come from clients
        if action.dest in ("blocks", "switch"):
            action.help = argparse.SUPPRESS
            action.default = None if action.dest == "blocks" else []
        if action.dest == "switch_policy":
            action.help = "switch policy a stream starts with: none | recache (default none; a client may restart "\
                          "the stream under the other)"
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    g.add_argument("--port", type=int, default=8000, help="TCP port, 0 = any free one (default 8000)")
    g.add_argument("--token", default=os.environ.get("CASCADE_SERVE_TOKEN"),
                   help="require this token on every request (?token= or Authorization: Bearer; default: "
                        "$CASCADE_SERVE_TOKEN, else none)")
    g.add_argument("--sharing", default="watch", choices=("watch", "exclusive"),
                   help="a second client watches the same stream, or is told busy (default watch)")
    g.add_argument("--idle-timeout", type=float, default=300.0,
                   help="end a stream after this many seconds without a client message, 0 = never (default 300)")
    g.add_argument("--max-blocks", type=int, default=600, help="a stream's length in blocks (default 600)")
    g.add_argument("--fps", type=float, default=16.0, help="video frames per second the stream is paced to "
                   "(default 16, Wan2.1's rate)")
    g.add_argument("--lead-blocks", type=int, default=1,
                   help="decoded blocks generation may run ahead of the display (default 1; more absorbs jitter and adds switch latency)")
    g.add_argument("--client-buffer", type=int, default=48,
                   help="frames buffered per client before the oldest are dropped (default 48)")
    g.add_argument("--jpeg-quality", type=int, default=85, help="JPEG quality of the frames, 1-95 (default 85)")
    g.add_argument("--max-prompt-chars", type=int, default=500, help="longest prompt accepted (default 500)")
    g.add_argument("--max-message-bytes", type=int, default=4096, help="largest client message (default 4096)")
    g.add_argument("--prompt-interval", type=float, default=1.0,
                   help="seconds between a client's accepted prompt changes (default 1)")
    m = add_model_source_args(p, preset_names=PRESET_NAMES)
    m.add_argument("--prompt", default="a red ball bouncing", help="a stream's first prompt")
    m.add_argument("--executor", default="reference", choices=("reference", "distributed"),
                   help="reference (this process) or distributed (under torchrun, one rank per device)")
    add_device_args(m)
    m.add_argument("--timeout", type=float, default=60.0, help="seconds a rank waits on a peer (default 60)")
    m.add_argument("--fail-at", type=int_pair("RANK:TICK"), default=None, help=argparse.SUPPRESS)  # tests
    return {"serve": _cmd_serve}


def _positive(flag: str, value: float, what: str = "") -> None:
    if not value > 0:
        raise ConfigError(flag, f"`--{flag.replace('_', '-')}` must be positive{what}, got {value:g}")


def check_args(args: argparse.Namespace) -> None:
    """Every flag checked before anything is built: one ``ConfigError`` naming the first bad one."""
    if args.blocks is not None:
        raise ConfigError("blocks", "`cascade serve` streams until `--max-blocks`; give that instead of `--blocks`")
    if args.switch:
        raise ConfigError("switch", "prompt switches come from the clients of `cascade serve`, not `--switch`")
    check_int("--max-blocks", args.max_blocks, 1, 100_000)
    if not args.window and args.max_blocks > 64:
        raise ConfigError("window", "an unbounded `--window` keeps every block's K/V and attends to all of it; "
                                    "give `--window` (default 7) or `--max-blocks` at most 64")
    if not args.host.strip():
        raise ConfigError("host", "`--host` must name an address, such as 127.0.0.1 (this machine) or 0.0.0.0 (all)")
    check_int("--port", args.port, 0, 65535)
    if not 1 <= args.fps <= 240:
        raise ConfigError("fps", f"`--fps` must be between 1 and 240, got {args.fps:g}")
    if args.idle_timeout < 0:
        raise ConfigError("idle_timeout", f"`--idle-timeout` must be 0 (never) or positive seconds, got "
                                          f"{args.idle_timeout:g}")
    for flag, lo, hi in (("lead_blocks", 1, 64), ("client_buffer", 1, 10_000), ("jpeg_quality", 1, 95),
                         ("max_prompt_chars", 1, 10_000), ("max_message_bytes", 64, 1 << 20)):
        check_int("--" + flag.replace("_", "-"), getattr(args, flag), lo, hi)
    if args.prompt_interval < 0:
        raise ConfigError("prompt_interval", f"`--prompt-interval` must be at least 0 s, got {args.prompt_interval:g}")
    _positive("timeout", args.timeout, " seconds")
    from cascade_sched.cliargs import check_device_name, check_dtype

    check_dtype("--dtype", args.dtype)

    for flag in ("--device", "--text-encoder-device", "--vae-device"):
        check_device_name(flag, getattr(args, flag[2:].replace("-", "_")))
    _check_sources(args)
    if args.shift is not None:
        _positive("shift", args.shift)
    if args.token is not None and not args.token.strip():
        raise ConfigError("token", "`--token` must not be empty")
    if not args.prompt.strip() or len(args.prompt.strip()) > args.max_prompt_chars:
        # Not ConfigError("prompt"): the CLI maps that parameter name to --switch (the spec's switch prompt id).
        raise CascadeError(f"--prompt: `--prompt` must be non-empty text of at most `--max-prompt-chars` "
                           f"{args.max_prompt_chars} characters")


def _check_sources(args: argparse.Namespace) -> None:
    """The model-source paths, as ``cascade generate`` checks them (one place: apps.generate.cli)."""
    from apps.generate.cli import _check_sources as check

    preset = None
    if args.preset is not None:
        from models.presets import get_preset

        preset = get_preset(args.preset)
    check(args, preset)


def _cmd_serve(args: argparse.Namespace) -> int:
    check_args(args)
    try:
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ConfigError("executor", f"`cascade serve` needs the serve extra ({e.name} is missing): "
                                      "pip install 'cascade-sched[serve]'") from None
    from apps.serve.protocol import Limits
    from apps.serve.session import ServeConfig
    from apps.serve.stream import StreamJob
    from cascade_sched.cli import spec_from_args
    from executors.launch import under_torchrun

    args.blocks = args.max_blocks
    spec = spec_from_args(args)
    job = StreamJob(spec=spec.to_dict(), model=args.model, checkpoint=args.checkpoint, dtype=args.dtype,
                    device=args.device, shift=args.shift, timeout_s=args.timeout, executor=args.executor,
                    jpeg_quality=args.jpeg_quality, fail_at=args.fail_at, preset=args.preset, weights=args.weights,
                    lora=args.lora, model_dir=args.model_dir, text_encoder=args.text_encoder,
                    text_encoder_device=args.text_encoder_device, text_embeddings=args.text_embeddings,
                    vae=args.vae, vae_device=args.vae_device)
    config = ServeConfig(host=args.host, port=args.port, token=args.token, sharing=args.sharing,
                         idle_timeout_s=args.idle_timeout, fps=args.fps, lead_blocks=args.lead_blocks,
                         client_buffer=args.client_buffer, jpeg_quality=args.jpeg_quality,
                         prompt=args.prompt.strip(), policy=spec.switch_policy,
                         limits=Limits(args.max_message_bytes, args.max_prompt_chars, args.prompt_interval))
    if args.executor == "distributed":
        if not under_torchrun():
            raise ConfigError("executor", f"`--executor distributed` serves under torchrun: torchrun "
                                          f"--nproc-per-node {spec.num_devices} -m cascade_sched.cli serve "
                                          f"--executor distributed --devices {spec.num_devices} ...")
        from apps.serve.group import abort_hook
        from executors.launch import run_rank

        run_rank(_serve_rank, (job, config), args.device, args.timeout, on_abort=abort_hook, command="cascade serve")
        return 0
    if under_torchrun() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("executor", "under torchrun, `cascade serve` needs `--executor distributed`")
    from apps.serve.app import serve
    from apps.serve.group import LocalGroup

    _say(f"cascade serve: loading model {args.model or args.preset or args.checkpoint or 'toy'} ...")
    serve(config, LocalGroup(job))
    return 0


def _serve_rank(payload: tuple[Any, Any], rank: int, world: int) -> None:
    """One torchrun rank: rank 0 serves, the others follow its streams."""
    from apps.serve.group import ABORT_HOOK, RankGroup, follow

    job, config = payload
    if world != int(job.spec.get("num_devices", 1)):
        raise ConfigError("devices", f"the world size {world} must equal `--devices` {job.spec.get('num_devices', 1)}")
    if rank != 0:
        follow(job, rank, world)
        return
    from apps.serve.app import serve

    group = RankGroup(job, world)
    holder: dict[str, Any] = {}

    def abort() -> None:
        server = holder.get("server")
        reason = "another rank failed (see its message above)"
        from executors.launch import ABORT_KEY

        with contextlib.suppress(Exception):
            reason = group.store.get(ABORT_KEY).decode() or reason
        if server is not None:
            server.abort(reason)

    ABORT_HOOK[0] = abort
    try:
        serve(config, group, on_server=lambda server: holder.update(server=server))
    finally:
        group.close()


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
