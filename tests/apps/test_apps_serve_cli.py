"""``cascade serve`` as a command: what it checks before it loads, and how it stops."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")

ROOT = Path(__file__).resolve().parents[2]
SERVE = [sys.executable, "-m", "cascade_sched.cli", "serve", "--model", "tiny"]


def test_a_busy_port_is_refused_in_one_line_before_anything_loads() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([*SERVE, "--port", str(port)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [f"cascade serve: error: --port: `--port` {port} is already in use on "
                                     "127.0.0.1 (another server?); give another port, or 0 for any free one"]


def test_a_host_that_is_not_this_machines_is_refused_in_one_line() -> None:
    r = subprocess.run([*SERVE, "--host", "192.0.2.1", "--port", "0"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)  # 192.0.2.0/24: TEST-NET-1, never a local address
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("cascade serve: error: --host: `--host` '192.0.2.1' cannot be listened on")


@pytest.mark.slow
def test_sigint_to_a_background_server_says_its_line_and_exits_130() -> None:
    """A shell without job control starts ``cascade serve &`` with SIGINT ignored (POSIX); ``kill -INT``
    still stops it as Ctrl-C does in a terminal."""
    probe = "import signal; print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)"
    ignored = subprocess.run(["sh", "-c", f"{sys.executable} -c '{probe}' & wait"], capture_output=True, text=True,
                             timeout=60)
    assert ignored.stdout.strip() == "True"  # the premise: this shell's background job ignores SIGINT
    command = " ".join([*SERVE, "--port", "0"])
    shell = subprocess.Popen(["sh", "-c", f"{command} & echo $!; wait $!; echo status $?"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert shell.stdout is not None and shell.stderr is not None
    pid = int(shell.stdout.readline())
    lines = []
    deadline = time.monotonic() + 300
    while not any("listening on" in ln for ln in lines):
        assert time.monotonic() < deadline and shell.poll() is None, lines
        lines.append(shell.stderr.readline())
    os.kill(pid, signal.SIGINT)
    out, err = shell.communicate(timeout=60)
    said = [ln for ln in (lines + err.splitlines()) if ln.strip()]
    assert out.strip() == "status 130", (out, said)
    assert said[-1].strip() == "cascade serve: interrupted (SIGINT)" and re.search("listening on", said[-2]), said
