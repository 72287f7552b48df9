"""Load Wan2.1-family DiT weights exactly, or not at all; save and load the project's own format.

The model names its parameters exactly as Wan2.1's ``WanModel`` does (``patch_embedding``,
``text_embedding.0/.2``, ``time_embedding.0/.2``, ``time_projection.1``, ``blocks.N.self_attn.{q,k,v,o,
norm_q,norm_k}``, ``blocks.N.norm3``, ``blocks.N.cross_attn.{...}``, ``blocks.N.ffn.0/.2``,
``blocks.N.modulation``, ``head.head``, ``head.modulation``), so mapping a public checkpoint only means
unwrapping it:

- nesting: Self-Forcing and CausVid training checkpoints hold the state dict under ``generator_ema`` /
  ``generator``, others under ``state_dict``, ``model`` or ``module``. A file holding both generator
  entries is refused unless the caller names one (``key=``, ``--weights``, or a preset): the pipelines
  disagree (Self-Forcing's README loads EMA, LongLive and CausVid load ``generator``), so there is no
  safe default. The load report says which entry was read;
- prefixes: ``model.`` (Self-Forcing's ``WanDiffusionWrapper.model``), ``module.`` (DDP),
  ``diffusion_model.``, and the wrapper components ``_fsdp_wrapped_module`` / ``_orig_mod`` /
  ``_checkpoint_wrapped_module`` anywhere in a name.

Missing keys, unexpected keys and shape mismatches are collected and raised together as one
CheckpointError (with the preset the checkpoint's shapes do match, if any); the model is only touched
when everything matches. A PEFT LoRA adapter (models/lora.py) is merged after the base weights load.

A slice of the model (``part=``, one rank of a layer ring) is built on the meta device and loaded from the
same files, reading only its own tensors (``models.tensorfile.open_tensor_file``: ``safe_open`` per key,
sharded safetensors by their index, ``.pt`` memory-mapped). The rule is the whole model's, restricted to
what the slice holds: every tensor it holds must be there with its shape; a name the whole model does not
have, or a tensor of the wrong shape anywhere in the file, is refused on every rank alike.

Own format: a directory with ``model.safetensors`` and ``config.json`` (``{"format": "cascade-model/1",
"config": {...}}``), or a ``NAME.safetensors`` file with ``NAME.json`` beside it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cascade_sched.errors import CheckpointError

from .config import PRESETS, ModelConfig, ModelSlice, get_config
from .dit import CausalWanDiT, reference_model
from .lora import LoRAAdapter, merge_lora
from .sampler import FlowMatchSampler
from .tensorfile import SafetensorsFile, TrackedTensors, describe, open_tensor_file, tensor_shape

__all__ = ["LoadReport", "guess_config", "load_checkpoint", "load_dit", "load_model", "load_state_dict",
           "map_wan_keys", "open_state_dict", "read_state_dict", "save_model", "take_slice"]

FORMAT = "cascade-model/1"
NEST_KEYS = ("generator_ema", "generator", "state_dict", "model", "module", "ema")
GENERATOR_ENTRIES = ("generator", "generator_ema")
_GUESS_KEYS = ("patch_embedding.weight", "blocks.0.ffn.0.weight", "text_embedding.0.weight")
PREFIXES = ("model.", "module.", "diffusion_model.")
WRAPPERS = ("_fsdp_wrapped_module", "_orig_mod", "_checkpoint_wrapped_module")


def _is_flat(d: Mapping[str, Any]) -> bool:
    if isinstance(d, SafetensorsFile):  # flat by format; its values are read only when asked for
        return len(d) > 0
    return bool(d) and all(isinstance(v, Tensor) for v in d.values())


def read_state_dict(path: str | Path, key: str | None = None) -> tuple[dict[str, Tensor], str]:
    """Read a flat {name: tensor} dict from .safetensors or .pt/.pth, unwrapping nested checkpoints;
    returns it with the entry it came from (``"'generator_ema'"``, ``"top level"``, ...).

    `key` picks the nested entry explicitly (``"generator"``, ``"generator_ema"``); otherwise the first of
    ``generator_ema, generator, state_dict, model, module, ema`` that holds tensors, except that a file
    with both generator entries is refused (see the module docstring).
    """
    state, entry = open_state_dict(path, key)
    return dict(state), entry


def open_state_dict(path: str | Path, key: str | None = None) -> tuple[Mapping[str, Tensor], str]:
    """:func:`read_state_dict`, lazily: the flat mapping reads a tensor's bytes only when it is looked up
    (safetensors, also sharded by an index) or touched (``.pt``, memory-mapped)."""
    obj = open_tensor_file(path, "checkpoint")
    trail = []
    if key is not None:
        if not isinstance(obj, Mapping) or not isinstance(obj.get(key), Mapping):
            found = sorted(obj)[:12] if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(f"checkpoint {str(path)!r}: no entry {key!r}; top-level keys: {found}")
        trail.append(key)
        obj = obj[key]
    while isinstance(obj, Mapping) and not _is_flat(obj):
        if all(isinstance(obj.get(k), Mapping) and obj[k] for k in GENERATOR_ENTRIES):
            raise CheckpointError(
                f"checkpoint {str(path)!r} holds both 'generator' and 'generator_ema': pass --weights generator "
                "or --weights ema (or a --preset that names its entry)"
            )
        pick = next((k for k in NEST_KEYS if isinstance(obj.get(k), Mapping) and obj[k]), None)
        if pick is None:
            break
        trail.append(pick)
        obj = obj[pick]
    if not isinstance(obj, Mapping) or not _is_flat(obj):
        under = f" under {'/'.join(repr(t) for t in trail)}" if trail else ""
        nests = "" if not isinstance(obj, Mapping) or not obj else \
            f", none of them an entry a checkpoint nests its weights under ({', '.join(NEST_KEYS)})"
        raise CheckpointError(f"checkpoint {str(path)!r} holds {describe(obj)}{under}"
                              f"{nests}, not a state dict of named tensors")
    return obj, ("/".join(repr(t) for t in trail) or "top level")


def load_state_dict(path: str | Path, key: str | None = None) -> dict[str, Tensor]:
    """:func:`read_state_dict` without the entry name."""
    return read_state_dict(path, key)[0]


def map_wan_keys(state: Mapping[str, Tensor], expected: set[str] | None = None) -> dict[str, Tensor]:
    """Strip wrapper components and prefixes so public Wan2.1-family names become this model's names.

    Prefixes are stripped only while the name is not already an expected name, so a real parameter that
    happens to start with ``model.`` would survive.
    """
    return {new: state[old] for new, old in _map_names(state, expected).items()}


def _map_names(names: Iterable[str], expected: set[str] | None = None) -> dict[str, str]:
    """:func:`map_wan_keys` on names alone: {this model's name: the checkpoint's name}."""
    out: dict[str, str] = {}
    for name in names:
        parts = [p for p in name.split(".") if p not in WRAPPERS]
        new = ".".join(parts)
        changed = True
        while changed and (expected is None or new not in expected):
            changed = False
            for prefix in PREFIXES:
                if new.startswith(prefix):
                    new = new[len(prefix):]
                    changed = True
        if new in out:
            raise CheckpointError(f"checkpoint names {name!r} and {out[new]!r} both map to {new!r}")
        out[new] = name
    return out


def _resolve(model_or_config: CausalWanDiT | ModelConfig | str, part: ModelSlice | None) -> CausalWanDiT:
    """The model to load into: the one given, or one built on the meta device (the whole model, or the
    slice `part` only) and given storage for exactly what it holds."""
    if isinstance(model_or_config, CausalWanDiT):
        if part is not None and part != model_or_config.part:
            raise CheckpointError(f"the model given holds {model_or_config.part.describe()}, not the slice asked "
                                  f"for ({part.describe()})")
        return model_or_config
    cfg = get_config(model_or_config) if isinstance(model_or_config, str) else model_or_config
    with torch.device("meta"):
        model = CausalWanDiT(cfg, seed=None, part=part)
    return model.to_empty(device="cpu")  # every tensor is then overwritten by the load


def _listing(title: str, items: list[str], limit: int = 8) -> str:
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"  {len(items)} {title}: " + ", ".join(items[:limit]) + more


def guess_config(state: Mapping[str, Tensor]) -> ModelConfig | None:
    """The preset whose DiT shapes a (mapped) state dict has: dim, FFN, layers, text width; else None."""
    return _guess(state, {k: k for k in state})


def _guess(state: Mapping[str, Tensor], names: Mapping[str, str]) -> ModelConfig | None:
    """:func:`guess_config` from every mapped name (``names``: mapped -> the checkpoint's) and the shapes of
    three tensors (read from headers where the file has them)."""
    shapes = {n: tensor_shape(state, names[n]) for n in _GUESS_KEYS if n in names}
    try:
        dim, in_ch = shapes["patch_embedding.weight"][:2]
        ffn = shapes["blocks.0.ffn.0.weight"][0]
        text_dim = shapes["text_embedding.0.weight"][1]
    except (KeyError, IndexError, ValueError):
        return None
    layers = 1 + max((int(k.split(".")[1]) for k in names if k.startswith("blocks.") and k.split(".")[1].isdigit()),
                     default=-1)
    for cfg in PRESETS.values():
        if (cfg.dim, cfg.ffn_dim, cfg.num_layers, cfg.text_dim, cfg.in_channels) == (dim, ffn, layers, text_dim, in_ch):
            return cfg
    return None


def _load_into(model: CausalWanDiT, state: Mapping[str, Tensor], source: str) -> CausalWanDiT:
    """Copy into `model` the tensors of `state` it holds, if and only if the names and shapes match exactly
    (every tensor the model holds is there; every name is one of the whole model's, with its shape); else
    one CheckpointError. Only the tensors the model holds are read."""
    own = model.state_dict()
    full = own if model.whole else reference_model(model.config).state_dict()
    names = _map_names(state, set(full))  # this model's name -> the checkpoint's
    shapes = {n: tensor_shape(state, old) for n, old in names.items()}  # headers only: no data read
    missing = sorted(set(own) - set(names))
    unexpected = sorted(set(names) - set(full))
    mismatched = sorted(
        f"{n}: checkpoint {shapes[n]} vs model {tuple(full[n].shape)}"
        for n in set(full) & set(names) if shapes[n] != tuple(full[n].shape)
    )
    if missing or unexpected or mismatched:
        lines = [f"checkpoint {source} does not match model {model.config.name!r}:"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", mismatched)):
            if items:
                lines.append(_listing(title, items))
        guess = _guess(state, names)
        if guess is not None and guess.name != model.config.name:
            lines.append(f"  its shapes are those of {guess.name!r} (dim {guess.dim}, {guess.num_layers} layers): "
                         f"pass --model {guess.name}")
        err = CheckpointError("\n".join(lines))
        err.missing, err.unexpected, err.mismatched = missing, unexpected, mismatched  # type: ignore[attr-defined]
        raise err
    with torch.no_grad():
        for name, tensor in own.items():
            tensor.copy_(state[names[name]])  # casts to the model's dtype and device
    model.clear_prompt_cache()
    return model


@dataclass(frozen=True)
class LoadReport:
    """What a load read: the file, the entry inside it, the LoRA merged (for the run to say), and which of
    the file's tensors were read (names, and their bytes) with the slice they were read for."""

    path: str
    entry: str
    lora: str | None = None
    read: tuple[str, ...] = ()  # the checkpoint's names of the tensors read
    read_bytes: int = 0
    of: int = 0  # tensors in the entry
    part: str | None = None  # the slice loaded, when not the whole model

    def describe(self) -> str:
        text = f"{self.path}, entry {self.entry}"
        if self.part:
            text += f"; {self.part}: {len(self.read)} of {self.of} tensors ({self.read_bytes / 1e9:.3g} GB)"
        return f"{text}; {self.lora}" if self.lora else text


def load_dit(
    path: str | Path,
    model_or_config: CausalWanDiT | ModelConfig | str | None = None,
    *,
    key: str | None = None,
    lora: LoRAAdapter | None = None,
    part: ModelSlice | None = None,
) -> tuple[CausalWanDiT, LoadReport]:
    """Load DiT weights (and merge `lora`); returns the model and what was loaded.

    With no model or config, the preset whose shapes the checkpoint has is used (CheckpointError if none).
    With `part`, only that slice of the model is built and only its tensors are read (and merged).
    A diffusers ``WanTransformer3DModel`` folder (``transformer/``, or a model folder holding one) loads
    under this model's names, its geometry from its ``config.json`` (:mod:`models.folders`).
    """
    from .folders import (
        TRANSFORMER_CLASS,
        is_transformer_folder,
        open_folder,
        transformer_config,
        transformer_weights,
    )

    p = Path(path)
    opened: Mapping[str, Tensor]
    transformer = p if is_transformer_folder(p) else open_folder(p).transformer if p.is_dir() else None
    if transformer is not None:
        if key is not None:
            raise CheckpointError(f"{str(path)!r} is a diffusers {TRANSFORMER_CLASS} folder, with one set of weights; "
                                  "`--weights` picks an entry of a training checkpoint")
        opened, entry = transformer_weights(transformer), f"{TRANSFORMER_CLASS} ({transformer.name}/)"
        model_or_config = model_or_config or transformer_config(transformer)
    else:
        opened, entry = open_state_dict(path, key)
    state = TrackedTensors(opened)
    if model_or_config is None:
        guess = _guess(state, _map_names(state))
        if guess is None:
            raise CheckpointError(f"checkpoint {str(path)!r} matches no preset geometry ({', '.join(PRESETS)}); "
                                  "pass --model")
        model_or_config = guess
    model = _load_into(_resolve(model_or_config, part), state, repr(str(path)))
    merged = None
    if lora is not None:
        n = merge_lora(model, lora)
        merged = lora.describe().replace(f"into {len(lora.layers)} layers", f"into {n} layers")
    return model, LoadReport(str(path), entry, merged, tuple(state.read), sum(state.read.values()), len(state),
                             None if model.whole else model.part.describe())


def load_checkpoint(
    path: str | Path, model_or_config: CausalWanDiT | ModelConfig | str, *, key: str | None = None,
    lora: LoRAAdapter | None = None, part: ModelSlice | None = None,
) -> CausalWanDiT:
    """Load Wan2.1 / Self-Forcing / CausVid / LongLive / Krea DiT weights into a model (built from a config
    or name, whole or the slice `part`), merging `lora` if given.

    Example: ``model = load_checkpoint("self_forcing_dmd.pt", "wan2.1-1.3b", key="generator_ema")``.
    """
    return load_dit(path, model_or_config, key=key, lora=lora, part=part)[0]


def _own_paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix == ".safetensors":
        return path, path.with_suffix(".json")
    return path / "model.safetensors", path / "config.json"


def save_model(model: CausalWanDiT, dir_or_path: str | Path, *, sampler: dict[str, Any] | None = None) -> Path:
    """Save weights (safetensors) and config (JSON); returns the weights path.

    `sampler` (e.g. ``{"shift": 1.0}``) records the sampler settings the weights were trained for, the way
    a diffusers scheduler config travels with its model; `load_sampler` gives them back.
    """
    from safetensors.torch import save_file

    weights, cfg_path = _own_paths(dir_or_path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights), metadata={"format": FORMAT})
    meta: dict[str, Any] = {"format": FORMAT, "config": model.config.to_dict(),
                            "dtype": str(model.dtype).removeprefix("torch.")}
    if sampler:
        meta["sampler"] = dict(sampler)
    cfg_path.write_text(json.dumps(meta, indent=2) + "\n")
    return weights


def load_sampler(path: str | Path) -> FlowMatchSampler | None:
    """The sampler a model saved by `save_model` was trained for, or None when its config names none."""
    _, cfg_path = _own_paths(path)
    try:
        meta = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    settings = meta.get("sampler")
    if not isinstance(settings, dict):
        return None
    try:
        return FlowMatchSampler(**settings)
    except TypeError as exc:
        raise CheckpointError(f"{str(cfg_path)!r}: bad `sampler` settings {settings!r}: {exc}") from exc


def load_model(path: str | Path, *, part: ModelSlice | None = None) -> CausalWanDiT:
    """Load a model saved by `save_model` (directory or .safetensors with its .json), in its saved dtype;
    with `part`, only that slice, reading only its tensors."""
    weights, cfg_path = _own_paths(path)
    if not cfg_path.is_file():
        raise CheckpointError(f"{str(path)!r}: missing {cfg_path.name} (the config written by save_model)")
    try:
        meta = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{str(cfg_path)!r} is not valid JSON: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{str(cfg_path)!r}: format {meta.get('format')!r}, expected {FORMAT!r}")
    model = _resolve(ModelConfig.from_dict(meta["config"]), part)
    dtype = getattr(torch, meta.get("dtype", "float32"), None)
    if isinstance(dtype, torch.dtype):
        model = model.to(dtype)
    return _load_into(model, open_state_dict(weights)[0], repr(str(weights)))


def take_slice(model: CausalWanDiT, part: ModelSlice) -> CausalWanDiT:
    """The slice ``part`` of a whole ``model``, sharing its tensors (no copy): what a rank of a layer ring
    would have loaded. Its prompts are registered again as they are in ``model``.

    >>> from models.config import get_config
    >>> from models.dit import CausalWanDiT
    >>> whole = CausalWanDiT(get_config("tiny"))
    >>> take_slice(whole, whole.config.layer_slice(0, 1)).part.describe()
    'layers [0, 1) + entry'
    """
    if not model.whole:
        raise CheckpointError(f"take_slice needs the whole model; this one holds {model.part.describe()}")
    with torch.device("meta"):
        piece = CausalWanDiT(model.config, seed=None, part=part)
    state = model.state_dict()
    piece.load_state_dict({k: state[k] for k in piece.state_dict()}, assign=True)
    for key, embeddings in model._prompts.items():
        piece.register_prompt(key, embeddings)
    return piece
