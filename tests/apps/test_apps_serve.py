"""``cascade serve`` on one process: a real uvicorn server, websocket and HTTP clients on 127.0.0.1."""

from __future__ import annotations

import gc
import json
import threading
import time

import httpx
import pytest

from tests.extras import reason

pytest.importorskip("starlette", reason=reason("starlette"))
pytest.importorskip("websockets", reason=reason("websockets"))

from serve_support import FPS, StreamClient, config, offline_frames, running_server, scrape, tiny_job

from apps.serve.protocol import Limits
from executors.base import TickLoop
from models.kv import KVPool

SWITCH_TO = "/etc/passwd is only text here"  # a prompt that names a path: it is conditioning, never read


@pytest.mark.parametrize("policy", ["none", "recache"])
def test_a_stream_is_paced_and_a_switch_changes_it_from_the_announced_block(policy: str) -> None:
    blocks = 14  # room for the switch past the blocks in flight and the lead
    job = tiny_job(max_blocks=blocks)
    with running_server(config(policy=policy), job) as (address, _):
        c = StreamClient(address)
        c.pump(lambda c: c.block >= 1)
        seen = max(c.frames)
        c.send({"prompt": SWITCH_TO, "policy": policy})
        c.pump(lambda c: c.closed is not None, timeout=60)
    hello, (switch,), (switched,), (end,) = c.of("hello")[0], c.of("switch"), c.of("switched"), c.of("end")
    assert hello["policy"] == policy and switch["applied"] and switch["policy"] == policy
    at = switch["at_block"]
    assert seen < at < blocks and switched["at_block"] == at and switched["latency_blocks"] == at - switch["shown_block"]
    assert end["blocks"] == blocks and sorted(c.frames) == list(range(blocks))
    # The stream is exactly the whole run of its final schedule, frame for frame, JPEG byte for byte ...
    assert [c.frames[b] for b in range(blocks)] == offline_frames(job, hello["prompt"], policy, [(at, SWITCH_TO)], blocks)
    # ... and it changed from the switch block on, not before (under recache, the blocks in flight at the
    # recache task read the re-encoded context from then on: lag 1 keeps S - 1 = 4 of them in flight).
    plain = offline_frames(job, hello["prompt"], policy, [], blocks)
    same = at if policy == "none" else at - 4
    assert [c.frames[b] for b in range(same)] == plain[:same]
    assert all(c.frames[b] != plain[b] for b in range(at, blocks))
    # Paced: frames never come faster than the frame rate (a slow machine can only make them later).
    n = len(c.frame_times)
    assert n == 9 + 12 * (blocks - 1) and c.frame_times[-1] - c.frame_times[0] >= 0.9 * (n - 1) / FPS


def test_metrics_parse_and_move() -> None:
    with running_server(config(), tiny_job(max_blocks=40)) as (address, _):
        before = scrape(address)
        c = StreamClient(address)
        c.pump(lambda c: len(c.frame_times) >= 20)
        mid = scrape(address)
        c.send({"prompt": "a green field"})
        c.pump(lambda c: bool(c.of("switched")))
        c.pump(lambda c: len(c.of("stats")) >= 2)
        after = scrape(address)
        c.close()
    assert before["cascade_serve_frames_sent_total"] == 0 and before["cascade_serve_sessions"] == 0
    assert 0 < mid["cascade_serve_frames_sent_total"] < after["cascade_serve_frames_sent_total"]
    assert mid["cascade_serve_sessions"] == 1 and mid["cascade_serve_clients"] == 1
    assert after["cascade_serve_first_frame_seconds_count"] == 1
    assert after["cascade_serve_switch_latency_seconds_count"] == 1
    assert after["cascade_serve_switch_latency_blocks_sum"] >= 1
    assert after["cascade_serve_block_generation_seconds_count"] > mid["cascade_serve_block_generation_seconds_count"]
    assert after["cascade_serve_frame_interval_seconds_count"] == after["cascade_serve_frames_sent_total"] - 1
    assert after["cascade_serve_delivered_fps"] > 0 and after["cascade_serve_kv_bytes"] > 0
    assert after["cascade_serve_blocks_in_flight"] >= 1 and after["cascade_serve_group_alive"] == 1
    for key in ("cascade_serve_frames_dropped_total", "cascade_serve_underruns_total"):
        assert key in after


