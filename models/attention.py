"""Attention and RoPE of the tick forward: the kernels :class:`models.dit.CausalWanDiT` runs between its
per-layer projections, each in the one form the eager model and the compiled graphs share.

- RoPE: :func:`apply_rope` rotates adjacent (real, imag) pairs of a head by Wan's per-axis angles, given
  as the unit complex table (Wan's own form; the eager default) or its real and imaginary parts
  ``(cos, sin)`` (the graph form: TensorRT has no complex tensors). One function, a switch on the form.
- SDPA: :func:`attend` is the one attention kernel: no mask, never ``is_causal``, each call sees exactly
  its own keys (the attention rule routes which keys those are).
- Grouping: :func:`attend_groups` runs one SDPA per group of inputs with identical keys
  (:func:`cascade_sched.schedule.share_groups` says which); self-attention and the per-prompt
  cross-attention both use it. :func:`cross_attend` also has the batched form (one SDPA over inputs,
  each with its own prompt's K/V: fixed shapes whatever the mix of prompts, for the compiled graphs).
- K/V routing: :func:`gather_kv` resolves a key set from this tick, the peers' exchange, or the pool.
- Positions: :func:`rope_positions` is the rule for a task's frame positions, absolute and unbounded:
  angles are computed from the position, never looked up in Wan's 1024-row table
  (docs/models.md, "Positions past the RoPE table").

>>> q = torch.zeros(4, 2, 8)
>>> attend(q, torch.zeros(6, 2, 8), torch.ones(6, 2, 8)).shape  # (T, H, D) on (L, H, D) -> (T, H*D)
torch.Size([4, 16])
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from cascade_sched.errors import ExecutorError

__all__ = [
    "MAX_ROPE_POSITION",
    "WAN_ROPE_TABLE",
    "Attend",
    "CrossKV",
    "KVLookup",
    "KVPair",
    "KVRef",
    "Range",
    "Rope",
    "apply_rope",
    "attend",
    "attend_groups",
    "cross_attend",
    "gather_kv",
    "rope_inv_freqs",
    "rope_positions",
]

KVRef = tuple[int, int]  # (block, stage): the K/V that `block` wrote at `stage`
KVPair = tuple[Tensor, Tensor]  # (k, v), each (tokens, heads, head_dim)
KVLookup = Callable[[KVRef, int], KVPair]  # (ref, layer) -> (k, v) of a version produced before this tick
Range = tuple[int, int]  # [start, end) of an input's tokens in the tick's stream
Attend = Callable[[Tensor, Tensor, Tensor], Tensor]  # (q, k, v) -> attention output, as `attend`
Rope = Tensor | tuple[Tensor, Tensor]  # complex (N, 1, D/2), or its (real, imag) = (cos, sin)
# Cross-attention K/V of a tick, per layer. Grouped: [(token ranges, or None for every token; (k, v) each
# (L_text, H, D))] one entry per prompt. Batched: (k, v) each (n, L_text, H, D), input i's prompt at i.
CrossKV = Sequence[tuple[Sequence[Range] | None, KVPair]] | KVPair


# Rows per axis of Wan2.1's precomputed RoPE table (Wan-AI/Wan2.1 wan/modules/model.py: WanModel builds
# `rope_params(1024, ...)`; Self-Forcing, CausVid, LongLive and StreamDiffusionV2 slice it by absolute frame).
# Here it bounds nothing: it is named so that docs and tests can say where the published models stop.
WAN_ROPE_TABLE = 1024
# The largest frame position the model accepts: float64 holds every position and its angles to ~1e-7 rad
# up to here (2^31 latent frames: 17 years of 16 fps video), so nothing degrades silently before it.
MAX_ROPE_POSITION = 2**31 - 1


def rope_positions(frame_offset: int, frames: int) -> list[int]:
    """The RoPE frame positions of a task's ``frames`` patch frames that start at patch frame
    ``frame_offset``: its own absolute frame indices, past Wan's 1024-row table as well (extrapolated: the
    angles are computed from the position). A pure function of the block (``frame_offset`` is
    ``block * frames_per_block`` in patch frames), so every executor, rank and execution order agrees, and
    committed K/V (keys stored after RoPE) stays valid for every later reader.

    >>> rope_positions(5001, 3)
    [5001, 5002, 5003]
    """
    try:
        start = -1 if isinstance(frame_offset, bool) else operator.index(frame_offset)  # ints, numpy, torch
    except TypeError:
        start = -1
    if start < 0 or start + frames - 1 > MAX_ROPE_POSITION:
        raise ExecutorError(f"frame offset {frame_offset!r} is not a frame position: positions run from 0 to "
                            f"{MAX_ROPE_POSITION} (see docs/models.md, positions past the RoPE table)")
    return list(range(start, start + frames))


def rope_inv_freqs(head_dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse frequencies (float64, CPU) of the (frame, height, width) axes, as Wan splits a head:
    44/42/42 of 128 channels, i.e. 22/21/21 complex pairs.

    >>> [f.numel() for f in rope_inv_freqs(128)]
    [22, 21, 21]
    """
    d = head_dim
    dims = (d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6))
    # device="cpu" even inside `with torch.device("meta")` (loaders build the model there): the table is real
    f, h, w = (1.0 / torch.pow(10000.0, torch.arange(0, n, 2, dtype=torch.float64, device="cpu") / n)
               for n in dims)
    return f, h, w


