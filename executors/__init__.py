"""Executors: run a schedule for real with the same numbers on every one of them.

``reference`` runs every task in one process; ``distributed`` runs device d of the schedule on rank d of
a torch.distributed group (gloo on CPU, NCCL on GPU). Both share :class:`executors.base.TickLoop`.

The names below load lazily, so ``apps.generate.cli`` (imported by the ``cascade`` command line to register
its subcommands) does not pull in torch until a subcommand runs.
"""

from __future__ import annotations

from cascade_sched.lazy import lazy_exports

_EXPORTS = {
    "Executor": "executors.base",
    "RunOptions": "executors.base",
    "RunResult": "executors.base",
    "TickLoop": "executors.base",
    "Declaration": "executors.feed",
    "Stream": "executors.feed",
    "StreamView": "executors.feed",
    "DistributedExecutor": "executors.distributed",
    "ReferenceExecutor": "executors.reference",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
