"""How K/V and latents move between the processes of one run: the tick loop's one seam to the outside.

The loop hands a transport exactly the messages of the :class:`~cascade_sched.transfers.TransferPlan` it
runs (those of one tick, or of one layer inside a tick's forward) and what it has to send; the transport
sends what this process owes, and returns what arrived. It never reads or writes the loop's state: the
loop keeps what arrives in its own K/V pool and latents.

- :class:`LocalTransport`: every device in this process (the reference executor): nothing moves.
- ``executors.distributed.DistributedTransport``: one device per rank, point to point (K/V of the rank's
  layer range, latents, and a layer ring's hidden states).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from cascade_sched.schedule import KVRef
from cascade_sched.trace import TraceEvent
from cascade_sched.transfers import HiddenSend, KVSend, LatentSend
from models.config import ModelConfig
from models.dit import KVPair
from models.layers import act_dtype

__all__ = ["LocalTransport", "Mail", "Transport", "hidden_message"]


def hidden_message(config: ModelConfig, dtype: torch.dtype) -> tuple[tuple[int, int, int], torch.dtype]:
    """The shape and dtype of one message of a ring hop: one forward member's residual stream (its patch
    frames x tokens per frame x dim) in the activation dtype of weights of ``dtype``.

    >>> from models.config import get_config
    >>> hidden_message(get_config("tiny"), torch.bfloat16)
    ((3, 4, 32), torch.float32)
    """
    return (config.frames_per_block // config.patch_size[0], config.tokens_per_frame, config.dim), act_dtype(dtype)


@dataclass
class Mail:
    """What a tick's messages carry to or from this process: K/V versions (every layer of this process's
    range, in layer order), latents and a ring's hidden states, keyed as the plan names them."""

    kv: dict[KVRef, list[KVPair]] = field(default_factory=dict)
    latents: dict[tuple[int, str], Tensor] = field(default_factory=dict)  # (block, purpose) -> latent
    hidden: dict[KVRef, list[Tensor]] = field(default_factory=dict)  # (block, stage) -> per forward member


class Transport(Protocol):
    """What a tick loop asks of the processes around it (identity within one process)."""

    def exchange(self, tick: int, layer: int, sends: Sequence[KVSend],
                 local: Mapping[KVRef, KVPair]) -> dict[KVRef, KVPair]:
        """Per-layer joint attention inside ``tick``'s forward: send the versions of ``local`` that
        ``sends`` names (that layer's K/V), return the peers' versions this process reads."""
        ...

    def post(self, tick: int, kv: Sequence[KVSend], latents: Sequence[LatentSend], hops: Sequence[HiddenSend],
             outbox: Mail) -> Mail:
        """After ``tick``: send what ``outbox`` holds of the messages named, and return what arrives for
        this process. Arriving K/V may still be in flight: :meth:`wait_kv` before a layer is read; latents
        and hidden states have arrived when it returns."""
        ...

    def wait_kv(self, ref: KVRef, layer: int) -> None:
        """Block until a received version's layer has arrived (no-op for local versions)."""
        ...

    def finish(self) -> None:
        """Complete every outstanding message."""
        ...

    def events(self, t0: float) -> list[TraceEvent]:
        """The communication trace of the run, on its clock (``t0`` is its ``perf_counter`` start)."""
        ...


class LocalTransport:
    """Everything in one process: nothing moves."""

    def exchange(self, tick: int, layer: int, sends: Sequence[KVSend],
                 local: Mapping[KVRef, KVPair]) -> dict[KVRef, KVPair]:
        return {}

    def post(self, tick: int, kv: Sequence[KVSend], latents: Sequence[LatentSend], hops: Sequence[HiddenSend],
             outbox: Mail) -> Mail:
        return Mail()

    def wait_kv(self, ref: KVRef, layer: int) -> None:
        return None

    def finish(self) -> None:
        return None

    def events(self, t0: float) -> list[TraceEvent]:
        return []
