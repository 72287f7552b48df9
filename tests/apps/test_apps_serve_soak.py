"""A soak of ``cascade serve``: a real server process on 127.0.0.1 and real websocket clients
(tests/apps/serve_soak.py; ``benchmarks/bench_serve.py --soak`` runs the same at larger counts).

Fifty connect/disconnect cycles, then sixteen clients at once (four read slowly, one sends malformed
messages, one drops mid-frame). Afterwards the server holds what it held after its warm-up: resident
memory within 5 %, the same file descriptors and threads; the healthy clients received at least 95 % of
the frames per second the stream generated; every malformed message got its one error.
"""

from __future__ import annotations

import pytest

pytest.importorskip("websockets")

from serve_soak import serving, soak


@pytest.mark.slow
def test_fifty_cycles_and_a_crowd_with_slow_malformed_and_dropping_clients_leave_the_server_as_it_was() -> None:
    with serving("--model", "tiny", "--fps", "16", "--idle-timeout", "0", "--lag", "1", "--window", "4",
                 "--sink", "1") as server:
        s = soak(server, cycles=50, clients=16, slow=4, seconds=10.0)
        status, said = server.stop()
    crowd = s.crowd
    assert s.after.rss <= 1.05 * s.baseline.rss, f"resident memory grew: {s.baseline} -> {s.after}"
    assert s.after.fds <= s.baseline.fds and s.after.threads <= s.baseline.threads, f"{s.baseline} -> {s.after}"
    assert crowd.generation_fps > 1.0 and len(crowd.delivered_fps) == 10
    assert min(crowd.delivered_fps) >= 0.95 * crowd.generation_fps, (crowd.generation_fps, crowd.delivered_fps)
    assert crowd.malformed_sent >= 5 and crowd.errors_to_malformed == crowd.malformed_sent
    assert s.sessions == 5 + 1 + 50 + 1  # the warm-up's cycles and crowd, the cycles, the crowd: one stream each
    assert status == 130 and said.strip().splitlines()[-1] == "cascade serve: interrupted (SIGINT)", said
