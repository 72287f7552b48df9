"""``cascade quality``: :mod:`~apps.quality.cli` (flags) and :mod:`~apps.quality.measure` (the toy model's
videos under every setting, and what they get wrong)."""
