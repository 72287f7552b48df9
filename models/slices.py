"""What a layer-ring rank holds of the model: the stand-in for the parts it does not hold, seeded
initialisation that agrees with the whole model, and the bytes it holds. (The whole model on the meta device
that slices are checked against is ``models.dit.reference_model``; a slice cut from a loaded model,
``models.checkpoints.take_slice``.)

A slice (:class:`models.config.ModelSlice`) builds only what it holds: its layers, the entry and the head
when it holds them, and what every rank needs (the time embedding and projection, the text embedding).
What it does not hold is a :class:`NotHeld`, with no parameters, so a slice's parameter bytes are its share.

>>> from models.config import get_config
>>> from models.dit import CausalWanDiT
>>> cfg = get_config("tiny")
>>> whole, last = CausalWanDiT(cfg), CausalWanDiT(cfg, part=cfg.layer_slice(1))
>>> torch.equal(last.block(1).ffn[0].weight, whole.block(1).ffn[0].weight)
True
>>> parameter_bytes(last) < parameter_bytes(whole)
True
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cascade_sched.errors import ExecutorError

from .config import ModelConfig, ModelSlice

__all__ = ["NotHeld", "init_weights", "parameter_bytes"]


class NotHeld(nn.Module):
    """Stands where a slice does not hold a part of the model (a layer, the entry, the head): no
    parameters, nothing in the state dict, and one clear error if it is run."""

    def __init__(self, what: str, part: ModelSlice) -> None:
        super().__init__()
        self.what, self.held = what, part.describe()

    def forward(self, *_: object) -> Tensor:
        raise ExecutorError(f"this model holds {self.held}, not {self.what}")

    def extra_repr(self) -> str:
        return f"{self.what}: not held"


@torch.no_grad()
def init_weights(model: nn.Module, reference: dict[str, nn.Module], config: ModelConfig, seed: int = 0) -> None:
    """Wan's initialisation from a private generator (xavier linears, N(0, 0.02) embeddings), except that the
    output head is random rather than zero, so an untrained model gives non-trivial outputs.

    ``reference`` is every module of the whole model by name, in registration order (the model's own when
    it is whole). A slice draws every value the whole model draws, in that order, and keeps its own, so it
    equals the same slice of the seeded whole model (the draws cost the whole model's time, not its memory)."""
    g = torch.Generator().manual_seed(seed)
    own, root = dict(model.named_modules()), config.dim**0.5
    dtype = model.get_parameter("time_embedding.0.weight").dtype  # every slice holds it

    def keep(name: str, values: Tensor, attr: str = "weight") -> None:
        """Copy `values` (drawn from g whether or not they are held) into module `name`'s `attr`, if held."""
        target = getattr(own[name], attr, None) if name in own else None
        if isinstance(target, Tensor):
            target.copy_(values.view_as(target))

    for name, m in reference.items():
        if isinstance(m, nn.Linear):
            keep(name, nn.init.xavier_uniform_(torch.empty(m.weight.shape, dtype=dtype), generator=g))
            keep(name, torch.zeros(m.weight.shape[0]), "bias")
    w = reference["patch_embedding"].get_parameter("weight")
    keep("patch_embedding", nn.init.xavier_uniform_(torch.empty(w.shape[0], w[0].numel()), generator=g))
    keep("patch_embedding", torch.zeros(w.shape[0]), "bias")
    for seq in ("text_embedding", "time_embedding"):
        for name, m in reference.items():
            if name.startswith(seq + ".") and isinstance(m, nn.Linear):
                keep(name, torch.randn(m.weight.shape, generator=g) * 0.02)
    for layer in range(config.num_layers):
        keep(f"blocks.{layer}", torch.randn(1, 6, config.dim, generator=g) / root, "modulation")
    keep("head", torch.randn(1, 2, config.dim, generator=g) / root, "modulation")


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of the parameters ``model`` holds (what it materialised; ``ModelConfig.parameter_count`` of its
    slice, times the weight dtype's size)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())
