"""Shared setup of the model tests.

The tiny model's tensors are too small to gain from intra-op threads, and on a busy 2-core machine waking
the second OpenMP thread costs milliseconds per op; so the model tests run single-threaded (restored after).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
