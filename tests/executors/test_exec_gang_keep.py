"""A version exchanged in its own tick's gang is kept by the receiver, never sent to it a second time
(cascade_sched.transfers): the plan says so, and the distributed executor gives the same latents."""

from __future__ import annotations

import pytest
from exec_support import run_reference, run_specs_on_rank
from hypothesis import given
from test_exec_semantics import assert_close

from cascade_sched import CascadeSpec, build_schedule
from cascade_sched.transfers import plan_transfers
from executors.launch import spawn
from tests import strategies


@given(strategies.specs(blocks=(1, 8), devices=(1, 5)))
def test_no_version_reaches_a_device_twice(spec: CascadeSpec) -> None:
    s = build_schedule(spec)
    plan = plan_transfers(s)
    gang = {(m.ref, m.dst) for sends in plan.gang for m in sends}
    past = [(m.ref, m.dst) for sends in plan.past for m in sends]
    assert len(past) == len(set(past)) and not gang & set(past)
    for dst, ref in plan.kept_from_gang:
        assert (ref, dst) in gang and (dst, ref) in plan.keep_until
    # every later read on another device is served: by a past send or by a kept exchange
    for t in s.tasks:
        for ref in t.reads:
            src = s.producer(ref).device
            if src != t.device and s.version_tick(ref) < t.tick:
                assert (ref, t.device) in set(past) or (t.device, ref) in plan.kept_from_gang


@pytest.mark.slow
def test_kept_exchanges_give_the_reference_latents() -> None:
    """Lag 1 causal and bidirectional keep every committed version from the gang (no past send at all)."""
    batch = [CascadeSpec(num_blocks=5, lag=1, attention=a, window=w, num_devices=2, seed=3).to_dict()
             for a in ("causal", "bidirectional") for w in (None, 2)]
    for spec in batch:
        plan = plan_transfers(build_schedule(CascadeSpec.from_dict(spec)))
        assert plan.kept_from_gang and not any(plan.past)
    for spec, latents in zip(batch, spawn(run_specs_on_rank, batch, 2, timeout_s=60, threads=1), strict=True):
        assert_close(run_reference(spec).numpy(), latents)
