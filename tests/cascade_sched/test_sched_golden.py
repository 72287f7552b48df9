"""Golden files: the tick x device grids of canonical schedules, and one schedule's JSON.

Each ``golden/<name>.txt`` holds ``render_grid(build_schedule(spec))`` (plus a final newline);
``golden/<name>.json`` holds ``io.dumps(schedule, indent=1)``. After an intended change to the grid or the
format, regenerate them and review the diff:

    CASCADE_REGEN_GOLDEN=1 .venv/bin/python -m pytest tests/cascade_sched
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cascade_sched import CascadeSpec, build_schedule, validate
from cascade_sched.io import dumps, loads
from cascade_sched.render import render_grid

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("CASCADE_REGEN_GOLDEN") == "1"

GRIDS: dict[str, CascadeSpec] = {
    **{
        f"lag{lag}_8blocks_5dev_block": CascadeSpec(num_blocks=8, lag=lag, num_devices=5)
        for lag in range(1, 6)
    },
    "lag1_8blocks_5dev_stage": CascadeSpec(num_blocks=8, lag=1, num_devices=5, placement="stage"),
    "lag1_8blocks_2dev_block": CascadeSpec(num_blocks=8, lag=1, num_devices=2),
    "lag2_8blocks_3dev_stage_nocache": CascadeSpec(
        num_blocks=8,
        timesteps=(1000, 750, 500, 250),
        cache_pass=False,
        lag=2,
        num_devices=3,
        placement="stage",
    ),
    "perblock_lags_6blocks_3dev": CascadeSpec(num_blocks=6, lag=(1, 5, 2, 1, 3), num_devices=3),
    # Issue 24's placements: a stride-4 layer ring (StreamDiffusionV2's stream batch on 4 devices, the
    # 1.3B model's 30 layers split 8, 8, 7, 7) and a 2 x 2 hybrid (two rings of two devices).
    "ring4_stride4_lag1_8blocks_stage": CascadeSpec(
        num_blocks=8, timesteps=(1000, 750, 500, 250), cache_pass=False, lag=1, num_devices=4,
        placement="layers", stage_stride=4, num_layers=30, attention="stage",
    ),
    "hybrid2x2_stride2_lag1_6blocks_causal": CascadeSpec(
        num_blocks=6, lag=1, num_devices=4, placement="layers", rings=2, stage_stride=2, num_layers=30,
    ),
}
JSONS: dict[str, CascadeSpec] = {
    "lag1_3blocks_3dev_causal": CascadeSpec(num_blocks=3, lag=1, num_devices=3),
}


def check_golden(path: Path, text: str) -> None:
    if REGEN:
        path.write_text(text, encoding="utf-8")
        return
    assert path.exists(), f"{path.name} is missing; regenerate with CASCADE_REGEN_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8"), (
        f"{path.name} differs; if the change is intended, regenerate with CASCADE_REGEN_GOLDEN=1"
    )


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_grid_matches_golden(name: str) -> None:
    schedule = validate(build_schedule(GRIDS[name]))
    check_golden(GOLDEN / f"{name}.txt", render_grid(schedule) + "\n")


@pytest.mark.parametrize("name", sorted(JSONS))
def test_json_matches_golden(name: str) -> None:
    schedule = validate(build_schedule(JSONS[name]))
    path = GOLDEN / f"{name}.json"
    check_golden(path, dumps(schedule, indent=1) + "\n")
    # The stored file reads back to the very schedule.
    assert loads(path.read_text(encoding="utf-8")) == schedule


def test_every_golden_file_is_used() -> None:
    used = {f"{n}.txt" for n in GRIDS} | {f"{n}.json" for n in JSONS}
    assert {p.name for p in GOLDEN.iterdir()} == used


def test_golden_json_has_the_documented_shape() -> None:
    data = json.loads((GOLDEN / "lag1_3blocks_3dev_causal.json").read_text(encoding="utf-8"))
    assert list(data) == ["format", "spec", "num_stages", "tasks"]
    assert data["format"] == "cascade-schedule/4"
    assert set(data["spec"]) == {
        "num_blocks",
        "timesteps",
        "cache_pass",
        "lag",
        "attention",
        "window",
        "sink",
        "num_devices",
        "placement",
        "frames_per_block",
        "seed",
        "switches",
        "switch_policy",
        "stage_stride",
        "rings",
        "layer_split",
        "num_layers",
    }
    assert list(data["tasks"][0]) == ["block", "stage", "tick", "timestep", "kind", "device", "prompt", "reads",
                                      "segments"]
    # The worked example of docs/schedule-format.md: tick 2 is a gang of three.
    gang = [t for t in data["tasks"] if t["tick"] == 2]
    assert [(t["block"], t["stage"], t["reads"]) for t in gang] == [
        (0, 2, []),
        (1, 1, [[0, 2]]),
        (2, 0, [[0, 2], [1, 1]]),
    ]
