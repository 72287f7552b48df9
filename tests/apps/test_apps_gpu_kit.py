"""The GPU kit, rehearsed on the CPU: `benchmarks/gpu_check.sh --rehearse` end to end (the wheel install from a
local folder with --no-index, every step, the report and its table), the budget (a step that does not fit is
skipped, one that runs out is cut), a failing step recorded while the next runs, the report's atomic writes,
and every flag refused up front in one line."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from apps.calibrate.gpu_kit import KitOptions, catalog_gpu, rehearsal_options, run_kit
from apps.calibrate.gpu_report import FORMAT, format_gpu_table, load_report, write_report
from apps.cli import main
from cascade_sched.errors import ConfigError
from simulator.profile import Profile
from tests.extras import need

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "benchmarks" / "gpu_check.sh"


def _probe_wheel(folder: Path) -> str:
    """A real wheel (PEP 427) of a one-module package, for the install path where no fetched wheels exist: the
    kit installs whatever the folder holds, with --no-index."""
    name, version = "cascade_kit_probe", "1.0"
    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": b'VERSION = "1.0"\n',
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
              f"{len(data)}" for path, data in files.items()] + [f"{info}/RECORD,,"]
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for p, data in files.items():
            z.writestr(p, data)
        z.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return name


@pytest.mark.slow
def test_gpu_check_rehearses_every_step_from_a_local_wheel_folder(tmp_path: Path) -> None:
    """The rehearsal as CI runs it: the shell script, the project on PYTHONPATH (not its installed copy), the
    wheels of a local folder (benchmarks/gpu_wheels.sh's where it ran, else a probe wheel) installed with
    --no-index, all six steps, the report after every step and the table of `cascade validate --gpu-report`."""
    need("diffusers")
    fetched = sorted((ROOT / "gpu-wheels").glob("*.whl"))
    wheels = ROOT / "gpu-wheels" if fetched else tmp_path / "wheels"
    if fetched:
        packages = [w.name.split("-")[0] for w in fetched]
    else:
        wheels.mkdir()
        packages = [_probe_wheel(wheels)]
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(["bash", str(CHECK), str(out), "--rehearse", "--wheels", str(wheels)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    installed = (out / "wheels.log").read_text(encoding="utf-8").replace("_", "-").lower()
    assert "successfully installed" in installed, installed
    assert all(p.replace("_", "-").lower() in installed for p in packages), installed
    assert "installed with --no-index" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["card.txt", "gpu-profile.json", "gpu-report.json",
                                                      "gpu-table.md", "kit.log", "wheels.log"]
    doc = load_report(str(out / "gpu-report.json"))
    assert doc["rehearsal"] is True and doc["format"] == FORMAT
    assert "--no-index" in doc["wheels"]
    steps = {s["id"]: s for s in doc["steps"]}
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]
    assert all(s["status"] == "ok" for s in steps.values()), {i: (s["status"], s["why"]) for i, s in steps.items()}
    for sid in (1, 2, 3, 4, 5, 6):
        assert steps[sid]["rows"], f"step {sid} measured nothing"
        assert all(r["measured"] is not None and r["measured"] > 0 for r in steps[sid]["rows"][:2])
    # What a CPU cannot do is said, not skipped in silence.
    assert "no CUDA stream" in steps[4]["why"]
    assert "CUDA graphs need a CUDA device" in steps[5]["why"]
    assert steps[5]["figures"]["cuda_graphs"]["captured"] is False
    assert "peak memory not measured" in steps[6]["why"]
    # The profile the simulator reads: the whole grid, and the decoder step 3 added.
    profile = Profile.load(str(out / "gpu-profile.json"))
    assert len(profile.forward) == 55 and profile.decode_s_per_block > 0
    assert profile.provenance["decoder"].startswith("wan-vae")
    table = (out / "gpu-table.md").read_text(encoding="utf-8")
    assert table.startswith("rehearsal on a CPU") and "| 1. batching | sequential denoise FPS" in table
    assert table.count("\n| ") >= sum(len(s["rows"]) for s in steps.values())


def test_a_step_that_does_not_fit_the_budget_is_skipped(tmp_path: Path) -> None:
    doc = run_kit(rehearsal_options(str(tmp_path), budget_s=1.0, steps=(1, 2)))
    assert [(s["id"], s["status"]) for s in doc["steps"]] == [(1, "skipped"), (2, "skipped")]
    assert all(s["why"].startswith("budget: ") for s in doc["steps"])
    assert load_report(str(tmp_path / "gpu-report.json"))["steps"] == doc["steps"]


@pytest.mark.slow
def test_a_step_that_runs_out_of_budget_is_cut_and_keeps_what_it_measured(tmp_path: Path) -> None:
    """Step 2 with a grid far longer than its budget: it stops at the budget, says so, and the profile holds
    the shapes it measured."""
    doc = run_kit(rehearsal_options(str(tmp_path), budget_s=16.0, steps=(2,), warmup=0, repeats=100_000,
                                    batches=(1, 2), context_blocks=(1, 2)))
    (step,) = doc["steps"]
    assert step["status"] == "cut" and step["why"].startswith("budget: "), step["why"]
    profile = Profile.load(str(tmp_path / "gpu-profile.json"))
    assert len(profile.forward) > 0 and all(0 < p.samples < 100_000 for p in profile.forward)


@pytest.mark.slow
def test_a_failing_step_is_recorded_and_the_next_step_runs(tmp_path: Path) -> None:
    need("diffusers")
    doc = run_kit(rehearsal_options(str(tmp_path), steps=(3, 6), vae_config={"no_such_argument": 1}))
    first, second = doc["steps"]
    assert (first["id"], first["status"]) == (3, "failed") and first["why"].startswith("TypeError")
    assert first["figures"]["traceback"]
    assert (second["id"], second["status"]) == (6, "ok")
    assert load_report(str(tmp_path / "gpu-report.json"))["steps"][0]["status"] == "failed"


def test_without_diffusers_the_decoder_steps_use_taehv_and_say_so(tmp_path: Path) -> None:
    """What gpu_check.sh passes where diffusers does not import (--no-vae): TAEHV measured and decoding, the
    Wan VAE named as not measured."""
    doc = run_kit(rehearsal_options(str(tmp_path), steps=(3, 4), vae=False))
    decoders, overlap = doc["steps"]
    assert decoders["status"] == overlap["status"] == "ok"
    assert "the Wan VAE is not measured" in decoders["why"] and "TAEHV instead" in overlap["why"]
    assert decoders["rows"][0]["figure"].startswith("TAEHV")
    assert all(r["measured"] > 0 for r in overlap["rows"])


def test_the_report_is_replaced_atomically_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    doc = {"format": FORMAT, "card": {"name": "x"}, "steps": [{"id": 1, "name": "batching", "status": "running",
                                                               "rows": [{"figure": "f", "measured": float("nan")}]}]}
    write_report(path, doc)
    write_report(path, {**doc, "budget_s": 5})
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left behind
    back = load_report(str(path))
    assert back["budget_s"] == 5 and back["steps"][0]["rows"][0]["measured"] is None
    assert "| 1. batching | f |" in format_gpu_table(back)
    (tmp_path / "bad.json").write_text('{"format": "other"}', encoding="utf-8")
    with pytest.raises(ConfigError, match="not a cascade-gpu-report/1 file"):
        load_report(str(tmp_path / "bad.json"))
    with pytest.raises(ConfigError, match="cannot be read"):
        load_report(str(tmp_path / "missing.json"))


@pytest.mark.parametrize(("argv", "flag"), [
    (["calibrate", "--budget-s", "10"], "--budget-s"),
    (["calibrate", "--rehearse"], "--rehearse"),
    (["calibrate", "--gpu-kit", "--budget-s", "0"], "--budget-s"),
    (["calibrate", "--gpu-kit", "--budget-s", "nan"], "--budget-s"),
    (["calibrate", "--gpu-kit", "--rehearse", "--steps", "7"], "--steps"),
    (["calibrate", "--gpu-kit", "--rehearse", "--model", "tiny"], "--model"),
    (["calibrate", "--gpu-kit", "--rehearse", "--report", "no/such/folder/r.json"], "--report"),
    (["validate", "--gpu-report", "no-such-report.json"], "--gpu-report"),
])
def test_kit_flags_are_refused_up_front_in_one_line(argv: list[str], flag: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err, err


@pytest.mark.parametrize(("args", "says"), [
    (["--budget-s", "soon"], "--budget-s must be a positive number of seconds"),
    (["--budget-s", "0"], "--budget-s must be a positive number of seconds"),
    (["--wheels"], "--wheels needs a folder"),
])
def test_gpu_check_refuses_bad_arguments_in_one_line(args: list[str], says: str, tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(CHECK), str(tmp_path / "out"), *args], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2 and done.stderr.strip() == f"gpu_check: {says}" + (
        f", got '{args[1]}'" if args[0] == "--budget-s" else ""), done.stderr


def test_gpu_check_refuses_a_machine_without_cuda_unless_rehearsing(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    env = {**os.environ, "PYTHON": sys.executable, "GPU_WHEELS": str(tmp_path / "none")}
    done = subprocess.run(["bash", str(CHECK), str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                          check=False, env=env)
    assert done.returncode == 2 and "torch sees no CUDA device" in done.stderr and "--rehearse" in done.stderr


def test_the_command_runs_from_the_project_folder_when_not_installed(monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m cascade_sched.cli` finds the command through the installed distribution's entry point; where
    the project is only on PYTHONPATH (the GPU machine) there is no distribution, and it finds apps.cli."""
    import importlib.metadata as metadata

    from cascade_sched import cli

    def not_installed(name: str) -> metadata.Distribution:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", not_installed)
    assert cli.main(["schedule", "--blocks", "2", "--json", "--compact"]) == 0
    assert json.loads(capsys.readouterr().out)["spec"]["num_blocks"] == 2


def test_defaults_are_the_gpu_run_and_the_catalog_knows_the_cards() -> None:
    o = KitOptions()
    assert (o.model, o.big_model, o.device, o.dtype, o.budget_s) == ("wan2.1-1.3b", "wan2.1-14b", "cuda", "bfloat16",
                                                                     540.0)
    assert o.batches == (1, 2, 3, 4, 5) and o.context_blocks == tuple(range(1, 12)) and o.window == 7
    assert o.vae_config["base_dim"] == 96 and o.vae_config["dim_mult"] == [1, 2, 4, 4]
    assert catalog_gpu("NVIDIA H100 80GB HBM3") == "h100-sxm" and catalog_gpu("NVIDIA H200") == "h200"
    assert catalog_gpu("cpu (x86_64, 2 cores)") is None
