"""The shared producer against the real broker: delivery, outage spool, replay after restart."""

from __future__ import annotations

import datetime as dt
import json
import socket
import time

import pytest

from costpipe.collectors.producer import BatchingProducer
from tests.integration.collectors_core.helpers import read_topic, settings_for, unique_topic

pytestmark = pytest.mark.integration


def _event(i: int) -> dict:
    return {
        "request_id": f"r{i:06d}", "timestamp": dt.datetime.now(dt.UTC), "operation": "text",
        "provider": "openai", "provider_kind": "external", "model": "gpt-4o-mini",
        "input_tokens": i, "output_tokens": 1, "cache_read_tokens": 0,
        "cache_write_tokens": 0, "status": "ok", "source": "test",
    }


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_events_arrive_as_arrow_envelopes(kafka_bootstrap, tmp_path):
    settings = settings_for(kafka_bootstrap, tmp_path)
    topic = unique_topic()
    producer = BatchingProducer(settings, topic, metrics=False)
    for i in range(2500):
        producer.emit(_event(i))
    producer.close()
    assert producer.stats["sent"] == 2500
    table = read_topic(settings, topic, 2500)
    assert table.num_rows == 2500
    assert sorted(table.column("request_id").to_pylist()) == [f"r{i:06d}" for i in range(2500)]


def test_small_batches_are_coalesced_into_full_envelopes(kafka_bootstrap, tmp_path):
    """The worker's cost is per message: 50 batches of 100 rows travel as 5 envelopes."""
    import pyarrow as pa

    settings = settings_for(kafka_bootstrap, tmp_path)
    topic = unique_topic()
    producer = BatchingProducer(settings, topic, metrics=False, max_rows=1000, linger_s=5.0,
                                route_by=None)
    for start in range(0, 5000, 100):
        producer.emit_batch(pa.Table.from_pylist([_event(i) for i in range(start, start + 100)]))
    producer.close()
    table = read_topic(settings, topic, 5000)
    assert [b.num_rows for b in table.to_batches()] == [1000] * 5  # one message each
    assert sorted(table.column("request_id").to_pylist()) == [f"r{i:06d}" for i in range(5000)]


def test_outage_spools_then_restart_replays_in_order(kafka_bootstrap, tmp_path):
    spool = tmp_path / "spool"
    topic = unique_topic()
    down = settings_for(f"127.0.0.1:{_closed_port()}", tmp_path)
    producer = BatchingProducer(down, topic, spool_dir=spool, metrics=False,
                                delivery_timeout_s=1.0, route_by=None, linger_s=0.05)
    slowest = 0.0
    for i in range(3000):
        started = time.perf_counter()
        producer.emit(_event(i))
        slowest = max(slowest, time.perf_counter() - started)
        if i % 1000 == 999:
            time.sleep(0.3)  # several envelopes, some produced before the first failure
    producer.close(timeout=3.0)
    assert slowest < 0.05, f"emit() blocked for {slowest * 1000:.1f} ms with the broker down"
    assert producer.stats["sent"] == 0
    assert producer.stats["spooled"] == 3000
    assert producer.stats["spool_pending"] == 3000

    up = settings_for(kafka_bootstrap, tmp_path)
    restarted = BatchingProducer(up, topic, spool_dir=spool, metrics=False, route_by=None)
    restarted.emit(_event(3000))  # new events queue behind the spool
    restarted.close(timeout=20.0)
    assert restarted.stats["sent"] == 3001
    assert restarted.stats["replayed"] == 3000 + restarted.stats["spooled"]
    assert restarted.stats["spool_pending"] == 0
    table = read_topic(up, topic, 3001)
    ids = table.column("request_id").to_pylist()
    assert ids == [f"r{i:06d}" for i in range(3001)]  # exact count, in order

    again = BatchingProducer(up, topic, spool_dir=spool, metrics=False)
    again.close(timeout=5.0)
    assert again.stats["replayed"] == 0  # the cursor survived: nothing is sent twice


def test_full_queue_spills_and_bad_events_are_kept(kafka_bootstrap, tmp_path):
    settings = settings_for(kafka_bootstrap, tmp_path)
    topic = unique_topic()
    producer = BatchingProducer(settings, topic, metrics=False, max_queue=500, linger_s=5.0,
                                spool_dir=tmp_path / "spool")
    for i in range(5000):
        producer.emit(_event(i))
    producer.emit({**_event(9999), "input_tokens": "many"})
    producer.close(timeout=20.0)
    stats = producer.stats
    assert stats["spooled"] > 0  # the caller spilled instead of dropping
    assert stats["failed"] == 1
    rejected = (tmp_path / "spool" / "rejected.jsonl").read_text().splitlines()
    assert json.loads(rejected[0])["event"]["request_id"] == "r009999"
    table = read_topic(settings, topic, 5000)
    assert sorted(table.column("request_id").to_pylist()) == [f"r{i:06d}" for i in range(5000)]


def test_rows_go_to_their_home_partition_in_full_envelopes(kafka_bootstrap, tmp_path):
    """Every row lands in Kafka's murmur2 partition of its request_id (where the worker
    de-duplicates it), and each partition still gets full envelopes."""
    import uuid

    import numpy as np
    import pyarrow as pa
    from confluent_kafka import Consumer
    from confluent_kafka.admin import AdminClient, NewTopic

    from costpipe.core.kafka_clients import confluent_admin, confluent_consumer
    from costpipe.schemas.codec import decode
    from costpipe.schemas.envelope import home_partitions

    settings = settings_for(kafka_bootstrap, tmp_path)
    topic = unique_topic()
    admin = AdminClient(confluent_admin(settings))
    admin.create_topics([NewTopic(topic, 4, 1)])[topic].result(30)
    producer = BatchingProducer(settings, topic, metrics=False, max_rows=1000, linger_s=5.0)
    for start in range(0, 8000, 100):
        producer.emit_batch(pa.Table.from_pylist([_event(i) for i in range(start, start + 100)]))
    producer.close()
    consumer = Consumer(confluent_consumer(settings, f"test-{uuid.uuid4().hex}"))
    consumer.subscribe([topic])
    seen: dict[int, list[int]] = {}
    ids: list[str] = []
    deadline = time.monotonic() + 30
    while sum(map(sum, seen.values())) < 8000 and time.monotonic() < deadline:
        for message in consumer.consume(500, 0.5):
            if message.error():
                continue
            batch = decode(message.value(), message.headers()).batch
            homes = home_partitions(batch.column("request_id"), 4)
            assert (homes == message.partition()).all(), "a row outside its home partition"
            assert message.key() == batch.column("request_id")[0].as_py().encode()
            seen.setdefault(message.partition(), []).append(batch.num_rows)
            ids += batch.column("request_id").to_pylist()
    consumer.close()
    assert sorted(ids) == [f"r{i:06d}" for i in range(8000)]
    assert len(seen) == 4
    for sizes in seen.values():  # full envelopes but the last one per partition
        assert all(n == 1000 for n in sizes[:-1]), sizes
        assert np.sum(sizes) > 1000
