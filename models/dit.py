"""The block-causal Wan2.1-family diffusion transformer, with an explicit, schedule-driven KV interface.

Structure (parameter names are exactly Wan2.1's, so its checkpoints load by stripping wrappers only):

    patch_embedding   Conv3d(C, dim, kernel = stride = (1, 2, 2)), applied as one matmul over patches
    text_embedding    Linear(text_dim, dim) -> GELU(tanh) -> Linear(dim, dim)
    time_embedding    Linear(256, dim) -> SiLU -> Linear(dim, dim)        (sinusoid of t, per frame)
    time_projection   SiLU -> Linear(dim, 6 * dim)                       (adaLN shift/scale/gate x 2)
    blocks[i]         norm1, self_attn{q,k,v,o,norm_q,norm_k}, norm3, cross_attn{...}, norm2, ffn.0/.2,
                      modulation (1, 6, dim)                             (models.layers.WanBlock)
    head              norm, head Linear(dim, prod(patch) * C), modulation (1, 2, dim)

What differs from Wan's bidirectional forward is only *which* keys each token sees. A tick runs several
tasks, each one (block, stage); task i attends to its own block's tokens and to the K/V of the block
versions in ``tasks[i].reads`` (concatenated in block order), nothing else. Linear layers run once over
the tokens of all tasks of the tick; attention runs once per distinct key set with SDPA and no mask
(``cascade_sched.schedule.attention_groups``; the kernels are :mod:`models.attention`'s).

One statement of the math: `forward_tick` runs its pieces (embedding, each block's two halves, the
attention kernel, the head) through a :class:`TickKernels`: by default the modules themselves
(:class:`EagerKernels`); the compiled executor passes graphs exported from these same modules, with the
forms graphs need (``graph_forms``: RoPE as real (cos, sin), cross-attention batched over inputs).

Precision: the residual stream, norms, modulation and RoPE run in the *activation dtype* (float32 for
bf16/fp16 weights, like Wan's autocast regions; the weight dtype otherwise); matmuls and attention run in
the weight dtype. K/V are produced and published in the weight dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cascade_sched.errors import ConfigError, ExecutorError
from cascade_sched.schedule import attention_groups, share_groups

from .attention import CrossKV, KVLookup, KVPair, KVRef, Range, Rope, attend_groups, gather_kv, rope_inv_freqs
from .attention import attend as _attend
from .config import ModelConfig
from .layers import Head, Modulation, WanBlock, _act_dtype, _heads, _linear

__all__ = [
    "CausalWanDiT",
    "EagerKernels",
    "Exchange",
    "KVLookup",
    "KVPair",
    "KVRef",
    "TaskInput",
    "TickKernels",
    "TickOutput",
    "WanBlock",
    "gather_kv",
    "sinusoidal_embedding",
]

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
    one module): :class:`EagerKernels` are the model's own modules, the compiled executor runs graphs
    exported from those same modules. `CausalWanDiT.forward_tick` owns everything between the pieces:
    planning, RoPE tables, K/V routing, the exchange and the attention groups."""

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


