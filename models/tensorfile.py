"""Reading a file of tensors (``.safetensors``, or ``.pt``/``.pth``/``.bin``/``.ckpt`` through
``torch.load(weights_only=True)``, which never unpickles code), with one ``CheckpointError`` for each way
it can fail. Checkpoints, LoRA adapters, TAEHV weights and prompt embeddings all read through it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cascade_sched.errors import CheckpointError

__all__ = ["TORCH_SUFFIXES", "read_tensor_file"]

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def read_tensor_file(path: str | Path, what: str) -> Any:
    """The object stored at `path` on the CPU; `what` names it in errors ("checkpoint", "LoRA", ...)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{what} {str(path)!r} does not exist or is not a file")
    suffix = p.suffix.lower()
    if suffix != ".safetensors" and suffix not in TORCH_SUFFIXES:
        raise CheckpointError(f"{what} {str(path)!r}: unknown format {suffix!r}; use .safetensors, .pt or .pth")
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p), device="cpu")
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, non-tensor pickle, ...
        raise CheckpointError(f"{what} {str(path)!r} cannot be read: {exc}") from exc
