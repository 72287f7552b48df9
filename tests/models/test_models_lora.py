"""LoRA merge at load, checked against PEFT itself: its saved layouts, its unmerged forward, its merge."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from cascade_sched.errors import CheckpointError
from models import CausalWanDiT, TaskInput, get_config
from models.checkpoints import load_dit
from models.lora import load_lora, merge_lora
from models.prompts import text_embedding
from tests.extras import need

peft = need("peft")

CFG = get_config("tiny")


def block_linears(model: nn.Module) -> list[str]:
    """LongLive's targets: every nn.Linear inside the attention blocks (utils/lora_utils.py)."""
    return sorted(n for n, m in model.named_modules() if n.startswith("blocks.") and isinstance(m, nn.Linear))


def peft_model(rank: int = 4, alpha: float = 8.0, **config: object) -> nn.Module:
    """A PEFT-wrapped tiny DiT with random A and B (init_lora_weights=False), as training leaves it."""
    torch.manual_seed(0)
    base = CausalWanDiT(CFG, seed=0)
    lora_config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=block_linears(base),
                                  init_lora_weights=False, **config)
    return peft.get_peft_model(base, lora_config)


def forward(model: CausalWanDiT) -> torch.Tensor:
    model.register_prompt(0, text_embedding("a fox", CFG))
    g = torch.Generator().manual_seed(1)
    task = TaskInput(ref=(0, 0), latent=torch.randn(CFG.latent_shape(), generator=g), timestep=937.5,
                     frame_offset=0, prompt=0, reads=())
    return model.forward_tick([task], kv=lambda ref, layer: None).velocity[0]


@pytest.mark.parametrize("config", [{}, {"use_rslora": True}, {"alpha_pattern": {"ffn.0": 2.0}}])
def test_merge_equals_peft_unmerged_forward_and_merge(tmp_path: Path, config: dict[str, object]) -> None:
    pm = peft_model(**config)
    pm.save_pretrained(str(tmp_path / "adapter"))  # adapter_model.safetensors + adapter_config.json
    adapter = load_lora(tmp_path / "adapter")
    ours = CausalWanDiT(CFG, seed=0)
    assert merge_lora(ours, adapter) == len(block_linears(ours)) == 20
    own = dict(ours.named_modules())
    checked = 0
    for name, module in pm.base_model.model.named_modules():
        if isinstance(module, peft.tuners.lora.Linear):  # PEFT's unmerged forward: base + B A x scale
            x = torch.randn(5, own[name].in_features, generator=torch.Generator().manual_seed(checked))
            torch.testing.assert_close(own[name](x), module(x), rtol=1e-5, atol=1e-6)
            checked += 1
    assert checked == 20
    reference = copy.deepcopy(pm).merge_and_unload()  # PEFT's own merge
    for k, v in reference.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, rtol=1e-6, atol=1e-6)
    base = CausalWanDiT(CFG, seed=0)
    assert not torch.allclose(forward(ours), forward(base), atol=1e-4)  # the adapter does something
    torch.testing.assert_close(forward(ours), forward(reference), rtol=1e-5, atol=1e-6)


def test_longlive_lora_pt_with_alpha_from_the_preset(tmp_path: Path) -> None:
    """LongLive's lora.pt: get_peft_model_state_dict output under `generator_lora`, no config beside it."""
    pm = peft_model(rank=4, alpha=8.0)
    state = peft.get_peft_model_state_dict(pm)
    assert all(k.startswith("base_model.model.blocks.") for k in state)
    torch.save({"generator_lora": state}, tmp_path / "lora.pt")
    with pytest.raises(CheckpointError, match="alpha is unknown"):
        load_lora(tmp_path / "lora.pt")
    ours = CausalWanDiT(CFG, seed=0)
    merge_lora(ours, load_lora(tmp_path / "lora.pt", alpha=8.0))
    reference = copy.deepcopy(pm).merge_and_unload()
    for k, v in reference.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, rtol=1e-6, atol=1e-6)


def test_merge_at_load_reports_it(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    pm = peft_model()
    pm.save_pretrained(str(tmp_path / "adapter"))
    base = CausalWanDiT(CFG, seed=0)
    save_file({f"model.{k}": v for k, v in base.state_dict().items()}, str(tmp_path / "base.safetensors"))
    model, report = load_dit(tmp_path / "base.safetensors", CFG, lora=load_lora(tmp_path / "adapter"))
    assert "merged into 20 layers (r 4, alpha 8, scale 2)" in report.describe()
    reference = copy.deepcopy(pm).merge_and_unload()
    torch.testing.assert_close(forward(model), forward(reference), rtol=1e-5, atol=1e-6)


def test_bad_adapters_are_one_error_and_leave_the_model_alone(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    pm = peft_model()
    pm.save_pretrained(str(tmp_path / "good"))
    state = peft.get_peft_model_state_dict(pm)
    model = CausalWanDiT(CFG, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def adapter(name: str, tensors: dict[str, torch.Tensor]) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        (folder / "adapter_config.json").write_text((tmp_path / "good" / "adapter_config.json").read_text())
        return folder

    no_b = {k: v for k, v in state.items() if not k.endswith("blocks.0.ffn.0.lora_B.weight")}
    with pytest.raises(CheckpointError, match=r"blocks\.0\.ffn\.0: lora_B is missing"):
        load_lora(adapter("no_b", no_b))
    missing = {k: v for k, v in state.items() if ".blocks.1.self_attn.q." not in k}
    with pytest.raises(CheckpointError, match=r"blocks\.1\.self_attn\.q: targeted by the config but has no"):
        merge_lora(model, load_lora(adapter("missing", missing)))
    wide = dict(state)
    key = "base_model.model.blocks.0.self_attn.q.lora_A.weight"
    wide[key] = torch.zeros(4, CFG.dim + 8)
    with pytest.raises(CheckpointError, match=r"blocks\.0\.self_attn\.q: adapter \(32 x 40\) vs layer \(32 x 32\)"):
        merge_lora(model, load_lora(adapter("wide", wide)))
    alien = {**state, "base_model.model.blocks.0.img_attn.q.lora_A.weight": torch.zeros(4, CFG.dim),
             "base_model.model.blocks.0.img_attn.q.lora_B.weight": torch.zeros(CFG.dim, 4)}
    with pytest.raises(CheckpointError, match=r"img_attn\.q: no such linear layer"):
        merge_lora(model, load_lora(adapter("alien", alien)))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed by a refused merge"
    with pytest.raises(CheckpointError, match="does not exist"):
        load_lora(tmp_path / "nope.safetensors")
