"""Reading a file of tensors (``.safetensors``, or ``.pt``/``.pth``/``.bin``/``.ckpt`` through
``torch.load(weights_only=True)``, which never unpickles code), with one ``CheckpointError`` for each way
it can fail. Checkpoints, LoRA adapters, TAEHV weights and prompt embeddings all read through it.

:func:`open_tensor_file` reads lazily, so that a rank holding a slice of a model reads only that slice:
safetensors through ``safe_open`` (names and shapes from the header, a tensor's bytes when it is looked up),
also as shards listed by a Hugging Face ``*.safetensors.index.json`` weight map; ``.pt`` through
``torch.load(mmap=True)`` (a tensor's pages are read when its values are copied).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cascade_sched.errors import CheckpointError

__all__ = ["TORCH_SUFFIXES", "SafetensorsFile", "TrackedTensors", "open_tensor_file", "read_tensor_file",
           "tensor_shape"]

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
INDEX_SUFFIX = ".safetensors.index.json"


def _check_file(p: Path, what: str) -> str:
    if not p.is_file():
        raise CheckpointError(f"{what} {str(p)!r} does not exist or is not a file")
    suffix = p.suffix.lower()
    if suffix != ".safetensors" and suffix not in TORCH_SUFFIXES:
        raise CheckpointError(f"{what} {str(p)!r}: unknown format {suffix!r}; use .safetensors, .pt or .pth")
    return suffix


def read_tensor_file(path: str | Path, what: str) -> Any:
    """The object stored at `path` on the CPU; `what` names it in errors ("checkpoint", "LoRA", ...)."""
    p = Path(path)
    suffix = _check_file(p, what)
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p), device="cpu")
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, non-tensor pickle, ...
        raise CheckpointError(f"{what} {str(path)!r} cannot be read: {exc}") from exc


class SafetensorsFile(Mapping[str, Tensor]):
    """The tensors of one ``.safetensors`` file, or of shards (``{name: file}``), read one at a time: the
    names and shapes come from the headers, a tensor's bytes are read when it is looked up.

    >>> import tempfile
    >>> from safetensors.torch import save_file
    >>> path = tempfile.mkdtemp() + "/w.safetensors"
    >>> save_file({"a": torch.zeros(2, 3), "b": torch.ones(4)}, path)
    >>> f = SafetensorsFile.of(path)
    >>> sorted(f), f.shape("a"), f["b"].tolist()
    (['a', 'b'], (2, 3), [1.0, 1.0, 1.0, 1.0])
    """

    def __init__(self, files: Mapping[str, Path], what: str = "checkpoint") -> None:
        self._files, self.what = dict(files), what
        self._handles: dict[Path, Any] = {}
        self._stored: dict[str, str] = {}  # a name -> the name in the file, where they differ (`renamed`)

    def renamed(self, rename: Callable[[str], str]) -> SafetensorsFile:
        """The same tensors under ``rename(name)`` (one new name per name), read from the same files.

        >>> import tempfile
        >>> from safetensors.torch import save_file
        >>> path = tempfile.mkdtemp() + "/w.safetensors"
        >>> save_file({"a": torch.zeros(2)}, path)
        >>> f = SafetensorsFile.of(path).renamed(str.upper)
        >>> sorted(f), f.shape("A")
        (['A'], (2,))
        """
        new = {rename(k): k for k in self._files}
        if len(new) != len(self._files):
            raise CheckpointError(f"{self.what}: two tensors get the same name")
        out = SafetensorsFile({k: self._files[old] for k, old in new.items()}, self.what)
        out._handles = self._handles
        out._stored = {k: self._stored.get(old, old) for k, old in new.items() if k != self._stored.get(old, old)}
        return out

    @classmethod
    def of(cls, path: str | Path, what: str = "checkpoint") -> SafetensorsFile:
        """One file: its header is read now (a file that is not safetensors fails here)."""
        p = Path(path)
        handle = cls._open(p, what)
        out = cls(dict.fromkeys(handle.keys(), p), what)
        out._handles[p] = handle
        return out

    @classmethod
    def sharded(cls, index: Path, what: str = "checkpoint") -> SafetensorsFile:
        """Shards named by a ``*.safetensors.index.json`` weight map, each beside the index."""
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            files = {str(k): index.parent / str(v) for k, v in weight_map.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{what} index {str(index)!r} is not a safetensors weight map: {exc}") from exc
        missing = sorted({str(f.name) for f in files.values() if not f.is_file()})
        if missing:
            raise CheckpointError(f"{what} index {str(index)!r} names shards that are not beside it: {missing}")
        return cls(files, what)

    @staticmethod
    def _open(p: Path, what: str) -> Any:
        from safetensors import safe_open

        try:
            return safe_open(str(p), framework="pt", device="cpu")
        except Exception as exc:  # not a safetensors header
            raise CheckpointError(f"{what} {str(p)!r} cannot be read: {exc}") from exc

    def _handle(self, key: str) -> Any:
        path = self._files[key]
        if path not in self._handles:
            self._handles[path] = self._open(path, self.what)
        return self._handles[path]

    def shape(self, key: str) -> tuple[int, ...]:
        """The shape of `key`, from the header (no data read)."""
        return tuple(self._handle(key).get_slice(self._stored.get(key, key)).get_shape())

    def __getitem__(self, key: str) -> Tensor:
        if key not in self._files:
            raise KeyError(key)
        tensor: Tensor = self._handle(key).get_tensor(self._stored.get(key, key))
        return tensor

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


class TrackedTensors(Mapping[str, Tensor]):
    """A mapping of tensors that records which it was asked for, and their bytes: what a load read."""

    def __init__(self, inner: Mapping[str, Tensor]) -> None:
        self.inner = inner
        self.read: dict[str, int] = {}  # name -> bytes

    def __getitem__(self, key: str) -> Tensor:
        tensor = self.inner[key]
        self.read[key] = tensor.numel() * tensor.element_size()
        return tensor

    def __iter__(self) -> Iterator[str]:
        return iter(self.inner)

    def __len__(self) -> int:
        return len(self.inner)


def tensor_shape(tensors: Mapping[str, Tensor], key: str) -> tuple[int, ...]:
    """The shape of ``tensors[key]`` without reading its data where the mapping can tell it."""
    inner = tensors.inner if isinstance(tensors, TrackedTensors) else tensors
    if isinstance(inner, SafetensorsFile):
        return inner.shape(key)
    return tuple(inner[key].shape)


def open_tensor_file(path: str | Path, what: str) -> Any:
    """What `path` holds, read lazily: a :class:`SafetensorsFile` for a ``.safetensors`` file, for a
    ``*.safetensors.index.json`` or for a folder holding one such index (sharded weights); for a torch file,
    its object with every tensor memory-mapped (``torch.load(mmap=True, weights_only=True)``; files in
    torch's legacy format, which cannot be mapped, are read whole)."""
    p = Path(path)
    if p.is_dir():
        indexes = sorted(p.glob("*" + INDEX_SUFFIX))
        if len(indexes) != 1:
            raise CheckpointError(f"{what} {str(path)!r} is a folder; a folder is read when it holds exactly one "
                                  f"sharded-safetensors index (*{INDEX_SUFFIX}), found {len(indexes)}")
        return SafetensorsFile.sharded(indexes[0], what)
    if p.name.endswith(INDEX_SUFFIX) and p.is_file():
        return SafetensorsFile.sharded(p, what)
    if _check_file(p, what) == ".safetensors":
        return SafetensorsFile.of(p, what)
    try:
        try:
            return torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return torch.load(p, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as exc:  # corrupt file, non-tensor pickle, ...
        raise CheckpointError(f"{what} {str(path)!r} cannot be read: {exc}") from exc
