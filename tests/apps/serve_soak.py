"""A soak of ``cascade serve``, shared by the test (short counts) and ``benchmarks/bench_serve.py --soak``.

A real server process (``cascade serve`` on 127.0.0.1, a free port) and real websocket clients:

1. warm-up: a few connect/disconnect cycles and one short crowd, then the server's resident memory, open
   file descriptors and threads are taken as its baseline;
2. ``cycles`` connect/disconnect cycles: each client starts a stream, takes a frame and leaves, and the
   stream ends before the next one;
3. a crowd of ``clients`` at once for ``seconds``: ``slow`` of them read one message every ``slow_s``,
   one sends malformed messages all along (and reads), one drops its connection in the middle of a frame,
   and the rest read as fast as frames come;
4. once every client has left and the stream has ended: the server's memory, descriptors and threads
   again.

The generation FPS is the rate at which the stream showed frames over the crowd's window (the server's
``cascade_serve_frames_shown`` counter); each healthy client's delivered FPS is the frames it received
in the same window over its length.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_support import StreamClient, scrape  # noqa: E402

# One of each way a client can break the protocol (apps/serve/protocol.py), sent in turn.
MALFORMED: tuple[str | bytes, ...] = ("{not json", '{"prompt": 3}', '{"type": "launch"}', b"\x00\xff binary",
                                      '{"prompt": "' + "x" * 5000 + '"}', '["a", "list"]', '{"policy": "sideways"}')


@dataclass(frozen=True)
class Usage:
    """What the server process holds: resident memory, open file descriptors, threads."""

    rss: int
    fds: int
    threads: int

    def __str__(self) -> str:
        return f"RSS {self.rss / 2**20:.1f} MiB, {self.fds} fds, {self.threads} threads"


@dataclass
class Crowd:
    """What one crowd of clients saw."""

    window_s: float = 0.0
    generation_fps: float = 0.0
    delivered_fps: list[float] = field(default_factory=list)  # each healthy client's
    errors_to_malformed: int = 0
    malformed_sent: int = 0
    dropped: float = 0.0  # frames dropped for slow readers (the server's counter)


@dataclass
class Soak:
    """The soak's figures."""

    baseline: Usage
    after: Usage
    crowd: Crowd
    cycles: int
    sessions: float


