"""Latent decoders, called once per block in block order: each returns uint8 frames (T, H, W, 3).

- `LatentPreviewDecoder` runs anywhere: a fixed 16 -> 3 linear projection of the latent channels plus
  nearest-neighbour upsampling (x8 in space, x4 in time), like the latent previews of common UIs. It keeps
  the Wan VAE's frame counts: the first block gives ``1 + 4 * (F - 1)`` frames (9 for F = 3; the VAE's
  causal first chunk), every later block ``4 * F`` (12), so frame rates and timelines match the real decoder.
- `PixelDecoder` is the toy model's decoder (models/toy_world.py): its latent *is* RGB pixels in [-1, 1],
  so decoding is a clip to uint8 and a nearest-neighbour upsampling for viewing (x8 in space by default),
  one video frame per latent frame.
- `WanVAEDecoder` wraps diffusers' ``AutoencoderKLWan`` (optional extra ``vae``) and decodes in streaming
  mode: its causal feature cache is kept across blocks, so blocks must come in order (decoding is a
  chain in block order): 9 frames for the first 3-frame block (its first latent frame is the causal
  first chunk), 12 for later blocks, 8x the latent in space.
- `TAEHVDecoder` (models/taehv.py) is the tiny decoder, the fast option; `open_decoder(path)` picks a
  Wan VAE for a folder and TAEHV for a weights file.

Every decoder has a ``name`` (what a run reports) and ``decode_block(latent)``, called in block order.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cascade_sched.errors import CascadeError, CheckpointError, ConfigError

__all__ = ["LatentPreviewDecoder", "PixelDecoder", "WanVAEDecoder", "default_preview_factors", "open_decoder",
           "to_uint8"]


def default_preview_factors(channels: int = 16) -> Tensor:
    """The default (channels, 3) preview projection: channel c adds a hue at angle 2*pi*c/channels, scaled
    by 1/4. It is fixed and documented, not fitted to the Wan VAE; pass fitted factors for truer colours."""
    theta = torch.arange(channels, dtype=torch.float64) * (2 * math.pi / channels)
    shifts = torch.tensor([0.0, -2 * math.pi / 3, 2 * math.pi / 3], dtype=torch.float64)
    return (0.25 * torch.cos(theta[:, None] + shifts[None])).float()  # (C, 3)


def to_uint8(frames: Tensor) -> np.ndarray:
    """Frames in [-1, 1], (T, H, W, 3), to uint8 (values outside are clipped)."""
    return ((frames.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()


class LatentPreviewDecoder:
    """Cheap preview: per-pixel linear projection of the latent channels, upsampled by repetition."""

    name = "latent preview (fixed 16 -> 3 projection, not the Wan VAE)"

    def __init__(
        self,
        factors: Tensor | None = None,
        bias: Tensor | None = None,
        *,
        channels: int = 16,
        spatial: int = 8,
        temporal: int = 4,
    ) -> None:
        self.factors = (default_preview_factors(channels) if factors is None else factors.float())  # (C, 3)
        if self.factors.ndim != 2 or self.factors.shape[1] != 3:
            raise ConfigError("factors", f"`factors` must be (channels, 3), got {tuple(self.factors.shape)}")
        self.bias = torch.zeros(3) if bias is None else bias.float().reshape(3)
        if spatial < 1 or temporal < 1:
            raise ConfigError("spatial", f"`spatial` and `temporal` must be >= 1, got {spatial}, {temporal}")
        self.spatial, self.temporal = spatial, temporal
        self.blocks_decoded = 0

    def reset(self) -> None:
        """Start a new video (the next block is a first block again)."""
        self.blocks_decoded = 0

    def frames_for(self, latent_frames: int, first: bool) -> int:
        """Video frames a block of `latent_frames` decodes to (9 then 12 for 3-frame blocks)."""
        return 1 + self.temporal * (latent_frames - 1) if first else self.temporal * latent_frames

    def decode_block(self, latent: Tensor) -> np.ndarray:
        """Decode one block's latent (C, F, H, W) to uint8 frames (T, 8H, 8W, 3)."""
        if latent.ndim != 4 or latent.shape[0] != self.factors.shape[0]:
            raise ConfigError("latent", f"latent must be ({self.factors.shape[0]}, F, H, W), got {tuple(latent.shape)}")
        rgb = torch.einsum("cfhw,cr->fhwr", latent.detach().float().cpu(), self.factors) + self.bias  # (F, H, W, 3)
        f = rgb.shape[0]
        reps = torch.full((f,), self.temporal)
        if self.blocks_decoded == 0:
            reps[0] = 1  # the VAE's causal first chunk: one frame for the first latent frame
        rgb = rgb.repeat_interleave(reps, dim=0)
        rgb = rgb.repeat_interleave(self.spatial, dim=1).repeat_interleave(self.spatial, dim=2)
        self.blocks_decoded += 1
        return to_uint8(rgb)


