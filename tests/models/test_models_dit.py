"""The tick forward: masking, RoPE at absolute offsets, exchange, batching, prompts, dtypes, validation."""

from __future__ import annotations

import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from cascade_sched.errors import ConfigError, ExecutorError
from models import CausalWanDiT, TaskInput, get_config, text_embedding
from models.dit import KVPair, KVRef, sinusoidal_embedding

CFG = get_config("tiny")


def _model(dtype: torch.dtype = torch.float64, seed: int = 0) -> CausalWanDiT:
    model = CausalWanDiT(CFG, seed=seed).to(dtype)
    model.register_prompt("p", text_embedding("a cat", CFG))
    return model


def _latent(i: int, dtype: torch.dtype = torch.float64) -> Tensor:
    g = torch.Generator().manual_seed(1000 + i)
    return torch.randn(CFG.latent_shape(), generator=g).to(dtype)


def _task(block: int, stage: int = 0, reads: tuple[KVRef, ...] = (), t: float = 500.0,
          dtype: torch.dtype = torch.float64, prompt: str = "p") -> TaskInput:
    return TaskInput(ref=(block, stage), latent=_latent(10 * block + stage, dtype), timestep=t,
                     frame_offset=block * CFG.frames_per_block, prompt=prompt, reads=reads)


def _fake_kv(dtype: torch.dtype = torch.float64) -> dict[KVRef, list[KVPair]]:
    """Random K/V for blocks 0..3 at stages 0..4 (what a pool could hold)."""
    g = torch.Generator().manual_seed(5)
    shape = (CFG.tokens_per_block, CFG.num_heads, CFG.head_dim)
    return {(b, s): [(torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype))
                     for _ in range(CFG.num_layers)] for b in range(4) for s in range(5)}


MODEL = _model()
STORE = _fake_kv()


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    read_stages=st.lists(st.one_of(st.none(), st.integers(0, 4)), min_size=3, max_size=3),
    perturb=st.tuples(st.integers(0, 3), st.integers(0, 4), st.integers(0, CFG.num_layers - 1), st.booleans()),
)
def test_masking_property(read_stages: list[int | None], perturb: tuple[int, int, int, bool]) -> None:
    """A task's output depends on exactly the K/V versions it reads."""
    reads = tuple((b, s) for b, s in enumerate(read_stages) if s is not None)
    task = _task(3, 1, reads)
    base = MODEL.forward_tick([task], kv=lambda r, ly: STORE[r][ly]).velocity[0]
    pb, ps, pl, on_v = perturb
    changed = {k: list(v) for k, v in STORE.items()}
    k, v = changed[(pb, ps)][pl]
    changed[(pb, ps)][pl] = (k, v + 1.0) if on_v else (k + 1.0, v)
    out = MODEL.forward_tick([task], kv=lambda r, ly: changed[r][ly]).velocity[0]
    if (pb, ps) in reads:
        assert not torch.allclose(out, base, rtol=0, atol=1e-9)
    else:
        assert torch.equal(out, base)


def test_reads_only_what_it_reads() -> None:
    seen: list[tuple[KVRef, int]] = []

    def kv(ref: KVRef, layer: int) -> KVPair:
        seen.append((ref, layer))
        return STORE[ref][layer]

    MODEL.forward_tick([_task(3, 0, ((2, 4), (0, 4)))], kv=kv)
    assert sorted(seen) == sorted((r, ly) for r in [(0, 4), (2, 4)] for ly in range(CFG.num_layers))


