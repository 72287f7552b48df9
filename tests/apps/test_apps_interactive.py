"""Prompt switches while streaming: extension between ticks, timeline files, and the --interactive CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from apps.flags import read_timeline
from apps.streams import Timeline
from cascade_sched import CascadeSpec, ConfigError, build_schedule
from executors.base import RunOptions
from executors.feed import Declaration, Stream, StreamView
from executors.reference import ReferenceExecutor
from tests.executors.exec_support import PROMPTS, tiny_model


@pytest.mark.parametrize("policy", ["none", "recache"])
@pytest.mark.parametrize("lag", [1, 2, 5])
def test_a_stream_switched_while_running_equals_the_schedule_built_whole(policy: str, lag: int) -> None:
    """Prompts arrive between ticks (two at once: the newer wins), each switching the first block not
    declared yet (apps.streams.Timeline), and the stream ends: the same latents as the final schedule."""
    spec = CascadeSpec(num_blocks=1, lag=lag, window=3, sink=1, switch_policy=policy)
    arrivals = {2: [1], 9: [2, 3], 14: [1]}
    timeline, switches = Timeline(spec), []

    def hook(tick: int, view: StreamView) -> Declaration | None:
        if tick == 20:
            return Declaration(end=True)
        declaration = None
        for pid in arrivals.get(tick, []):
            declaration, at = timeline.switch(view, pid)
            switches[:] = [sw for sw in switches if sw[0] != at] + [(at, pid)]
        return declaration

    model = tiny_model()
    streamed = ReferenceExecutor().run(Stream(spec), model, RunOptions(prompts=PROMPTS), hook=hook)
    final = spec.replace(num_blocks=streamed.blocks, switches=tuple(switches))
    whole = ReferenceExecutor().run(build_schedule(final), model, RunOptions(prompts=PROMPTS))
    assert streamed.blocks > 3 and [p for _, p in switches] == [1, 3, 1]
    assert torch.equal(streamed.stacked(), whole.stacked())


def test_timeline_files(tmp_path: Path) -> None:
    good = tmp_path / "t.yaml"
    good.write_text("- {at_block: 2, prompt: a cat}\n- {at_block: 4, prompt: a dog}\n- {at_block: 6, prompt: a cat}\n")
    texts, switches = read_timeline(str(good), "first")
    assert texts == {0: "first", 1: "a cat", 2: "a dog"} and switches == ((2, 1), (4, 2), (6, 1))
    js = tmp_path / "t.json"
    js.write_text('[{"at_block": 1, "prompt": "x"}]')
    assert read_timeline(str(js), "first")[1] == ((1, 1),)
    for body in ("[]", "{}", '[{"at_block": "2", "prompt": "x"}]', '[{"at_block": 1}]', "not json", "[1]"):
        js.write_text(body)
        with pytest.raises(ConfigError) as e:
            read_timeline(str(js), "first")
        assert e.value.param == "prompts"


CASCADE = [sys.executable, "-m", "cascade_sched.cli"]


def test_prompts_file_through_the_cli(tmp_path: Path) -> None:
    timeline = tmp_path / "t.json"
    timeline.write_text('[{"at_block": 2, "prompt": "a blue cube"}]')
    common = ["generate", "--model", "tiny", "--blocks", "4", "--no-progress", "--save-latents"]
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    r = subprocess.run([*CASCADE, *common, str(a), "--prompts", str(timeline)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert subprocess.run([*CASCADE, *common, str(b)], capture_output=True, text=True).returncode == 0
    x, y = np.load(a)["latents"], np.load(b)["latents"]
    assert np.array_equal(x[:6], y[:6]) and not np.allclose(x[6:], y[6:])  # blocks 2, 3 changed
    bad = tmp_path / "bad.json"
    bad.write_text('[{"at_block": 9, "prompt": "x"}]')
    r = subprocess.run([*CASCADE, *common, str(a), "--prompts", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("policy", ["none", "recache"])
def test_a_scripted_interactive_session_through_a_pipe(tmp_path: Path, policy: str) -> None:
    lat = tmp_path / "l.npz"
    r = subprocess.run(
        [*CASCADE, "generate", "--model", "tiny", "--interactive", "--blocks", "3", "--lag", "1", "--switch-policy", policy,
         "--no-progress", "--save-latents", str(lat), "--out", str(tmp_path / "v.mp4")],
        input="a blue cube\n\na red sphere\n", capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if "prompt switch" in ln]
    assert len(lines) >= 1 and ("a red sphere" in r.stdout)
    blocks = np.load(lat)["latents"].shape[0] // 3
    assert blocks >= 3


def test_realtime_holds_the_stream_to_the_frame_rate(tmp_path: Path) -> None:
    """tiny at 16 fps: 12 video frames a block (the latent preview, 4 per latent frame) are 0.75 s; the
    model makes a block in a few hundredths of a second, so only the pacing sets the interval."""
    r = subprocess.run([*CASCADE, "generate", "--model", "tiny", "--interactive", "--realtime", "--blocks", "8",
                        "--no-progress", "--save-latents", str(tmp_path / "l.npz")],
                       input="", capture_output=True, text=True, timeout=120)  # 8 blocks: a steady state
    assert r.returncode == 0, r.stderr
    p50 = float(r.stdout.split("interval between blocks shown p50 ")[1].split(" ms")[0]) / 1e3
    assert 0.6 <= p50 <= 1.0, r.stdout


def test_pace_and_the_status_of_a_stream_that_falls_behind() -> None:
    import io

    from apps.generate.interactive import Console, Pace

    pace = Pace(fps=10.0, lead_s=1.0)
    now = [100.0]
    slept: list[float] = []
    pace._clock = lambda: now[0]
    pace._sleep = slept.append
    assert pace.wait(10) == -1.0 and slept == []  # 1 s of video at once: exactly the lead allowed
    now[0] += 0.5
    assert pace.wait(30) == -1.0 and slept == [pytest.approx(1.5)]  # 3 s of video after 0.5 s: sleep it off
    now[0] += 5.0
    assert pace.wait(40) == pytest.approx(1.5)  # 4 s of video after 5.5 s (+ 1.5 s slept... not counted): behind
    out = io.StringIO()
    console = Console(io.StringIO(), out)
    assert not console.tty
    console.status("ahead", -0.5)
    console.status("behind by 1 s", 1.0)
    console.status("behind by 2 s", 2.0)  # still behind: no new line
    console.status("ahead", -0.2)
    console.status("behind again", 0.3)
    assert out.getvalue().splitlines() == ["note: behind by 1 s", "note: behind again"]


def test_on_a_terminal_the_status_is_redrawn_above_the_prompt_line() -> None:
    import io

    from apps.generate.interactive import PROMPT, Console

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    console = Console(Tty(), out)
    assert out.getvalue() == f"starting\n{PROMPT}"
    out.truncate(0), out.seek(0)
    console.status("block 3: 2.2 s of video")
    # saved cursor, one line up, the line cleared and rewritten, cursor back: the typed line is untouched
    assert out.getvalue() == "\x1b7\x1b[1A\r\x1b[2Kblock 3: 2.2 s of video\x1b8"
    out.truncate(0), out.seek(0)
    console.sent()  # Enter: a fresh status and prompt below the line sent
    assert out.getvalue() == f"block 3: 2.2 s of video\n{PROMPT}"
    console.end()
    assert out.getvalue().endswith("\n") and not console.tty
