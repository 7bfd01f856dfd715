"""Peer: a plain Faust agent handling one JSON event per Kafka message, per-key tumbling sum.

Prints one JSON line when it has seen the expected number of events, then exits.
Run: python -m bench.peers.faust_per_event <bootstrap> <topic> <expected> worker -l warn
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from datetime import timedelta

import faust

BOOTSTRAP, TOPIC, EXPECTED = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.argv = [sys.argv[0], *sys.argv[4:]]

app = faust.App(
    f"bench-faust-{os.environ.get('BENCH_RUN_SUFFIX') or uuid.uuid4().hex[:8]}",
    broker=f"kafka://{BOOTSTRAP}",
    store="memory://",
    consumer_auto_offset_reset="earliest",
    web_enabled=False,
    topic_partitions=int(os.environ.get("BENCH_PARTITIONS", "4")),
)
source = app.topic(TOPIC, value_serializer="json", key_serializer="raw")
sums = app.Table("sums", default=int).tumbling(timedelta(seconds=60))
state = {"seen": 0, "started": 0.0}


@app.agent(source, concurrency=1)
async def window_sum(stream):  # type: ignore[no-untyped-def]
    async for key, value in stream.items():
        if state["seen"] == 0:
            state["started"] = time.perf_counter()
        sums[key] += value["input_tokens"] + value["output_tokens"]
        state["seen"] += 1
        if state["seen"] >= EXPECTED:
            elapsed = time.perf_counter() - state["started"]
            print(json.dumps({"events": state["seen"], "seconds": elapsed,
                              "events_per_s": state["seen"] / elapsed}), flush=True)
            os._exit(0)


if __name__ == "__main__":
    app.main()
