"""The ``cascade schedule`` command line, and the promise that the core never imports torch or simpy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from apps.cli import main
from cascade_sched import CascadeSpec, build_schedule
from cascade_sched.io import loads
from cascade_sched.render import render_grid

CASCADE = Path(sys.executable).with_name("cascade")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``main(argv)`` as the console script sees it: argparse's own exits become return codes."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_grid_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["schedule", "--blocks", "8", "--lag", "1", "--devices", "5"], capsys)
    assert code == 0 and err == ""
    summary, grid = out.split("\n", 1)
    assert "8 blocks x 5 stages" in summary and "up to 5 blocks in flight" in summary
    assert grid.rstrip("\n") == render_grid(build_schedule(CascadeSpec(num_blocks=8, lag=1, num_devices=5)))


def test_level_is_the_papers_p_k(capsys: pytest.CaptureFixture[str]) -> None:
    _, by_level, _ = run(["schedule", "--level", "4", "--devices", "5"], capsys)
    _, by_lag, _ = run(["schedule", "--lag", "1", "--devices", "5"], capsys)
    assert by_level == by_lag
    _, sequential, _ = run(["schedule", "--level", "0"], capsys)
    assert "lags 5" in sequential and "up to 1 blocks in flight" in sequential


def test_json_has_the_documented_fields(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "schedule",
        "--json",
        "--blocks",
        "4",
        "--lag",
        "1,2,1",
        "--attention",
        "stale",
        "--window",
        "2",
        "--sink",
        "1",
        "--devices",
        "3",
        "--placement",
        "stage",
        "--timesteps",
        "1000,500",
        "--no-cache-pass",
    ]
    code, out, err = run(argv, capsys)
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data["format"] == "cascade-schedule/4"
    assert data["num_stages"] == 2
    assert data["spec"] == {
        "num_blocks": 4,
        "timesteps": [1000, 500],
        "cache_pass": False,
        "lag": [1, 2, 1],
        "attention": "stale",
        "window": 2,
        "sink": 1,
        "num_devices": 3,
        "placement": "stage",
        "frames_per_block": 3,
        "seed": 0,
        "switches": [],
        "switch_policy": "none",
        "stage_stride": 1,
        "rings": 1,
        "layer_split": None,
        "num_layers": None,
    }
    assert len(data["tasks"]) == 8
    for t in data["tasks"]:
        assert set(t) == {"block", "stage", "tick", "timestep", "kind", "device", "prompt", "reads", "segments"}
        assert t["segments"] == [[t["device"], 0, None]]
        assert all(isinstance(r, list) and len(r) == 2 for r in t["reads"])
        assert [r[0] for r in t["reads"]] == sorted(r[0] for r in t["reads"])
    assert [(t["tick"], t["block"]) for t in data["tasks"]] == sorted(
        (t["tick"], t["block"]) for t in data["tasks"]
    )
    assert loads(out).spec.lags == (1, 2, 1)
    # --compact: the same object on one line.
    _, compact, _ = run([*argv, "--compact"], capsys)
    assert compact.count("\n") == 1 and json.loads(compact) == data


def test_png_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "grid.png"
    code, _, err = run(
        ["schedule", "--blocks", "6", "--lag", "2", "--devices", "3", "--png", str(png)], capsys
    )
    assert code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {png}" in err


BAD = [
    (["--lag", "0"], "--lag"),
    (["--lag", "6"], "--lag"),
    (["--lag", "1,2"], "--lag"),
    (["--lag", "x"], "--lag"),
    (["--blocks", "0"], "--blocks"),
    (["--blocks", "-3"], "--blocks"),
    (["--timesteps", "250,500"], "--timesteps"),
    (["--timesteps", "500,500"], "--timesteps"),
    (["--timesteps", "2000"], "--timesteps"),
    (["--timesteps", ","], "--timesteps"),
    (["--window", "-1"], "--window"),
    (["--sink", "-1"], "--sink"),
    (["--devices", "0"], "--devices"),
    (["--placement", "diagonal"], "--placement"),
    (["--attention", "full"], "--attention"),
    (["--level", "5"], "--level"),
    (["--level", "-1"], "--level"),
    (["--level", "1", "--lag", "1"], "--lag"),
    (["--seed", "-1"], "--seed"),
]


@pytest.mark.parametrize(("args", "flag"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_and_exit_2(
    args: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["schedule", *args], capsys)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert flag in lines[0] and "Traceback" not in err


RING = ["--devices", "4", "--placement", "layers", "--stage-stride", "4"]
BAD_RING = [
    (["--stage-stride", "0"], "--stage-stride", "between 1 and 64"),
    (["--devices", "4", "--placement", "layers", "--stage-stride", "2"], "--stage-stride", "ring size W=4"),
    ([*RING, "--rings", "3"], "--rings", "divide"),
    ([*RING, "--rings", "8", "--devices", "8", "--blocks", "4"], "--rings", "between 1 and 4"),
    (["--rings", "2", "--devices", "2"], "--rings", "placement layers only"),
    ([*RING, "--layer-split", "8,8,7"], "--layer-split", "W=4"),
    ([*RING, "--layer-split", "8,8,7,0"], "--layer-split", "at least one layer"),
    ([*RING, "--layer-split", "8,8,7,7", "--layers", "31"], "--layer-split", "num_layers=31"),
    (["--layer-split", "2,2"], "--layer-split", "placement layers only"),
    ([*RING, "--layers", "3"], "--layers", "ring size W=4"),
    (["--lag", "18", "--stage-stride", "4"], "--lag", "between 1 and 17"),
    (["--attention", "stage", "--switch", "2:1", "--switch-policy", "recache"], "--switch-policy", "stage"),
]


@pytest.mark.parametrize(("args", "flag", "why"), BAD_RING, ids=[" ".join(a) for a, _, _ in BAD_RING])
def test_bad_ring_input_is_one_line_naming_the_flag_and_range(
    args: list[str], flag: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["schedule", *args], capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"error: {flag}: " in lines[0] and why in lines[0], err


def test_ring_grid_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A stride-4 ring of 4 devices: the grid names each device's layers and shows a task on device r at
    its tick + r; the JSON gives every task its segments; the PNG is written."""
    png = tmp_path / "ring.png"
    code, out, _ = run(["schedule", "--blocks", "5", "--lag", "1", *RING, "--attention", "stage", "--png", str(png)],
                       capsys)
    assert code == 0 and png.read_bytes()[:4] == b"\x89PNG"
    summary, header, _, row0, row1, *_ = out.splitlines()
    assert row0.split("|")[1].strip() == "B0S0"
    assert "stage stride 4" in summary and "1 ring(s) of 4, 8+8+7+7 layers" in summary
    assert header.split("|")[1:] == [" d0 [0,8)  ", " d1 [8,16) ", " d2 [16,23) ", " d3 [23,30)"]
    assert row1.split("|")[1].strip() == "B1S0" and row1.split("|")[2].strip() == "B0S0"
    code, out, _ = run(["schedule", "--blocks", "2", "--lag", "1", *RING, "--rings", "2", "--devices", "4",
                        "--stage-stride", "2", "--layer-split", "20,10", "--json"], capsys)
    data = json.loads(out)
    assert data["spec"]["rings"] == 2 and data["spec"]["layer_split"] == [20, 10]
    assert data["spec"]["num_layers"] == 30 and data["spec"]["stage_stride"] == 2
    first = data["tasks"][0]
    assert first["segments"] == [[0, 0, 20], [1, 20, 30]]
    assert next(t for t in data["tasks"] if t["block"] == 1)["segments"] == [[2, 0, 20], [3, 20, 30]]
    assert loads(out).spec.ring_size == 2


def test_console_script_bad_input_has_no_traceback() -> None:
    """The installed ``cascade`` script, end to end: exit 2, one line, the flag and the valid range."""
    proc = subprocess.run(
        [str(CASCADE), "schedule", "--lag", "9"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "cascade schedule: error: --lag: `--lag` must be between 1 and 5 (S=5 stages), got 9"
    ]


LEAN = """
import sys
{stmt}
heavy = sorted(m for m in ("torch", "simpy") if m in sys.modules)
print(",".join(heavy) or "clean")
"""


@pytest.mark.parametrize(
    "stmt",
    [
        "import cascade_sched",
        "import cascade_sched.cli",
        # Every module of the core package, present and future.
        "import importlib, pkgutil, cascade_sched\n"
        "for m in pkgutil.iter_modules(cascade_sched.__path__): importlib.import_module('cascade_sched.' + m.name)",
        # The schedule subcommand itself, plugins and all, stays torch- and simpy-free.
        "from cascade_sched.cli import main; main(['schedule', '--blocks', '3', '--json'])",
    ],
)
def test_core_imports_neither_torch_nor_simpy(stmt: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-I", "-c", LEAN.format(stmt=stmt)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "clean"