def test_watch_mode_shares_one_stream() -> None:
    with running_server(config(sharing="watch"), tiny_job(max_blocks=40)) as (address, _):
        a = StreamClient(address)
        a.pump(lambda c: c.block >= 1)
        b = StreamClient(address)
        b.pump(lambda c: len(c.frame_times) >= 12)
        b.send({"prompt": "a second viewer's prompt"})
        for c in (a, b):
            c.pump(lambda c: bool(c.of("switched")))
        stats = scrape(address)
        a.close()
        b.close()
    assert a.of("hello")[0]["stream"] == b.of("hello")[0]["stream"] == 0
    assert stats["cascade_serve_sessions_started_total"] == 1 and stats["cascade_serve_clients"] == 2
    assert a.of("switched")[0]["at_block"] == b.of("switched")[0]["at_block"]  # one stream, one switch
    shared = sorted(set(a.frames) & set(b.frames) - {b.block})
    assert shared and all(a.frames[k][-3:] == b.frames[k][-3:] for k in shared)


def test_exclusive_mode_tells_a_second_client_busy() -> None:
    with running_server(config(sharing="exclusive"), tiny_job(max_blocks=40)) as (address, _):
        a = StreamClient(address)
        a.pump(lambda c: c.block >= 0)
        b = StreamClient(address)
        b.pump(lambda c: c.closed is not None)
        a.pump(lambda c: len(c.frame_times) >= 30)  # the holder's stream goes on
        a.close()
        time.sleep(0.5)
        c = StreamClient(address)  # once the holder leaves, the next client gets a stream of its own
        c.pump(lambda c: len(c.frame_times) >= 1)
        c.close()
    assert [m["type"] for m in b.messages] == ["busy"] and b.closed == 1013 and not b.frames
    assert c.of("hello")[0]["stream"] == 1


def test_bad_messages_get_one_error_each_and_the_stream_goes_on() -> None:
    limits = Limits(max_message_bytes=256, max_prompt_chars=20, prompt_interval_s=30)
    with running_server(config(limits=limits), tiny_job(max_blocks=60)) as (address, _):
        c = StreamClient(address)
        c.pump(lambda c: c.block >= 0)
        bad = [b"\x00binary", "{not json", "[1, 2]", json.dumps({"prompt": "x" * 300}),
               {"prompt": "twenty-one characters"}, {"prompt": 7}, {"prompt": "  "}, {"prompt": "a\x07bell"},
               {"policy": "sometimes"}, {"checkpoint": "/etc/passwd"}, {"type": "reload"}, {}]
        for m in bad:
            c.send(m)
        c.send({"prompt": "accepted"})
        c.send({"prompt": "too soon"})
        c.send({"type": "ping"})
        c.pump(lambda c: len(c.of("error")) >= len(bad) + 1 and bool(c.of("pong")))
        frames = len(c.frame_times)
        c.pump(lambda c: len(c.frame_times) >= frames + 12)
        counts = scrape(address)
        c.close()
    codes = [m["code"] for m in c.of("error")]
    assert codes == ["binary", "bad_json", "not_object", "too_large", "bad_prompt", "bad_prompt", "bad_prompt",
                     "bad_prompt", "bad_policy", "unknown_field", "unknown_type", "empty", "rate_limited"]
    assert all(m["message"] and "\n" not in m["message"] for m in c.of("error"))
    assert [m["prompt"] for m in c.of("switch")] == ["accepted"]
    assert counts['cascade_serve_messages_rejected_total{code=bad_prompt}'] == 4


def test_the_token_is_required_everywhere_and_cross_site_sockets_are_refused() -> None:
    from websockets.exceptions import InvalidStatus

    with running_server(config(token="s3cret"), tiny_job(max_blocks=40)) as (address, _):
        for path in ("/", "/metrics", "/healthz"):
            assert httpx.get(f"http://{address}{path}").status_code == 401
            assert httpx.get(f"http://{address}{path}?token=wrong").status_code == 401
            assert httpx.get(f"http://{address}{path}?token=s3cret").status_code == 200
        assert httpx.get(f"http://{address}/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        with pytest.raises(InvalidStatus):
            StreamClient(address)
        with pytest.raises(InvalidStatus):
            StreamClient(address, "?token=s3cret", origin="http://evil.example")
        c = StreamClient(address, "?token=s3cret", origin=f"http://{address}")
        c.pump(lambda c: len(c.frame_times) >= 1)
        c.close()
        page = httpx.get(f"http://{address}/?token=s3cret").text
    assert "<canvas" in page and "http://" not in page.replace("http://www.w3.org", "")  # no external assets


def test_an_idle_stream_ends_and_a_policy_change_restarts_the_stream() -> None:
    with running_server(config(idle_timeout_s=1.0), tiny_job(max_blocks=400)) as (address, _):
        c = StreamClient(address)
        c.pump(lambda c: c.block >= 0)
        c.send({"policy": "recache"})
        c.pump(lambda c: len(c.of("hello")) == 2)
        c.pump(lambda c: c.closed is not None, timeout=30)
    first, second = c.of("hello")
    assert (first["stream"], first["policy"], second["stream"], second["policy"]) == (0, "none", 1, "recache")
    (end,) = c.of("end")
    assert "idle" in end["reason"] and c.closed == 1000


def test_a_generation_error_ends_the_session_with_one_error_and_the_next_starts_clean() -> None:
    import dataclasses

    job = dataclasses.replace(tiny_job(max_blocks=40), fail_at=(0, 6))
    with running_server(config(), job) as (address, server):
        c = StreamClient(address)
        c.pump(lambda c: c.closed is not None)
        assert httpx.get(f"http://{address}/healthz").status_code == 200  # one process: the group lives on
        server.group.request = dataclasses.replace(job, fail_at=None)
        d = StreamClient(address)
        d.pump(lambda c: len(c.frame_times) >= 24)
        d.close()
    (error,) = c.of("error")
    assert error["code"] == "generation_failed" and "rank 0 failed at tick 6" in error["message"]
    assert c.closed == 1011 and not c.of("end")
    assert d.of("hello")[0]["stream"] == 1 and not d.of("error")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _live(kind: type) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is kind)


