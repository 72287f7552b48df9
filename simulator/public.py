"""The public measurements the simulator is built from and checked against, each with its source.

Every figure is a :class:`Figure`: an id, what was measured, the value, and where it was published
(docs/references.md lists the same sources). Two kinds of use:

- a few figures leave something unknown that no datasheet gives, and the simulator *fits* it to them
  (``FITTED``: the per-forward overhead of the reference implementation to the paper's two sequential
  baselines; the Wan VAE's convolution efficiency to the one direct VAE timing);
- every other figure it can reproduce is a *held-out check* (:mod:`simulator.reproduce` predicts each and
  writes the table of docs/validation.md). A fitted figure reproduced by its own fit is not evidence, and
  the table says so.

The paper's own cascade FPS figures are deliberately absent: the simulator predicts them, it is not fitted
to them. StreamDiffusionV2's published throughput (64 points: two models, two resolutions, 1-4 GPUs, 1-4
steps) is in, held out of every fit: the simulator predicts each with its layer-ring and stage-context
schedule at that paper's settings (:mod:`simulator.reproduce`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """One public measurement: ``value`` in ``unit`` (a range as ``(low, high)``), with its source."""

    id: str
    what: str
    value: float | tuple[float, float]
    unit: str
    source: str

    @property
    def mid(self) -> float:
        """The value, or the middle of its range."""
        return (self.value[0] + self.value[1]) / 2 if isinstance(self.value, tuple) else self.value


PAPER = "Block Cascading paper (arXiv 2511.20426)"
FLASHDREAMS = "NVIDIA/flashdreams docs/benchmarks/benchmark_results.json (self_forcing_block6)"
FIGURES: tuple[Figure, ...] = (
    Figure("paper-1.3b-seq", "Wan2.1 1.3B sequential FPS on one H100 (FlashAttention 3; denoise steps + cache "
           "pass per block; window 21 frames)", 16.0, "FPS", PAPER),
    Figure("paper-14b-seq", "Wan2.1 14B sequential FPS on one H100 (FlashAttention 3, same setting)", 4.5, "FPS",
           PAPER),
    Figure("fa3-2k", "FlashAttention-3 forward, head dim 128, bf16, H100 SXM, sequence 2k", 625.0, "TFLOP/s",
           "FlashAttention-3 paper (arXiv 2407.08608), forward speed figure, head dim 128, non-causal"),
    Figure("fa3-16k", "FlashAttention-3 forward, head dim 128, bf16, H100 SXM, sequence 16k", 648.0, "TFLOP/s",
           "FlashAttention-3 paper (arXiv 2407.08608), forward speed figure, head dim 128, non-causal"),
    Figure("gemm-h100", "bf16 8192^3 matmul on an H100 SXM", 798.0, "TFLOP/s", "measured on an H100 SXM "
           "(torch.matmul, bf16)"),
    Figure("longlive-block-1", "Wan2.1 1.3B (LongLive) per block, 4 denoise steps + cache pass, FlashAttention 2, "
           "one H100, 1 block of context", 595.09, "ms", "NVlabs/LongLive issue 26 (a user's profile)"),
    Figure("longlive-block-2", "the same, 2 blocks of context", 603.22, "ms", "NVlabs/LongLive issue 26"),
    Figure("longlive-block-3", "the same, 3 blocks of context", 684.24, "ms", "NVlabs/LongLive issue 26"),
    Figure("longlive-block-4", "the same, 4 blocks of context", 760.64, "ms", "NVlabs/LongLive issue 26"),
    Figure("longlive-block-5", "the same, 5 blocks of context", 766.99, "ms", "NVlabs/LongLive issue 26"),
    Figure("longlive-diffusion-share", "share of that run's time spent in diffusion (the rest: decoding the whole "
           "clip and everything else)", 53.82, "%", "NVlabs/LongLive issue 26"),
    Figure("longlive-fps", "LongLive 1.3B FPS on one H100 (short window)", 20.7, "FPS",
           "LongLive paper (NVlabs/LongLive README)"),
    Figure("self-forcing-e2e", "Self-Forcing 1.3B end to end on one H100, 81 frames (text encoding, 21 latent "
           "frames = 7 blocks, VAE decode)", 6.2, "s", "JaydenLyh/Reward-Forcing issue 13"),
    Figure("self-forcing-fps", "Self-Forcing 1.3B throughput on one H100", 17.0, "FPS",
           "Self-Forcing paper (arXiv 2506.08009)"),
    Figure("flashdreams-official-h100", "Self-Forcing 1.3B, its official code (DiT torch.compile'd, cuDNN "
           "attention, TAEHV decode), 6th autoregressive block, one H100: the whole block", 570.0, "ms", FLASHDREAMS),
    Figure("flashdreams-official-dit-h100", "of which the DiT's 4 denoising steps", 432.0, "ms", FLASHDREAMS),
    Figure("flashdreams-official-kv-h100", "of which the K/V update (the cache pass at t = 0)", 109.0, "ms", FLASHDREAMS),
    Figure("flashdreams-official-decode-h100", "of which the decode: TAEHV (taew2_1, fp16) re-decoding the last 6 "
           "latent frames", 30.0, "ms", FLASHDREAMS + " and its parity harness (--use_taehv)"),
    Figure("flashdreams-official-gb200", "the official code's whole block on a GB200", 476.0, "ms", FLASHDREAMS),
    Figure("flashdreams-stack-h100", "FlashDreams' own stack, the same block on an H100 (DiT 344, K/V 74, TAEHV 7)",
           425.0, "ms", FLASHDREAMS),
    Figure("flashdreams-stack-gb200", "FlashDreams' own stack on a GB200 (DiT 203, K/V 38, TAEHV 4)", 244.0, "ms",
           FLASHDREAMS),
    Figure("krea-14b-h100", "Krea Realtime 14B, 4 steps, 480x832, one H100", (3.6, 4.3), "FPS",
           "daydreamlive/scope PR 55"),
    Figure("krea-14b-b200", "Krea Realtime 14B on one B200", 11.0, "FPS", "Krea's Realtime 14B announcement"),
    Figure("sdv2-vae-5090", "StreamDiffusionV2 1.3B, Wan VAE decode of one 4-frame chunk at 480x832, RTX 5090",
           168.0, "ms", "daydreamlive/scope sdv2-benchmark-results.md"),
    Figure("sdv2-dit-5090", "StreamDiffusionV2 1.3B, DiT of one 4-frame chunk, RTX 5090", 168.0, "ms",
           "daydreamlive/scope sdv2-benchmark-results.md"),
    Figure("sdv2-vae-encode-5090", "StreamDiffusionV2 1.3B, Wan VAE encode of one 4-frame chunk at 480x832, "
           "RTX 5090", 100.0, "ms", "daydreamlive/scope sdv2-benchmark-results.md"),
    Figure("vae-conv-share-h200", "share of Wan-family VAE decode GPU time in convolutions, H200", 49.0, "%",
           "sgl-project/sglang issue 34125"),
    Figure("nccl-p2p-32mib", "NCCL sendrecv between two H100s over NVLink, default settings (32 MiB messages)",
           80.0, "GB/s", "NVIDIA/nccl-tests issue 268"),
    Figure("nccl-p2p-plateau", "the same at large messages (plateau)", 180.0, "GB/s", "NVIDIA/nccl-tests issue 268"),
    Figure("nvlink-copy", "raw GPU-to-GPU copy over NVLink 4, one way", 380.0, "GB/s", "NVIDIA/nccl issue 1264"),
    Figure("cuda-context", "CUDA context per GPU", (0.5, 1.0), "GB", "PyTorch / CUDA documentation"),
)

# StreamDiffusionV2 (arXiv 2511.07399, Figs. 9 and 11): end-to-end FPS on H100s (bf16, NVLink), 1-frame chunks,
# for 1, 2, 3, 4 denoising steps, per model, resolution and GPU count. The paper's plot legends do not survive
# its text extraction: the 1-GPU rows of 1.3B are confirmed by its Fig. 15 and every 4-GPU row by its abstract
# and text; the other rows are assigned to GPU counts by monotonicity (more GPUs, more FPS), an inference.
SDV2_PAPER = "StreamDiffusionV2 paper (arXiv 2511.07399), Figs. 9 and 11"
SDV2_THROUGHPUT: dict[tuple[str, str, int], tuple[tuple[float, float, float, float], bool]] = {
    ("1.3b", "512x512", 1): ((26.21, 24.02, 21.51, 19.43), True),
    ("1.3b", "512x512", 2): ((51.76, 46.92, 41.09, 37.49), False),
    ("1.3b", "512x512", 3): ((63.45, 62.76, 56.75, 54.09), False),
    ("1.3b", "512x512", 4): ((64.52, 63.99, 62.43, 61.57), True),
    ("1.3b", "480x832", 1): ((20.47, 17.97, 15.68, 13.95), True),
    ("1.3b", "480x832", 2): ((39.77, 34.67, 30.69, 27.06), False),
    ("1.3b", "480x832", 3): ((43.88, 43.79, 41.13, 38.09), False),
    ("1.3b", "480x832", 4): ((44.38, 43.41, 43.08, 42.26), True),
    ("14b", "512x512", 1): ((18.71, 13.01, 10.09, 8.26), False),
    ("14b", "512x512", 2): ((37.12, 25.72, 20.11, 16.65), False),
    ("14b", "512x512", 3): ((53.84, 37.47, 29.34, 24.35), False),
    ("14b", "512x512", 4): ((58.28, 51.09, 38.41, 31.62), True),
    ("14b", "480x832", 1): ((12.68, 8.64, 6.49, 5.28), False),
    ("14b", "480x832", 2): ((25.39, 17.31, 13.23, 10.69), False),
    ("14b", "480x832", 3): ((37.55, 25.02, 19.12, 15.42), False),
    ("14b", "480x832", 4): ((39.24, 33.36, 25.02, 20.05), True),
}
"""(model, video HxW, H100s) -> (FPS at 1, 2, 3, 4 steps, whether the paper's text confirms which GPU count it is)."""


def sdv2_id(model: str, resolution: str, gpus: int, steps: int) -> str:
    """The figure id of one StreamDiffusionV2 throughput point: ``sdv2-1.3b-512x512-4gpu-1step``."""
    return f"sdv2-{model}-{resolution}-{gpus}gpu-{steps}step"


FIGURES = FIGURES + tuple(
    Figure(sdv2_id(model, res, gpus, k + 1),
           f"StreamDiffusionV2 {model.upper()} end-to-end FPS, {res.replace('x', ' x ')}, {gpus} H100{'s' if gpus > 1 else ''}, "
           f"{k + 1} denoising step{'s' if k else ''}, 1-frame chunks"
           + ("" if sure else " (which curve is which GPU count: inferred, uncertain)"),
           fps[k], "FPS", SDV2_PAPER)
    for (model, res, gpus), (fps, sure) in SDV2_THROUGHPUT.items() for k in range(4)
)

BY_ID: dict[str, Figure] = {f.id: f for f in FIGURES}

FITTED: dict[str, str] = {
    "paper-1.3b-seq": "the reference implementation's per-forward overhead (per layer and per token), jointly "
                      "with paper-14b-seq",
    "paper-14b-seq": "the reference implementation's per-forward overhead, jointly with paper-1.3b-seq",
    "sdv2-vae-5090": "the Wan VAE's convolution efficiency (its FLOPs and bytes are counted)",
    "sdv2-vae-encode-5090": "the Wan VAE encoder's price, as this ratio to the decoder's (video-to-video runs)",
    "fa3-2k": "the FlashAttention 3 rate table (the figure's own points)",
    "fa3-16k": "the FlashAttention 3 rate table (the figure's own points)",
    "gemm-h100": "the H100's GEMM rate (taken as measured)",
    "nccl-p2p-32mib": "the nvlink4 bandwidth curve (taken as measured)",
    "nccl-p2p-plateau": "the nvlink4 bandwidth curve (taken as measured)",
    "nvlink-copy": "the nvlink4 per-GPU port rate (taken as measured)",
    "cuda-context": "the memory margin (its upper end taken)",
}
"""Figure id -> what was fitted to (or taken from) it. A row reproduced from its own figure is no check."""

NO_CHECK: dict[str, str] = {
    "krea-14b-h100": "not used in a fit, but the prediction is paper-14b-seq's fitted schedule itself: no check",
}
"""Figure id -> why its row, although held out of every fit, is no independent check either."""


def figure(fid: str) -> Figure:
    """The figure with id ``fid``."""
    return BY_ID[fid]
