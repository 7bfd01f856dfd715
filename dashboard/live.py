"""The live feed: a Kafka consumer thread on the windows and alerts topics, fanned out to pages.

Why a thread with confluent-kafka: the consumer's poll blocks, and aiohttp's loop must not. The
thread reads from the latest offsets with the dashboard's own consumer group (it never joins
the worker's), sums each window's rows over all keys as they arrive (a window's keys are
merged on several partitions), and hands every update to the event loop, which sends it to
each open page as a Server-Sent Event. Message decoding is the codec's (costpipe.schemas).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import threading
import uuid
from collections import OrderedDict
from decimal import Decimal
from typing import Any

from confluent_kafka import Consumer, KafkaError

from costpipe.core.kafka_clients import confluent_consumer
from costpipe.core.settings import Settings
from costpipe.schemas.codec import decode
from costpipe.schemas.records import ALERT, WINDOW_AGGREGATE

log = logging.getLogger("costpipe.dashboard")
KEPT_WINDOWS = 120


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.UTC).isoformat()


class WindowSums:
    """Running totals of one window over all its keys (every revision added)."""

    def __init__(self, start: dt.datetime, end: dt.datetime) -> None:
        self.start, self.end = start, end
        self.requests = self.external_requests = 0
        self.tokens = self.external_tokens = 0
        self.cost = self.external_cost = Decimal(0)

    def add(self, row: dict[str, Any]) -> None:
        external = row["provider_kind"] == "external"
        tokens = row["input_tokens"] + row["output_tokens"]
        self.requests += row["requests"]
        self.tokens += tokens
        self.cost += row["cost"]
        if external:
            self.external_requests += row["requests"]
            self.external_tokens += tokens
            self.external_cost += row["cost"]

    def as_json(self) -> dict[str, Any]:
        def internal(ext: float, total: float) -> float | None:
            return None if not total else 1 - ext / total

        return {
            "window_start": _iso(self.start), "window_end": _iso(self.end),
            "requests": self.requests, "tokens": self.tokens, "cost": float(self.cost),
            "internal_share_requests": internal(self.external_requests, self.requests),
            "internal_share_tokens": internal(self.external_tokens, self.tokens),
            "internal_share_cost": internal(float(self.external_cost), float(self.cost)),
        }


class LiveFeed:
    """Reads the topics in a thread; `subscribe()` gives each page a queue of SSE payloads."""

    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop) -> None:
        self.settings = settings
        self.loop = loop
        self.pages: set[asyncio.Queue[str]] = set()
        self.windows: OrderedDict[dt.datetime, WindowSums] = OrderedDict()
        self.last_window_closed: str | None = None
        self.error: str | None = None
        self.connected = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="costpipe-dashboard-feed",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def close_pages(self) -> None:
        """Ends every open stream (called in the loop at shutdown): the server need not wait."""
        for queue in list(self.pages):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait("")

    def subscribe(self) -> asyncio.Queue[str]:
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1000)
        self.pages.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[str]) -> None:
        self.pages.discard(queue)

    def _publish(self, event: str, data: dict[str, Any]) -> None:
        payload = f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"

        def put() -> None:
            for queue in list(self.pages):
                with contextlib.suppress(asyncio.QueueFull):  # a stuck page misses updates
                    queue.put_nowait(payload)

        with contextlib.suppress(RuntimeError):  # the loop has closed: shutting down
            self.loop.call_soon_threadsafe(put)

    def _on_error(self, error: KafkaError) -> None:
        self.error = f"Kafka: {error.str()}"

    def _run(self) -> None:
        try:
            self._consume()
        except Exception as exc:  # the page's health tab says why the feed stopped
            self.error = f"live feed stopped: {exc}"
            log.exception("live feed stopped")

    def _consume(self) -> None:
        group = f"{self.settings.dashboard.consumer_group}-{uuid.uuid4().hex[:8]}"
        consumer = Consumer(confluent_consumer(
            self.settings, group, error_cb=self._on_error,
            **{"auto.offset.reset": "latest", "enable.auto.commit": False}))
        topics = self.settings.topics
        consumer.subscribe([topics.windows, topics.alerts],
                           on_assign=lambda *_: setattr(self, "connected", True))
        try:
            while not self._stop.is_set():
                for message in consumer.consume(500, timeout=0.5):
                    if message.error() is not None:
                        continue
                    try:
                        self._apply(message.topic() == topics.alerts, message)
                    except Exception as exc:  # one bad message must not stop the feed
                        log.warning("live feed: skipped a message (%s)", exc)
        finally:
            consumer.close()

    def _apply(self, is_alert: bool, message: Any) -> None:
        schema = ALERT if is_alert else WINDOW_AGGREGATE
        rows = decode(message.value(), message.headers(), schema).batch.to_pylist()
        if is_alert:
            for row in rows:
                self._publish("alert", {
                    "timestamp": _iso(row["timestamp"]), "rule": row["rule"],
                    "severity": row["severity"], "key": row["key"],
                    "observed": row["observed"], "threshold": row["threshold"],
                    "message": row["message"]})
            return
        touched: dict[dt.datetime, WindowSums] = {}
        for row in rows:
            start = row["window_start"]
            sums = self.windows.get(start)
            if sums is None:
                sums = self.windows[start] = WindowSums(start, row["window_end"])
                while len(self.windows) > KEPT_WINDOWS:
                    self.windows.popitem(last=False)
            sums.add(row)
            touched[start] = sums
        for sums in touched.values():
            end = _iso(sums.end)
            if end and (self.last_window_closed is None or end > self.last_window_closed):
                self.last_window_closed = end
            self._publish("window", sums.as_json())
