"""K websocket clients watching one ``cascade serve`` stream: delivered FPS, frame intervals, drops, CPU;
and, with ``--soak``, the server's memory, descriptors and threads after many cycles and a crowd.

Starts ``cascade serve`` (watch mode, the toy model by default) as a subprocess on 127.0.0.1, then for each K
connects K clients for ``--seconds`` each and prints, per K: delivered FPS per client (mean and worst),
the p95 interval between frames a client received (worst client), frames dropped for slow clients and
underruns (from ``/metrics``), and the server process's CPU share (CPU seconds over wall seconds, over
all cores, from /proc). Each K starts a fresh stream: the previous clients leave first.

``--soak`` runs the soak of tests/apps/test_apps_serve_soak.py at larger counts (tests/apps/serve_soak.py:
warm-up, ``--cycles`` connect/disconnect cycles, then ``--crowd`` clients at once for ``--seconds``, of
which ``--slow`` read slowly, one sends malformed messages and one drops mid-frame) and prints the
server's resident memory, open descriptors and threads at the baseline and after, and the healthy
clients' delivered FPS against the stream's generation FPS.

    .venv/bin/python benchmarks/bench_serve.py                      # K = 1, 4, 16, 30 s each
    .venv/bin/python benchmarks/bench_serve.py --clients 1,4 --seconds 10 -- --lag 5   # server flags after --
    .venv/bin/python benchmarks/bench_serve.py --soak               # 500 cycles, then 64 clients for 60 s
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _metrics(address: str) -> dict[str, float]:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"http://{address}/metrics", timeout=10).text):
        for s in family.samples:
            if not s.labels:
                out[s.name] = s.value
    return out


async def _client(address: str, seconds: float, times: list[float]) -> None:
    from websockets.asyncio.client import connect

    async with connect(f"ws://{address}/ws", max_size=None) as ws:
        end: float | None = None
        while end is None or time.monotonic() < end:
            try:
                m = await asyncio.wait_for(ws.recv(), timeout=max(0.05, (end or time.monotonic() + 60) - time.monotonic()))
            except asyncio.TimeoutError:
                continue
            if isinstance(m, bytes):
                times.append(time.monotonic())
                if end is None:
                    end = time.monotonic() + seconds


async def _round(address: str, k: int, seconds: float) -> list[list[float]]:
    times: list[list[float]] = [[] for _ in range(k)]
    await asyncio.gather(*(_client(address, seconds, t) for t in times))
    return times


def _wait_idle(address: str, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not httpx.get(f"http://{address}/healthz", timeout=10).json()["streaming"]:
            return
        time.sleep(0.1)
    raise RuntimeError("the stream did not end after its clients left")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", default="1,4,16", help="client counts K (default 1,4,16)")
    ap.add_argument("--seconds", type=float, default=30.0, help="seconds each K is measured (default 30)")
    ap.add_argument("--model", default="toy", help="model to serve (default toy)")
    ap.add_argument("--fps", type=float, default=16.0, help="the stream's frame rate (default 16)")
    ap.add_argument("--soak", action="store_true", help="run the soak instead of the K rounds")
    ap.add_argument("--cycles", type=int, default=500, help="soak: connect/disconnect cycles (default 500)")
    ap.add_argument("--crowd", type=int, default=64, help="soak: clients at once (default 64)")
    ap.add_argument("--slow", type=int, default=16, help="soak: of them, slow readers (default 16)")
    args = ap.parse_args(argv)
    if args.soak:
        return _soak(args, extra)
    ks = [int(k) for k in args.clients.split(",")]
    blocks = int(args.seconds * args.fps) + 200  # at least one frame a block, plus the start: never ends early
    cmd = [sys.executable, "-m", "cascade_sched.cli", "serve", "--port", "0", "--model", args.model, "--lag", "1",
           "--fps", str(args.fps), "--max-blocks", str(blocks), "--idle-timeout", "0", "--sharing", "watch", *extra]
    server = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        address = None
        for line in server.stderr:
            m = re.search(r"listening on http://([\d.]+:\d+)/", line)
            if m:
                address = m.group(1)
                break
        if address is None:
            raise RuntimeError("the server did not start")
        cores = os.cpu_count() or 1
        print(f"cascade serve ({' '.join(cmd[3:])}), {cores} cores, load average at start "
              f"{os.getloadavg()[0]:.2f}")
        print(f"{'K':>3} | {'FPS/client mean':>15} | {'worst':>6} | {'p95 interval ms':>15} | {'dropped':>7} | "
              f"{'underruns':>9} | {'server CPU share':>16}")
        for k in ks:
            before, cpu0, t0 = _metrics(address), _cpu_seconds(server.pid), time.monotonic()
            times = asyncio.run(_round(address, k, args.seconds))
            cpu, wall, after = _cpu_seconds(server.pid) - cpu0, time.monotonic() - t0, _metrics(address)
            fps, p95 = [], []
            for ts in times:
                gaps = sorted(b - a for a, b in itertools.pairwise(ts))
                fps.append((len(ts) - 1) / (ts[-1] - ts[0]) if len(ts) > 1 else 0.0)
                p95.append(gaps[int(0.95 * (len(gaps) - 1))] if gaps else float("nan"))
            dropped = after["cascade_serve_frames_dropped_total"] - before["cascade_serve_frames_dropped_total"]
            under = after["cascade_serve_underruns_total"] - before["cascade_serve_underruns_total"]
            print(f"{k:>3} | {sum(fps) / k:>15.2f} | {min(fps):>6.2f} | {max(p95) * 1000:>15.1f} | {dropped:>7.0f} | "
                  f"{under:>9.0f} | {cpu / wall / cores:>15.1%} ({cpu / wall:.2f} cores)")
            _wait_idle(address)
        print(f"target: {args.fps:g} FPS per client, p95 interval {1000 / args.fps:.1f} ms")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


def _soak(args: argparse.Namespace, extra: list[str]) -> int:
    sys.path.insert(0, str(ROOT / "tests" / "apps"))
    from serve_soak import serving, soak

    flags = ["--model", args.model, "--lag", "1", "--fps", str(args.fps), "--idle-timeout", "0", *extra]
    print(f"cascade serve {' '.join(flags)}, {os.cpu_count()} cores, load average at start {os.getloadavg()[0]:.2f}")
    start = time.monotonic()
    with serving(*flags) as server:
        s = soak(server, cycles=args.cycles, clients=args.crowd, slow=args.slow, seconds=args.seconds)
        status, _ = server.stop()
    crowd = s.crowd
    healthy = crowd.delivered_fps
    print(f"baseline after warm-up: {s.baseline}")
    print(f"after {s.cycles} cycles and {args.crowd} clients: {s.after}")
    print(f"  RSS {100 * (s.after.rss / s.baseline.rss - 1):+.1f} %, fds {s.after.fds - s.baseline.fds:+d}, "
          f"threads {s.after.threads - s.baseline.threads:+d}")
    print(f"crowd over {crowd.window_s:.1f} s: generation {crowd.generation_fps:.2f} FPS; {len(healthy)} healthy "
          f"clients received mean {sum(healthy) / len(healthy):.2f}, worst {min(healthy):.2f} FPS "
          f"({100 * min(healthy) / crowd.generation_fps:.1f} % of generation); frames dropped for the "
          f"{args.slow} slow readers: {crowd.dropped:.0f}; malformed messages {crowd.malformed_sent}, errors "
          f"back {crowd.errors_to_malformed}")
    print(f"{s.sessions:.0f} streams started; the server exited {status} on SIGINT; load average at the end "
          f"{os.getloadavg()[0]:.2f}; took {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
