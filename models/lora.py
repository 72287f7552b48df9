"""PEFT LoRA adapters merged into the DiT weights at load: ``W <- W + scale * B @ A``.

Layouts read:

- a PEFT folder (``save_pretrained``): ``adapter_model.safetensors`` (or ``.bin``) + ``adapter_config.json``;
- a ``.safetensors`` file, with ``adapter_config.json`` beside it when there is one;
- a ``.pt`` / ``.pth`` file of ``get_peft_model_state_dict`` output, bare or under ``generator_lora``
  (LongLive's ``lora.pt``), whose alpha comes from the caller (the preset) when no config is beside it.

Keys are PEFT's: ``base_model.model.<module>.lora_A.weight`` (r, in) and ``...lora_B.weight`` (out, r), an
optional ``lora_B.bias`` (``lora_bias``), and an adapter name (``lora_A.default.weight``) in raw module state
dicts. ``scale = lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``), per module from ``rank_pattern`` /
``alpha_pattern`` as PEFT resolves them. DoRA and ``fan_in_fan_out`` adapters are refused. Every problem
(a module the model lacks, an A without its B, a shape that does not fit, a targeted layer with no weights)
is collected into one ``CheckpointError`` and the model is left untouched.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cascade_sched.errors import CheckpointError

from .tensorfile import read_tensor_file

__all__ = ["LoRAAdapter", "LoRALayer", "load_lora", "merge_lora"]

_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>A|B)(?:\.(?P<adapter>[^.]+))?\.(?P<what>weight|bias)$")
_PREFIXES = ("base_model.model.", "model.", "module.", "diffusion_model.")
_WRAPPERS = ("_fsdp_wrapped_module", "_orig_mod", "_checkpoint_wrapped_module", "base_layer")


@dataclass(frozen=True)
class LoRALayer:
    """One adapted linear: ``A`` (r, in), ``B`` (out, r), optional ``B`` bias, and its scale."""

    a: Tensor
    b: Tensor
    bias: Tensor | None
    scale: float


@dataclass(frozen=True)
class LoRAAdapter:
    """A loaded adapter: module name (as the adapter names it) -> layer, and where it came from."""

    source: str
    layers: dict[str, LoRALayer]
    rank: int
    alpha: float
    targets: Any = None  # the config's target_modules (list or regex), to check nothing was left out

    def describe(self) -> str:
        return (f"LoRA {self.source} merged into {len(self.layers)} layers (r {self.rank}, alpha {self.alpha:g}, "
                f"scale {self.alpha / self.rank:g})")


def _read_tensors(path: Path) -> dict[str, Tensor]:
    obj = read_tensor_file(path, "LoRA")
    if isinstance(obj, dict) and isinstance(obj.get("generator_lora"), dict):
        obj = obj["generator_lora"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"LoRA {str(path)!r}: expected a dict of lora_A / lora_B tensors")
    return dict(obj)


def _locate(path: str | Path) -> tuple[Path, Path | None]:
    p = Path(path)
    if p.is_dir():
        for name in ("adapter_model.safetensors", "adapter_model.bin"):
            if (p / name).is_file():
                cfg = p / "adapter_config.json"
                return p / name, cfg if cfg.is_file() else None
        raise CheckpointError(f"LoRA folder {str(path)!r} has no adapter_model.safetensors (a PEFT save_pretrained "
                              "folder)")
    if not p.is_file():
        raise CheckpointError(f"LoRA {str(path)!r} does not exist")
    cfg = p.parent / "adapter_config.json"
    return p, cfg if cfg.is_file() else None


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's ``get_pattern_key``: a pattern applies when the module name ends in it (regex allowed)."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def load_lora(path: str | Path, *, alpha: float | None = None) -> LoRAAdapter:
    """Read a PEFT LoRA adapter. `alpha` is used when no ``adapter_config.json`` gives ``lora_alpha``."""
    weights, cfg_path = _locate(path)
    config: dict[str, Any] = {}
    if cfg_path is not None:
        try:
            config = json.loads(cfg_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"LoRA config {str(cfg_path)!r} cannot be read: {exc}") from exc
    if config.get("use_dora"):
        raise CheckpointError(f"LoRA {str(path)!r} is a DoRA adapter (use_dora); only plain LoRA merges exactly here")
    if config.get("fan_in_fan_out"):
        raise CheckpointError(f"LoRA {str(path)!r} has fan_in_fan_out (Conv1D weights); the DiT has nn.Linear layers")
    if "lora_alpha" in config:
        alpha = float(config["lora_alpha"])
    if alpha is None:
        raise CheckpointError(f"LoRA {str(path)!r} has no adapter_config.json beside it, so its alpha is unknown: "
                              "put PEFT's adapter_config.json beside it, or use a --preset that names the LoRA")
    parts: dict[str, dict[str, Tensor]] = {}
    for key, tensor in _read_tensors(weights).items():
        m = _KEY.match(key)
        if m is None:
            raise CheckpointError(f"LoRA {str(path)!r}: {key!r} is not a lora_A / lora_B tensor")
        slot = "bias" if (m["part"], m["what"]) == ("B", "bias") else m["part"] if m["what"] == "weight" else None
        if slot is None:
            raise CheckpointError(f"LoRA {str(path)!r}: {key!r} (a lora_A bias) is not a LoRA tensor PEFT writes")
        parts.setdefault(m["module"], {})[slot] = tensor
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    layers, problems, ranks = {}, [], set()
    for module, got in sorted(parts.items()):
        if "A" not in got or "B" not in got:
            problems.append(f"{module}: lora_{'B' if 'A' in got else 'A'} is missing")
            continue
        a, b = got["A"], got["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            problems.append(f"{module}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not chain")
            continue
        r = int(a.shape[0])
        ranks.add(r)
        cfg_r = _pattern_value(rank_pattern, module, config.get("r", r))
        if int(cfg_r) != r:
            problems.append(f"{module}: rank {r} in the weights, {cfg_r} in the config")
            continue
        mod_alpha = float(_pattern_value(alpha_pattern, module, alpha))
        scale = mod_alpha / (math.sqrt(r) if config.get("use_rslora") else r)
        layers[module] = LoRALayer(a.float(), b.float(), got.get("bias"), scale)
    if problems:
        raise CheckpointError(_listing(f"LoRA {str(path)!r} is malformed:", problems))
    if not layers:
        raise CheckpointError(f"LoRA {str(path)!r} holds no lora_A / lora_B pairs")
    return LoRAAdapter(str(path), layers, max(ranks), alpha, config.get("target_modules"))


def _listing(head: str, items: list[str], limit: int = 8) -> str:
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"{head} {len(items)}: " + "; ".join(items[:limit]) + more


def _model_name(name: str, own: dict[str, nn.Module]) -> str | None:
    parts = [p for p in name.split(".") if p not in _WRAPPERS]
    new = ".".join(parts)
    changed = True
    while new not in own and changed:
        changed = False
        for prefix in _PREFIXES:
            if new.startswith(prefix):
                new, changed = new[len(prefix):], True
    return new if new in own else None


def _targeted(targets: Any, linears: list[str]) -> list[str]:
    if isinstance(targets, str):
        return [n for n in linears if re.fullmatch(targets, n)]
    if isinstance(targets, list):
        return [n for n in linears if any(n == t or n.endswith("." + t) for t in targets)]
    return []


@torch.no_grad()
def merge_lora(model: nn.Module, adapter: LoRAAdapter) -> int:
    """Merge `adapter` into `model`'s linears in place; returns the number of layers merged.

    Everything is checked before the first weight changes; the merge runs in float32. A slice of the DiT
    (``CausalWanDiT(part=...)``) checks the whole adapter against the whole model (its
    ``reference_modules``, on the meta device), so every rank of a ring accepts or refuses it alike, and
    merges only the layers it holds.
    """
    own = dict(model.named_modules())
    reference_modules = getattr(model, "reference_modules", None)
    reference: dict[str, nn.Module] = reference_modules() if callable(reference_modules) else own
    plan: list[tuple[nn.Linear, LoRALayer]] = []
    problems, covered = [], set()
    for name, layer in adapter.layers.items():
        target = _model_name(name, reference)
        module = reference.get(target) if target is not None else None
        if target is None or not isinstance(module, nn.Linear):
            problems.append(f"{name}: no such linear layer in the model" if module is None
                            else f"{name}: {type(module).__name__}, not a linear layer")
            continue
        out_f, in_f = module.weight.shape
        if layer.a.shape[1] != in_f or layer.b.shape[0] != out_f:
            problems.append(f"{name}: adapter ({layer.b.shape[0]} x {layer.a.shape[1]}) vs layer ({out_f} x {in_f})")
            continue
        if layer.bias is not None and (module.bias is None or layer.bias.shape != module.bias.shape):
            problems.append(f"{name}: lora_B bias {tuple(layer.bias.shape)} does not fit the layer's bias")
            continue
        covered.add(target)
        held = own.get(target)
        if isinstance(held, nn.Linear):  # a slice merges only the layers it holds
            plan.append((held, layer))
    linears = [n for n, m in reference.items() if isinstance(m, nn.Linear)]
    problems += [f"{n}: targeted by the config but has no adapter weights"
                 for n in _targeted(adapter.targets, linears) if n not in covered]
    if problems:
        raise CheckpointError(_listing(f"LoRA {adapter.source} does not fit the model:", problems))
    for module, layer in plan:
        delta = layer.scale * (layer.b @ layer.a)  # (out, in), float32
        module.weight.copy_(module.weight.float() + delta)
        if layer.bias is not None:
            module.bias.copy_(module.bias.float() + layer.scale * layer.bias.float())
    clear = getattr(model, "clear_prompt_cache", None)
    if callable(clear):
        clear()  # cross-attention K/V of registered prompts used the old weights
    return len(plan)
