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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cascade_sched.cliargs import add_geometry_args, alias, int_ranges, name_list
from cascade_sched.errors import ConfigError, check_range
from cascade_sched.spec import ATTENTION_MODES
from models.dtypes import DTYPES

if TYPE_CHECKING:
    from models.folders import WanFolder

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
        help=f"the DiT's geometry: {MODEL_NAMES} (default: the preset's, else --model-dir's transformer/ "
        "config, else the --checkpoint's own shapes, else toy: the shipped trained weights, bouncing balls, "
        "see docs/quality.md; without --checkpoint the others take seeded random weights)",
    )
    g.add_argument(
        "--checkpoint",
        default=None,
        help="Wan2.1-family DiT weights (.safetensors/.pt: Self-Forcing, "
        "CausVid, LongLive, Krea), a diffusers transformer/ folder or a cascade model folder (default: "
        "--model-dir's transformer/, the toy's shipped weights for toy, else seeded random weights)",
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
        help="a diffusers Wan2.1 folder (its root, or any of its subfolders): its transformer/ is the DiT "
        "(geometry from its config.json; --checkpoint overrides the weights), text_encoder/ + tokenizer/ "
        "condition it and vae/ decodes (`cascade make-tiny-folder DIR` writes a small one; default none)",
    )
    g.add_argument(
        "--text-encoder",
        default=None,
        metavar="DIR",
        help="umT5 encoder: a Wan2.1 folder, its text_encoder/ (tokenizer/ beside it), or one folder holding "
        "both; run through transformers (default: --model-dir's)",
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
        help="decoder: the Wan VAE (a Wan2.1 folder or its vae/: AutoencoderKLWan, streaming) or TAEHV "
        "weights (taew2_1.pth, the fast tiny decoder); default: --model-dir's vae/, else the latent preview",
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
def model_folder(path: str | None, *, need_text: bool, need_vae: bool, need_dit: bool = False) -> WanFolder | None:
    """``--model-dir``'s model folder (its root, or any of its pieces' subfolders: ``models.folders``), checked
    for the pieces the run takes from it: one ConfigError naming the flag and the piece missing, and
    which flag supplies that piece instead."""
    if path is None:
        return None
    from models.folders import open_folder

    if not Path(path).is_dir():
        raise ConfigError("model_dir", f"`--model-dir` {path!r} is not a folder")
    folder = open_folder(path)
    if need_dit and folder.transformer is None:
        raise ConfigError("model_dir", f"`--model-dir` {path!r} has no transformer/ (a diffusers "
                                       "WanTransformer3DModel with its config.json), so it does not say the DiT's "
                                       f"geometry: give it with `--model` ({MODEL_NAMES}) or `--preset`, and its "
                                       "weights with `--checkpoint`")
    for needed, pieces, flag in ((need_text, ("text_encoder", "tokenizer"), "--text-encoder or --text-embeddings"),
                                 (need_vae, ("vae",), "--vae")):
        missing = folder.missing(*pieces) if needed else []
        if missing:
            raise ConfigError("model_dir", f"`--model-dir` {path!r} has no {' and no '.join(missing)} (a diffusers "
                                           "Wan2.1 folder holds transformer/, text_encoder/, tokenizer/ and vae/); "
                                           f"pass {flag} for that piece")
    return folder


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


def read_timeline(path: str, first_prompt: str, num_blocks: int | None = None,
                  ) -> tuple[dict[int, str], tuple[tuple[int, int], ...]]:
    r"""Prompt texts by id (0 = ``first_prompt``) and switches ``(at_block, id)`` from a timeline file: a JSON
    or YAML list of ``{at_block, prompt}``, in increasing ``at_block`` order, each before ``num_blocks``.

    The same text used twice gets the same id. Every problem is one ``ConfigError`` naming ``--prompts``, the
    file, and the entry and its line (or the line and column where the file stops parsing).

    >>> import tempfile
    >>> f = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    >>> _ = f.write("- at_block: 2\n  prompt: red\n- at_block: 40\n  prompt: blue\n"); f.close()
    >>> read_timeline(f.name, "green", num_blocks=16)
    Traceback (most recent call last):
    ...
    cascade_sched.errors.ConfigError: `--prompts` ... entry 2 (line 3): at_block 40 is past the run's last block, 15 (--blocks 16)
    """
    text = read_text("--prompts", path)
    where = f"`--prompts` {path!r}"
    yaml_file = Path(path).suffix.lower() in (".yaml", ".yml")
    data, lines = (_yaml_entries if yaml_file else _json_entries)(text, where)
    if not isinstance(data, list) or not data:
        raise ConfigError("prompts", f"{where} must hold a non-empty list of {{at_block, prompt}} entries, got "
                                     f"{type(data).__name__}")
    ids = {first_prompt: 0}
    switches: list[tuple[int, int]] = []
    for i, (item, line) in enumerate(zip(data, lines, strict=True)):
        entry = f"{where}, entry {i + 1} (line {line})"
        if (not isinstance(item, dict) or set(item) != {"at_block", "prompt"}
                or not isinstance(item["prompt"], str) or not item["prompt"].strip()
                or isinstance(item["at_block"], bool) or not isinstance(item["at_block"], int)):
            raise ConfigError("prompts", f"{entry} must be {{at_block: int, prompt: non-empty text}}, got {item!r}")
        at = item["at_block"]
        if at < 0 or (num_blocks is not None and at >= num_blocks):
            past = (f"past the run's last block, {num_blocks - 1} (--blocks {num_blocks})" if at >= 0 and
                    num_blocks is not None else "negative")
            raise ConfigError("prompts", f"{entry}: at_block {at} is {past}")
        if switches and at <= switches[-1][0]:
            raise ConfigError("prompts", f"{entry}: at_block {at} must come after the entry before it "
                                         f"(at_block {switches[-1][0]}): entries go in increasing at_block order")
        pid = ids.setdefault(item["prompt"].strip(), len(ids))
        switches.append((at, pid))
    return {v: k for k, v in ids.items()}, tuple(switches)


def _yaml_entries(text: str, where: str) -> tuple[Any, list[int]]:
    """The YAML document, and the line of each item when it is a list."""
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError("prompts", f"{where} is not valid YAML{at}: {problem}") from None
    items = node.value if isinstance(node, yaml.SequenceNode) else []
    return data, [n.start_mark.line + 1 for n in items]


def _json_entries(text: str, where: str) -> tuple[Any, list[int]]:
    """The JSON document, and the line of each item when it is a list."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError("prompts", f"{where} is not valid JSON at line {e.lineno}, column {e.colno}: "
                                     f"{e.msg}") from None
    lines: list[int] = []
    if isinstance(data, list):  # walk the list once more, item by item, to know where each starts
        decoder, pos = json.JSONDecoder(), text.index("[") + 1
        for _ in data:
            while text[pos] in " \t\r\n,":
                pos += 1
            lines.append(text.count("\n", 0, pos) + 1)
            _, pos = decoder.raw_decode(text, pos)
    return data, lines
