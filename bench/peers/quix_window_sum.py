"""Peer: a Quix Streams app doing a per-key tumbling-window sum on per-event JSON messages.

Runs in its own virtualenv (`bench/.venv-quix`) because Quix pins confluent-kafka < 2.12.
Prints one JSON line: {"events": N, "seconds": S, "events_per_s": R}.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from datetime import timedelta

from quixstreams import Application


def main(bootstrap: str, topic: str, expected: int) -> None:
    app = Application(
        broker_address=bootstrap,
        consumer_group=f"bench-quix-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        loglevel="WARNING",
        state_dir=f"/tmp/quix-state-{uuid.uuid4().hex[:8]}",
        use_changelog_topics=False,
    )
    source = app.topic(topic, value_deserializer="json", key_deserializer="str")
    seen = 0
    started = 0.0

    def count(value: dict) -> dict:
        nonlocal seen, started
        if seen == 0:
            started = time.perf_counter()
        seen += 1
        return value

    sdf = app.dataframe(source)
    sdf = sdf.apply(count)
    sdf = sdf.apply(lambda v: v["input_tokens"] + v["output_tokens"])
    sdf = sdf.tumbling_window(timedelta(seconds=60)).sum().current()
    app.run(sdf, count=expected, collect=False)
    elapsed = time.perf_counter() - started
    print(json.dumps({"events": seen, "seconds": elapsed, "events_per_s": seen / elapsed}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