def usage(pid: int) -> Usage:
    """A process's usage, from /proc (Linux)."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return Usage(int(status["VmRSS"].split()[0]) * 1024, len(os.listdir(f"/proc/{pid}/fd")), int(status["Threads"]))


class Server:
    """``cascade serve`` in a process of its own; ``flags`` are added to its command line."""

    def __init__(self, *flags: str) -> None:
        cmd = [sys.executable, "-m", "cascade_sched.cli", "serve", "--port", "0", "--sharing", "watch", *flags]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.lines: list[str] = []
        self.address = self._address()
        threading.Thread(target=self._drain, daemon=True).start()

    def _address(self) -> str:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.lines.append(line)
            m = re.search(r"listening on http://([\d.]+:\d+)/", line)
            if m:
                return m.group(1)
        self.proc.kill()
        raise RuntimeError("the server did not start:\n" + "".join(self.lines))

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def usage(self) -> Usage:
        return usage(self.proc.pid)

    def wait_idle(self, timeout: float = 60) -> None:
        """Until no stream runs (the last client left and the stream released everything)."""
        import httpx

        deadline = time.monotonic() + timeout
        while httpx.get(f"http://{self.address}/healthz", timeout=10).json()["streaming"]:
            if time.monotonic() > deadline:
                raise AssertionError("the stream did not end after its clients left")
            time.sleep(0.05)

    def stop(self) -> tuple[int, str]:
        """SIGINT, as Ctrl-C would send; returns the exit status and what the server printed."""
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        time.sleep(0.1)  # the drain thread reads the last lines
        return self.proc.returncode, "".join(self.lines)


@contextlib.contextmanager
def serving(*flags: str) -> Iterator[Server]:
    server = Server(*flags)
    try:
        yield server
    finally:
        server.stop()


def cycle(server: Server) -> None:
    """One client: start a stream, take a frame, leave; the stream ends."""
    c = StreamClient(server.address)
    c.pump(lambda c: len(c.frame_times) >= 1, timeout=60)
    c.close()
    server.wait_idle()


def _handshake(address: str) -> socket.socket:
    """A websocket opened by hand (RFC 6455's upgrade), so it can be cut at any byte."""
    host, port = address.split(":")
    s = socket.create_connection((host, int(port)), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(f"GET /ws HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def _drop_mid_frame(address: str) -> None:
    """Read up to the middle of a binary frame (a JPEG), then reset the connection."""
    import struct

    s = _handshake(address)
    while True:
        b0, b1 = s.recv(1)[0], s.recv(1)[0]
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", _exact(s, 2))[0]
        elif n == 127:
            n = struct.unpack(">Q", _exact(s, 8))[0]
        if b0 & 0x0F == 2 and n > 2:  # a binary frame: take half of it and go
            _exact(s, n // 2)
            break
        _exact(s, n)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST, not FIN
    s.close()


def _exact(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


def crowd(server: Server, clients: int = 16, slow: int = 4, seconds: float = 10.0, slow_s: float = 0.5) -> Crowd:
    """``clients`` at once (see the module docstring); returns what they saw."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    healthy = clients - slow - 2
    if healthy < 1:
        raise ValueError(f"a crowd of {clients} with {slow} slow readers has no healthy client")
    start, stop = threading.Event(), threading.Event()
    frames: list[list[float]] = [[] for _ in range(healthy)]
    out = Crowd()
    ready = threading.Barrier(clients + 1)
    failures: list[BaseException] = []

    def reader(times: list[float]) -> None:
        with connect(f"ws://{server.address}/ws", open_timeout=30, max_size=None) as ws:
            ws.recv(timeout=60)  # hello
            ready.wait()
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    if isinstance(ws.recv(timeout=0.2), bytes):
                        times.append(time.monotonic())

    def slow_reader() -> None:
        host, port = server.address.split(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a slow link: the server's buffer fills
        sock.connect((host, int(port)))
        # No client keepalive: a reader this slow cannot see the pong behind its own backlog, and the
        # library's ping thread would print a traceback at close; the soak measures the server.
        with connect(f"ws://{server.address}/ws", sock=sock, open_timeout=30, max_size=None, ping_interval=None) as ws:
            ready.wait()
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    ws.recv(timeout=slow_s)
                stop.wait(slow_s)

    def malformed() -> None:
        with connect(f"ws://{server.address}/ws", open_timeout=30, max_size=None) as ws:
            ready.wait()
            while not stop.is_set():  # one bad message, then its error (frames and stats come between)
                ws.send(MALFORMED[out.malformed_sent % len(MALFORMED)])
                out.malformed_sent += 1
                while not (isinstance(m := ws.recv(timeout=60), str) and json.loads(m)["type"] == "error"):
                    pass
                out.errors_to_malformed += 1
                stop.wait(0.1)

    def dropper() -> None:
        ready.wait()
        start.wait()
        _drop_mid_frame(server.address)

    def guarded(fn: Any, *args: Any) -> Any:
        def run() -> None:
            try:
                fn(*args)
            except ConnectionClosed as e:
                if not stop.is_set():
                    failures.append(e)
            except BaseException as e:
                failures.append(e)
                with contextlib.suppress(threading.BrokenBarrierError):
                    ready.abort()
        return run

    threads = [threading.Thread(target=guarded(reader, t)) for t in frames]
    threads += [threading.Thread(target=guarded(slow_reader)) for _ in range(slow)]
    threads += [threading.Thread(target=guarded(malformed)), threading.Thread(target=guarded(dropper))]
    for t in threads:
        t.start()
    ready.wait(timeout=120)
    time.sleep(1.0)  # every client attached and reading: the window opens
    before, t0 = scrape(server.address), time.monotonic()
    start.set()
    time.sleep(seconds)
    after, t1 = scrape(server.address), time.monotonic()
    stop.set()
    for t in threads:
        t.join(timeout=60)
    if failures:
        raise failures[0]
    out.window_s = t1 - t0
    out.generation_fps = (after["cascade_serve_frames_shown_total"] - before["cascade_serve_frames_shown_total"]) \
        / out.window_s
    out.delivered_fps = [sum(1 for x in ts if t0 <= x <= t1) / out.window_s for ts in frames]
    out.dropped = after["cascade_serve_frames_dropped_total"] - before["cascade_serve_frames_dropped_total"]
    server.wait_idle()
    return out


def soak(server: Server, cycles: int = 50, clients: int = 16, slow: int = 4, seconds: float = 10.0,
         warmup_cycles: int = 5) -> Soak:
    """Warm up, take the baseline, run the cycles and the crowd, and take the server's usage again."""
    for _ in range(warmup_cycles):
        cycle(server)
    crowd(server, clients, slow, seconds=2.0)
    time.sleep(1.0)
    baseline = server.usage()
    for _ in range(cycles):
        cycle(server)
    seen = crowd(server, clients, slow, seconds)
    time.sleep(1.0)  # sockets closing, threads ending
    return Soak(baseline, server.usage(), seen, cycles, scrape(server.address)["cascade_serve_sessions_started_total"])


def children(pid: int) -> dict[int, str]:
    """The live children of process ``pid``, with their command lines (from /proc; zombies included)."""
    out: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out[int(entry)] = cmdline or stat.split("(", 1)[1].split(")", 1)[0]
    return out


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (its sockets, matched in /proc/net/tcp and tcp6)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
