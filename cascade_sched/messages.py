"""The messages of a transfer plan, as small values, and their sizes on the wire.

:mod:`cascade_sched.transfers` derives which of them a schedule sends; the executors post exactly these
and the simulator prices exactly these. The message pattern the distributed executor uses: a gang send is
one message per layer of its range (K and V stacked); a past send is two messages per layer (K, then V);
a latent is one message; a ring hop is one message per forward member. :class:`MessageSizes` states those
sizes once.
"""

from __future__ import annotations

from typing import NamedTuple

from cascade_sched.schedule import KVRef


class KVSend(NamedTuple):
    """Send layers ``[first_layer, end_layer)`` of version ``ref``'s K/V from device ``src`` to ``dst``
    (``end_layer`` None: every layer of the model, whose count the schedule does not know)."""

    ref: KVRef
    src: int
    dst: int
    first_layer: int = 0
    end_layer: int | None = None

    def layers(self, num_layers: int) -> range:
        """The layers this send carries, of a model of ``num_layers`` layers.

        >>> KVSend((0, 0), 0, 1).layers(30), KVSend((0, 0), 0, 1, 8, 16).layers(30)
        (range(0, 30), range(8, 16))
        """
        return range(self.first_layer, num_layers if self.end_layer is None else self.end_layer)


NEXT, DECODE, REENCODE = "next", "decode", "recache"


class LatentSend(NamedTuple):
    """Send block ``block``'s latent from ``src`` to ``dst``.

    ``purpose`` ``next``: the input of its stage ``stage`` on another device; ``decode``: its clean latent
    to the decode device; ``recache``: its clean latent to the device of a recache task that re-encodes it.
    """

    block: int
    stage: int
    src: int
    dst: int
    purpose: str = NEXT


class HiddenSend(NamedTuple):
    """A ring hop: task (``block``, ``stage``)'s hidden states from ``src`` to the next device of its
    ring, ``dst``; ``members`` forward members (1, or the blocks a recache task re-encodes)."""

    block: int
    stage: int
    src: int
    dst: int
    members: int = 1


class MessageSizes(NamedTuple):
    """Bytes of one message of each kind, and how many messages one send is (see the module docstring)."""

    gang: int  # one layer of one version, K and V stacked; one per layer of a gang send's range
    past: int  # one layer's K, or its V; two per layer of a past send's range
    latent: int  # one block's latent
    layers: int  # the model's layers: a send of all layers (end_layer None) carries this many
    hidden: int = 0  # one forward member's hidden states at a ring hop (tokens x dim x activation bytes)


def message_bytes(layer_kv_bytes: int, num_layers: int, latent_bytes: int, hidden_bytes: int = 0) -> MessageSizes:
    """The executor's message sizes for a model whose K and V of one block in one layer take
    ``layer_kv_bytes``, whose latent of one block takes ``latent_bytes``, and whose hidden states of one
    block between two layers take ``hidden_bytes`` (tokens x dim x the activations' bytes per element).

    >>> message_bytes(1000, 30, 64)
    MessageSizes(gang=1000, past=500, latent=64, layers=30, hidden=0)
    """
    return MessageSizes(layer_kv_bytes, layer_kv_bytes // 2, latent_bytes, num_layers, hidden_bytes)


GANG, PAST, LATENT, HOP = "gang", "past", "latent", "hop"


class Transfer(NamedTuple):
    """One send of the plan, priced: ``kind`` gang, past, latent or hop, at ``tick``, ``messages`` wire
    messages of ``nbytes`` bytes in all."""

    tick: int
    kind: str
    src: int
    dst: int
    messages: int
    nbytes: int


class KVHold(NamedTuple):
    """K/V residency: ``device`` keeps layers ``[first_layer, end_layer)`` of ``ref`` until tick ``until``
    (the last tick a task there reads it after the tick that wrote it)."""

    device: int
    first_layer: int
    end_layer: int | None
    ref: KVRef
    until: int
