"""The shipped weights, and what they were trained for (docs/quality.md); ``python -m apps.toy`` writes them.

- :data:`TOY_WEIGHTS`: ``toy.safetensors`` + ``toy.json``, the trained toy model (the ``cascade`` variant);
- :data:`TOY_SEQUENTIAL_WEIGHTS`: ``toy_sequential.safetensors``, the variant trained on the sequential
  tick only (float16), which ``cascade quality`` measures beside it;
- :data:`TOY_WINDOW`: the attention window (blocks, itself included) the toy runs with: its training
  clips' length, so every block sees at run time what it saw in training.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["TOY_SEQUENTIAL_WEIGHTS", "TOY_WEIGHTS", "TOY_WINDOW"]

TOY_WEIGHTS = Path(__file__).parent / "toy.safetensors"
TOY_SEQUENTIAL_WEIGHTS = Path(__file__).parent / "toy_sequential.safetensors"
TOY_WINDOW = 3
