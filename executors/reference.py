"""The reference executor: every task of a tick in one joint forward on one device (cpu or cuda)."""

from __future__ import annotations

from executors.base import BlockCallback, RunOptions, RunResult, TickLoop, Work
from executors.feed import StreamHook
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

    def run(self, work: Work, model: CausalWanDiT, options: RunOptions,
            on_block: BlockCallback | None = None, hook: StreamHook | None = None) -> RunResult:
        """Run a whole schedule, or a stream (``hook`` may switch its prompt and end it between ticks)."""
        try:
            self.loop = TickLoop(work, model, options, range(work.spec.num_devices), LocalTransport(), on_block,
                                 hook=hook, kernels=self.kernels)
            return self.loop.run()
        finally:
            self.loop = None
