"""Block-causal Wan2.1-family DiT with an explicit KV interface, its sampler, KV pool, loaders and decoders.

>>> from models import CausalWanDiT, get_config
>>> CausalWanDiT(get_config("tiny")).config.tokens_per_block
12

The names below load lazily, so ``import models.config`` (the model geometry, which the simulator reads)
imports no torch.
"""

from __future__ import annotations

from cascade_sched.lazy import lazy_exports

_EXPORTS = {
    "load_checkpoint": "models.checkpoints",
    "load_model": "models.checkpoints",
    "load_state_dict": "models.checkpoints",
    "map_wan_keys": "models.checkpoints",
    "save_model": "models.checkpoints",
    "PRESETS": "models.config",
    "ModelConfig": "models.config",
    "ModelSlice": "models.config",
    "get_config": "models.config",
    "parse_resolution": "models.config",
    "LatentPreviewDecoder": "models.decode",
    "WanVAEDecoder": "models.decode",
    "CausalWanDiT": "models.dit",
    "Exchange": "models.dit",
    "HiddenState": "models.dit",
    "SliceOutput": "models.dit",
    "KVLookup": "models.dit",
    "KVRef": "models.dit",
    "TaskInput": "models.dit",
    "TickOutput": "models.dit",
    "WanBlock": "models.dit",
    "KVPool": "models.kv",
    "TextEncoder": "models.prompts",
    "default_text_encoder": "models.prompts",
    "load_embeddings": "models.prompts",
    "text_embedding": "models.prompts",
    "umt5_embedding": "models.prompts",
    "CAUSVID": "models.sampler",
    "SELF_FORCING": "models.sampler",
    "FlowMatchSampler": "models.sampler",
    "noise": "models.sampler",
    "noise_seed": "models.sampler",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