def test_rope_tables_follow_wan_split() -> None:
    # head_dim 128 splits into 22/21/21 complex pairs over (frame, height, width)
    big = get_config("wan2.1-1.3b")
    with torch.device("meta"):
        m = CausalWanDiT(big, seed=None)
    assert [f.numel() for f in m._inv_freqs] == [22, 21, 21]
    # tiny: frame angles at absolute offsets equal Wan's polar table rows
    freqs = MODEL.rope(torch.tensor([7.0]))  # one frame at absolute position 7
    d = CFG.head_dim
    n_f = d - 4 * (d // 6)
    inv = 1.0 / torch.pow(10000.0, torch.arange(0, n_f, 2, dtype=torch.float64) / n_f)
    expected = torch.polar(torch.ones(n_f // 2, dtype=torch.float64), 7.0 * inv)
    assert torch.allclose(freqs[0, 0, : n_f // 2], expected, atol=1e-15)
    # token (h=1, w=1) of the frame: height and width angles are 1 * their inverse frequencies
    _, gw = CFG.grid
    n_h = 2 * (d // 6)
    inv_h = 1.0 / torch.pow(10000.0, torch.arange(0, n_h, 2, dtype=torch.float64) / n_h)
    tok = 1 * gw + 1
    assert torch.allclose(freqs[tok, 0, n_f // 2:].angle(), torch.cat([inv_h, inv_h]), atol=1e-12)


def test_rope_at_absolute_offsets_is_relative() -> None:
    """Shifting every block by the same number of frames leaves outputs unchanged; a different gap does not."""
    def run(off0: int, off1: int) -> Tensor:
        t0 = TaskInput((0, 4), _latent(0), 0.0, off0, "p")
        kv0 = MODEL.forward_tick([t0], kv=lambda r, ly: STORE[r][ly]).kv[0]
        t1 = TaskInput((1, 0), _latent(1), 900.0, off1, "p", reads=[(0, 4)])
        return MODEL.forward_tick([t1], kv=lambda r, ly: kv0[ly]).velocity[0]

    a, b, c = run(0, 3), run(30, 33), run(0, 9)
    assert torch.allclose(a, b, rtol=0, atol=1e-10)
    assert not torch.allclose(a, c, rtol=0, atol=1e-6)


def test_joint_tick_equals_separate_tasks() -> None:
    """Batching tasks (one linear pass, mixed timesteps) only changes rounding."""
    t1 = _task(2, 1, ((0, 4), (1, 3)), t=937.5)
    t2 = _task(3, 0, ((0, 4), (1, 3)), t=1000.0)
    joint = MODEL.forward_tick([t1, t2], kv=lambda r, ly: STORE[r][ly])
    for i, t in enumerate((t1, t2)):
        alone = MODEL.forward_tick([t], kv=lambda r, ly: STORE[r][ly])
        assert torch.allclose(joint.velocity[i], alone.velocity[0], rtol=0, atol=1e-12)
        for (k, v), (ka, va) in zip(joint.kv[i], alone.kv[0], strict=True):
            assert torch.allclose(k, ka, atol=1e-12) and torch.allclose(v, va, atol=1e-12)


def test_bidirectional_gang_local_vs_exchange_threads() -> None:
    """Two tasks reading each other: one joint tick equals two 'ranks' exchanging K/V per layer."""
    t1 = _task(1, 2, ((0, 4), (2, 0)))
    t2 = _task(2, 0, ((0, 4), (1, 2)))
    kv = lambda r, ly: STORE[r][ly]  # noqa: E731
    joint = MODEL.forward_tick([t1, t2], kv=kv)

    barrier = threading.Barrier(2)
    board: dict[int, dict[KVRef, KVPair]] = {}
    calls: list[int] = []
    results: dict[int, Tensor] = {}

    def make_exchange(rank: int):  # type: ignore[no-untyped-def]
        def exchange(layer: int, local: dict[KVRef, KVPair]) -> dict[KVRef, KVPair]:
            calls.append(layer)
            board[rank] = local
            barrier.wait()
            peer = dict(board[1 - rank])
            barrier.wait()
            return peer
        return exchange

    def rank_main(rank: int, task: TaskInput) -> None:
        results[rank] = MODEL.forward_tick([task], kv=kv, exchange=make_exchange(rank)).velocity[0]

    threads = [threading.Thread(target=rank_main, args=(i, t)) for i, t in enumerate((t1, t2))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(calls) == sorted(list(range(CFG.num_layers)) * 2)
    assert torch.allclose(results[0], joint.velocity[0], rtol=0, atol=1e-12)
    assert torch.allclose(results[1], joint.velocity[1], rtol=0, atol=1e-12)


def test_exchange_called_once_per_layer_even_without_tasks() -> None:
    calls: list[int] = []
    out = MODEL.forward_tick([], kv=lambda r, ly: STORE[r][ly], exchange=lambda ly, d: calls.append(ly) or {})
    assert out.velocity == [] and calls == list(range(CFG.num_layers))


def test_per_frame_timestep_conditioning() -> None:
    e, e0 = MODEL.time_conditioning(torch.tensor([0.0, 1000.0], dtype=torch.float64), torch.tensor([3, 2]))
    assert e.shape == (5, CFG.dim) and e0.shape == (5, 6, CFG.dim)
    assert torch.equal(e[0], e[2]) and torch.equal(e[3], e[4]) and not torch.equal(e[2], e[3])
    assert sinusoidal_embedding(4, torch.tensor([0.0])).tolist() == [[1.0, 1.0, 0.0, 0.0]]


def test_output_shapes_and_kv_layout() -> None:
    out = MODEL.forward_tick([_task(0)], kv=lambda r, ly: STORE[r][ly])
    assert out.velocity[0].shape == CFG.latent_shape()
    assert len(out.kv[0]) == CFG.num_layers
    k, v = out.kv[0][0]
    assert k.shape == v.shape == (CFG.tokens_per_block, CFG.num_heads, CFG.head_dim)


def test_deterministic_and_seeded() -> None:
    a = MODEL.forward_tick([_task(0)], kv=lambda r, ly: STORE[r][ly]).velocity[0]
    b = _model().forward_tick([_task(0)], kv=lambda r, ly: STORE[r][ly]).velocity[0]
    c = _model(seed=1).forward_tick([_task(0)], kv=lambda r, ly: STORE[r][ly]).velocity[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtypes(dtype: torch.dtype) -> None:
    model = _model(dtype)
    store = _fake_kv(dtype)
    out = model.forward_tick([_task(1, 0, ((0, 4),), dtype=torch.float32)], kv=lambda r, ly: store[r][ly])
    ref = MODEL.forward_tick([_task(1, 0, ((0, 4),))], kv=lambda r, ly: STORE[r][ly]).velocity[0]
    act = torch.float32 if dtype == torch.bfloat16 else dtype
    assert out.velocity[0].dtype == act
    assert out.kv[0][0][0].dtype == dtype
    tol = {torch.float32: 1e-4, torch.float64: 1e-9, torch.bfloat16: 0.3}[dtype]
    assert (out.velocity[0].double() - ref).abs().max() < tol


def test_prompts_cache_and_reregister() -> None:
    model = _model()
    kv = lambda r, ly: STORE[r][ly]  # noqa: E731
    a = model.forward_tick([_task(0)], kv=kv).velocity[0]
    model.register_prompt("p", text_embedding("a dog", CFG))
    b = model.forward_tick([_task(0)], kv=kv).velocity[0]
    assert not torch.equal(a, b)
    model.register_prompt("q", text_embedding("a cat", CFG))
    c = model.forward_tick([_task(0, prompt="q")], kv=kv).velocity[0]
    assert torch.equal(a, c)
    # two prompts in one tick: each task uses its own
    both = model.forward_tick([_task(0, prompt="q"), _task(1, prompt="p")], kv=kv)
    assert torch.allclose(both.velocity[0], a, atol=1e-12)
    model.drop_prompt("q")
    with pytest.raises(ExecutorError, match="not registered"):
        model.forward_tick([_task(0, prompt="q")], kv=kv)
    with pytest.raises(ConfigError):
        model.register_prompt("bad", torch.zeros(CFG.text_len + 1, CFG.text_dim))


def test_validation_errors() -> None:
    kv = lambda r, ly: STORE[r][ly]  # noqa: E731
    with pytest.raises(ExecutorError, match="distinct blocks other than its own"):
        MODEL.forward_tick([_task(1, 0, ((1, 4),))], kv=kv)
    with pytest.raises(ExecutorError, match="distinct blocks"):
        MODEL.forward_tick([_task(2, 0, ((1, 4), (1, 3)))], kv=kv)
    bad = TaskInput((0, 0), torch.zeros(16, 3, 5, 4, dtype=torch.float64), 1.0, 0, "p")
    with pytest.raises(ExecutorError, match="latent must be"):
        MODEL.forward_tick([bad], kv=kv)
    with pytest.raises(ExecutorError, match="twice"):
        MODEL.forward_tick([_task(0), _task(0)], kv=kv)
