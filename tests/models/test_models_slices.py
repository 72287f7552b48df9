"""The model by layer range: a ring of slices, run one after another in one process and handing each other
the hidden state, equals the whole model's tick; each slice materialises only its share of the weights."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor

from cascade_sched.errors import ConfigError, ExecutorError
from models import CausalWanDiT, TaskInput, get_config, text_embedding
from models.checkpoints import take_slice
from models.config import ACTIVATION_BYTES, ModelConfig
from models.dit import EagerKernels, HiddenState, KVPair, KVRef
from models.slices import parameter_bytes

CFG = get_config("tiny").replace(name="tiny-6", num_layers=6)
# W = 2, 3, 4 ranks, even and uneven splits of 6 layers.
SPLITS = [(3, 3), (1, 5), (2, 2, 2), (1, 4, 1), (2, 2, 1, 1), (1, 1, 1, 3)]


def _prompts(model: CausalWanDiT) -> CausalWanDiT:
    model.register_prompt("a", text_embedding("a fox in the snow", CFG))
    model.register_prompt("b", text_embedding("a red kite", CFG))
    return model


def _latent(i: int, dtype: torch.dtype) -> Tensor:
    return torch.randn(CFG.latent_shape(), generator=torch.Generator().manual_seed(100 + i)).to(dtype)


def _tick(dtype: torch.dtype) -> list[TaskInput]:
    """A mixed tick: a bidirectional pair (blocks 3 and 4 read each other), a cache pass (block 2) that the
    pair also reads from this same tick, committed reads from the pool, two prompts, three timesteps."""
    return [
        TaskInput((3, 1), _latent(0, dtype), 937.5, 9, "a", reads=((0, 4), (1, 4), (2, 4), (4, 0))),
        TaskInput((4, 0), _latent(1, dtype), 1000.0, 12, "b", reads=((1, 4), (2, 4), (3, 1))),
        TaskInput((2, 4), _latent(2, dtype), 0.0, 6, "a", reads=((0, 4), (1, 4))),
    ]


def _pool(dtype: torch.dtype) -> dict[KVRef, list[KVPair]]:
    g = torch.Generator().manual_seed(5)
    shape = (CFG.tokens_per_block, CFG.num_heads, CFG.head_dim)
    return {(b, 4): [(torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype))
                     for _ in range(CFG.num_layers)] for b in range(2)}


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


def _ring(slices: list[CausalWanDiT], tasks: list[TaskInput], pool: dict[KVRef, list[KVPair]],
          graph_forms: bool) -> tuple[list[Tensor], list[list[KVPair]], list[HiddenState]]:
    """Each slice's share of the tick in ring order, the hidden state handed from one to the next."""
    hidden: HiddenState | None = None
    kv: list[list[KVPair]] = [[] for _ in tasks]
    hops: list[HiddenState] = []
    for model in slices:
        out = model.forward_slice(tasks, lambda ref, layer: pool[ref][layer], hidden=hidden,
                                  kernels=EagerKernels(model, graph_forms=graph_forms))
        assert len(out.kv) == len(tasks) and all(len(k) == len(model.layers) for k in out.kv)
        for i, pairs in enumerate(out.kv):
            kv[i] += pairs
        hidden = out.hidden
        if hidden is not None:
            hops.append(hidden)
    assert hidden is None  # the last slice holds the head
    return out.velocity, kv, hops


