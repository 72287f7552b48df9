"""Ctrl-C and SIGTERM end `cascade generate` with one line and exit 130 / 143, on every executor, and
keep exactly the finished blocks, readable, under the partial names (cascade_sched/outputs.py).

Each test runs the real command line in a subprocess, waits until the run has written its first block
(the partial GIF appears), signals it, and reads back what it kept.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

CASCADE = [sys.executable, "-m", "cascade_sched.cli", "generate"]
FRAMES = 3  # the toy model: 3 latent frames per block, one video frame each (the pixel decoder)
LINE = re.compile(
    r"cascade generate: interrupted \((SIGINT|SIGTERM)\): kept (\d+)(?: of (\d+))? blocks in "
    r"(\S+\.partial\.gif) and (\S+\.partial\.npz)"
)


def interrupt(
    tmp: Path, args: list[str], signum: int, ready_s: float = 300.0, command: list[str] = CASCADE
) -> tuple[int, str, float]:
    """Run ``cascade generate ARGS --out v.gif --save-latents l.npz`` in ``tmp``; once the partial GIF is
    there, send ``signum``. Returns (exit status, stderr, seconds from the signal to the exit)."""
    cmd = [*command, *args, "--no-progress", "--out", "v.gif", "--save-latents", "l.npz"]
    p = subprocess.Popen(
        cmd, cwd=tmp, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )  # stdin stays open: an --interactive stream goes on until the signal
    deadline = time.monotonic() + ready_s
    while not (tmp / "v.partial.gif").exists():
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            pytest.fail(f"no block was written (status {p.poll()}): {p.communicate()[1]}")
        time.sleep(0.05)
    sent = time.monotonic()
    p.send_signal(signum)
    _, err = p.communicate(timeout=60)
    return p.returncode, err, time.monotonic() - sent


def assert_kept(tmp: Path, status: int, err: str, signum: int, notes: bool = False) -> int:
    """The one line, the exit status and the partial files: exactly the finished blocks. Returns them.
    ``notes``: the run printed notes (``note: ...``) before it started, which are not counted."""
    assert status == 128 + signum, err
    lines = [ln for ln in err.strip().splitlines() if not (notes and ln.startswith("note: "))]
    assert len(lines) == 1, err
    m = LINE.fullmatch(lines[0])
    assert m is not None, lines[0]
    name, kept, total, video, latents = m.groups()
    assert name == signal.Signals(signum).name and (video, latents) == ("v.partial.gif", "l.partial.npz")
    n = int(kept)
    assert 1 <= n < int(total or n + 1)
    assert not (tmp / "v.gif").exists() and not (tmp / "l.npz").exists()  # nothing partial looks whole
    assert iio.imread(tmp / video, index=None).shape[0] == n * FRAMES
    assert np.load(tmp / latents)["latents"].shape[0] == n * FRAMES
    return n


SIGNALS = [signal.SIGINT, signal.SIGTERM]


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_reference(tmp_path: Path, signum: int) -> None:
    status, err, _ = interrupt(tmp_path, ["--blocks", "200"], signum)
    assert_kept(tmp_path, status, err, signum)


def test_interactive_ctrl_c(tmp_path: Path) -> None:
    status, err, _ = interrupt(
        tmp_path, ["--interactive", "--blocks", "2", "--max-blocks", "500"], signal.SIGINT
    )
    assert "of" not in err.split("kept")[1].split("blocks")[0]  # a stream has no planned end
    assert_kept(tmp_path, status, err, signal.SIGINT, notes=True)


@pytest.mark.slow
@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_distributed(tmp_path: Path, signum: int) -> None:
    status, err, took = interrupt(
        tmp_path, ["--blocks", "200", "--devices", "2", "--lag", "2", "--executor", "distributed"], signum
    )
    assert_kept(tmp_path, status, err, signum)
    assert took < 10, f"the ranks took {took:.1f} s to stop"


@pytest.fixture(scope="module")
def engine_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One engine cache for both compiled runs: the first compiles, the second loads."""
    return tmp_path_factory.mktemp("engines")


@pytest.mark.slow
@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_compiled(tmp_path: Path, signum: int, engine_cache: Path) -> None:
    status, err, took = interrupt(
        tmp_path,
        ["--blocks", "400", "--window", "2", "--executor", "compiled", "--engine-cache", str(engine_cache)],
        signum,
    )
    assert_kept(tmp_path, status, err, signum)
    assert took < 10, f"the compiled run took {took:.1f} s to stop"


@pytest.mark.slow
def test_under_torchrun_rank_0_alone_says_the_line(tmp_path: Path) -> None:
    """torchrun passes its SIGTERM on to both ranks; the ranks' one line comes from rank 0 only (torchrun's
    agent then prints its own SignalException traceback, which is torchrun's, not this project's)."""
    torchrun = [
        str(Path(sys.executable).with_name("torchrun")),
        "--nproc-per-node",
        "2",
        "-m",
        "cascade_sched.cli",
    ]
    args = ["--blocks", "200", "--devices", "2", "--lag", "2", "--executor", "distributed"]
    status, err, took = interrupt(tmp_path, args, signal.SIGTERM, command=[*torchrun, "generate"])
    assert status != 0 and took < 15, (status, took)
    ours = [ln for ln in err.splitlines() if ln.startswith(("cascade", "rank "))]
    assert len(ours) == 1, err
    assert_kept(tmp_path, 128 + signal.SIGTERM, ours[0], signal.SIGTERM)


