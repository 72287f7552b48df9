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
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cascade_sched.errors import CheckpointError

__all__ = ["TORCH_SUFFIXES", "SafetensorsFile", "TrackedTensors", "describe", "open_tensor_file",
           "read_tensor_file", "tensor_shape", "unreadable"]

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
        return _torch_load(p)
    except Exception as exc:  # corrupt file, non-tensor pickle, ...
        raise unreadable(p, what, exc) from exc


def _torch_load(p: Path, mmap: bool = False) -> Any:
    """``torch.load`` of tensors only (``weights_only``: it never unpickles code), quietly: its warnings
    (a pickle protocol it was not written with) would print before the one line that says what is wrong."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)


# What torch.save and pickle write for the objects a file most often holds instead of a checkpoint.
_KNOWN_GLOBALS = {"torch._utils._rebuild_tensor_v2": "a tensor", "torch._utils._rebuild_parameter": "a tensor",
                  "numpy.core.multiarray._reconstruct": "a NumPy array",
                  "numpy._core.multiarray._reconstruct": "a NumPy array"}


def unreadable(path: Path, what: str, exc: Exception) -> CheckpointError:
    """The one-line error for a tensor file that did not load (``exc``: why it did not): the file, and
    what it holds, told from its bytes (never by running what it pickles).

    >>> import tempfile
    >>> empty = Path(tempfile.mkdtemp()) / "w.pt"
    >>> _ = empty.write_bytes(b"")
    >>> str(unreadable(empty, "checkpoint", ValueError())).split("/")[-1]
    "w.pt' is empty (0 bytes), not a checkpoint"
    """
    return CheckpointError(f"{what} {str(path)!r} {_what_it_is(path, exc)}")


def _what_it_is(path: Path, exc: Exception) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 20)
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    if not head:
        return "is empty (0 bytes), not a checkpoint"
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if path.suffix.lower() == ".safetensors":
        return f"is not a safetensors file ({reason}); it starts with {head[:8]!r}"
    if head.startswith(b"\x93NUMPY"):
        return "is a NumPy array file (numpy.save), not a checkpoint of named tensors"
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    if head.startswith(b"PK\x03\x04"):  # torch.save's zip format: its pickle named a type torch would not load
        if refused:
            holds = _KNOWN_GLOBALS.get(refused.group(1), f"Python objects ({refused.group(1)})")
            return f"holds {holds} that torch will not load as tensors (weights_only), not a checkpoint"
        return f"is a zip archive that torch cannot read as a checkpoint ({reason})"
    if head[:1] == b"\x80":  # a pickle written by pickle.dump, not torch.save
        found = _pickled_globals(head)
        known = [_KNOWN_GLOBALS[g] for g in found if g in _KNOWN_GLOBALS]
        holds = known[0] if known else found[0] if found else "Python objects"
        return f"is a plain pickle (pickle.dump) of {holds}, not a checkpoint (torch.save or safetensors)"
    return f"is neither a torch file nor a safetensors file; it starts with {head[:8]!r}"


def _pickled_globals(data: bytes) -> list[str]:
    """The classes and functions a pickle names, read from its opcodes without running any."""
    import pickletools

    names: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                strings.append(str(arg))
            elif op.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            elif op.name == "STOP":
                break
    except Exception:  # the pickle goes on past what was read, or is corrupt: what was seen is enough
        pass
    return names


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
            raise unreadable(p, what, exc) from exc

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
            return _torch_load(p, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return _torch_load(p)  # legacy (non-zip) format
    except Exception as exc:  # corrupt file, non-tensor pickle, ...
        raise unreadable(p, what, exc) from exc


def describe(obj: Any) -> str:
    """What a loaded object is, in a few words, for an error that says a file holds the wrong thing.

    >>> describe(torch.zeros(2, 3)), describe([1, 2]), describe({"lr": 0.1})
    ('a tensor of shape (2, 3)', 'a list of 2 items', "a dict of non-tensors (keys: ['lr'])")
    """
    if isinstance(obj, Tensor):
        return f"a tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, (list, tuple)):
        return f"a {type(obj).__name__} of {len(obj)} items"
    if isinstance(obj, Mapping):
        keys = sorted(map(str, obj))
        more = f" and {len(keys) - 8} more" if len(keys) > 8 else ""
        return f"a dict of non-tensors (keys: {keys[:8]}{more})" if keys else "an empty dict"
    return f"a {type(obj).__name__}"
