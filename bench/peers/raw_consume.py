"""The limit: raw confluent-kafka consume of a topic (no decoding, no work).

Prints one JSON line: {"messages": M, "bytes": B, "seconds": S, "messages_per_s": R}.
"""

from __future__ import annotations

import json
import sys
import time
import uuid

from confluent_kafka import Consumer


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
    consumer.subscribe([topic])
    seen = size = 0
    started = 0.0
    while seen < expected_messages:
        messages = consumer.consume(10_000, timeout=1.0)
        if messages and not started:
            started = time.perf_counter()
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
