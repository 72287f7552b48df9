"""A Wan2.1 model folder as diffusers and transformers lay it out, read as it is laid out.

A downloaded ``Wan2.1-T2V-1.3B-Diffusers`` (or a folder ``cascade make-tiny-folder`` wrote) holds one
subfolder per piece, each saved by its own library's ``save_pretrained``::

    model_index.json   the pipeline's list of pieces (diffusers)
    transformer/       WanTransformer3DModel: config.json + diffusion_pytorch_model*.safetensors
    text_encoder/      UMT5EncoderModel: config.json + model*.safetensors
    tokenizer/         the umT5 tokenizer: tokenizer.json / spiece.model + tokenizer_config.json
    vae/               AutoencoderKLWan: config.json + diffusion_pytorch_model.safetensors
    scheduler/         the pipeline's scheduler (not read: the few-step sampler is the preset's)

Every flag that takes a piece takes the root or the piece's own subfolder: :func:`model_root` finds the
root from either, :func:`open_folder` finds the pieces. The transformer's ``config.json`` gives the DiT's
geometry (:func:`transformer_config`) and its weights load under this model's names
(:func:`transformer_weights`, :data:`DIFFUSERS_NAMES`): diffusers renamed Wan2.1's modules when it converted
them (``attn1.to_q`` for ``self_attn.q``, ``scale_shift_table`` for ``modulation``, ...), and the mapping
back is exact, one name for one name.

Nothing here imports torch until weights are opened: the command line reads configs before any run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cascade_sched.errors import CheckpointError

if TYPE_CHECKING:
    from .config import ModelConfig
    from .tensorfile import SafetensorsFile

__all__ = ["DIFFUSERS_NAMES", "PIECES", "TRANSFORMER_CLASS", "WanFolder", "is_transformer_folder", "model_root",
           "open_folder", "text_encoder_folders", "transformer_config", "transformer_weights", "wan_name"]

PIECES = ("transformer", "text_encoder", "tokenizer", "vae", "scheduler")
TRANSFORMER_CLASS = "WanTransformer3DModel"
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json")

# diffusers' WanTransformer3DModel name -> Wan2.1's WanModel name (this model's). Each pattern is anchored
# on a whole name component; the first that matches is applied (diffusers' scripts/convert_wan_to_diffusers.py
# renames the other way, with the same pairs).
DIFFUSERS_NAMES: tuple[tuple[str, str], ...] = (
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^(blocks\.\d+)\.scale_shift_table$", r"\1.modulation"),
    (r"^(blocks\.\d+)\.attn1\.to_q\.", r"\1.self_attn.q."),
    (r"^(blocks\.\d+)\.attn1\.to_k\.", r"\1.self_attn.k."),
    (r"^(blocks\.\d+)\.attn1\.to_v\.", r"\1.self_attn.v."),
    (r"^(blocks\.\d+)\.attn1\.to_out\.0\.", r"\1.self_attn.o."),
    (r"^(blocks\.\d+)\.attn1\.norm_([qk])\.", r"\1.self_attn.norm_\2."),
    (r"^(blocks\.\d+)\.attn2\.to_q\.", r"\1.cross_attn.q."),
    (r"^(blocks\.\d+)\.attn2\.to_k\.", r"\1.cross_attn.k."),
    (r"^(blocks\.\d+)\.attn2\.to_v\.", r"\1.cross_attn.v."),
    (r"^(blocks\.\d+)\.attn2\.to_out\.0\.", r"\1.cross_attn.o."),
    (r"^(blocks\.\d+)\.attn2\.norm_([qk])\.", r"\1.cross_attn.norm_\2."),
    (r"^(blocks\.\d+)\.norm2\.", r"\1.norm3."),  # the cross-attention norm: norm2 in diffusers, norm3 in Wan
    (r"^(blocks\.\d+)\.ffn\.net\.0\.proj\.", r"\1.ffn.0."),
    (r"^(blocks\.\d+)\.ffn\.net\.2\.", r"\1.ffn.2."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out\.", "head.head."),
)
_COMPILED = tuple((re.compile(p), r) for p, r in DIFFUSERS_NAMES)


def wan_name(name: str) -> str:
    """This model's name of a diffusers WanTransformer3DModel parameter (unchanged when no rule applies).

    >>> wan_name("blocks.3.attn1.to_out.0.weight"), wan_name("proj_out.bias"), wan_name("patch_embedding.weight")
    ('blocks.3.self_attn.o.weight', 'head.head.bias', 'patch_embedding.weight')
    """
    for pattern, repl in _COMPILED:
        new, n = pattern.subn(repl, name)
        if n:
            return new
    return name


def _has_layout_sibling(path: Path) -> bool:
    return any((path.parent / p).is_dir() for p in PIECES if p != path.name) or (
        path.parent / "model_index.json").is_file()


def model_root(path: str | Path) -> Path:
    """The model folder holding ``path``: ``path`` itself, or its parent when ``path`` is one of its pieces
    (``transformer/``, ``text_encoder/``, ``tokenizer/``, ``vae/``, ``scheduler/`` with the layout beside it).

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for piece in ("text_encoder", "tokenizer"):
    ...     (root / piece).mkdir()
    >>> model_root(root / "text_encoder") == root, model_root(root) == root
    (True, True)
    """
    p = Path(path)
    if p.name in PIECES and p.is_dir() and _has_layout_sibling(p):
        return p.parent
    return p


@dataclass(frozen=True)
class WanFolder:
    """The pieces of a model folder (None: absent)."""

    root: Path
    transformer: Path | None  # holds a WanTransformer3DModel config.json
    text_encoder: Path | None  # holds config.json
    tokenizer: Path | None  # holds tokenizer files
    vae: Path | None  # holds config.json

    def missing(self, *pieces: str) -> list[str]:
        """The pieces among ``pieces`` the folder lacks, each as ``name/``."""
        return [f"{p}/" for p in pieces if getattr(self, p) is None]


def open_folder(path: str | Path) -> WanFolder:
    """The pieces of the model folder at (or above) ``path``."""
    root = model_root(path)

    def piece(name: str, *files: str) -> Path | None:
        sub = root / name
        return sub if any((sub / f).is_file() for f in files) else None

    transformer = piece("transformer", "config.json")
    if transformer is not None and not is_transformer_folder(transformer):
        transformer = None
    return WanFolder(root, transformer, piece("text_encoder", "config.json"), piece("tokenizer", *TOKENIZER_FILES),
                     piece("vae", "config.json"))


def text_encoder_folders(path: str | Path) -> tuple[Path, Path]:
    """(the encoder's folder, the tokenizer's folder) for ``--text-encoder PATH``: the model root, its
    ``text_encoder/`` (the tokenizer then from ``tokenizer/`` beside it), or one folder holding both."""
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"text encoder folder {str(path)!r} does not exist")
    folder = open_folder(p)
    enc = folder.text_encoder or p
    has_tokenizer = any((p / f).is_file() for f in TOKENIZER_FILES)
    tok = p if has_tokenizer else folder.tokenizer or p
    if not (enc / "config.json").is_file():
        raise CheckpointError(f"text encoder folder {str(path)!r} has no config.json (expected a UMT5EncoderModel "
                              "saved by transformers, a model folder with text_encoder/, or its text_encoder/)")
    if not any((tok / f).is_file() for f in TOKENIZER_FILES):
        raise CheckpointError(f"text encoder folder {str(path)!r}: no tokenizer found in {str(tok)!r} (expected "
                              "tokenizer.json or spiece.model there, or a tokenizer/ folder beside text_encoder/)")
    return enc, tok


def _read_config(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_transformer_folder(path: str | Path) -> bool:
    """Whether ``path`` holds a diffusers ``WanTransformer3DModel`` (its ``config.json`` says so)."""
    data = _read_config(Path(path))
    return data is not None and data.get("_class_name") == TRANSFORMER_CLASS


def transformer_config(path: str | Path) -> ModelConfig:
    """The DiT geometry a WanTransformer3DModel ``config.json`` states; the name and latent size are those of
    the preset with the same DiT (``tiny``, ``wan2.1-1.3b``, ...), else ``wan (FOLDER)`` at Wan's 480 x 832.

    The config holds the network (layers, heads, head width, FFN, text width, channels, patch, timestep
    embedding, norms), not the video size; a folder whose network is a preset's runs at that preset's size.
    """
    from .config import PRESETS, ModelConfig

    folder = Path(path)
    data = _read_config(folder)
    if data is None or data.get("_class_name") != TRANSFORMER_CLASS:
        raise CheckpointError(f"{str(folder)!r} has no {TRANSFORMER_CLASS} config.json")
    try:
        heads, head_dim = int(data["num_attention_heads"]), int(data["attention_head_dim"])
        qk = data.get("qk_norm", "rms_norm_across_heads")
        if qk not in (None, "rms_norm_across_heads"):
            raise ValueError(f"qk_norm {qk!r} (this model normalises queries and keys across heads, or not at all)")
        if data.get("image_dim") or data.get("added_kv_proj_dim"):
            raise ValueError("an image-to-video transformer (image_dim / added_kv_proj_dim): text-to-video only")
        net: dict[str, Any] = {"dim": heads * head_dim, "ffn_dim": int(data["ffn_dim"]), "num_layers": int(data["num_layers"]),
               "num_heads": heads, "in_channels": int(data.get("in_channels", 16)),
               "out_channels": int(data.get("out_channels", 16)),
               "patch_size": tuple(int(x) for x in data.get("patch_size", (1, 2, 2))),
               "text_dim": int(data.get("text_dim", 4096)), "freq_dim": int(data.get("freq_dim", 256)),
               "eps": float(data.get("eps", 1e-6)), "qk_norm": qk is not None,
               "cross_attn_norm": bool(data.get("cross_attn_norm", True))}
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{str(folder / 'config.json')!r}: not a text-to-video {TRANSFORMER_CLASS} config "
                              f"this model can run: {exc}") from None
    for preset in PRESETS.values():
        if all(getattr(preset, k) == v for k, v in net.items()):
            return preset
    return ModelConfig(name=f"wan ({folder.parent.name or folder.name})", **net)


def transformer_weights(path: str | Path) -> SafetensorsFile:
    """The weights of the WanTransformer3DModel folder ``path`` (one file or shards), read lazily, under this
    model's names."""
    from .tensorfile import INDEX_SUFFIX, SafetensorsFile

    folder = Path(path)
    indexes = sorted(folder.glob("*" + INDEX_SUFFIX))
    files = sorted(folder.glob("*.safetensors"))
    if len(indexes) == 1:
        weights = SafetensorsFile.sharded(indexes[0], "checkpoint")
    elif len(files) == 1:
        weights = SafetensorsFile.of(files[0], "checkpoint")
    else:
        raise CheckpointError(f"transformer folder {str(folder)!r} holds {len(files)} .safetensors files and "
                              f"{len(indexes)} shard indexes; expected one of either (diffusers' save_pretrained)")
    return weights.renamed(wan_name)
