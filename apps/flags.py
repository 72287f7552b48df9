"""The apps' shared flag vocabulary: where a model comes from (``--model``, ``--preset``, ``--checkpoint``,
``--model-dir``, ``--text-encoder``, ``--vae``, ...), ``--device`` and ``--dtype``, and the input files the
flags name (a prompt timeline included). The flags that build a ``CascadeSpec`` are the core's
(:mod:`cascade_sched.cliargs`); these are the ones only the jobs that run a model take.

Nothing here imports torch: the ``cascade`` command builds every parser before any subcommand runs.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cascade_sched.cliargs import add_geometry_args, alias, int_ranges, name_list
from cascade_sched.errors import ConfigError, check_range
from cascade_sched.spec import ATTENTION_MODES
from models.dtypes import DTYPES

__all__ = ["DEFAULT_PROMPT", "MODEL_NAMES", "PRESET_NAMES", "THREADS_HELP", "add_device_args",
           "add_model_source_args", "check_input_file", "model_folder", "read_text", "read_timeline"]

MODEL_NAMES = "toy | tiny | small | wan2.1-1.3b | wan2.1-14b"
# models.presets.PRESETS, spelled here so that building the parser imports no torch (a test keeps them equal).
PRESET_NAMES = "self-forcing | causvid | causvid-warp4 | longlive | krea-14b"
DEFAULT_PROMPT = "a red ball bouncing"
THREADS_HELP = "intra-op torch threads, 0 = torch's default (default %(default)s)"


def add_device_args(
    g: Any, *, device: str | None = "cpu", dtype: str | None = "float32", note: str = ""
) -> None:
    """``--device`` and ``--dtype``, one wording everywhere (``None`` defaults are resolved by the caller)."""
    g.add_argument("--device", default=device, help=f"cpu | cuda | cuda:N (default {device or 'cpu'}{note})")
    g.add_argument(
        "--dtype", default=dtype, help=f"{' | '.join(DTYPES)} (default {dtype or 'float32'}{note})"
    )


def add_model_source_args(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Where the model's weights, text encoder and decoder come from; shared by generate and serve."""
    g = p.add_argument_group("model sources")
    g.add_argument(
        "--model",
        default=None,
        help=f"{MODEL_NAMES} (default: the preset's, else the --checkpoint's "
        "own shapes, else toy: the shipped trained weights, bouncing balls, see docs/quality.md; "
        "without --checkpoint the others take seeded random weights)",
    )
    g.add_argument(
        "--checkpoint",
        default=None,
        help="Wan2.1-family DiT weights (.safetensors/.pt: Self-Forcing, "
        "CausVid, LongLive, Krea) or a cascade model folder (default: the toy's shipped weights for "
        "toy, else seeded random weights)",
    )
    g.add_argument(
        "--preset",
        default=None,
        help=f"a published pipeline's settings: {PRESET_NAMES} (sampler, "
        "steps, window, sink, weights entry, LoRA alpha; see docs/models.md; default none)",
    )
    g.add_argument(
        "--weights",
        default=None,
        choices=("generator", "ema"),
        help="checkpoint entry to load: generator | ema (generator_ema) (default: the preset's, or the "
        "file's only one; a file with both needs this or --preset)",
    )
    g.add_argument(
        "--lora",
        default=None,
        metavar="PATH",
        help="PEFT LoRA adapter merged into the weights at load "
        "(a save_pretrained folder, .safetensors, or LongLive's lora.pt; default none)",
    )
    g.add_argument(
        "--shift",
        type=float,
        default=None,
        help="sampler shift (default: the preset's, else the one saved with the weights: toy 1, else 5)",
    )
    g.add_argument(
        "--model-dir",
        default=None,
        metavar="DIR",
        help="a diffusers-style Wan2.1 folder: its "
        "text_encoder/ + tokenizer/ condition the model and its vae/ decodes (the DiT weights come "
        "from --checkpoint; default none)",
    )
    g.add_argument(
        "--text-encoder",
        default=None,
        metavar="DIR",
        help="umT5 encoder folder (or a Wan2.1 folder), run through transformers (default: --model-dir's)",
    )
    g.add_argument(
        "--text-encoder-device",
        default="cpu",
        help="where the text encoder runs (default cpu: umT5-XXL alone is ~11 GB); freed after encoding",
    )
    g.add_argument(
        "--text-embeddings",
        default=None,
        metavar="FILE|stand-in",
        help="precomputed embeddings, one per prompt text (as --save-text-embeddings writes them), or "
        "'stand-in' for hashed-noise prompts (default: the stand-in only for toy/tiny/small)",
    )
    g.add_argument(
        "--vae",
        default=None,
        metavar="PATH",
        help="decoder: an AutoencoderKLWan folder (the Wan VAE, "
        "streaming) or TAEHV weights (taew2_1.pth, the fast tiny decoder); default: --model-dir's vae/, "
        "else the latent preview",
    )
    g.add_argument(
        "--vae-device",
        default=None,
        help="where decoding runs, on its own thread and CUDA stream (default: the denoising device)",
    )
    add_geometry_args(g)
    return g



