"""The block-causal Wan2.1-family diffusion transformer, with an explicit, schedule-driven KV interface.

Structure (parameter names are exactly Wan2.1's, so its checkpoints load by stripping wrappers only):

    patch_embedding   Conv3d(C, dim, kernel = stride = (1, 2, 2)), applied as one matmul over patches
    text_embedding    Linear(text_dim, dim) -> GELU(tanh) -> Linear(dim, dim)
    time_embedding    Linear(256, dim) -> SiLU -> Linear(dim, dim)        (sinusoid of t, per frame)
    time_projection   SiLU -> Linear(dim, 6 * dim)                       (adaLN shift/scale/gate x 2)
    blocks[i]         norm1, self_attn{q,k,v,o,norm_q,norm_k}, norm3, cross_attn{...}, norm2, ffn.0/.2,
                      modulation (1, 6, dim)
    head              norm, head Linear(dim, prod(patch) * C), modulation (1, 2, dim)

What differs from Wan's bidirectional forward is only *which* keys each token sees. A tick runs several
tasks, each one (block, stage); task i attends to its own block's tokens and to the K/V of the block
versions in ``tasks[i].reads`` (concatenated in block order), nothing else. Linear layers run once over
the tokens of all tasks of the tick; attention runs per distinct key set with SDPA and no mask.

Precision: the residual stream, norms, modulation and RoPE run in the *activation dtype* (float32 for
bf16/fp16 weights, like Wan's autocast regions; the weight dtype otherwise); matmuls and attention run in
the weight dtype. K/V are produced and published in the weight dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cascade_sched.errors import ConfigError, ExecutorError

from .config import ModelConfig

__all__ = [
    "CausalWanDiT",
    "Exchange",
    "KVLookup",
    "KVRef",
    "TaskInput",
    "TickOutput",
    "WanBlock",
    "gather_kv",
    "sinusoidal_embedding",
]

KVRef = tuple[int, int]  # (block, stage): the K/V that `block` wrote at `stage`
KVPair = tuple[Tensor, Tensor]  # (k, v), each (tokens, heads, head_dim)
KVLookup = Callable[[KVRef, int], KVPair]  # (ref, layer) -> (k, v) of a version produced before this tick
Exchange = Callable[[int, dict[KVRef, KVPair]], dict[KVRef, KVPair]]  # (layer, local) -> peers' versions
Modulation = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]  # each (G, 1, dim)


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


def _act_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the residual stream for weights of `dtype` (half types widen to float32)."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _rope_inv_freqs(head_dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse frequencies of the (frame, height, width) axes, as Wan splits a head: 44/42/42 of 128."""
    d = head_dim
    dims = (d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6))
    return tuple(  # type: ignore[return-value]
        1.0 / torch.pow(10000.0, torch.arange(0, n, 2, dtype=torch.float64, device="cpu") / n) for n in dims
    )


class RMSNorm(nn.Module):
    """RMS norm over the whole hidden size (Wan's `norm_q` / `norm_k`), computed in the activation dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(_act_dtype(x.dtype))
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in the input's dtype (the activation dtype); weights follow it."""

    def forward(self, x: Tensor) -> Tensor:
        w = None if self.weight is None else self.weight.to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.layer_norm(x, self.normalized_shape, w, b, self.eps)


def _apply_rope(x: Tensor, freqs: Tensor) -> Tensor:
    """Rotate adjacent (real, imag) pairs of `x` (N, H, D) by unit complex `freqs` (N, 1, D/2), as Wan does."""
    xc = torch.view_as_complex(x.to(freqs.real.dtype).unflatten(-1, (-1, 2)).contiguous())  # (N, H, D/2)
    return torch.view_as_real(xc * freqs).flatten(-2)  # (N, H, D)


def _linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """`layer(x)` with `x` cast to the weight dtype (the residual stream may be wider)."""
    return F.linear(x.to(layer.weight.dtype), layer.weight, layer.bias)


def _attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """SDPA of queries (T, H, D) on keys/values (L, H, D), no mask; returns (T, H*D).

    Inputs go in as (1, H, T, D) views: 4-D inputs reach the fused CPU kernel (3-D ones fall back to math).
    """
    out = F.scaled_dot_product_attention(q[None].transpose(1, 2), k[None].transpose(1, 2), v[None].transpose(1, 2))
    return out[0].transpose(0, 1).flatten(1)  # (T, H*D)


