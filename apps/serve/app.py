"""The ASGI app of ``cascade serve`` (Starlette on uvicorn): ``/``, ``/ws``, ``/metrics``, ``/healthz``.

One executor group serves one stream at a time. The first client starts it; under ``--sharing watch``
later clients watch the same stream, under ``exclusive`` they get one ``busy`` message. When the last client
leaves the stream ends, and the next client starts a clean one.

Security defaults: bound to 127.0.0.1; with ``--token`` every request (page, socket, metrics, health) must
carry it, as ``Authorization: Bearer T`` or ``?token=T`` (browsers cannot set headers on websockets); a
websocket whose ``Origin`` is not this server's own host is refused, so another site open in the same
browser cannot drive the stream; message size, prompt length and prompt rate are bounded
(:class:`~apps.serve.protocol.Limits`).
"""

from __future__ import annotations

import asyncio
import errno
import gc
import hmac
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any
from urllib.parse import parse_qs, urlsplit

from starlette.applications import Starlette
from starlette.requests import Request as HTTPRequest
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from apps.serve.group import LocalGroup
from apps.serve.metrics import ServeMetrics
from apps.serve.page import PAGE
from apps.serve.protocol import ProtocolError, Request, message, parse_message
from apps.serve.session import Client, ServeConfig, Stream
from apps.serve.stream import StreamStart
from cascade_sched.errors import ConfigError

WS_HARD_LIMIT = 1 << 20  # bytes: uvicorn closes the socket past this; below it, Limits answers with an error


class Server:
    """The app's state: the group, the current stream, the clients."""

    def __init__(self, config: ServeConfig, group: LocalGroup) -> None:
        self.config, self.group = config, group
        self.metrics = ServeMetrics()
        self.metrics.group_alive.set(1)
        self.stream: Stream | None = None
        self.streams_started = 0
        self.prompt, self.policy = config.prompt, config.policy
        self._lock: asyncio.Lock | None = None

    @property
    def lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    def _start(self, prompt: str, policy: str) -> Stream:
        stream = Stream(self.config, self.group, self.metrics, StreamStart(self.streams_started, prompt, policy))
        self.streams_started += 1
        self.stream = stream
        stream.begin()
        return stream

    async def _current(self) -> Stream | None:
        """The running stream, after any that is ending has released everything."""
        stream = self.stream
        if stream is not None and stream.end_reason is not None:
            await stream.finished.wait()
            if self.stream is stream:
                self.stream = None
        return self.stream

    async def attach(self, client: Client) -> Stream | None:
        """Attach a new client: start a stream, join the running one, or say busy (None)."""
        async with self.lock:
            if not self.group.alive:
                client.send_text(message("error", code="group_down",
                                         message=f"the executor group has stopped: {self.group.failure}"))
                client.close(1011)
                return None
            stream = await self._current()
            if stream is not None and self.config.sharing == "exclusive":
                client.send_text(message("busy", message="another client holds the stream (--sharing exclusive); "
                                                         "try again when it leaves"))
                client.close(1013)
                return None
            if stream is None:
                stream = self._start(self.prompt, self.policy)
            stream.clients.add(client)
            stream.last_activity = time.monotonic()
            self.metrics.clients.inc()
            client.send_text(stream.hello())
            return stream

    async def detach(self, client: Client) -> None:
        self.metrics.clients.dec()
        stream = self.stream
        if stream is not None and client in stream.clients:
            stream.clients.discard(client)
            if not stream.clients:
                stream.stop("the last client left")

    async def receive(self, client: Client, text: str | None, data: bytes | None) -> None:
        """One client message: answer it, switch the prompt, or restart under another policy."""
        try:
            req = parse_message(text, data, self.config.limits)
        except ProtocolError as e:
            self.metrics.rejected.labels(e.code).inc()
            client.send_text(message("error", code=e.code, message=str(e)))
            return
        stream = self.stream
        if stream is None or client not in stream.clients:
            return
        stream.last_activity = time.monotonic()
        if req.kind != "ping" and stream.end_reason is not None:
            client.send_text(message("error", code="ending", message=f"the stream is ending ({stream.end_reason})"))
            return
        if req.kind == "ping":
            client.send_text(message("pong"))
            return
        wait = client.limiter.wait_s(time.monotonic())
        if wait:
            self.metrics.rejected.labels("rate_limited").inc()
            client.send_text(message("error", code="rate_limited", retry_after_s=wait,
                                     message=f"prompt changes are limited to one per "
                                             f"{self.config.limits.prompt_interval_s:g} s; retry in {wait:g} s"))
            return
        if req.policy is not None and req.policy != stream.start.policy:
            await self._restart(stream, req)
        elif req.prompt is not None:
            self.prompt = req.prompt
            stream.ask(req.prompt)

    async def _restart(self, stream: Stream, req: Request) -> None:
        """A stream has one switch policy: start again under the one asked for, with the same clients."""
        async with self.lock:
            if self.stream is not stream or stream.end_reason is not None:
                return
            self.policy = req.policy or self.policy
            self.prompt = req.prompt or self.prompt
            stream.stop(f"restarting under policy {self.policy}", handover=True)
            await stream.finished.wait()
            clients = set(stream.clients)
            if not clients or not self.group.alive:
                self.stream = None
                return
            new = self._start(self.prompt, self.policy)
            new.clients = clients
            for c in clients:
                c.send_text(new.hello())

    def abort(self, reason: str, wait_s: float = 2.0) -> None:
        """From any thread: the group is gone; tell each client once, and give the messages ``wait_s``."""
        self.group.alive, self.group.failure = False, reason
        self.metrics.group_alive.set(0)
        done = threading.Event()
        loop = getattr(self, "loop", None)
        if loop is None:  # not serving yet: nobody to tell
            return

        def tell() -> None:
            if self.stream is not None:
                self.stream.fail(reason, code="rank_failed")
            loop.call_later(0.3, done.set)  # let the sender tasks flush

        try:
            loop.call_soon_threadsafe(tell)
            done.wait(wait_s)
        except RuntimeError:
            pass

    async def shutdown(self) -> None:
        stream = self.stream
        if stream is not None:
            stream.stop("the server is shutting down")
            await asyncio.wait_for(stream.finished.wait(), timeout=30)

    loop: asyncio.AbstractEventLoop


