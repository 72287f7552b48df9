"""The real decoders, streaming: the Wan VAE (diffusers, tiny random config) and the TAEHV tiny decoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cascade_sched.errors import CheckpointError, ConfigError
from models.decode import WanVAEDecoder, open_decoder
from models.taehv import TAEHVDecoder
from tests.extras import need

diffusers = need("diffusers")


def tiny_vae() -> object:
    torch.manual_seed(0)
    return diffusers.AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                                      temperal_downsample=[False, True, True]).eval()


def latents(blocks: int, h: int = 4, w: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return [torch.randn(16, 3, h, w, generator=g) for _ in range(blocks)]


def test_wan_vae_streams_block_by_block_like_a_whole_decode(tmp_path: Path) -> None:
    vae = tiny_vae()
    vae.save_pretrained(str(tmp_path / "vae"))
    dec = open_decoder(tmp_path)  # a Wan2.1 folder with vae/
    assert isinstance(dec, WanVAEDecoder) and str(tmp_path) in dec.name
    blocks = latents(3)
    parts = [dec.decode_frames(z) for z in blocks]
    assert [p.shape[1] for p in parts] == [9, 12, 12] and parts[0].shape[2:] == (32, 32)  # 8x in space
    whole = torch.cat(blocks, dim=1)[None]  # the whole video through diffusers' own decode
    z = whole * dec.std + dec.mean
    with torch.no_grad():
        want = vae.decode(z).sample[0]
    torch.testing.assert_close(torch.cat(parts, dim=1), want, rtol=1e-4, atol=1e-5)
    dec.reset()
    assert dec.decode_block(blocks[0]).shape == (9, 32, 32, 3)


def test_taehv_streams_block_by_block_like_a_whole_decode() -> None:
    dec = TAEHVDecoder(width=(16, 16, 8, 8))
    blocks = latents(3, 3, 5)
    streamed = [dec.decode_frames(z) for z in blocks]
    dec.reset()
    whole = dec.decode_frames(torch.cat(blocks, dim=1))
    torch.testing.assert_close(torch.cat(streamed), whole, rtol=1e-5, atol=1e-6)
    assert whole.shape == (36, 3, 24, 40)  # 4 frames per latent frame before the trim, 8x in space
    dec.reset()
    frames = [dec.decode_block(z) for z in blocks]
    assert [f.shape for f in frames] == [(9, 24, 40, 3), (12, 24, 40, 3), (12, 24, 40, 3)]
    assert all(f.dtype == np.uint8 for f in frames)


def test_taehv_loads_the_public_layout(tmp_path: Path) -> None:
    """A state dict named like taew2_1.pth (decoder.N.*, with the encoder half beside it) loads by name."""
    ref = TAEHVDecoder()
    torch.manual_seed(1)
    for p in ref.parameters():
        torch.nn.init.normal_(p, std=0.05)
    state = {f"decoder.{k.removeprefix('decoder.')}": v for k, v in ref.state_dict().items()}
    state["encoder.0.weight"] = torch.zeros(64, 3, 3, 3)  # ignored
    state["decoder.7.conv.weight"] = torch.cat([torch.zeros_like(state["decoder.7.conv.weight"]),
                                                state["decoder.7.conv.weight"]])  # a stride-2 TGrow, patched
    torch.save(state, tmp_path / "taew2_1.pth")
    dec = open_decoder(tmp_path / "taew2_1.pth")
    assert isinstance(dec, TAEHVDecoder) and "taew2_1.pth" in dec.name
    z = latents(1)[0]
    np.testing.assert_array_equal(dec.decode_block(z), ref.decode_block(z))
    del state["decoder.22.weight"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"missing \['decoder\.22\.weight'\]"):
        TAEHVDecoder.from_file(tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match="--vae"):
        open_decoder(tmp_path / "nothing.bin")
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        open_decoder(tmp_path)
