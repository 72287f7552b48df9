"""``cascade serve``: registered into the ``cascade`` command through :func:`register`.

Starlette, uvicorn and prometheus_client come with the ``serve`` extra; torch is imported only when the
command runs. Under torchrun (``--executor distributed``) rank 0 serves and the other ranks follow it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
from functools import partial
from typing import TYPE_CHECKING, Any

from apps.flags import DEFAULT_PROMPT, add_device_args, add_model_source_args
from apps.request import EXECUTORS, RunRequest, resolve
from cascade_sched.cliargs import Handler, Invocation, add_schedule_args, int_pair
from cascade_sched.errors import ConfigError, check_float, check_range
from executors.torchrun import rank, under_torchrun, world_size

if TYPE_CHECKING:
    from apps.serve.group import LocalGroup
    from apps.serve.session import ServeConfig

SERVED = ("reference", "distributed")  # the executors a server runs (the compiled one is not served)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Handler]:
    """Add ``serve`` to the ``cascade`` command; returns its handler."""
    p = sub.add_parser("serve", help="serve a live stream to a browser, with prompt switches (needs the serve extra)",
                       description="Serve one live stream at a time over HTTP and a websocket; open the printed "
                                   "URL in a browser. See docs/serve.md.")
    add_schedule_args(p)
    for action in p._actions:  # the stream's length is --max-blocks, its prompts come from clients
        if action.dest in ("num_blocks", "switches"):
            action.help = argparse.SUPPRESS
            action.default = None if action.dest == "num_blocks" else []
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
    g.add_argument("--max-blocks", type=int, default=0, help="a stream's length in blocks, 0 = until the client "
                   "leaves (default 0)")
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
    m = add_model_source_args(p)
    m.add_argument("--prompt", default=DEFAULT_PROMPT, help="a stream's first prompt")
    m.add_argument("--executor", default="reference", choices=EXECUTORS,
                   help="reference (this process) or distributed (one rank per device); compiled is not served")
    add_device_args(m)
    m.add_argument("--timeout", type=float, default=60.0, help="seconds a rank waits on a peer (default 60)")
    m.add_argument("--fail-at", type=int_pair("RANK:TICK"), default=None, help=argparse.SUPPRESS)  # tests
    return {"serve": _cmd_serve}


def server_config(args: argparse.Namespace, policy: str) -> ServeConfig:
    """The server's own flags, each checked (one ``ConfigError`` naming the first bad one), as the config a
    stream of switch policy ``policy`` is served with."""
    from apps.serve.protocol import Limits
    from apps.serve.session import ServeConfig

    if not args.host.strip():
        raise ConfigError("host", "`--host` must name an address, such as 127.0.0.1 (this machine) or 0.0.0.0 (all)")
    check_range("--port", args.port, 0, 65535)
    check_float("--fps", args.fps, 1, 240)
    check_float("--idle-timeout", args.idle_timeout, 0, what=" seconds (0 = never)")
    for flag, lo, hi in (("--lead-blocks", 1, 64), ("--client-buffer", 1, 10_000), ("--jpeg-quality", 1, 95),
                         ("--max-prompt-chars", 1, 10_000), ("--max-message-bytes", 64, 1 << 20)):
        check_range(flag, getattr(args, flag[2:].replace("-", "_")), lo, hi)
    check_float("--prompt-interval", args.prompt_interval, 0, what=" seconds")
    if args.token is not None and not args.token.strip():
        raise ConfigError("token", "`--token` must not be empty")
    if not args.prompt.strip() or len(args.prompt.strip()) > args.max_prompt_chars:
        raise ConfigError("prompt", f"`--prompt` must be non-empty text of at most `--max-prompt-chars` "
                                    f"{args.max_prompt_chars} characters")
    return ServeConfig(host=args.host, port=args.port, token=args.token, sharing=args.sharing,
                       idle_timeout_s=args.idle_timeout, fps=args.fps, lead_blocks=args.lead_blocks,
                       client_buffer=args.client_buffer, jpeg_quality=args.jpeg_quality,
                       prompt=args.prompt.strip(), policy=policy,
                       limits=Limits(args.max_message_bytes, args.max_prompt_chars, args.prompt_interval))


def _cmd_serve(run: Invocation) -> int:
    from apps.interrupts import stop_on_sigint

    stop_on_sigint()  # a server stops on SIGINT wherever it was started, a shell's background included
    request, notes = resolve(run)
    if request.executor not in SERVED:
        raise ConfigError("executor", f"`--executor` {request.executor} is not served (it runs `cascade generate`); "
                                      f"give {' or '.join(SERVED)}")
    config = server_config(run.args, request.spec.switch_policy)
    try:
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ConfigError("executor", f"`cascade serve` needs the serve extra ({e.name} is missing): "
                                      "pip install 'cascade-sched[serve]'") from None
    if request.executor != "distributed" and under_torchrun() and world_size() > 1:
        raise ConfigError("executor", "under torchrun, `cascade serve` needs `--executor distributed`")
    from apps.serve.app import bind

    # The address is taken before anything loads, and held: a busy port is refused in one line, at once.
    sock = bind(config.host, config.port) if not under_torchrun() or rank() == 0 else None
    try:
        if request.executor == "distributed" and under_torchrun():
            from apps.interrupts import say
            from apps.serve.group import abort_hook
            from executors.launch import run_rank

            run_rank(_serve_rank, (request, config, notes, sock), request.source.device, request.timeout_s,
                     partial(say, "cascade serve"), on_abort=abort_hook)
            return 0
        from apps.serve.app import serve
        from apps.serve.group import LocalGroup
        from apps.serve.spawned import SpawnedGroup

        group = SpawnedGroup(request) if request.executor == "distributed" else LocalGroup(request)
        try:
            _loaded(group, notes)
            serve(config, group, sock=sock)
        finally:
            group.close()
        return 0
    finally:
        if sock is not None:
            sock.close()


def _loaded(group: LocalGroup, notes: tuple[str, ...]) -> None:
    """Every check has passed and the model is loaded: the notes, then what serves."""
    for note in notes:
        _say(note)
    _say(f"cascade serve: model {group.model.config.name} loaded, {group.executor} executor on "
         f"{group.devices} device(s)")


def _serve_rank(payload: tuple[RunRequest, ServeConfig, tuple[str, ...], socket.socket | None], rank: int,
                world: int) -> None:
    """One torchrun rank: rank 0 serves, the others follow its streams."""
    from apps.serve.group import ABORT_HOOK, RankGroup, follow

    request, config, notes, sock = payload
    if world != request.spec.num_devices:
        raise ConfigError("num_devices", f"the world size {world} must equal `--devices` {request.spec.num_devices}")
    if rank != 0:
        follow(request, rank, world)
        return
    from apps.serve.app import serve

    group = RankGroup(request, world)
    _loaded(group, notes)
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
        serve(config, group, on_server=lambda server: holder.update(server=server), sock=sock)
    finally:
        group.close()


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