class Guard:
    """ASGI middleware: the token on every request, and same-origin websockets."""

    def __init__(self, app: Any, token: str | None) -> None:
        self.app, self.token = app, token

    def _token_ok(self, scope: dict[str, Any]) -> bool:
        if self.token is None:
            return True
        headers = dict(scope.get("headers") or [])
        auth = headers.get(b"authorization", b"").decode("latin-1")
        given = auth[7:] if auth.lower().startswith("bearer ") else None
        if given is None:
            values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [])
            given = values[0] if values else None
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    @staticmethod
    def _origin_ok(scope: dict[str, Any]) -> bool:
        headers = dict(scope.get("headers") or [])
        origin = headers.get(b"origin")
        if origin is None:  # not a browser: nothing to protect against
            return True
        return bool(urlsplit(origin.decode("latin-1")).netloc == headers.get(b"host", b"").decode("latin-1"))

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "http" and not self._token_ok(scope):
            response = PlainTextResponse("missing or wrong token (pass ?token= or Authorization: Bearer)\n", 401)
            await response(scope, receive, send)
            return
        if scope["type"] == "websocket" and not (self._token_ok(scope) and self._origin_ok(scope)):
            await send({"type": "websocket.close", "code": 1008})
            return
        await self.app(scope, receive, send)


