"""The one registry of Hypothesis profiles for the whole test tree, and the markers' behaviour.

``ci`` (the default, and what CI gets): derandomized, 40 examples per property, no deadline, so a run is
reproducible and its time predictable. ``thorough`` (``HYPOTHESIS_PROFILE=thorough``): many more random
examples for a local hunt. A test that needs a different count says so in its own ``@settings``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=40,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", max_examples=2_000, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

