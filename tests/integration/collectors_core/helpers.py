"""Read events back from the real broker (tests never mock Kafka)."""

from __future__ import annotations

import time
import uuid

import pyarrow as pa
from confluent_kafka import Consumer

from costpipe.core.kafka_clients import confluent_consumer
from costpipe.core.settings import Settings, load_settings
from costpipe.schemas.codec import decode
from costpipe.schemas.records import REQUEST_EVENT


def settings_for(bootstrap: str, tmp_path, **env: str) -> Settings:
    return load_settings(
        environ={"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "COSTPIPE_STATE_DIR": str(tmp_path), **env}
    )


def unique_topic(kind: str = "requests") -> str:
    return f"test.{kind}.{uuid.uuid4().hex[:10]}.v1"


def read_topic(settings: Settings, topic: str, expect_rows: int, schema: pa.Schema = REQUEST_EVENT,
               timeout: float = 30.0) -> pa.Table:
    """Consume until `expect_rows` rows arrived (or timeout), then linger briefly for extras."""
    consumer = Consumer(confluent_consumer(settings, f"test-{uuid.uuid4().hex}"))
    consumer.subscribe([topic])
    batches: list[pa.RecordBatch] = []
    rows = 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            messages = consumer.consume(500, 0.5)
            for message in messages:
                if message.error():
                    continue
                decoded = decode(message.value(), message.headers(), schema)
                assert decoded.ok, decoded.rejections[:3]
                batches.append(decoded.batch)
                rows += decoded.batch.num_rows
            if rows >= expect_rows and not messages:
                break
    finally:
        consumer.close()
    if not batches:
        return pa.Table.from_batches([], schema=decode(None, None, schema).batch.schema)
    return pa.Table.from_batches(batches)
