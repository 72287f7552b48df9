"""TAEHV-class tiny decoder of Wan2.1 latents (the architecture of madebyollin/taehv's ``taew2_1``).

Layer for layer as the public ``TAEHV.decoder`` (so a ``taew2_1.pth`` / ``.safetensors`` state dict loads by
name; its ``encoder.*`` half is ignored): ``Clamp`` (``3 tanh(x / 3)``), a 3x3 conv to 256 channels, then
three stages of three ``MemBlock`` s, a 2x nearest upsample, a ``TGrow`` and a 3x3 conv down (256 -> 128 ->
64 -> 64 channels), then ReLU and a 3x3 conv to RGB in [0, 1]. A ``MemBlock`` sees its input frame and the
previous frame's input (zeros at the start of the video): ``relu(convs(cat(x, past)) + x)``. A ``TGrow``
turns each frame into ``stride`` frames with a 1x1 conv (strides 1, 2, 2: 4 frames per latent frame), and
the first ``4 - 1 = 3`` frames of a video are trimmed, which gives the Wan VAE's counts: 9 frames for the
first 3-frame block, 12 for later ones. Latents go in as the DiT makes them (TAEHV applies no
``latents_mean`` / ``latents_std``).

Decoding is streaming: each ``MemBlock`` keeps its last input frame across blocks, so decoding a video block
by block gives the frames that decoding it whole gives. Quality: see docs/models.md (stated from public
sources, not measured here).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from cascade_sched.errors import CheckpointError, ConfigError

from .decode import to_uint8
from .tensorfile import read_tensor_file

__all__ = ["TAEHVDecoder"]


def _conv(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class _Clamp(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / 3) * 3


class _MemBlock(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv(2 * n, n), nn.ReLU(), _conv(n, n), nn.ReLU(), _conv(n, n))
        self.skip = nn.Identity()  # the public 1x1 skip exists only when n_in != n_out, never in the decoder

    def forward(self, x: Tensor, past: Tensor) -> Tensor:
        return torch.relu(self.conv(torch.cat([x, past], 1)) + self.skip(x))


class _TGrow(nn.Module):
    def __init__(self, n: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n, n * stride, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # (T, C, H, W) -> (T * stride, C, H, W), frames in order
        t, c, h, w = x.shape
        y: Tensor = self.conv(x)
        return y.reshape(t * self.stride, c, h, w)


class TAEHVDecoder(nn.Module):
    """The TAEHV decoder, streaming block by block. ``decode_block`` returns uint8 frames (T, 8H, 8W, 3).

    >>> dec = TAEHVDecoder(width=(8, 8, 8, 8))
    >>> dec.decode_block(torch.zeros(16, 3, 2, 2)).shape, dec.decode_block(torch.zeros(16, 3, 2, 2)).shape
    ((9, 16, 16, 3), (12, 16, 16, 3))
    """

    name = "TAEHV (random weights)"

    def __init__(self, latent_channels: int = 16, *, width: tuple[int, int, int, int] = (256, 128, 64, 64),
                 time_upscale: tuple[bool, bool, bool] = (False, True, True),
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        n = width
        layers: list[nn.Module] = [_Clamp(), _conv(latent_channels, n[0]), nn.ReLU()]
        for stage in range(3):
            layers += [_MemBlock(n[stage]), _MemBlock(n[stage]), _MemBlock(n[stage]),
                       nn.Upsample(scale_factor=2), _TGrow(n[stage], 2 if time_upscale[stage] else 1),
                       _conv(n[stage], n[stage + 1], bias=False)]
        layers += [nn.ReLU(), _conv(n[3], 3)]
        self.decoder = nn.Sequential(*layers)
        self.latent_channels = latent_channels
        self.frames_to_trim = 2 ** sum(time_upscale) - 1
        self.to(device=device, dtype=dtype).eval()
        self.device, self.dtype = torch.device(device), dtype
        self.reset()

    @classmethod
    def from_file(cls, path: str | Path, *, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> TAEHVDecoder:
        """Load ``taew2_1.pth`` / ``.safetensors`` (the decoder half; CheckpointError listing any mismatch)."""
        state = read_tensor_file(path, "TAEHV weights")
        if not isinstance(state, dict):
            raise CheckpointError(f"TAEHV weights {str(path)!r}: expected a state dict")
        decoder = {k: v for k, v in state.items() if k.startswith("decoder.")}
        latent = decoder.get("decoder.1.weight")
        model = cls(int(latent.shape[1]) if isinstance(latent, Tensor) else 16)
        own = model.state_dict()
        for key, tensor in decoder.items():  # the public patch_tgrow_layers: keep the last-timestep channels
            if key in own and ".conv.weight" in key and tensor.shape[0] > own[key].shape[0]:
                decoder[key] = tensor[-own[key].shape[0]:]
        missing, unexpected = sorted(set(own) - set(decoder)), sorted(set(decoder) - set(own))
        bad = sorted(k for k in set(own) & set(decoder) if own[k].shape != decoder[k].shape)
        if missing or unexpected or bad:
            raise CheckpointError(f"TAEHV weights {str(path)!r} do not fit the taew2_1 decoder: missing {missing[:6]}, "
                                  f"unexpected {unexpected[:6]}, mis-shaped {bad[:6]}")
        model.load_state_dict(decoder)
        return model.to(device=device, dtype=dtype).eval()._moved(device, dtype)

    def _moved(self, device: str | torch.device, dtype: torch.dtype) -> TAEHVDecoder:
        self.device, self.dtype = torch.device(device), dtype
        self.reset()
        return self

    def reset(self) -> None:
        """Start a new video: forget every MemBlock's past frame."""
        self._memory: dict[int, Tensor] = {}
        self.blocks_decoded = 0

    @torch.no_grad()
    def decode_frames(self, latent: Tensor) -> Tensor:
        """Latent frames (C, F, H, W) to RGB in [0, 1] (4F, 3, 8H, 8W), continuing the stream."""
        if latent.ndim != 4 or latent.shape[0] != self.latent_channels:
            raise ConfigError("latent", f"latent must be ({self.latent_channels}, F, H, W), got {tuple(latent.shape)}")
        x = latent.to(self.device, self.dtype).permute(1, 0, 2, 3)  # (F, C, H, W)
        for i, layer in enumerate(self.decoder):
            if isinstance(layer, _MemBlock):
                past = self._memory.get(i, torch.zeros_like(x[:1]))
                self._memory[i] = x[-1:].clone()
                x = layer(x, torch.cat([past, x[:-1]]))  # each frame sees the previous frame's input
            else:
                x = layer(x)
        return x.clamp(0, 1)

    def decode_block(self, latent: Tensor) -> np.ndarray:
        """Decode one block's latent (C, F, H, W) to uint8 frames (9 for the first 3-frame block, then 12)."""

        rgb = self.decode_frames(latent)
        if self.blocks_decoded == 0:
            rgb = rgb[self.frames_to_trim:]
        self.blocks_decoded += 1
        return to_uint8((rgb * 2 - 1).permute(0, 2, 3, 1).float())
