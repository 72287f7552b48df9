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
