"""A rank that fails says where: its rank, the tick, its tasks, and the schedule's grid with the failing cell
marked, as a schedule that breaks the contract is reported."""

from __future__ import annotations

import pytest
from exec_support import tiny_model

from cascade_sched import CascadeSpec, build_schedule
from cascade_sched.errors import ExecutorError
from executors.base import RunOptions
from executors.reference import ReferenceExecutor


def test_a_failure_names_the_tick_and_marks_its_cell_in_the_grid() -> None:
    schedule = build_schedule(CascadeSpec(num_blocks=3, lag=1, num_devices=2))
    with pytest.raises(ExecutorError) as e:
        ReferenceExecutor().run(schedule, tiny_model(), RunOptions(fail_at=(0, 2)))
    first, *grid = str(e.value).splitlines()
    assert first.startswith("rank 0 failed at tick 2 (B0S2@d0, B1S1@d1, B2S0@d0): RuntimeError: injected")
    marked = [row for row in grid if row.endswith("<-- ERROR HERE")]
    assert len(marked) == 1 and marked[0].lstrip().startswith("2 |") and "[B0S2+B2S0]" in marked[0]
