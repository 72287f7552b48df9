"""Prompt embeddings and decoders."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cascade_sched.errors import CascadeError, CheckpointError
from models import (
    LatentPreviewDecoder,
    WanVAEDecoder,
    get_config,
    load_embeddings,
    text_embedding,
    umt5_embedding,
)


def test_text_embedding_deterministic() -> None:
    for name in ("tiny", "small", "wan2.1-1.3b"):
        cfg = get_config(name)
        e = text_embedding("a red fox runs", cfg)
        assert e.shape == (cfg.text_len, cfg.text_dim) and e.dtype == torch.float32
        assert torch.equal(e, text_embedding("a red fox runs", cfg))
        assert (e[5:] == 0).all() and (e[:5] != 0).any(dim=1).all()
    tiny = get_config("tiny")
    a, b = text_embedding("a red fox", tiny), text_embedding("a blue fox", tiny)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])
    long = text_embedding(" ".join(["w"] * 50), tiny)
    assert long.shape == (tiny.text_len, tiny.text_dim) and (long != 0).any(dim=1).all()


def test_load_embeddings(tmp_path: Path) -> None:
    t = torch.randn(7, 32)
    save_file({"fox": t, "cat": t[:3].clone()}, str(tmp_path / "p.safetensors"))
    got = load_embeddings(tmp_path / "p.safetensors")
    assert set(got) == {"fox", "cat"} and torch.equal(got["fox"], t)
    torch.save(t[None], tmp_path / "one.pt")
    assert torch.equal(load_embeddings(tmp_path / "one.pt")["prompt"], t)
    torch.save(torch.zeros(2, 3, 4), tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="expected"):
        load_embeddings(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_embeddings(tmp_path / "none.pt")


@pytest.mark.skipif(importlib.util.find_spec("transformers") is not None, reason="transformers is installed")
def test_umt5_needs_transformers(tmp_path: Path) -> None:
    with pytest.raises(CascadeError, match="transformers"):
        umt5_embedding("a fox", tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("diffusers") is not None, reason="diffusers is installed")
def test_wan_vae_needs_diffusers(tmp_path: Path) -> None:
    with pytest.raises(CascadeError, match="diffusers"):
        WanVAEDecoder(tmp_path)


def test_preview_decoder_frame_counts_and_determinism() -> None:
    cfg = get_config("tiny")
    dec = LatentPreviewDecoder()
    lat = torch.randn(cfg.latent_shape())
    first, second = dec.decode_block(lat), dec.decode_block(lat)
    assert first.dtype == np.uint8 and first.shape == (9, 32, 32, 3)  # like the Wan VAE: 9 then 12
    assert second.shape == (12, 32, 32, 3)
    assert np.array_equal(first[1:], second[4:])
    dec.reset()
    assert np.array_equal(dec.decode_block(lat), first)
    assert dec.frames_for(3, True) == 9 and dec.frames_for(3, False) == 12
    # zero latent decodes to mid-grey; the projection is a fixed linear map
    assert (LatentPreviewDecoder().decode_block(torch.zeros(cfg.latent_shape())) == 128).all()
