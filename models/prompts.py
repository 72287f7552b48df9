"""Prompt embeddings: umT5 outputs from a file, the real encoder when installed, or a deterministic stand-in.

The model cross-attends to text-encoder outputs of shape (L, text_dim) (umT5-XXL: up to 512 x 4096).

- `load_embeddings(path)`: a .safetensors or .pt/.pth file of precomputed umT5 outputs (one tensor, or a dict
  of named prompts).
- `umt5_embedding(text, path)`: the real encoder through `transformers` (optional extra) from a diffusers-style
  Wan2.1 folder (``text_encoder/`` + ``tokenizer/``) or a plain UMT5 encoder folder.
- `text_embedding(text, config)`: for demos without weights (tiny, small, or any config): a deterministic
  embedding of the text. One row per whitespace word plus one end row (like a tokenizer's ``</s>``), capped
  at `text_len`; row i is standard normal noise from a CPU generator seeded by the first 8 bytes of
  sha256(``"{i}:{word_i}"``), so equal words at equal positions give equal rows, the same text always gives
  the same tensor, and every machine agrees. Rows past the text are zero, as Wan pads umT5 outputs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import Tensor

from cascade_sched.errors import CascadeError, CheckpointError

from .config import ModelConfig

__all__ = ["load_embeddings", "text_embedding", "umt5_embedding"]


def _row_seed(index: int, word: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{index}:{word}".encode()).digest()[:8], "little") & (2**63 - 1)


def text_embedding(text: str, config: ModelConfig) -> Tensor:
    """Deterministic stand-in for umT5 outputs: (text_len, text_dim) float32 (see the module docstring).

    >>> from models.config import get_config
    >>> e = text_embedding("a red fox", get_config("tiny"))
    >>> e.shape, bool((e[4:] == 0).all()), torch.equal(e, text_embedding("a red fox", get_config("tiny")))
    (torch.Size([8, 32]), True, True)
    """
    words = [*text.split(), "</s>"][: config.text_len]
    out = torch.zeros(config.text_len, config.text_dim)
    for i, word in enumerate(words):
        g = torch.Generator().manual_seed(_row_seed(i, word))
        out[i] = torch.randn(config.text_dim, generator=g)
    return out


def load_embeddings(path: str | Path) -> dict[str, Tensor]:
    """Read precomputed text-encoder outputs; returns {name: (L, text_dim)}.

    A file holding a single tensor gives ``{"prompt": tensor}``; a (1, L, D) batch of one is squeezed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"prompt embeddings {str(path)!r} do not exist")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"prompt embeddings {str(path)!r} cannot be read: {exc}") from exc
    items = {"prompt": obj} if isinstance(obj, Tensor) else obj
    if not isinstance(items, dict) or not items or not all(isinstance(v, Tensor) for v in items.values()):
        raise CheckpointError(f"prompt embeddings {str(path)!r}: expected a tensor or a dict of tensors")
    out = {}
    for name, t in items.items():
        if t.ndim == 3 and t.shape[0] == 1:
            t = t[0]
        if t.ndim != 2:
            raise CheckpointError(f"prompt embeddings {str(path)!r}: {name!r} has shape {tuple(t.shape)}, expected (L, D)")
        out[str(name)] = t.float()
    return out


def umt5_embedding(text: str, path: str | Path, *, max_length: int = 512, device: str = "cpu") -> Tensor:
    """umT5-XXL outputs (L, 4096) for `text`, trimmed to its real tokens as Wan does (needs `transformers`).

    `path` is a diffusers-style Wan2.1 folder (``text_encoder/``, ``tokenizer/``) or a folder holding both.
    """
    try:
        from transformers import AutoTokenizer, UMT5EncoderModel
    except ImportError as exc:
        raise CascadeError(
            "the umT5 text encoder needs `transformers` (pip install 'cascade-sched[vae]'); "
            "alternatively pass precomputed embeddings with load_embeddings()"
        ) from exc
    root = Path(path)
    enc_dir = root / "text_encoder" if (root / "text_encoder").is_dir() else root
    tok_dir = root / "tokenizer" if (root / "tokenizer").is_dir() else root
    if not enc_dir.is_dir():
        raise CheckpointError(f"umT5 weights folder {str(path)!r} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    encoder = UMT5EncoderModel.from_pretrained(str(enc_dir)).to(device).eval()
    batch = tokenizer([text], max_length=max_length, padding="max_length", truncation=True,
                      add_special_tokens=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(input_ids=batch.input_ids.to(device),
                         attention_mask=batch.attention_mask.to(device)).last_hidden_state[0]  # (max_length, D)
    n = int(batch.attention_mask.sum())
    return hidden[:n].float().cpu()
