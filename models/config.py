"""Model geometry: one frozen dataclass, the named presets, and the slices a layer ring holds.

The real presets follow the public Wan2.1 configurations (Wan-AI/Wan2.1 `wan/configs/`; sources in docs/references.md):
1.3B is dim 1536 / FFN 8960 / 30 layers / 12 heads, 14B is dim 5120 / FFN 13824 / 40 layers / 40 heads,
both with patch (1, 2, 2), 16 latent channels, umT5 text of 512 x 4096 and a 256-dim timestep embedding.
`tiny` exists for tests (milliseconds on a CPU) and `small` for CPU benchmarks (compute dominates).

Every preset comes at any block size and video resolution (``get_config(name, frames_per_block=,
resolution=)`` or :meth:`ModelConfig.with_geometry`): the Wan VAE maps 8 x 8 pixels to one latent cell and
the patch 2 x 2 cells to one token, so a resolution is a multiple of 16 pixels.

>>> cfg = get_config("wan2.1-1.3b")
>>> cfg.tokens_per_frame, cfg.tokens_per_block
(1560, 4680)
>>> get_config("wan2.1-1.3b", frames_per_block=1, resolution=(512, 512)).tokens_per_block
1024
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cascade_sched.errors import ConfigError

__all__ = ["ACTIVATION_BYTES", "PIXEL_STRIDE", "PRESETS", "VAE_STRIDE", "ModelConfig", "ModelSlice", "get_config",
           "parse_resolution"]

# Wan2.1's VAE: 4 video frames and 8 x 8 pixels per latent cell (Wan-AI/Wan2.1 wan/configs/wan_t2v_1_3B.py and
# wan_t2v_14B.py: vae_stride = (4, 8, 8)); its first latent frame holds one video frame (a causal first chunk).
VAE_STRIDE = (4, 8, 8)
# Pixels per latent cell, where a preset has no Wan VAE: the toy's latent is its RGB pixels.
PIXEL_STRIDE: dict[str, int] = {"toy": 1}
# Bytes per value of the residual stream (the activation dtype) for each weight dtype: half-precision
# weights keep the stream in float32, as Wan's autocast regions do (models/layers.py: act_dtype).
ACTIVATION_BYTES = {"bfloat16": 4, "float16": 4, "float32": 4, "float64": 8}


@dataclass(frozen=True)
class ModelSlice:
    """The part of the model one rank of a layer ring holds: layers ``[first, end)``, with or without the
    entry (the patch embedding) and the head. Every slice also holds what each rank needs to condition its
    layers: the time embedding and projection, and the text embedding (for its layers' cross-attention).
    Build one with :meth:`ModelConfig.slice` (validated) or :meth:`ModelConfig.ring_slices`.
    """

    first: int
    end: int
    entry: bool
    head: bool

    @property
    def layers(self) -> range:
        """The absolute layer indices held."""
        return range(self.first, self.end)

    def describe(self) -> str:
        """``layers [0, 15) + entry``: what the slice holds, for messages."""
        extra = "".join(f" + {name}" for name, held in (("entry", self.entry), ("head", self.head)) if held)
        return f"layers [{self.first}, {self.end}){extra}"


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

    # --- video geometry ----------------------------------------------------------------------------------
    @property
    def pixel_stride(self) -> int:
        """Video pixels per latent cell in height and width: the Wan VAE's 8, or 1 where the latent is the
        picture itself (the toy)."""
        return PIXEL_STRIDE.get(self.name, VAE_STRIDE[1])

    @property
    def resolution(self) -> tuple[int, int]:
        """Video (height, width) in pixels: (480, 832) for the Wan presets.

        >>> get_config("tiny").resolution
        (32, 32)
        """
        return self.latent_height * self.pixel_stride, self.latent_width * self.pixel_stride

    def with_geometry(self, *, frames_per_block: int | None = None,
                      resolution: tuple[int, int] | None = None) -> ModelConfig:
        """This model at another block size (latent frames per block) and video resolution (height, width in
        pixels); None keeps the current one. Each is checked against the VAE's and the patch's strides, and a
        bad value is one ConfigError naming its flag (``--frames-per-block``, ``--resolution``).

        >>> get_config("wan2.1-14b").with_geometry(frames_per_block=1, resolution=(480, 832)).tokens_per_block
        1560
        """
        changes: dict[str, int] = {}
        if frames_per_block is not None:
            pt = self.patch_size[0]
            if isinstance(frames_per_block, bool) or not isinstance(frames_per_block, int) or frames_per_block < 1 \
                    or frames_per_block % pt:
                step = "a positive integer" if pt == 1 else f"a positive multiple of {pt} (the patch's frames)"
                raise ConfigError("frames_per_block",
                                  f"`--frames-per-block` must be {step}: latent frames per block (StreamDiffusionV2 "
                                  f"uses 1, Self-Forcing and CausVid 3), got {frames_per_block!r}")
            changes["frames_per_block"] = frames_per_block
        if resolution is not None:
            changes.update(self._latent_size(resolution))
        return self.replace(**changes) if changes else self

    def _latent_size(self, resolution: tuple[int, int]) -> dict[str, int]:
        """``latent_height``/``latent_width`` of a video (height, width) in pixels; ConfigError unless each is
        a positive multiple of the pixel stride times the patch (16 for the Wan presets)."""
        s, (_, ph, pw) = self.pixel_stride, self.patch_size
        steps = (s * ph, s * pw)
        pair = tuple(resolution) if isinstance(resolution, (tuple, list)) else ()
        ok = (len(pair) == 2
              and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 and v % step == 0
                      for v, step in zip(pair, steps, strict=True)))
        if not ok:
            why = (f"the Wan VAE's {s} pixels per latent cell times the patch's {ph}" if s > 1
                   else f"{self.name}'s latent is its pixels; the patch is {ph}")
            shown = "x".join(map(str, pair)) if pair else repr(resolution)
            raise ConfigError("resolution",
                              f"`--resolution` must be HEIGHTxWIDTH in video pixels, each a positive multiple of "
                              f"{steps[0]} ({why}), e.g. {'x'.join(map(str, self.resolution))}; got {shown}")
        return {"latent_height": pair[0] // s, "latent_width": pair[1] // s}

    # --- slices and sizes ---------------------------------------------------------------------------------
    def layer_slice(self, first: int = 0, end: int | None = None, *, entry: bool | None = None,
                    head: bool | None = None) -> ModelSlice:
        """Layers ``[first, end)`` (``end`` None: to the last) as a :class:`ModelSlice`; the entry defaults to
        ``first == 0`` and the head to ``end == num_layers``. ConfigError (``layers``) on an empty or
        out-of-range span.

        >>> get_config("tiny").layer_slice(1).describe()
        'layers [1, 2) + head'
        """
        n = self.num_layers
        end = n if end is None else end
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (first, end)) or not 0 <= first < end <= n:
            raise ConfigError("layers", f"a slice of {self.name} needs 0 <= first < end <= {n} layers, got "
                                        f"[{first}, {end})")
        entry, head = first == 0 if entry is None else entry, end == n if head is None else head
        if (entry and first) or (head and end != n):
            raise ConfigError("layers", f"a slice of {self.name} holds the entry only from layer 0 and the head "
                                        f"only up to layer {n}; got [{first}, {end}) with entry={entry}, head={head}")
        return ModelSlice(first, end, entry, head)

    def ring_slices(self, sizes: Sequence[int]) -> list[ModelSlice]:
        """The slices of a layer ring that holds ``sizes`` consecutive layers per rank (a split such as
        ``--layer-split 8,8,7,7``): the entry on the first, the head on the last.

        >>> [s.describe() for s in get_config("tiny").ring_slices([1, 1])]
        ['layers [0, 1) + entry', 'layers [1, 2) + head']
        """
        sizes = list(sizes)
        if not sizes or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in sizes) \
                or sum(sizes) != self.num_layers:
            raise ConfigError("layer_split", f"`--layer-split` {','.join(map(str, sizes))} must be positive layer "
                                             f"counts that sum to {self.name}'s {self.num_layers} layers")
        bounds = [0, *itertools.accumulate(sizes)]
        return [self.layer_slice(a, b) for a, b in itertools.pairwise(bounds)]

    def parameter_count(self, part: ModelSlice | None = None) -> int:
        """Parameters of the model, or of the slice ``part``: what a rank holding it materialises.

        >>> get_config("tiny").parameter_count()
        40864
        """
        part = part if part is not None else self.layer_slice()
        d, f = self.dim, self.ffn_dim

        def lin(i: int, o: int) -> int:
            return i * o + o  # weight and bias of a Linear(i, o)

        shared = lin(self.text_dim, d) + lin(d, d) + lin(self.freq_dim, d) + lin(d, d) + lin(d, 6 * d)
        attn = 4 * lin(d, d) + (2 * d if self.qk_norm else 0)  # q, k, v, o and the q/k RMS norms
        layer = 2 * attn + (2 * d if self.cross_attn_norm else 0) + lin(d, f) + lin(f, d) + 6 * d
        entry = self.patch_dim * d + d
        head = lin(d, math.prod(self.patch_size) * self.out_channels) + 2 * d
        return shared + (part.end - part.first) * layer + entry * part.entry + head * part.head

    def hidden_bytes(self, tokens: int, act_bytes: int = ACTIVATION_BYTES["bfloat16"]) -> int:
        """Bytes of the residual stream of ``tokens`` tokens: what one hop of a layer ring sends for them
        (``tokens x dim x act_bytes``; the stream is float32 for bf16, fp16 and fp32 weights, see
        ACTIVATION_BYTES). Nothing else crosses a hop: every rank derives the rest from the task inputs.

        >>> get_config("wan2.1-1.3b").hidden_bytes(4680) / 1e6
        28.75392
        """
        return tokens * self.dim * act_bytes

    def hidden_bytes_per_block(self, act_bytes: int = ACTIVATION_BYTES["bfloat16"]) -> int:
        """:meth:`hidden_bytes` of one block's tokens: one task's hand-off between two ranks of a ring."""
        return self.hidden_bytes(self.tokens_per_block, act_bytes)

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


def get_config(name: str, *, frames_per_block: int | None = None,
               resolution: tuple[int, int] | None = None) -> ModelConfig:
    """The preset called `name` (ConfigError, param `model`, listing the valid names otherwise), at another
    block size or video resolution when given (:meth:`ModelConfig.with_geometry`).

    >>> get_config("tiny").head_dim
    16
    >>> get_config("wan2.1-1.3b", resolution=(720, 1280)).tokens_per_frame
    3600
    """
    try:
        config = PRESETS[name]
    except (KeyError, TypeError):
        raise ConfigError("model", f"unknown `model` {name!r}; valid: {sorted(PRESETS)}") from None
    return config.with_geometry(frames_per_block=frames_per_block, resolution=resolution)


def parse_resolution(text: str | None) -> tuple[int, int] | None:
    """``"480x832"`` -> ``(480, 832)``: a video's height and width in pixels, as ``--resolution`` takes it
    (None, the flag not given, stays None; the strides are checked by :meth:`ModelConfig.with_geometry`,
    which knows the model).

    >>> parse_resolution("480x832"), parse_resolution(None)
    ((480, 832), None)
    """
    if text is None:
        return None
    parts = text.strip().lower().split("x") if isinstance(text, str) else []
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError("resolution", f"`--resolution` must be HEIGHTxWIDTH in video pixels, e.g. 480x832, "
                                        f"got {text!r}")
    return int(parts[0]), int(parts[1])
