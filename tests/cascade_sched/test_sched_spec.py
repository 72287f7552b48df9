"""``CascadeSpec`` validation, ``paper_level``, task names, JSON reading and the trace format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sched_support import specs

from cascade_sched import CascadeSpec, ConfigError, ScheduleError, build_schedule, paper_level, parse_task
from cascade_sched.io import dumps, loads, schedule_from_dict, schedule_to_dict
from cascade_sched.trace import TraceEvent, TraceFlow, chrome_trace, read_chrome_trace, write_chrome_trace

# (keyword arguments, the parameter the error must name, text naming the valid range or values)
BAD_SPECS = [
    ({"num_blocks": 0}, "num_blocks", "at least 1"),
    ({"num_blocks": 2.5}, "num_blocks", "integer"),
    ({"num_blocks": True}, "num_blocks", "integer"),
    ({"timesteps": ()}, "timesteps", "at least one"),
    ({"timesteps": (0,)}, "timesteps", "(0, 1000]"),
    ({"timesteps": (1001, 500)}, "timesteps", "(0, 1000]"),
    ({"timesteps": ("1000",)}, "timesteps", "(0, 1000]"),
    ({"timesteps": (500, 750)}, "timesteps", "strictly decreasing"),
    ({"timesteps": (500, 500)}, "timesteps", "without repeats"),
    ({"lag": 0}, "lag", "between 1 and 5"),
    ({"lag": 6}, "lag", "between 1 and 5"),
    ({"lag": 2, "timesteps": (1000,), "cache_pass": False}, "lag", "between 1 and 1"),
    ({"lag": 1.0}, "lag", "int"),
    ({"lag": "1"}, "lag", "int"),
    ({"lag": (1, 1)}, "lag", "num_blocks - 1 = 3"),
    ({"lag": (1, 1, 1, 1)}, "lag", "num_blocks - 1 = 3"),
    ({"lag": (1, 0, 1)}, "lag", "between 1 and 5"),
    ({"lag": (1, 6, 1)}, "lag", "between 1 and 5"),
    ({"attention": "full"}, "attention", "causal, bidirectional, stale"),
    ({"window": 0}, "window", "at least 1"),
    ({"sink": -1}, "sink", "at least 0"),
    ({"num_devices": 0}, "num_devices", "at least 1"),
    ({"placement": "diagonal"}, "placement", "block, stage"),
    ({"frames_per_block": 0}, "frames_per_block", "at least 1"),
    ({"seed": -1}, "seed", "non-negative"),
]


@pytest.mark.parametrize(("kwargs", "param", "valid"), BAD_SPECS, ids=[repr(k) for k, _, _ in BAD_SPECS])
def test_config_error_names_the_parameter_and_the_valid_range(
    kwargs: dict[str, object], param: str, valid: str
) -> None:
    with pytest.raises(ConfigError) as info:
        CascadeSpec(**{"num_blocks": 4, **kwargs})  # type: ignore[arg-type]
    assert info.value.param == param
    message = str(info.value)
    assert f"`{param}`" in message and valid in message
    assert "\n" not in message


LAYERS = {"placement": "layers", "num_devices": 4, "stage_stride": 4, "num_layers": 30}
BAD_RING_SPECS = [
    ({"stage_stride": 0}, "stage_stride", "at least 1"),
    ({"stage_stride": 1.5}, "stage_stride", "integer"),
    ({**LAYERS, "stage_stride": 3}, "stage_stride", "at least the ring size W=4 under placement layers"),
    ({**LAYERS, "rings": 3}, "rings", "divide num_devices=4"),
    ({**LAYERS, "rings": 0}, "rings", "at least 1"),
    ({"rings": 2, "num_devices": 4}, "rings", "placement layers only"),
    ({"layer_split": (2, 2)}, "layer_split", "placement layers only"),
    ({**LAYERS, "layer_split": (10, 10, 10)}, "layer_split", "one part per device of a ring, W=4"),
    ({**LAYERS, "layer_split": (10, 10, 10, 1)}, "layer_split", "sum to num_layers=30"),
    ({**LAYERS, "layer_split": (10, 10, 10, 0)}, "layer_split", "at least one layer"),
    ({**LAYERS, "num_layers": None}, "num_layers", "needed by placement layers"),
    ({**LAYERS, "num_layers": 3}, "num_layers", "at least the ring size W=4"),
    ({"num_layers": 0}, "num_layers", "at least 1"),
    ({"lag": 18, "stage_stride": 4}, "lag", "between 1 and 17"),
    ({"attention": "stage", "switch_policy": "recache"}, "switch_policy", "cannot go with attention stage"),
]


@pytest.mark.parametrize(("kwargs", "param", "valid"), BAD_RING_SPECS, ids=[repr(k) for k, _, _ in BAD_RING_SPECS])
def test_ring_fields_are_checked_where_the_spec_is_built(kwargs: dict[str, object], param: str, valid: str) -> None:
    with pytest.raises(ConfigError) as info:
        CascadeSpec(**{"num_blocks": 4, **kwargs})  # type: ignore[arg-type]
    assert info.value.param == param and f"`{param}`" in str(info.value) and valid in str(info.value)
    assert "\n" not in str(info.value)


def test_ring_geometry() -> None:
    from cascade_sched.placement import default_decode_device

    spec = CascadeSpec(num_blocks=4, **LAYERS)  # type: ignore[arg-type]
    assert spec.ring_size == 4 and spec.layer_ranges == ((0, 8), (8, 16), (16, 23), (23, 30))
    assert spec.tick_span == 17 and spec.lags == (17, 17, 17) and default_decode_device(spec) == 3
    split = CascadeSpec(num_blocks=2, placement="layers", num_devices=6, rings=3, stage_stride=2, layer_split=[20, 10])
    assert split.num_layers == 30 and split.layer_split == (20, 10) and split.ring_size == 2
    assert CascadeSpec.from_dict(split.to_dict()) == split
    assert CascadeSpec(num_blocks=2).layer_ranges == ((0, None),)
    assert CascadeSpec(num_blocks=2, num_layers=30).layer_ranges == ((0, 30),)
    assert default_decode_device(CascadeSpec(num_blocks=2, num_devices=3)) == 0
    assert CascadeSpec(num_blocks=3, stage_stride=2).extended(2).stage_stride == 2


def test_per_block_lags_of_the_wrong_length() -> None:
    for n, lags in [(1, (1,)), (3, ()), (3, (1,)), (3, (1, 1, 1)), (6, (1, 2, 3))]:
        with pytest.raises(ConfigError, match=rf"num_blocks - 1 = {n - 1} entries, got {len(lags)}"):
            CascadeSpec(num_blocks=n, lag=lags)
    assert CascadeSpec(num_blocks=1, lag=()).lags == ()
    assert CascadeSpec(num_blocks=3, lag=[2, 3]).lag == (2, 3)  # a list is kept as a tuple


def test_lags_resolve() -> None:
    assert CascadeSpec(num_blocks=4).lags == (5, 5, 5)  # sequential by default
    assert CascadeSpec(num_blocks=4, cache_pass=False).lags == (4, 4, 4)
    assert CascadeSpec(num_blocks=4, lag=2).lags == (2, 2, 2)
    assert CascadeSpec(num_blocks=1, lag=3).lags == ()
    assert CascadeSpec(num_blocks=2, timesteps=(7.5,), cache_pass=False).stage_timesteps == (7.5,)
    assert CascadeSpec(num_blocks=2).stage_timesteps == (1000, 750, 500, 250, 0)


def test_paper_level() -> None:
    assert paper_level(4, 5) == 1  # P4, the paper's published level: lag 1 with S = 5
    assert paper_level(0, 5) == 5  # P0: the sequential baseline
    for s in range(1, 8):
        assert [paper_level(k, s) for k in range(s)] == list(range(s, 0, -1))
    for k, s in [(5, 5), (-1, 5), (1, 1)]:
        with pytest.raises(ConfigError) as info:
            paper_level(k, s)
        assert info.value.param == "level" and f"between 0 and {s - 1}" in str(info.value)


@given(specs())
def test_spec_dict_round_trip(spec: CascadeSpec) -> None:
    data = spec.to_dict()
    assert json.loads(json.dumps(data)) == data
    again = CascadeSpec.from_dict(json.loads(json.dumps(data)))
    assert again == spec and again.lags == spec.lags


def test_from_dict_rejects_unknown_fields() -> None:
    with pytest.raises(ConfigError, match="unknown spec field"):
        CascadeSpec.from_dict({"num_blocks": 2, "blocks": 3})


# -- task names ----------------------------------------------------------------------------------------------


def test_parse_task() -> None:
    s = build_schedule(CascadeSpec(num_blocks=3, lag=1, num_devices=2))
    assert str(s.task(2, 3)) == "B2S3@d0"
    assert parse_task(" B2S3@d0 ", s) == s.task(2, 3)
    for bad in ["B2S3", "b2s3@d0", "B2S3@d", "B-1S0@d0", "B2 S3@d0", ""]:
        with pytest.raises(ScheduleError, match="not a task name"):
            parse_task(bad, s)
    with pytest.raises(ScheduleError, match="names device 1"):
        parse_task("B2S3@d1", s)
    with pytest.raises(ScheduleError, match="no task B3S0"):
        parse_task("B3S0@d1", s)


@given(specs(), st.data())
def test_task_name_round_trips(spec: CascadeSpec, data: st.DataObject) -> None:
    s = build_schedule(spec)
    task = data.draw(st.sampled_from(s.tasks))
    assert parse_task(str(task), s) == task
    assert str(task) == f"B{task.block}S{task.stage}@d{task.device}"


# -- reading JSON -------------------------------------------------------------------------------------------


def small_json() -> dict[str, object]:
    return schedule_to_dict(build_schedule(CascadeSpec(num_blocks=3, lag=1, num_devices=3)))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.update(format="cascade-schedule/9"), 'expected "format"'),
        (lambda d: d["tasks"][4].update(kind="sideways"), "unknown task kind"),
        (lambda d: d.update(num_stages=4), "num_stages is 4"),
        (lambda d: d["spec"].update(lag=0), "`lag`"),
        (lambda d: d["spec"].update(colour="red"), "unknown spec field"),
        (lambda d: d.pop("tasks"), "malformed"),
        (lambda d: d["tasks"][0].pop("tick"), "malformed"),
        (lambda d: d["tasks"][4].update(reads=[[0, 1, 2]]), "malformed"),
        (lambda d: d["tasks"][4].update(reads=[[0, 3]]), "ERROR HERE"),
        (lambda d: d["tasks"].pop(), "missing task"),
        (lambda d: d["tasks"][2].update(device=5), "out of range"),
    ],
)
def test_loads_rejects_broken_files(edit, match: str) -> None:  # type: ignore[no-untyped-def]
    data = small_json()
    edit(data)
    with pytest.raises((ScheduleError, ConfigError), match=match):
        schedule_from_dict(data)


def test_loads_rejects_non_json_and_non_objects() -> None:
    with pytest.raises(ScheduleError, match="does not parse"):
        loads("{")
    with pytest.raises(ScheduleError, match="not a schedule"):
        loads("[1, 2]")


def test_loads_keeps_a_hand_edited_placement() -> None:
    """Tasks are taken as written: a valid custom placement survives a round trip instead of being rebuilt.
    Outside placement layers a task's one segment follows its device, so editing ``device`` alone moves it."""
    data = small_json()
    for t in data["tasks"]:  # type: ignore[union-attr]
        t["device"] = 2 - t["device"]
    s = schedule_from_dict(json.loads(json.dumps(data)))
    assert [t.device for t in s.tasks] == [2 - t.device for t in build_schedule(s.spec).tasks]
    for t in data["tasks"]:  # type: ignore[union-attr]
        t["segments"][0][0] = t["device"]
    assert json.loads(dumps(s)) == data


# -- trace format -------------------------------------------------------------------------------------------


def test_chrome_trace_round_trip(tmp_path: Path) -> None:
    a = TraceEvent("B0S0", 0, "compute", 0.0, 0.010, {"tick": 0})
    b = TraceEvent("B1S0", 1, "compute", 0.010, 0.012)
    c = TraceEvent("kv B0S0", 1, "comm", 0.010, 0.001)
    path = tmp_path / "trace.json"
    write_chrome_trace(str(path), [a, b, c], [TraceFlow(a, b, "kv")], {"source": "test"})
    data = json.loads(path.read_text())
    assert data["metadata"] == {"source": "test"}
    phases = [e["ph"] for e in data["traceEvents"]]
    assert phases.count("X") == 3 and phases.count("s") == 1 and phases.count("f") == 1
    back = read_chrome_trace(str(path))
    assert [(e.name, e.device, e.track) for e in back] == [(e.name, e.device, e.track) for e in (a, b, c)]
    for got, want in zip(back, (a, b, c), strict=True):
        assert got.start_s == pytest.approx(want.start_s) and got.duration_s == pytest.approx(want.duration_s)
    assert chrome_trace([])["traceEvents"] == []