def gather_kv(
    key_refs: Sequence[KVRef], layer: int, local: dict[KVRef, KVPair], peers: dict[KVRef, KVPair],
    kv: KVLookup, dtype: torch.dtype,
) -> KVPair:
    """K and V (L, H, D) of `key_refs` concatenated in block order; each version resolved from this tick's
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
    executor can compile them per shape; the attention between them is the scheduling decision.
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

    def pre_attention(self, x: Tensor, mod: Modulation, freqs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys, values of the residual stream x (G, P, dim); each (G*P, heads, head_dim).

        Keys and queries are RMS-normed, then rotated by RoPE (`freqs`: complex (G*P, 1, head_dim/2)).
        """
        shift, scale = mod[0], mod[1]
        h = torch.addcmul(shift, self.norm1(x), 1 + scale).flatten(0, 1)  # (N, dim)
        attn = self.self_attn
        wdtype = attn.q.weight.dtype
        q = attn.norm_q(_linear(attn.q, h)).unflatten(-1, (self.num_heads, -1))  # (N, H, D)
        k = attn.norm_k(_linear(attn.k, h)).unflatten(-1, (self.num_heads, -1))  # (N, H, D)
        v = _linear(attn.v, h).unflatten(-1, (self.num_heads, -1))  # (N, H, D)
        q = _apply_rope(q, freqs).to(wdtype)
        k = _apply_rope(k, freqs).to(wdtype)
        return q, k, v.to(wdtype)

    def post_attention(
        self,
        x: Tensor,
        y: Tensor,
        mod: Modulation,
        cross: Sequence[tuple[Sequence[tuple[int, int]] | None, KVPair]],
    ) -> Tensor:
        """Finish the block: output projection + gate, cross-attention, modulated FFN. x (G, P, dim).

        `y` (G*P, dim) is the self-attention output. `cross` lists (token ranges or None for all tokens,
        the prompt's cross-attention (k, v)) per prompt used in the tick.
        """
        gate_msa, shift_mlp, scale_mlp, gate_mlp = mod[2], mod[3], mod[4], mod[5]
        act = x.dtype
        x = torch.addcmul(x, _linear(self.self_attn.o, y).to(act).view_as(x), gate_msa)
        # Cross-attention to the text: one SDPA per prompt over all the tokens that use it.
        c = self.norm3(x).flatten(0, 1)  # (N, dim)
        ca = self.cross_attn
        q = ca.norm_q(_linear(ca.q, c)).unflatten(-1, (self.num_heads, -1)).to(ca.q.weight.dtype)  # (N, H, D)
        if len(cross) == 1 and cross[0][0] is None:
            out = _attend(q, *cross[0][1])  # (N, dim)
        else:
            out = q.new_empty(q.shape[0], q.shape[1] * q.shape[2])
            for ranges, (pk, pv) in cross:
                assert ranges is not None
                qs = torch.cat([q[a:b] for a, b in ranges]) if len(ranges) > 1 else q[ranges[0][0]:ranges[0][1]]
                o = _attend(qs, pk, pv)
                pos = 0
                for a, b in ranges:
                    out[a:b] = o[pos:pos + b - a]
                    pos += b - a
        x = x + _linear(ca.o, out).to(act).view_as(x)
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


