"""Full-size dry runs on the CPU (apps.calibrate.dryrun): Wan2.1 1.3B and 14B at 480x832 in bf16 on the meta
device, the reference executor's tick loop on one device, every rank's tick loop of a 5-rank block
placement and of a 4-rank layer ring (each rank its slice of the layers, hidden states handed on); every shape goes through, every rank runs each of its ticks, and what the engine allocates agrees
with the simulator's memory model (simulator.memory) for the same schedule: weights, K/V and activations
within 10% (the activations' coefficients, simulator.memory.activation_bytes, were set from the 1.3B and 14B
sequential cases; the lag-1 cases are the check).
"""

from __future__ import annotations

import pytest
import torch

from apps.calibrate.dryrun import (
    CASES,
    TOLERANCE,
    DryRun,
    LiveBytes,
    ThreadTransport,
    _Hub,
    compare,
    dry_run,
    format_table,
    meta_model,
)
from cascade_sched.errors import ExecutorError
from cascade_sched.placement import default_decode_device

pytestmark = pytest.mark.slow
IDS = [f"{m}-{'seq' if s.lag is None else f'lag{s.lag}'}-{s.num_devices}dev{'-ring' if s.placement == 'layers' else ''}"
       for m, s in CASES]
# Every case but 14B's five ranks (45 s here): its sequential case covers 14B's shapes and memory on one rank,
# and `python -m apps.calibrate.dryrun` runs all of them for docs/validation.md.
SUITE = [i for i, (m, s) in enumerate(CASES) if not (m == "wan2.1-14b" and s.num_devices > 1)]


@pytest.fixture(scope="module")
def runs() -> dict[str, DryRun]:
    return {}


def _run(runs: dict[str, DryRun], case: int) -> DryRun:
    key = IDS[case]
    if key not in runs:
        runs[key] = dry_run(*CASES[case])
    return runs[key]


@pytest.mark.parametrize("case", SUITE, ids=[IDS[i] for i in SUITE])
def test_every_rank_runs_every_tick_at_full_size(runs: dict[str, DryRun], case: int) -> None:
    run = _run(runs, case)
    schedule = run.schedule
    assert len(run.ranks) == schedule.num_devices
    for r in run.ranks:
        mine = sorted({task.tick + i for gang in schedule.gangs for task in gang  # a ring's segment i at tick + i
                       for i, (device, _, _) in enumerate(schedule.segments(task)) if device == r.rank})
        assert [f.tick for f in r.forwards] == mine
        assert all(f.kv > 0 and f.activations > 0 for f in r.forwards)
    decode = default_decode_device(schedule.spec)  # device 0, or a ring's last device
    assert run.ranks[decode].latents == schedule.num_blocks  # every clean latent reached the decode device


@pytest.mark.parametrize("case", SUITE, ids=[IDS[i] for i in SUITE])
def test_weights_and_kv_agree_with_the_memory_model(runs: dict[str, DryRun], case: int) -> None:
    run = _run(runs, case)
    rows = compare(run)
    print("\n" + format_table(run, rows))
    for c in rows:
        for part in ("weights", "kv"):
            assert abs(c.error(part)) <= TOLERANCE, (c.rank, part, c.engine[part], c.simulator[part])


@pytest.mark.parametrize("case", SUITE, ids=[IDS[i] for i in SUITE])
def test_activations_agree_with_the_memory_model(runs: dict[str, DryRun], case: int) -> None:
    for c in compare(_run(runs, case)):
        assert abs(c.error("activations")) <= TOLERANCE, (c.rank, c.engine, c.simulator)


def test_a_message_of_another_shape_is_refused() -> None:
    model = meta_model("tiny")
    hub = _Hub(timeout_s=5)
    transport = ThreadTransport(1, hub, model, LiveBytes())
    hub.put(("latent", 0, 0, "next", 1), torch.empty(16, 3, 4, 5, device="meta"))
    with pytest.raises(ExecutorError, match=r"is \(16, 3, 4, 5\) torch.float32, expected \(16, 3, 4, 4\)"):
        transport._receive(("latent", 0, 0, "next", 1), (16, 3, 4, 4), torch.float32)
