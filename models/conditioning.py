"""The prompts' side of the DiT: text-encoder outputs registered per prompt, and their cross-attention K/V
per layer, computed once per prompt, dtype and device and cached (a slice computes only its own layers').

:class:`PromptConditioning` is a mixin of :class:`models.dit.CausalWanDiT`, which supplies the config, the
text embedding and the blocks.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from cascade_sched.errors import ConfigError, ExecutorError
from cascade_sched.schedule import share_groups

from .attention import CrossKV, KVPair, Range
from .config import ModelConfig
from .layers import WanBlock, _heads, _linear

__all__ = ["PromptConditioning"]


class PromptConditioning:
    """Registered prompts and their per-layer cross-attention K/V (mixed into ``CausalWanDiT``)."""

    config: ModelConfig
    text_embedding: nn.Module
    _prompts: dict[Hashable, Tensor]
    _prompt_kv: dict[tuple[Hashable, torch.dtype, torch.device], list[KVPair]]
    # Stacked per-input prompt K/V of recent prompt mixes (batched cross-attention), with their sources.
    _prompt_kv_batched: dict[tuple[int, ...], tuple[list[list[KVPair]], list[KVPair]]]

    if TYPE_CHECKING:  # supplied by CausalWanDiT
        @property
        def dtype(self) -> torch.dtype: ...
        @property
        def device(self) -> torch.device: ...
        @property
        def layers(self) -> range: ...
        def block(self, layer: int) -> WanBlock: ...

    def _init_prompts(self) -> None:
        self._prompts, self._prompt_kv, self._prompt_kv_batched = {}, {}, {}

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
        """Cross-attention (k, v) of a registered prompt for each layer this model holds (entry i is layer
        ``layers[i]``), each (text_len, heads, head_dim)."""
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
        """Cross-attention (k, v) of each held layer (entry i is layer ``layers[i]``), each (..., text_len,
        heads, head_dim), of padded text-encoder outputs (..., text_len, text_dim); with autograd (training
        calls it on batches of prompts). A slice computes only its own layers' K/V."""
        cfg = self.config
        ctx = self.text_embedding(ctx)  # (..., L, dim)
        out = []
        for layer in self.layers:
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
        stacked = [(torch.stack([s[i][0] for s in sources]), torch.stack([s[i][1] for s in sources]))
                   for i in range(len(self.layers))]
        if len(self._prompt_kv_batched) >= 4:
            self._prompt_kv_batched.pop(next(iter(self._prompt_kv_batched)))
        self._prompt_kv_batched[key] = (sources, stacked)  # holding `sources` keeps their ids from being reused
        return stacked

    def cross_kv(self, prompts: Sequence[Hashable], ranges: Sequence[Range], *, batched: bool) -> list[CrossKV]:
        """Per held layer, the cross-attention K/V of a tick whose inputs use `prompts` and own token
        `ranges`: grouped (inputs with one prompt share one SDPA; `share_groups`) or batched
        (`prompt_kv_batched`)."""
        if batched:
            return list(self.prompt_kv_batched(prompts))
        groups = share_groups(prompts)
        kvs = [self.prompt_kv(p) for p, _ in groups]
        if len(groups) == 1:
            return [[(None, pair)] for pair in kvs[0]]
        return [[([ranges[i] for i in members], kv[j]) for (_, members), kv in zip(groups, kvs, strict=True)]
                for j in range(len(self.layers))]
