"""Identical semantics: one schedule and seed give the same latents on every executor and world size.

Spawning a gloo group costs seconds, so each hypothesis example draws a *batch* of specs and runs them
all inside one group.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from exec_support import assert_promise, run_reference, run_specs_on_rank, tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cascade_sched import CascadeSpec, build_schedule
from executors.base import RunOptions
from executors.launch import spawn
from executors.reference import ReferenceExecutor
from tests import strategies

pytestmark = pytest.mark.slow


def specs(devices: int) -> st.SearchStrategy[dict]:  # type: ignore[type-arg]
    """Small specs on exactly ``devices`` devices, as dicts (they pickle to the spawned ranks)."""
    return strategies.specs(blocks=(1, 5), devices=(devices, devices), steps="nominal", max_denoise=4,
                            lags="uniform", window=st.none() | st.integers(1, 3), max_sink=2,
                            seeds=(0, 3)).map(CascadeSpec.to_dict)


def assert_close(a: np.ndarray, b: np.ndarray) -> None:
    assert_promise(a, b, torch.float32)


@pytest.mark.parametrize("world", [2, 3])
@settings(max_examples=2, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_distributed_matches_reference(world: int, data: st.DataObject) -> None:
    batch = data.draw(st.lists(specs(world), min_size=6, max_size=6))
    got = spawn(run_specs_on_rank, batch, world, timeout_s=60, threads=1)
    for spec, latents in zip(batch, got, strict=True):
        assert_close(run_reference(spec).numpy(), latents)


def test_placement_and_world_size_never_change_the_numbers() -> None:
    base = dict(num_blocks=5, lag=1, attention="bidirectional", window=3, sink=1, seed=2)
    want = run_reference(CascadeSpec(**base, num_devices=1).to_dict()).numpy()
    for placement in ("block", "stage"):
        for devices in (1, 2, 4):
            spec = CascadeSpec(**base, num_devices=devices, placement=placement).to_dict()
            assert_close(run_reference(spec).numpy(), want)
    batch = [CascadeSpec(**base, num_devices=2, placement=p).to_dict() for p in ("block", "stage")]
    for latents in spawn(run_specs_on_rank, batch, 2, timeout_s=60, threads=1):
        assert_close(want, latents)
    # float64: the same rounding differences, 1e-16 small (not bit-identical: each rank batches its own tasks)
    want64 = run_reference(batch[0], torch.float64).numpy()
    for latents in spawn(functools.partial(run_specs_on_rank, dtype="float64"), batch, 2, timeout_s=60, threads=1):
        assert_promise(want64, latents, torch.float64)


def test_stale_reads_older_versions_and_so_differs() -> None:
    base = dict(num_blocks=4, window=None, sink=0, seed=1)
    causal = run_reference(CascadeSpec(**base, lag=1, attention="causal").to_dict())
    stale = run_reference(CascadeSpec(**base, lag=1, attention="stale").to_dict())
    # Block 0 reads nobody, so it is the same; later blocks read older in-flight versions under stale.
    f = 3
    assert torch.equal(causal[:f], stale[:f])
    assert not torch.allclose(causal[f:], stale[f:], rtol=1e-4, atol=1e-6)
    # At lag = S nothing is in flight together: stale, causal and bidirectional are one schedule.
    seq = {a: run_reference(CascadeSpec(**base, attention=a).to_dict()) for a in ("causal", "stale", "bidirectional")}
    assert torch.equal(seq["causal"], seq["stale"]) and torch.equal(seq["causal"], seq["bidirectional"])


def test_lag_s_equals_the_plain_sequential_loop() -> None:
    sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
    from test_models_equivalence import NUM_BLOCKS, SEED, _model, reference_loop

    for window, sink in ((None, 0), (2, 1)):
        model = _model(torch.float64)
        want = reference_loop(model, torch.float64, window=window, sink=sink)
        model.drop_prompt("p")
        spec = CascadeSpec(num_blocks=NUM_BLOCKS, seed=SEED, window=window, sink=sink)
        got = ReferenceExecutor().run(build_schedule(spec), model, RunOptions(prompt="a fox in the snow"))
        for a, b in zip(want, got.latents, strict=True):
            assert (a - b).abs().max().item() <= 1e-12


def test_kv_pool_frees_by_the_schedule() -> None:
    spec = CascadeSpec(num_blocks=8, lag=1, window=2, sink=1)
    r = ReferenceExecutor().run(build_schedule(spec), tiny_model(), RunOptions())
    per_version = 2 * 2 * 12 * 32 * 4  # layers x (k, v) x tokens x dim x float32 bytes
    # Sink + window: at most the sink, one committed predecessor and the newest commit are held at once.
    assert r.peak_kv_bytes <= 3 * per_version
    unbounded = ReferenceExecutor().run(build_schedule(CascadeSpec(num_blocks=8, lag=1)), tiny_model(), RunOptions())
    assert unbounded.peak_kv_bytes > r.peak_kv_bytes


def test_reference_and_distributed_agree_across_prompt_switches() -> None:
    batch = [
        CascadeSpec(num_blocks=6, lag=lag, attention=att, placement=pl, num_devices=2, window=3, sink=1,
                    switches=((0, 2), (2, 1), (4, 3)), switch_policy=policy).to_dict()
        for policy in ("none", "recache")
        for lag, att, pl in ((5, "causal", "block"), (1, "bidirectional", "block"), (2, "stale", "stage"))
    ]
    for spec, latents in zip(batch, spawn(run_specs_on_rank, batch, 2, timeout_s=60, threads=1), strict=True):
        assert_close(run_reference(spec).numpy(), latents)


def test_a_switch_changes_only_the_blocks_after_it_and_recache_changes_their_context() -> None:
    base = dict(num_blocks=5, window=3, sink=1)
    plain = run_reference(CascadeSpec(**base).to_dict())
    none = run_reference(CascadeSpec(**base, switches=((3, 1),)).to_dict())
    recache = run_reference(CascadeSpec(**base, switches=((3, 1),), switch_policy="recache").to_dict())
    f = 3 * 3  # blocks 0..2 come before the switch
    assert torch.equal(plain[:f], none[:f]) and torch.equal(none[:f], recache[:f])
    assert not torch.allclose(plain[f:], none[f:])
    # recache re-encodes blocks 0..2 under the new prompt, so blocks 3, 4 see a different context
    assert not torch.allclose(none[f:], recache[f:])
