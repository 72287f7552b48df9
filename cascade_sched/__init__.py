"""cascade-sched: the pure scheduling core of Block Cascading (arXiv 2511.20426).

>>> from cascade_sched import CascadeSpec, build_schedule, validate
>>> validate(build_schedule(CascadeSpec(num_blocks=8, lag=1, num_devices=5))).max_in_flight()
5

Importing this package imports neither torch nor simpy.
"""

from __future__ import annotations

from cascade_sched.errors import (
    CascadeError,
    CheckpointError,
    ConfigError,
    ExecutorError,
    ScheduleError,
    SimulationError,
)
from cascade_sched.rolling import RollingSchedule, ScheduleChunk
from cascade_sched.schedule import KVRef, Schedule, Task, build_schedule, parse_task
from cascade_sched.spec import CascadeSpec, paper_level
from cascade_sched.validate import validate

__all__ = [
    "CascadeError",
    "CascadeSpec",
    "CheckpointError",
    "ConfigError",
    "ExecutorError",
    "KVRef",
    "RollingSchedule",
    "Schedule",
    "ScheduleChunk",
    "ScheduleError",
    "SimulationError",
    "Task",
    "build_schedule",
    "paper_level",
    "parse_task",
    "validate",
]
__version__ = "0.1.0"
