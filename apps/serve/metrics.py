"""``/metrics`` of ``cascade serve``: Prometheus text format through ``prometheus_client``.

Every app has its own registry (two servers in one process, as in the tests, never mix figures). Times
are seconds; "frame" is one video frame sent as one JPEG message. The names follow
``cascade_sched.metrics`` (delivered FPS, first frame from the request).
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

INTERVAL_BUCKETS = (0.01, 0.02, 0.03, 0.04, 0.05, 0.0625, 0.075, 0.1, 0.125, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)
LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
BLOCK_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20)


class ServeMetrics:
    """The server's figures (names below; ``_total``, ``_bucket``, ``_sum``, ``_count`` are added by the
    Prometheus conventions)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.frames_shown = Counter("cascade_serve_frames_shown", "Frames the stream showed (handed to its clients "
                                    "at their due time): the rate generation keeps up.", registry=r)
        self.frames_sent = Counter("cascade_serve_frames_sent", "Frames sent to clients (all clients).", registry=r)
        self.delivered_fps = Gauge("cascade_serve_delivered_fps", "Frames per second delivered per client over "
                                   "the last 3 s, mean over the connected clients.", registry=r)
        self.frame_interval = Histogram("cascade_serve_frame_interval_seconds", "Time between consecutive frames "
                                        "sent to one client.", buckets=INTERVAL_BUCKETS, registry=r)
        self.first_frame = Histogram("cascade_serve_first_frame_seconds", "First-frame latency: from the request "
                                     "(a stream's start: its first client) to its first frame shown.",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.switch_blocks = Histogram("cascade_serve_switch_latency_blocks", "Blocks from the one shown when a "
                                       "prompt arrived to the first block under it.", buckets=BLOCK_BUCKETS,
                                       registry=r)
        self.switch_seconds = Histogram("cascade_serve_switch_latency_seconds", "From a prompt's arrival to the "
                                        "first frame under it shown.", buckets=LATENCY_BUCKETS, registry=r)
        self.dropped = Counter("cascade_serve_frames_dropped", "Frames dropped, oldest first, from the buffers "
                               "of clients that read too slowly.", registry=r)
        self.underruns = Counter("cascade_serve_underruns", "Times the stream waited past a frame's due time "
                                 "because generation had not made it yet.", registry=r)
        self.underrun_seconds = Counter("cascade_serve_underrun_seconds", "Time the stream spent waiting past "
                                        "due times for generation.", registry=r)
        self.sessions = Gauge("cascade_serve_sessions", "Generation streams running (0 or 1 per executor group).",
                              registry=r)
        self.sessions_started = Counter("cascade_serve_sessions_started", "Streams started.", registry=r)
        self.clients = Gauge("cascade_serve_clients", "Websocket clients attached to a stream.", registry=r)
        self.block_seconds = Histogram("cascade_serve_block_generation_seconds", "Generation time per block: "
                                       "between consecutive clean latents on the decode rank.",
                                       buckets=INTERVAL_BUCKETS, registry=r)
        self.in_flight = Gauge("cascade_serve_blocks_in_flight", "Blocks in flight in the current tick.",
                               registry=r)
        self.kv_bytes = Gauge("cascade_serve_kv_bytes", "K/V bytes the stream's pool holds on this process.",
                              registry=r)
        self.rejected = Counter("cascade_serve_messages_rejected", "Client messages answered with an error, "
                                "by error code.", ["code"], registry=r)
        self.group_alive = Gauge("cascade_serve_group_alive", "1 while the executor group is alive.", registry=r)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
