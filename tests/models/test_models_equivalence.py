"""Sequential equivalence: the tick interface at lag = S equals a plain Self-Forcing loop with a growing cache.

The reference loop below is written out by hand, the way Self-Forcing's inference pipeline runs: blocks in
order; each block denoised step by step attending to the clean KV cache of the previous blocks, then one
cache pass at t = 0 that appends the block's clean K/V to the cache. It uses the model only through its
per-layer pieces (embed, pre_attention, post_attention, head); the KV routing, the ordering of keys, the
versions and the stage loop are its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from models import (
    SELF_FORCING,
    CausalWanDiT,
    FlowMatchSampler,
    KVPool,
    TaskInput,
    get_config,
    noise,
    text_embedding,
)

SEED = 7
NUM_BLOCKS = 4


def _model(dtype: torch.dtype) -> CausalWanDiT:
    cfg = get_config("tiny")
    model = CausalWanDiT(cfg, seed=3).to(dtype)
    model.register_prompt("p", text_embedding("a fox in the snow", cfg))
    return model


def reference_forward(
    model: CausalWanDiT, x: Tensor, t: float, frame_offset: int, cache: list[list[tuple[Tensor, Tensor]]]
) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """One forward of one block on a plain cache: list over previous blocks of per-layer (k, v)."""
    f = x.shape[1]
    h = model.embed([x])  # (F, P, dim)
    e, e0 = model.time_conditioning(torch.tensor([float(t)], dtype=torch.float64), torch.tensor([f]))
    freqs = model.rope(torch.arange(f, dtype=torch.float64) + frame_offset)
    ctx = model.prompt_kv("p")
    new_kv = []
    for layer, blk in enumerate(model.blocks):
        mod = blk.modulate(e0)
        q, k, v = blk.pre_attention(h, mod, freqs)  # (N, H, D)
        new_kv.append((k, v))
        keys = torch.cat([c[layer][0] for c in cache] + [k])  # previous blocks, then this one
        vals = torch.cat([c[layer][1] for c in cache] + [v])
        y = F.scaled_dot_product_attention(q[None].transpose(1, 2), keys[None].transpose(1, 2),
                                           vals[None].transpose(1, 2))[0].transpose(0, 1).flatten(1)
        h = blk.post_attention(h, y, mod, [(None, ctx[layer])])
    return model.unpatchify(model.head(h, e), [f])[0], new_kv


def reference_loop(model: CausalWanDiT, dtype: torch.dtype, window: int | None = None, sink: int = 0) -> list[Tensor]:
    """Self-Forcing-style generation: returns each block's final x0."""
    cfg, sampler = model.config, FlowMatchSampler(**SELF_FORCING)
    steps = SELF_FORCING["steps"]
    cache: dict[int, list[tuple[Tensor, Tensor]]] = {}
    outs = []
    for b in range(NUM_BLOCKS):
        visible = [j for j in range(b) if j < sink or window is None or j > b - window]
        ctx = [cache[j] for j in visible]
        x = noise(SEED, b, 0, cfg.latent_shape(), dtype)
        for s, t in enumerate(steps):
            v, _ = reference_forward(model, x, sampler.effective_timestep(t), b * cfg.frames_per_block, ctx)
            x0 = sampler.x0_from_velocity(x, v, sampler.sigma(t))
            if s + 1 < len(steps):
                x = sampler.renoise(x0, noise(SEED, b, s + 1, x.shape, dtype), sampler.sigma(steps[s + 1]))
        _, cache[b] = reference_forward(model, x0, 0.0, b * cfg.frames_per_block, ctx)
        outs.append(x0)
    return outs


def tick_loop(
    model: CausalWanDiT, dtype: torch.dtype, window: int | None = None, sink: int = 0
) -> tuple[list[Tensor], KVPool]:
    """The same generation through `forward_tick` at lag = S, committed KV in a KVPool with eviction."""
    cfg, sampler = model.config, FlowMatchSampler(**SELF_FORCING)
    steps = SELF_FORCING["steps"]
    S = len(steps) + 1  # denoise stages + cache pass
    pool = KVPool()
    outs: list[Tensor] = []
    x = x0 = torch.empty(0)
    for tick in range(NUM_BLOCKS * S):
        b, s = divmod(tick, S)  # lag = S: one block in flight
        if s == 0:
            x = noise(SEED, b, 0, cfg.latent_shape(), dtype)
        reads = [(j, S - 1) for j in range(b) if j < sink or window is None or j > b - window]
        t = sampler.effective_timestep(steps[s]) if s < len(steps) else 0.0
        task = TaskInput(ref=(b, s), latent=x if s < len(steps) else x0, timestep=t,
                         frame_offset=b * cfg.frames_per_block, prompt="p", reads=reads)
        out = model.forward_tick([task], kv=pool.get)
        if s < len(steps):
            x0 = sampler.x0_from_velocity(x, out.velocity[0], sampler.sigma(steps[s]))
            if s + 1 < len(steps):
                x = sampler.renoise(x0, noise(SEED, b, s + 1, x.shape, dtype), sampler.sigma(steps[s + 1]))
        else:
            # last reader of block b: block b + window - 1 (its cache pass), or never for the sink
            last = None if (window is None or b < sink) else (b + window - 1) * S + S - 1
            pool.commit((b, S - 1), out.kv[0], free_after_tick=last)
            outs.append(x0)
        pool.release_through(tick)
    return outs, pool


def test_sequential_equivalence_float64_exact() -> None:
    model = _model(torch.float64)
    ref = reference_loop(model, torch.float64)
    got, _ = tick_loop(model, torch.float64)
    for a, b in zip(ref, got, strict=True):
        assert a.dtype == torch.float64
        assert (a - b).abs().max().item() <= 1e-12


def test_sequential_equivalence_float32() -> None:
    model = _model(torch.float32)
    ref = reference_loop(model, torch.float32)
    got, _ = tick_loop(model, torch.float32)
    for a, b in zip(ref, got, strict=True):
        assert (a - b).abs().max().item() <= 1e-6


def test_window_and_sink_eviction_matches_windowed_cache() -> None:
    model = _model(torch.float64)
    ref = reference_loop(model, torch.float64, window=2, sink=1)
    got, pool = tick_loop(model, torch.float64, window=2, sink=1)
    for a, b in zip(ref, got, strict=True):
        assert (a - b).abs().max().item() <= 1e-12
    # the sink and the last block stay; the evicted middle blocks are gone
    assert pool.refs() == [(0, 4), (NUM_BLOCKS - 1, 4)]
    per_version = model.config.kv_bytes_per_block(8)
    assert pool.bytes_in_use == 2 * per_version
    assert pool.peak_bytes == 3 * per_version  # sink + previous block + the one just committed
    # the window matters: the full-cache result differs
    full = reference_loop(model, torch.float64)
    assert not torch.allclose(full[-1], got[-1])