def test_fifty_connect_disconnect_cycles_release_everything() -> None:
    with running_server(config(), tiny_job(max_blocks=200)) as (address, server):
        def cycle() -> None:
            c = StreamClient(address)
            c.pump(lambda c: len(c.frame_times) >= 1)
            c.close()
            deadline = time.monotonic() + 20
            while server.stream is not None and not server.stream.finished.is_set():
                assert time.monotonic() < deadline, "the stream did not end after its client left"
                time.sleep(0.01)

        for _ in range(3):  # warm-up: allocator pools, imports, JIT caches
            cycle()
        rss, threads = _rss_bytes(), threading.active_count()
        for _ in range(50):
            cycle()
        after = scrape(address)
        grown = _rss_bytes() - rss
        assert _live(TickLoop) == 0 and _live(KVPool) == 0
        assert threading.active_count() <= threads
    assert after["cascade_serve_sessions_started_total"] == 53 and after["cascade_serve_sessions"] == 0
    assert after["cascade_serve_kv_bytes"] == 0 and after["cascade_serve_clients"] == 0
    assert grown < 32 << 20, f"resident memory grew by {grown / 2**20:.1f} MiB over 50 sessions"


@pytest.mark.parametrize(("flags", "named"), [
    (["--blocks", "5"], "--blocks"), (["--switch", "1:1"], "--switch"), (["--max-blocks", "-1"], "--max-blocks"),
    (["--window", "0"], "--window"), (["--port", "70000"], "--port"), (["--fps", "0"], "--fps"),
    (["--idle-timeout", "-1"], "--idle-timeout"), (["--lead-blocks", "0"], "--lead-blocks"),
    (["--jpeg-quality", "100"], "--jpeg-quality"), (["--executor", "compiled"], "--executor"),
    (["--token", " "], "--token"), (["--prompt", ""], "--prompt"), (["--model", "nope"], "--model"),
    (["--lag", "9"], "--lag"), (["--timeout", "0"], "--timeout"),
])
def test_bad_flags_get_one_line_naming_the_flag(flags: list[str], named: str, capsys: pytest.CaptureFixture[str]) -> None:
    from apps.cli import main

    assert main(["serve", "--port", "0", *flags]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"cascade serve: error: {named}:"), err


def test_a_client_that_stops_reading_loses_its_oldest_frames_and_stalls_nobody() -> None:
    import base64
    import os
    import socket

    with running_server(config(fps=120.0, client_buffer=8), tiny_job(max_blocks=400), sndbuf=4096) as (address, srv):
        host, port = address.split(":")
        slow = socket.create_connection((host, int(port)))  # completes the handshake, then never reads
        key = base64.b64encode(os.urandom(16)).decode()
        slow.sendall(f"GET /ws HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        fast = StreamClient(address)
        deadline = time.monotonic() + 60
        while scrape(address)["cascade_serve_frames_dropped_total"] < 24:
            assert time.monotonic() < deadline, "the stalled client never lost a frame"
            n = len(fast.frame_times)
            fast.pump(lambda c, n=n: len(c.frame_times) >= n + 24)
        stalled = next(c for c in srv.stream.clients if c.dropped)
        buffered, dropped, sent, shown = stalled.frames_queued, stalled.dropped, stalled.sent, srv.stream.frames_shown
        fast.close()
        slow.close()
    assert buffered == 8 and dropped >= 24 and shown - 1 <= sent + buffered + dropped <= shown  # 1: being sent
    # The reading client was paced all along: nothing dropped on its side, no gap of a stall.
    gaps = sorted(b - a for a, b in zip(fast.frame_times, fast.frame_times[1:], strict=False))
    assert gaps[int(0.9 * len(gaps))] < 0.5, "a stalled client held up the stream"
