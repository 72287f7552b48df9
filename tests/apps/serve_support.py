"""Helpers the ``cascade serve`` tests share: a real uvicorn server on a free port in a thread, a websocket
client that files frames under their blocks, and the frames an offline run of the same stream makes."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from apps.request import ModelSource, RunRequest
from apps.serve.app import Server, make_server
from apps.serve.group import LocalGroup
from apps.serve.session import ServeConfig
from apps.serve.stream import encode_jpeg
from apps.sources import build_sampler, load_model, preview_decoder
from cascade_sched import CascadeSpec, build_schedule
from executors.base import RunOptions
from executors.reference import ReferenceExecutor

FPS = 60.0


def tiny_job(max_blocks: int = 8, **spec: Any) -> RunRequest:
    """A stream of the tiny model: 12 frames a block (the latent preview), milliseconds a tick."""
    fields = {"num_blocks": max_blocks, "lag": 1, "window": 4, "sink": 1, **spec}
    return RunRequest(spec=CascadeSpec(**fields), source=ModelSource(model="tiny"))


def config(**changes: Any) -> ServeConfig:
    return dataclasses.replace(ServeConfig(port=0, fps=FPS, stats_interval_s=0.25, idle_timeout_s=60), **changes)


@contextmanager
def running_server(cfg: ServeConfig, job: RunRequest, sndbuf: int | None = None) -> Iterator[tuple[str, Server]]:
    """Serve ``job`` on 127.0.0.1 (a free port) until the block ends; yields ``(host:port, server)``.

    ``sndbuf`` fixes the kernel send buffer of every accepted connection (Linux copies it from the listening
    socket), as a slow link would: without it the kernel grows the buffer to megabytes."""
    import socket

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sndbuf is not None:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    listener.bind(("127.0.0.1", 0))
    uv, server = make_server(cfg, LocalGroup(job))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [listener]}, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    port = listener.getsockname()[1]
    try:
        yield f"127.0.0.1:{port}", server
    finally:
        uv.should_exit = True
        thread.join(timeout=30)
        listener.close()


class StreamClient:
    """A websocket client that keeps every message: frames filed under the block announced before them."""

    def __init__(self, address: str, query: str = "", **kwargs: Any) -> None:
        from websockets.sync.client import connect

        self._connection = connect(f"ws://{address}/ws{query}", open_timeout=10, **kwargs)
        self.ws = self._connection.__enter__()
        self.messages: list[dict[str, Any]] = []
        self.frames: dict[int, list[bytes]] = {}
        self.frame_times: list[float] = []
        self.block = -1
        self.closed: int | None = None

    def send(self, obj: Any) -> None:
        self.ws.send(obj if isinstance(obj, (str, bytes)) else json.dumps(obj))

    def pump(self, until: Callable[[StreamClient], bool], timeout: float = 30.0) -> None:
        """Receive until ``until(self)`` holds (AssertionError on timeout; stops when the socket closes)."""
        from websockets.exceptions import ConnectionClosed

        deadline = time.monotonic() + timeout
        while not until(self):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out; last messages: {self.messages[-5:]}")
            try:
                m = self.ws.recv(timeout=left)
            except TimeoutError:
                continue
            except ConnectionClosed as e:
                self.closed = e.rcvd.code if e.rcvd is not None else 1006
                return
            if isinstance(m, bytes):
                self.frames.setdefault(self.block, []).append(m)
                self.frame_times.append(time.monotonic())
            else:
                msg = json.loads(m)
                self.messages.append(msg)
                if msg["type"] == "block":
                    self.block = msg["block"]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    def close(self) -> None:
        self._connection.__exit__(None, None, None)


def offline_frames(job: RunRequest, prompt: str, policy: str, switches: list[tuple[int, str]],
                   blocks: int) -> list[list[bytes]]:
    """The JPEG frames per block that the reference executor makes for the stream, run whole."""
    spec = job.spec.replace(num_blocks=blocks, switch_policy=policy,
                            switches=tuple((at, i + 1) for i, (at, _) in enumerate(switches)))
    model, _ = load_model(job.source)
    options = RunOptions(prompt=prompt, prompts={i + 1: text for i, (_, text) in enumerate(switches)},
                         sampler=build_sampler(job.source, model.config.name))
    decoder = preview_decoder(model.config)
    quality = ServeConfig().jpeg_quality
    out: list[list[bytes]] = []
    ReferenceExecutor().run(build_schedule(spec), model, options,
                            lambda b, x: out.append([encode_jpeg(f, quality) for f in decoder.decode_block(x)]))
    return out


def scrape(address: str, headers: dict[str, str] | None = None) -> dict[str, float]:
    """``/metrics`` parsed by prometheus_client's own parser: sample name (with labels) -> value."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    r = httpx.get(f"http://{address}/metrics", headers=headers, timeout=10)
    r.raise_for_status()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "le")
            le = s.labels.get("le")
            out[s.name + (f"{{{labels}}}" if labels else "") + (f"[le={le}]" if le else "")] = s.value
    return out
