"""``python -m apps.toy``: :func:`apps.toy.cli.main`."""

from __future__ import annotations

import sys

from apps.toy.cli import main

sys.exit(main())
