"""Presets: geometry, validation, and parameter counts of the real configs (built on the meta device)."""

from __future__ import annotations

import pytest
import torch

from cascade_sched.errors import ConfigError
from models import PRESETS, CausalWanDiT, ModelConfig, get_config


def wan_param_count(cfg: ModelConfig) -> int:
    """Wan2.1 T2V parameter count, from its module list written out by hand."""
    d, f = cfg.dim, cfg.ffn_dim
    lin = lambda i, o: i * o + o  # noqa: E731
    patch = cfg.patch_dim * d + d
    text = lin(cfg.text_dim, d) + lin(d, d)
    time = lin(cfg.freq_dim, d) + lin(d, d) + lin(d, 6 * d)
    attn = 4 * lin(d, d) + 2 * d  # q, k, v, o + RMS norms on q and k
    block = 2 * attn + 2 * d + lin(d, f) + lin(f, d) + 6 * d  # self, cross, norm3 (affine), ffn, modulation
    head = lin(d, cfg.patch_dim // cfg.in_channels * cfg.out_channels) + 2 * d
    return patch + text + time + cfg.num_layers * block + head


@pytest.mark.parametrize(("name", "published"), [("wan2.1-1.3b", 1.42e9), ("wan2.1-14b", 1.43e10)])
def test_real_configs_parameter_counts(name: str, published: float) -> None:
    cfg = get_config(name)
    with torch.device("meta"):
        model = CausalWanDiT(cfg)
    n = sum(p.numel() for p in model.parameters())
    print(f"{name}: {n:,} parameters ({n / 1e9:.3f} B)")
    assert n == wan_param_count(cfg)
    assert abs(n - published) / published < 0.03


def test_real_geometry_matches_reference() -> None:
    small, big = get_config("wan2.1-1.3b"), get_config("wan2.1-14b")
    assert (small.dim, small.ffn_dim, small.num_layers, small.num_heads, small.head_dim) == (1536, 8960, 30, 12, 128)
    assert (big.dim, big.ffn_dim, big.num_layers, big.num_heads, big.head_dim) == (5120, 13824, 40, 40, 128)
    assert small.tokens_per_frame == 1560 and small.tokens_per_block == 4680
    # REFERENCE.md: 28.75 MB per layer and 0.863 GB per block (1.3B), 95.85 MB per layer (14B), bf16
    assert small.kv_bytes_per_block_layer(2) == 2 * 4680 * 1536 * 2
    assert abs(small.kv_bytes_per_block_layer(2) / 1e6 - 28.75) < 0.01
    assert abs(small.kv_bytes_per_block(2) / 1e9 - 0.863) < 0.001
    assert abs(big.kv_bytes_per_block_layer(2) / 1e6 - 95.85) < 0.01


def test_tiny_and_small() -> None:
    tiny, small = get_config("tiny"), get_config("small")
    assert (tiny.num_layers, tiny.num_heads, tiny.tokens_per_frame, tiny.tokens_per_block) == (2, 2, 4, 12)
    assert 150 <= small.tokens_per_block <= 260
    assert set(PRESETS) == {"tiny", "small", "toy", "wan2.1-1.3b", "wan2.1-14b"}


def test_unknown_and_invalid() -> None:
    with pytest.raises(ConfigError, match=r"unknown `model` 'huge'.*tiny") as info:
        get_config("huge")
    assert info.value.param == "model"
    with pytest.raises(ConfigError, match="num_heads"):
        ModelConfig(name="x", dim=30, ffn_dim=8, num_layers=1, num_heads=4)
    with pytest.raises(ConfigError, match="patch_size"):
        get_config("tiny").replace(latent_height=5)
    with pytest.raises(ConfigError, match="dim"):
        ModelConfig(name="x", dim=0, ffn_dim=8, num_layers=1, num_heads=1)


def test_dict_round_trip() -> None:
    cfg = get_config("small")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown model config fields"):
        ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})
