"""The reference executor: every task of a tick in one joint forward on one device (cpu or cuda)."""

from __future__ import annotations

from cascade_sched.schedule import Schedule
from executors.base import BlockCallback, ExtendHook, RunOptions, RunResult, TickLoop
from executors.transport import LocalTransport
from models.dit import CausalWanDiT, TickKernels


class ReferenceExecutor:
    """Runs the whole schedule in this process; device indices of the schedule only label tasks.
    ``kernels`` run the model's tick forward (None: its own modules).

    >>> from cascade_sched import CascadeSpec, build_schedule
    >>> from models import CausalWanDiT, get_config
    >>> r = ReferenceExecutor().run(build_schedule(CascadeSpec(num_blocks=2, lag=1)),
    ...                             CausalWanDiT(get_config("tiny")), RunOptions())
    >>> r.stacked().shape
    torch.Size([6, 16, 4, 4])
    """

    name = "reference"

    def __init__(self, kernels: TickKernels | None = None) -> None:
        self.kernels = kernels
        self.loop: TickLoop | None = None  # the loop while a run goes on (a server reads its K/V pool)

    def run(self, schedule: Schedule, model: CausalWanDiT, options: RunOptions,
            on_block: BlockCallback | None = None, extend: ExtendHook | None = None) -> RunResult:
        """Run ``schedule``; ``extend`` may switch to an extended schedule between ticks (a stream)."""
        try:
            self.loop = TickLoop(schedule, model, options, range(schedule.num_devices), LocalTransport(), on_block,
                                 extend=extend, kernels=self.kernels)
            return self.loop.run()
        finally:
            self.loop = None
