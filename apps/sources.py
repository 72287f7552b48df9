"""Where a run's pieces come from, as its :class:`~apps.request.ModelSource` names them: the model and its
sampler, the text conditioning, the decoder.

- :func:`load_model` builds the DiT (a checkpoint, the toy's shipped weights, or seeded random weights) on
  its device and dtype; :func:`build_sampler` picks its sampler.
- :func:`text_source` picks the :class:`~models.prompts.TextEncoder` a run uses, in this order:
  ``--text-embeddings FILE|stand-in``, ``--text-encoder DIR``, the model folder's ``text_encoder/``, and
  else :func:`models.prompts.default_text_encoder` (the stand-in for test models, a refusal otherwise).
- :func:`encode_prompts` encodes each distinct prompt text of the timeline once; :func:`share_from_rank0`
  hands rank 0's embeddings to every rank, so every rank conditions on the same tensors.
- :func:`decoder_for` picks the decoder: ``--vae PATH`` or the folder's ``vae/``, else the preview (the toy
  model's pixels for ``toy``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor

from apps.flags import model_folder
from apps.request import ModelSource
from cascade_sched.errors import ConfigError
from models.config import ModelConfig, ModelSlice
from models.dit import CausalWanDiT
from models.dtypes import torch_dtype
from models.prompts import EmbeddingsFile, StandInEncoder, TextEncoder, UMT5Encoder, default_text_encoder
from models.sampler import FlowMatchSampler

__all__ = ["build_sampler", "decoder_for", "encode_prompts", "load_model", "prompt_notes", "share_from_rank0",
           "text_source"]

# How long the other ranks wait for rank 0 to load its text encoder and encode (umT5-XXL from disk on a
# CPU takes minutes); a failure on rank 0 stops them at once through the launcher's watchdog instead.
SHARE_WAIT_S = 3600.0
SHARE_KEY = "cascade/text-embeddings"
WEIGHT_ENTRIES = {"generator": "generator", "ema": "generator_ema"}  # --weights -> the checkpoint's entry


def load_model(source: ModelSource, part: ModelSlice | None = None) -> tuple[CausalWanDiT, str]:
    """The source's DiT on its device and dtype, at its block size and resolution, and a line saying which
    weights it has: the checkpoint (its entry, with the LoRA merged), the shipped trained weights for
    ``toy``, else seeded random weights (the same seed on every rank: the same weights). With ``part``
    (one device of a layer ring), only that slice is built and only its tensors are read."""
    from executors.devices import check_device
    from models.checkpoints import load_dit
    from models.lora import load_lora

    dtype = torch_dtype(source.dtype)
    check_device(source.device)
    key = WEIGHT_ENTRIES[source.weights] if source.weights else None
    alpha = None
    if source.preset is not None:
        from models.presets import get_preset

        preset = get_preset(source.preset)
        key = key or preset.weights_entry
        alpha = preset.lora.alpha if preset.lora else None
    config = source.config()
    if source.checkpoint:
        lora = load_lora(source.lora, alpha=alpha) if source.lora else None
        model, report = load_dit(source.checkpoint, config, key=key, lora=lora, part=part)
        what = report.describe()
    elif source.model == "toy":  # the trained toy model ships its weights (models/weights/toy.safetensors)
        from models.weights import TOY_WEIGHTS

        model, report = load_dit(TOY_WEIGHTS, config, part=part)
        what = f"the shipped toy weights ({TOY_WEIGHTS})" + (f"; {report.part}" if report.part else "")
    else:
        if source.lora is not None:
            raise ConfigError("lora", "`--lora` needs `--checkpoint` (the base weights it adapts)")
        from models.config import get_config

        model = CausalWanDiT(config or get_config("toy"), seed=0, part=part)
        what = "seeded random weights (seed 0)" + (f"; {part.describe()}" if part is not None else "")
    return model.to(device=source.device, dtype=dtype).eval(), what


def build_sampler(source: ModelSource, model: str) -> FlowMatchSampler:
    """The sampler of ``source``'s ``model`` (its geometry's name): the preset's (``shift`` overriding its
    shift), else ``shift``, else the one saved with the weights (the shipped toy model, or a cascade model
    folder), else Self-Forcing's."""
    from models.checkpoints import load_sampler

    if source.preset is not None:
        from models.presets import get_preset

        p = get_preset(source.preset)
        return FlowMatchSampler(shift=p.shift if source.shift is None else source.shift, steps=p.steps, warp=p.warp)
    if source.shift is not None:
        return FlowMatchSampler(shift=source.shift)
    saved = None
    if source.checkpoint:
        saved = load_sampler(source.checkpoint)
    elif model == "toy":
        from models.weights import TOY_WEIGHTS

        saved = load_sampler(TOY_WEIGHTS)
    return saved or FlowMatchSampler()


