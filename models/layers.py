"""The layers of a Wan2.1 transformer: norms, the block (split at its self-attention), the output head.

Parameter names are exactly Wan2.1's (``blocks.{i}.self_attn.q``, ``blocks.{i}.norm3``, ``head.head``, ...),
so its checkpoints load into :class:`models.dit.CausalWanDiT` unchanged. The attention kernels and RoPE
come from :mod:`models.attention`; which keys each token sees is decided by the tick forward.

Precision: the residual stream, norms, modulation and RoPE run in the *activation dtype* (float32 for
bf16/fp16 weights, like Wan's autocast regions; the weight dtype otherwise); matmuls and attention run in
the weight dtype.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import CrossKV, Rope, apply_rope, attend, cross_attend
from .config import ModelConfig

__all__ = ["Head", "LayerNorm", "Modulation", "RMSNorm", "SelfAttention", "WanBlock", "act_dtype"]

Modulation = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]  # each (G, 1, dim)


def act_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the residual stream for weights of `dtype` (half types widen to float32)."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


class RMSNorm(nn.Module):
    """RMS norm over the whole hidden size (Wan's `norm_q` / `norm_k`), computed in the activation dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(act_dtype(x.dtype))
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in the input's dtype (the activation dtype); weights follow it."""

    def forward(self, x: Tensor) -> Tensor:
        w = None if self.weight is None else self.weight.to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.layer_norm(x, self.normalized_shape, w, b, self.eps)


def _linear(layer: nn.Module, x: Tensor) -> Tensor:
    """`layer(x)` (an `nn.Linear`) with `x` cast to the weight dtype (the residual stream may be wider)."""
    lin = cast(nn.Linear, layer)
    return F.linear(x.to(lin.weight.dtype), lin.weight, lin.bias)


def _heads(x: Tensor, heads: int) -> Tensor:
    """(..., dim) -> (..., heads, head_dim), a view."""
    return torch.unflatten(x, -1, (heads, -1))


class SelfAttention(nn.Module):
    """Wan's self-attention projections; the attention itself is done by the tick (it owns the KV)."""

    def __init__(self, dim: int, eps: float, qk_norm: bool) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q: nn.Module = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k: nn.Module = RMSNorm(dim, eps) if qk_norm else nn.Identity()


class WanBlock(nn.Module):
    """One Wan2.1 transformer block, split at the self-attention so the tick can route K/V.

    `pre_attention` and `post_attention` are pure tensor functions of fixed shapes, so a compiled
    executor exports them per shape; the attention between them is the scheduling decision.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim = cfg.dim
        self.num_heads = cfg.num_heads
        self.norm1 = LayerNorm(dim, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, cfg.eps, cfg.qk_norm)
        self.norm3: nn.Module = (
            LayerNorm(dim, eps=cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        )
        self.cross_attn = SelfAttention(dim, cfg.eps, cfg.qk_norm)  # Wan's T2V cross-attn: same layout
        self.norm2 = LayerNorm(dim, eps=cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def modulate(self, e0: Tensor) -> Modulation:
        """Per-frame adaLN terms from the projected time embedding e0 (G, 6, dim): six (G, 1, dim)."""
        m = self.modulation.to(e0.dtype) + e0  # (G, 6, dim)
        return tuple(m.unsqueeze(2).unbind(1))  # type: ignore[return-value]

    def pre_attention(self, x: Tensor, mod: Modulation, rope: Rope) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys, values of the residual stream x (G, P, dim); each (G*P, heads, head_dim).

        Keys and queries are RMS-normed, then rotated by RoPE (`rope`: the complex table (G*P, 1, D/2) of
        `CausalWanDiT.rope`, or its (cos, sin) parts; see `models.attention.apply_rope`).
        """
        shift, scale = mod[0], mod[1]
        h = torch.addcmul(shift, self.norm1(x), 1 + scale).flatten(0, 1)  # (N, dim)
        attn = self.self_attn
        wdtype = attn.q.weight.dtype
        q = _heads(attn.norm_q(_linear(attn.q, h)), self.num_heads)  # (N, H, D)
        k = _heads(attn.norm_k(_linear(attn.k, h)), self.num_heads)  # (N, H, D)
        v = _heads(_linear(attn.v, h), self.num_heads)  # (N, H, D)
        return apply_rope(q, rope).to(wdtype), apply_rope(k, rope).to(wdtype), v.to(wdtype)

    def post_attention(self, x: Tensor, y: Tensor, mod: Modulation, cross: CrossKV) -> Tensor:
        """Finish the block: output projection + gate, cross-attention, modulated FFN. x (G, P, dim).

        `y` (G*P, dim) is the self-attention output. `cross` is the text K/V, grouped per prompt (a list
        of (token ranges or None for all tokens, the prompt's (k, v))) or batched over the stream's
        equal-length inputs ((k, v) each (n, L_text, H, D)); see `models.attention.cross_attend`.
        """
        gate_msa, shift_mlp, scale_mlp, gate_mlp = mod[2], mod[3], mod[4], mod[5]
        act = x.dtype
        x = torch.addcmul(x, _linear(self.self_attn.o, y).to(act).view_as(x), gate_msa)
        c = self.norm3(x).flatten(0, 1)  # (N, dim)
        ca = self.cross_attn
        q = _heads(ca.norm_q(_linear(ca.q, c)), self.num_heads).to(ca.q.weight.dtype)  # (N, H, D)
        x = x + _linear(ca.o, cross_attend(q, cross, attend)).to(act).view_as(x)
        h = torch.addcmul(shift_mlp, self.norm2(x), 1 + scale_mlp)  # (G, P, dim)
        f = _linear(self.ffn[2], self.ffn[1](_linear(self.ffn[0], h)))
        return torch.addcmul(x, f.to(act), gate_mlp)


class Head(nn.Module):
    """Wan's output head: modulated LayerNorm then a linear to prod(patch) * C values per token."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm = LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_channels)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        """x (G, P, dim), per-frame time embedding e (G, dim) -> (G, P, prod(patch) * C)."""
        m = self.modulation.to(e.dtype) + e.unsqueeze(1)  # (G, 2, dim)
        shift, scale = m[:, 0:1], m[:, 1:2]  # (G, 1, dim)
        return _linear(self.head, torch.addcmul(shift, self.norm(x), 1 + scale)).to(x.dtype)
