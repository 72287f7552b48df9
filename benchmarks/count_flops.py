"""Count the work the simulator's catalog prices: the FLOPs and memory traffic of one block through the
Wan2.1 VAE decoder and the TAEHV tiny decoder, and the FLOPs of one DiT forward, at 480x832.

Run: ``.venv/bin/python benchmarks/count_flops.py [--json]`` (the VAE count needs ``diffusers``:
``pip install 'cascade-sched[vae]'``; nothing is downloaded, no GPU is needed: the models are built on
PyTorch's ``meta`` device, so no memory is allocated and no arithmetic is done).

- *Wan VAE*: diffusers' ``AutoencoderKLWan`` with its default (Wan2.1) configuration, decoding one
  block of 3 latent frames (60x104) in streaming mode, as ``models.decode.WanVAEDecoder`` does: FLOPs
  from ``torch.utils.flop_counter.FlopCounterMode``; bytes = every aten op's inputs plus outputs in
  bf16 (views excluded), i.e. the traffic of an unfused eager run.
- *TAEHV*: the decoder of madebyollin/taehv for Wan 2.1 latents (``taew2_1``: 16 latent channels,
  stages of 256/128/64/64 channels, three MemBlocks per stage, x2 spatial upsampling per stage, x2
  temporal upsampling in the last two), counted from that layer list (3x3 convolutions, 1x1 TGrow
  projections); bytes = each layer's input and output activations in bf16.
- *DiT*: ``models.dit.CausalWanDiT.forward_tick`` of one task with 1 and 7 visible blocks (the small
  preset, on the CPU), against the simulator's linear and attention formulas
  (:class:`simulator.cost.RooflineCost`), which give the Wan2.1 figures (~16 TFLOP for 1.3B with one
  visible block, ~40 / ~239 TFLOP for 1.3B / 14B with seven).

The numbers printed are the ones ``simulator/catalog.py`` uses; ``tests/simulator/test_sim_catalog.py``
recounts them when diffusers is installed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VIEWS = {"aten.view", "aten._unsafe_view", "aten.t", "aten.detach", "aten.slice", "aten.select", "aten.expand",
         "aten.permute", "aten.unsqueeze", "aten.squeeze", "aten.as_strided", "aten.alias", "aten.split",
         "aten.unbind", "aten.transpose", "aten.reshape"}


def count_wan_vae(latent_hw: tuple[int, int] = (60, 104)) -> dict[str, Any]:
    """FLOPs and bytes of the first and of a later block through the streaming Wan VAE decoder."""
    import torch
    from diffusers import AutoencoderKLWan
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten
    from torch.utils.flop_counter import FlopCounterMode

    class Traffic(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.bytes = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            if str(func.overloadpacket) not in VIEWS:
                for t in tree_flatten((args, kwargs))[0] + tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor):
                        self.bytes += t.numel() * t.element_size()
            return out

    with torch.device("meta"):
        vae = AutoencoderKLWan().to(torch.bfloat16)
    params = sum(p.numel() for n, p in vae.named_parameters() if not n.startswith("encoder"))
    z = torch.empty(1, vae.config.z_dim, 3, *latent_hw, device="meta", dtype=torch.bfloat16)
    out = {"decoder_params": params}
    with torch.no_grad():
        vae.clear_cache()
        for label, first in (("first_block", True), ("later_block", False)):
            flops, traffic = FlopCounterMode(display=False), Traffic()
            with flops, traffic:
                x = vae.post_quant_conv(z)
                for i in range(x.shape[2]):
                    vae._conv_idx = [0]
                    kwargs = {"first_chunk": True} if first and i == 0 else {}
                    vae.decoder(x[:, :, i:i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, **kwargs)
            out[label] = {"flops": flops.get_total_flops(), "bytes": traffic.bytes,
                          "frames": 9 if first else 12}
    return out


def count_taehv(latent_hw: tuple[int, int] = (60, 104), latent_channels: int = 16) -> dict[str, Any]:
    """FLOPs (2 per multiply-add) and activation bytes of one latent frame through TAEHV's decoder."""
    n_f = (256, 128, 64, 64)
    h, w = latent_hw
    frames = 1  # frames in flight at the current stage (temporal upsampling doubles them)
    flops = 0.0
    nbytes = 0.0
    params = 0

    def conv(c_in: int, c_out: int, k: int = 3) -> None:
        nonlocal flops, nbytes, params
        px = h * w * frames
        flops += 2.0 * px * c_in * c_out * k * k
        nbytes += 2.0 * px * (c_in + c_out)  # bf16 input and output
        params += c_in * c_out * k * k

    def elementwise(c: int, passes: float) -> None:
        nonlocal nbytes
        nbytes += 2.0 * h * w * frames * c * passes

    conv(latent_channels, n_f[0])
    elementwise(n_f[0], 2)  # clamp, relu
    time_up = (False, True, True)
    for stage in range(3):
        c = n_f[stage]
        for _ in range(3):  # MemBlock: cat(x, past) -> conv -> relu -> conv -> relu -> conv, + skip, relu
            elementwise(2 * c, 2)
            conv(2 * c, c)
            elementwise(c, 2)
            conv(c, c)
            elementwise(c, 2)
            conv(c, c)
            elementwise(c, 4)
        elementwise(c, 1)
        h, w = 2 * h, 2 * w  # nn.Upsample(x2)
        elementwise(c, 1)
        stride = 2 if time_up[stage] else 1
        conv(c, c * stride, k=1)  # TGrow
        frames *= stride
        conv(c, n_f[stage + 1])
    elementwise(n_f[3], 2)
    conv(n_f[3], 3)
    return {"flops_per_latent_frame": flops, "bytes_per_latent_frame": nbytes, "video_frames": frames,
            "params": params}


