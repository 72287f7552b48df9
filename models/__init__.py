"""Block-causal Wan2.1-family DiT with an explicit KV interface, its sampler, KV pool, loaders and decoders.

>>> from models import CausalWanDiT, get_config
>>> CausalWanDiT(get_config("tiny")).config.tokens_per_block
12
"""

from __future__ import annotations

from .checkpoints import load_checkpoint, load_model, load_state_dict, map_wan_keys, save_model
from .config import PRESETS, ModelConfig, get_config
from .decode import LatentPreviewDecoder, WanVAEDecoder
from .dit import CausalWanDiT, Exchange, KVLookup, KVRef, TaskInput, TickOutput, WanBlock
from .kv import KVPool
from .prompts import load_embeddings, text_embedding, umt5_embedding
from .sampler import CAUSVID, SELF_FORCING, FlowMatchSampler, noise, noise_seed

__all__ = [
    "CAUSVID",
    "PRESETS",
    "SELF_FORCING",
    "CausalWanDiT",
    "Exchange",
    "FlowMatchSampler",
    "KVLookup",
    "KVPool",
    "KVRef",
    "LatentPreviewDecoder",
    "ModelConfig",
    "TaskInput",
    "TickOutput",
    "WanBlock",
    "WanVAEDecoder",
    "get_config",
    "load_checkpoint",
    "load_embeddings",
    "load_model",
    "load_state_dict",
    "map_wan_keys",
    "noise",
    "noise_seed",
    "save_model",
    "text_embedding",
    "umt5_embedding",
]
