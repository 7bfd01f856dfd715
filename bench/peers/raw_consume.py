"""The limit: raw confluent-kafka consume of a topic (no decoding, no work).

Partitions are assigned directly (no group join) and the clock starts before the first fetch,
so a topic of a few large Arrow messages is timed fairly too.

Prints one JSON line: {"messages": M, "bytes": B, "seconds": S, "messages_per_s": R}.
"""

from __future__ import annotations

import json
import sys
import time
import uuid

from confluent_kafka import Consumer, TopicPartition


def main(bootstrap: str, topic: str, expected_messages: int) -> None:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-raw-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.max.bytes": 64 * 1024 * 1024,
        }
    )
    meta = consumer.list_topics(topic, timeout=30).topics[topic]
    consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
    seen = size = 0
    started = time.perf_counter()
    while seen < expected_messages:
        messages = consumer.consume(10_000, timeout=1.0)
        for message in messages:
            if message.error() is None:
                seen += 1
                size += len(message.value() or b"")
    elapsed = time.perf_counter() - started
    consumer.close()
    print(json.dumps({"messages": seen, "bytes": size, "seconds": elapsed,
                      "messages_per_s": seen / elapsed}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
