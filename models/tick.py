"""The values of one tick's forward: its inputs, the state that passes between the layer ranges of a ring,
its outputs, and the kernels protocol its pieces run through.

A tick runs in three pieces, each usable alone (``models.dit.CausalWanDiT``): the *entry*
(``enter_tick``: plan, patch embedding, time conditioning, RoPE), *layers* ``[a, b)`` (``run_layers``, with
the K/V lookup and the per-layer exchange), and the *exit* (``exit_tick``: head and unpatchify). On one
device they run back to back (``forward_tick``); in a layer ring each rank runs its own range and hands the
next rank one :class:`HiddenState`.

What crosses a hop, and what does not. A hop sends the residual stream ``x`` (G, P, dim) in the activation
dtype, one tensor of ``tokens x dim x activation bytes`` (``ModelConfig.hidden_bytes``). Everything else a
rank needs is a function of the task inputs every rank of the ring already holds, so it is recomputed there
(:class:`TickContext`): the per-frame time conditioning ``e``/``e0`` (from the timesteps, through the time
embedding and projection every slice holds), RoPE (from the frame offsets), the token ranges and attention
groups (from the refs and reads), and the prompts' cross-attention K/V of the rank's own layers (from the
prompt keys, through the text embedding every slice holds).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from .attention import CrossKV, KVPair, KVRef, Range, Rope

__all__ = ["Exchange", "HiddenState", "SliceOutput", "TaskInput", "TickContext", "TickKernels", "TickOutput",
           "sinusoidal_embedding"]

Exchange = Callable[[int, dict[KVRef, KVPair]], dict[KVRef, KVPair]]  # (layer, local) -> peers' versions


@dataclass
class TaskInput:
    """One (block, stage) task of a tick, as the model sees it."""

    ref: KVRef  # (block, stage) this task computes; its K/V is published as this version
    latent: Tensor  # (C, F, H, W) the block's latent at this stage's input
    timestep: float  # effective flow-matching timestep in [0, 1000]; 0 for the cache pass
    frame_offset: int  # absolute index of the block's first latent frame (block * frames_per_block)
    prompt: Hashable  # key into the model's prompt cache (see `CausalWanDiT.register_prompt`)
    reads: Sequence[KVRef] = ()  # K/V versions of OTHER blocks this task attends to


@dataclass
class TickOutput:
    """What one tick returns, in the order of its tasks."""

    velocity: list[Tensor]  # per task (C, F, H, W), activation dtype
    kv: list[list[KVPair]]  # per task, per layer (k, v), each (tokens, heads, head_dim), weight dtype


@dataclass(frozen=True)
class HiddenState:
    """The residual stream of a tick between two layer ranges: the one tensor a ring hop sends.

    ``x`` is (G, P, dim) in the activation dtype, G the patch frames of the tick's tasks in task order and
    P the tokens per frame. ``layer`` is the first layer not yet run; the receiver knows it from its own
    slice, so it is a check, not a second message.
    """

    x: Tensor
    layer: int

    @property
    def nbytes(self) -> int:
        """Bytes of the hand-off (``ModelConfig.hidden_bytes`` of its tokens)."""
        return self.x.numel() * self.x.element_size()


@dataclass
class TickContext:
    """What a rank derives from a tick's task inputs alone, for the layers it holds: never sent."""

    refs: list[KVRef]  # the version each task computes, in task order
    frames: list[int]  # patch frames per task
    ranges: list[Range]  # each task's tokens in the stream
    groups: list[tuple[tuple[KVRef, ...], list[int]]]  # tasks sharing one self-attention (same key set)
    e: Tensor  # (G, dim) per-frame time embedding, activation dtype (the head's conditioning)
    e0: Tensor  # (G, 6, dim) per-frame projected time embedding, activation dtype (each layer's adaLN)
    rope: Rope  # (N, 1, D/2) complex, or its (cos, sin) in the graph forms
    cross: list[CrossKV]  # per layer of `layers`: the prompts' cross-attention K/V
    layers: range  # the layers `cross` covers


@dataclass
class SliceOutput:
    """What one rank's slice returns for a tick, in the order of its tasks."""

    hidden: HiddenState | None  # for the next rank; None when the slice ends with the head (or the tick is empty)
    velocity: list[Tensor]  # per task (C, F, H, W), activation dtype, when the slice holds the head; else []
    kv: list[list[KVPair]]  # per task, per layer of the slice (index: layer - first), weight dtype


def sinusoidal_embedding(dim: int, t: Tensor) -> Tensor:
    """Wan's timestep sinusoid, in float64: ``[cos(t * w_j), sin(t * w_j)]`` with ``w_j = 10000^(-j/half)``.

    >>> sinusoidal_embedding(4, torch.tensor([0.0])).tolist()
    [[1.0, 1.0, 0.0, 0.0]]
    """
    half = dim // 2
    t = t.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = torch.outer(t, freqs)  # (n, half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)  # (n, dim)


class TickKernels(Protocol):
    """The pieces a tick's forward runs, swapped as one (as nanoGPT switches its attention kernel inside
    one module): ``models.dit.EagerKernels`` are the model's own modules, the compiled executor runs graphs
    exported from those same modules. The model owns everything between the pieces: planning, RoPE
    tables, K/V routing, the exchange and the attention groups."""

    graph_forms: bool  # RoPE as (cos, sin) and cross-attention batched over inputs: fixed-shape graphs

    def embed(self, latents: Sequence[Tensor], temb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Latents (C, F, H, W) and sinusoids (n, freq_dim) -> x (G, P, dim), e (G, dim), e0 (G, 6, dim)."""
        ...

    def pre(self, layer: int, x: Tensor, e0: Tensor, rope: Rope) -> tuple[Tensor, Tensor, Tensor]:
        """Block `layer`'s modulation and `pre_attention`: q, k, v each (N, H, D)."""
        ...

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """One attention group: q (T, H, D) on k, v (L, H, D) -> (T, H*D) (`models.attention.attend`)."""
        ...

    def post(self, layer: int, x: Tensor, y: Tensor, e0: Tensor, cross: CrossKV) -> Tensor:
        """Block `layer`'s modulation and `post_attention`: the next x (G, P, dim)."""
        ...

    def head(self, x: Tensor, e: Tensor, frames: Sequence[int]) -> Sequence[Tensor]:
        """Head and unpatchify: per-task velocity (C, F, H, W), activation dtype."""
        ...
