"""What a layer-ring rank holds of the model: the stand-in for parts it does not hold, the whole model on the
meta device that slices are checked against, seeded initialisation that agrees with the whole model, and
slices taken from a loaded model.

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

import functools
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from cascade_sched.errors import ExecutorError

from .config import ModelConfig, ModelSlice

if TYPE_CHECKING:
    from .dit import CausalWanDiT

__all__ = ["NotHeld", "init_weights", "parameter_bytes", "reference_model", "take_slice"]


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


@functools.lru_cache(maxsize=4)
def reference_model(config: ModelConfig) -> CausalWanDiT:
    """The whole model of ``config`` on the meta device: every parameter's name and shape, no storage. A
    slice checks checkpoints and LoRA adapters against it and draws its seeded init in its order."""
    from .dit import CausalWanDiT

    with torch.device("meta"):
        return CausalWanDiT(config, seed=None)


def reference_modules(model: CausalWanDiT) -> dict[str, nn.Module]:
    """Every module of the whole model by name, in registration order: ``model``'s own when it is whole,
    else those of :func:`reference_model` (on the meta device)."""
    return dict((model if model.whole else reference_model(model.config)).named_modules())


@torch.no_grad()
def init_weights(model: CausalWanDiT, seed: int = 0) -> None:
    """Wan's initialisation from a private generator (xavier linears, N(0, 0.02) embeddings), except that the
    output head is random rather than zero, so an untrained model gives non-trivial outputs.

    A slice draws every value the whole model draws, in the same order, and keeps its own, so it equals the
    same slice of the seeded whole model (the draws cost the whole model's time, not its memory)."""
    g = torch.Generator().manual_seed(seed)
    own, dtype, root = dict(model.named_modules()), model.dtype, model.config.dim**0.5

    def keep(name: str, values: Tensor, attr: str = "weight") -> None:
        """Copy `values` (drawn from g whether or not they are held) into module `name`'s `attr`, if held."""
        target = getattr(own[name], attr, None) if name in own else None
        if isinstance(target, Tensor):
            target.copy_(values.view_as(target))

    reference = reference_modules(model)
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
    for layer in range(model.config.num_layers):
        keep(f"blocks.{layer}", torch.randn(1, 6, model.config.dim, generator=g) / root, "modulation")
    keep("head", torch.randn(1, 2, model.config.dim, generator=g) / root, "modulation")


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of the parameters ``model`` holds (what it materialised; ``ModelConfig.parameter_count`` of its
    slice, times the weight dtype's size)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def take_slice(model: CausalWanDiT, part: ModelSlice) -> CausalWanDiT:
    """The slice ``part`` of a whole ``model``, sharing its tensors (no copy): what a rank of a layer ring
    would have loaded. Its prompts are registered again as they are in ``model``.

    >>> from models.config import get_config
    >>> from models.dit import CausalWanDiT
    >>> whole = CausalWanDiT(get_config("tiny"))
    >>> take_slice(whole, whole.config.layer_slice(0, 1)).part.describe()
    'layers [0, 1) + entry'
    """
    from .dit import CausalWanDiT

    if not model.whole:
        raise ExecutorError(f"take_slice needs the whole model; this one holds {model.part.describe()}")
    with torch.device("meta"):
        piece = CausalWanDiT(model.config, seed=None, part=part)
    state = model.state_dict()
    piece.load_state_dict({k: state[k] for k in piece.state_dict()}, assign=True)
    for key, embeddings in model._prompts.items():
        piece.register_prompt(key, embeddings)
    return piece
