"""Prompt switches in the core: prompt ids per task, recache tasks, re-encoded versions, extension."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cascade_sched import CascadeSpec, ConfigError, ScheduleError, build_schedule, validate
from cascade_sched.io import dumps, loads
from cascade_sched.schedule import RECACHE_STAGE, TaskKind, extend_schedule
from cascade_sched.transfers import plan_transfers
from tests.strategies import specs


def switched_specs() -> st.SearchStrategy[CascadeSpec]:
    """Up to eight blocks with up to three prompt switches, under either policy."""
    return specs(blocks=(1, 8), devices=(1, 3), steps="nominal", lags="uniform",
                 window=st.none() | st.integers(1, 4), max_sink=2, switches=3)


@given(switched_specs())
def test_switch_semantics(spec: CascadeSpec) -> None:
    s = validate(build_schedule(spec))
    recache = [t for t in s.tasks if t.kind == TaskKind.RECACHE]
    want = [at for at, _ in spec.switches if at >= 1] if spec.switch_policy == "recache" else []
    assert sorted(t.block for t in recache) == want  # recache only under recache, one per switch
    for t in s.tasks:
        assert t.prompt == spec.prompt_of(t.block)
        if t.kind == TaskKind.RECACHE:
            assert t.stage == RECACHE_STAGE and t.tick == s.starts[t.block] - 1
            # it re-encodes only versions committed before it runs
            assert all(s.version_tick(r) < t.tick for r in t.replaces) and not t.reads
    # prompt ids follow block order: a block's prompt is the one of the last switch at or before it
    blocks = sorted({t.block for t in s.tasks})
    assert [spec.prompt_of(b) for b in blocks] == [
        next((p for at, p in reversed(spec.switches) if at <= b), 0) for b in blocks
    ]
    # every read of a committed block after a re-encode sees the newest re-encoded version
    for t in s.tasks:
        for j, v in t.reads:
            if v >= s.num_stages:
                assert s.producer((j, v)).kind == TaskKind.RECACHE and s.version_tick((j, v)) < t.tick
    assert loads(dumps(s)) == s
    plan_transfers(s)  # every read has a producer


@given(switched_specs(), st.integers(1, 3), st.integers(0, 4))
def test_extension_keeps_every_earlier_task(spec: CascadeSpec, extra: int, prompt: int) -> None:
    s = build_schedule(spec)
    e = validate(extend_schedule(s, extra, [(spec.num_blocks, prompt)]))
    first_new = min(t.tick for t in e.tasks if t.block >= spec.num_blocks)
    assert [t for t in e.tasks if t.tick < first_new] == [t for t in s.tasks if t.tick < first_new]
    assert all(t.prompt == prompt for t in e.tasks if t.block >= spec.num_blocks)


def test_recache_delays_the_switching_block_by_one_tick() -> None:
    none = build_schedule(CascadeSpec(num_blocks=4, switches=((2, 1),)))
    rec = build_schedule(CascadeSpec(num_blocks=4, switches=((2, 1),), switch_policy="recache"))
    assert rec.starts == (0, 5, 11, 16) and none.starts == (0, 5, 10, 15)
    r = rec.task(2, RECACHE_STAGE)
    assert str(r) == "B2R@d0" and r.replaces == ((0, 4), (1, 4)) and r.reads == ()
    assert rec.writes(r) == ((0, 5), (1, 5))
    assert rec.task(3, 0).reads == ((0, 5), (1, 5), (2, 4))
    assert "B2R" in str(rec)


def _mutated(s, tasks):  # type: ignore[no-untyped-def]
    return dataclasses.replace(s, tasks=tuple(tasks))


def test_validate_rejects_switch_mutations() -> None:
    s = build_schedule(CascadeSpec(num_blocks=4, switches=((2, 1),), switch_policy="recache", num_devices=2))
    tasks = list(s.tasks)
    i = next(k for k, t in enumerate(tasks) if t.kind == TaskKind.RECACHE)
    j = next(k for k, t in enumerate(tasks) if t.block == 3 and t.stage == 0)
    bad = [
        [t._replace(prompt=5) if k == j else t for k, t in enumerate(tasks)],  # wrong prompt id
        [t for k, t in enumerate(tasks) if k != i],  # recache task dropped
        [t._replace(replaces=t.replaces[:1]) if k == i else t for k, t in enumerate(tasks)],  # re-encodes too little
        [t._replace(reads=t.replaces) if k == i else t for k, t in enumerate(tasks)],  # a recache reads K/V
        [t._replace(replaces=((0, 4),)) if k == j else t for k, t in enumerate(tasks)],  # a denoise task replaces
        [t._replace(reads=((0, 4), (1, 4), (2, 4))) if k == j else t for k, t in enumerate(tasks)],  # crosses
    ]
    for mutation in bad:
        with pytest.raises(ScheduleError, match="ERROR HERE"):
            validate(_mutated(s, mutation))
    none = build_schedule(CascadeSpec(num_blocks=4, switches=((2, 1),), num_devices=2))
    with pytest.raises(ScheduleError, match="unexpected recache"):
        validate(_mutated(none, [*none.tasks[:11], tasks[i], *none.tasks[11:]]))


@pytest.mark.parametrize(
    ("switches", "policy", "param"),
    [(((5, 1),), "none", "at_block"), (((2, 1), (1, 2)), "none", "switches"), (((1, -1),), "none", "prompt"),
     ((), "sometimes", "switch_policy"), (((1,),), "none", "switches")],
)
def test_bad_switches_name_the_parameter(switches, policy: str, param: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as e:
        CascadeSpec(num_blocks=4, switches=switches, switch_policy=policy)
    assert e.value.param == param


V4_SPEC_FIELDS = ("stage_stride", "rings", "layer_split", "num_layers")


def older(data: dict, version: int) -> dict:  # type: ignore[type-arg]
    """A ``cascade-schedule/4`` object as version 3 wrote it: no ring fields, no segments."""
    data["format"] = f"cascade-schedule/{version}"
    for key in V4_SPEC_FIELDS:
        del data["spec"][key]
    for t in data["tasks"]:
        del t["segments"]
    return data


def test_version_1_files_still_read() -> None:
    import json

    s = build_schedule(CascadeSpec(num_blocks=3, lag=1, num_devices=2))
    data = older(json.loads(dumps(s)), 1)
    for key in ("switches", "switch_policy"):
        del data["spec"][key]
    for t in data["tasks"]:
        del t["prompt"]
    assert loads(json.dumps(data)) == s


def test_version_2_files_still_read() -> None:
    """Version 2 named a recache task's replaced versions in ``reads``; the reader moves them to ``replaces``."""
    import json

    s = build_schedule(CascadeSpec(num_blocks=4, switches=((2, 1),), switch_policy="recache", num_devices=2))
    data = json.loads(dumps(s))
    assert data["format"] == "cascade-schedule/4"
    data = older(data, 2)
    for t in data["tasks"]:
        if t["kind"] == "recache":
            t["reads"] = t.pop("replaces")
    assert loads(json.dumps(data)) == s


def test_version_3_files_still_read() -> None:
    """Version 3 had no stage stride, rings or segments: every task runs all layers on its device."""
    import json

    s = build_schedule(CascadeSpec(num_blocks=4, lag=2, switches=((2, 1),), switch_policy="recache", num_devices=3))
    assert loads(json.dumps(older(json.loads(dumps(s)), 3))) == s