def count_dit(model: str = "small") -> dict[str, Any]:
    """FLOPs of one forward of one task with 1 and 7 visible blocks, counted on ``models.dit.CausalWanDiT``
    (real tensors on the CPU: the meta device lacks some of its ops) against the simulator's formula
    (:class:`simulator.cost.RooflineCost`). The formula is geometry-generic, so the small preset checks
    it; the Wan2.1 figures follow from it."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from models.config import get_config
    from models.dit import CausalWanDiT, TaskInput
    from simulator.catalog import get_gpu, get_model
    from simulator.cost import RooflineCost

    cfg = get_config(model)
    net = CausalWanDiT(cfg, seed=0)
    net.register_prompt(0, torch.randn(cfg.text_len, cfg.text_dim))
    net.prompt_kv(0)  # the prompt's cross-attention K/V: computed once per prompt, not per forward
    kv_shape = (cfg.tokens_per_block, cfg.num_heads, cfg.head_dim)
    kv = torch.randn(kv_shape)
    cost = RooflineCost(get_model(model), get_gpu("h100-sxm"))
    q = cfg.tokens_per_block
    out = {}
    for visible in (1, 7):
        task = TaskInput(ref=(visible - 1, 0), latent=torch.randn(cfg.latent_shape()), timestep=900.0,
                         frame_offset=3 * (visible - 1), prompt=0, reads=tuple((j, 4) for j in range(visible - 1)))
        counter = FlopCounterMode(display=False)
        # the math backend spells attention as matmuls, which the counter sees (the fused CPU kernel it does not)
        with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            net.forward_tick([task], lambda ref, layer, kv=kv: (kv, kv))
        out[f"visible_{visible}"] = {"counted": counter.get_total_flops(), "formula": cost.flops(q, (q * visible,))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the counts as JSON")
    ap.add_argument("--skip-vae", action="store_true", help="skip the Wan VAE count (needs diffusers)")
    args = ap.parse_args()
    counts: dict[str, Any] = {"taehv": count_taehv(), "dit": count_dit()}
    if not args.skip_vae:
        counts["wan_vae"] = count_wan_vae()
    if args.json:
        print(json.dumps(counts, indent=1))
        return
    t = counts["taehv"]
    print(f"TAEHV: {t['flops_per_latent_frame'] / 1e12:.3f} TFLOP and {t['bytes_per_latent_frame'] / 1e9:.2f} GB per "
          f"latent frame ({t['video_frames']} video frames), {t['params'] / 1e6:.1f} M conv parameters")
    for k, v in counts["dit"].items():
        print(f"DiT (small preset), {k.replace('_', ' ')} block(s): counted {v['counted'] / 1e9:.3f} GFLOP, "
              f"formula {v['formula'] / 1e9:.3f} GFLOP")
    if "wan_vae" in counts:
        vae = counts["wan_vae"]
        for label in ("first_block", "later_block"):
            c = vae[label]
            print(f"Wan VAE {label.replace('_', ' ')} ({c['frames']} frames): {c['flops'] / 1e12:.2f} TFLOP, "
                  f"{c['bytes'] / 1e9:.1f} GB")
        print(f"Wan VAE decoder parameters: {vae['decoder_params'] / 1e6:.1f} M")


if __name__ == "__main__":
    main()