class CausalWanDiT(nn.Module):
    """Wan2.1 DiT driven tick by tick: each task attends to exactly the K/V versions it reads.

    >>> from models.config import get_config
    >>> model = CausalWanDiT(get_config("tiny"))
    >>> model.register_prompt("p", torch.zeros(3, 32))
    >>> task = TaskInput(ref=(0, 0), latent=torch.zeros(16, 3, 4, 4), timestep=1000.0,
    ...                  frame_offset=0, prompt="p", reads=())
    >>> out = model.forward_tick([task], kv=lambda ref, layer: None)
    >>> out.velocity[0].shape, out.kv[0][0][0].shape
    (torch.Size([16, 3, 4, 4]), torch.Size([12, 2, 16]))
    """

    def __init__(self, config: ModelConfig, *, seed: int | None = 0) -> None:
        """Build the model; with `seed`, initialise weights deterministically (Wan's scheme, see below)."""
        super().__init__()
        cfg = self.config = config
        dim = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_channels, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList(WanBlock(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)
        self._inv_freqs = _rope_inv_freqs(cfg.head_dim)  # float64, CPU; moved per call (tiny)
        self._hw_angles: dict[torch.device, Tensor] = {}
        self._prompts: dict[Hashable, Tensor] = {}
        self._prompt_kv: dict[tuple[Hashable, torch.dtype, torch.device], list[KVPair]] = {}
        if seed is not None and self.patch_embedding.weight.device.type != "meta":
            self.init_weights(seed)

    # --- weights --------------------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self, seed: int = 0) -> None:
        """Wan's initialisation from a private generator (xavier linears, N(0, 0.02) embeddings), except
        that the output head is random rather than zero, so an untrained model gives non-trivial outputs."""
        g = torch.Generator().manual_seed(seed)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                m.weight.copy_(nn.init.xavier_uniform_(torch.empty_like(m.weight, device="cpu"), generator=g))
                nn.init.zeros_(m.bias)
        w = self.patch_embedding.weight
        w.copy_(nn.init.xavier_uniform_(torch.empty(w.shape[0], w[0].numel()), generator=g).view_as(w))
        nn.init.zeros_(self.patch_embedding.bias)
        for seq in (self.text_embedding, self.time_embedding):
            for m in seq.modules():
                if isinstance(m, nn.Linear):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.02)
        for blk in self.blocks:
            blk.modulation.copy_(torch.randn(blk.modulation.shape, generator=g) / self.config.dim**0.5)
        self.head.modulation.copy_(torch.randn(self.head.modulation.shape, generator=g) / self.config.dim**0.5)
        self.clear_prompt_cache()

    @property
    def dtype(self) -> torch.dtype:
        """The weight dtype."""
        return self.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        """The device of the weights."""
        return self.patch_embedding.weight.device

    # --- prompts ---------------------------------------------------------------------------------------
    def register_prompt(self, key: Hashable, embeddings: Tensor) -> None:
        """Register text-encoder outputs (L_text, text_dim) under `key`; a re-registered key is recomputed.

        Shorter prompts are zero-padded to `text_len` like Wan does, and every position is attended.
        The per-layer cross-attention K/V is computed lazily on first use and cached per dtype and device.
        """
        cfg = self.config
        if embeddings.ndim != 2 or embeddings.shape[1] != cfg.text_dim or embeddings.shape[0] > cfg.text_len:
            raise ConfigError(
                "embeddings",
                f"prompt {key!r}: embeddings must be (L <= {cfg.text_len}, {cfg.text_dim}), "
                f"got {tuple(embeddings.shape)}",
            )
        self.drop_prompt(key)
        self._prompts[key] = embeddings.detach()

    def drop_prompt(self, key: Hashable) -> None:
        """Forget a prompt and its cached K/V (no error if absent)."""
        self._prompts.pop(key, None)
        for k in [k for k in self._prompt_kv if k[0] == key]:
            del self._prompt_kv[k]

    def clear_prompt_cache(self) -> None:
        """Drop every cached cross-attention K/V (call after changing weights; loaders do)."""
        self._prompt_kv.clear()

    @torch.no_grad()
    def prompt_kv(self, key: Hashable) -> list[KVPair]:
        """Per-layer cross-attention (k, v) of a registered prompt, each (text_len, heads, head_dim)."""
        cache_key = (key, self.dtype, self.device)
        cached = self._prompt_kv.get(cache_key)
        if cached is not None:
            return cached
        if key not in self._prompts:
            raise ExecutorError(f"prompt {key!r} is not registered; registered: {sorted(map(repr, self._prompts))}")
        cfg = self.config
        emb = self._prompts[key].to(self.device, self.dtype)
        ctx = torch.cat([emb, emb.new_zeros(cfg.text_len - emb.shape[0], cfg.text_dim)])  # (L, text_dim)
        ctx = self.text_embedding(ctx)  # (L, dim)
        out = []
        for blk in self.blocks:
            ca = blk.cross_attn
            k = ca.norm_k(_linear(ca.k, ctx)).unflatten(-1, (cfg.num_heads, -1)).to(self.dtype)  # (L, H, D)
            v = _linear(ca.v, ctx).unflatten(-1, (cfg.num_heads, -1)).to(self.dtype)  # (L, H, D)
            out.append((k, v))
        self._prompt_kv[cache_key] = out
        return out

    # --- per-tick pieces ---------------------------------------------------------------------------------
    def embed(self, latents: Sequence[Tensor]) -> Tensor:
        """Patchify and embed latents (C, F, H, W) of all tasks into one stream (G, P, dim)."""
        cfg = self.config
        pt, ph, pw = cfg.patch_size
        patches = []
        for lat in latents:
            c, f, h, w = lat.shape
            p = lat.reshape(c, f // pt, pt, h // ph, ph, w // pw, pw).permute(1, 3, 5, 0, 2, 4, 6)
            patches.append(p.reshape(f // pt, (h // ph) * (w // pw), -1))  # (F', P, C*pt*ph*pw)
        x = torch.cat(patches) if len(patches) > 1 else patches[0]  # (G, P, patch_dim)
        w = self.patch_embedding.weight
        x = F.linear(x.to(w.dtype), w.flatten(1), self.patch_embedding.bias)  # (G, P, dim)
        return x.to(_act_dtype(w.dtype))

    def time_conditioning(self, timesteps: Tensor, frames: Tensor) -> tuple[Tensor, Tensor]:
        """Per-frame embeddings from per-task timesteps (n,) and frame counts (n,): e (G, dim), e0 (G, 6, dim)."""
        act = _act_dtype(self.dtype)
        emb = sinusoidal_embedding(self.config.freq_dim, timesteps).to(self.dtype)  # (n, freq_dim)
        e = self.time_embedding(emb)  # (n, dim)
        e0 = self.time_projection(e).unflatten(1, (6, -1))  # (n, 6, dim)
        return (e.to(act).repeat_interleave(frames, dim=0),  # (G, dim)
                e0.to(act).repeat_interleave(frames, dim=0))  # (G, 6, dim)

    def rope(self, frame_positions: Tensor) -> Tensor:
        """Unit complex RoPE factors (G*P, 1, head_dim/2) for absolute frame positions (G,) and the (h, w) grid.

        Angles are computed in float64 (like Wan's table) and rounded once to the activation dtype.
        """
        device = self.device
        hw = self._hw_angles.get(device)
        if hw is None:
            gh, gw = self.config.grid
            _, fh, fw = (f.to(device) for f in self._inv_freqs)
            ah = torch.outer(torch.arange(gh, dtype=torch.float64, device=device), fh)  # (gh, ch)
            aw = torch.outer(torch.arange(gw, dtype=torch.float64, device=device), fw)  # (gw, cw)
            hw = torch.cat([ah[:, None].expand(gh, gw, -1), aw[None].expand(gh, gw, -1)], -1).flatten(0, 1)
            self._hw_angles[device] = hw  # (P, ch+cw)
        ff = self._inv_freqs[0].to(device)
        af = torch.outer(frame_positions.to(device, torch.float64), ff)  # (G, cf)
        g, p = af.shape[0], hw.shape[0]
        ang = torch.cat([af[:, None].expand(g, p, -1), hw[None].expand(g, p, -1)], -1).reshape(g * p, 1, -1)
        act = _act_dtype(self.dtype)
        return torch.polar(torch.ones_like(ang, dtype=act), ang.to(act))  # (N, 1, D/2) complex

    def unpatchify(self, out: Tensor, frames: Sequence[int]) -> list[Tensor]:
        """Head output (G, P, prod(patch)*C) back to per-task latents (C, F, H, W)."""
        cfg = self.config
        pt, ph, pw = cfg.patch_size
        gh, gw = cfg.grid
        res = []
        for u in out.split(list(frames)):
            f = u.shape[0]
            u = u.view(f, gh, gw, pt, ph, pw, cfg.out_channels).permute(6, 0, 3, 1, 4, 2, 5)
            res.append(u.reshape(cfg.out_channels, f * pt, gh * ph, gw * pw))
        return res

    # --- the tick ------------------------------------------------------------------------------------------
    def _check_task(self, i: int, task: TaskInput) -> list[KVRef]:
        """Validate one task; return its key list in block order (own ref at its block index)."""
        cfg = self.config
        c, f, h, w = task.latent.shape if task.latent.ndim == 4 else (None, 0, None, None)
        if (c, h, w) != (cfg.in_channels, cfg.latent_height, cfg.latent_width) or f % cfg.patch_size[0] or f < 1:
            raise ExecutorError(
                f"task {i} {task.ref}: latent must be ({cfg.in_channels}, F, {cfg.latent_height}, "
                f"{cfg.latent_width}) with F a multiple of {cfg.patch_size[0]}, got {tuple(task.latent.shape)}"
            )
        own = task.ref[0]
        blocks = [r[0] for r in task.reads]
        if own in blocks or len(set(blocks)) != len(blocks):
            raise ExecutorError(
                f"task {i} {task.ref}: reads must name distinct blocks other than its own, got {list(task.reads)}"
            )
        return sorted([tuple(task.ref), *(tuple(r) for r in task.reads)])  # type: ignore[misc]

    @torch.no_grad()
    def forward_tick(
        self, tasks: Sequence[TaskInput], kv: KVLookup, exchange: Exchange | None = None
    ) -> TickOutput:
        """Run the local tasks of one tick jointly; see the module docstring for the attention rule.

        A read `ref` in layer `l` resolves to: the K/V of a local task of this tick with that ref; else the
        dict `exchange(l, local)` returned; else `kv(ref, l)`. With `exchange`, it is called once per layer
        on every call (even when nothing reads a peer), so collectives stay matched across ranks.
        """
        cfg = self.config
        n_layers = len(self.blocks)
        if not tasks:
            if exchange is not None:
                for layer in range(n_layers):
                    exchange(layer, {})
            return TickOutput(velocity=[], kv=[])
        device, act = self.device, _act_dtype(self.dtype)

        # 1. Plan: key lists, token ranges, attention groups (tasks with identical key sets share one SDPA),
        #    prompt groups (tasks with one prompt share one cross-attention).
        keys = [self._check_task(i, t) for i, t in enumerate(tasks)]
        refs = [tuple(t.ref) for t in tasks]
        if len(set(refs)) != len(refs):
            raise ExecutorError(f"a tick cannot compute one version twice: {refs}")
        frames = [t.latent.shape[1] // cfg.patch_size[0] for t in tasks]
        tokens = [f * cfg.tokens_per_frame for f in frames]
        ends = torch.tensor(tokens).cumsum(0).tolist()
        ranges = [(e - n, e) for e, n in zip(ends, tokens, strict=True)]
        attn_groups: dict[tuple[KVRef, ...], list[int]] = {}
        prompt_groups: dict[Hashable, list[int]] = {}
        for i, t in enumerate(tasks):
            attn_groups.setdefault(tuple(keys[i]), []).append(i)
            prompt_groups.setdefault(t.prompt, []).append(i)
        prompt_kv = {p: self.prompt_kv(p) for p in prompt_groups}

        # 2. Embeddings of the whole tick: tokens, per-frame time conditioning, RoPE at absolute frames.
        x = self.embed([t.latent.to(device) for t in tasks])  # (G, P, dim)
        e, e0 = self.time_conditioning(
            torch.tensor([float(t.timestep) for t in tasks], dtype=torch.float64, device=device),
            torch.tensor(frames, device=device),
        )  # (G, dim), (G, 6, dim)
        pos = torch.cat([torch.arange(f, dtype=torch.float64) + t.frame_offset // cfg.patch_size[0]
                         for f, t in zip(frames, tasks, strict=True)])  # (G,)
        freqs = self.rope(pos)  # (N, 1, D/2) complex

        # 3. Layers: project, publish/exchange K/V, attend per key set, finish the block.
        out_kv: list[list[KVPair]] = [[] for _ in tasks]
        for layer, blk in enumerate(self.blocks):
            mod = blk.modulate(e0)
            q, k, v = blk.pre_attention(x, mod, freqs)  # (N, H, D) each
            local = {refs[i]: (k[a:b], v[a:b]) for i, (a, b) in enumerate(ranges)}
            for i in range(len(tasks)):
                out_kv[i].append(local[refs[i]])
            peers = exchange(layer, local) if exchange is not None else {}
            if len(attn_groups) == 1 and len(tasks) == 1:
                y = self._attend_keys(q, keys[0], layer, local, peers, kv)  # (N, dim)
            else:
                y = q.new_empty(q.shape[0], cfg.dim)
                for key_set, members in attn_groups.items():
                    qs = torch.cat([q[ranges[i][0]:ranges[i][1]] for i in members])
                    o = self._attend_keys(qs, list(key_set), layer, local, peers, kv)
                    p0 = 0
                    for i in members:
                        a, b = ranges[i]
                        y[a:b] = o[p0:p0 + b - a]
                        p0 += b - a
            if len(prompt_groups) == 1:
                cross = [(None, prompt_kv[tasks[0].prompt][layer])]
            else:
                cross = [([ranges[i] for i in members], prompt_kv[p][layer]) for p, members in prompt_groups.items()]
            x = blk.post_attention(x, y, mod, cross)

        # 4. Head and unpatchify.
        velocity = self.unpatchify(self.head(x, e), frames)
        return TickOutput(velocity=[u.to(act) for u in velocity], kv=out_kv)

    def _attend_keys(
        self, q: Tensor, key_refs: Sequence[KVRef], layer: int,
        local: dict[KVRef, KVPair], peers: dict[KVRef, KVPair], kv: KVLookup,
    ) -> Tensor:
        """SDPA of q (T, H, D) on the K/V of `key_refs` (block order), resolved local > peers > lookup."""
        return _attend(q, *gather_kv(key_refs, layer, local, peers, kv, q.dtype))

    def forward(self, tasks: Sequence[TaskInput], kv: KVLookup, exchange: Exchange | None = None) -> TickOutput:
        """Alias of `forward_tick`, so the module is callable."""
        return self.forward_tick(tasks, kv, exchange)
