"""The published pipelines as presets: sampler, block size, window and sink, weights entry and LoRA.

Every value is read from a public config or inference script; ``sources`` names the file and field, and
docs/models.md tabulates them. What a pipeline does that the schedule cannot state is in ``unstated``.

>>> p = get_preset("causvid")
>>> p.sampler().effective_timesteps(), p.weights_entry
([1000.0, 757.0, 522.0], 'generator')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cascade_sched.errors import ConfigError

from .sampler import FlowMatchSampler

__all__ = ["PRESETS", "LoRASettings", "PipelinePreset", "get_preset"]


@dataclass(frozen=True)
class LoRASettings:
    """The adapter a pipeline merges into its base weights (PEFT ``LoraConfig`` ``r`` and ``lora_alpha``)."""

    rank: int
    alpha: float


@dataclass(frozen=True)
class PipelinePreset:
    """How one published pipeline runs its checkpoint; ``window``/``sink`` in blocks (CascadeSpec's units)."""

    name: str
    title: str
    model: str  # ModelConfig preset of the DiT geometry
    shift: float
    steps: tuple[float, ...]  # nominal denoise steps
    warp: bool  # warp_denoising_step
    frames_per_block: int
    window: int | None  # blocks, the block itself included; None = unbounded
    sink: int  # blocks always visible
    weights_entry: str | None  # checkpoint entry: generator / generator_ema; None = a flat state dict
    lora: LoRASettings | None = None
    switch_policy: str = "none"  # what the pipeline does at a prompt switch
    sources: dict[str, str] = field(default_factory=dict)  # field -> "repo path: key"
    unstated: tuple[str, ...] = ()  # what the pipeline does that a schedule cannot state

    def sampler(self) -> FlowMatchSampler:
        """The preset's sampler."""
        return FlowMatchSampler(shift=self.shift, steps=self.steps, warp=self.warp)

    def spec_fields(self) -> dict[str, Any]:
        """The CascadeSpec fields the preset sets (``frames_per_block`` is 3 in every published pipeline,
        the spec's default)."""
        return {"timesteps": self.steps, "window": self.window, "sink": self.sink,
                "switch_policy": self.switch_policy}


_SF = "guandeh17/Self-Forcing"
_CV = "tianweiy/CausVid"
_LL = "NVlabs/LongLive"
_KR = "krea-ai/realtime-video"
# Self-Forcing's pipeline/causal_inference.py allocates 32760 KV tokens per layer (21 latent frames at
# 1560 tokens) when local_attn_size is -1; CausVid's causal_inference.py the same.
_CACHE_21 = "pipeline/causal_inference.py: kv_cache_size = 32760 tokens = 21 latent frames = 7 blocks"


def _causvid(name: str, title: str, steps: tuple[float, ...], warp: bool, config: str) -> PipelinePreset:
    """CausVid's two released configs differ only in their steps and warp (shift 8, 3 frames per block)."""
    cfg = f"{_CV} configs/{config}"
    return PipelinePreset(
        name=name, title=f"{title}, Wan2.1-T2V-1.3B", model="wan2.1-1.3b", shift=8.0, steps=steps, warp=warp,
        frames_per_block=3, window=7, sink=0, weights_entry="generator",
        sources={
            "shift": f"{cfg}: timestep_shift",
            "steps": f"{cfg}: denoising_step_list (the trailing 0 is the cache pass)",
            "warp": f"{cfg}: warp_denoising_step" + ("" if warp else " absent (false); the wrapper's "
                                                     "_convert_flow_pred_to_x0 takes sigma of the nearest table entry"),
            "frames_per_block": f"{cfg}: num_frame_per_block",
            "window": f"{_CV} causvid/models/wan/causal_inference.py: kv cache of 32760 tokens (7 blocks)",
            "weights_entry": f"{_CV} minimal_inference/autoregressive_inference.py: torch.load(...)['generator']",
        },
    )


PRESETS: dict[str, PipelinePreset] = {
    "self-forcing": PipelinePreset(
        name="self-forcing", title="Self-Forcing (DMD), Wan2.1-T2V-1.3B", model="wan2.1-1.3b",
        shift=5.0, steps=(1000, 750, 500, 250), warp=True, frames_per_block=3, window=7, sink=0,
        weights_entry="generator_ema",
        sources={
            "shift": f"{_SF} configs/self_forcing_dmd.yaml: timestep_shift (and model_kwargs.timestep_shift)",
            "steps": f"{_SF} configs/self_forcing_dmd.yaml: denoising_step_list",
            "warp": f"{_SF} configs/self_forcing_dmd.yaml: warp_denoising_step",
            "frames_per_block": f"{_SF} configs/self_forcing_dmd.yaml: num_frame_per_block",
            "window": f"{_SF} {_CACHE_21}",
            "weights_entry": f"{_SF} README.md: the CLI inference command passes --use_ema; inference.py "
                             "loads state_dict['generator' if not args.use_ema else 'generator_ema']",
        },
        unstated=("The cache holds 21 latent frames; past 7 blocks it rolls by tokens, here by whole blocks.",),
    ),
    "causvid": _causvid("causvid", "CausVid (DMD, 3 steps)", (1000, 757, 522), False, "wan_causal_dmd.yaml"),
    "causvid-warp4": _causvid("causvid-warp4", "CausVid (DMD, 4 warped steps, cfg 2)", (1000, 750, 500, 250), True,
                              "wan_causal_dmd_warp_4step_cfg2.yaml"),
    "longlive": PipelinePreset(
        name="longlive", title="LongLive v1 (base + LoRA r256), Wan2.1-T2V-1.3B", model="wan2.1-1.3b",
        shift=5.0, steps=(1000, 750, 500, 250), warp=True, frames_per_block=3, window=3, sink=1,
        weights_entry="generator", lora=LoRASettings(rank=256, alpha=256.0), switch_policy="recache",
        sources={
            "shift": f"{_LL} configs/longlive_inference.yaml: model_kwargs.timestep_shift",
            "steps": f"{_LL} configs/longlive_inference.yaml: denoising_step_list",
            "warp": f"{_LL} configs/longlive_inference.yaml: warp_denoising_step",
            "frames_per_block": f"{_LL} configs/longlive_inference.yaml: num_frame_per_block (3 in v1)",
            "window": f"{_LL} configs/longlive_inference.yaml: model_kwargs.local_attn_size = 12 frames, of which "
                      "the sink takes 3 (wan/modules/causal_model.py: local_budget = max_attention_size - "
                      "sink_tokens): the block and 2 predecessors",
            "sink": f"{_LL} configs/longlive_inference.yaml: model_kwargs.sink_size = 3 frames = 1 block",
            "weights_entry": f"{_LL} configs/longlive_inference.yaml: use_ema false; inference.py loads "
                             "state_dict['generator_ema' if config.use_ema else 'generator']",
            "lora": f"{_LL} configs/longlive_inference.yaml: adapter.rank, adapter.alpha, lora_ckpt",
            "switch_policy": f"{_LL} pipeline/interactive_causal_inference.py: KV re-cache at each switch",
        },
        unstated=(
            "LongLive's window is 12 frames with a 3-frame sink; at 3 frames per block that is exactly "
            "sink 1 + window 3, and any other block size would not divide it.",
            "At a switch LongLive re-encodes chosen context frames in one masked pass "
            "(pipeline/interactive_causal_inference.py: _recache_after_switch); the schedule's recache task "
            "re-encodes the committed KV of the visible window's blocks.",
        ),
    ),
    "krea-14b": PipelinePreset(
        name="krea-14b", title="Krea Realtime 14B, Wan2.1-T2V-14B", model="wan2.1-14b",
        shift=5.0, steps=(1000, 750, 500, 250), warp=True, frames_per_block=3, window=2, sink=0,
        weights_entry=None,
        sources={
            "shift": f"{_KR} configs/self_forcing_server_14b.yaml: timestep_shift",
            "steps": f"{_KR} configs/self_forcing_server_14b.yaml: denoising_step_list",
            "warp": f"{_KR} configs/self_forcing_server_14b.yaml: warp_denoising_step",
            "frames_per_block": f"{_KR} configs/self_forcing_server_14b.yaml: num_frame_per_block",
            "window": f"{_KR} release_server.py: GenerateParams.kv_cache_num_frames = 3 context frames",
            "weights_entry": f"{_KR} release_server.py: load_transformer reads a flat safetensors "
                             "(model.blocks.* keys) from checkpoint_path",
        },
        unstated=(
            "Krea recomputes the context KV every block (configs/self_forcing_server_14b.yaml: do_kv_recomp) "
            "from clean latents under the current prompt, instead of keeping each block's cache pass.",
            "Its context is counted in latent frames, not blocks: the first frame plus the last 2 "
            "(release_server.py: get_clean_context_frames); once the first frame would leave, it is "
            "re-encoded from decoded pixels. The preset's window 2 is the nearest block-level statement.",
            "release_server.py derives its steps from GenerateParams.num_denoising_steps (default 6, "
            "'use 4 for performance') through v2v.get_denoising_schedule: linspace(1000, 0, n) warped, "
            "so its last step runs at t = 0; a schedule's denoise steps lie in (0, 1000].",
        ),
    ),
}


def get_preset(name: str) -> PipelinePreset:
    """The preset called `name`; ConfigError (param ``preset``) listing the valid names otherwise."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ConfigError("preset", f"unknown `--preset` {name!r}; valid: {', '.join(PRESETS)}") from None
