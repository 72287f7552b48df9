"""``cascade generate`` end to end: outputs, failure handling, and bad input."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import pytest

from cascade_sched.metrics import video_frames
from tests.executors.exec_support import assert_promise

CASCADE = [sys.executable, "-m", "cascade_sched.cli"]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CASCADE, *args], capture_output=True, text=True, timeout=timeout)


def frames_of(blocks: int) -> int:
    return sum(video_frames(b) for b in range(blocks))


@pytest.mark.parametrize(("model", "frames", "pixels", "latent"), [
    (None, lambda b: 3 * b, 128, (3, 16, 16)),  # the default: the trained toy, pixel latents x8 for viewing
    ("tiny", frames_of, 32, (16, 4, 4)),  # Wan-style 16-channel latents through the preview decoder
])
def test_generate_writes_video_latents_and_trace(tmp_path: Path, model: str | None, frames: Any, pixels: int,
                                                 latent: tuple[int, ...]) -> None:
    out, lat, trace = tmp_path / "v.mp4", tmp_path / "l.npz", tmp_path / "t.json"
    blocks = 8  # a steady state: the window (3 for the toy, 7 for tiny) fills, and one interval more
    r = run("generate", *(["--model", model] if model else []), "--out", str(out), "--save-latents", str(lat),
            "--trace", str(trace), "--no-progress", "--blocks", str(blocks))
    assert r.returncode == 0, r.stderr
    assert "delivered FPS" in r.stdout and "denoise FPS" in r.stdout and "first frame" in r.stdout
    assert f"model {model or 'toy'}" in r.stdout
    assert f"{frames(blocks)} video frames" in r.stdout  # pixels vs Wan VAE x4
    first, end = summary_times(r.stdout)
    assert 0 < first <= end
    assert iio.imread(out).shape == (frames(blocks), pixels, pixels, 3)
    latents = np.load(lat)["latents"]
    assert latents.shape == (blocks * 3, *latent) and latents.dtype == np.float32
    import json

    events = json.loads(trace.read_text())["traceEvents"]
    names = {e["name"] for e in events if e["ph"] == "X"}
    assert {"B0S0", "B5S4"} <= names


def summary_times(stdout: str) -> tuple[float, float]:
    """The first-frame latency and the end, as the summary prints them."""
    m = re.search(r"first frame ([0-9.]+) s from the request .*; end ([0-9.]+) s", stdout)
    assert m, stdout
    return float(m[1]), float(m[2])


@pytest.mark.parametrize(("args", "needs"), [(["--blocks", "1"], 4), (["--blocks", "6", "--lag", "1"], 10)])
def test_a_run_too_short_for_a_steady_state_prints_no_fps(tmp_path: Path, args: list[str], needs: int) -> None:
    """One block, or lag 1 (5 blocks in flight) over 6 blocks: no steady state, so no FPS figure at all; the
    summary says how many blocks would give one, and its first frame comes before its end."""
    r = run("generate", *args, "--no-progress", "--out", str(tmp_path / "v.mp4"))
    assert r.returncode == 0, r.stderr
    assert "FPS: none, no steady state" in r.stdout and f"give --blocks {needs} or more" in r.stdout
    assert not re.search(r"FPS [0-9]", r.stdout)
    first, end = summary_times(r.stdout)
    assert 0 < first <= end


@pytest.mark.slow
@pytest.mark.parametrize("placement", [[], ["--placement", "layers", "--stage-stride", "2"]])
def test_distributed_generate_matches_reference_latents(tmp_path: Path, placement: list[str]) -> None:
    common = ["--model", "tiny", "--blocks", "5", "--lag", "1", "--devices", "2", "--attention", "bidirectional",
              "--no-progress", *placement]
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert run("generate", *common, "--save-latents", str(a)).returncode == 0
    r = run("generate", *common, "--executor", "distributed", "--save-latents", str(b))
    assert r.returncode == 0, r.stderr
    x, y = np.load(a)["latents"], np.load(b)["latents"]
    assert_promise(x, y)


@pytest.mark.slow
@pytest.mark.parametrize(("failing_rank", "ring"), [(0, False), (1, False), (1, True)])
def test_a_failing_rank_stops_every_rank_and_keeps_finished_frames(tmp_path: Path, failing_rank: int,
                                                                   ring: bool) -> None:
    out = tmp_path / "v.mp4"
    # Lag 1, S = 5: blocks 0, 1, 2 finish denoising at ticks 3, 4, 5 by block, before a failure at tick 6.
    # On a ring of two (stride 2) block b's last denoise stage leaves the ring at tick b + 7: blocks 0, 1, 2
    # by tick 9, before a failure at tick 10 of rank 1 (the ring's first device; rank 0 runs its last).
    tick = 10 if ring else 6
    layers = ["--placement", "layers", "--stage-stride", "2"] if ring else []
    # A hang is what this guards against: the run's own --timeout is 20 s, and subprocess.run raises
    # TimeoutExpired if the ranks are still up long after it.
    r = run("generate", "--model", "tiny", "--blocks", "8", "--lag", "1", "--devices", "2", "--executor", "distributed",
            *layers, "--out", str(out), "--timeout", "20", "--no-progress", "--fail-at", f"{failing_rank}:{tick}",
            timeout=90)
    assert r.returncode != 0
    assert f"rank {failing_rank} failed at tick {tick} (" in r.stderr and "@d" in r.stderr
    assert "Traceback" not in r.stderr
    # The finished blocks are kept, readable, under the partial name; nothing under the final name.
    assert iio.imread(tmp_path / "v.partial.mp4").shape[0] == frames_of(3) and not out.exists()
    assert "kept 3 of 8 blocks in" in r.stderr


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--executor", "distributed", "--devices", "2", "--nproc", "3"], "--nproc"),
        (["--out", "clip.avi"], "--out"),
        (["--dtype", "float8"], "--dtype"),
        (["--model", "huge"], "--model"),
        (["--lag", "9"], "--lag"),
        (["--save-latents", "x.txt"], "--save-latents"),
        (["--device", "cuda"], "--device"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], flag: str, tmp_path: Path) -> None:
    if flag == "--device":
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA device is present")
    r = run("generate", "--no-progress", *args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0], r.stderr


@pytest.mark.slow
def test_a_cuda_request_without_cuda_under_torchrun_is_one_line_per_rank(tmp_path: Path) -> None:
    """The README's torchrun GPU line on a machine without CUDA: every rank refuses in one line and exits 2
    before touching CUDA (torchrun's agent then reports the exit code in its own words)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    torchrun = Path(sys.executable).with_name("torchrun")
    r = subprocess.run([str(torchrun), "--nproc-per-node", "2", "-m", "cascade_sched.cli", "generate", "--executor",
                        "distributed", "--devices", "2", "--lag", "1", "--model", "tiny", "--device", "cuda",
                        "--dtype", "bfloat16", "--no-progress"], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert r.returncode != 0
    ours = [line for line in r.stderr.splitlines() if line.startswith("cascade generate: error:")]
    assert ours and all("--device" in line and "no CUDA" in line for line in ours)
    assert "exitcode: 2" in r.stderr and "_cuda_setDevice" not in r.stderr and "cascade_sched/" not in r.stderr


def test_a_refusal_while_loading_is_the_only_line(tmp_path: Path) -> None:
    """Notes (here: no --vae) are said once everything has loaded; embeddings of the wrong width are
    refused while loading, so the refusal is all the run prints."""
    import torch
    from safetensors.torch import save_file

    save_file({"a red ball": torch.zeros(4, 7)}, tmp_path / "emb.safetensors")
    r = run("generate", "--model", "tiny", "--text-embeddings", str(tmp_path / "emb.safetensors"), "--prompt",
            "a red ball", "--blocks", "2", "--out", str(tmp_path / "v.mp4"), "--no-progress")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("cascade generate: error: --text-embeddings:") and "(4, 7)" in r.stderr
    ok = run("generate", "--model", "tiny", "--blocks", "2", "--out", str(tmp_path / "w.mp4"), "--no-progress")
    assert ok.returncode == 0 and ok.stderr.startswith("note: no --vae"), ok.stderr  # said when the run starts


def test_a_checkpoint_that_holds_a_pickled_tensor_says_so_in_one_line(tmp_path: Path) -> None:
    import pickle

    import torch

    with open(tmp_path / "w.pt", "wb") as f:
        pickle.dump(torch.zeros(3), f)
    r = run("generate", "--checkpoint", str(tmp_path / "w.pt"), "--blocks", "2", "--out", str(tmp_path / "v.mp4"))
    assert r.returncode == 2 and r.stderr.splitlines() == [
        f"cascade generate: error: checkpoint {str(tmp_path / 'w.pt')!r} is a plain pickle (pickle.dump) of a "
        "tensor, not a checkpoint (torch.save or safetensors)"], r.stderr


def test_latents_that_would_not_fit_on_the_disk_are_refused_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A full disk cannot be made here: the disk is told to have 1 MiB free (the one thing faked)."""
    import shutil
    from collections import namedtuple

    from apps.cli import main

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(1 << 40, (1 << 40) - (1 << 20), 1 << 20))
    assert main(["generate", "--model", "tiny", "--blocks", "1000", "--save-latents", str(tmp_path / "l.npz"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("cascade generate: error: --save-latents: `--save-latents` "), err
    assert "more than the 0.0 GiB free on its disk" in err[0] and not (tmp_path / "l.npz").exists()
