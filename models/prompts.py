"""Text conditioning: the ``TextEncoder`` protocol and its sources (umT5, a file of embeddings, the stand-in).

The model cross-attends to text-encoder outputs of shape (L, text_dim) (umT5-XXL: up to 512 x 4096).
Every source implements :class:`TextEncoder`; :func:`default_text_encoder` is the one place that decides
what a model gets when nobody named a source.

- :class:`UMT5Encoder`: the real encoder through ``transformers`` (extra ``vae``), from a diffusers-style
  Wan2.1 folder (``text_encoder/`` + ``tokenizer/``) or a folder holding a ``UMT5EncoderModel`` and its
  tokenizer, on a device of the caller's choosing. Each distinct text is encoded once; ``close()`` frees
  the weights (umT5-XXL alone is ~11 GB in bf16) and keeps what was encoded.
- :class:`EmbeddingsFile`: precomputed outputs, one per prompt text (``save_embeddings`` writes them).
- :class:`StandInEncoder`: ``text_embedding(text, config)``, a deterministic stand-in for demos and tests
  without weights. One row per whitespace word plus one end row (like a tokenizer's ``</s>``), capped at
  ``text_len``; row i is standard normal noise from a CPU generator seeded by the first 8 bytes of
  sha256(``"{i}:{word_i}"``), so equal words at equal positions give equal rows, the same text always
  gives the same tensor, and every machine agrees. Rows past the text are zero, as Wan pads umT5 outputs.
"""

from __future__ import annotations

import hashlib
import html
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from cascade_sched.errors import CascadeError, CheckpointError, ConfigError

from .config import ModelConfig
from .folders import text_encoder_folders
from .tensorfile import read_tensor_file

__all__ = [
    "STAND_IN_MODELS",
    "EmbeddingsFile",
    "StandInEncoder",
    "TextEncoder",
    "UMT5Encoder",
    "clean_prompt",
    "default_text_encoder",
    "load_embeddings",
    "save_embeddings",
    "text_embedding",
    "umt5_embedding",
]

# Models that get the stand-in when no text source is named: the test geometries. The toy gets its
# vocabulary encoder (models/toy_text.py) in default_text_encoder.
STAND_IN_MODELS = frozenset({"tiny", "small"})


@runtime_checkable
class TextEncoder(Protocol):
    """Turns prompt text into the (L, text_dim) float32 CPU tensor the DiT cross-attends to."""

    name: str  # provenance printed by a run: e.g. "umT5 (DIR)", "embeddings FILE", "stand-in"

    def encode(self, text: str) -> Tensor:
        """(L <= text_len, text_dim) float32 on the CPU."""
        ...

    def close(self) -> None:
        """Free the weights (idempotent)."""
        ...


def _row_seed(index: int, word: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{index}:{word}".encode()).digest()[:8], "little") & (2**63 - 1)


def text_embedding(text: str, config: ModelConfig) -> Tensor:
    """Deterministic stand-in for umT5 outputs: (text_len, text_dim) float32 (see the module docstring).

    >>> from models.config import get_config
    >>> e = text_embedding("a red fox", get_config("tiny"))
    >>> e.shape, bool((e[4:] == 0).all()), torch.equal(e, text_embedding("a red fox", get_config("tiny")))
    (torch.Size([8, 32]), True, True)
    """
    words = [*text.split(), "</s>"][: config.text_len]
    out = torch.zeros(config.text_len, config.text_dim)
    for i, word in enumerate(words):
        g = torch.Generator().manual_seed(_row_seed(i, word))
        out[i] = torch.randn(config.text_dim, generator=g)
    return out


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning (``HuggingfaceTokenizer(clean='whitespace')``): unescape HTML twice, collapse
    whitespace. (Wan also runs ``ftfy.fix_text`` first when ftfy is installed; so do we.)

    >>> clean_prompt("  a &amp;  red\\n fox ")
    'a & red fox'
    """
    try:
        import ftfy  # type: ignore[import-not-found]

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    return " ".join(html.unescape(html.unescape(text)).split())


class StandInEncoder:
    """The deterministic stand-in (:func:`text_embedding`) behind the :class:`TextEncoder` protocol."""

    name = "stand-in"

    def __init__(self, config: ModelConfig) -> None:
        self.config = config

    def encode(self, text: str) -> Tensor:
        return text_embedding(text, self.config)

    def close(self) -> None:
        return None


def default_text_encoder(config: ModelConfig) -> TextEncoder:
    """What a model is conditioned on when no text source was named: the toy's vocabulary encoder for
    ``toy``, the stand-in for the test models (``tiny``, ``small``); anything else is refused with one
    line saying what to pass."""
    if config.name == "toy":
        from .toy_text import ToyTextEncoder

        return ToyTextEncoder(config)
    if config.name in STAND_IN_MODELS:
        return StandInEncoder(config)
    raise ConfigError(
        "text_encoder",
        f"model {config.name!r} needs real text conditioning: pass --text-encoder DIR (umT5, or a Wan2.1 "
        "folder), --model-dir DIR, --text-embeddings FILE, or --text-embeddings stand-in (hashed noise)",
    )


def _check_embedding(t: Tensor, name: str, where: str) -> Tensor:
    if t.ndim == 3 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 2:
        raise CheckpointError(f"prompt embeddings {where}: {name!r} has shape {tuple(t.shape)}, expected (L, D)")
    return t.float().cpu().contiguous()


def load_embeddings(path: str | Path) -> dict[str, Tensor]:
    """Read precomputed text-encoder outputs; returns {name: (L, text_dim)}.

    A file holding a single tensor gives ``{"prompt": tensor}``; a (1, L, D) batch of one is squeezed.
    """
    obj = read_tensor_file(path, "prompt embeddings")
    items = {"prompt": obj} if isinstance(obj, Tensor) else obj
    if not isinstance(items, dict) or not items or not all(isinstance(v, Tensor) for v in items.values()):
        raise CheckpointError(f"prompt embeddings {str(path)!r}: expected a tensor or a dict of tensors")
    return {str(name): _check_embedding(t, str(name), repr(str(path))) for name, t in items.items()}


def save_embeddings(path: str | Path, embeddings: Mapping[str, Tensor]) -> Path:
    """Write {prompt text: (L, D)} as safetensors, the layout :class:`EmbeddingsFile` reads back."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ConfigError("save_text_embeddings", f"`--save-text-embeddings` must end in .safetensors, got {str(path)!r}")
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().float().cpu().contiguous() for k, v in embeddings.items()}, str(tmp))
    tmp.replace(path)
    return path


