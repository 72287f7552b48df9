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
from .toy_world import COLOURS, VOCABULARY, parse_prompt, prompt_words

__all__ = ["ToyTextEncoder", "prompt_note", "toy_text_embedding", "unknown_words"]


def toy_text_embedding(text: str, text_dim: int) -> Tensor:
    """(1, text_dim) float32: the prompt's vocabulary words as a multi-hot row."""
    if text_dim < len(VOCABULARY):
        raise ConfigError("text_dim", f"the toy vocabulary has {len(VOCABULARY)} words; text_dim {text_dim} is too small")
    out = torch.zeros(1, text_dim)
    for word in parse_prompt(text).words:
        out[0, VOCABULARY.index(word)] = 1.0
    return out


def unknown_words(text: str) -> list[str]:
    """The words of a prompt outside the toy's vocabulary, each once, in order.

    >>> unknown_words("a purple elephant, fast")
    ['a', 'purple', 'elephant']
    """
    out: list[str] = []
    for word in prompt_words(text):
        if word not in VOCABULARY and word not in out:
            out.append(word)
    return out


def prompt_note(text: str) -> str | None:
    """One note line for a prompt with words the toy does not know (None when it knows every word): which
    words it ignores, what it knows, and what it will draw.

    >>> print(prompt_note("purple elephant"))
    note: the toy model knows only red, green, blue, slow, fast; it ignores 'purple', 'elephant' in 'purple elephant' and draws red green blue slow (no colour named: every ball)
    >>> prompt_note("red fast") is None
    True
    """
    unknown = unknown_words(text)
    if not unknown:
        return None
    parsed = parse_prompt(text)
    every = " (no colour named: every ball)" if not any(w in COLOURS for w in prompt_words(text)) else ""
    return (f"note: the toy model knows only {', '.join(VOCABULARY)}; it ignores {', '.join(map(repr, unknown))} in "
            f"{text!r} and draws {' '.join(parsed.words)}{every}")


class ToyTextEncoder:
    """`toy_text_embedding` behind the `models.prompts.TextEncoder` protocol."""

    name = "toy vocabulary (" + " ".join(VOCABULARY) + ")"

    def __init__(self, config: ModelConfig) -> None:
        self.config = config

    def encode(self, text: str) -> Tensor:
        return toy_text_embedding(text, self.config.text_dim)

    def close(self) -> None:
        return None
