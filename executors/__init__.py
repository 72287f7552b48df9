"""Executors: run a schedule for real with the same numbers on every one of them.

``reference`` runs every task in one process; ``distributed`` runs device d of the schedule on rank d of
a torch.distributed group (gloo on CPU, NCCL on GPU). Both share :class:`executors.base.TickLoop`.
"""

from __future__ import annotations

from executors.base import Executor, RunOptions, RunResult, TickLoop
from executors.distributed import DistributedExecutor
from executors.reference import ReferenceExecutor

__all__ = ["DistributedExecutor", "Executor", "ReferenceExecutor", "RunOptions", "RunResult", "TickLoop"]