def text_source(source: ModelSource, config: ModelConfig, texts: list[str]) -> TextEncoder:
    """The text encoder ``source`` names (see the module docstring); built on its ``text_encoder_device``."""
    if source.text_embeddings == "stand-in":
        return StandInEncoder(config)
    if source.text_embeddings:
        return EmbeddingsFile(source.text_embeddings, texts)
    folder = source.text_encoder
    if folder is None and source.model_dir is not None:
        found = model_folder(source.model_dir, need_text=True, need_vae=False)
        folder = str(found.root) if found is not None else None
    if folder is not None:
        return UMT5Encoder(folder, device=source.text_encoder_device, max_length=config.text_len,
                           text_dim=config.text_dim)
    return default_text_encoder(config)


def prompt_notes(source: ModelSource, texts: Iterable[str]) -> list[str]:
    """One note per prompt that the run's text encoder reads only in part: the toy's vocabulary encoder
    (``models.toy_text``) says which words it ignores and what it knows."""
    if source.model != "toy" or source.text_embeddings or source.text_encoder or source.model_dir:
        return []
    from models.toy_text import prompt_note

    return [note for note in map(prompt_note, dict.fromkeys(texts)) if note]


def encode_prompts(encoder: TextEncoder, texts: Mapping[int, str], config: ModelConfig) -> dict[int, Tensor]:
    """Prompt id -> embedding, each distinct text encoded once, shapes checked against the model."""
    by_text: dict[str, Tensor] = {}
    out = {}
    for pid, text in sorted(texts.items()):
        if text not in by_text:
            emb = encoder.encode(text)
            if emb.ndim != 2 or emb.shape[0] > config.text_len or emb.shape[1] != config.text_dim:
                raise ConfigError("text_embeddings", f"{encoder.name}: prompt {text!r} gives shape {tuple(emb.shape)}, "
                                  f"but model {config.name!r} takes (L <= {config.text_len}, {config.text_dim})")
            by_text[text] = emb.float().cpu()
        out[pid] = by_text[text]
    return out


def share_from_rank0(value: Any, rank: int, world: int) -> Any:
    """Rank 0's `value` on every rank of the initialised group.

    The others first wait on the group's store (up to ``SHARE_WAIT_S``, not the collectives' timeout, while
    rank 0 loads its encoder and encodes), then take the value in one ``broadcast_object_list`` (the store
    caps a value at 8 MiB; one umT5-XXL prompt is 8 MiB).
    """
    if world == 1:
        return value
    import torch.distributed as dist

    store = dist.distributed_c10d._get_default_store()
    if rank == 0:
        store.set(SHARE_KEY, b"ready")  # type: ignore[arg-type]  # torch: Store.set is typed str, takes bytes
    else:
        store.wait([SHARE_KEY], timedelta(seconds=SHARE_WAIT_S))
    box = [value if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def preview_decoder(config: ModelConfig) -> Any:
    """The decoder of a model without a VAE: the toy's latent is its pixels; any other model gets the
    latent preview (uint8 frames (T, H, W, 3) per block, in block order)."""
    from models.decode import LatentPreviewDecoder, PixelDecoder

    return PixelDecoder() if config.name == "toy" else LatentPreviewDecoder(channels=config.in_channels)


def decoder_for(source: ModelSource, config: ModelConfig, device: str) -> Any:
    """The decoder of a run, on ``device`` (Wan VAE / TAEHV / preview / the toy's pixels): on a GPU in the
    run's dtype (float32 for a float64 run), else float32."""
    from models.decode import open_decoder

    path = source.vae
    if path is None and source.model_dir is not None:
        found = model_folder(source.model_dir, need_text=False, need_vae=True)
        path = str(found.vae) if found is not None and found.vae is not None else None
    if path is None:
        return preview_decoder(config)
    on_gpu = device.startswith("cuda") and source.dtype != "float64"
    decoder = open_decoder(path, device=device, dtype=torch_dtype(source.dtype) if on_gpu else torch.float32)
    z = int(decoder.vae.config.z_dim) if hasattr(decoder, "vae") else int(decoder.latent_channels)
    if z != config.in_channels:
        raise ConfigError("vae", f"`--vae` {path!r} decodes {z}-channel latents, but model {config.name!r} makes "
                                 f"{config.in_channels}")
    return decoder
