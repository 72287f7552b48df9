"""Model geometry: one frozen dataclass and the named presets.

The real presets follow the public Wan2.1 configurations (Wan-AI/Wan2.1 `wan/configs/`; sources in docs/references.md):
1.3B is dim 1536 / FFN 8960 / 30 layers / 12 heads, 14B is dim 5120 / FFN 13824 / 40 layers / 40 heads,
both with patch (1, 2, 2), 16 latent channels, umT5 text of 512 x 4096 and a 256-dim timestep embedding.
`tiny` exists for tests (milliseconds on a CPU) and `small` for CPU benchmarks (compute dominates).

>>> cfg = get_config("wan2.1-1.3b")
>>> cfg.tokens_per_frame, cfg.tokens_per_block
(1560, 4680)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from cascade_sched.errors import ConfigError

__all__ = ["PRESETS", "ModelConfig", "get_config"]


@dataclass(frozen=True)
class ModelConfig:
    """Geometry of a block-causal Wan2.1-family DiT and of the latent blocks it generates."""

    name: str  # preset name, carried into saved checkpoints
    dim: int  # hidden size of the residual stream
    ffn_dim: int  # inner size of the GELU feed-forward
    num_layers: int  # number of transformer blocks (Wan calls them `blocks`)
    num_heads: int  # attention heads; head_dim = dim // num_heads
    in_channels: int = 16  # latent channels in (Wan `in_dim`)
    out_channels: int = 16  # latent channels out (Wan `out_dim`)
    patch_size: tuple[int, int, int] = (1, 2, 2)  # (frames, height, width) per token
    text_dim: int = 4096  # width of the text-encoder outputs (umT5-XXL: 4096)
    text_len: int = 512  # text tokens the cross-attention sees; shorter prompts are zero-padded
    freq_dim: int = 256  # sinusoidal timestep-embedding width
    eps: float = 1e-6  # epsilon of every LayerNorm / RMSNorm
    latent_height: int = 60  # latent frame height (480 px / VAE stride 8)
    latent_width: int = 104  # latent frame width (832 px / VAE stride 8)
    frames_per_block: int = 3  # latent frames generated together as one block
    qk_norm: bool = True  # RMS norm on queries and keys (all Wan2.1 T2V models)
    cross_attn_norm: bool = True  # affine LayerNorm `norm3` before the cross-attention (Wan2.1 T2V)

    def __post_init__(self) -> None:
        for field in ("dim", "ffn_dim", "num_layers", "num_heads", "in_channels", "out_channels",
                      "text_dim", "text_len", "freq_dim", "latent_height", "latent_width",
                      "frames_per_block"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(field, f"`{field}` must be a positive integer, got {value!r}")
        if self.dim % self.num_heads:
            raise ConfigError("num_heads", f"`num_heads`={self.num_heads} must divide `dim`={self.dim}")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ConfigError("num_heads", f"head_dim={self.head_dim} must be even and at least 6 for 3D RoPE")
        if self.freq_dim % 2:
            raise ConfigError("freq_dim", f"`freq_dim` must be even, got {self.freq_dim}")
        pt, ph, pw = self.patch_size
        if (self.frames_per_block % pt or self.latent_height % ph or self.latent_width % pw):
            raise ConfigError(
                "patch_size",
                f"`patch_size`={self.patch_size} must divide the block geometry "
                f"({self.frames_per_block}, {self.latent_height}, {self.latent_width})",
            )

    # --- derived geometry -------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.dim // self.num_heads

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid of one latent frame: (height, width) in patches."""
        return self.latent_height // self.patch_size[1], self.latent_width // self.patch_size[2]

    @property
    def tokens_per_frame(self) -> int:
        """Tokens of one latent frame (1,560 for 480x832 with patch (1, 2, 2))."""
        h, w = self.grid
        return h * w

    @property
    def tokens_per_block(self) -> int:
        """Tokens of one block of `frames_per_block` latent frames."""
        return (self.frames_per_block // self.patch_size[0]) * self.tokens_per_frame

    @property
    def patch_dim(self) -> int:
        """Values in one patch of the input latent (16 * 1 * 2 * 2 = 64)."""
        return self.in_channels * math.prod(self.patch_size)

    def kv_bytes_per_block(self, dtype_bytes: int = 2) -> int:
        """Bytes of one block's K and V over all layers (post-RoPE keys), at `dtype_bytes` per value."""
        return self.kv_bytes_per_block_layer(dtype_bytes) * self.num_layers

    def kv_bytes_per_block_layer(self, dtype_bytes: int = 2) -> int:
        """Bytes of one block's K and V in one layer."""
        return 2 * self.tokens_per_block * self.dim * dtype_bytes

    def latent_shape(self) -> tuple[int, int, int, int]:
        """Shape of one block's latent: (C, F, H, W)."""
        return (self.in_channels, self.frames_per_block, self.latent_height, self.latent_width)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; `from_dict` inverts it."""
        out = dataclasses.asdict(self)
        out["patch_size"] = list(self.patch_size)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build a config from `to_dict` output; unknown fields raise ConfigError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError("config", f"unknown model config fields {unknown}; valid: {sorted(names)}")
        data = dict(data)
        if "patch_size" in data:
            data["patch_size"] = tuple(int(p) for p in data["patch_size"])
        return cls(**data)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with `changes` applied (e.g. another latent geometry)."""
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, ModelConfig] = {
    # Tests: 2 layers of 2 heads x 16, 4 tokens per frame, 12 per block; a forward takes about a millisecond.
    "tiny": ModelConfig(
        name="tiny", dim=32, ffn_dim=64, num_layers=2, num_heads=2,
        text_dim=32, text_len=8, freq_dim=32, latent_height=4, latent_width=4,
    ),
    # CPU benchmarks: 192 tokens per block and dim 384, so one block forward is tens of milliseconds and
    # matmuls, not Python, dominate.
    "small": ModelConfig(
        name="small", dim=384, ffn_dim=1536, num_layers=4, num_heads=4,
        text_dim=64, text_len=16, freq_dim=256, latent_height=16, latent_width=16,
    ),
    # The toy world (models/toy_world.py): 16 x 16 RGB pixels are the latent (3 channels, no VAE); 4 x 4
    # patches, 16 tokens per frame, 48 per block; the prompt is the toy vocabulary (models/toy_text.py);
    # trained by `python -m apps.toy.train`, weights in models/weights/toy*.
    "toy": ModelConfig(
        name="toy", dim=128, ffn_dim=512, num_layers=4, num_heads=2, in_channels=3, out_channels=3,
        patch_size=(1, 4, 4), text_dim=16, text_len=4, freq_dim=64, latent_height=16, latent_width=16,
    ),
    # Wan2.1-T2V-1.3B geometry (Self-Forcing, CausVid, LongLive).
    "wan2.1-1.3b": ModelConfig(name="wan2.1-1.3b", dim=1536, ffn_dim=8960, num_layers=30, num_heads=12),
    # Wan2.1-T2V-14B geometry (Krea Realtime 14B).
    "wan2.1-14b": ModelConfig(name="wan2.1-14b", dim=5120, ffn_dim=13824, num_layers=40, num_heads=40),
}


def get_config(name: str) -> ModelConfig:
    """The preset called `name`; ConfigError (param `model`) listing the valid names otherwise.

    >>> get_config("tiny").head_dim
    16
    """
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ConfigError("model", f"unknown `model` {name!r}; valid: {sorted(PRESETS)}") from None