class EmbeddingsFile:
    """Precomputed embeddings, one per prompt text. A file of one unnamed tensor serves a single-prompt run.

    `texts` (optional) are the run's prompts: each must be in the file, checked up front, so a missing one
    is one line before any model loads.
    """

    def __init__(self, path: str | Path, texts: Iterable[str] = ()) -> None:
        self.path = str(path)
        self.name = f"embeddings {self.path}"
        self.table = load_embeddings(path)
        texts = list(dict.fromkeys(texts))
        if set(self.table) == {"prompt"} and len(texts) == 1 and texts[0] not in self.table:
            self.table = {texts[0]: self.table["prompt"]}
        missing = [t for t in texts if t not in self.table]
        if missing:
            raise ConfigError("text_embeddings", self._missing(missing[0]))

    def _missing(self, text: str) -> str:
        have = ", ".join(repr(k) for k in list(self.table)[:5]) + (" ..." if len(self.table) > 5 else "")
        return (f"`--text-embeddings` {self.path!r} has no embedding for prompt {text!r} (it holds {have}; "
                "keys are the prompt texts, as --save-text-embeddings writes them)")

    def encode(self, text: str) -> Tensor:
        try:
            return self.table[text]
        except KeyError:
            raise ConfigError("text_embeddings", self._missing(text)) from None

    def close(self) -> None:
        return None


class UMT5Encoder:
    """umT5 through ``transformers``: outputs trimmed to the real tokens as Wan does, float32 on the CPU.

    `max_length` is the model's ``text_len`` (512 for Wan); `text_dim`, when given, is checked against the
    encoder's width before any prompt is encoded.
    """

    def __init__(self, path: str | Path, *, device: str | torch.device = "cpu", max_length: int = 512,
                 text_dim: int | None = None) -> None:
        try:
            import transformers
            from transformers import AutoTokenizer, UMT5EncoderModel
        except ImportError as exc:
            raise CascadeError(
                "the umT5 text encoder needs `transformers` (pip install 'cascade-sched[vae]'); "
                "alternatively pass precomputed embeddings with --text-embeddings FILE"
            ) from exc
        enc_dir, tok_dir = text_encoder_folders(path)
        self.name = f"umT5 ({path})"
        self.device, self.max_length = torch.device(device), max_length
        self._cache: dict[str, Tensor] = {}
        dtype_kw: dict[str, Any] = ({"dtype": "auto"} if _version(transformers.__version__) >= (4, 56)
                                    else {"torch_dtype": "auto"})
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
            model = UMT5EncoderModel.from_pretrained(str(enc_dir), **dtype_kw)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"text encoder {str(path)!r} cannot be loaded: {exc}") from exc
        width = int(model.config.d_model)
        if text_dim is not None and width != text_dim:
            raise CheckpointError(f"text encoder {str(path)!r} outputs width {width}, but the model cross-attends "
                                  f"to width {text_dim} (text_dim)")
        self.model: Any = model.to(self.device).eval()  # type: ignore[arg-type]  # transformers: `to` is typed as taking a model

    @torch.no_grad()
    def encode(self, text: str) -> Tensor:
        if text in self._cache:
            return self._cache[text]
        if self.model is None:
            raise CascadeError(f"{self.name} was closed before prompt {text!r} was encoded")
        batch = self.tokenizer([clean_prompt(text)], max_length=self.max_length, padding="max_length",
                               truncation=True, add_special_tokens=True, return_tensors="pt")
        mask = batch.attention_mask.to(self.device)
        hidden = self.model(input_ids=batch.input_ids.to(self.device), attention_mask=mask).last_hidden_state[0]
        n = int(mask.sum())
        out: Tensor = hidden[:n].float().cpu()  # (n, D): real tokens only, as Wan trims
        self._cache[text] = out
        return out

    def close(self) -> None:
        if self.model is None:
            return
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for p in text.split(".")[:2]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def umt5_embedding(text: str, path: str | Path, *, max_length: int = 512, device: str = "cpu") -> Tensor:
    """umT5-XXL outputs (L, 4096) for `text` (one-shot :class:`UMT5Encoder`, closed after)."""
    enc = UMT5Encoder(path, device=device, max_length=max_length)
    try:
        return enc.encode(text)
    finally:
        enc.close()
