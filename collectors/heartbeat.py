"""Watermark heartbeats: tell the workers that event time has reached `until` with no events.

Windows and GPU cost buckets close on event time. A live fleet advances it all the time; a
fleet that goes quiet (end of a simulated run, a night without traffic) would leave its last
window open forever. A heartbeat is an empty Arrow envelope carrying the `costpipe-watermark`
header, sent to every partition of the requests and GPU topics, so every worker sees it.
"""

from __future__ import annotations

import datetime as dt

from confluent_kafka import Producer

from costpipe.core.kafka_clients import confluent_producer
from costpipe.core.settings import Settings
from costpipe.schemas.codec import encode_arrow
from costpipe.schemas.envelope import heartbeat_headers
from costpipe.schemas.records import GPU_SAMPLE, REQUEST_EVENT


def send_watermark(settings: Settings, until: dt.datetime, *, timeout: float = 30.0) -> int:
    """Send one heartbeat per partition of the requests and GPU topics; returns how many."""
    until_us = int(until.timestamp() * 1_000_000)
    producer = Producer(confluent_producer(settings))
    sent = 0
    for topic, schema in ((settings.topics.requests, REQUEST_EVENT),
                          (settings.topics.gpu, GPU_SAMPLE)):
        metadata = producer.list_topics(topic, timeout=timeout).topics.get(topic)
        partitions = sorted(metadata.partitions) if metadata and metadata.partitions else [0]
        payload = encode_arrow(schema.empty_table())
        headers = heartbeat_headers(until_us)
        for partition in partitions:
            producer.produce(topic, value=payload, partition=partition, headers=headers)
            sent += 1
    remaining = producer.flush(timeout)
    if remaining:
        raise TimeoutError(f"{remaining} heartbeat(s) not delivered within {timeout:.0f} s")
    return sent
