"""The optional libraries some tests need, each skipped with one line saying which extra installs it.

``pytest -ra`` lists the skips grouped by reason, so a run without an extra prints one line per group:
``SKIPPED [12] ...: diffusers is not installed: pip install -e '.[vae]'``. README command 2 installs every
extra the suite uses (``.[dev,vae]``; ``dev`` brings ``serve`` and ``peft``).
"""

from __future__ import annotations

from typing import Any

import pytest

EXTRA = {"diffusers": "vae", "transformers": "vae", "peft": "dev", "starlette": "serve", "websockets": "serve"}


def reason(module: str) -> str:
    """The skip reason for a missing ``module``: the extra that installs it."""
    return f"{module} is not installed: pip install -e '.[{EXTRA[module]}]'"


def need(module: str) -> Any:
    """``module``, imported, or the test (or module) skipped naming the extra that installs it. (A test module
    whose own imports need ``module`` calls ``pytest.importorskip(module, reason=reason(module))`` before
    them instead.)"""
    return pytest.importorskip(module, reason=reason(module))
