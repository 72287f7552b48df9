"""Loading a slice: only its tensors are read (safetensors per key, sharded safetensors by their index, .pt
memory-mapped), the result equals the same slice of the loaded whole model, the whole model's exact-or-nothing
rule holds for what the slice holds, and a LoRA adapter merges into the slice's layers only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor

from cascade_sched.errors import CheckpointError
from models import CausalWanDiT, get_config, load_model, save_model
from models.checkpoints import load_checkpoint, load_dit, take_slice
from models.config import ModelSlice
from models.lora import load_lora
from models.slices import parameter_bytes

CFG = get_config("tiny").replace(name="tiny-6", num_layers=6)
PARTS = CFG.ring_slices((2, 3, 1))


def _whole(seed: int = 5) -> dict[str, Tensor]:
    state: dict[str, Tensor] = CausalWanDiT(CFG, seed=seed).state_dict()
    return state


def _equal(a: CausalWanDiT, b: CausalWanDiT) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def _write(tmp_path: Path, form: str, state: dict[str, Tensor]) -> tuple[Path, str]:
    """The whole model's weights in one of the layouts the loader reads; returns the path and the prefix its
    names carry in the file."""
    if form == "safetensors":
        save_file(state, str(tmp_path / "w.safetensors"))
        return tmp_path / "w.safetensors", ""
    if form == "pt":  # a Self-Forcing-style training checkpoint: nested, `model.` prefixes
        torch.save({"generator": {f"model.{k}": v for k, v in state.items()}, "step": 3}, tmp_path / "w.pt")
        return tmp_path / "w.pt", "model."
    names = sorted(state)  # sharded: two files and a Hugging Face weight map
    shards = {"w-00001-of-00002.safetensors": names[::2], "w-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(tmp_path / file))
    index = {"metadata": {"total_size": 0}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (tmp_path / "w.safetensors.index.json").write_text(json.dumps(index))
    return tmp_path, ""


@pytest.mark.parametrize("form", ["safetensors", "pt", "sharded"])
def test_a_slice_reads_only_its_tensors_and_equals_the_sliced_whole(tmp_path: Path, form: str) -> None:
    path, prefix = _write(tmp_path, form, _whole())
    whole, report = load_dit(path, CFG)
    assert report.part is None and len(report.read) == report.of == len(whole.state_dict())
    for part in PARTS:
        piece, report = load_dit(path, CFG, part=part)
        assert piece.part == part
        _equal(piece, take_slice(whole, part))
        own = piece.state_dict()
        assert sorted(report.read) == sorted(prefix + k for k in own)  # nothing else was read
        assert report.read_bytes == parameter_bytes(piece) and report.of == len(whole.state_dict())
        assert f"{part.describe()}: {len(own)} of {report.of} tensors" in report.describe()


def test_own_format_slice(tmp_path: Path) -> None:
    model = CausalWanDiT(CFG, seed=2).to(torch.bfloat16)
    save_model(model, tmp_path / "m")
    for part in PARTS:
        piece = load_model(tmp_path / "m", part=part)
        assert piece.dtype == torch.bfloat16
        _equal(piece, take_slice(model, part))


def test_exact_or_nothing_for_what_the_slice_holds(tmp_path: Path) -> None:
    """A missing tensor refuses only the slice that holds it; a wrong shape or a name the model does not
    have refuses every slice alike (one CheckpointError); a refused load leaves a given model untouched."""
    state = _whole()
    del state["blocks.5.ffn.2.bias"]
    save_file(state, str(tmp_path / "gap.safetensors"))
    first, middle, last = PARTS
    load_checkpoint(tmp_path / "gap.safetensors", CFG, part=first)
    with pytest.raises(CheckpointError, match=r"1 missing keys: blocks\.5\.ffn\.2\.bias"):
        load_checkpoint(tmp_path / "gap.safetensors", CFG, part=last)

    state = _whole()
    state["blocks.5.ffn.0.weight"] = torch.zeros(CFG.ffn_dim + 1, CFG.dim)
    state["blocks.9.ffn.0.weight"] = torch.zeros(3)
    save_file(state, str(tmp_path / "bad.safetensors"))
    target = CausalWanDiT(CFG, seed=1, part=first)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    for part in PARTS:
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(tmp_path / "bad.safetensors", target if part == first else CFG, part=part)
        msg = str(info.value)
        assert "1 unexpected keys: blocks.9.ffn.0.weight" in msg
        assert f"blocks.5.ffn.0.weight: checkpoint ({CFG.ffn_dim + 1}, {CFG.dim}) vs model ({CFG.ffn_dim}, {CFG.dim})" in msg
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())
    with pytest.raises(CheckpointError, match="not the slice asked for"):
        load_checkpoint(tmp_path / "gap.safetensors", target, part=middle)


def test_sharded_index_errors(tmp_path: Path) -> None:
    (tmp_path / "w.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "missing.safetensors"}}))
    with pytest.raises(CheckpointError, match="names shards that are not beside it"):
        load_checkpoint(tmp_path, CFG)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="exactly one sharded-safetensors index"):
        load_checkpoint(tmp_path / "empty", CFG)


def _adapter(tmp_path: Path, bad_layer: int | None = None) -> Path:
    """A PEFT-layout adapter (rank 2, alpha 4) on every block's self-attention q and ffn.0."""
    g = torch.Generator().manual_seed(3)
    tensors = {}
    for i in range(CFG.num_layers):
        for name, (out_f, in_f) in (("self_attn.q", (CFG.dim, CFG.dim)), ("ffn.0", (CFG.ffn_dim, CFG.dim))):
            key = f"base_model.model.blocks.{i}.{name}"
            wide = 1 if i == bad_layer and name == "ffn.0" else 0
            tensors[f"{key}.lora_A.weight"] = torch.randn(2, in_f + wide, generator=g)
            tensors[f"{key}.lora_B.weight"] = torch.randn(out_f, 2, generator=g)
    folder = tmp_path / ("bad" if bad_layer is not None else "adapter")
    folder.mkdir()
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    targets_re = r"blocks\.\d+\.(self_attn\.q|ffn\.0)"  # PEFT's regex form: checked on every rank
    (folder / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 4, "target_modules": targets_re}))
    return folder


