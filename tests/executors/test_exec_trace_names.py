"""The simulator and the executors name trace events with one set of functions (cascade_sched.trace), so a
predicted and a measured run of one schedule have the same event names, tracks and devices."""

from __future__ import annotations

from functools import cache

import pytest
from exec_support import trace_events_on_rank

from cascade_sched import CascadeSpec, build_schedule
from cascade_sched.trace import TraceEvent
from executors.launch import spawn
from simulator import Cluster, UniformCost, simulate
from simulator.visual import trace_events

pytestmark = pytest.mark.slow

# Two devices, lag 2 (joint-attention exchanges across devices), a prompt switch with a recache task.
SPEC = CascadeSpec(num_blocks=5, lag=2, num_devices=2, switches=((3, 1),), switch_policy="recache")


@cache
def _traces() -> tuple[list[TraceEvent], list[TraceEvent]]:
    result = simulate(build_schedule(SPEC), Cluster.of("h100-sxm", 2), UniformCost(0.01, 0.001, 0.001), "tiny",
                      decode=0)
    predicted, _ = trace_events(result)
    return predicted, spawn(trace_events_on_rank, SPEC.to_dict(), 2, timeout_s=60, threads=1)


def _names(events: list[TraceEvent], track: str, with_device: bool = True) -> set[tuple[object, ...]]:
    return {(e.name, e.device) if with_device else (e.name,) for e in events if e.track == track}


@pytest.mark.parametrize("track", ["compute", "sample", "decode"])
def test_compute_sample_and_decode_slices_have_the_same_names_and_devices(track: str) -> None:
    predicted, measured = _traces()
    assert _names(predicted, track) == _names(measured, track)
    assert _names(measured, track)
    if track == "compute":
        assert ("B3R", 1) in _names(measured, track)


def test_comm_slices_have_the_same_names() -> None:
    # Which ranks record a message differs (a rank records only the messages it takes part in, the
    # simulator every device of a joint tick), so only the per-tick names are compared.
    predicted, measured = _traces()
    assert {n for n, in _names(measured, "comm", False)} >= {"exchange t4"}
    assert _names(predicted, "comm", False) == _names(measured, "comm", False)
