"""Positions past Wan's 1024-row RoPE table (docs/models.md, "Positions past the RoPE table"): a frame keeps
its absolute index at frame 5000 (block 1667 at 3 frames per block) as at frame 5; the factors are Wan's
formula evaluated there, nothing is looked up, and a block attends to its window and sink at their true frame
distances, so the tick at block 1667 equals the same tick near frame 0 (RoPE depends on distances only)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from cascade_sched.errors import ExecutorError
from models import CausalWanDiT, TaskInput, get_config, text_embedding
from models.attention import MAX_ROPE_POSITION, WAN_ROPE_TABLE, rope_inv_freqs, rope_positions
from models.dit import KVPair, KVRef

CFG = get_config("tiny")
FPB = CFG.frames_per_block
FAR = 1667  # block 1667 starts at frame 5001: far past the table's 1024 rows


def _model(dtype: torch.dtype) -> CausalWanDiT:
    model = CausalWanDiT(CFG, seed=1).to(dtype)
    model.register_prompt("p", text_embedding("a fox in the snow", CFG))
    return model


def _latent(i: int, dtype: torch.dtype) -> Tensor:
    return torch.randn(CFG.latent_shape(), generator=torch.Generator().manual_seed(50 + i)).to(dtype)


def _commit(model: CausalWanDiT, block: int, latent: int, dtype: torch.dtype) -> list[KVPair]:
    """The cache pass of `block`, with nothing visible: its K/V at its own positions."""
    task = TaskInput((block, 4), _latent(latent, dtype), 0.0, block * FPB, "p")
    kv: list[KVPair] = model.forward_tick([task], kv=lambda r, layer: None).kv[0]
    return kv


def _tick(model: CausalWanDiT, block: int, visible: dict[int, int], dtype: torch.dtype) -> Tensor:
    """Block `block` at t = 1000 reading the blocks in `visible` (block -> which latent it was made from)."""
    pool: dict[KVRef, list[KVPair]] = {(j, 4): _commit(model, j, i, dtype) for j, i in visible.items()}
    task = TaskInput((block, 0), _latent(99, dtype), 1000.0, block * FPB, "p", reads=tuple(sorted(pool)))
    out: Tensor = model.forward_tick([task], kv=lambda r, layer: pool[r][layer]).velocity[0]
    assert torch.isfinite(out).all()
    return out


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


def test_the_rule_is_a_pure_function_of_the_block() -> None:
    assert WAN_ROPE_TABLE == 1024 < FAR * FPB
    assert rope_positions(FAR * FPB, FPB) == [5001, 5002, 5003]
    assert rope_positions(MAX_ROPE_POSITION, 1) == [MAX_ROPE_POSITION]
    for bad in (-3, MAX_ROPE_POSITION):  # never a silent wrap or a negative index
        with pytest.raises(ExecutorError, match="is not a frame position"):
            rope_positions(bad, 3)
    model = _model(torch.float32)
    with pytest.raises(ExecutorError, match="frame offset -3 is not a frame position"):
        model.forward_tick([TaskInput((0, 0), _latent(0, torch.float32), 1000.0, -3, "p")], kv=lambda r, layer: None)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_factors_past_the_table_are_wans_formula_there(dtype: torch.dtype) -> None:
    """Rows 5001..5003 of Wan's `rope_params(max_seq_len, dim)` (the table's formula, extended past its
    1024 rows) are the model's frame factors at block 1667: float64 exactly, float32 rounded once."""
    model = _model(dtype)
    d = CFG.head_dim
    n_f = d - 4 * (d // 6)
    rows = torch.arange(5010, dtype=torch.float64)  # Wan's table, as if it had 5010 rows
    table = torch.polar(torch.ones(5010, n_f // 2, dtype=torch.float64),
                        torch.outer(rows, 1.0 / torch.pow(10000, torch.arange(0, n_f, 2, dtype=torch.float64) / n_f)))
    assert torch.equal(rope_inv_freqs(d)[0], 1.0 / torch.pow(10000, torch.arange(0, n_f, 2, dtype=torch.float64) / n_f))
    freqs = model.rope(torch.tensor(rope_positions(FAR * FPB, FPB), dtype=torch.float64))  # (G*P, 1, D/2)
    frame_part = freqs.view(FPB, CFG.tokens_per_frame, -1)[:, 0, : n_f // 2]  # one token per frame
    expected = table[5001:5004].to(freqs.dtype)
    assert torch.equal(frame_part, expected) if dtype == torch.float32 else torch.allclose(frame_part, expected,
                                                                                          rtol=0, atol=1e-15)


@pytest.mark.parametrize(("dtype", "bound"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_block_1667_sees_its_window_as_block_3_does(dtype: torch.dtype, bound: float) -> None:
    """Block 1667 attending to its window (blocks 1664..1666) equals block 3 attending to blocks 0..2 made
    from the same latents: the window's K/V keep the positions they were committed at, and the distances
    are those of a stream near frame 0."""
    model = _model(dtype)
    far = _tick(model, FAR, {FAR - 3: 0, FAR - 2: 1, FAR - 1: 2}, dtype)
    near = _tick(model, 3, {0: 0, 1: 1, 2: 2}, dtype)
    assert _rel(near, far) <= bound


@pytest.mark.parametrize(("dtype", "bound"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_the_sink_is_seen_at_its_true_distance(dtype: torch.dtype, bound: float) -> None:
    """A sink keeps its own position (block 0, frames 0..2): block 1667 reading sink 0 and window 1665,
    1666 equals the same reads shifted by 100 blocks, and is not the tick with the sink re-based beside the
    window (which a rule that re-rotates the sink would give)."""
    model = _model(dtype)
    far = _tick(model, FAR, {0: 0, FAR - 2: 1, FAR - 1: 2}, dtype)
    shifted = _tick(model, FAR + 100, {100: 0, FAR + 98: 1, FAR + 99: 2}, dtype)
    assert _rel(far, shifted) <= bound
    rebased = _tick(model, FAR, {FAR - 3: 0, FAR - 2: 1, FAR - 1: 2}, dtype)
    assert _rel(far, rebased) > 1e-4
