"""Pipeline health for the page: consumer lag, dead letters, spool depth, last window closed.

Why these four: together they say whether the numbers on the page are current. Lag is the
worker group's committed offsets against the log ends of its input topics (as `costpipe run`
shows it); dead letters are the messages on the dead-letter topic; the spool is what the
collectors on this host could not hand to Kafka yet (`<state_dir>/spool`).
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from costpipe.core.kafka_clients import confluent_consumer
from costpipe.core.settings import Settings


def spool_bytes(settings: Settings) -> int:
    """Bytes of spool segments waiting on this host (rejected.jsonl is not waiting)."""
    folder = Path(settings.state_dir) / "spool"
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*")
               if p.is_file() and p.name != "rejected.jsonl")


class KafkaProbe:
    """One consumer used only for offsets (it never subscribes, so it joins no group)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._consumer: Consumer | None = None

    def _client(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer(confluent_consumer(
                self.settings, self.settings.servers.worker_group))
        return self._consumer

    def _partitions(self, topic: str) -> list[TopicPartition]:
        metadata = self._client().list_topics(topic, timeout=3).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return []
        return [TopicPartition(topic, p) for p in metadata.partitions]

    def lag(self) -> int:
        topics = self.settings.topics
        total = 0
        for topic in (topics.requests, topics.gpu):
            parts = self._partitions(topic)
            if not parts:
                continue
            for part in self._client().committed(parts, timeout=3):
                low, high = self._client().get_watermark_offsets(part, timeout=3, cached=False)
                total += max(0, high - max(part.offset, low))
        return total

    def dead_letters(self) -> int:
        total = 0
        for part in self._partitions(self.settings.topics.deadletter):
            low, high = self._client().get_watermark_offsets(part, timeout=3, cached=False)
            total += high - low
        return total

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {"lag": None, "dead_letters": None, "kafka_error": None}
            try:
                out["lag"] = self.lag()
                out["dead_letters"] = self.dead_letters()
            except Exception as exc:
                out["kafka_error"] = f"Kafka at {self.settings.bootstrap_servers}: {exc}"
            return out

    def close(self) -> None:
        with self._lock, contextlib.suppress(Exception):
            if self._consumer is not None:
                self._consumer.close()
