"""Lazy package exports: a package names what it exports and where, and a name's module is imported only
when the name is first used (so importing the package itself stays cheap, and torch-free).

>>> getattr_, names = lazy_exports("pkg", {"dumps": "json"})
>>> names, getattr_("dumps").__name__
(['dumps'], 'dumps')
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], list[str]]:
    """A module ``__getattr__`` for ``exports`` (name -> module) and the sorted ``__all__``."""

    def getattr_(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return getattr_, sorted(exports)
