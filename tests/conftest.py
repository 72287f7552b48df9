"""Hypothesis profiles shared by the whole test tree.

``ci`` (the default, and what CI gets): derandomized, a bounded number of examples, no deadline, so a run
is reproducible and its time is predictable. ``thorough`` (``HYPOTHESIS_PROFILE=thorough``): many more
random examples for a local hunt. Any other registered profile name may be given the same way.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=100,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", max_examples=2_000, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