def apply_rope(x: Tensor, rope: Rope) -> Tensor:
    """Rotate adjacent (real, imag) pairs of ``x`` (N, H, D) by the angles of ``rope`` (N, 1, D/2), as Wan
    does; computed in ``rope``'s dtype.

    ``rope`` is the unit complex table (Wan's form, the eager model's) or its parts ``(cos, sin)`` (the
    graph form). Both round each of ``a cos``, ``b sin``, ``a sin``, ``b cos`` once and then their
    difference and sum once, so they agree bit for bit wherever torch's complex multiply runs vectorised
    (D/2 a multiple of the SIMD width, as in every preset on x86); where it falls back to its scalar loop,
    which the C++ compiler may fuse into FMA, they differ by at most 2 ulp
    (``tests/models/test_models_attention.py``).

    >>> x = torch.tensor([[[1.0, 2.0]]])  # one token, one head, one (real, imag) pair
    >>> rope = torch.polar(torch.ones(1, 1, 1), torch.tensor([[[torch.pi / 2]]]))  # a quarter turn
    >>> apply_rope(x, rope).round(decimals=6).tolist()
    [[[-2.0, 1.0]]]
    >>> apply_rope(x, (rope.real, rope.imag)).round(decimals=6).tolist()  # the graph form
    [[[-2.0, 1.0]]]
    """
    if isinstance(rope, Tensor):
        xc = torch.view_as_complex(torch.unflatten(x.to(rope.real.dtype), -1, (-1, 2)).contiguous())  # (N, H, D/2)
        return torch.view_as_real(xc * rope).flatten(-2)  # (N, H, D)
    cos, sin = rope
    xr = torch.unflatten(x.to(cos.dtype), -1, (-1, 2))  # (N, H, D/2, 2)
    a, b = xr[..., 0], xr[..., 1]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)  # (N, H, D)


def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """SDPA, no mask, of queries (T, H, D) on keys/values (L, H, D) -> (T, H*D); with a leading batch
    dimension, (n, T, H, D) on (n, L, H, D) -> (n, T, H*D), each entry on its own keys.

    Inputs go in as (n, H, T, D) views: 4-D inputs reach the fused CPU kernel (3-D ones fall back to math).
    """
    if q.ndim == 3:
        return attend(q[None], k[None], v[None])[0]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (n, H, T, D)
    return out.transpose(1, 2).flatten(2)  # (n, T, H*D)


def attend_groups(
    q: Tensor, groups: Iterable[tuple[Sequence[Range] | None, KVPair]], kernel: Attend = attend
) -> Tensor:
    """One ``kernel`` call per group: the group's query rows of ``q`` (N, H, D), given as token ranges,
    on the group's (k, v); returns (N, H*D) with every row in its place. Ranges ``None`` mark the only
    group, which takes every row (no copies). ``groups`` may be lazy: each (k, v) is made when reached.

    >>> q, kv = torch.randn(6, 2, 4), (torch.randn(3, 2, 4), torch.randn(3, 2, 4))
    >>> parts = attend_groups(q, [([(0, 2), (4, 6)], kv), ([(2, 4)], kv)])
    >>> torch.allclose(parts, attend_groups(q, [(None, kv)]), atol=1e-6)
    True
    """
    out: Tensor | None = None
    for ranges, (k, v) in groups:
        if ranges is None:
            return kernel(q, k, v)
        qs = torch.cat([q[a:b] for a, b in ranges]) if len(ranges) > 1 else q[ranges[0][0]:ranges[0][1]]
        o = kernel(qs, k, v)  # (T, H*D)
        if out is None:
            out = o.new_empty(q.shape[0], o.shape[1])
        pos = 0
        for a, b in ranges:
            out[a:b] = o[pos:pos + b - a]
            pos += b - a
    if out is None:
        raise ExecutorError("attention of a tick with no inputs")
    return out


def cross_attend(q: Tensor, cross: CrossKV, kernel: Attend = attend) -> Tensor:
    """Cross-attention of the tick's queries ``q`` (N, H, D) to the text K/V: (N, H*D).

    ``cross`` grouped (a list): one SDPA per prompt over the rows that use it (:func:`attend_groups`).
    ``cross`` batched (a (k, v) pair of (n, L_text, H, D)): the stream is n equal-length inputs and input
    i attends to ``k[i], v[i]``, in one batched SDPA. Each row sees the same keys either way, and SDPA
    computes a row alike whatever rows share its call (measured bit-equal on CPU; tests bound it).
    """
    if isinstance(cross, tuple) and isinstance(cross[0], Tensor):
        pk, pv = cross
        return kernel(torch.unflatten(q, 0, (pk.shape[0], -1)), pk, pv).flatten(0, 1)  # (n, T, H*D) -> (N, H*D)
    return attend_groups(q, cross, kernel)  # type: ignore[arg-type]


def gather_kv(
    key_refs: Sequence[KVRef], layer: int, local: dict[KVRef, KVPair], peers: dict[KVRef, KVPair],
    kv: KVLookup, dtype: torch.dtype,
) -> KVPair:
    """K and V (L, H, D) of ``key_refs`` concatenated in block order; each version resolved from this tick's
    local tasks, then the peers' exchange, then the lookup of earlier versions (the attention rule)."""
    ks, vs = [], []
    for ref in key_refs:
        pair = local.get(ref)
        if pair is None:
            pair = peers.get(ref)
        if pair is None:
            pair = kv(ref, layer)
        ks.append(pair[0])
        vs.append(pair[1])
    if len(ks) == 1:
        return ks[0], vs[0]
    return torch.cat(ks).to(dtype), torch.cat(vs).to(dtype)
