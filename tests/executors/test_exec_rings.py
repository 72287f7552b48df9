"""Layer rings on the distributed executor (placement ``layers``, docs/contract.md): for one schedule and seed
the latents are the reference executor's, each rank builds only its layer range, and the bytes every rank
sends are exactly the transfer plan's, per (tick, src, dst).

Each case spawns one gloo group and runs a batch of specs in it (a group costs seconds). The model is
``tiny`` with 4 layers, so rings of 2, 3 and 4 devices each get at least one.
"""

from __future__ import annotations

import collections
from typing import Any

import pytest
import torch
from exec_support import assert_promise, ring_config, run_ring_reference, run_ring_specs_on_rank
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cascade_sched import CascadeSpec, build_schedule
from cascade_sched.transfers import plan_transfers
from executors.distributed import message_sizes, rank_slice
from executors.launch import spawn
from models.slices import parameter_bytes
from tests import strategies

CONTEXTS = ("stage", "stale", "causal", "bidirectional")
SHORT = dict(num_blocks=3, lag=1, timesteps=(1000, 500), window=2, sink=1, seed=5)  # S = 3 stages


def matrix(world: int) -> list[dict[str, Any]]:
    """The issue's matrix on ``world`` ranks: every context on one ring of ``world`` devices at stride W
    (stage and stale also at W + 1 on a ring of 2); stage and stale at the strides below W, where a ring is
    not allowed, under block placement; on 4 ranks also the 2 x 2 hybrid (two rings of two) at stride 2,
    with a prompt switch under each policy where the context allows one."""
    ring = dict(num_devices=world, placement="layers", num_layers=4)
    specs = [CascadeSpec(**SHORT, **ring, stage_stride=world, attention=a) for a in CONTEXTS]
    if world == 2:
        specs += [CascadeSpec(**SHORT, **ring, stage_stride=3, attention=a) for a in ("stage", "stale")]
    specs += [CascadeSpec(**SHORT, num_devices=world, stage_stride=k, attention=a)
              for k in range(1, world) for a in ("stage", "stale")]
    if world == 4:
        hybrid = dict(SHORT, num_blocks=5, num_devices=4, rings=2, placement="layers", num_layers=4, stage_stride=2)
        specs += [CascadeSpec(**hybrid, attention=a, switches=((3, 1),),
                              switch_policy="none" if a == "stage" else "recache") for a in CONTEXTS]
    return [s.to_dict() for s in specs]


def check(specs: list[dict[str, Any]], got: list[Any]) -> None:
    """Every spec's latents within the promise of the reference; its bytes sent are the plan's traffic;
    each rank held its layer range's parameters only."""
    for spec, (latents, ranks) in zip(specs, got, strict=True):
        schedule = build_schedule(CascadeSpec.from_dict(spec))
        assert_promise(run_ring_reference(spec).numpy(), latents)
        sent: collections.Counter[tuple[int, int, int]] = collections.Counter()
        for ledger, _ in ranks:
            sent.update(ledger)
        config = ring_config(schedule.spec)
        assert dict(sent) == plan_transfers(schedule).traffic(message_sizes(config, torch.float32)), spec
        for rank, (_, nbytes) in enumerate(ranks):
            part = rank_slice(schedule.spec, config, rank)
            assert nbytes == config.parameter_count(part) * 4


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3, 4])
def test_rings_and_strides_give_the_reference_latents(world: int) -> None:
    specs = matrix(world)
    check(specs, spawn(run_ring_specs_on_rank, specs, world, timeout_s=60, threads=1))


@pytest.mark.slow
@settings(max_examples=1, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_the_bytes_sent_are_the_plans_traffic(data: st.DataObject) -> None:
    """Random ring and hybrid specs on 4 ranks (rings of 1, 2 or 4; switches under either policy): the
    executor sends exactly the plan's bytes per (tick, src, dst), with the reference's latents."""
    spec = strategies.specs(blocks=(1, 5), devices=(4, 4), steps="nominal", max_denoise=2, lags="uniform",
                            window=st.none() | st.integers(1, 3), max_sink=2, switches=2, max_prompt=3,
                            strides=(1, 5), placements=("layers", "block", "stage"), max_ring=4)
    ok = spec.filter(lambda s: s.ring_size in (1, 2, 4) and (s.num_layers or 4) <= 8)
    batch = [s.to_dict() for s in data.draw(st.lists(ok, min_size=6, max_size=6))]
    check(batch, spawn(run_ring_specs_on_rank, batch, 4, timeout_s=60, threads=1))


def test_a_rank_holds_near_one_wth_of_the_parameters() -> None:
    """The toy model loaded as the apps load it (apps.sources.load_model with the rank's slice): every rank
    reads and builds only its layers, the entry on the ring's first device and the head on its last."""
    from apps.request import ModelSource
    from apps.sources import load_model

    whole, _ = load_model(ModelSource(model="toy"))
    config = whole.config
    for w in (2, 4):
        spec = CascadeSpec(num_blocks=2, num_devices=w, placement="layers", stage_stride=w, num_layers=4)
        one, two = (config.parameter_count(config.layer_slice(0, n, entry=False, head=False)) for n in (1, 2))
        shared = 2 * one - two  # what every slice holds: the time and text embeddings
        total = 0
        for rank in range(w):
            part = rank_slice(spec, config, rank)
            model, what = load_model(ModelSource(model="toy"), part)
            held = {int(n.split(".")[1]) for n, _ in model.named_parameters() if n.startswith("blocks.")}
            assert held == set(part.layers) and part.describe() in what
            nbytes = parameter_bytes(model)
            assert nbytes == config.parameter_count(part) * 4
            assert nbytes <= parameter_bytes(whole) / w + shared * 4 + 1e-9  # its 1/W, and what every rank needs
            total += nbytes - shared * 4
        assert total == parameter_bytes(whole) - shared * 4
