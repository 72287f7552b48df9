"""The KV pool: committed K/V of each block version, stored once and freed as soon as no task reads it.

The executor commits a version's per-layer (k, v) with the last tick at which any task reads it
(`free_after_tick`, from the schedule's window and sink); `release_through(tick)` frees every version whose
last reader has run. Bytes are counted exactly (the bytes the stored tensors hold), the peak is kept,
and a commit that would pass the budget raises ExecutorError instead of growing silently.

>>> import torch
>>> pool = KVPool(budget_bytes=1 << 20)
>>> kv = [(torch.zeros(4, 2, 8), torch.zeros(4, 2, 8))]
>>> pool.commit((0, 4), kv, free_after_tick=9)
>>> pool.bytes_in_use, (0, 4) in pool
(512, True)
>>> pool.release_through(9)
[(0, 4)]
>>> pool.bytes_in_use, pool.peak_bytes
(0, 512)
"""

from __future__ import annotations

import torch
from torch import Tensor

from cascade_sched.errors import ConfigError, ExecutorError

__all__ = ["KVPool"]

KVRef = tuple[int, int]
KVPair = tuple[Tensor, Tensor]


def _own(t: Tensor) -> Tensor:
    """`t` holding exactly its own bytes: a view into a larger buffer (a slice of a tick's batch) is
    copied, so freeing the rest of the batch really frees memory and the byte count is honest."""
    if not t.is_contiguous() or t.untyped_storage().nbytes() != t.numel() * t.element_size():
        return t.clone(memory_format=torch.contiguous_format)
    return t


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


class KVPool:
    """Committed K/V per (block, stage) version and layer, with byte accounting and an optional budget."""

    def __init__(self, budget_bytes: int | None = None) -> None:
        if budget_bytes is not None and (isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int)
                                         or budget_bytes < 0):
            raise ConfigError("budget_bytes", f"`budget_bytes` must be a non-negative integer or None, got {budget_bytes!r}")
        self.budget_bytes = budget_bytes
        self._store: dict[KVRef, list[KVPair]] = {}
        self._bytes: dict[KVRef, int] = {}
        self._free_after: dict[KVRef, int | None] = {}
        self._freed: set[KVRef] = set()
        self.bytes_in_use = 0
        self.peak_bytes = 0

    def commit(self, ref: KVRef, layers: list[KVPair], free_after_tick: int | None) -> None:
        """Store `ref`'s per-layer (k, v); it lives until `release_through(free_after_tick)` (None: forever).

        Raises ExecutorError if `ref` is already stored or the budget would be exceeded (nothing is stored then).
        """
        ref = (int(ref[0]), int(ref[1]))
        if ref in self._store:
            raise ExecutorError(f"KV pool: version {ref} is already committed")
        size = sum(_nbytes(k) + _nbytes(v) for k, v in layers)
        if self.budget_bytes is not None and self.bytes_in_use + size > self.budget_bytes:
            raise ExecutorError(
                f"KV pool: committing {ref} ({size} bytes) would use {self.bytes_in_use + size} bytes, over the "
                f"budget `budget_bytes`={self.budget_bytes} ({len(self._store)} versions held: "
                f"{sorted(self._store)})"
            )
        self._store[ref] = [(_own(k), _own(v)) for k, v in layers]
        self._bytes[ref] = size
        self._free_after[ref] = free_after_tick
        self._freed.discard(ref)
        self.bytes_in_use += size
        self.peak_bytes = max(self.peak_bytes, self.bytes_in_use)

    def get(self, ref: KVRef, layer: int) -> KVPair:
        """The (k, v) of `ref` in `layer`; ExecutorError naming the ref if it was never stored or was freed."""
        layers = self._store.get((ref[0], ref[1]))
        if layers is None:
            why = "was already freed" if (ref[0], ref[1]) in self._freed else "was never committed"
            raise ExecutorError(f"KV pool: version {tuple(ref)} {why}; held: {sorted(self._store)}")
        if not 0 <= layer < len(layers):
            raise ExecutorError(f"KV pool: version {tuple(ref)} has {len(layers)} layers, asked for layer {layer}")
        return layers[layer]

    def layers(self, ref: KVRef) -> list[KVPair]:
        """All layers of `ref` (as `get`, for every layer at once)."""
        self.get(ref, 0)
        return self._store[(ref[0], ref[1])]

    def retain_until(self, ref: KVRef, tick: int | None) -> None:
        """Keep a held version at least until ``tick`` (None: forever): a schedule extended while it runs
        may read a version later than first planned."""
        ref = (ref[0], ref[1])
        if ref not in self._store:
            raise ExecutorError(f"KV pool: cannot retain {ref}: not held; held: {sorted(self._store)}")
        old = self._free_after[ref]
        if old is not None and (tick is None or tick > old):
            self._free_after[ref] = tick

    def set_free_after(self, ref: KVRef, tick: int | None) -> None:
        """Free a held version after ``tick`` (None: not before an explicit ``free``): a stream learns a
        version's last reader after it was committed."""
        ref = (ref[0], ref[1])
        if ref not in self._store:
            raise ExecutorError(f"KV pool: cannot set the free tick of {ref}: not held; held: {sorted(self._store)}")
        self._free_after[ref] = tick

    def release_through(self, tick: int) -> list[KVRef]:
        """Free every version whose `free_after_tick <= tick`; returns them in block order."""
        done = sorted(r for r, t in self._free_after.items() if t is not None and t <= tick)
        for ref in done:
            self.free(ref)
        return done

    def free(self, ref: KVRef) -> None:
        """Free `ref` now; ExecutorError if it is not held."""
        ref = (ref[0], ref[1])
        if ref not in self._store:
            raise ExecutorError(f"KV pool: cannot free {ref}: not held; held: {sorted(self._store)}")
        del self._store[ref]
        del self._free_after[ref]
        self.bytes_in_use -= self._bytes.pop(ref)
        self._freed.add(ref)

    def refs(self) -> list[KVRef]:
        """The versions held now, in block order."""
        return sorted(self._store)

    def __contains__(self, ref: object) -> bool:
        return isinstance(ref, tuple) and len(ref) == 2 and (ref[0], ref[1]) in self._store

    def __len__(self) -> int:
        return len(self._store)

    def __repr__(self) -> str:
        return (f"KVPool({len(self)} versions, {self.bytes_in_use} bytes in use, peak {self.peak_bytes}, "
                f"budget {self.budget_bytes})")
