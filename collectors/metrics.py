"""Prometheus counters shared by every collector in the process, and the endpoint serving them.

Why process-wide: several producers (requests, GPU samples) live in one collector process; one
scrape endpoint with a `topic` label shows them all.
"""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, start_http_server

from costpipe.settings import Settings

EVENTS_SENT = Counter(
    "costpipe_producer_events_sent", "Events acknowledged by Kafka", ["topic"]
)
EVENTS_SPOOLED = Counter(
    "costpipe_producer_events_spooled", "Events journaled to the local spool", ["topic"]
)
EVENTS_REPLAYED = Counter(
    "costpipe_producer_events_replayed", "Spooled events later acknowledged by Kafka", ["topic"]
)
EVENTS_FAILED = Counter(
    "costpipe_producer_events_failed",
    "Events that could not be encoded (kept in the spool's rejected.jsonl)",
    ["topic"],
)
QUEUE_DEPTH = Gauge(
    "costpipe_producer_queue_depth", "Events waiting in memory for the sender thread", ["topic"]
)
SPOOL_PENDING = Gauge(
    "costpipe_producer_spool_pending_events", "Events in the spool not yet replayed", ["topic"]
)

SPOOL_RECORDS = Gauge(
    "costpipe_producer_spool_pending_records",
    "Kafka envelopes (messages) in the spool not yet replayed", ["topic"]
)
SPOOL_BYTES = Gauge(
    "costpipe_producer_spool_bytes", "Bytes of spool segments not yet replayed", ["topic"]
)

_server_lock = threading.Lock()
_server_port: int | None = None


def start_metrics_server(settings: Settings, port: int | None = None) -> int:
    """Serve /metrics on settings.servers.metrics_host; returns the bound port (0 = any free)."""
    global _server_port
    with _server_lock:
        if _server_port is not None:
            return _server_port
        wanted = settings.servers.metrics_port if port is None else port
        server, _thread = start_http_server(wanted, addr=settings.servers.metrics_host)
        _server_port = int(server.server_port)
        return _server_port
