"""Both envelope encodings survive a real Kafka round trip and decode through the codec."""

from __future__ import annotations

import datetime as dt
import uuid

import pyarrow as pa
import pytest
from confluent_kafka import Consumer, Producer

from costpipe import broker
from costpipe.core.kafka_clients import confluent_consumer, confluent_producer
from costpipe.core.settings import Settings
from costpipe.schemas import (
    ARROW,
    JSON,
    REQUEST_EVENT,
    decode,
    encode_arrow,
    encode_json,
    headers_for,
)

pytestmark = pytest.mark.integration


def _events(count: int) -> list[dict]:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    return [
        {
            "request_id": f"r-{uuid.uuid4().hex}",
            "timestamp": now - dt.timedelta(seconds=i),
            "operation": "code_completion",
            "gen_ai_operation": "text_completion",
            "provider": "own-vllm" if i % 2 else "openai",
            "provider_kind": "internal" if i % 2 else "external",
            "model": "qwen2.5-coder-7b" if i % 2 else "gpt-4o-mini",
            "input_tokens": 100 + i,
            "output_tokens": 20 + i,
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "latency_ms": 12.5 * (i + 1),
            "status": "ok",
            "team": "search",
            "source": "simulator",
        }
        for i in range(count)
    ]


def test_arrow_envelope_and_json_event_round_trip(settings_for_tests: Settings) -> None:
    settings = settings_for_tests
    broker.ensure_topics(settings)
    topic = settings.topics.requests
    batch = pa.RecordBatch.from_pylist(_events(500), schema=REQUEST_EVENT)
    single = _events(1)[0] | {"request_id": "json-1", "provider": "anthropic",
                              "model": "claude-sonnet-4"}

    producer = Producer(confluent_producer(settings))
    producer.produce(topic, encode_arrow(batch), key=b"batch",
                     headers=headers_for(ARROW, "request_event"))
    producer.produce(topic, encode_json(single), key=b"json",
                     headers=headers_for(JSON, "request_event"))
    assert producer.flush(30) == 0

    consumer = Consumer(confluent_consumer(settings, f"g-{uuid.uuid4().hex}"))
    consumer.subscribe([topic])
    decoded = {}
    try:
        for _ in range(120):
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            decoded[message.key()] = decode(message.value(), message.headers(), REQUEST_EVENT)
            if len(decoded) == 2:
                break
    finally:
        consumer.close()

    assert set(decoded) == {b"batch", b"json"}
    arrow, json_ = decoded[b"batch"], decoded[b"json"]
    assert arrow.ok and arrow.encoding == ARROW
    assert arrow.batch.num_rows == 500
    assert arrow.batch.to_pylist() == batch.to_pylist()
    assert json_.ok and json_.encoding == JSON
    (row,) = json_.batch.to_pylist()
    assert row["request_id"] == "json-1" and row["provider"] == "anthropic"
    assert row["timestamp"] == single["timestamp"]
    assert row["input_tokens"] == single["input_tokens"]