@pytest.mark.parametrize("graph_forms", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("split", SPLITS, ids=lambda s: ",".join(map(str, s)))
def test_ring_of_slices_equals_the_whole_tick(split: tuple[int, ...], dtype: torch.dtype, graph_forms: bool) -> None:
    """Velocities and every layer's K/V of a ring equal the whole model's forward_tick (float64: <= 1e-12
    relative, float32: <= 1e-5); they are in fact bit-equal, since every piece runs the same operations on
    the same tensors. Each slice is built and seeded on its own, never cut from the whole model."""
    whole = _prompts(CausalWanDiT(CFG, seed=4)).to(dtype)
    slices = [_prompts(CausalWanDiT(CFG, seed=4, part=p)).to(dtype) for p in CFG.ring_slices(split)]
    tasks, pool = _tick(dtype), _pool(dtype)
    ref = whole.forward_tick(tasks, lambda r, layer: pool[r][layer],
                             kernels=EagerKernels(whole, graph_forms=graph_forms))
    velocity, kv, hops = _ring(slices, tasks, pool, graph_forms)
    bound = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    for a, b in zip(ref.velocity, velocity, strict=True):
        assert _rel(a, b) <= bound and torch.equal(a, b)
    for per_task_ref, per_task in zip(ref.kv, kv, strict=True):
        assert len(per_task) == CFG.num_layers
        for (k0, v0), (k1, v1) in zip(per_task_ref, per_task, strict=True):
            assert torch.equal(k0, k1) and torch.equal(v0, v1)
    # Each hop is one tensor of tokens x dim in the activation dtype (float32 for bf16 weights).
    act = {torch.float64: "float64", torch.float32: "float32", torch.bfloat16: "bfloat16"}[dtype]
    tokens = len(tasks) * CFG.tokens_per_block
    assert [h.layer for h in hops] == list(itertools.accumulate(split))[:-1]
    assert all(h.nbytes == CFG.hidden_bytes(tokens, ACTIVATION_BYTES[act]) for h in hops)
    assert all(h.x.dtype == (torch.float32 if dtype == torch.bfloat16 else dtype) for h in hops)


def test_pieces_alone_compose_to_the_tick() -> None:
    """enter_tick, run_layers over any cut of the layers, and exit_tick, called by hand on one model."""
    model = _prompts(CausalWanDiT(CFG, seed=2)).to(torch.float64)
    tasks, pool = _tick(torch.float64), _pool(torch.float64)
    kv = lambda r, layer: pool[r][layer]  # noqa: E731
    ref = model.forward_tick(tasks, kv)
    ctx, hidden = model.enter_tick(tasks)
    assert hidden.layer == 0 and hidden.x.shape == (sum(ctx.frames), CFG.tokens_per_frame, CFG.dim)
    for end in (1, 4, 6):
        hidden, _ = model.run_layers(ctx, hidden, kv, end=end)
        assert hidden.layer == end
    assert all(torch.equal(a, b) for a, b in zip(ref.velocity, model.exit_tick(ctx, hidden), strict=True))
    with pytest.raises(ExecutorError, match="head runs after layer 5"):
        model.exit_tick(ctx, HiddenState(hidden.x, 3))


def test_exchange_once_per_held_layer_with_absolute_indices() -> None:
    slices = [_prompts(CausalWanDiT(CFG, seed=0, part=p)) for p in CFG.ring_slices((2, 3, 1))]
    tasks, pool = _tick(torch.float32), _pool(torch.float32)
    calls: list[int] = []

    def exchange(layer: int, local: dict[KVRef, KVPair]) -> dict[KVRef, KVPair]:
        calls.append(layer)
        return {}

    hidden = None
    for model in slices:
        hidden = model.forward_slice(tasks, lambda r, layer: pool[r][layer], exchange, hidden=hidden).hidden
    assert calls == list(range(CFG.num_layers))
    calls.clear()
    for model in slices:  # an empty tick still matches every collective
        assert model.forward_slice([], lambda r, layer: pool[r][layer], exchange).kv == []
    assert calls == list(range(CFG.num_layers))


def test_a_slice_refuses_what_it_does_not_hold() -> None:
    first, last = (CausalWanDiT(CFG, part=p) for p in CFG.ring_slices((3, 3)))
    tasks = _tick(torch.float32)
    for model in (first, last):
        _prompts(model)
    with pytest.raises(ExecutorError, match=r"holds layers \[0, 3\) \+ entry, not layer 4"):
        first.block(4)
    with pytest.raises(ExecutorError, match="not the head"):
        first.head_out(torch.zeros(1, CFG.tokens_per_frame, CFG.dim), torch.zeros(1, CFG.dim))
    with pytest.raises(ExecutorError, match="not the entry"):
        last.embed([t.latent for t in tasks])
    with pytest.raises(ExecutorError, match="needs the hidden state before layer 3"):
        last.forward_slice(tasks, lambda r, layer: None)
    with pytest.raises(ExecutorError, match="use forward_slice"):
        first.forward_tick(tasks, lambda r, layer: None)
    ctx, hidden = first.enter_tick(tasks)
    with pytest.raises(ExecutorError, match=r"layers \[0, 6\) are not all held"):
        first.run_layers(ctx, hidden, lambda r, layer: None, end=6)
    with pytest.raises(ExecutorError, match=r"hidden state before layer 3 is \(3, 4, 32\); this tick's stream"):
        last.forward_slice(tasks, lambda r, layer: None, hidden=HiddenState(hidden.x[:3], 3))
    with pytest.raises(ConfigError, match="holds the entry only from layer 0"):
        CFG.layer_slice(2, 4, entry=True)
    with pytest.raises(ConfigError, match=r"0 <= first < end <= 6"):
        CFG.layer_slice(4, 4)


def test_seeded_slice_and_take_slice_equal_the_seeded_whole() -> None:
    whole = CausalWanDiT(CFG, seed=9)
    state = whole.state_dict()
    for part in CFG.ring_slices((1, 2, 3)):
        for piece in (CausalWanDiT(CFG, seed=9, part=part), take_slice(whole, part)):
            own = piece.state_dict()
            assert own and set(own) <= set(state)
            assert all(torch.equal(v, state[k]) for k, v in own.items())
            assert {k.split(".")[1] for k in own if k.startswith("blocks.")} == {str(i) for i in part.layers}
            assert ("patch_embedding.weight" in own) == part.entry and ("head.head.weight" in own) == part.head


def _bytes_near_share(cfg: ModelConfig, world: int, tolerance: float) -> None:
    sizes = [cfg.num_layers // world] * world
    parts = cfg.ring_slices(sizes)
    whole = cfg.parameter_count()
    one, two = (cfg.parameter_count(cfg.layer_slice(0, n, entry=False, head=False)) for n in (1, 2))
    shared = one - (two - one)  # what a slice of no layers would hold: the conditioning
    counts = [cfg.parameter_count(p) for p in parts]
    assert sum(counts) == whole + (world - 1) * shared  # only the conditioning is held on every rank
    for n in counts:  # a share of the layers, plus the conditioning every rank holds
        assert whole / world <= n <= whole / world + shared
        assert n <= whole / world * (1 + tolerance), (cfg.name, world, n / (whole / world))


@pytest.mark.parametrize("world", [2, 3, 4])
def test_parameter_bytes_per_rank_near_one_over_w(world: int) -> None:
    """Each rank of a W-rank ring of a 12-layer `small` model materialises ~1/W of its parameter bytes: its
    layers, plus the conditioning every rank holds (time embedding and projection, text embedding)."""
    cfg = get_config("small").replace(name="small-12", num_layers=12)
    _bytes_near_share(cfg, world, tolerance=0.15)
    whole_bytes = 4 * cfg.parameter_count()
    for part in cfg.ring_slices([12 // world] * world):
        model = CausalWanDiT(cfg, seed=None, part=part)  # real CPU tensors for exactly what it holds
        assert parameter_bytes(model) == 4 * cfg.parameter_count(part)
        assert parameter_bytes(model) <= whole_bytes / world * 1.15


@pytest.mark.parametrize(("name", "worlds"), [("wan2.1-1.3b", (2, 3, 5)), ("wan2.1-14b", (2, 4, 5, 8))])
def test_real_models_split_near_one_over_w(name: str, worlds: tuple[int, ...]) -> None:
    """The published geometries, counted on the meta device: each rank holds 1/W of the weights plus the
    conditioning (1.8% of 1.3B, 1.6% of 14B), within 12% of 1/W up to 8 ranks."""
    cfg = get_config(name)
    for world in worlds:
        _bytes_near_share(cfg, world, tolerance=0.12)
        part = cfg.ring_slices([cfg.num_layers // world] * world)[world // 2]
        with torch.device("meta"):
            model = CausalWanDiT(cfg, part=part)
        assert sum(p.numel() for p in model.parameters()) == cfg.parameter_count(part)


def test_a_full_size_ring_runs_a_tick_on_the_meta_device() -> None:
    """Every shape of a 4-rank 1.3B ring at 480x832 goes through, with no weights and no memory (the dry
    runs of the GPU kit build on this): each hop carries one block's stream, 28.75 MB in float32."""
    cfg = get_config("wan2.1-1.3b", resolution=(480, 832))
    shape = (cfg.tokens_per_block, cfg.num_heads, cfg.head_dim)
    pooled = torch.empty(shape, device="meta", dtype=torch.bfloat16)
    task = TaskInput((7, 1), torch.empty(cfg.latent_shape(), device="meta"), 937.5, 21, "p",
                     reads=tuple((j, 4) for j in range(1, 7)))
    hidden = None
    for part in cfg.ring_slices([8, 8, 7, 7]):
        with torch.device("meta"):
            model = CausalWanDiT(cfg, seed=None, part=part).to(torch.bfloat16)
        model.register_prompt("p", torch.zeros(20, cfg.text_dim))
        out = model.forward_slice([task], lambda r, layer: (pooled, pooled), hidden=hidden)
        assert [len(k) for k in out.kv] == [len(part.layers)] and out.kv[0][0][0].shape == shape
        hidden = out.hidden
        if hidden is not None:
            assert hidden.x.shape == (3, cfg.tokens_per_frame, cfg.dim) and hidden.x.dtype == torch.float32
            assert hidden.nbytes == cfg.hidden_bytes_per_block() == 28_753_920
    assert out.velocity[0].shape == cfg.latent_shape()
