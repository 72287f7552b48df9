"""The forms of one layer's math: real against complex RoPE, batched against grouped cross-attention, and
the tick's pieces swapped as one (the compiled executor runs the model's own `forward_tick` this way)."""

from __future__ import annotations

import platform

import pytest
import torch
from torch import Tensor

from models import CausalWanDiT, TaskInput, get_config, text_embedding
from models.attention import apply_rope, attend, cross_attend
from models.config import PRESETS
from models.dit import EagerKernels, KVPair, KVRef

CFG = get_config("tiny")
X86 = platform.machine().lower() in ("x86_64", "amd64")


def _complex_rope(x: Tensor, freqs: Tensor) -> Tensor:
    """Wan's own RoPE: the pairs of x as complex numbers times the unit complex table."""
    xc = torch.view_as_complex(x.to(freqs.real.dtype).unflatten(-1, (-1, 2)).contiguous())
    return torch.view_as_real(xc * freqs).flatten(-2)


def _table(n: int, half: int, dtype: torch.dtype, g: torch.Generator) -> Tensor:
    angles = torch.rand(n, 1, half, dtype=torch.float64, generator=g) * 100
    return torch.polar(torch.ones_like(angles, dtype=dtype), angles.to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_real_rope_is_the_complex_rotation(dtype: torch.dtype) -> None:
    """Both forms round each product and each sum once; where torch's complex multiply runs its scalar
    loop (which may fuse into FMA), they can differ, by at most 2 ulp of the pair's magnitude."""
    g = torch.Generator().manual_seed(0)
    eps = torch.finfo(dtype).eps
    for half in range(1, 70):
        x = torch.randn(40, 3, 2 * half, dtype=dtype, generator=g)
        freqs = _table(40, half, dtype, g)
        cplx, real = _complex_rope(x, freqs), apply_rope(x, (freqs.real.contiguous(), freqs.imag.contiguous()))
        assert torch.equal(apply_rope(x, freqs), cplx)  # the complex form is Wan's, unchanged
        pair = x.unflatten(-1, (-1, 2)).abs().sum(-1, keepdim=True).expand(-1, -1, -1, 2).flatten(-2)
        assert ((real - cplx).abs() <= 2 * eps * pair).all(), half


@pytest.mark.skipif(not X86, reason="bit equality is measured for x86's vectorised complex multiply")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_real_rope_is_bit_equal_at_every_preset_head_dim(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    for name, cfg in PRESETS.items():
        half = cfg.head_dim // 2
        x = torch.randn(64, 2, cfg.head_dim, dtype=dtype, generator=g)
        freqs = _table(64, half, dtype, g)
        assert torch.equal(apply_rope(x, (freqs.real.contiguous(), freqs.imag.contiguous())),
                           _complex_rope(x, freqs)), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_cross_attention_is_the_grouped_one(dtype: torch.dtype) -> None:
    """Three inputs of T tokens, prompts (a, b, b): one batched SDPA over inputs with each input's own
    prompt equals one SDPA per prompt over the rows that use it (measured bit-equal on CPU)."""
    g = torch.Generator().manual_seed(2)
    t, n_text, h, d = 12, 8, 2, 16
    q = torch.randn(3 * t, h, d, dtype=dtype, generator=g)
    kv_a, kv_b = ((torch.randn(n_text, h, d, dtype=dtype, generator=g),
                   torch.randn(n_text, h, d, dtype=dtype, generator=g)) for _ in range(2))
    grouped = cross_attend(q, [([(0, t)], kv_a), ([(t, 2 * t), (2 * t, 3 * t)], kv_b)])
    per_input = [kv_a, kv_b, kv_b]
    batched = cross_attend(q, (torch.stack([k for k, _ in per_input]), torch.stack([v for _, v in per_input])))
    tol = {torch.float32: 1e-6, torch.float64: 1e-14}[dtype]
    assert (grouped - batched).abs().max() <= tol * grouped.abs().max()
    assert torch.equal(grouped[:t], attend(q[:t], *kv_a))  # a group of one is its own SDPA


def _model(dtype: torch.dtype) -> CausalWanDiT:
    model = CausalWanDiT(CFG, seed=4).to(dtype)
    model.register_prompt("cat", text_embedding("a cat", CFG))
    model.register_prompt("dog", text_embedding("a dog", CFG))
    return model


def _tick(dtype: torch.dtype) -> tuple[list[TaskInput], dict[KVRef, list[KVPair]]]:
    """A gang of three in flight (two of them reading each other) over two committed blocks, two prompts:
    two attention groups and two prompt groups in one tick."""
    g = torch.Generator().manual_seed(3)
    shape = (CFG.tokens_per_block, CFG.num_heads, CFG.head_dim)
    store = {(b, 4): [(torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype))
                      for _ in range(CFG.num_layers)] for b in (0, 1)}

    def task(block: int, stage: int, reads: list[KVRef], prompt: str) -> TaskInput:
        return TaskInput(ref=(block, stage), latent=torch.randn(CFG.latent_shape(), generator=g).to(dtype),
                         timestep=900.0 - 300 * stage, frame_offset=block * CFG.frames_per_block,
                         prompt=prompt, reads=reads)

    tasks = [task(2, 2, [(0, 4), (1, 4), (3, 1)], "cat"), task(3, 1, [(0, 4), (1, 4), (2, 2)], "dog"),
             task(4, 0, [(1, 4)], "dog")]
    return tasks, store


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_graph_forms_give_the_default_tick(dtype: torch.dtype) -> None:
    """The compiled executor's forms (real RoPE, batched cross-attention) run eagerly through the model's
    own tick equal the default forms to rounding (measured bit-equal on x86 for every preset)."""
    model = _model(dtype)
    tasks, store = _tick(dtype)
    kv = lambda r, ly: store[r][ly]  # noqa: E731
    default = model.forward_tick(tasks, kv)
    graph = model.forward_tick(tasks, kv, kernels=EagerKernels(model, graph_forms=True))
    rel = {torch.float32: 1e-6, torch.float64: 1e-13}[dtype]
    for a, b in zip(default.velocity, graph.velocity, strict=True):
        assert (a - b).abs().max() <= rel * a.abs().max()
    for layers_a, layers_b in zip(default.kv, graph.kv, strict=True):
        for (ka, va), (kb, vb) in zip(layers_a, layers_b, strict=True):
            assert (ka - kb).abs().max() <= rel * ka.abs().max() and (va - vb).abs().max() <= rel * va.abs().max()


class _Recording(EagerKernels):
    """The eager pieces with a hand-written attention kernel (softmax(q k^T / sqrt(d)) v) that records shapes."""

    def __init__(self, model: CausalWanDiT) -> None:
        super().__init__(model)
        self.calls: list[tuple[int, int]] = []

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        self.calls.append((q.shape[0], k.shape[0]))
        w = torch.softmax(torch.einsum("thd,lhd->htl", q, k) / q.shape[-1] ** 0.5, dim=-1)
        return torch.einsum("htl,lhd->thd", w, v).flatten(1)


def test_forward_tick_takes_its_attention_kernel() -> None:
    """The attention kernel is a parameter of the tick: swapping it changes nothing but rounding, and it
    is called once per attention group (identical key sets) and layer, on exactly that group's keys."""
    model = _model(torch.float64)
    tasks, store = _tick(torch.float64)
    kernels = _Recording(model)
    got = model.forward_tick(tasks, lambda r, ly: store[r][ly], kernels=kernels)
    want = model.forward_tick(tasks, lambda r, ly: store[r][ly])
    tpb = CFG.tokens_per_block
    # tasks 0 and 1 see {0, 1, 2, 3}: one group of 2 x 12 queries on 48 keys; task 2 sees {1, 4}.
    assert kernels.calls == [(2 * tpb, 4 * tpb), (tpb, 2 * tpb)] * CFG.num_layers
    for a, b in zip(got.velocity, want.velocity, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)


def test_rope_tables_of_a_model_built_on_meta() -> None:
    """Loaders build the model under `torch.device("meta")` and then allocate it: its RoPE tables are real."""
    with torch.device("meta"):
        model = CausalWanDiT(CFG, seed=None)
    model = model.to_empty(device="cpu")
    cos, sin = model.rope(torch.arange(3, dtype=torch.float64), real=True)
    assert cos.device.type == "cpu" and torch.allclose(cos**2 + sin**2, torch.ones_like(cos))