def test_lora_merges_into_the_slice_only(tmp_path: Path) -> None:
    save_file(_whole(), str(tmp_path / "base.safetensors"))
    adapter = load_lora(_adapter(tmp_path))
    whole, _ = load_dit(tmp_path / "base.safetensors", CFG, lora=adapter)
    merged = 0
    for part in PARTS:
        piece, report = load_dit(tmp_path / "base.safetensors", CFG, lora=adapter, part=part)
        _equal(piece, take_slice(whole, part))
        layers = 2 * len(part.layers)
        assert f"into {layers} layers" in str(report.lora)
        merged += layers
    assert merged == len(adapter.layers) == 2 * CFG.num_layers
    bad = load_lora(_adapter(tmp_path, bad_layer=5))
    for part in PARTS:  # a layer the slice does not hold is checked all the same: every rank refuses alike
        with pytest.raises(CheckpointError, match=r"blocks\.5\.ffn\.0: adapter"):
            load_dit(tmp_path / "base.safetensors", CFG, lora=bad, part=part)


def test_slice_of_a_14b_builds_on_meta_only_its_share() -> None:
    """The loader's first step for a rank of a 4-rank 14B ring: the slice on the meta device, ~1/4 of it."""
    cfg = get_config("wan2.1-14b")
    part: ModelSlice = cfg.ring_slices([10] * 4)[1]
    with torch.device("meta"):
        model = CausalWanDiT(cfg, seed=None, part=part)
    assert sum(p.numel() for p in model.parameters()) == cfg.parameter_count(part)
    assert cfg.parameter_count(part) < 0.28 * cfg.parameter_count()
