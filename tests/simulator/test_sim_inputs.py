"""Catalogs, the profile format, cost models, and bad input (one clear line, exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from apps.cli import main
from cascade_sched import CascadeSpec, SimulationError, build_schedule
from cascade_sched.errors import ConfigError
from simulator import (
    GPUS,
    LINKS,
    MODELS,
    Cluster,
    ForwardPoint,
    Profile,
    ProfileCost,
    RooflineCost,
    get_gpu,
    get_model,
    make_cost,
    simulate,
)


def test_catalogs_name_their_sources() -> None:
    assert {"h100-sxm", "h100-pcie", "h200", "a100-sxm", "l40s", "b200", "rtx5090"} <= set(GPUS)
    assert {"nvlink3", "nvlink4", "nvlink5", "pcie4", "pcie5", "ib-ndr", "ideal"} <= set(LINKS)
    for item in [*GPUS.values(), *LINKS.values(), *MODELS.values()]:
        assert item.source
    for m in MODELS.values():
        for dec in m.decoders.values():
            assert dec.source and dec.flops(12) > 0
    # Every estimate says so, and no figure points outside the repository.
    for link in LINKS.values():
        assert "/work" not in link.source and "REFERENCE" not in link.source
        if link.name in ("pcie4", "pcie5", "ib-ndr", "nvlink3", "nvlink5"):
            assert "est" in link.source


def test_wan_geometry_matches_the_reference() -> None:
    small, big = get_model("wan2.1-1.3b"), get_model("wan2.1-14b")
    assert (small.dim, small.ffn_dim, small.num_layers, small.num_heads, small.tokens_per_frame) == (
        1536, 8960, 30, 12, 1560)
    assert (big.dim, big.ffn_dim, big.num_layers, big.num_heads) == (5120, 13824, 40, 40)
    assert big.kv_bytes_per_block() / 1e9 == pytest.approx(3.83, abs=0.01)
    # One block with 7 visible blocks: ~40 TFLOP (1.3B) and ~239 TFLOP (14B), docs/references.md.
    for g, tflop in ((small, 40), (big, 239)):
        cost = RooflineCost(g, get_gpu("h100-sxm"))
        q = g.tokens_per_block
        assert cost.flops(q, (7 * q,)) / 1e12 == pytest.approx(tflop, rel=0.05)


def test_every_model_preset_is_a_simulator_geometry_without_torch() -> None:
    """Sizes are defined once (models.config); the simulator reads them, and that import loads no torch."""
    code = ("import sys; import models.config as c; from simulator import get_model; "
            "assert all(get_model(n).config is c.PRESETS[n] for n in c.PRESETS); "
            "assert 'torch' not in sys.modules, 'importing models.config loaded torch'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_unknown_names_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown gpu 'x100'"):
        get_gpu("x100")
    with pytest.raises(ConfigError, match=r"known: .*wan2\.1-14b"):
        get_model("wan3")
    with pytest.raises(ConfigError, match="cost"):
        make_cost("magic", get_model("tiny"), get_gpu("h100-sxm"))
    with pytest.raises(ConfigError, match="unknown decoder 'vqgan'"):
        make_cost("parts", get_model("wan2.1-1.3b"), get_gpu("h100-sxm"), "vqgan")
    with pytest.raises(ConfigError, match="decode"):
        simulate(build_schedule(CascadeSpec(num_blocks=2)), Cluster.of("h100-sxm", 1), make_cost(
            "uniform:0.1", get_model("tiny"), get_gpu("h100-sxm")), "tiny", decode="sideways")


def _profile(tmp_path: Path, batches: tuple[int, ...] = (1, 2), q: int = 12) -> str:
    points = [ForwardPoint(n, q, c, 0.001 * n + 1e-5 * c) for n in batches for c in (12, 48)]
    path = tmp_path / "p.json"
    Profile("tiny", tuple(points), 1e-4, 2e-3, None, (5e-5, 2e9),
            {"device": "cpu", "torch": "2.11", "dtype": "float32", "threads": 2, "date": "2025-11-25"}).save(str(path))
    return str(path)


def test_version_1_profiles_still_read(tmp_path: Path) -> None:
    data = json.loads(Path(_profile(tmp_path)).read_text())
    data["format"] = "cascade-profile/1"
    for key in ("tick_overhead_s", "text_encode_s"):
        data.pop(key)
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    p = Profile.load(str(old))
    assert p.tick_overhead_s == 0.0 and len(p.forward) == 4
    assert json.loads(Path(_profile(tmp_path)).read_text())["format"] == "cascade-profile/2"


def test_profile_round_trips_and_interpolates(tmp_path: Path) -> None:
    path = _profile(tmp_path)
    cost = ProfileCost.load(path, get_model("tiny"))
    assert Profile.load(path).to_dict() == json.loads(Path(path).read_text())
    assert cost.forward_s(12, (30,)) == pytest.approx(0.001 + 3e-4)  # linear in context
    assert cost.forward_s(12, (96,)) == pytest.approx(0.001 + 9.6e-4)  # extrapolated linearly
    assert cost.forward_s(12, (12, 48)) == pytest.approx(0.002 + 3e-4)  # batch of two at the mean context
    assert cost.profile.link() is not None and "cpu" in cost.source
    s = build_schedule(CascadeSpec(num_blocks=4, lag=1, num_devices=2, window=3))
    r = simulate(s, Cluster.of("h100-sxm", 2), cost)
    assert r.cost == "profile" and r.makespan_s > 0


def test_profile_with_missing_shapes_is_one_line(tmp_path: Path) -> None:
    cost = ProfileCost.load(_profile(tmp_path, batches=(1,)), get_model("tiny"))
    s = build_schedule(CascadeSpec(num_blocks=4, lag=1))  # one device batches up to 5 tasks
    with pytest.raises(SimulationError, match="no forward entries for batch=2"):
        simulate(s, Cluster.of("h100-sxm", 1), cost)
    wrong_q = ProfileCost.load(_profile(tmp_path, q=99), get_model("tiny"))
    with pytest.raises(SimulationError, match="query_tokens=12"):
        simulate(build_schedule(CascadeSpec(num_blocks=2)), Cluster.of("h100-sxm", 1), wrong_q)
    with pytest.raises(SimulationError, match="measured with model 'tiny'"):
        ProfileCost.load(_profile(tmp_path), get_model("small"))


@pytest.mark.parametrize("bad", [{"format": "x"}, {"format": "cascade-profile/1", "model": "tiny"},
                                 {"format": "cascade-profile/1", "model": "tiny", "forward": [{"batch": 1}]}])
def test_malformed_profiles_are_one_line(tmp_path: Path, bad: dict[str, object]) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(SimulationError) as e:
        Profile.load(str(path))
    assert "\n" not in str(e.value)


def test_a_plan_that_does_not_fit_is_refused_or_flagged() -> None:
    s = build_schedule(CascadeSpec(num_blocks=40, lag=1, attention="stale"))
    cost = make_cost("baseline-fps", get_model("wan2.1-14b"), get_gpu("h100-sxm"))
    with pytest.raises(SimulationError, match=r"does not fit: device 0 needs .* GB .* has 80.0 GB"):
        simulate(s, Cluster.of("h100-sxm", 1), cost)
    r = simulate(s, Cluster.of("h100-sxm", 1), cost, check_memory=False)
    assert not r.fits


@pytest.mark.parametrize(("argv", "pattern"), [
    (["simulate", "--gpu", "x100"], "--gpu: unknown gpu 'x100'"),
    (["simulate", "--model", "wan9"], "--model: unknown model 'wan9'"),
    (["simulate", "--interconnect", "tincan"], "--interconnect: unknown interconnect"),
    (["simulate", "--cost", "uniform:abc"], "--cost:"),
    (["simulate", "--model", "wan2.1-14b", "--blocks", "40", "--lag", "1", "--attention", "stale"],
     "does not fit: device 0 needs"),
    (["simulate", "--cost", "profile:/no/such/file.json"], "cannot read profile"),
    (["simulate", "--decode", "7"], "--decode:"),
    (["simulate", "--decode", "sideways"], "--decode:"),
    (["simulate", "--decoder", "vqgan"], "--decoder: unknown decoder"),
    (["simulate", "--memory-margin", "-1"], "--memory-margin"),
    (["simulate", "--stream-contention", "0.5"], "--stream-contention"),
    (["simulate", "--video-frames", "0"], "--video-frames"),
    (["plan", "--decodes", "sideways", "--out", "OUT"], "--decodes:"),
    (["simulate", "--straggler", "9:2"], "--straggler:"),
    (["plan", "--gpu", "x100", "--out", "OUT"], "--gpu: unknown gpu"),
    (["plan", "--lags", "9", "--out", "OUT"], "--lags:"),
])
def test_bad_input_is_one_line_and_exit_2(argv: list[str], pattern: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(tmp_path) if a == "OUT" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and pattern in err, err


def test_profile_missing_shapes_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _profile(tmp_path, batches=(1,))
    assert main(["simulate", "--model", "tiny", "--cost", f"profile:{path}", "--lag", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no forward entries for batch=2" in err


def test_schedule_command_does_not_import_simpy() -> None:
    code = ("import sys; from cascade_sched.cli import main; main(['schedule', '--blocks', '2']); "
            "assert 'simpy' not in sys.modules and 'matplotlib' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