def add_matrix_args(g: Any, verb: str) -> None:
    """``--lag`` and ``--attention`` as the lists of settings a command runs one by one (``cascade validate``,
    ``cascade quality``), with their old plural spellings."""
    attentions = ("causal", "bidirectional", "stale")
    g.add_argument("--lag", type=int_ranges, default=None, help=f"lags to {verb}, e.g. 1,5 or 1-5 (default every "
                   "lag 1..S)")
    g.add_argument("--attention", type=name_list, default=attentions,
                   help=f"attention modes to {verb}: {', '.join(ATTENTION_MODES)} (default {','.join(attentions)})")
    alias(g, "--lags", "lag", type=int_ranges, default=None)
    alias(g, "--attentions", "attention", type=name_list, default=attentions)


def check_matrix_args(args: argparse.Namespace, stages: int) -> None:
    """The settings :func:`add_matrix_args` takes, for a sampler of ``stages`` stages."""
    for lag in args.lag or ():
        check_range("--lag", lag, 1, stages, f" (S={stages} stages)")
    check_names("--attention", args.attention, ATTENTION_MODES)


def check_names(flag: str, values: Sequence[str], valid: Sequence[str]) -> None:
    """A list flag's names, each one of ``valid``: the first that is not is named."""
    bad = [v for v in values if v not in valid]
    if bad:
        raise ConfigError(flag, f"`{flag}` must list {', '.join(valid)}, got {bad[0]!r}")


# --- input files -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelFolder:
    """The pieces of a diffusers-style Wan2.1 folder that a generation uses (None: absent)."""

    root: Path
    text_encoder: Path | None  # the folder itself (it holds text_encoder/ and tokenizer/)
    vae: Path | None


def model_folder(path: str | None, *, need_text: bool, need_vae: bool) -> ModelFolder | None:
    """Check `path` (``--model-dir``) for the pieces the run takes from it; ConfigError naming one missing."""
    if path is None:
        return None
    root = Path(path)
    if not root.is_dir():
        raise ConfigError("model_dir", f"`--model-dir` {path!r} is not a folder")
    text = root if (root / "text_encoder").is_dir() and (root / "tokenizer").is_dir() else None
    vae = root / "vae" if (root / "vae" / "config.json").is_file() else None
    for needed, piece, have in ((need_text, "text_encoder/ and tokenizer/", text), (need_vae, "vae/", vae)):
        if needed and have is None:
            raise ConfigError("model_dir", f"`--model-dir` {path!r} has no {piece} (a diffusers Wan2.1 folder holds "
                                           "text_encoder/, tokenizer/ and vae/; or pass that piece's own flag)")
    return ModelFolder(root, text, vae)


def check_input_file(flag: str, path: str | None, *, folder_ok: bool = False) -> None:
    """An input path that must exist (a file, or a folder with ``folder_ok``): one line naming ``flag``."""
    if path is None:
        return
    p = Path(path)
    if not p.exists():
        raise ConfigError(flag, f"`{flag}` {path!r} does not exist")
    if p.is_dir() and not folder_ok:
        raise ConfigError(flag, f"`{flag}` {path!r} is a folder; give a file")
    if not os.access(p, os.R_OK):
        raise ConfigError(flag, f"`{flag}` {path!r} is not readable")


def read_text(flag: str, path: str) -> str:
    """An input file's text, as UTF-8: a missing, unreadable or binary file is one line naming ``flag``."""
    check_input_file(flag, path)
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(flag, f"`{flag}` {path!r} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise ConfigError(flag, f"`{flag}` {path!r} cannot be read: {e.strerror}") from None


def read_timeline(path: str, first_prompt: str) -> tuple[dict[int, str], tuple[tuple[int, int], ...]]:
    """Prompt texts by id (0 = ``first_prompt``) and switches ``(at_block, id)`` from a timeline file.

    The same text used twice gets the same id. Every problem is one ``ConfigError`` naming ``--prompts``.
    """
    p = Path(path)
    text = read_text("--prompts", path)
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data: Any = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # json.JSONDecodeError, yaml.YAMLError: one line either way
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError("prompts", f"`--prompts` file {path!r} does not parse: {first}") from None
    if not isinstance(data, list) or not data:
        raise ConfigError("prompts", f"`--prompts` must hold a non-empty list of {{at_block, prompt}}, got "
                          f"{type(data).__name__}")
    ids = {first_prompt: 0}
    switches: list[tuple[int, int]] = []
    for i, item in enumerate(data):
        if (not isinstance(item, dict) or set(item) != {"at_block", "prompt"}
                or not isinstance(item["prompt"], str) or not item["prompt"].strip()
                or isinstance(item["at_block"], bool) or not isinstance(item["at_block"], int)):
            raise ConfigError("prompts", f"`--prompts` entry {i} must be {{\"at_block\": int, \"prompt\": "
                              f"non-empty text}}, got {item!r}")
        pid = ids.setdefault(item["prompt"].strip(), len(ids))
        switches.append((item["at_block"], pid))
    return {v: k for k, v in ids.items()}, tuple(switches)