class EagerKernels:
    """The model's own modules as the tick's pieces: `forward_tick`'s default (complex RoPE, grouped
    cross-attention). ``graph_forms=True`` runs the forms the compiled graphs use instead, eagerly.

    >>> from models.config import get_config
    >>> model = CausalWanDiT(get_config("tiny"))
    >>> model.register_prompt("p", torch.zeros(3, 32))
    >>> tasks = [TaskInput((0, 0), torch.randn(16, 3, 4, 4), 1000.0, 0, "p")]
    >>> a = model.forward_tick(tasks, kv=lambda ref, layer: None)
    >>> b = model.forward_tick(tasks, kv=lambda ref, layer: None, kernels=EagerKernels(model, graph_forms=True))
    >>> torch.allclose(a.velocity[0], b.velocity[0], atol=1e-6)
    True
    """

    def __init__(self, model: CausalWanDiT, *, graph_forms: bool = False) -> None:
        self.model, self.graph_forms = model, graph_forms
        self._last: tuple[int, Tensor, Modulation] | None = None

    def _modulate(self, layer: int, e0: Tensor) -> Modulation:
        """Block `layer`'s adaLN terms of e0, computed once for both halves of the block."""
        if self._last is None or self._last[0] != layer or self._last[1] is not e0:
            self._last = (layer, e0, self.model.block(layer).modulate(e0))
        return self._last[2]

    def embed(self, latents: Sequence[Tensor], temb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.model.embed_tick(latents, temb)

    def pre(self, layer: int, x: Tensor, e0: Tensor, rope: Rope) -> tuple[Tensor, Tensor, Tensor]:
        return self.model.block(layer).pre_attention(x, self._modulate(layer, e0), rope)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return _attend(q, k, v)

    def post(self, layer: int, x: Tensor, y: Tensor, e0: Tensor, cross: CrossKV) -> Tensor:
        return self.model.block(layer).post_attention(x, y, self._modulate(layer, e0), cross)

    def head(self, x: Tensor, e: Tensor, frames: Sequence[int]) -> Sequence[Tensor]:
        return self.model.unpatchify(self.model.head(x, e), frames)


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
        self._inv_freqs = rope_inv_freqs(cfg.head_dim)  # float64, CPU; moved per call (tiny)
        self._hw_angles: dict[torch.device, Tensor] = {}
        self._prompts: dict[Hashable, Tensor] = {}
        self._prompt_kv: dict[tuple[Hashable, torch.dtype, torch.device], list[KVPair]] = {}
        # Stacked per-input prompt K/V of recent prompt mixes (batched cross-attention), with their sources.
        self._prompt_kv_batched: dict[tuple[int, ...], tuple[list[list[KVPair]], list[KVPair]]] = {}
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
                m.bias.zero_()
        w = self.patch_embedding.weight
        w.copy_(nn.init.xavier_uniform_(torch.empty(w.shape[0], w[0].numel()), generator=g).view_as(w))
        cast(Tensor, self.patch_embedding.bias).zero_()
        for seq in (self.text_embedding, self.time_embedding):
            for m in seq.modules():
                if isinstance(m, nn.Linear):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.02)
        for layer in range(len(self.blocks)):
            mod = self.block(layer).modulation
            mod.copy_(torch.randn(mod.shape, generator=g) / self.config.dim**0.5)
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

    def block(self, layer: int) -> WanBlock:
        """Transformer block `layer` (typed: `blocks[layer]` is a plain Module to the type checker)."""
        return cast(WanBlock, self.blocks[layer])

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
        self._prompt_kv_batched.clear()

    def clear_prompt_cache(self) -> None:
        """Drop every cached cross-attention K/V (call after changing weights; loaders do)."""
        self._prompt_kv.clear()
        self._prompt_kv_batched.clear()

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
        out = self.text_kv(ctx)
        self._prompt_kv[cache_key] = out
        return out

    def text_kv(self, ctx: Tensor) -> list[KVPair]:
        """Per-layer cross-attention (k, v), each (..., text_len, heads, head_dim), of padded text-encoder
        outputs (..., text_len, text_dim); with autograd (training calls it on batches of prompts)."""
        cfg = self.config
        ctx = self.text_embedding(ctx)  # (..., L, dim)
        out = []
        for layer in range(len(self.blocks)):
            ca = self.block(layer).cross_attn
            k = _heads(ca.norm_k(_linear(ca.k, ctx)), cfg.num_heads).to(self.dtype)  # (..., L, H, D)
            v = _heads(_linear(ca.v, ctx), cfg.num_heads).to(self.dtype)  # (..., L, H, D)
            out.append((k, v))
        return out

    def prompt_kv_batched(self, prompts: Sequence[Hashable]) -> list[KVPair]:
        """Per layer, input i's prompt K/V at index i: (k, v) each (n, text_len, heads, head_dim), for the
        batched cross-attention. Reused while the tick's prompts and their cached K/V stay the same
        (the last few mixes are kept; re-registering a prompt or `clear_prompt_cache` drops them)."""
        sources = [self.prompt_kv(p) for p in prompts]
        key = tuple(id(s) for s in sources)
        hit = self._prompt_kv_batched.get(key)
        if hit is not None and all(a is b for a, b in zip(hit[0], sources, strict=True)):
            return hit[1]
        stacked = [(torch.stack([s[layer][0] for s in sources]), torch.stack([s[layer][1] for s in sources]))
                   for layer in range(len(self.blocks))]
        if len(self._prompt_kv_batched) >= 4:
            self._prompt_kv_batched.pop(next(iter(self._prompt_kv_batched)))
        self._prompt_kv_batched[key] = (sources, stacked)  # holding `sources` keeps their ids from being reused
        return stacked

    def cross_kv(self, prompts: Sequence[Hashable], ranges: Sequence[Range], *, batched: bool) -> list[CrossKV]:
        """Per layer, the cross-attention K/V of a tick whose inputs use `prompts` and own token `ranges`:
        grouped (inputs with one prompt share one SDPA; `share_groups`) or batched (`prompt_kv_batched`)."""
        if batched:
            return list(self.prompt_kv_batched(prompts))
        groups = share_groups(prompts)
        kvs = [self.prompt_kv(p) for p, _ in groups]
        if len(groups) == 1:
            return [[(None, pair)] for pair in kvs[0]]
        return [[([ranges[i] for i in members], kv[layer]) for (_, members), kv in zip(groups, kvs, strict=True)]
                for layer in range(len(self.blocks))]

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
        weight = self.patch_embedding.weight
        x = F.linear(x.to(weight.dtype), weight.flatten(1), self.patch_embedding.bias)  # (G, P, dim)
        return x.to(_act_dtype(weight.dtype))

    def condition(self, temb: Tensor, frames: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        """Per-frame embeddings from per-task timestep sinusoids temb (n, freq_dim) (weight dtype) and
        patch-frame counts (n,): e (G, dim), e0 (G, 6, dim), activation dtype."""
        act = _act_dtype(self.dtype)
        e = self.time_embedding(temb)  # (n, dim)
        e0 = torch.unflatten(self.time_projection(e), 1, (6, -1))  # (n, 6, dim)
        counts = [int(f) for f in frames]
        reps: int | Tensor = counts[0] if len(set(counts)) == 1 else torch.tensor(counts, device=e.device)
        return e.to(act).repeat_interleave(reps, dim=0), e0.to(act).repeat_interleave(reps, dim=0)

    def time_conditioning(self, timesteps: Tensor, frames: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        """Per-frame embeddings from per-task timesteps (n,) and frame counts (n,): e (G, dim), e0 (G, 6, dim)."""
        return self.condition(sinusoidal_embedding(self.config.freq_dim, timesteps).to(self.dtype), frames)

    def embed_tick(self, latents: Sequence[Tensor], temb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The stream of a tick: latents (C, F, H, W) and sinusoids (n, freq_dim) -> x (G, P, dim), e, e0."""
        pt = self.config.patch_size[0]
        return (self.embed(latents), *self.condition(temb, [lat.shape[1] // pt for lat in latents]))

    def rope(self, frame_positions: Tensor, *, real: bool = False) -> Rope:
        """RoPE factors for absolute frame positions (G,) and the (h, w) grid: unit complex (G*P, 1, D/2),
        or with `real` its (cos, sin) parts, each (G*P, 1, D/2) (the graph form: no complex tensors).

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
        freqs = torch.polar(torch.ones_like(ang, dtype=act), ang.to(act))  # (N, 1, D/2) complex
        return (freqs.real.contiguous(), freqs.imag.contiguous()) if real else freqs

    def unpatchify(self, out: Tensor, frames: Sequence[int]) -> list[Tensor]:
        """Head output (G, P, prod(patch)*C) back to per-task latents (C, F, H, W)."""
        cfg = self.config
        pt, ph, pw = cfg.patch_size
        gh, gw = cfg.grid
        res = []
        for u in torch.split(out, list(frames)):
            f = u.shape[0]
            u = u.view(f, gh, gw, pt, ph, pw, cfg.out_channels).permute(6, 0, 3, 1, 4, 2, 5)
            res.append(u.reshape(cfg.out_channels, f * pt, gh * ph, gw * pw))
        return res

    # --- the tick ------------------------------------------------------------------------------------------
    def _check_task(self, i: int, task: TaskInput) -> None:
        """Validate one task: its latent's shape and its reads (distinct blocks other than its own)."""
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

    @torch.no_grad()
    def forward_tick(
        self, tasks: Sequence[TaskInput], kv: KVLookup, exchange: Exchange | None = None, *,
        kernels: TickKernels | None = None,
    ) -> TickOutput:
        """Run the local tasks of one tick jointly; see the module docstring for the attention rule.

        A read `ref` in layer `l` resolves to: the K/V of a local task of this tick with that ref; else the
        dict `exchange(l, local)` returned; else `kv(ref, l)`. With `exchange`, it is called once per layer
        on every call (even when nothing reads a peer), so collectives stay matched across ranks.
        `kernels` runs the pieces (default: this model's own modules, :class:`EagerKernels`).
        """
        cfg = self.config
        n_layers = len(self.blocks)
        if not tasks:
            if exchange is not None:
                for layer in range(n_layers):
                    exchange(layer, {})
            return TickOutput(velocity=[], kv=[])
        run = kernels if kernels is not None else EagerKernels(self)
        device, pt = self.device, cfg.patch_size[0]

        # 1. Plan: token ranges, attention groups (inputs with identical key sets share one SDPA), the
        #    prompts' cross-attention K/V (inputs with one prompt share one SDPA, or batched).
        for i, t in enumerate(tasks):
            self._check_task(i, t)
        refs: list[KVRef] = [(t.ref[0], t.ref[1]) for t in tasks]
        if len(set(refs)) != len(refs):
            raise ExecutorError(f"a tick cannot compute one version twice: {refs}")
        frames = [t.latent.shape[1] // pt for t in tasks]
        ends = torch.tensor([f * cfg.tokens_per_frame for f in frames]).cumsum(0).tolist()
        ranges = [(b - f * cfg.tokens_per_frame, b) for b, f in zip(ends, frames, strict=True)]
        groups = attention_groups((t.ref, t.reads) for t in tasks)
        cross = self.cross_kv([t.prompt for t in tasks], ranges, batched=run.graph_forms)

        # 2. Embeddings of the whole tick: tokens, per-frame time conditioning, RoPE at absolute frames.
        t64 = torch.tensor([float(t.timestep) for t in tasks], dtype=torch.float64, device=device)
        temb = sinusoidal_embedding(cfg.freq_dim, t64).to(self.dtype)  # (n, freq_dim)
        x, e, e0 = run.embed([t.latent.to(device) for t in tasks], temb)  # (G, P, dim), (G, dim), (G, 6, dim)
        pos = torch.cat([torch.arange(f, dtype=torch.float64) + t.frame_offset // pt
                         for f, t in zip(frames, tasks, strict=True)])  # (G,)
        rope = self.rope(pos, real=run.graph_forms)  # (N, 1, D/2): complex, or (cos, sin)

        # 3. Layers: project, publish/exchange K/V, attend per key set, finish the block.
        out_kv: list[list[KVPair]] = [[] for _ in tasks]
        for layer in range(n_layers):
            q, k, v = run.pre(layer, x, e0, rope)  # (N, H, D) each
            local = {refs[i]: (k[a:b], v[a:b]) for i, (a, b) in enumerate(ranges)}
            for i in range(len(tasks)):
                out_kv[i].append(local[refs[i]])
            peers = exchange(layer, local) if exchange is not None else {}
            y = attend_groups(q, ((None if len(groups) == 1 else [ranges[i] for i in members],
                                   gather_kv(key_set, layer, local, peers, kv, q.dtype))
                                  for key_set, members in groups), run.attend)  # (N, dim)
            x = run.post(layer, x, y, e0, cross[layer])

        # 4. Head and unpatchify.
        return TickOutput(velocity=list(run.head(x, e, frames)), kv=out_kv)

    def forward(self, tasks: Sequence[TaskInput], kv: KVLookup, exchange: Exchange | None = None, *,
                kernels: TickKernels | None = None) -> TickOutput:
        """Alias of `forward_tick`, so the module is callable."""
        return self.forward_tick(tasks, kv, exchange, kernels=kernels)
