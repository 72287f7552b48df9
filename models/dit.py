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

A tick is three pieces, each usable alone (:mod:`models.tick` says what passes between them):
``enter_tick`` (plan, patch embedding, time conditioning, RoPE), ``run_layers`` (layers ``[a, b)`` with the
K/V lookup and the per-layer exchange; absolute layer indices) and ``exit_tick`` (head, unpatchify).
``forward_tick`` is the three in a row, and ``forward_slice`` is one layer-ring rank's share of them.

A model can hold a slice only (``part=``; :mod:`models.slices`): layers ``[first, end)``, with or without
the entry and the head, and what every rank needs (time embedding and projection, text embedding).

One statement of the math: the pieces run through a :class:`TickKernels`, by default the modules
themselves (:class:`EagerKernels`); the compiled executor passes graphs exported from these same modules
(``graph_forms``: RoPE as real (cos, sin), cross-attention batched over inputs).

Precision: the residual stream, norms, modulation and RoPE run in the *activation dtype* (float32 for
bf16/fp16 weights, like Wan's autocast regions; the weight dtype otherwise); matmuls and attention run in
the weight dtype. K/V are produced and published in the weight dtype.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cascade_sched.errors import ExecutorError
from cascade_sched.schedule import attention_groups

from .attention import (
    CrossKV,
    KVLookup,
    KVPair,
    KVRef,
    Range,
    Rope,
    attend_groups,
    gather_kv,
    rope_inv_freqs,
    rope_positions,
)
from .attention import attend as _attend
from .conditioning import PromptConditioning
from .config import ModelConfig, ModelSlice
from .layers import Head, Modulation, WanBlock, act_dtype
from .slices import NotHeld, init_weights
from .tick import (
    Exchange,
    HiddenState,
    SliceOutput,
    TaskInput,
    TickContext,
    TickKernels,
    TickOutput,
    sinusoidal_embedding,
)

__all__ = [
    "CausalWanDiT",
    "EagerKernels",
    "Exchange",
    "HiddenState",
    "KVLookup",
    "KVPair",
    "KVRef",
    "NotHeld",
    "SliceOutput",
    "TaskInput",
    "TickContext",
    "TickKernels",
    "TickOutput",
    "WanBlock",
    "gather_kv",
    "reference_model",
    "sinusoidal_embedding",
]

_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


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
        return self.model.unpatchify(self.model.head_out(x, e), frames)


@functools.lru_cache(maxsize=4)
def reference_model(config: ModelConfig) -> CausalWanDiT:
    """The whole model of ``config`` on the meta device: every parameter's name and shape, no storage. A
    slice checks checkpoints and LoRA adapters against it and draws its seeded init in its order."""
    with torch.device("meta"):
        return CausalWanDiT(config, seed=None)


class _Plan(NamedTuple):
    """What every rank derives from a tick's tasks (validated) before the time conditioning."""

    refs: list[KVRef]
    frames: list[int]
    ranges: list[Range]
    groups: list[tuple[tuple[KVRef, ...], list[int]]]
    temb: Tensor  # (n, freq_dim) timestep sinusoids, weight dtype
    rope: Rope  # (N, 1, D/2): complex, or (cos, sin)
    cross: list[CrossKV]  # per held layer
    layers: range

    def context(self, e: Tensor, e0: Tensor) -> TickContext:
        return TickContext(self.refs, self.frames, self.ranges, self.groups, e, e0, self.rope, self.cross,
                           self.layers)


class CausalWanDiT(PromptConditioning, nn.Module):
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

    def __init__(self, config: ModelConfig, *, seed: int | None = 0, part: ModelSlice | None = None) -> None:
        """Build the model, or only the slice ``part`` of it; with `seed`, initialise weights
        deterministically (Wan's scheme, see `init_weights`)."""
        super().__init__()
        cfg = self.config = config
        part = cfg.layer_slice() if part is None else cfg.layer_slice(part.first, part.end, entry=part.entry,
                                                                      head=part.head)
        self.part = part
        dim = cfg.dim
        self.patch_embedding: nn.Module = (
            nn.Conv3d(cfg.in_channels, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size) if part.entry
            else NotHeld("the entry (patch embedding)", part))
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList(WanBlock(cfg) if i in part.layers else NotHeld(f"layer {i}", part)
                                    for i in range(cfg.num_layers))
        self.head: nn.Module = Head(cfg) if part.head else NotHeld("the head", part)
        self._inv_freqs = rope_inv_freqs(cfg.head_dim)  # float64, CPU; moved per call (tiny)
        self._hw_angles: dict[torch.device, Tensor] = {}
        self._init_prompts()
        if seed is not None and self.device.type != "meta":
            self.init_weights(seed)

    # --- weights --------------------------------------------------------------------------------------
    @property
    def layers(self) -> range:
        """The layers this model holds (all of them unless it is a slice)."""
        return self.part.layers

    @property
    def whole(self) -> bool:
        """Whether this model holds every layer, the entry and the head."""
        return self.part == self.config.layer_slice()

    def reference_modules(self) -> dict[str, nn.Module]:
        """Every module of the whole model by name, in registration order: this model's own when it is
        whole, else those of :func:`reference_model` (on the meta device)."""
        return dict((self if self.whole else reference_model(self.config)).named_modules())

    def init_weights(self, seed: int = 0) -> None:
        """Wan's initialisation from a private generator (:func:`models.slices.init_weights`: a seeded slice
        equals the same slice of the seeded whole model)."""
        init_weights(self, self.reference_modules(), self.config, seed)
        self.clear_prompt_cache()

    @property
    def dtype(self) -> torch.dtype:
        """The weight dtype."""
        return cast(nn.Linear, self.time_embedding[0]).weight.dtype

    @property
    def device(self) -> torch.device:
        """The device of the weights."""
        return cast(nn.Linear, self.time_embedding[0]).weight.device

    def block(self, layer: int) -> WanBlock:
        """Transformer block `layer` (typed: `blocks[layer]` is a plain Module to the type checker);
        ExecutorError when this slice does not hold it."""
        blk = self.blocks[layer]
        if not isinstance(blk, WanBlock):
            raise ExecutorError(f"this model holds {self.part.describe()}, not layer {layer}")
        return blk

    # --- per-tick pieces ---------------------------------------------------------------------------------
    def _entry(self) -> nn.Conv3d:
        if not isinstance(self.patch_embedding, nn.Conv3d):
            raise ExecutorError(f"this model holds {self.part.describe()}, not the entry (patch embedding)")
        return self.patch_embedding

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
        conv = self._entry()
        x = F.linear(x.to(conv.weight.dtype), conv.weight.flatten(1), conv.bias)  # (G, P, dim)
        return x.to(act_dtype(conv.weight.dtype))

    def condition(self, temb: Tensor, frames: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        """Per-frame embeddings from per-task timestep sinusoids temb (n, freq_dim) (weight dtype) and
        patch-frame counts (n,): e (G, dim), e0 (G, 6, dim), activation dtype."""
        act = act_dtype(self.dtype)
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
        """RoPE factors for frame positions (G,) and the (h, w) grid: unit complex (G*P, 1, D/2), or with
        `real` its (cos, sin) parts, each (G*P, 1, D/2) (the graph form: no complex tensors).

        The factors are computed from the positions, never read from a table, so any position up to
        ``MAX_ROPE_POSITION`` has them (:func:`models.attention.rope_positions` states the rule). They are
        computed in float64 (Wan's table is float64 too) and rounded once to the activation dtype, so their
        error does not grow with the position.
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
        freqs = torch.polar(torch.ones_like(ang), ang).to(_COMPLEX[act_dtype(self.dtype)])  # (N, 1, D/2)
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

    def head_out(self, x: Tensor, e: Tensor) -> Tensor:
        """The head: x (G, P, dim), per-frame e (G, dim) -> (G, P, prod(patch) * C); ExecutorError when this
        slice does not hold it."""
        if not isinstance(self.head, Head):
            raise ExecutorError(f"this model holds {self.part.describe()}, not the head")
        return cast(Tensor, self.head(x, e))

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

    def _plan(self, tasks: Sequence[TaskInput], graph_forms: bool) -> _Plan:
        """1. Plan a tick: validate its tasks; token ranges; attention groups (inputs with identical key sets
        share one SDPA); timestep sinusoids; RoPE at the tasks' absolute frames (``rope_positions``); the
        prompts' cross-attention K/V of the held layers (inputs with one prompt share one SDPA, or batched)."""
        cfg = self.config
        pt = cfg.patch_size[0]
        for i, t in enumerate(tasks):
            self._check_task(i, t)
        refs: list[KVRef] = [(t.ref[0], t.ref[1]) for t in tasks]
        if len(set(refs)) != len(refs):
            raise ExecutorError(f"a tick cannot compute one version twice: {refs}")
        frames = [t.latent.shape[1] // pt for t in tasks]
        ends = torch.tensor([f * cfg.tokens_per_frame for f in frames]).cumsum(0).tolist()
        ranges = [(b - f * cfg.tokens_per_frame, b) for b, f in zip(ends, frames, strict=True)]
        groups = attention_groups((t.ref, t.reads) for t in tasks)
        t64 = torch.tensor([float(t.timestep) for t in tasks], dtype=torch.float64, device=self.device)
        temb = sinusoidal_embedding(cfg.freq_dim, t64).to(self.dtype)  # (n, freq_dim)
        pos = [p for f, t in zip(frames, tasks, strict=True) for p in rope_positions(t.frame_offset // pt, f)]
        rope = self.rope(torch.tensor(pos, dtype=torch.float64), real=graph_forms)  # (G,) -> (N, 1, D/2)
        cross = self.cross_kv([t.prompt for t in tasks], ranges, batched=graph_forms)
        return _Plan(refs, frames, ranges, groups, temb, rope, cross, self.layers)

    @torch.no_grad()
    def tick_context(self, tasks: Sequence[TaskInput], *, graph_forms: bool = False) -> TickContext:
        """What a rank without the entry derives from a tick's tasks for its layers: the plan, the time
        conditioning (time embedding and projection), RoPE and its layers' cross-attention K/V."""
        plan = self._plan(tasks, graph_forms)
        return plan.context(*self.condition(plan.temb, plan.frames))  # e (G, dim), e0 (G, 6, dim)

    @torch.no_grad()
    def enter_tick(self, tasks: Sequence[TaskInput], *, kernels: TickKernels | None = None
                   ) -> tuple[TickContext, HiddenState]:
        """(a) The entry of a tick: its plan, the patch embedding, time conditioning and RoPE of its tasks;
        returns the context and the hidden state before layer 0."""
        run = kernels if kernels is not None else EagerKernels(self)
        plan = self._plan(tasks, run.graph_forms)
        # 2. Embeddings of the whole tick: tokens and per-frame time conditioning.
        x, e, e0 = run.embed([t.latent.to(self.device) for t in tasks], plan.temb)  # (G, P, dim), (G, dim), (G, 6, dim)
        return plan.context(e, e0), HiddenState(x, 0)

    @torch.no_grad()
    def run_layers(self, ctx: TickContext, hidden: HiddenState, kv: KVLookup, exchange: Exchange | None = None,
                   *, end: int | None = None, kernels: TickKernels | None = None
                   ) -> tuple[HiddenState, list[list[KVPair]]]:
        """(b) Layers ``[hidden.layer, end)`` (``end`` None: this model's last) of a tick on its hidden state.

        A read `ref` in layer `l` (absolute) resolves to: the K/V of a local task of this tick with that ref;
        else the dict `exchange(l, local)` returned; else `kv(ref, l)`. With `exchange`, it is called once per
        layer run (even when nothing reads a peer), so collectives stay matched across ranks. Returns the
        hidden state after the range and, per task, the K/V of each layer run (index: layer - first).
        """
        run = kernels if kernels is not None else EagerKernels(self)
        first, end = hidden.layer, self.part.end if end is None else end
        if not (first < end and first in ctx.layers and end - 1 in ctx.layers):
            raise ExecutorError(f"layers [{first}, {end}) are not all held by this model ({self.part.describe()})")
        stream = (sum(ctx.frames), self.config.tokens_per_frame, self.config.dim)
        if tuple(hidden.x.shape) != stream:
            raise ExecutorError(f"the hidden state before layer {first} is {tuple(hidden.x.shape)}; this tick's "
                                f"stream is {stream}")
        x = hidden.x
        out_kv: list[list[KVPair]] = [[] for _ in ctx.refs]
        # 3. Layers: project, publish/exchange K/V, attend per key set, finish the block.
        for layer in range(first, end):
            q, k, v = run.pre(layer, x, ctx.e0, ctx.rope)  # (N, H, D) each
            local = {ctx.refs[i]: (k[a:b], v[a:b]) for i, (a, b) in enumerate(ctx.ranges)}
            for i, ref in enumerate(ctx.refs):
                out_kv[i].append(local[ref])
            peers = exchange(layer, local) if exchange is not None else {}
            y = attend_groups(q, ((None if len(ctx.groups) == 1 else [ctx.ranges[i] for i in members],
                                   gather_kv(key_set, layer, local, peers, kv, q.dtype))
                                  for key_set, members in ctx.groups), run.attend)  # (N, dim)
            x = run.post(layer, x, y, ctx.e0, ctx.cross[layer - ctx.layers.start])
        return HiddenState(x, end), out_kv

    @torch.no_grad()
    def exit_tick(self, ctx: TickContext, hidden: HiddenState, *, kernels: TickKernels | None = None
                  ) -> list[Tensor]:
        """(c) The exit of a tick: 4. head and unpatchify of the hidden state after the last layer; per-task
        velocity (C, F, H, W), activation dtype."""
        if hidden.layer != self.config.num_layers:
            raise ExecutorError(f"the head runs after layer {self.config.num_layers - 1}; this hidden state is "
                                f"before layer {hidden.layer}")
        run = kernels if kernels is not None else EagerKernels(self)
        return list(run.head(hidden.x, ctx.e, ctx.frames))

    @torch.no_grad()
    def forward_slice(self, tasks: Sequence[TaskInput], kv: KVLookup, exchange: Exchange | None = None, *,
                      hidden: HiddenState | None = None, kernels: TickKernels | None = None) -> SliceOutput:
        """One layer-ring rank's share of a tick: the entry when this model holds it (else `hidden`, the
        previous rank's hand-off), its layers, and the head when it holds it. An empty tick still calls
        `exchange` once per held layer."""
        if not tasks:
            if exchange is not None:
                for layer in self.layers:
                    exchange(layer, {})
            return SliceOutput(hidden=None, velocity=[], kv=[])
        run = kernels if kernels is not None else EagerKernels(self)
        if self.part.entry == (hidden is not None):
            raise ExecutorError(f"a model holding {self.part.describe()} "
                                + ("embeds the tick itself: pass no hidden state" if self.part.entry
                                   else f"needs the hidden state before layer {self.part.first}"))
        if hidden is None:
            ctx, hidden = self.enter_tick(tasks, kernels=run)
        else:
            ctx = self.tick_context(tasks, graph_forms=run.graph_forms)
        hidden, out_kv = self.run_layers(ctx, hidden, kv, exchange, kernels=run)
        if self.part.head:
            return SliceOutput(hidden=None, velocity=self.exit_tick(ctx, hidden, kernels=run), kv=out_kv)
        return SliceOutput(hidden=hidden, velocity=[], kv=out_kv)

    @torch.no_grad()
    def forward_tick(
        self, tasks: Sequence[TaskInput], kv: KVLookup, exchange: Exchange | None = None, *,
        kernels: TickKernels | None = None,
    ) -> TickOutput:
        """Run the local tasks of one tick jointly on the whole model: `enter_tick`, `run_layers` over every
        layer, `exit_tick` (see `run_layers` for how reads resolve and `exchange` is called).
        `kernels` runs the pieces (default: this model's own modules, :class:`EagerKernels`)."""
        if not self.whole:
            raise ExecutorError(f"forward_tick runs the whole model; this one holds {self.part.describe()}: "
                                "use forward_slice")
        out = self.forward_slice(tasks, kv, exchange, kernels=kernels)
        return TickOutput(velocity=out.velocity, kv=out.kv)

    def forward(self, tasks: Sequence[TaskInput], kv: KVLookup, exchange: Exchange | None = None, *,
                kernels: TickKernels | None = None) -> TickOutput:
        """Alias of `forward_tick`, so the module is callable."""
        return self.forward_tick(tasks, kv, exchange, kernels=kernels)
