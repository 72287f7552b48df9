"""The dtypes a model runs in: one table of their names and sizes, and torch's dtype of each name.

Importing this module imports no torch (the command line's ``--dtype`` takes its names from here).

>>> DTYPES, dtype_bytes("bfloat16")
(('float32', 'bfloat16', 'float64'), 2)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cascade_sched.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["DTYPES", "check_dtype", "dtype_bytes", "torch_dtype"]

_BYTES = {"float32": 4, "bfloat16": 2, "float64": 8}  # name -> bytes per value
DTYPES: tuple[str, ...] = tuple(_BYTES)


def check_dtype(param: str, name: str) -> None:
    """Refuse a dtype name this project does not run in, naming ``param`` (``dtype``, or a flag)."""
    if name not in _BYTES:
        raise ConfigError(param, f"`{param}` must be one of {', '.join(DTYPES)}, got {name!r}")


def dtype_bytes(name: str) -> int:
    """Bytes per value of dtype ``name``."""
    check_dtype("dtype", name)
    return _BYTES[name]


def torch_dtype(name: str) -> torch.dtype:
    """torch's dtype of ``name`` (``"bfloat16"`` -> ``torch.bfloat16``)."""
    import torch

    check_dtype("dtype", name)
    dtype: torch.dtype = getattr(torch, name)
    return dtype
