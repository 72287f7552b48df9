"""A stream of 3,000 ``tiny`` blocks keeps its memory flat (benchmarks/bench_endless.py runs 20,000 and
times the tick loop too; a test asserts no wall time)."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))

from bench_endless import endless

RSS_GROWTH = 0.05  # the bound: at most 5% more resident memory at the end than after 1,000 blocks


@pytest.mark.slow
def test_three_thousand_blocks_in_flat_memory() -> None:
    gc.collect()
    seen = endless(3_000, (1_000, 2_999))
    (_, _, early), (_, _, late) = seen[1_000], seen[2_999]
    assert late <= early * (1 + RSS_GROWTH), f"RSS {early / 2**20:.1f} -> {late / 2**20:.1f} MiB"
