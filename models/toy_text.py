"""The toy model's text encoder: the prompt vocabulary of the toy world (`models.toy_world.VOCABULARY`).

A prompt becomes one row of ``text_dim`` values: 1 at the index of every vocabulary word it names (its
parsed colours and speed, `toy_world.parse_prompt`, so "blue red" and "red blue slow" are the same
prompt), 0 elsewhere. The learned part of the embedding is the model's own ``text_embedding`` layers,
trained with the toy (`models/train_toy.py`) and shipped in the same safetensors; this class only names
the words. `models.prompts.default_text_encoder` gives it to the ``toy`` model.

>>> from models.config import get_config
>>> ToyTextEncoder(get_config("toy")).encode("red fast")[0, :5].tolist()
[1.0, 0.0, 0.0, 0.0, 1.0]
"""

from __future__ import annotations

import torch
from torch import Tensor

from cascade_sched.errors import ConfigError

from .config import ModelConfig
from .toy_world import VOCABULARY, parse_prompt

__all__ = ["ToyTextEncoder", "toy_text_embedding"]


def toy_text_embedding(text: str, text_dim: int) -> Tensor:
    """(1, text_dim) float32: the prompt's vocabulary words as a multi-hot row."""
    if text_dim < len(VOCABULARY):
        raise ConfigError("text_dim", f"the toy vocabulary has {len(VOCABULARY)} words; text_dim {text_dim} is too small")
    out = torch.zeros(1, text_dim)
    for word in parse_prompt(text).words:
        out[0, VOCABULARY.index(word)] = 1.0
    return out


class ToyTextEncoder:
    """`toy_text_embedding` behind the `models.prompts.TextEncoder` protocol."""

    name = "toy vocabulary (" + " ".join(VOCABULARY) + ")"

    def __init__(self, config: ModelConfig) -> None:
        self.config = config

    def encode(self, text: str) -> Tensor:
        return toy_text_embedding(text, self.config.text_dim)

    def close(self) -> None:
        return None
