"""Presets: geometry, validation, and parameter counts of the real configs (built on the meta device)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from cascade_sched.errors import ConfigError
from models import PRESETS, CausalWanDiT, ModelConfig, TaskInput, get_config
from models.config import parse_resolution


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


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_parameter_count_is_the_modules(name: str) -> None:
    """`ModelConfig.parameter_count` (what the simulator can price without torch) is the modules' count,
    whole and for slices."""
    cfg = get_config(name)
    assert cfg.parameter_count() == wan_param_count(cfg)
    for part in (cfg.layer_slice(), cfg.layer_slice(0, 1), cfg.layer_slice(cfg.num_layers - 1),
                 cfg.layer_slice(1, 2, entry=False, head=False)):
        with torch.device("meta"):
            model = CausalWanDiT(cfg, part=part)
        assert sum(p.numel() for p in model.parameters()) == cfg.parameter_count(part), part


def test_wan_geometry_at_any_block_size_and_resolution() -> None:
    sdv2 = get_config("wan2.1-1.3b", frames_per_block=1, resolution=(480, 832))  # StreamDiffusionV2's blocks
    assert (sdv2.frames_per_block, sdv2.tokens_per_block, sdv2.resolution) == (1, 1560, (480, 832))
    hd = get_config("wan2.1-14b").with_geometry(resolution=(720, 1280))
    assert (hd.latent_height, hd.latent_width, hd.tokens_per_frame, hd.frames_per_block) == (90, 160, 3600, 3)
    assert get_config("wan2.1-1.3b").resolution == (480, 832)
    assert get_config("tiny", resolution=(64, 48)).grid == (4, 3)
    assert get_config("toy", resolution=(32, 32)).tokens_per_frame == 64  # the toy's latent is its pixels
    assert parse_resolution(" 480x832 ") == (480, 832)
    # One hand-off of a layer ring: a block's residual stream in float32 (bf16 weights).
    assert get_config("wan2.1-1.3b").hidden_bytes_per_block() == 4680 * 1536 * 4
    assert sdv2.hidden_bytes(sdv2.tokens_per_block, 8) == 1560 * 1536 * 8


def test_geometry_refusals_name_the_flag_and_the_valid_values() -> None:
    cases: list[tuple[Callable[[], object], str, str]] = [
        (lambda: get_config("wan2.1-1.3b", resolution=(481, 832)), "resolution",
         "`--resolution` must be HEIGHTxWIDTH in video pixels, each a positive multiple of 16 (the Wan VAE's 8 "
         "pixels per latent cell times the patch's 2), e.g. 480x832; got 481x832"),
        (lambda: get_config("toy", resolution=(18, 16)), "resolution", "positive multiple of 4"),
        (lambda: get_config("wan2.1-14b", resolution=(0, 832)), "resolution", "got 0x832"),
        (lambda: get_config("wan2.1-1.3b", frames_per_block=0), "frames_per_block",
         "`--frames-per-block` must be a positive integer: latent frames per block (StreamDiffusionV2 uses 1, "
         "Self-Forcing and CausVid 3), got 0"),
        (lambda: parse_resolution("832*480"), "resolution", "HEIGHTxWIDTH in video pixels, e.g. 480x832, got '832*480'"),
        (lambda: get_config("tiny").ring_slices([1, 2]), "layer_split", "sum to tiny's 2 layers"),
    ]
    for make, param, message in cases:
        with pytest.raises(ConfigError) as info:
            make()
        assert info.value.param == param and message in str(info.value), str(info.value)
        assert "\n" not in str(info.value)


def test_a_tick_at_another_geometry() -> None:
    cfg = get_config("tiny", frames_per_block=1, resolution=(64, 48))
    model = CausalWanDiT(cfg)
    model.register_prompt("p", torch.zeros(2, cfg.text_dim))
    task = TaskInput((0, 0), torch.randn(cfg.latent_shape()), 1000.0, 0, "p")
    out = model.forward_tick([task], kv=lambda r, layer: None)
    assert out.velocity[0].shape == (16, 1, 8, 6) and out.kv[0][0][0].shape == (12, 2, 16)