def create_app(config: ServeConfig, group: LocalGroup) -> Any:
    """The ASGI app: Starlette routes behind the :class:`Guard`; ``app.state.server`` is the :class:`Server`."""
    server = Server(config, group)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        server.loop = asyncio.get_running_loop()
        yield
        await server.shutdown()

    async def page(request: HTTPRequest) -> Response:
        return HTMLResponse(PAGE, headers={"Cache-Control": "no-store",
                                           "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; "
                                           "style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
                                           "connect-src 'self'"})

    async def metrics(request: HTTPRequest) -> Response:
        body, content_type = server.metrics.render()
        return Response(body, media_type=content_type)

    async def healthz(request: HTTPRequest) -> Response:
        stream = server.stream
        body = {"alive": group.alive, "executor": group.executor, "devices": group.devices,
                "streaming": stream is not None and stream.end_reason is None,
                "clients": len(stream.clients) if stream is not None else 0, "failure": group.failure}
        return JSONResponse(body, status_code=200 if group.alive else 503)

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        client = Client(websocket, config.client_buffer, config.limits, server.metrics)
        sender = asyncio.create_task(client.run())
        attached = False
        try:
            attached = await server.attach(client) is not None
            while True:
                msg = await websocket.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                if attached and not client.closing:
                    await server.receive(client, msg.get("text"), msg.get("bytes"))
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            if attached:
                await server.detach(client)
            if client.closing:  # let a final message (busy, end, error) reach the client
                with suppress(asyncio.TimeoutError, Exception):
                    await asyncio.wait_for(asyncio.shield(sender), timeout=2)
            sender.cancel()

    app = Starlette(routes=[Route("/", page), Route("/metrics", metrics), Route("/healthz", healthz),
                            WebSocketRoute("/ws", ws)], lifespan=lifespan)
    app.state.server = server
    return Guard(app, config.token)


def make_server(config: ServeConfig, group: LocalGroup) -> tuple[Any, Server]:
    """A uvicorn server for the app (not started) and the app's :class:`Server`."""
    import uvicorn

    app = create_app(config, group)
    uv = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning",
                                       ws_max_size=WS_HARD_LIMIT, lifespan="on", ws="websockets-sansio"))
    return uv, app.app.state.server


def bind(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound now, before anything loads, as uvicorn would bind it
    (SO_REUSEADDR; IPv6 for a host with a colon): one ``ConfigError`` naming ``--port`` or ``--host`` when
    it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        why = e.strerror or str(e)
        if e.errno == errno.EADDRINUSE:
            raise ConfigError("port", f"`--port` {port} is already in use on {host} (another server?); give "
                                      "another port, or 0 for any free one") from None
        if e.errno == errno.EACCES:
            raise ConfigError("port", f"`--port` {port} needs privileges on {host} ({why}); give a port above "
                                      "1023, or 0 for any free one") from None
        raise ConfigError("host", f"`--host` {host!r} cannot be listened on: {why}") from None
    return sock


def serve(config: ServeConfig, group: LocalGroup, ready: Callable[[str], None] | None = None,
          on_server: Callable[[Server], None] | None = None, sock: socket.socket | None = None) -> None:
    """Serve until interrupted (blocking; uvicorn handles SIGINT and SIGTERM by shutting down cleanly,
    then raises the signal again: the command's one line). ``sock``: the socket :func:`bind` made (None:
    uvicorn binds ``config``'s host and port itself)."""
    uv, server = make_server(config, group)
    # The model and imports are long-lived: take them out of the cyclic collector's full passes, which
    # otherwise land inside a prompt switch's schedule rebuild (hundreds of ms between two ticks).
    gc.collect()
    gc.freeze()
    if on_server is not None:
        on_server(server)
    _announce(uv, config, ready)
    uv.run(sockets=[sock] if sock is not None else None)


def _announce(uv: Any, config: ServeConfig, ready: Callable[[str], None] | None) -> None:
    """Print the URL (with the real port, for ``--port 0``) once uvicorn listens."""
    def watch() -> None:
        while not uv.started:
            if uv.should_exit:
                return
            time.sleep(0.02)
        port = uv.servers[0].sockets[0].getsockname()[1]
        host = f"[{config.host}]" if ":" in config.host else config.host
        url = f"http://{host}:{port}/"
        if ready is not None:
            ready(url)
        else:
            print(f"cascade serve: listening on {url}", file=sys.stderr, flush=True)

    threading.Thread(target=watch, name="cascade-serve-announce", daemon=True).start()