# Every command, Ctrl-C as a terminal sends it (to the whole foreground process group) once the command
# is at work: (arguments that keep it busy for long, a line it prints once at work, or None: a moment).
COMMANDS = {
    "schedule": (["--blocks", "100000"], None),
    "simulate": (["--blocks", "100000", "--path", "event"], None),  # every block through the event loop
    "plan": (["--blocks", "300"], None),  # a default sweep at 300 blocks: about half a minute
    # calibrate: while its two-rank link measurement starts its ranks (they import torch: the window a
    # Ctrl-C used to fill with their tracebacks)
    "calibrate": (["--out", "c.json", "--batches", "1", "--context-blocks", "1", "--warmup", "0", "--repeats", "1"],
                  "ranks"),
    "validate": (["--blocks", "4"], "calibrating"),
    "quality": (["--seeds", "20", "--switch-seeds", "0", "--no-progress"], None),
    "serve": (["--port", "0", "--model", "tiny"], "listening on"),
    "generate": (["--blocks", "400", "--no-progress", "--out", "v.mp4"], None),
}


def ctrl_c(tmp: Path, command: list[str], ready: str | None, settle_s: float = 3.0) -> tuple[int, list[str]]:
    """Run ``command`` in ``tmp`` in a session of its own; once it printed ``ready`` (``"ranks"``: once it has
    started ranks; None: after ``settle_s``) send SIGINT to its whole process group, as a terminal's Ctrl-C
    does. Returns the exit status and its stderr lines (progress bars' redraws split into lines)."""
    import os
    import threading

    p = subprocess.Popen(command, cwd=tmp, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert p.stderr is not None
        for line in p.stderr:
            lines.append(line)
            if ready is not None and ready in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if ready == "ranks":
        deadline = time.monotonic() + 600
        while not ranks_of(p.pid):
            assert p.poll() is None and time.monotonic() < deadline, f"{command} started no rank: {''.join(lines)}"
            time.sleep(0.01)
    elif ready is not None:
        assert seen.wait(300), f"{command}: never printed {ready!r}: {''.join(lines)}"
    time.sleep(settle_s if ready is None else 0.5 if ready != "ranks" else 0.0)
    assert p.poll() is None, f"{command} ended before the signal: {''.join(lines)}"
    os.killpg(p.pid, signal.SIGINT)
    status = p.wait(timeout=120)
    reader.join(timeout=30)
    return status, "".join(lines).replace("\r", "\n").splitlines()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_ctrl_c_in_every_command_says_one_line_and_exits_130(tmp_path: Path, name: str) -> None:
    args, ready = COMMANDS[name]
    status, lines = ctrl_c(tmp_path, [sys.executable, "-m", "cascade_sched.cli", name, *args], ready)
    said = [ln for ln in lines if ln.startswith(f"cascade {name}: interrupted (SIGINT)")]
    assert status == 130 and len(said) == 1 and lines[-1] == said[0], lines
    assert not [ln for ln in lines if any(w in ln for w in ("Traceback", "Error", "Warning", "rank "))], lines


@pytest.mark.slow
@pytest.mark.parametrize("when", ["ranks starting", "ranks running"])
def test_distributed_ctrl_c_from_a_terminal_says_one_line(tmp_path: Path, when: str) -> None:
    """The terminal's SIGINT reaches the command and every rank at once (one foreground group), with the
    progress bar on: one line, no rank's message, no traceback of a rank still importing, no
    resource_tracker warning after it."""
    import os
    import threading

    command = [*CASCADE, "--blocks", "200", "--devices", "2", "--lag", "2", "--executor", "distributed",
               "--out", "v.gif"]
    p = subprocess.Popen(command, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(p.stderr.read() if p.stderr else ""), daemon=True)
    reader.start()
    deadline = time.monotonic() + 300

    ready = (lambda: bool(ranks_of(p.pid))) if when == "ranks starting" else (tmp_path / "v.partial.gif").exists
    while not ready():
        assert p.poll() is None and time.monotonic() < deadline, f"never ready: {out}"
        time.sleep(0.01)
    os.killpg(p.pid, signal.SIGINT)
    status = p.wait(timeout=60)
    reader.join(timeout=60)  # the pipe closes when every process that held it has gone, the tracker too
    lines = [ln for ln in out[0].replace("\r", "\n").splitlines() if ln.strip() and not ln.startswith("generate:")]
    assert status == 130 and len(lines) == 1 and lines[0].startswith("cascade generate: interrupted (SIGINT)"), out
    if when == "ranks running":
        assert "kept" in lines[0] and "v.partial.gif" in lines[0]


def ranks_of(parent: int) -> list[int]:
    """The ranks ``parent`` has spawned (``python -m executors.spawned``), by their pids."""
    import glob

    out = []
    for f in glob.glob("/proc/[0-9]*/stat"):
        try:
            if int(Path(f).read_text().rsplit(")", 1)[1].split()[1]) == parent and \
                    b"executors.spawned" in (Path(f).parent / "cmdline").read_bytes():
                out.append(int(Path(f).parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return out