class PixelDecoder:
    """Pixel-space latents (3, F, H, W) in [-1, 1] to uint8 frames (F, sH, sW, 3): the toy model's decoder.

    >>> PixelDecoder(spatial=2).decode_block(torch.zeros(3, 3, 4, 4)).shape
    (3, 8, 8, 3)
    """

    name = "pixels (the toy's latent is RGB)"

    def __init__(self, spatial: int = 8) -> None:
        if spatial < 1:
            raise ConfigError("spatial", f"`spatial` must be >= 1, got {spatial}")
        self.spatial = spatial
        self.blocks_decoded = 0

    def reset(self) -> None:
        """Start a new video (stateless apart from the block count)."""
        self.blocks_decoded = 0

    def decode_block(self, latent: Tensor) -> np.ndarray:
        """Decode one block's pixels (3, F, H, W) to uint8 frames (F, spatial*H, spatial*W, 3)."""
        if latent.ndim != 4 or latent.shape[0] != 3:
            raise ConfigError("latent", f"pixel latent must be (3, F, H, W), got {tuple(latent.shape)}")
        rgb = latent.detach().float().cpu().permute(1, 2, 3, 0)  # (F, H, W, 3)
        rgb = rgb.repeat_interleave(self.spatial, dim=1).repeat_interleave(self.spatial, dim=2)
        self.blocks_decoded += 1
        return to_uint8(rgb)


class WanVAEDecoder:
    """Streaming Wan2.1 VAE decode through diffusers' ``AutoencoderKLWan`` (needs ``diffusers``).

    `vae` is a loaded ``AutoencoderKLWan`` or a path to its weights (a diffusers Wan2.1 folder with ``vae/``,
    or the VAE folder itself). Latents are de-normalised with the VAE config's ``latents_mean``/``latents_std``.
    """

    def __init__(self, vae: Any, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> None:
        try:
            from diffusers import AutoencoderKLWan
        except ImportError as exc:
            raise CascadeError(
                "the Wan VAE decoder needs `diffusers` (pip install 'cascade-sched[vae]'); "
                "use LatentPreviewDecoder to run without it"
            ) from exc
        self.name = "Wan VAE (AutoencoderKLWan)"
        if isinstance(vae, (str, Path)):
            root = Path(vae)
            sub = root / "vae" if (root / "vae").is_dir() else root
            if not (sub / "config.json").is_file():
                raise CheckpointError(f"Wan VAE folder {str(vae)!r} has no config.json (expected an AutoencoderKLWan "
                                      "saved by diffusers, or a Wan2.1 folder with vae/)")
            try:
                vae = AutoencoderKLWan.from_pretrained(str(sub), torch_dtype=dtype)  # type: ignore[no-untyped-call]  # diffusers: from_pretrained is not annotated
            except (OSError, ValueError) as exc:
                raise CheckpointError(f"Wan VAE {str(vae)!r} cannot be loaded: {exc}") from exc
            self.name = f"Wan VAE ({root})"
        elif vae.dtype != dtype:
            vae = vae.to(dtype=dtype)
        self.vae = vae.to(device=device).eval()
        cfg = self.vae.config
        z = int(cfg.z_dim)
        self.mean = torch.tensor(cfg.latents_mean, dtype=dtype, device=device).view(1, z, 1, 1, 1)
        self.std = torch.tensor(cfg.latents_std, dtype=dtype, device=device).view(1, z, 1, 1, 1)
        self.device, self.dtype = torch.device(device), dtype
        self.reset()

    def reset(self) -> None:
        """Start a new video: clear the VAE's causal cache."""
        self.vae.clear_cache()
        self.frames_decoded = 0

    @torch.no_grad()
    def decode_frames(self, latent: Tensor) -> Tensor:
        """Decode one block (C, F, H, W) to RGB in [-1, 1] (3, T, 8H, 8W), continuing the causal cache."""
        vae = self.vae
        z = latent.to(self.device, self.dtype)[None] * self.std + self.mean  # (1, C, F, H, W)
        try:
            x = vae.post_quant_conv(z)
            outs = []
            for i in range(x.shape[2]):
                vae._conv_idx = [0]
                kwargs = {"first_chunk": True} if self.frames_decoded == 0 else {}
                outs.append(vae.decoder(x[:, :, i:i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, **kwargs))
                self.frames_decoded += 1
        except (AttributeError, TypeError) as exc:  # diffusers changed its streaming internals
            raise CascadeError(f"this diffusers version's AutoencoderKLWan cannot stream-decode: {exc}") from exc
        return torch.cat(outs, dim=2)[0].clamp(-1, 1)  # (3, T, H, W)

    def decode_block(self, latent: Tensor) -> np.ndarray:
        """Decode one block (C, F, H, W) to uint8 frames (T, 8H, 8W, 3): 9 for the first 3-frame block, then 12."""
        return to_uint8(self.decode_frames(latent).permute(1, 2, 3, 0).float())


def open_decoder(path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    """The decoder at `path`: a folder is a diffusers ``AutoencoderKLWan`` (or a Wan2.1 folder with ``vae/``),
    a ``.pth`` / ``.safetensors`` file is TAEHV weights (``taew2_1``)."""
    p = Path(path)
    if p.is_dir():
        return WanVAEDecoder(p, device=device, dtype=dtype)
    if p.is_file() and p.suffix.lower() in (".pth", ".pt", ".safetensors"):
        from .taehv import TAEHVDecoder

        dec = TAEHVDecoder.from_file(p, device=device, dtype=dtype)
        dec.name = f"TAEHV ({p})"
        return dec
    raise ConfigError("vae", f"`--vae` {str(path)!r} is neither a VAE folder nor TAEHV weights (.pth/.safetensors)")
