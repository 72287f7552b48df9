"""What fraction of a GPU's peaks each kind of work reaches, with the public figure behind each.

- *GEMMs*: the GPU's achieved dense bf16 matmul rate (``GPU.gemm_rate``: measured on an H100 SXM, the same
  fraction of peak elsewhere, est).
- *Attention*: a FlashAttention-class kernel's forward rate as a function of the key length, read from the
  FlashAttention-3 paper's H100 SXM figure (head dim 128, bf16, non-causal), interpolated in log length
  and flat outside the measured 512-16k; the same figure gives FlashAttention 2. Other GPUs scale the
  H100 rate by their dense peak (est).
- *Memory-bound work*: 90% of HBM bandwidth (the measured device-to-device copy, 3.0 of 3.35 TB/s).
- *Convolutions* (the VAE decoder): a fraction of the dense bf16 peak, fitted (:func:`conv_efficiency`) to
  the one direct Wan VAE timing in the public record, with the decoder's FLOPs and bytes counted.

>>> from simulator.catalog import get_gpu
>>> round(attention_rate("fa3", 4680, get_gpu("h100-sxm")) / 1e12)
640
"""

from __future__ import annotations

import bisect
import functools
import math

from cascade_sched.errors import ConfigError
from simulator.catalog import GPU, WAN_VAE, get_gpu
from simulator.public import figure

H100_PEAK = 989e12
MEMORY_EFFICIENCY = 3.0 / 3.35  # device-to-device copy measured on an H100 SXM

# FlashAttention-3 paper (arXiv 2407.08608), "Attention forward speed, head dim 128 (H100 80GB SXM5)",
# non-causal: TFLOP/s at sequence lengths 512 .. 16k, for FlashAttention 3 and FlashAttention 2.
FA_TABLES: dict[str, tuple[tuple[int, float], ...]] = {
    "fa3": ((512, 467e12), (1024, 565e12), (2048, 625e12), (4096, 638e12), (8192, 646e12), (16384, 648e12)),
    "fa2": ((512, 309e12), (1024, 350e12), (2048, 362e12), (4096, 368e12), (8192, 370e12), (16384, 370e12)),
}
FA_SOURCE = ("FlashAttention-3 paper (arXiv 2407.08608), forward, head dim 128, bf16, non-causal, H100 SXM: "
             "FA3 467-648 TFLOP/s, FA2 309-370 TFLOP/s at 512-16k tokens; other GPUs scaled by dense peak (est)")


def attention_rate(kernel: str, kv_tokens: float, gpu: GPU) -> float:
    """FLOP/s of attention over ``kv_tokens`` keys with ``kernel`` (``fa3`` or ``fa2``) on ``gpu``."""
    try:
        table = FA_TABLES[kernel]
    except KeyError:
        raise ConfigError("attention_kernel", f"unknown attention kernel {kernel!r}; known: "
                                              f"{', '.join(sorted(FA_TABLES))}") from None
    xs = [x for x, _ in table]
    if kv_tokens <= xs[0]:
        rate = table[0][1]
    elif kv_tokens >= xs[-1]:
        rate = table[-1][1]
    else:
        i = bisect.bisect_left(xs, kv_tokens)
        (x0, y0), (x1, y1) = table[i - 1], table[i]
        rate = y0 + (y1 - y0) * (math.log(kv_tokens) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return rate * gpu.bf16_flops / H100_PEAK


def memory_rate(gpu: GPU) -> float:
    """Bytes/s memory-bound work reaches on ``gpu``."""
    return gpu.mem_bw_Bps * MEMORY_EFFICIENCY


def decode_seconds(flops: float, nbytes: float, gpu: GPU, conv: float) -> float:
    """A decoder's time: its FLOPs at ``conv`` of the dense peak plus its memory traffic at
    :func:`memory_rate` (convolutions and the elementwise work between them do not overlap)."""
    return flops / (gpu.bf16_flops * conv) + nbytes / memory_rate(gpu)


@functools.cache
def conv_efficiency() -> float:
    """The Wan VAE's convolution efficiency, fitted to StreamDiffusionV2's measured decode of one 4-frame
    chunk (one latent frame) at 480x832 on an RTX 5090 (168 ms), with the decoder's FLOPs and bytes counted.

    >>> round(conv_efficiency(), 3)
    0.695
    """
    gpu = get_gpu("rtx5090")
    target = figure("sdv2-vae-5090").mid / 1e3
    flops, nbytes = WAN_VAE.flops(12) / 3, WAN_VAE.bytes(12) / 3  # one latent frame of a later block
    left = target - nbytes / memory_rate(gpu)
    if left <= 0:
        raise ConfigError("cost", "the VAE's memory traffic alone exceeds the measured decode time")
    return flops / (gpu.bf16_flops * left)


CONV_SOURCE = ("convolution efficiency fitted to StreamDiffusionV2's Wan VAE decode of one 4-frame chunk in 168 ms "
               "on an RTX 5090 (daydreamlive/scope), FLOPs and bytes counted; memory at 90% of HBM bandwidth")
