"""Model folders as diffusers and transformers lay them out (``models/folders.py``): every piece found from
the root or from its own subfolder, and a diffusers ``WanTransformer3DModel`` loaded under this model's names
with its geometry from its config, computing what diffusers computes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cascade_sched.errors import CheckpointError
from models import get_config
from models.checkpoints import load_dit
from models.folders import model_root, open_folder, text_encoder_folders, transformer_config, wan_name
from models.tick import TaskInput
from tests.extras import need

diffusers = need("diffusers")


def _transformer(**geometry: object) -> object:
    """A WanTransformer3DModel of the ``tiny`` preset's network, every weight drawn at random (its own init
    leaves some at zero, which would hide a wrong mapping)."""
    g = {"patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 16, "in_channels": 16,
         "out_channels": 16, "text_dim": 32, "freq_dim": 32, "ffn_dim": 64, "num_layers": 2, **geometry}
    torch.manual_seed(0)
    model = diffusers.WanTransformer3DModel(**g).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


def test_every_diffusers_name_maps_to_one_of_this_models(tmp_path: Path) -> None:
    from models import CausalWanDiT

    ref = _transformer()
    ours = CausalWanDiT(get_config("tiny"), seed=0).state_dict()
    theirs = ref.state_dict()  # type: ignore[attr-defined]
    mapped = {wan_name(k): tuple(v.shape) for k, v in theirs.items()}
    assert len(mapped) == len(theirs)  # one name for one name
    assert mapped == {k: tuple(v.shape) for k, v in ours.items()}


def test_a_diffusers_transformer_computes_what_diffusers_computes(tmp_path: Path) -> None:
    """One block, no context: the velocity this model predicts from the folder's weights equals the diffusers
    model's own forward on the same latent, timestep and (zero-padded, as Wan pads) prompt."""
    ref = _transformer()
    ref.save_pretrained(str(tmp_path / "transformer"))  # type: ignore[attr-defined]
    model, report = load_dit(tmp_path / "transformer")
    assert model.config.name == "tiny" and "WanTransformer3DModel" in report.entry
    cfg = model.config
    x, text = torch.randn(cfg.in_channels, cfg.frames_per_block, 4, 4), torch.randn(5, cfg.text_dim)
    model.register_prompt("p", text)
    t = 700.0
    ours = model.forward_tick([TaskInput(ref=(0, 0), latent=x, timestep=t, frame_offset=0, prompt="p")],
                              kv=lambda ref: None).velocity[0]
    context = torch.zeros(cfg.text_len, cfg.text_dim)
    context[: len(text)] = text
    with torch.no_grad():
        theirs = ref(hidden_states=x[None], timestep=torch.tensor([t]), encoder_hidden_states=context[None],  # type: ignore[operator]
                     return_dict=False)[0][0]
    assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max()


def test_geometry_from_the_config_a_preset_or_its_own(tmp_path: Path) -> None:
    folder = tmp_path / "Wan-odd"
    _transformer(num_layers=3).save_pretrained(str(folder / "transformer"))  # type: ignore[attr-defined]
    cfg = transformer_config(folder / "transformer")
    assert cfg.name == "wan (Wan-odd)" and cfg.num_layers == 3 and cfg.dim == 32
    assert (cfg.latent_height, cfg.latent_width) == (60, 104)  # no preset's network: Wan's 480 x 832
    model, _ = load_dit(folder)  # the model root finds its transformer/
    assert model.config == cfg
    with pytest.raises(CheckpointError, match="`--weights` picks an entry"):
        load_dit(folder, key="generator")


def test_an_image_to_video_config_is_refused_with_the_reason(tmp_path: Path) -> None:
    sub = tmp_path / "transformer"
    sub.mkdir()
    (sub / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel", "num_attention_heads": 2,
                                                 "attention_head_dim": 16, "ffn_dim": 64, "num_layers": 2,
                                                 "image_dim": 1280}))
    with pytest.raises(CheckpointError, match="text-to-video only"):
        transformer_config(sub)


def test_every_piece_is_found_from_the_root_or_its_own_subfolder(tmp_path: Path) -> None:
    root = tmp_path / "Wan"
    for piece, files in (("text_encoder", ["config.json"]), ("tokenizer", ["tokenizer.json"]),
                         ("vae", ["config.json"])):
        (root / piece).mkdir(parents=True)
        for f in files:
            (root / piece / f).write_text("{}")
    for path in (root, root / "text_encoder", root / "tokenizer", root / "vae"):
        assert model_root(path) == root
        folder = open_folder(path)
        assert (folder.text_encoder, folder.tokenizer, folder.vae, folder.transformer) == (
            root / "text_encoder", root / "tokenizer", root / "vae", None)
        assert folder.missing("transformer", "vae") == ["transformer/"]
    # --text-encoder DIR/text_encoder: the tokenizer is the one beside it
    assert text_encoder_folders(root / "text_encoder") == (root / "text_encoder", root / "tokenizer")
    assert text_encoder_folders(root) == (root / "text_encoder", root / "tokenizer")
    lone = tmp_path / "lone"  # a folder named like a piece, with nothing beside it, is its own root
    (lone / "vae").mkdir(parents=True)
    assert model_root(lone / "vae") == lone / "vae"
    (lone / "vae" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no tokenizer found"):  # an encoder with no tokenizer near it
        text_encoder_folders(lone / "vae")
