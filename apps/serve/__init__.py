"""``cascade serve``: a live stream to a browser, with prompt switches, on one process or N ranks.

- :mod:`~apps.serve.app`: the ASGI app (``/``, ``/ws``, ``/metrics``, ``/healthz``) and ``serve``;
- :mod:`~apps.serve.session`: one stream on the event loop (clients, pacing, switches, figures);
- :mod:`~apps.serve.stream`: one stream on its generation thread (schedule, extend hook, frames);
- :mod:`~apps.serve.group`: where the ticks run (this process, or every rank of a torchrun group);
- :mod:`~apps.serve.protocol`: the messages and their bounds; :mod:`~apps.serve.metrics`: the
  Prometheus figures; :mod:`~apps.serve.page`: the page.

docs/serve.md is the user's guide.
"""

from __future__ import annotations
