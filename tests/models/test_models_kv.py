"""KVPool: byte accounting, peak, budget, eviction, errors."""

from __future__ import annotations

import pytest
import torch

from cascade_sched.errors import ExecutorError
from models import KVPool


def _layers(n: int = 2, tokens: int = 4, dtype: torch.dtype = torch.float32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.ones(tokens, 2, 8, dtype=dtype), torch.ones(tokens, 2, 8, dtype=dtype)) for _ in range(n)]


def test_accounting_and_release() -> None:
    pool = KVPool()
    one = 2 * 2 * 4 * 2 * 8 * 4  # layers * (k, v) * tokens * heads * dim * bytes
    pool.commit((0, 4), _layers(), free_after_tick=None)  # a sink: never released
    pool.commit((1, 4), _layers(), free_after_tick=5)
    pool.commit((2, 4), _layers(), free_after_tick=7)
    assert pool.bytes_in_use == pool.peak_bytes == 3 * one and len(pool) == 3
    assert pool.release_through(4) == []
    assert pool.release_through(6) == [(1, 4)]
    assert (1, 4) not in pool and (0, 4) in pool
    assert pool.bytes_in_use == 2 * one and pool.peak_bytes == 3 * one
    assert pool.release_through(100) == [(2, 4)]
    assert pool.refs() == [(0, 4)]
    pool.free((0, 4))
    assert pool.bytes_in_use == 0 and len(pool) == 0


def test_bf16_bytes() -> None:
    pool = KVPool()
    pool.commit((0, 0), _layers(dtype=torch.bfloat16), None)
    assert pool.bytes_in_use == 2 * 2 * 4 * 2 * 8 * 2


def test_budget_is_an_error_not_growth() -> None:
    one = 2 * 2 * 4 * 2 * 8 * 4
    pool = KVPool(budget_bytes=2 * one)
    pool.commit((0, 4), _layers(), None)
    pool.commit((1, 4), _layers(), 3)
    with pytest.raises(ExecutorError, match=r"budget `budget_bytes`=2048") as info:
        pool.commit((2, 4), _layers(), 5)
    assert "(2, 4)" in str(info.value)
    assert (2, 4) not in pool and pool.bytes_in_use == 2 * one
    pool.release_through(3)
    pool.commit((2, 4), _layers(), 5)  # fits once (1, 4) is gone


def test_get_errors_name_the_ref() -> None:
    pool = KVPool()
    pool.commit((0, 4), _layers(), 1)
    k, _v = pool.get((0, 4), 1)
    assert k.shape == (4, 2, 8)
    with pytest.raises(ExecutorError, match=r"\(3, 4\) was never committed"):
        pool.get((3, 4), 0)
    with pytest.raises(ExecutorError, match="layer 5"):
        pool.get((0, 4), 5)
    pool.release_through(1)
    with pytest.raises(ExecutorError, match=r"\(0, 4\) was already freed"):
        pool.get((0, 4), 0)
    with pytest.raises(ExecutorError, match="not held"):
        pool.free((0, 4))


def test_duplicate_commit() -> None:
    pool = KVPool()
    pool.commit((0, 4), _layers(), 1)
    with pytest.raises(ExecutorError, match="already committed"):
        pool.commit((0, 4), _layers(), 1)


def test_views_are_stored_as_their_own_bytes() -> None:
    """A slice of a tick's batched K/V is copied, so the pool holds (and counts) only its own tokens."""
    batch = torch.randn(12, 2, 8)
    pool = KVPool()
    pool.commit((1, 0), [(batch[4:8], batch[4:8])], None)
    k, _ = pool.get((1, 0), 0)
    assert torch.equal(k, batch[4:8])
    assert k.untyped_storage().nbytes() == 4 * 2 * 8 * 4
    whole = torch.randn(4, 2, 8)
    pool.commit((2, 0), [(whole, whole)], None)
    assert pool.get((2, 0), 0)[0] is whole  # no needless copy
