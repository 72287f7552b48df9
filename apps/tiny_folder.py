"""``cascade make-tiny-folder DIR``: a small Wan2.1 model folder with random weights, laid out exactly as
diffusers and transformers lay out a downloaded one (``models/folders.py``), to try the real path in one
command::

    cascade make-tiny-folder tiny && cascade generate --model-dir tiny --out x.mp4

The pieces are the real classes at toy sizes, saved by diffusers' own ``WanPipeline.save_pretrained`` (so
``diffusers.WanPipeline.from_pretrained(DIR)`` loads the folder too):

- ``transformer/``: a ``WanTransformer3DModel`` with the ``tiny`` preset's network (2 layers, 2 heads of
  16, FFN 64, text width 32), so it runs at that preset's size: 4 x 4 latents, 32 x 32 video;
- ``text_encoder/``: a ``UMT5EncoderModel`` of width 32, 2 layers;
- ``tokenizer/``: a word-level tokenizer over :data:`WORDS` (a real umT5 tokenizer is a 4 MB download;
  words outside the list become ``<unk>``);
- ``vae/``: an ``AutoencoderKLWan`` of base width 8 (the Wan VAE's structure, 16 latent channels, 8x
  spatial and 4x temporal strides);
- ``scheduler/``: a ``FlowMatchEulerDiscreteScheduler`` with shift 5 (the few-step sampler's shift; the
  run uses its own sampler, not this file).

The weights are random: the video is noise through a real VAE. What the folder tests is the path: every
piece loads through its library, the geometry comes from the config, the prompt reaches the DiT.
Needs the ``vae`` extra (diffusers, transformers).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, cast

from cascade_sched.cliargs import Handler, Invocation
from cascade_sched.errors import CascadeError, ConfigError

__all__ = ["WORDS", "register", "write_tiny_folder"]

WORDS = (
    "a", "an", "the", "and", "of", "in", "on", "at", "with", "over", "under", "through", "into", "is", "are",
    "red", "green", "blue", "yellow", "white", "black", "orange", "purple", "pink", "grey", "gold", "silver",
    "ball", "cube", "fox", "cat", "dog", "bird", "horse", "fish", "car", "train", "boat", "tree", "flower",
    "house", "city", "street", "river", "sea", "ocean", "mountain", "forest", "field", "sky", "cloud", "sun",
    "moon", "star", "snow", "rain", "fire", "water", "light", "night", "day", "man", "woman", "child", "person",
    "bouncing", "rolling", "running", "walking", "flying", "swimming", "falling", "jumping", "dancing",
    "slow", "fast", "big", "small", "bright", "dark", "old", "new", "camera", "view", "close", "up", "shot",
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Handler]:
    """Add ``make-tiny-folder`` to the ``cascade`` command; returns its handler."""
    p = sub.add_parser("make-tiny-folder", help="write a small random-weight Wan2.1 model folder in the real "
                       "diffusers/transformers layout, to try `--model-dir` with (needs the vae extra)")
    p.add_argument("dir", metavar="DIR", help="the folder to write (a new name, or an empty folder)")
    p.add_argument("--seed", type=int, default=0, help="seeds every piece's random weights (default %(default)s)")
    return {"make-tiny-folder": _cmd}


def _cmd(run: Invocation) -> int:
    from cascade_sched.outputs import check_output

    root = check_output("DIR", run.args.dir, directory=True)
    if root.is_dir() and any(root.iterdir()):
        raise ConfigError("dir", f"`DIR` {run.args.dir!r} is a folder that is not empty; give a new name")
    written = write_tiny_folder(root, seed=run.args.seed, quiet=True)
    size = sum(p.stat().st_size for p in written)
    print(f"wrote {root}/ ({len(written)} files, {size / 1e6:.1f} MB): {', '.join(_pieces(root, written))}; "
          f"try: cascade generate --model-dir {root} --out x.mp4")
    sys.stdout.flush()
    return 0


def _pieces(root: Path, written: list[Path]) -> list[str]:
    return sorted({p.relative_to(root).parts[0] + ("/" if len(p.relative_to(root).parts) > 1 else "")
                   for p in written})


def write_tiny_folder(root: str | Path, *, seed: int = 0, quiet: bool = False) -> list[Path]:
    """Write the folder (see the module docstring) at ``root``; returns the files written. The pieces are
    written under ``ROOT.partial`` and renamed into place once all are there (``quiet``: without the
    libraries' progress bars)."""
    try:
        import diffusers
        import transformers
    except ImportError as exc:
        raise CascadeError("`cascade make-tiny-folder` needs diffusers and transformers: pip install "
                           "'cascade-sched[vae]'") from exc
    from cascade_sched.outputs import committed

    if quiet:
        for library in (diffusers, transformers):
            cast(Any, library).utils.logging.disable_progress_bar()
    final = Path(root)
    with committed(final, keep_partial=False) as tmp:
        _pipeline(diffusers, transformers, seed).save_pretrained(str(tmp))
    return sorted(p for p in final.rglob("*") if p.is_file())


def _pipeline(diffusers: Any, transformers: Any, seed: int) -> Any:
    """The ``WanPipeline`` of the folder: every piece at the ``tiny`` preset's widths, seeded."""
    import torch

    from models.config import get_config

    cfg = get_config("tiny")
    torch.manual_seed(seed)
    return diffusers.WanPipeline(
        tokenizer=_tokenizer(transformers),
        text_encoder=transformers.UMT5EncoderModel(transformers.UMT5Config(
            vocab_size=len(WORDS) + 3, d_model=cfg.text_dim, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=16, pad_token_id=0,
            eos_token_id=1)),
        transformer=diffusers.WanTransformer3DModel(
            patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
            in_channels=cfg.in_channels, out_channels=cfg.out_channels, text_dim=cfg.text_dim,
            freq_dim=cfg.freq_dim, ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, eps=cfg.eps),
        vae=diffusers.AutoencoderKLWan(base_dim=8, z_dim=cfg.in_channels, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                                       temperal_downsample=[False, True, True]),
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=5.0),
    )


def _tokenizer(transformers: Any) -> Any:
    """A word-level tokenizer over :data:`WORDS`, with umT5's special tokens (pad 0, end 1, unknown 2)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                                unk_token="<unk>")
