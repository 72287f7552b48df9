"""Shipped weights: ``toy.safetensors`` + ``toy.json`` (the trained toy model; see docs/quality.md)."""
