"""Checkpoints: synthetic Wan2.1 state dicts (real key names, tiny shapes), nesting, prefixes, every error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor

from cascade_sched.errors import CheckpointError
from models import CausalWanDiT, get_config, load_checkpoint, load_model, save_model
from models.checkpoints import guess_config, load_dit, map_wan_keys

CFG = get_config("tiny")


def wan_state_dict(seed: int = 0) -> dict[str, Tensor]:
    """A Wan2.1 T2V `WanModel.state_dict()` for the tiny geometry, names and shapes written out by hand."""
    d, f, c, td, fd = CFG.dim, CFG.ffn_dim, CFG.in_channels, CFG.text_dim, CFG.freq_dim
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embedding.weight": (d, c, 1, 2, 2), "patch_embedding.bias": (d,),
        "text_embedding.0.weight": (d, td), "text_embedding.0.bias": (d,),
        "text_embedding.2.weight": (d, d), "text_embedding.2.bias": (d,),
        "time_embedding.0.weight": (d, fd), "time_embedding.0.bias": (d,),
        "time_embedding.2.weight": (d, d), "time_embedding.2.bias": (d,),
        "time_projection.1.weight": (6 * d, d), "time_projection.1.bias": (6 * d,),
        "head.head.weight": (4 * c, d), "head.head.bias": (4 * c,), "head.modulation": (1, 2, d),
    }
    for i in range(CFG.num_layers):
        p = f"blocks.{i}."
        for attn in ("self_attn", "cross_attn"):
            for lin in "qkvo":
                shapes[f"{p}{attn}.{lin}.weight"] = (d, d)
                shapes[f"{p}{attn}.{lin}.bias"] = (d,)
            shapes[f"{p}{attn}.norm_q.weight"] = (d,)
            shapes[f"{p}{attn}.norm_k.weight"] = (d,)
        shapes.update({f"{p}norm3.weight": (d,), f"{p}norm3.bias": (d,),
                       f"{p}ffn.0.weight": (f, d), f"{p}ffn.0.bias": (f,),
                       f"{p}ffn.2.weight": (d, f), f"{p}ffn.2.bias": (d,), f"{p}modulation": (1, 6, d)})
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def _assert_loaded(model: CausalWanDiT, state: dict[str, Tensor]) -> None:
    own = model.state_dict()
    assert set(own) == set(state)
    for k, v in state.items():
        assert torch.equal(own[k].float(), v), k


def test_model_names_are_wan_names() -> None:
    own = CausalWanDiT(CFG).state_dict()
    ref = wan_state_dict()
    assert set(own) == set(ref)
    assert all(own[k].shape == ref[k].shape for k in ref)


def test_safetensors_flat(tmp_path: Path) -> None:
    state = wan_state_dict()
    save_file(state, str(tmp_path / "wan.safetensors"))
    model = load_checkpoint(tmp_path / "wan.safetensors", "tiny")
    _assert_loaded(model, state)


@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_nested_generator_ema_with_model_prefix(tmp_path: Path, suffix: str) -> None:
    ema, raw = wan_state_dict(1), wan_state_dict(2)
    ckpt = {"generator_ema": {f"model.{k}": v for k, v in ema.items()},
            "generator": {f"model.{k}": v for k, v in raw.items()}, "step": 100}
    path = tmp_path / f"self_forcing{suffix}"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="holds both 'generator' and 'generator_ema': pass --weights"):
        load_checkpoint(path, CFG)  # never a silent pick: the pipelines disagree
    model, report = load_dit(path, CFG, key="generator_ema")
    _assert_loaded(model, ema)
    assert report.entry == "'generator_ema'" and "entry 'generator_ema'" in report.describe()
    _assert_loaded(load_checkpoint(path, CFG, key="generator"), raw)
    with pytest.raises(CheckpointError, match="no entry 'critic'"):
        load_checkpoint(path, CFG, key="critic")
    torch.save({"generator": ckpt["generator"]}, tmp_path / "one.pt")  # one entry: taken, and said
    assert load_dit(tmp_path / "one.pt", CFG)[1].entry == "'generator'"


def test_generator_and_wrappers(tmp_path: Path) -> None:
    state = wan_state_dict(3)
    wrapped = {}
    for k, v in state.items():
        head, _, rest = k.partition(".")
        wrapped[f"module.model._fsdp_wrapped_module.{head}._orig_mod.{rest}"] = v
    torch.save({"generator": wrapped}, tmp_path / "causvid.pt")
    model = CausalWanDiT(CFG)
    assert load_checkpoint(tmp_path / "causvid.pt", model) is model
    _assert_loaded(model, state)


def test_all_mismatches_in_one_error_and_no_partial_load(tmp_path: Path) -> None:
    state = wan_state_dict()
    del state["blocks.1.ffn.2.bias"]
    del state["head.modulation"]
    state["blocks.0.img_emb.weight"] = torch.zeros(3)
    state["blocks.0.self_attn.q.weight"] = torch.zeros(CFG.dim, CFG.dim + 1)
    save_file(state, str(tmp_path / "bad.safetensors"))
    model = CausalWanDiT(CFG)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "bad.safetensors", model)
    msg = str(info.value)
    assert "2 missing keys: blocks.1.ffn.2.bias, head.modulation" in msg
    assert "1 unexpected keys: blocks.0.img_emb.weight" in msg
    assert "blocks.0.self_attn.q.weight: checkpoint (32, 33) vs model (32, 32)" in msg
    assert info.value.missing == ["blocks.1.ffn.2.bias", "head.modulation"]  # type: ignore[attr-defined]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} was modified by a failed load"


def test_wrong_geometry(tmp_path: Path) -> None:
    save_file(wan_state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_checkpoint(tmp_path / "w.safetensors", CFG.replace(ffn_dim=48))


def test_a_checkpoint_of_another_size_names_its_preset(tmp_path: Path) -> None:
    """A 14B-on-1.3B mistake in miniature: small weights into the tiny config list the keys, capped, and
    say which preset the shapes are; with no config the loader picks that preset itself."""
    small = CausalWanDiT(get_config("small"), seed=1)
    save_file({f"model.{k}": v for k, v in small.state_dict().items()}, str(tmp_path / "small.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "small.safetensors", "tiny")
    msg = str(info.value)
    assert "unexpected keys" in msg and "shape mismatches" in msg and "... and " in msg
    assert "its shapes are those of 'small' (dim 384, 4 layers): pass --model small" in msg
    assert len(msg.splitlines()) <= 5
    model, report = load_dit(tmp_path / "small.safetensors")
    assert model.config.name == "small" and report.entry == "top level"
    assert guess_config(map_wan_keys(wan_state_dict())) == CFG


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors", CFG)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="is not a safetensors file"):
        load_checkpoint(tmp_path / "junk.safetensors", CFG)
    (tmp_path / "w.gguf").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown format"):
        load_checkpoint(tmp_path / "w.gguf", CFG)
    torch.save({"optimizer": {"lr": 0.1}}, tmp_path / "opt.pt")
    with pytest.raises(CheckpointError, match=r"opt.pt' holds a dict of non-tensors \(keys: \['optimizer'\]\)"):
        load_checkpoint(tmp_path / "opt.pt", CFG)


def _not_checkpoints(root: Path) -> dict[str, str]:
    """Files that are not checkpoints, each with what its one line must say it holds."""
    import pickle

    torch.save(torch.zeros(3), root / "tensor.pt")
    with open(root / "pickled.pt", "wb") as f:
        pickle.dump(torch.zeros(3), f)  # pickle.dump of a tensor: what the weights_only message was shown for
    np.save(root / "array.npy", np.zeros(3))
    (root / "array.npy").rename(root / "array.pt")
    torch.save(np.zeros(3), root / "numpy.pt")
    torch.save([1, 2], root / "list.pt")
    (root / "garbage.pt").write_bytes(b"\x00\x01garbage" * 9)
    (root / "empty.pt").write_bytes(b"")
    (root / "garbage.safetensors").write_bytes(b"\xff" * 40)
    (root / "empty.safetensors").write_bytes(b"")
    return {"tensor.pt": "holds a tensor of shape (3,)", "pickled.pt": "is a plain pickle (pickle.dump) of a tensor",
            "array.pt": "is a NumPy array file", "numpy.pt": "holds a NumPy array",
            "list.pt": "holds a list of 2 items", "garbage.pt": "is neither a torch file nor a safetensors file",
            "empty.pt": "is empty (0 bytes)", "garbage.safetensors": "is not a safetensors file",
            "empty.safetensors": "is empty (0 bytes)"}


def test_a_file_that_is_not_a_checkpoint_says_what_it_holds_in_one_line(tmp_path: Path) -> None:
    for name, holds in _not_checkpoints(tmp_path).items():
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(tmp_path / name, CFG)
        message = str(info.value)
        assert len(message.splitlines()) == 1 and f"checkpoint {str(tmp_path / name)!r} {holds}" in message, message


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("as_file", [False, True])
def test_own_format_round_trip(tmp_path: Path, dtype: torch.dtype, as_file: bool) -> None:
    model = CausalWanDiT(CFG, seed=11).to(dtype)
    target = tmp_path / ("m.safetensors" if as_file else "m")
    save_model(model, target)
    back = load_model(target)
    assert back.config == CFG and back.dtype == dtype
    for (k, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_own_format_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"missing config\.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text('{"format": "other"}')
    with pytest.raises(CheckpointError, match="expected 'cascade-model/1'"):
        load_model(tmp_path)
