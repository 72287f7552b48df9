"""Where a generation's pieces come from: the model folder, the text conditioning, the decoder.

- :func:`model_folder` checks a diffusers-style Wan2.1 folder (``text_encoder/``, ``tokenizer/``, ``vae/``)
  and names a missing piece in one line.
- :func:`text_source` picks the :class:`~models.prompts.TextEncoder` a run uses, in this order:
  ``--text-embeddings FILE|stand-in``, ``--text-encoder DIR``, the model folder's ``text_encoder/``, and
  else :func:`models.prompts.default_text_encoder` (the stand-in for test models, a refusal otherwise).
- :func:`encode_prompts` encodes each distinct prompt text of the timeline once; :func:`share_from_rank0`
  hands rank 0's embeddings to every rank, so every rank conditions on the same tensors.
- :func:`decoder_for` picks the decoder: ``--vae PATH`` or the folder's ``vae/``, else the preview (the toy
  model's pixels for ``toy``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cascade_sched.errors import ConfigError
from models.config import ModelConfig
from models.prompts import EmbeddingsFile, StandInEncoder, TextEncoder, UMT5Encoder, default_text_encoder

__all__ = ["ModelFolder", "decoder_for", "encode_prompts", "model_folder", "share_from_rank0", "text_source"]

# How long the other ranks wait for rank 0 to load its text encoder and encode (umT5-XXL from disk on a
# CPU takes minutes); a failure on rank 0 stops them at once through the launcher's watchdog instead.
SHARE_WAIT_S = 3600.0
SHARE_KEY = "cascade/text-embeddings"


@dataclass(frozen=True)
class ModelFolder:
    """The pieces of a diffusers-style Wan2.1 folder that a generation uses (None: absent)."""

    root: Path
    text_encoder: Path | None  # the folder itself (it holds text_encoder/ and tokenizer/)
    vae: Path | None


def model_folder(path: str | None, *, need_text: bool, need_vae: bool) -> ModelFolder | None:
    """Check `path` (``--model-dir``) for the pieces the run takes from it; ConfigError naming one missing."""
    if path is None:
        return None
    root = Path(path)
    if not root.is_dir():
        raise ConfigError("model_dir", f"`--model-dir` {path!r} is not a folder")
    text = root if (root / "text_encoder").is_dir() and (root / "tokenizer").is_dir() else None
    vae = root / "vae" if (root / "vae" / "config.json").is_file() else None
    for needed, piece, have in ((need_text, "text_encoder/ and tokenizer/", text), (need_vae, "vae/", vae)):
        if needed and have is None:
            raise ConfigError("model_dir", f"`--model-dir` {path!r} has no {piece} (a diffusers Wan2.1 folder holds "
                                           "text_encoder/, tokenizer/ and vae/; or pass that piece's own flag)")
    return ModelFolder(root, text, vae)


def text_source(job: Any, config: ModelConfig, texts: list[str]) -> TextEncoder:
    """The text encoder `job` names (see the module docstring); built on ``job.text_encoder_device``."""
    if job.text_embeddings == "stand-in":
        return StandInEncoder(config)
    if job.text_embeddings:
        return EmbeddingsFile(job.text_embeddings, texts)
    folder = job.text_encoder
    if folder is None and job.model_dir is not None:
        found = model_folder(job.model_dir, need_text=True, need_vae=False)
        folder = str(found.text_encoder) if found is not None and found.text_encoder is not None else None
    if folder is not None:
        return UMT5Encoder(folder, device=job.text_encoder_device, max_length=config.text_len,
                           text_dim=config.text_dim)
    return default_text_encoder(config)


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
        store.set(SHARE_KEY, b"ready")
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


def decoder_for(job: Any, config: ModelConfig, device: str) -> Any:
    """The decoder of a run, on `device` (Wan VAE / TAEHV / preview / the toy's pixels)."""
    from models.decode import open_decoder

    path = job.vae
    if path is None and job.model_dir is not None:
        found = model_folder(job.model_dir, need_text=False, need_vae=True)
        path = str(found.vae) if found is not None and found.vae is not None else None
    if path is None:
        return preview_decoder(config)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float32}[job.dtype]
    decoder = open_decoder(path, device=device, dtype=dtype if device.startswith("cuda") else torch.float32)
    z = int(decoder.vae.config.z_dim) if hasattr(decoder, "vae") else int(decoder.latent_channels)
    if z != config.in_channels:
        raise ConfigError("vae", f"`--vae` {path!r} decodes {z}-channel latents, but model {config.name!r} makes "
                                 f"{config.in_channels}")
    return decoder
